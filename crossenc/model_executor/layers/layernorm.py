"""The residual add and LayerNorm that close every encoder block.

On a CUDA device `add_layer_norm` runs them as one Triton kernel; elsewhere (CPU, other norm
modules) it is `norm(x + residual)`. Under torch.compile (vLLM's compilation,
CROSSENC_TORCH_COMPILE=1) at inference a CUDA add + LayerNorm is the custom op
`crossenc::add_layer_norm`, one graph node running the same kernel: Inductor's own fusion of the
two took 14.4 ms where the kernel took 11.9 in one `LLM.score` of 2,048 pairs on an H100
(docs/benchmarks.md, "vLLM's compilation of the encoder").
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


def _kernel_shapes(x: torch.Tensor, residual: torch.Tensor, norm: nn.Module) -> bool:
    """A CUDA LayerNorm with weight and bias over the last dimension of two like tensors: what
    the kernel takes, but for the strides."""
    return (x.is_cuda and type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None
            and norm.normalized_shape == (x.shape[-1],) and x.shape[-1] <= _MAX_FUSED_FEATURES
            and x.shape == residual.shape and x.dtype == residual.dtype == norm.weight.dtype
            and x.dtype in _FUSED_DTYPES)


def can_fuse(x: torch.Tensor, residual: torch.Tensor, norm: nn.Module) -> bool:
    """Whether `add_layer_norm` runs the kernel, eagerly."""
    return (not torch.compiler.is_compiling() and _kernel_shapes(x, residual, norm)
            and x.is_contiguous() and residual.is_contiguous())


@torch.library.custom_op("crossenc::add_layer_norm", mutates_args=())
def add_layer_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> torch.Tensor:
    """layer_norm(x + residual) over the last dimension, as one node of a compiled graph."""
    if x.is_cuda and (kernel := _fused_kernel()) is not None:
        return kernel(x.contiguous(), residual.contiguous(), weight, bias, eps)
    return nn.functional.layer_norm(x + residual, (x.shape[-1],), weight, bias, eps)


@add_layer_norm_op.register_fake
def _(x, residual, weight, bias, eps):
    return x.new_empty(x.shape)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """norm(x + residual)."""
    if torch.compiler.is_compiling():
        # (At inference, as vLLM runs: the op has no backward, which a traced autograd would need.)
        if not torch.is_grad_enabled() and _kernel_shapes(x, residual, norm):
            return add_layer_norm_op(x, residual, norm.weight, norm.bias, norm.eps)
    elif can_fuse(x, residual, norm) and (kernel := _fused_kernel()) is not None:
        return kernel(x, residual, norm.weight, norm.bias, norm.eps)
    return norm(x + residual)
