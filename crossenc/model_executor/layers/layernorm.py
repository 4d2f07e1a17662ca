"""The residual add and LayerNorm that close every encoder block.

On a CUDA device, in eager mode, `add_layer_norm` runs them as one Triton kernel; elsewhere
(CPU, other norm modules, and under torch.compile, where Inductor fuses them itself) it is
`norm(x + residual)`.
"""

from __future__ import annotations

import torch
from torch import nn

# A row of up to this many features stays in registers.
_MAX_FUSED_FEATURES = 4096
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _fused_kernel():
    try:
        from crossenc.kernels.triton_add_layernorm import triton_add_layer_norm
    except ImportError:  # no Triton
        return None
    return triton_add_layer_norm


def can_fuse(x: torch.Tensor, residual: torch.Tensor, norm: nn.Module) -> bool:
    return (x.is_cuda and type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None
            and norm.normalized_shape == (x.shape[-1],) and x.shape[-1] <= _MAX_FUSED_FEATURES
            and x.shape == residual.shape and x.dtype == residual.dtype == norm.weight.dtype
            and x.dtype in _FUSED_DTYPES and x.is_contiguous() and residual.is_contiguous()
            and not torch.compiler.is_compiling())


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """norm(x + residual)."""
    if can_fuse(x, residual, norm) and (kernel := _fused_kernel()) is not None:
        return kernel(x, residual, norm.weight, norm.bias, norm.eps)
    return norm(x + residual)
