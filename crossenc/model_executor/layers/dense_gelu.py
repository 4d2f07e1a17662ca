"""An encoder block's intermediate dense and its activation, act(dense(x)).

On a Hopper GPU (sm_90) with a verified Triton, in eager mode, with transformers' exact GELU and an
unquantized fp16/bf16 dense, `dense_act` runs the GEMM, the bias and the GELU as one
warp-specialized Gluon kernel (crossenc/kernels/gluon_dense_gelu.py): the GELU pass's read and
write of the [tokens, intermediate] activations are gone. Elsewhere (CPU, other GPUs, other
activations) it is `act(dense(x))`, and so it is for the rest of the process once the kernel
has raised (logged as a warning). Under torch.compile (vLLM's compilation, CROSSENC_TORCH_COMPILE=1)
a CUDA dense with the exact GELU is one graph node, the custom op `crossenc::dense_gelu`, which runs
the kernel where it can and `gelu(linear(x))` where it cannot: Inductor would otherwise call cuBLAS
and then a GELU kernel over the activations. CROSSENC_FUSED_DENSE_GELU=0 turns the kernel off. On
an H100 it takes the forward of v3-base rerank-short from 2.03-2.06 to 2.11-2.22 M tokens/s
(docs/benchmarks.md).
"""

from __future__ import annotations

import os

import torch
from torch import nn


def _kernel_available(device_index: int) -> bool:
    from crossenc.kernels import gluon_kernel_available

    return gluon_kernel_available("gluon_dense_gelu", device_index)


def _exact_gelu(act: nn.Module) -> bool:
    """transformers' GELUActivation with torch's exact (erf) GELU, or torch's own nn.GELU()."""
    if type(act) is nn.GELU:
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu


def _plain_cuda_gelu_dense(x: torch.Tensor, dense: nn.Module, act: nn.Module) -> bool:
    """A CUDA dense with a bias, unquantized, returning its whole output, and the exact GELU
    after it, with the kernel not switched off: what the kernel may take (the rest, the
    kernel's availability and the tensors' dtypes and strides, is checked as it runs)."""
    weight, bias = getattr(dense, "weight", None), getattr(dense, "bias", None)
    if not (x.is_cuda and isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
            and _exact_gelu(act) and os.environ.get("CROSSENC_FUSED_DENSE_GELU", "1") != "0"):
        return False
    if getattr(dense, "skip_bias_add", False) or getattr(dense, "gather_output", False):
        return False
    quant = getattr(dense, "quant_method", None)
    return quant is None or type(quant).__name__ == "UnquantizedLinearMethod"


def _kernel_takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    if not x.is_cuda:
        return False
    if not _kernel_available(x.device.index if x.device.index is not None else torch.cuda.current_device()):
        return False
    from crossenc.kernels.gluon_dense_gelu import supports

    return supports(x, weight, bias)


def can_fuse(x: torch.Tensor, dense: nn.Module, act: nn.Module) -> bool:
    """Whether `dense_act` runs the kernel, eagerly."""
    return (not torch.compiler.is_compiling() and _plain_cuda_gelu_dense(x, dense, act)
            and _kernel_takes(x, dense.weight, dense.bias))


def _run_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
    from crossenc.kernels.gluon_dense_gelu import dense_gelu

    try:
        return dense_gelu(x, weight, bias)
    except Exception as err:  # raised before the launch (a Triton whose Gluon compiles it otherwise)
        from crossenc.kernels import gluon_kernel_failed

        gluon_kernel_failed("gluon_dense_gelu", err)  # the server keeps serving, dense then GELU
        return None


@torch.library.custom_op("crossenc::dense_gelu", mutates_args=())
def dense_gelu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(linear(x, weight, bias)), the exact GELU, as one node of a compiled graph."""
    if _kernel_takes(x, weight, bias) and (out := _run_kernel(x, weight, bias)) is not None:
        return out
    return nn.functional.gelu(nn.functional.linear(x, weight, bias))


@dense_gelu_op.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


def dense_act(x: torch.Tensor, dense: nn.Module, act: nn.Module) -> torch.Tensor:
    """act(dense(x)), x [T, in] -> [T, out]."""
    if torch.compiler.is_compiling():
        # (At inference, as vLLM runs: the op has no backward, which a traced autograd would need.)
        if not torch.is_grad_enabled() and _plain_cuda_gelu_dense(x, dense, act):
            return dense_gelu_op(x, dense.weight, dense.bias)
    elif can_fuse(x, dense, act) and (out := _run_kernel(x, dense.weight, dense.bias)) is not None:
        return out
    return act(dense(x))
