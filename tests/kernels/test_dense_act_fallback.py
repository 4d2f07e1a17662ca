"""The encoder blocks' dense + GELU dispatch when the fused kernel raises (a Triton whose Gluon
compiles it differently): the block gets dense then GELU, once and for the rest of the process,
with a warning. Runs anywhere: the kernel module is replaced by one that raises."""

from __future__ import annotations

import logging
import sys
import types

import torch
from torch import nn
from transformers.activations import ACT2FN

import crossenc.kernels
from crossenc.model_executor.layers import dense_gelu as layer


def test_a_failing_kernel_falls_back_for_good(monkeypatch, caplog):
    calls = []

    def broken(x, weight, bias):
        calls.append(x.shape)
        raise RuntimeError("no such Gluon op")

    monkeypatch.setitem(sys.modules, "crossenc.kernels.gluon_dense_gelu",
                        types.SimpleNamespace(dense_gelu=broken))
    monkeypatch.setattr(layer, "_kernel_failed", [])
    monkeypatch.setattr(crossenc.kernels, "gluon_kernel_available", lambda module, device_index: True)
    # Every check but the device's (this runs on any machine) and the availability's, which is the real one.
    monkeypatch.setattr(layer, "can_fuse", lambda x, dense, act: layer._kernel_available(0))
    torch.manual_seed(0)
    x, dense, act = torch.randn(5, 8), nn.Linear(8, 16), ACT2FN["gelu"]
    assert layer._kernel_available(0)

    with caplog.at_level(logging.WARNING, logger="crossenc"):
        out = layer.dense_act(x, dense, act)
    torch.testing.assert_close(out, act(dense(x)), rtol=0, atol=0)
    assert "fused dense + GELU kernel failed (RuntimeError: no such Gluon op)" in caplog.text
    assert not layer._kernel_available(0)
    torch.testing.assert_close(layer.dense_act(x, dense, act), out, rtol=0, atol=0)
    assert calls == [(5, 8)]  # tried once
