"""DeBERTa end to end in vLLM's CPU build: score, classify, embed, token classification.

Every number is compared with transformers (and sentence-transformers' conventions: sigmoid
for a single-logit cross-encoder, softmax across labels, normalised mean-pooled embeddings).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

vllm = pytest.importorskip("vllm")

from tests.utils import DOCUMENTS, QUERY, hf_logits, save_deberta  # noqa: E402

ATOL = 1e-4
TEXTS = [QUERY, *DOCUMENTS]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("deberta")
    return {
        "score": save_deberta(root / "score", "seq_cls", "v3", num_labels=1),
        "score-types": save_deberta(root / "score-types", "seq_cls", "token-types", num_labels=1),
        # A CrossEncoder saved with an identity activation: scores are the raw logits.
        "score-identity": save_deberta(root / "score-identity", "seq_cls", "v3", num_labels=1,
                                       sentence_transformers={"activation_fn": "torch.nn.modules.linear.Identity"}),
        "classify": save_deberta(root / "classify", "seq_cls", "token-types", num_labels=3,
                                 id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                                 label2id={"entailment": 0, "neutral": 1, "contradiction": 2}),
        "token": save_deberta(root / "token", "token_cls", "v2-conv", num_labels=5),
        "embed": _save_sentence_transformer(root / "embed"),
    }


def _save_sentence_transformer(path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    save_deberta(path / "backbone", "model", "v3")
    st = SentenceTransformer(modules=[
        Transformer(str(path / "backbone")),
        Pooling(32, pooling_mode="mean"),
        Normalize(),
    ], device="cpu")
    st.save(str(path / "st"))
    return path / "st"


@pytest.mark.parametrize("kind", ["score", "score-types", "score-identity"])
def test_score_equals_cross_encoder(checkpoints, kind, vllm_runner):
    """v3 (no token types), a checkpoint whose second segment has token type 1, and one whose
    CrossEncoder activation is the identity."""
    from sentence_transformers import CrossEncoder

    path = checkpoints[kind]
    expected = CrossEncoder(str(path), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    with vllm_runner(path, runner="pooling") as llm:  # vLLM's defaults: compilation mode on
        # Every call's pairs are tokenized in one tokenizer call by crossenc's scoring processor.
        processor = llm.pooling_io_processors["cross-encoder"]
        batches, tokenize = [], processor._tokenize_pairs
        processor._tokenize_pairs = lambda pairs, *args: batches.append(len(pairs)) or tokenize(pairs, *args)
        got = [o.outputs.score for o in llm.score(QUERY, DOCUMENTS)]
        # The same pairs batched with other work give the same numbers.
        again = [o.outputs.score for o in llm.score([QUERY] * len(DOCUMENTS), DOCUMENTS)]
    assert batches == [len(DOCUMENTS)] * 2
    assert torch.allclose(torch.tensor(got), torch.tensor(expected, dtype=torch.float32), atol=ATOL)
    assert torch.allclose(torch.tensor(again), torch.tensor(got), atol=1e-6)


def test_classify_equals_transformers_softmax(checkpoints, vllm_runner):
    from transformers import AutoModelForSequenceClassification

    path = checkpoints["classify"]
    expected = [x.softmax(-1) for x in hf_logits(path, AutoModelForSequenceClassification, TEXTS)]
    with vllm_runner(path, runner="pooling", enforce_eager=True) as llm:
        got = [torch.tensor(o.outputs.probs) for o in llm.classify(TEXTS)]
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (3,) and torch.allclose(g, e, atol=ATOL)


def test_token_classify_equals_transformers(checkpoints, vllm_runner):
    from transformers import AutoModelForTokenClassification

    path = checkpoints["token"]
    expected = [x.softmax(-1) for x in hf_logits(path, AutoModelForTokenClassification, TEXTS)]
    with vllm_runner(path, runner="pooling") as llm:
        got = [o.outputs.data for o in llm.encode(TEXTS, pooling_task="token_classify")]
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and torch.allclose(g.float(), e, atol=ATOL)


def test_embed_and_cosine_score_equal_sentence_transformers(checkpoints, vllm_runner):
    from sentence_transformers import SentenceTransformer

    path = checkpoints["embed"]
    expected = torch.tensor(SentenceTransformer(str(path), device="cpu").encode(TEXTS))
    with vllm_runner(path, runner="pooling") as llm:
        got = torch.stack([torch.tensor(o.outputs.embedding) for o in llm.embed(TEXTS)])
        scores = [o.outputs.score for o in llm.score(TEXTS[0], TEXTS[1:])]
    assert torch.allclose(got, expected, atol=ATOL)
    assert torch.allclose(torch.tensor(scores), expected[1:] @ expected[0], atol=ATOL)


def test_unservable_config_fails_at_load_naming_the_field(tmp_path, vllm_runner):
    import json

    path = save_deberta(tmp_path / "bad", "seq_cls", "v3", num_labels=1)
    config = json.loads((path / "config.json").read_text())
    config["pos_att_type"] = ["c2p", "p2p"]  # transformers builds it; its p2p term is silently unused
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match=r"pos_att_type=\['c2p', 'p2p'\]"):
        vllm_runner(path, runner="pooling")
