"""CROSSENC_TORCH_COMPILE=1: the encoder compiled by vLLM (its default compilation mode; on the CPU
build, Inductor traced once with a dynamic token count) scores as transformers does.

The variable is read when crossenc's model module is imported, so each engine runs in a fresh
interpreter; the engine runs in that process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and reports
whether vLLM compiled the encoder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

vllm = pytest.importorskip("vllm")

from tests.utils import DOCUMENTS, QUERY, hf_logits, save_deberta  # noqa: E402

ATOL = 1e-4
TEXTS = [QUERY, *DOCUMENTS]

_RUN = """
import json, sys
import vllm

if __name__ == "__main__":
    path, task = sys.argv[1], sys.argv[2]
    llm = vllm.LLM(path, runner="pooling", gpu_memory_utilization=0.05, seed=0)
    texts = json.loads(sys.argv[3])
    if task == "score":
        got = [o.outputs.score for o in llm.score(texts[0], texts[1:])]
    else:
        got = [o.outputs.data.tolist() for o in llm.encode(texts, pooling_task="token_classify")]
    compiled = llm.apply_model(lambda m: getattr(m.deberta.encoder, "compiled", None))[0]
    print("RESULT " + json.dumps({"got": got, "compiled": compiled}), flush=True)
"""


def _run(path, task) -> dict:
    env = {**os.environ, "CROSSENC_TORCH_COMPILE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    out = subprocess.run([sys.executable, "-c", _RUN, str(path), task, json.dumps(TEXTS)], capture_output=True,
                         text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    [line] = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_compiled_score_equals_cross_encoder(tmp_path):
    from sentence_transformers import CrossEncoder

    path = save_deberta(tmp_path / "score", "seq_cls", "v3", num_labels=1)
    expected = CrossEncoder(str(path), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    result = _run(path, "score")
    assert result["compiled"] is True
    assert torch.allclose(torch.tensor(result["got"]), torch.tensor(expected, dtype=torch.float32), atol=ATOL)


def test_compiled_token_classify_equals_transformers(tmp_path):
    """DeBERTa-v2's convolution branch (sequence boundaries as a tensor input of the graph)."""
    from transformers import AutoModelForTokenClassification

    path = save_deberta(tmp_path / "token", "token_cls", "v2-conv", num_labels=5)
    expected = [x.softmax(-1) for x in hf_logits(path, AutoModelForTokenClassification, TEXTS)]
    result = _run(path, "token_classify")
    assert result["compiled"] is True
    for g, e in zip(result["got"], expected, strict=True):
        g = torch.tensor(g)
        assert g.shape == e.shape and torch.allclose(g.float(), e, atol=ATOL)
