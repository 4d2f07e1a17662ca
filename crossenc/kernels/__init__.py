"""crossenc's GPU kernels: the disentangled attention (Triton, and Gluon on Hopper) and the encoder
blocks' fused pointwise work (residual + LayerNorm in Triton, dense + bias + GELU in Gluon)."""

from __future__ import annotations

import functools
import importlib
import logging

import torch

logger = logging.getLogger("crossenc")

# The Triton releases the Gluon kernels were verified on. Gluon, their language, is experimental and
# changes between releases; elsewhere the Triton kernels or torch run instead.
GLUON_TRITON_RELEASES = ("3.6.",)


# Gluon kernels that raised in this process (before a launch: compiling, checking): not run again.
_failed: set[str] = set()


def gluon_kernel_failed(module: str, err: BaseException) -> None:
    """Record that `crossenc.kernels.<module>` raised: from now on `gluon_kernel_available` is False
    for it and its callers run their fallback (the Triton kernel, torch), with a warning."""
    _failed.add(module)
    logger.warning("crossenc: the Gluon kernel %s failed (%s: %s); its fallback runs from now on",
                   module, type(err).__name__, err)


def gluon_kernel_has_failed(module: str) -> bool:
    return module in _failed


def failed_gluon_kernels() -> list[str]:
    """The modules whose Gluon kernels raised in this process (their fallbacks run instead)."""
    return sorted(_failed)


def gluon_kernel_available(module: str, device_index: int) -> bool:
    """Whether the Hopper Gluon kernels of `crossenc.kernels.<module>` run on this device: sm_90
    (CUDA, not ROCm), a verified Triton whose Gluon has what they use, and no failure so far."""
    return module not in _failed and _gluon_kernel_supported(module, device_index)


@functools.lru_cache(maxsize=None)
def _gluon_kernel_supported(module: str, device_index: int) -> bool:
    try:
        import triton

        if not triton.__version__.startswith(GLUON_TRITON_RELEASES):
            return False
        importlib.import_module(f"crossenc.kernels.{module}")
    except Exception:  # no Triton, or a Gluon without what the kernel uses
        return False
    return torch.version.hip is None and torch.cuda.get_device_capability(device_index)[0] == 9
