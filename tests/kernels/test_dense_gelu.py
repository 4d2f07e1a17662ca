"""The intermediate dense + bias + exact GELU as one Hopper kernel (crossenc/kernels/
gluon_dense_gelu.py) against torch's path (`gelu(linear(x, W, b))`) and an fp32 reference, and
the encoder blocks' dispatch to it. Skipped without an sm_90 device and a verified Triton."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.activations import ACT2FN

from crossenc.model_executor.layers.dense_gelu import _kernel_available, can_fuse, dense_act
from tests.utils import GraphRecorder, compiled_variants

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available() or not _kernel_available(torch.cuda.current_device()),
                       reason="needs an sm_90 device and a verified Triton"),
]


def _inputs(m, k, n, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).to(dtype)
    b = (torch.randn(n, device="cuda", generator=gen) * 0.5).to(dtype)
    return x, w, b


def _linear(w, b):
    """A CUDA nn.Linear holding w and b, in their dtype."""
    dense = torch.nn.Linear(w.shape[1], w.shape[0], device="cuda", dtype=w.dtype)
    with torch.no_grad():
        dense.weight.copy_(w)
        dense.bias.copy_(b)
    return dense


def _assert_within_torch(out, torch_out, ref):
    """The same roundings as torch's path (the biased sum, then the GELU); only the GEMM's
    summation order differs, so the error against fp32 is torch's within a rounding."""
    err, torch_err = ((t.float() - ref).abs().max().item() for t in (out, torch_out))
    assert err <= 1.5 * torch_err + torch.finfo(out.dtype).eps * ref.abs().max().item(), (err, torch_err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,k,n", [(4100, 1024, 4096), (1000, 768, 3072), (1, 768, 3072), (129, 72, 200),
                                   (333, 1024, 384), (40_853, 1024, 4096)])
@pytest.mark.parametrize("gelu", [True, False])
def test_kernel_matches_torch(dtype, m, k, n, gelu):
    from crossenc.kernels.gluon_dense_gelu import dense_gelu, supports

    x, w, b = _inputs(m, k, n, dtype, seed=m + k + n)
    assert supports(x, w, b)
    ref = x.float() @ w.float().T + b.float()
    torch_out = torch.nn.functional.linear(x, w, b)
    if gelu:
        ref = torch.nn.functional.gelu(ref)
        torch_out = torch.nn.functional.gelu(torch_out)
    out = dense_gelu(x, w, b, gelu=gelu)
    assert out.shape == (m, n) and out.dtype == dtype
    _assert_within_torch(out, torch_out, ref)
    # Every tile written (no stale memory) and the same result on a second run.
    assert torch.isfinite(out).all()
    assert torch.equal(dense_gelu(x, w, b, gelu=gelu), out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gelu_over_every_value(dtype):
    """The epilogue's GELU (a branch-free erfc) on every value of the dtype in [-12, 12] and the
    extremes, against the exact GELU (x * erfc(-x / sqrt(2)) / 2 in fp64, free of the cancellation
    in 1 + erf) within one rounding. An identity weight and a zero bias make the GEMM exact."""
    from crossenc.kernels.gluon_dense_gelu import dense_gelu

    big = torch.finfo(dtype).max
    values = torch.cat([torch.linspace(-12, 12, 400_000), torch.tensor([-big, -1e4, -100, 100, 1e4, big])])
    values = values.to(dtype).unique()
    x = torch.nn.functional.pad(values, (0, -values.numel() % 128)).view(-1, 128).cuda()
    w = torch.eye(128, dtype=dtype, device="cuda")
    out = dense_gelu(x, w, torch.zeros(128, dtype=dtype, device="cuda")).float().flatten()
    x64 = x.double().flatten()
    exact = 0.5 * x64 * torch.special.erfc(-x64 * 0.5 ** 0.5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, exact.to(dtype).float(), rtol=torch.finfo(dtype).eps, atol=1e-6)


@pytest.mark.parametrize("programs", [1, 2, 3])
def test_programs_walking_many_tiles(programs):
    """Few programs, each walking many tiles of more K steps than the ring has buffers: both
    consumers take turns on the one ring (a consumer a whole ring phase ahead read stale tiles)."""
    from crossenc.kernels.gluon_dense_gelu import dense_gelu

    x, w, b = _inputs(300, 320, 264, torch.float16, seed=programs)
    ref = torch.nn.functional.gelu(x.float() @ w.float().T + b.float())
    torch_out = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))
    _assert_within_torch(dense_gelu(x, w, b, programs=programs), torch_out, ref)


def test_one_compiled_kernel_whatever_the_token_count():
    """vLLM's warmup runs the largest batch, a server's steps any token count: the kernel compiles
    one variant for all of them (no request waits for a compile)."""
    from crossenc.kernels.gluon_dense_gelu import _dense_gelu_ws, dense_gelu

    compiled = []
    for m in [65_536, 1, 7, 16, 333, 4097]:
        x, w, b = _inputs(m, 768, 3072, torch.float16, seed=m)
        ref = torch.nn.functional.gelu(x.float() @ w.float().T + b.float())
        torch_out = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))
        _assert_within_torch(dense_gelu(x, w, b), torch_out, ref)
        compiled.append(compiled_variants(_dense_gelu_ws))
    assert compiled[1:] == compiled[:1] * 5


def test_encoder_dispatch(monkeypatch):
    monkeypatch.delenv("CROSSENC_FUSED_DENSE_GELU", raising=False)  # on by default
    x, w, b = _inputs(300, 768, 3072, torch.float16, seed=1)
    dense = _linear(w, b)
    gelu = ACT2FN["gelu"]
    assert can_fuse(x, dense, gelu)
    assert not can_fuse(x, dense, ACT2FN["gelu_new"])  # the tanh approximation: torch's path
    assert not can_fuse(x.float(), copy.deepcopy(dense).float(), gelu)  # (Module.float() converts in place)
    assert not can_fuse(x.t().contiguous().t(), dense, gelu)  # columns not contiguous
    ref = gelu(dense(x)).float()
    err = (dense_act(x, dense, gelu).float() - ref).abs().max().item()
    assert err <= 4 * torch.finfo(torch.float16).eps * ref.abs().max().item()


def test_switched_off(monkeypatch):
    x, w, b = _inputs(64, 768, 3072, torch.float16, seed=2)
    dense = torch.nn.Linear(768, 3072, device="cuda", dtype=torch.float16)
    monkeypatch.setenv("CROSSENC_FUSED_DENSE_GELU", "0")
    assert not can_fuse(x, dense, ACT2FN["gelu"])
    assert torch.equal(dense_act(x, dense, ACT2FN["gelu"]), ACT2FN["gelu"](dense(x)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_dense_act_is_one_op_running_the_kernel(dtype, monkeypatch):
    """Under torch.compile (vLLM's compilation, CROSSENC_TORCH_COMPILE=1) the dense and its GELU are
    one graph node, `crossenc::dense_gelu`, which runs the kernel: Inductor's graph gives the eager
    kernel's result bit for bit, at token counts it was not compiled for too."""
    import crossenc.kernels.gluon_dense_gelu as module

    calls = []
    kernel = module.dense_gelu
    monkeypatch.setattr(module, "dense_gelu", lambda *args, **kw: calls.append(args[0].shape) or kernel(*args, **kw))
    _, w, b = _inputs(1, 768, 3072, dtype, seed=3)
    dense = _linear(w, b)
    gelu = ACT2FN["gelu"]
    recording = GraphRecorder()
    for backend in (recording, "inductor"):
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: dense_act(x, dense, gelu), backend=backend, fullgraph=True, dynamic=True)
        for m in (300, 17, 4100):
            x, _, _ = _inputs(m, 768, 3072, dtype, seed=m)
            calls.clear()
            with torch.no_grad():  # inference, as vLLM runs
                got = compiled(x)
            assert calls == [x.shape], (backend, m)  # the kernel ran, once
            assert torch.equal(got, dense_act(x, dense, gelu)), (backend, m)
    targets = recording.targets()
    assert targets == ["crossenc.dense_gelu.default"]


def test_compiled_dense_act_with_autograd_is_torchs_path():
    """The op has no backward: where a compiled graph is traced with autograd on (not vLLM's
    inference), the dense and its GELU stay torch's ops, and the graph gives torch's result."""
    x, w, b = _inputs(300, 768, 3072, torch.float16, seed=4)
    dense = _linear(w, b)
    gelu = ACT2FN["gelu"]
    recording = GraphRecorder()
    torch._dynamo.reset()
    got = torch.compile(lambda x: dense_act(x, dense, gelu), backend=recording, fullgraph=True, dynamic=True)(x)
    targets = recording.targets()
    assert targets and "crossenc.dense_gelu.default" not in targets
    assert torch.equal(got, gelu(dense(x)))
