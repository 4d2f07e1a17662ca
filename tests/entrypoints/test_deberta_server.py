"""A real `vllm serve` process with DeBERTa: every pooling endpoint over HTTP, and bad input.

Two servers run side by side: a cross-encoder (num_labels == 1) and a sentence-transformers
embedding model. Each answer is compared with transformers / sentence-transformers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

pytest.importorskip("vllm")
requests = pytest.importorskip("requests")

from crossenc.demo.server import ServerSettings, VllmServer  # noqa: E402
from tests.models.test_deberta_v2_vllm import _save_sentence_transformer  # noqa: E402
from tests.utils import DOCUMENTS, QUERY, save_deberta  # noqa: E402

ATOL = 1e-4
MAX_MODEL_LEN = 128
LONG_DOCUMENT = "the gzip module can compress files " * 40  # far over MAX_MODEL_LEN tokens


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    cross = save_deberta(root / "cross", "seq_cls", "v3", num_labels=1,
                         id2label={0: "relevant"}, label2id={"relevant": 0})
    embed = _save_sentence_transformer(root / "embed")
    args = ("--dtype", "float32", "--runner", "pooling")
    settings = [ServerSettings(str(p), max_model_len=MAX_MODEL_LEN, extra_args=args) for p in (cross, embed)]
    with VllmServer(settings[0]) as a, VllmServer(settings[1]) as b:
        yield {"cross": a, "embed": b}


def _post(server, route, payload, status=200):
    resp = requests.post(server.url + route, json={"model": server.settings.model, **payload}, timeout=120)
    assert resp.status_code == status, resp.text
    return resp.json()


def _cross_encoder_scores(path, pairs):
    from sentence_transformers import CrossEncoder

    return torch.tensor(CrossEncoder(path, device="cpu").predict(pairs), dtype=torch.float32)


def test_score_and_rerank_equal_cross_encoder(servers):
    server = servers["cross"]
    expected = _cross_encoder_scores(server.settings.model, [(QUERY, d) for d in DOCUMENTS])
    score = _post(server, "/score", {"queries": QUERY, "documents": DOCUMENTS})
    got = torch.tensor([d["score"] for d in sorted(score["data"], key=lambda d: d["index"])])
    assert torch.allclose(got, expected, atol=ATOL)
    for route in ("/rerank", "/v1/rerank"):
        results = _post(server, route, {"query": QUERY, "documents": DOCUMENTS})["results"]
        # Best first (random weights give near-ties, so compare scores rather than an argsort).
        assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
        assert all(a["relevance_score"] >= b["relevance_score"] for a, b in zip(results, results[1:]))
        for r in results:
            assert abs(r["relevance_score"] - expected[r["index"]].item()) <= ATOL
            assert r["document"]["text"] == DOCUMENTS[r["index"]]
    top = _post(server, "/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})["results"]
    assert [r["index"] for r in top] == [r["index"] for r in results[:2]]


def _finished_engine_requests(server) -> float:
    """vLLM's count of finished engine requests, from its Prometheus metrics."""
    text = requests.get(server.url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def test_a_requests_pairs_share_engine_requests_and_score_as_alone(servers):
    """crossenc packs a request's pairs into engine requests longer than max_model_len
    (`pair_packing`); each pair scores as it does sent on its own, and the served model keeps
    its max_model_len."""
    server = servers["cross"]
    documents = [f"{d} ({i})" for i, d in enumerate(DOCUMENTS * 6)]
    alone = [_post(server, "/score", {"queries": QUERY, "documents": [d]})["data"][0]["score"] for d in documents]
    before = _finished_engine_requests(server)
    results = _post(server, "/rerank", {"query": QUERY, "documents": documents})["results"]
    engine_requests = _finished_engine_requests(server) - before
    assert engine_requests == 1  # (requests of max_model_len 128 would take 9 for these 18 pairs)
    got = {r["index"]: r["relevance_score"] for r in results}
    assert max(abs(got[i] - s) for i, s in enumerate(alone)) <= 1e-6
    models = requests.get(server.url + "/v1/models", timeout=30).json()["data"]
    assert [m["max_model_len"] for m in models] == [MAX_MODEL_LEN]


def test_classify_uses_sigmoid_and_id2label(servers):
    server = servers["cross"]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server.settings.model)
    model = AutoModelForSequenceClassification.from_pretrained(server.settings.model).eval()
    with torch.no_grad():
        expected = model(**tok(QUERY, return_tensors="pt")).logits[0].sigmoid()
    data = _post(server, "/classify", {"input": [QUERY]})["data"][0]
    assert data["label"] == "relevant" and data["num_classes"] == 1
    assert torch.allclose(torch.tensor(data["probs"]), expected, atol=ATOL)


def test_embeddings_pooling_and_cosine_score_equal_sentence_transformers(servers):
    from sentence_transformers import SentenceTransformer

    server = servers["embed"]
    texts = [QUERY, *DOCUMENTS]
    expected = torch.tensor(SentenceTransformer(server.settings.model, device="cpu").encode(texts))
    data = _post(server, "/v1/embeddings", {"input": texts})["data"]
    assert torch.allclose(torch.tensor([d["embedding"] for d in data]), expected, atol=ATOL)
    pooled = _post(server, "/pooling", {"input": texts, "task": "embed"})["data"]
    assert torch.allclose(torch.tensor([d["data"] for d in pooled]), expected, atol=ATOL)
    score = _post(server, "/score", {"queries": texts[0], "documents": texts[1:]})["data"]
    assert torch.allclose(torch.tensor([d["score"] for d in score]), expected[1:] @ expected[0], atol=ATOL)


def test_too_long_pair_is_a_clear_400_and_truncation_works(servers):
    server = servers["cross"]
    error = _post(server, "/rerank", {"query": QUERY, "documents": [LONG_DOCUMENT]}, status=400)
    assert str(MAX_MODEL_LEN) in str(error)
    # Among pairs that fit, with room for it in one engine request: refused by its own length.
    documents = [DOCUMENTS[0], LONG_DOCUMENT, DOCUMENTS[1]]
    error = _post(server, "/rerank", {"query": QUERY, "documents": documents}, status=400)
    assert str(MAX_MODEL_LEN) in str(error)
    results = _post(server, "/rerank", {"query": QUERY, "documents": [LONG_DOCUMENT, DOCUMENTS[0]],
                                        "truncate_prompt_tokens": MAX_MODEL_LEN})["results"]
    assert sorted(r["index"] for r in results) == [0, 1]
    assert all(0.0 <= r["relevance_score"] <= 1.0 for r in results)


def _transformers_pair_scores(path, pairs):
    """sigmoid of transformers' logit for each pair tokenized alone, as vLLM tokenizes it.

    transformers' tokenizer treats an empty `text_pair` as no pair (one [SEP]); a batched call,
    as sentence-transformers' CrossEncoder makes, keeps the second [SEP]. Served scores follow the
    single-pair tokenization.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.cat([model(**tok(a, b, return_tensors="pt")).logits[0].sigmoid() for a, b in pairs])


def test_empty_inputs_are_handled_and_the_server_keeps_serving(servers):
    server = servers["cross"]
    empty = requests.post(server.url + "/rerank", json={"model": server.settings.model, "query": QUERY,
                                                        "documents": []}, timeout=60)
    assert empty.status_code == 200 and empty.json()["results"] == [] or 400 <= empty.status_code < 500, empty.text
    pairs = [("", ""), ("", QUERY), (QUERY, "")]
    expected = _transformers_pair_scores(server.settings.model, pairs)
    got = [_post(server, "/score", {"queries": a, "documents": [b]})["data"][0]["score"] for a, b in pairs]
    assert torch.allclose(torch.tensor(got), expected, atol=ATOL)
    # Concurrent requests after the errors above are all answered.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _post(server, "/rerank", {"query": QUERY, "documents": DOCUMENTS}),
                                range(8)))
    assert all(len(a["results"]) == len(DOCUMENTS) for a in answers)
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
