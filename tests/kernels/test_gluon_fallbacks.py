"""A Gluon kernel that raises before its launch (a Triton whose Gluon compiles it otherwise) costs
the server nothing but speed: the encoder block's dense + GELU, and the attention, run their
fallbacks (dense then GELU; the Triton kernel) once and for the rest of the process, with a
warning. Runs anywhere: the kernel modules are replaced by ones that raise, and the attention's
Triton kernel runs in Triton's interpreter."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from torch import nn
from transformers.activations import ACT2FN

import crossenc.kernels
from crossenc.model_executor.layers import dense_gelu as layer


def test_a_failing_dense_gelu_kernel_falls_back_for_good(monkeypatch, caplog):
    calls = []

    def broken(x, weight, bias):
        calls.append(x.shape)
        raise RuntimeError("no such Gluon op")

    monkeypatch.setitem(sys.modules, "crossenc.kernels.gluon_dense_gelu", types.SimpleNamespace(dense_gelu=broken))
    monkeypatch.setattr(crossenc.kernels, "_failed", set())
    monkeypatch.setattr(crossenc.kernels, "_gluon_kernel_supported", lambda module, device_index: True)
    # Every check but the device's (this runs on any machine) and the availability's, which is the real one.
    monkeypatch.setattr(layer, "can_fuse", lambda x, dense, act: layer._kernel_available(0))
    torch.manual_seed(0)
    x, dense, act = torch.randn(5, 8), nn.Linear(8, 16), ACT2FN["gelu"]
    assert layer._kernel_available(0)

    with caplog.at_level(logging.WARNING, logger="crossenc"):
        out = layer.dense_act(x, dense, act)
    torch.testing.assert_close(out, act(dense(x)), rtol=0, atol=0)
    assert "Gluon kernel gluon_dense_gelu failed (RuntimeError: no such Gluon op)" in caplog.text
    assert not layer._kernel_available(0)
    torch.testing.assert_close(layer.dense_act(x, dense, act), out, rtol=0, atol=0)
    assert calls == [(5, 8)]  # tried once


_ATTENTION = r"""
import sys, types, torch
import crossenc.kernels as kernels
from crossenc.kernels import triton_disentangled_attention as module
from crossenc.kernels.disentangled_attention import (
    attention_scale, disentangled_attention_ref, query_tiles, relative_position_index)

calls = []
def broken(*args, **kwargs):
    calls.append(1)
    raise RuntimeError("no such Gluon op")

sys.modules["crossenc.kernels.gluon_disentangled_attention"] = types.SimpleNamespace(wgmma_attention=broken)
# The warpgroup kernel "applies" (this runs on a CPU) until it has failed, as on Hopper.
module.uses_wgmma_kernel = lambda dim, dtype, device: not kernels.gluon_kernel_has_failed("gluon_disentangled_attention")
gen = torch.Generator().manual_seed(0)
lengths = [70, 5, 33]
cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
q, k, v = torch.randn(3, sum(lengths), 2, 32, generator=gen).unbind(0)
pos_key, pos_query = torch.randn(2, 2 * 16, 2, 32, generator=gen).unbind(0)
rel = relative_position_index(70, 16, 64, 16)
scale = attention_scale(32, 3)
ref = disentangled_attention_ref(q, k, v, cu, 70, pos_key, pos_query, rel, scale)
# As a forward's layers call it: the query tiles made once, for the warpgroup kernel's 64 rows.
wgmma_tiles = query_tiles(cu, 64)
for layer in range(2):
    out = module.triton_disentangled_attention(q, k, v, cu, 70, pos_key, pos_query, rel, scale, tiles=wgmma_tiles)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-5, (layer, err)
assert calls == [1], calls
print("ok")
"""


def test_a_failing_attention_kernel_falls_back_for_good():
    pytest.importorskip("triton")
    from tests.kernels.test_triton_interpreted import _PROBE, _interpret

    if _interpret(_PROBE).returncode != 0:
        pytest.skip("this Triton's interpreter cannot run the kernel (test_triton_interpreted.py says why)")
    out = _interpret(_ATTENTION)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    assert "Gluon kernel gluon_disentangled_attention failed (RuntimeError: no such Gluon op)" in out.stderr
