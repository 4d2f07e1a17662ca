"""The fused residual add + LayerNorm on a CUDA device against torch's LayerNorm (fp32 math),
and the encoder blocks' dispatch to it. Skipped without CUDA; the interpreter test in
test_triton_interpreted.py runs the kernel's logic anywhere."""

from __future__ import annotations

import pytest
import torch

from crossenc.model_executor.layers.layernorm import add_layer_norm, can_fuse
from tests.utils import GraphRecorder, compiled_variants

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,hidden", [(41_000, 768), (7, 1024), (1, 1536), (333, 96)])
def test_fused_add_layer_norm_matches_torch(dtype, rows, hidden):
    gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
    x = torch.randn(rows, hidden, device="cuda", generator=gen).mul(4).add(2).to(dtype)
    residual = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
    norm = torch.nn.LayerNorm(hidden, eps=1e-7, device="cuda", dtype=dtype)
    with torch.no_grad():
        norm.weight.normal_(generator=gen)
        norm.bias.normal_(generator=gen)
    assert can_fuse(x, residual, norm)
    ref = torch.nn.functional.layer_norm(x.float() + residual.float(), (hidden,), norm.weight.float(),
                                         norm.bias.float(), norm.eps)
    out = add_layer_norm(x, residual, norm)
    assert out.dtype == dtype and out.shape == x.shape
    # The sum and statistics stay in fp32: one rounding of the output away from the fp32 result
    # (torch's add then LayerNorm also rounds the sum).
    err = (out.float() - ref).abs().max().item()
    assert err <= torch.finfo(dtype).eps * ref.abs().max().item() + 1e-5, err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_layer_norm_of_x_plus_one_row(dtype):
    """The kernel's other form, LayerNorm(x + a bias row): benchmarks/residual_gemm.py times the
    residual added in cuBLAS's GEMM against the model's path with it."""
    from crossenc.kernels.triton_add_layernorm import triton_add_layer_norm

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4100, 1024, device="cuda", generator=gen).mul(4).to(dtype)
    row, weight, bias = torch.randn(3, 1024, device="cuda", generator=gen).to(dtype).unbind(0)
    ref = torch.nn.functional.layer_norm(x.float() + row.float(), (1024,), weight.float(), bias.float(), 1e-7)
    out = triton_add_layer_norm(x, row, weight, bias, 1e-7)
    err = (out.float() - ref).abs().max().item()
    assert err <= torch.finfo(dtype).eps * ref.abs().max().item() + 1e-5, err


def test_other_norms_and_layouts_take_torch():
    x = torch.randn(8, 64, device="cuda")
    norm = torch.nn.LayerNorm(64, device="cuda")
    assert not can_fuse(x.t().contiguous().t(), x, norm)  # a strided view
    assert not can_fuse(x, x, torch.nn.LayerNorm(64, elementwise_affine=False, device="cuda"))
    assert not can_fuse(x.cpu(), x.cpu(), torch.nn.LayerNorm(64))
    assert torch.allclose(add_layer_norm(x.t().contiguous().t(), x, norm), norm(x + x))


def test_one_compiled_kernel_whatever_the_token_count():
    """vLLM's warmup runs the largest batch, a server's steps any token count: the kernel compiles
    one variant for all of them (no request waits for a compile)."""
    from crossenc.kernels.triton_add_layernorm import _add_layer_norm_fwd

    norm = torch.nn.LayerNorm(768, device="cuda", dtype=torch.float16)
    compiled = []
    for rows in [65_536, 1, 7, 16, 333, 4097]:
        x, residual = torch.randn(2, rows, 768, device="cuda", dtype=torch.float16).unbind(0)
        out = add_layer_norm(x, residual, norm)
        assert torch.allclose(out.float(), norm(x + residual).float(), atol=1e-2, rtol=1e-2)
        compiled.append(compiled_variants(_add_layer_norm_fwd))
    assert compiled[1:] == compiled[:1] * 5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_add_layer_norm_is_one_op_running_the_kernel(dtype, monkeypatch):
    """Under torch.compile at inference (vLLM's compilation, CROSSENC_TORCH_COMPILE=1) the residual
    add and the LayerNorm are one graph node, `crossenc::add_layer_norm`, which runs the kernel:
    the compiled graph gives the eager kernel's result bit for bit, at token counts it was not
    compiled for too, the residual a strided view as well."""
    import crossenc.model_executor.layers.layernorm as module

    calls = []
    kernel = module._fused_kernel()
    monkeypatch.setattr(module, "_fused_kernel",
                        lambda: lambda *args: calls.append(args[0].shape) or kernel(*args))
    norm = torch.nn.LayerNorm(768, eps=1e-7, device="cuda", dtype=dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    recording = GraphRecorder()
    for backend in (recording, "inductor"):
        torch._dynamo.reset()
        compiled = torch.compile(lambda x, r: add_layer_norm(x, r, norm), backend=backend, fullgraph=True,
                                 dynamic=True)
        for m in (300, 17, 4100):
            x = torch.randn(m, 768, device="cuda", dtype=dtype)
            residual = torch.randn(768, m, device="cuda", dtype=dtype).t() if m == 17 else torch.randn_like(x)
            calls.clear()
            with torch.no_grad():
                got = compiled(x, residual)
            assert calls == [x.shape], (backend, m)  # the kernel ran, once
            assert torch.equal(got, kernel(x, residual.contiguous(), norm.weight, norm.bias, norm.eps)), (backend, m)
    # one graph per residual layout (the strided one is guarded apart), each the one op
    graphs = recording.graph_targets()
    assert graphs and all(graph == ["crossenc.add_layer_norm.default"] for graph in graphs), graphs


def test_compiled_add_layer_norm_with_autograd_is_torchs_path():
    """The op has no backward: traced with autograd on, the add and the LayerNorm stay torch's."""
    norm = torch.nn.LayerNorm(768, device="cuda", dtype=torch.float16)
    x, residual = torch.randn(2, 300, 768, device="cuda", dtype=torch.float16).unbind(0)
    recording = GraphRecorder()
    torch._dynamo.reset()
    got = torch.compile(lambda x, r: add_layer_norm(x, r, norm), backend=recording, fullgraph=True,
                        dynamic=True)(x, residual)
    targets = recording.targets()
    assert targets and "crossenc.add_layer_norm.default" not in targets
    assert torch.equal(got, norm(x + residual))
