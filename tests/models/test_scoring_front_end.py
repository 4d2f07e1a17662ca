"""The pairs of a scoring call tokenized at once give exactly the engine inputs of the per-pair
path (vLLM's own for cross-encoders, the preset's template for LLM rerankers), on the installed
vLLM, without an engine: token ids, token types (where the model reads them), the pooling
parameters, and the same error for a pair that cannot be served."""

from __future__ import annotations

import contextlib
import copy

import pytest

pytest.importorskip("vllm")

from crossenc.cli import main as cli  # noqa: E402
from crossenc.entrypoints.pooling import score_template  # noqa: E402
from crossenc.entrypoints.pooling.pair_encoder import PairEncoder  # noqa: E402
from tests.utils import DOCUMENTS, QUERY, save_deberta, score_render_params, scoring_processor  # noqa: E402

TEXTS = [QUERY, "", " ", "Größe, naïve café — 日本語のテキスト 🙂", "a " * 600, *DOCUMENTS]
PAIRS = [(q, d) for q in TEXTS[:4] for d in TEXTS] + [(d, QUERY) for d in TEXTS[4:]]


@pytest.fixture(scope="module")
def processors(tmp_path_factory, causal_lm_dir):
    """One processor per way a pair is formatted."""
    deberta = tmp_path_factory.mktemp("deberta")
    types = tmp_path_factory.mktemp("deberta-types")
    preset = tmp_path_factory.mktemp("qwen3-reranker")
    save_deberta(deberta, "seq_cls", "v3", num_labels=1)
    save_deberta(types, "seq_cls", "token-types", num_labels=1)
    assert cli(["convert", causal_lm_dir("qwen3"), "-o", str(preset), "--preset", "qwen3-reranker"]) == 0
    made = {
        "deberta": scoring_processor(deberta),
        "deberta token types": scoring_processor(types),
        "qwen3-reranker preset": scoring_processor(preset),
        # A CausalLM classifier without a template: query and document read as one text.
        "causal lm, no preset": scoring_processor(causal_lm_dir("qwen2"), hf_overrides={
            "architectures": ["Qwen2ForSequenceClassification"], "num_labels": 1, "crossenc_preset": "none"}),
    }
    for processor in made.values():  # the Rust backend's copy that `PairEncoder` tokenizes with
        if getattr(processor, "_pair_encoder", None) is not None:
            assert processor._pair_encoder.ready(timeout=60)
    return made


def _outcome(processor, render_params, batched: bool):
    try:
        engine_input = processor.render(render_params)
    except Exception as e:  # noqa: BLE001 - the same error either way
        return type(e).__name__, str(e)
    return _described(processor, engine_input, batched)


def _described(processor, engine_input, batched: bool):
    """(token ids, task, extra kwargs) of an engine input, the same whichever path made it."""
    params = engine_input["params"]
    extra = dict(params.extra_kwargs or {})
    if not processor.reads_token_types:
        # A model without a token-type embedding never reads token types: the batched path does
        # not send them, vLLM's per-pair path does.
        types = extra.pop("compressed_token_type_ids", None)
        assert types is None or not batched
    ids = list(engine_input["prompts"]["prompt_token_ids"])
    if (types := extra.get("compressed_token_type_ids")) is not None:
        # Where the token types switch to 1 (0.33: where they start and end), as the engine
        # expands it: vLLM 0.26 does not cut the token types with the ids, so an index past the
        # end means "all 0" whatever its value.
        extra["compressed_token_type_ids"] = (min(types, len(ids)) if isinstance(types, int)
                                              else tuple(min(t, len(ids)) for t in types))
    return ids, params.task, extra


@contextlib.contextmanager
def _tokenizer_calls(processor):
    """The `text` argument of every call to the processor's tokenizer while the block runs, and
    of every `PairEncoder` call (the tokenizer's Rust backend, `encode_batch_fast`)."""
    calls = []
    original = processor.tokenizer.__class__
    encode = PairEncoder.__call__

    class Recording(original):
        def __call__(self, text=None, *args, **kwargs):
            calls.append(text)
            return original.__call__(self, text, *args, **kwargs)

    def recording_encode(self, texts, *args, **kwargs):
        calls.append(texts)
        return encode(self, texts, *args, **kwargs)

    processor.tokenizer.__class__ = Recording
    PairEncoder.__call__ = recording_encode
    try:
        yield calls
    finally:
        processor.tokenizer.__class__ = original
        PairEncoder.__call__ = encode


def _transformers_has_tokenizers_backend() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers.tokenization_utils_tokenizers") is not None


@pytest.mark.parametrize("kind", ["deberta", "deberta token types", "qwen3-reranker preset", "causal lm, no preset"])
@pytest.mark.parametrize("truncate", [None, 24, 96, -1])
def test_batched_tokenization_gives_the_per_pair_engine_inputs(processors, kind, truncate):
    processor = processors[kind]
    instruction = "Find the passage about files" if kind == "qwen3-reranker preset" else None
    requests = [score_render_params(processor, q, d, truncate, instruction) for q, d in PAIRS]
    per_pair = copy.deepcopy(requests)
    processor._pretokenize(requests)
    got = [_outcome(processor, r, batched=True) for r in requests]
    expected = [_outcome(processor, r, batched=False) for r in per_pair]
    assert got == expected
    assert processor.reads_token_types == (kind == "deberta token types")
    if kind != "qwen3-reranker preset" and _transformers_has_tokenizers_backend():
        # The pairs went through the tokenizer's Rust backend in one `encode_batch_fast` call.
        assert isinstance(processor._pair_encoder, PairEncoder)
    if kind == "deberta token types":
        assert all("compressed_token_type_ids" in o[2] for o in got if isinstance(o[0], list))
    # Every pair that can be served was tokenized with the others.
    served = [isinstance(o[0], list) for o in expected]
    assert all(score_template._TOKENS_KEY in r for r, ok in zip(requests, served) if ok)
    if truncate != 24 or kind != "qwen3-reranker preset":  # 24 tokens hold no Qwen3 prompt
        assert sum(served) >= len(PAIRS) // 3


BIG = " ".join(["Read the gzip file, then write it back."] * 8_000)  # 320,000 characters
MEDIUM = " ".join(["The zlib module compresses data; gzip reads files."] * 60)  # 3,000 characters
OVERSIZED = [(QUERY, BIG), (BIG, QUERY), ("", BIG), (MEDIUM, MEDIUM), (MEDIUM, DOCUMENTS[0]), (QUERY, MEDIUM)]


@pytest.mark.parametrize("kind", ["deberta", "deberta token types", "qwen3-reranker preset", "causal lm, no preset"])
@pytest.mark.parametrize("truncate,side", [(None, None), (24, None), (-1, None), (24, "left"), (96, "right"), (-1, "left")])
def test_oversized_texts_are_cut_first_with_the_per_pair_engine_inputs(processors, kind, truncate, side, monkeypatch):
    """A text far beyond what max_model_len tokens hold is cut to a window before it is tokenized
    (crossenc.entrypoints.pooling.text_window); the engine inputs, or the error, are still
    exactly those of tokenizing the whole pair, for every truncation option and side."""
    processor = processors[kind]
    if side is not None and not hasattr(processor.renderer.default_cmpl_tok_params, "truncation_side"):
        pytest.skip("this vLLM has no truncation_side")
    requests = [score_render_params(processor, q, d, truncate, side=side) for q, d in OVERSIZED]
    with monkeypatch.context() as whole_texts:  # vLLM's per-pair path on the whole texts
        whole_texts.setattr(score_template.text_window, "pair_windows", lambda tokenizer, pairs, *a, **k: pairs)
        expected = [_outcome(processor, r, batched=False) for r in copy.deepcopy(requests)]
    with _tokenizer_calls(processor) as calls:
        processor._pretokenize(requests)
    assert [_outcome(processor, r, batched=True) for r in requests] == expected
    # The 320,000-character text was never tokenized whole.
    tokenized = [t for c in calls for t in (c if isinstance(c, list) else [c]) if isinstance(t, str)]
    assert tokenized and max(map(len, tokenized)) < len(BIG) // 4


def test_vllm_uses_the_batching_processor_for_crossencs_models_only(processors, tmp_path):
    """The processor vLLM builds for scoring is crossenc's (it is installed when crossenc
    registers), and it batches only the models crossenc serves: vLLM's own BERT keeps vLLM's path."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from vllm.entrypoints.pooling.scoring.io_processor import ScoringIOProcessors

    from tests.utils import save_tokenizer

    assert ScoringIOProcessors["cross-encoder"] is score_template.TemplatedCrossEncoderIOProcessor
    assert all(p.batches_pairs for p in processors.values())
    vocab = save_tokenizer(tmp_path)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        num_labels=1)).save_pretrained(tmp_path)
    bert = scoring_processor(tmp_path)
    assert not bert.batches_pairs
    requests = [score_render_params(bert, QUERY, d) for d in DOCUMENTS]
    bert._pretokenize(requests)
    assert not any(score_template._TOKENS_KEY in r for r in requests)


@pytest.mark.parametrize("kind", ["deberta", "deberta token types", "qwen3-reranker preset"])
def test_an_online_request_is_rendered_in_one_hop_with_the_per_pair_engine_inputs(processors, kind):
    """`vllm serve` awaits `render_async` for each pair of a /score or /rerank request; crossenc
    tokenizes and renders the whole request in one hop to vLLM's renderer thread, with the same
    engine inputs, and a pair that cannot be served fails the request with vLLM's error."""
    import asyncio

    processor = processors[kind]
    if processor._render_pair_async is None:
        pytest.skip("this vLLM renders a request's pairs in one hop itself (no per-pair render_async)")
    assert processor.renders_requests
    servable = [(q, d) for q, d in PAIRS if len(q) + len(d) < 1000]
    requests = [score_render_params(processor, q, d) for q, d in servable]
    expected = [_outcome(processor, r, batched=False) for r in copy.deepcopy(requests)]
    rendering = score_template._RequestRendering.attach(processor, requests)

    async def serve(rps):
        return await asyncio.gather(*(processor.render_async(rp) for rp in rps))

    inputs = asyncio.run(serve(requests))
    assert rendering.future is not None and all(score_template._TOKENS_KEY in rp for rp in requests)
    assert [_described(processor, engine_input, batched=True) for engine_input in inputs] == expected

    if kind == "qwen3-reranker preset":
        return  # the template cuts a long document to fit
    too_long = [score_render_params(processor, QUERY, d) for d in (DOCUMENTS[0], "a " * 600)]
    with pytest.raises(Exception) as per_pair:
        processor.render(copy.deepcopy(too_long[1]))
    score_template._RequestRendering.attach(processor, too_long)
    with pytest.raises(type(per_pair.value)) as batched:
        asyncio.run(serve(too_long))
    assert str(batched.value) == str(per_pair.value)


@pytest.mark.parametrize("kind", ["deberta", "deberta token types", "qwen3-reranker preset", "causal lm, no preset"])
@pytest.mark.parametrize("truncate", [None, 24, -1])
def test_an_online_request_of_vllm_0_26_is_tokenized_in_one_call_with_the_per_pair_engine_inputs(
        processors, kind, truncate):
    """vLLM 0.26 renders a /score or /rerank request's pairs in its own loop (`_pre_process`), a
    tokenizer call per pair; crossenc tokenizes the request's pairs in one call before it, with
    the same engine inputs and pooling parameters."""
    from vllm.entrypoints.pooling.scoring.protocol import RerankRequest

    from crossenc import compat

    base = compat.scoring().CrossEncoderIOProcessor
    if not hasattr(base, "_pre_process"):
        pytest.skip("this vLLM renders online requests through `render`")
    import sys

    processor = processors[kind]
    scoring_data = sys.modules[base.__module__].ScoringData
    queries = [QUERY]
    documents = [d for d in TEXTS if len(d) < 1000]
    tok_params = processor.renderer.default_cmpl_tok_params
    if truncate is not None:
        tok_params = tok_params.with_kwargs(truncate_prompt_tokens=truncate)
    params = processor.create_pooling_params(RerankRequest(model="m", query=QUERY, documents=DOCUMENTS))

    def run(method, data):
        try:
            inputs, params_list = method(processor, data, tok_params, params, None, 0, 0, None)
        except Exception as e:  # noqa: BLE001 - the same error either way
            return type(e).__name__, str(e)
        return [(list(i["prompt_token_ids"]), p.task, dict(p.extra_kwargs or {})) for i, p in zip(inputs, params_list)]

    expected = run(base._pre_process, scoring_data(data_1=queries, data_2=documents))
    with _tokenizer_calls(processor) as calls:
        got = run(type(processor)._pre_process, scoring_data(data_1=queries, data_2=documents))
    if not processor.reads_token_types and isinstance(expected, list):
        expected = [(ids, task, {k: v for k, v in extra.items() if k != "compressed_token_type_ids"})
                    for ids, task, extra in expected]
    assert got == expected
    # One call for the pairs with a document, one for those without (transformers encodes an
    # empty second text as the first alone); the preset's template makes its own calls.
    if kind != "qwen3-reranker preset":
        assert len(calls) <= 2 and sum(len(c) for c in calls if isinstance(c, list)) == len(documents)



def test_pair_encoder_takes_only_tokenizers_that_transformers_encodes(processors):
    """A tokenizer class that changes how it encodes keeps its own call."""
    tokenizer = processors["deberta"].tokenizer
    if not _transformers_has_tokenizers_backend():
        assert PairEncoder.of(tokenizer) is None
        return
    assert PairEncoder.of(tokenizer) is not None

    class Lowercasing(type(tokenizer)):
        def __call__(self, text=None, *args, **kwargs):
            return super().__call__([t.lower() for t in text], *args, **kwargs)

    custom = copy.copy(tokenizer)
    custom.__class__ = Lowercasing
    assert PairEncoder.of(custom) is None
