"""CROSSENC_TORCH_COMPILE=1: the encoder compiled by vLLM (its default compilation mode; on the CPU
build, Inductor traced once with a dynamic token count) scores as transformers does.

The variable is read when the engine builds the model; each engine runs in a fresh interpreter
with it set, in that process (VLLM_ENABLE_V1_MULTIPROCESSING=0), and reports whether vLLM
compiled the encoder. (The convolution branch of DeBERTa-v2, whose sequence
boundaries are a tensor input of the graph, is compiled in tests/models/test_deberta_v2.py.)
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

from tests.utils import DOCUMENTS, QUERY, save_deberta  # noqa: E402

ATOL = 1e-4

_RUN = """
import json, sys
import vllm

if __name__ == "__main__":
    path, query, documents = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    llm = vllm.LLM(path, runner="pooling", dtype="float32", gpu_memory_utilization=0.05, seed=0)
    got = [o.outputs.score for o in llm.score(query, documents)]
    encoder = lambda m: m.deberta.encoder
    compiled = llm.apply_model(lambda m: getattr(encoder(m), "compiled", None))[0]
    split = llm.apply_model(lambda m: encoder(m).vllm_config.compilation_config.splitting_ops)[0]
    print("RESULT " + json.dumps({"got": got, "compiled": compiled, "split": split}), flush=True)
"""


def _run(path) -> dict:
    env = {**os.environ, "CROSSENC_TORCH_COMPILE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    out = subprocess.run([sys.executable, "-c", _RUN, str(path), QUERY, json.dumps(DOCUMENTS)], capture_output=True,
                         text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    [line] = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_compiled_score_equals_cross_encoder(tmp_path):
    from sentence_transformers import CrossEncoder

    path = save_deberta(tmp_path / "score", "seq_cls", "v3", num_labels=1)
    expected = CrossEncoder(str(path), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    result = _run(path)
    assert result["compiled"] is True
    # Where vLLM captures CUDA graphs, the attention runs between them.
    assert "crossenc::packed_disentangled_attention" in result["split"]
    assert torch.allclose(torch.tensor(result["got"]), torch.tensor(expected, dtype=torch.float32), atol=ATOL)

