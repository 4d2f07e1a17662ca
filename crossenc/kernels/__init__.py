"""crossenc's GPU kernels: the disentangled attention (Triton, and Gluon on Hopper) and the encoder
blocks' fused pointwise work (residual + LayerNorm in Triton, dense + bias + GELU in Gluon)."""

from __future__ import annotations

import functools
import importlib

import torch

# The Triton releases the Gluon kernels were verified on. Gluon, their language, is experimental and
# changes between releases; elsewhere the Triton kernels or torch run instead.
GLUON_TRITON_RELEASES = ("3.6.",)


@functools.lru_cache(maxsize=None)
def gluon_kernel_available(module: str, device_index: int) -> bool:
    """Whether the Hopper Gluon kernels of `crossenc.kernels.<module>` run on this device: sm_90
    (CUDA, not ROCm) and a verified Triton whose Gluon has what they use."""
    try:
        import triton

        if not triton.__version__.startswith(GLUON_TRITON_RELEASES):
            return False
        importlib.import_module(f"crossenc.kernels.{module}")
    except Exception:  # no Triton, or a Gluon without what the kernel uses
        return False
    return torch.version.hip is None and torch.cuda.get_device_capability(device_index)[0] == 9
