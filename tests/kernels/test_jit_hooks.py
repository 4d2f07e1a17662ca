"""crossenc's kernels compile under the Triton JIT hooks that vLLM's JIT monitor installs once its
warmup is done (vLLM 0.26 and 0.32 do). Before calling a hook Triton serializes the launch's
constexpr arguments to JSON, so a kernel launched with anything else (a Gluon layout) would fail to
compile in a server. Skipped without CUDA or without Triton's JIT hooks."""

from __future__ import annotations

import pytest
import torch
import triton

from crossenc.kernels.disentangled_attention import disentangled_attention_ref, saturation_distance
from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention
from crossenc.model_executor.layers.dense_gelu import _kernel_available
from crossenc.model_executor.layers.layernorm import add_layer_norm
from tests.kernels.test_triton_disentangled_attention import REL_TOL, _packed_inputs, _rel_err, _wgmma

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not hasattr(getattr(triton, "knobs", None), "runtime"), reason="no Triton JIT hooks"),
]


@pytest.fixture
def compiled_names():
    """Triton's JIT hooks, set as vLLM's monitor sets them: the names of the kernels compiled."""
    runtime = triton.knobs.runtime
    names: list[str] = []

    def hook(*, fn, **_):
        names.append(fn.name)
        return False  # compile as usual

    saved = runtime.jit_cache_hook, runtime.jit_post_compile_hook
    runtime.jit_cache_hook = runtime.jit_post_compile_hook = hook
    yield names
    runtime.jit_cache_hook, runtime.jit_post_compile_hook = saved


def _forget_compiled(*kernels):
    """Drop the kernels' in-process variants, so that the next launch compiles (through the hooks)."""
    for kernel in kernels:
        kernel.device_caches.clear()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_attention_compiles_under_jit_hooks(compiled_names, dtype):
    from crossenc.kernels import triton_disentangled_attention as module

    kernels = {"_disentangled_attention_fwd": module._disentangled_attention_fwd}
    if _wgmma(dtype):  # fp16/bf16 on Hopper: the warpgroup-MMA kernel, with and without far ranges
        from crossenc.kernels import gluon_disentangled_attention

        kernels = {"_wgmma_attention_fwd": gluon_disentangled_attention._wgmma_attention_fwd}
    _forget_compiled(*kernels.values())
    for seed, lengths in enumerate([[7, 100], [600, 3]]):
        args = _packed_inputs(lengths, 2, 64, dtype, 256, 512, True, True, seed=seed)
        out = triton_disentangled_attention(*args, far=saturation_distance(args[7].cpu()))
        assert _rel_err(out, disentangled_attention_ref(*args)) < REL_TOL[dtype]
    assert set(compiled_names) == set(kernels)


def test_add_layer_norm_compiles_under_jit_hooks(compiled_names):
    from crossenc.kernels.triton_add_layernorm import _add_layer_norm_fwd

    _forget_compiled(_add_layer_norm_fwd)
    x, residual = torch.randn(2, 333, 768, device="cuda", dtype=torch.float16).unbind(0)
    norm = torch.nn.LayerNorm(768, device="cuda", dtype=torch.float16)
    out = add_layer_norm(x, residual, norm)
    ref = torch.nn.functional.layer_norm(x.float() + residual.float(), (768,), norm.weight.float(),
                                         norm.bias.float(), norm.eps)
    assert (out.float() - ref).abs().max().item() < 1e-2
    assert compiled_names == ["_add_layer_norm_fwd"] * 2  # the hook before the compile and after


@pytest.mark.skipif(not torch.cuda.is_available() or not _kernel_available(torch.cuda.current_device()),
                    reason="needs an sm_90 device and a verified Triton")
def test_dense_gelu_compiles_under_jit_hooks(compiled_names):
    from crossenc.kernels.gluon_dense_gelu import _dense_gelu_ws, dense_gelu

    _forget_compiled(_dense_gelu_ws)
    x = torch.randn(333, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 768, device="cuda", dtype=torch.bfloat16) / 768 ** 0.5
    b = torch.randn(3072, device="cuda", dtype=torch.bfloat16)
    out = dense_gelu(x, w, b)
    ref = torch.nn.functional.gelu(x.float() @ w.float().T + b.float())
    assert (out.float() - ref).abs().max().item() < 0.05
    assert compiled_names == ["_dense_gelu_ws"] * 2
