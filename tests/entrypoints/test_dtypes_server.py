"""`vllm serve` with the dtypes users run: /rerank from a real server with `--dtype auto` on a
float16 checkpoint (vLLM's default), with float16 and bfloat16 whose head runs in the model's
dtype (`--hf-overrides '{"head_dtype": "model"}'`), and in float32, against transformers in
float32 on the same weights (tolerances as in tests/models/test_dtypes_vllm.py, which runs every
dtype and head choice through the engine for every task; a server per combination cost ~23 s
each).
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

pytest.importorskip("vllm")
requests = pytest.importorskip("requests")

from crossenc.demo.server import ServerSettings, VllmServer  # noqa: E402
from tests.models.test_dtypes_vllm import HEADS, MODES, PAIRS_DOCS, TOL, _ids  # noqa: E402
from tests.utils import QUERY, save_deberta  # noqa: E402

SERVED = [("auto-fp16", "head-fp32"), ("fp16", "head-model"), ("bf16", "head-model"), ("fp32", "head-fp32")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-dtypes")
    return {dtype: save_deberta(root / dtype, "seq_cls", "v3", num_labels=1, dtype=dtype)
            for dtype in ("float32", "float16")}


def _expected(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        batch = tok([QUERY] * len(PAIRS_DOCS), PAIRS_DOCS, padding=True, return_tensors="pt")
        return model(**batch).logits[:, 0].sigmoid()


@pytest.mark.parametrize("mode,head", SERVED, ids=[_ids(p) for p in SERVED])
def test_rerank_over_http(checkpoints, mode, head):
    dtype, ckpt = MODES[mode]
    path = checkpoints[ckpt]
    args = ["--dtype", dtype, "--runner", "pooling"]
    if HEADS[head] is not None:
        args += ["--hf-overrides", json.dumps({"head_dtype": HEADS[head]})]
    with VllmServer(ServerSettings(str(path), max_model_len=512, extra_args=tuple(args))) as server:
        resp = requests.post(server.url + "/rerank", json={"query": QUERY, "documents": PAIRS_DOCS}, timeout=120)
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
    expected = _expected(path)
    got = torch.zeros(len(PAIRS_DOCS))
    for r in results:
        got[r["index"]] = r["relevance_score"]
    assert sorted(r["index"] for r in results) == list(range(len(PAIRS_DOCS)))
    assert (got - expected).abs().max().item() <= TOL[mode]
    # Best first, and in transformers' order wherever its scores are more than 2*tol apart.
    order = [r["index"] for r in results]
    for a, b in zip(order, order[1:]):
        assert not expected[b] - expected[a] > 2 * TOL[mode]
