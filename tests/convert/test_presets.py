"""Presets: prompts equal the ones the rerankers' own code builds; truncation cuts only the document."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from crossenc import presets
from crossenc.config.overrides import token_ids_or_raise

from tests.convert.tiny import REFERENCE_PROMPTS, encode

LONG_DOCUMENT = " ".join(["Gravity is a force that attracts two bodies towards each other."] * 40)


@pytest.fixture(scope="module")
def tokenizer(causal_lm_dir):
    return AutoTokenizer.from_pretrained(causal_lm_dir("qwen3"))


@pytest.mark.parametrize(
    "name, instruction",
    [
        ("qwen3-reranker", None),
        ("qwen3-reranker", "Find the passage that answers the question"),
        ("bge-reranker-v2-gemma", None),
        ("mxbai-rerank-v2", None),
        ("mxbai-rerank-v2", "Rank passages about physics"),
    ],
)
def test_prompt_matches_the_rerankers_own_code(tokenizer, name, instruction):
    template = presets.get(name).template
    query, doc = "What is the capital of China?", "The capital of China is Beijing."
    extra = {} if instruction is None else {"instruction": instruction}
    expected = REFERENCE_PROMPTS[name](tokenizer, query, doc, **extra)
    assert template.token_ids(tokenizer, query, doc, instruction=instruction) == expected


def test_bge_reranker_v2_gemma_prompt_takes_no_instruction(tokenizer):
    template = presets.get("bge-reranker-v2-gemma").template
    with pytest.raises(ValueError, match="takes no instruction"):
        template.token_ids(tokenizer, "what is panda?", "A bear.", instruction="anything")


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_truncation_cuts_only_the_document(tokenizer, name):
    template = presets.get(name).template
    query = "Explain gravity"
    full = template.token_ids(tokenizer, query, LONG_DOCUMENT)
    empty = template.token_ids(tokenizer, query, "")
    budget = len(empty) + 25
    assert len(full) > budget
    cut = template.token_ids(tokenizer, query, LONG_DOCUMENT, budget=budget)
    assert len(cut) == budget
    # Everything after the document (the template's suffix) is kept whole ...
    d = template.segments.index(next(s for s in template.segments if "{document}" in s))
    tail = [i for s in template.segments[d + 1 :] for i in encode(tokenizer, s)]
    assert cut[len(cut) - len(tail) :] == tail
    # ... and so is everything before it: the result is a prefix of the full prompt up to the
    # document's cut, then the suffix.
    head_len = len(cut) - len(tail)
    assert cut[:head_len] == full[:head_len]
    assert head_len < len(full) - len(tail)  # the document was cut
    # A prompt that fits is left alone.
    assert template.token_ids(tokenizer, query, LONG_DOCUMENT, budget=len(full)) == full


def test_query_too_long_for_the_budget_is_an_error(tokenizer):
    template = presets.get("qwen3-reranker").template
    empty = template.token_ids(tokenizer, "Explain gravity", "")
    with pytest.raises(ValueError, match="only the document is truncated, so shorten the query"):
        template.token_ids(tokenizer, "Explain gravity " * 50, "doc", budget=len(empty) + 5)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Qwen/Qwen3-Reranker-0.6B", "qwen3-reranker"),
        ("/models/qwen3-reranker-8b", "qwen3-reranker"),
        ("BAAI/bge-reranker-v2-gemma", "bge-reranker-v2-gemma"),
        ("mixedbread-ai/mxbai-rerank-large-v2", "mxbai-rerank-v2"),
        ("mixedbread-ai/mxbai-rerank-base-v1", None),  # a DeBERTa cross-encoder, no preset
        ("Qwen/Qwen3-0.6B", None),
    ],
)
def test_presets_are_recognised_from_checkpoint_names(name, expected):
    preset = presets.recognise(name)
    assert (preset.name if preset else None) == expected


def test_named_preset_must_fit_the_model_type_but_look_alike_names_are_ignored():
    from transformers import DebertaV2Config, Qwen3Config

    with pytest.raises(ValueError, match="preset bge-reranker-v2-gemma is for gemma checkpoints"):
        presets.for_config(Qwen3Config(), preset_name="bge-reranker-v2-gemma")
    # A DeBERTa checkpoint whose directory merely looks like a preset's name gets none.
    assert presets.for_config(DebertaV2Config(), "/models/my-qwen3-reranker-distilled") is None
    assert presets.for_config(Qwen3Config(), "/m/Qwen3-Reranker-4B").name == "qwen3-reranker"
    assert presets.for_config(Qwen3Config(), "/m/Qwen3-Reranker-4B", preset_name="none") is None
    with pytest.raises(ValueError, match="unknown preset 'qwen4'"):
        presets.for_config(Qwen3Config(), preset_name="qwen4")


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_tokens_are_single_tokens_of_the_test_tokenizer(tokenizer, name):
    # The fixtures' tokenizer must make every preset's tokens valid, or the other tests prove
    # nothing about the presets.
    assert len(token_ids_or_raise(tokenizer, presets.get(name).tokens)) == len(presets.get(name).tokens)
