"""The dense + GELU kernel's polynomial (crossenc/kernels/gluon_dense_gelu.py, `_gelu`), fitted and
checked on the CPU.

Phi(-|x|) = erfc(a) / 2 with a = |x| / sqrt(2) is written t * 2^(Q(t) - x^2 log2(e) / 2), t =
1 / (1 + a / 2) (the form of Numerical Recipes' erfcc, in base 2 with the halving folded in). For
each degree, Q is fitted by weighted least squares iterated toward minimax over a in [0, 9]; the
script prints the largest relative error of Phi(-|x|), the coefficients, and how many fp16 and bf16
values in [-12, 12] (and the extremes) get a GELU, emulated in fp32 as the kernel computes it, that
rounds differently from the exact one (fp64), against the same count for erfcc's degree 9 and for
torch's `gelu`.

    python benchmarks/gelu_polynomial.py [--degrees 4 5 6]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

LOG2E = 1.0 / math.log(2.0)
# Numerical Recipes' erfcc, degree 9 (natural log, lowest power first): the kernel's until 2026-12-08.
ERFCC = [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277]


def fit(degree: int, a_max: float = 9.0, points: int = 400_001) -> tuple[np.ndarray, float]:
    """Q's coefficients (lowest power first) and the largest relative error of Phi(-|x|)."""
    a = torch.linspace(0, a_max, points, dtype=torch.float64)
    t = 1 / (1 + a / 2)
    target = (torch.log2(torch.special.erfc(a) / (2 * t)) + a * a * LOG2E).numpy()
    vander = np.vander(t.numpy(), degree + 1, increasing=True)
    weight = np.ones_like(target)
    for _ in range(80):  # Lawson's iteration: weight the points where the error is largest
        coef, *_ = np.linalg.lstsq(vander * weight[:, None], target * weight, rcond=None)
        error = vander @ coef - target
        weight = weight * np.sqrt(np.abs(error)) + 1e-30
        weight /= weight.max()
    return coef, float(np.abs(error).max() / LOG2E)  # log2 error -> relative error


def gelu_fp32(x: np.ndarray, coef) -> np.ndarray:
    """`_gelu` in fp32, operation for operation (the MUFU approximations as exact fp32)."""
    f = np.float32
    x = x.astype(f)
    t = (f(1) / (np.abs(x) * f(0.35355339059327373) + f(1))).astype(f)
    q = np.full_like(x, f(coef[-1]))
    for c in coef[-2::-1]:
        q = (q * t + f(c)).astype(f)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        half_erfc = (t * np.exp2(((x * f(-0.5 * LOG2E)) * x + q).astype(f))).astype(f)
        xh = (x * half_erfc).astype(f)
        return np.where(x >= 0, x - xh, xh).astype(f)


def values(dtype: torch.dtype) -> torch.Tensor:
    big = torch.finfo(dtype).max
    return torch.cat([torch.linspace(-12, 12, 400_000), torch.tensor([-big, -1e4, -100, 100, 1e4, big])]).to(dtype).unique()


def rounded_differently(out: torch.Tensor, x: torch.Tensor) -> int:
    x64 = x.double()
    exact = (0.5 * x64 * torch.special.erfc(-x64 * 0.5 ** 0.5)).to(x.dtype)
    return int((out.to(x.dtype).float() != exact.float()).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--degrees", nargs="+", type=int, default=[4, 5, 6])
    args = parser.parse_args()
    erfcc = [c * LOG2E for c in ERFCC]
    erfcc[0] -= 1.0  # the halving, in base 2
    candidates = [(f"degree {d}", *fit(d)) for d in args.degrees] + [("erfcc, degree 9", np.array(erfcc), 1.2e-7)]
    for dtype in (torch.float16, torch.bfloat16):
        x = values(dtype)
        print(f"{dtype}: {x.numel()} values; torch's gelu rounds {rounded_differently(torch.nn.functional.gelu(x.float()), x)} "
              "differently from the exact GELU")
        for name, coef, rel in candidates:
            out = torch.from_numpy(gelu_fp32(x.float().numpy(), coef))
            print(f"  {name:16s} max rel. error of Phi(-|x|) {rel:.2e}, rounds {rounded_differently(out, x)} differently; "
                  f"all finite: {bool(torch.isfinite(out.to(dtype)).all())}")
    for name, coef, _ in candidates[:-1]:
        print(name, "Q (lowest power first):", ", ".join(f"{float(np.float32(c)):.8f}" for c in coef))


if __name__ == "__main__":
    main()
