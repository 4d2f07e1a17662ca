"""LLM rerankers end to end in vLLM's CPU build (crossenc loaded as vLLM's plugin).

Online conversion (`hf_overrides` with a preset) for tiny Qwen3, Qwen2 and Gemma rerankers, a
`crossenc convert`ed checkpoint served with no overrides, and a real `vllm serve` answering
`/rerank`: every score equals the CausalLM's token score on the prompt its own code builds.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.engine  # starts a vLLM engine

vllm = pytest.importorskip("vllm")

from crossenc import presets  # noqa: E402
from crossenc.cli import main as cli  # noqa: E402
from tests.conftest import VllmRunner, release  # noqa: E402
from tests.convert.tiny import DOCUMENTS, FAMILIES, QUERIES, causal_scores, reference_scores  # noqa: E402

ATOL = 1e-5
SEQ_CLS = {
    "qwen3": "Qwen3ForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "gemma": "GemmaForSequenceClassification",
}
PAIRS = [(q, d) for q in QUERIES for d in DOCUMENTS]
LONG_DOCUMENT = " ".join(DOCUMENTS * 30)  # well over 512 tokens


def _engine(model, **kwargs):
    return VllmRunner(model, **kwargs).llm


def _scores(outputs):
    return [o.outputs.score for o in outputs]


def _close(got, expected):
    assert len(got) == len(expected)
    assert max(abs(g - e) for g, e in zip(got, expected)) <= ATOL, (got, expected)


@pytest.fixture(scope="module", params=list(FAMILIES))
def online(request, causal_lm_dir):
    """family, preset, the CausalLM's directory and an engine converting it online."""
    family = request.param
    preset = presets.get(FAMILIES[family][1])
    src = causal_lm_dir(family)
    llm = _engine(src, hf_overrides=preset.overrides())
    yield family, preset, src, llm
    release(llm)


def test_online_conversion_scores_equal_the_causal_lm(online):
    family, preset, src, llm = online
    from vllm.model_executor.model_loader import get_model_cls

    # Served by crossenc's named classifier, whose weight loading does the conversion.
    served = get_model_cls(llm.model_config)
    assert (served.__module__, served.__name__) == ("crossenc.model_executor.models.adapters", SEQ_CLS[family])
    expected = reference_scores(src, preset, PAIRS)
    _close(_scores(llm.score([q for q, _ in PAIRS], [d for _, d in PAIRS])), expected)
    # 1 -> N: the query against every document.
    _close(_scores(llm.score(QUERIES[0], DOCUMENTS)), expected[: len(DOCUMENTS)])


def test_instruction_goes_into_the_template(online):
    family, preset, src, llm = online
    if preset.template.instruction_format is None:
        pytest.skip(f"{preset.name}'s prompt takes no instruction")
    instruction = "Judge whether the passage is about physics"
    params = vllm.PoolingParams(extra_kwargs={"chat_template_kwargs": {"instruction": instruction}})
    got = _scores(llm.score(QUERIES[1], DOCUMENTS, pooling_params=params))
    expected = reference_scores(src, preset, [(QUERIES[1], d) for d in DOCUMENTS], instruction)
    _close(got, expected)
    assert got != _scores(llm.score(QUERIES[1], DOCUMENTS))  # the instruction changed the prompt


def truncated_reference(src, preset, query, document, budget):
    """The CausalLM's score of the preset's prompt cut to `budget` tokens (document only)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    prompt = preset.template.token_ids(tokenizer, query, document, budget=budget)
    return causal_scores(src, preset, [prompt])


def test_too_long_pairs_lose_the_end_of_the_document_only(online):
    """truncate_prompt_tokens cuts the document; the template's suffix is still scored."""
    family, preset, src, llm = online
    from transformers import AutoTokenizer

    budget = len(preset.template.token_ids(AutoTokenizer.from_pretrained(src), QUERIES[1], "")) + 20
    kwargs = {"truncate_prompt_tokens": budget}
    got = _scores(llm.score(QUERIES[1], [LONG_DOCUMENT], tokenization_kwargs=kwargs))
    _close(got, truncated_reference(src, preset, QUERIES[1], LONG_DOCUMENT, budget))
    # Longer than max_model_len without truncate_prompt_tokens: the document is cut to fit.
    got = _scores(llm.score(QUERIES[1], [LONG_DOCUMENT]))
    _close(got, truncated_reference(src, preset, QUERIES[1], LONG_DOCUMENT, 512))


@pytest.mark.parametrize("family", ["qwen3", "gemma"])  # untied two-token; tied one-token
def test_converted_checkpoint_serves_without_overrides(family, causal_lm_dir, tmp_path_factory):
    src = causal_lm_dir(family)
    preset = presets.get(FAMILIES[family][1])
    out = tmp_path_factory.mktemp(f"{family}-converted")
    assert cli(["convert", src, "-o", str(out), "--preset", preset.name]) == 0
    llm = _engine(str(out))
    try:
        got = _scores(llm.score([q for q, _ in PAIRS], [d for _, d in PAIRS]))
    finally:
        release(llm)
    _close(got, reference_scores(src, preset, PAIRS))


def _server(model, hf_overrides):
    from crossenc.demo.server import ServerSettings, VllmServer

    args = ("--dtype", "float32", "--hf-overrides", json.dumps(hf_overrides))
    return VllmServer(ServerSettings(model, max_model_len=512, extra_args=args))


def test_vllm_serve_reranks_with_the_preset(causal_lm_dir, monkeypatch):
    """`vllm serve` with the overrides: the hook runs in the serving process, the engine in its
    own process (vLLM's default) loads the validated conversion, and /rerank takes a plain query
    and documents."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    src = causal_lm_dir("qwen2")
    preset = presets.get("mxbai-rerank-v2")
    expected = reference_scores(src, preset, [(QUERIES[1], d) for d in DOCUMENTS])
    with _server(src, preset.overrides()) as server:
        results = server.rerank(QUERIES[1], DOCUMENTS)
        instructed = server.post("/rerank", {
            "model": src, "query": QUERIES[1], "documents": DOCUMENTS,
            "instruction": "Find passages about physics",
        })["results"]
        score = server.post("/score", {"model": src, "queries": QUERIES[1], "documents": DOCUMENTS})
        too_long = server.rerank(QUERIES[1], [LONG_DOCUMENT])
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    _close([r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])], expected)
    assert [r["index"] for r in results] == sorted(range(len(expected)), key=lambda i: -expected[i])
    _close([d["score"] for d in sorted(score["data"], key=lambda d: d["index"])], expected)
    # A document over max_model_len is cut, the template's suffix kept.
    _close([too_long[0]["relevance_score"]], truncated_reference(src, preset, QUERIES[1], LONG_DOCUMENT, 512))
    instruction = "Find passages about physics"
    _close(
        [r["relevance_score"] for r in sorted(instructed, key=lambda r: r["index"])],
        reference_scores(src, preset, [(QUERIES[1], d) for d in DOCUMENTS], instruction),
    )


def test_vllm_serve_refuses_a_bad_override(causal_lm_dir):
    src = causal_lm_dir("qwen3")
    bad = {"architectures": [SEQ_CLS["qwen3"]], "classifier_from_token": ["no", "YES"],
           "method": "from_2_way_softmax"}
    with pytest.raises(RuntimeError, match="classifier token 'YES' must tokenize to exactly one id"):
        with _server(src, bad):
            pass
