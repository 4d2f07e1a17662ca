"""An encoder block's intermediate dense and its activation, act(dense(x)).

On a Hopper GPU (sm_90) with a verified Triton, in eager mode, with transformers' exact GELU and an
unquantized fp16/bf16 dense, `dense_act` runs the GEMM, the bias and the GELU as one
warp-specialized Gluon kernel (crossenc/kernels/gluon_dense_gelu.py): the GELU pass's read and
write of the [tokens, intermediate] activations are gone. Elsewhere (CPU, other GPUs, other
activations, under torch.compile) it is `act(dense(x))`, and so it is for the rest of the
process once the kernel has raised (logged as a warning). CROSSENC_FUSED_DENSE_GELU=0 turns the
kernel off. On an H100 it takes the forward of v3-base rerank-short from 2.03-2.06 to 2.11-2.22 M
tokens/s (docs/benchmarks.md).
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


def can_fuse(x: torch.Tensor, dense: nn.Module, act: nn.Module) -> bool:
    weight, bias = getattr(dense, "weight", None), getattr(dense, "bias", None)
    if not (x.is_cuda and isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
            and _exact_gelu(act) and not torch.compiler.is_compiling()
            and os.environ.get("CROSSENC_FUSED_DENSE_GELU", "1") != "0"):
        return False
    if getattr(dense, "skip_bias_add", False) or getattr(dense, "gather_output", False):
        return False
    quant = getattr(dense, "quant_method", None)
    if quant is not None and type(quant).__name__ != "UnquantizedLinearMethod":
        return False
    if not _kernel_available(x.device.index if x.device.index is not None else torch.cuda.current_device()):
        return False
    from crossenc.kernels.gluon_dense_gelu import supports

    return supports(x, weight, bias)


def dense_act(x: torch.Tensor, dense: nn.Module, act: nn.Module) -> torch.Tensor:
    """act(dense(x)), x [T, in] -> [T, out]."""
    if can_fuse(x, dense, act):
        from crossenc.kernels.gluon_dense_gelu import dense_gelu

        try:
            return dense_gelu(x, dense.weight, dense.bias)
        except Exception as err:  # raised before the launch (a Triton whose Gluon compiles it otherwise)
            from crossenc.kernels import gluon_kernel_failed

            gluon_kernel_failed("gluon_dense_gelu", err)  # the server keeps serving, dense then GELU
    return act(dense(x))
