"""Tensor parallelism: DeBERTa with its heads split across 2 ranks of vLLM's CPU build.

The CPU build binds each rank's threads to cores; on a machine with one NUMA node the binding
is given by hand (one core per rank).
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

vllm = pytest.importorskip("vllm")

from tests.conftest import VllmRunner  # noqa: E402
from tests.utils import DOCUMENTS, QUERY, save_deberta  # noqa: E402

TEXTS = [QUERY, *[d for d in DOCUMENTS if d]]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism over 2 ranks needs 2 cores")
@pytest.mark.parametrize("variant", ["v2-conv", "v1-clamped"])
def test_tensor_parallel_2_equals_transformers(tmp_path, monkeypatch, variant):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # Separate c2p/p2c projections (column-parallel), the convolution branch, 4 heads -> 2 per rank;
    # DeBERTa v1: its fused per-head q/k/v rows and q/v biases split by head across the ranks.
    path = save_deberta(tmp_path / variant, "seq_cls", variant, num_labels=3)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        expected = [model(**tok(t, return_tensors="pt")).logits[0].softmax(-1) for t in TEXTS]

    # Ranks are processes of their own: run the engine in one too.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    with VllmRunner(path, runner="pooling", tensor_parallel_size=2) as llm:
        got = [torch.tensor(o.outputs.probs) for o in llm.classify(TEXTS)]
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-4)
