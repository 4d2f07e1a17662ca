"""DeBERTa v1 end to end in vLLM's CPU build: LLM.score over the dtype matrix, NLI classify,
token classification, embeddings, and `vllm serve`'s /rerank and /classify.

The references are transformers' v1 classes and sentence-transformers' CrossEncoder in float32 on
the same weights; tolerances are those of the v2 dtype matrix (tests/models/test_dtypes_vllm.py).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

vllm = pytest.importorskip("vllm")

from tests.models.test_dtypes_vllm import (  # noqa: E402
    MODES,
    TOL,
    _assert_close,
    _assert_same_argmax,
    _assert_same_order,
    _engine,
    _release,
)
from tests.utils import DOCUMENTS, QUERY, hf_logits, save_deberta  # noqa: E402

TEXTS = [QUERY, *DOCUMENTS, "what is the weather in paris"]
NLI_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}  # deberta-large-mnli's


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("deberta-v1")
    return {
        # deberta-base shape (relative c2p|p2c, no absolute positions) as a cross-encoder
        "score": save_deberta(root / "score", "seq_cls", "v1-base", num_labels=1),
        "score-fp16": save_deberta(root / "score-fp16", "seq_cls", "v1-base", num_labels=1, dtype="float16"),
        # an NLI classifier with absolute positions, token types and clamped relative positions
        "nli": save_deberta(root / "nli", "seq_cls", "v1-clamped", num_labels=3, id2label=NLI_LABELS,
                            label2id={v: k for k, v in NLI_LABELS.items()}),
        "token": save_deberta(root / "token", "token_cls", "v1-c2p-only", num_labels=5),
        "embed": save_deberta(root / "embed", "model", "v1-base"),
    }


@pytest.mark.parametrize("mode", list(MODES))
def test_score_equals_cross_encoder_in_every_dtype(checkpoints, mode):
    from sentence_transformers import CrossEncoder

    path = checkpoints["score-fp16" if MODES[mode][1] == "float16" else "score"]
    reference = CrossEncoder(str(path), device="cpu", model_kwargs={"dtype": torch.float32})
    expected = torch.tensor(reference.predict([(QUERY, d) for d in DOCUMENTS]))
    llm = _engine(path, mode, "head-fp32")
    assert llm.llm_engine.model_config.architecture == "DebertaForSequenceClassification"
    got = torch.tensor([o.outputs.score for o in llm.score(QUERY, DOCUMENTS)])
    _release(llm)
    _assert_close(got, expected, TOL[mode], f"score {mode}")
    _assert_same_order(got, expected, TOL[mode])


def test_nli_classify_equals_transformers_softmax(checkpoints):
    from transformers import AutoModelForSequenceClassification

    path = checkpoints["nli"]
    expected = torch.stack([x.softmax(-1) for x in hf_logits(path, AutoModelForSequenceClassification, TEXTS)])
    llm = _engine(path, "fp32", "head-fp32")
    got = torch.stack([torch.tensor(o.outputs.probs) for o in llm.classify(TEXTS)])
    _release(llm)
    _assert_close(got, expected, TOL["fp32"], "classify")
    _assert_same_argmax(got, expected, TOL["fp32"])


def test_token_classify_equals_transformers(checkpoints):
    from transformers import AutoModelForTokenClassification

    path = checkpoints["token"]
    expected = [x.softmax(-1) for x in hf_logits(path, AutoModelForTokenClassification, TEXTS)]
    llm = _engine(path, "fp32", "head-fp32")
    got = [o.outputs.data for o in llm.encode(TEXTS, pooling_task="token_classify")]
    _release(llm)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        _assert_close(g, e, TOL["fp32"], "token_classify")


def test_base_model_embeds_its_first_token(checkpoints):
    """The bare v1 encoder served as an embedder: vLLM's CLS pooling, normalised."""
    from transformers import AutoModel, AutoTokenizer

    path = checkpoints["embed"]
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        cls = torch.stack([model(**tok(t, return_tensors="pt")).last_hidden_state[0, 0] for t in TEXTS])
    expected = torch.nn.functional.normalize(cls, dim=-1)
    llm = _engine(path, "fp32", "head-fp32")
    got = torch.stack([torch.tensor(o.outputs.embedding) for o in llm.embed(TEXTS)])
    _release(llm)
    _assert_close(got, expected, TOL["fp32"], "embed")


def test_rerank_and_classify_over_http(checkpoints):
    import requests
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    from crossenc.demo.server import ServerSettings, VllmServer

    score_path, nli_path = str(checkpoints["score"]), str(checkpoints["nli"])
    expected = CrossEncoder(score_path, device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    nli = [x.softmax(-1) for x in hf_logits(nli_path, AutoModelForSequenceClassification, TEXTS)]
    args = ("--dtype", "float32", "--runner", "pooling")
    with VllmServer(ServerSettings(score_path, max_model_len=128, extra_args=args)) as a, \
            VllmServer(ServerSettings(nli_path, max_model_len=128, extra_args=args)) as b:
        def post(server, route, payload):
            resp = requests.post(server.url + route, json={"model": server.settings.model, **payload}, timeout=120)
            assert resp.status_code == 200, resp.text
            return resp.json()

        results = post(a, "/rerank", {"query": QUERY, "documents": DOCUMENTS})["results"]
        data = post(b, "/classify", {"input": TEXTS})["data"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    for r in results:
        assert abs(r["relevance_score"] - float(expected[r["index"]])) <= TOL["fp32"]
    for d, e in zip(data, nli, strict=True):
        _assert_close(torch.tensor(d["probs"]), e, TOL["fp32"], "/classify")
        assert d["label"] == NLI_LABELS[int(e.argmax())]
