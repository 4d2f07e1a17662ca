"""An encoder block's intermediate dense, GELU(x @ W^T + b), on one GPU: torch's GEMM (the bias in
cuBLAS's epilogue) then an exact GELU, against one Triton GEMM with the bias and the exact (erf) GELU
in its epilogue (loads through pointers, or through tensor descriptors: Hopper's TMA, one program
per output tile or one per SM walking the tiles), crossenc's warp-specialized Gluon kernel
(crossenc/kernels/gluon_dense_gelu.py, sm_90), and cuBLASLt's own GELU epilogue
(`torch._addmm_activation`, the tanh approximation, which transformers' DeBERTa does not use).
The Triton kernels are timing only, not the model's.

[T, 768 -> 3072] (v3-base) and [T, 1024 -> 4096] (v3-large) fp16, T = 41,000 and 65,536; the
GEMM alone as the floor; max |error| against an fp32 reference; per Triton tile configuration.

    python benchmarks/fused_dense_gelu.py OUT.json
    TRITON_INTERPRET=1 python benchmarks/fused_dense_gelu.py --check    # the kernel's logic, on a CPU
"""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
CONFIGS = [(128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
           (64, 256, 64, 4, 4), (128, 64, 64, 4, 4)]


@triton.jit
def _dense_gelu(X, W, B, O, M, N, K, stride_xm, stride_wn, stride_om,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                GELU: tl.constexpr, EVEN_K: tl.constexpr):
    # Programs in groups of GROUP_M row tiles, so that consecutive programs share W's tiles in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = W + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]  # W [N, K] read as [K, N] tiles
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:  # K a multiple of BLOCK_K (768, 1024): row masks only
            x = tl.load(x_ptrs, mask=offs_m[:, None] < M, other=0.0)
            w = tl.load(w_ptrs, mask=offs_n[None, :] < N, other=0.0)
        else:
            x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < K - k0), other=0.0)
            w = tl.load(w_ptrs, mask=(offs_n[None, :] < N) & (offs_k[:, None] < K - k0), other=0.0)
        acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc += tl.load(B + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    out = O + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _dense_gelu_tma(x_desc, w_desc, o_desc, B, M, N, K,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                    NUM_PROGRAMS: tl.constexpr, GELU: tl.constexpr):
    """The same product through tensor descriptors (Hopper's TMA: no address arithmetic, tiles
    straight into shared memory for the warpgroup MMA), each program walking the output tiles
    NUM_PROGRAMS apart (persistent when NUM_PROGRAMS is the SM count), the K loops of consecutive
    tiles pipelined as one (`flatten`)."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_group = GROUP_M * tiles_n
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS, flatten=True):
        first_m = (tile // per_group) * GROUP_M
        group_m = tl.minimum(tiles_m - first_m, GROUP_M)
        off_m = (first_m + (tile % per_group) % group_m) * BLOCK_M
        off_n = ((tile % per_group) // group_m) * BLOCK_N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for ki in range(k_tiles):
            x = x_desc.load([off_m, ki * BLOCK_K])
            w = w_desc.load([off_n, ki * BLOCK_K])
            acc = tl.dot(x, w.T, acc)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        acc += tl.load(B + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
        o_desc.store([off_m, off_n], acc.to(o_desc.dtype))


def dense_gelu_tma(x, w, b, config=CONFIGS[0], gelu=True, programs=None):
    """`_dense_gelu_tma` with `programs` programs walking the tiles (None: one per tile)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = x.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bm, bn, bk, warps, stages = config
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    programs = min(programs or tiles, tiles)
    _dense_gelu_tma[(programs,)](
        TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
        TensorDescriptor.from_tensor(out, [bm, bn]), b, m, n, k,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_PROGRAMS=programs, GELU=gelu,
        num_warps=warps, num_stages=stages)
    return out


def dense_gelu(x, w, b, config=CONFIGS[0], gelu=True):
    m, k = x.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bm, bn, bk, warps, stages = config
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _dense_gelu[grid](x, w, b, out, m, n, k, x.stride(0), w.stride(0), out.stride(0),
                      BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, GELU=gelu, EVEN_K=k % bk == 0,
                      num_warps=warps, num_stages=stages)
    return out


def gluon_systems(x, w, b) -> dict:
    """crossenc's kernel (crossenc/kernels/gluon_dense_gelu.py: persistent, warp-specialized,
    128x128 tiles; sm_90 and Triton 3.6), with and without the GELU."""
    try:
        from crossenc.kernels.gluon_dense_gelu import dense_gelu as gluon_dense_gelu
    except Exception as e:  # no Gluon
        print(f"no gluon kernel: {e!r}"[:200])
        return {}
    return {"gluon warp-specialized, bias + exact GELU": lambda: gluon_dense_gelu(x, w, b),
            "gluon warp-specialized, bias alone": lambda: gluon_dense_gelu(x, w, b, gelu=False)}


def reference(x, w, b):
    return torch.nn.functional.gelu(x.float() @ w.float().T + b.float())


def check() -> None:
    """The kernel against the fp32 reference on shapes that fill no tile evenly."""
    gen = torch.Generator().manual_seed(0)
    for m, n, k in ((70, 96, 64), (5, 200, 136)):
        x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) / k ** 0.5
        b = torch.randn(n, generator=gen)
        for config in ((32, 32, 32, 4, 1), (64, 64, 64, 4, 1)):
            for name, fn in (("pointers", dense_gelu), ("descriptors", dense_gelu_tma),
                             ("descriptors, 3 programs walking the tiles",
                              lambda *a: dense_gelu_tma(*a, programs=3))):
                err = (fn(x, w, b, config) - reference(x, w, b)).abs().max().item()
                assert err < 1e-4, (name, m, n, k, config, err)
                print(f"[{m} x {k}] -> {n}, tiles {config[:3]}, {name}: max |error| {err:.1e}")


def main(path: str) -> None:
    from triton.testing import do_bench

    rows = []
    for hidden, inter in ((768, 3072), (1024, 4096)):
        for tokens in (41000, 65536):
            gen = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(tokens, hidden, device="cuda", generator=gen).half()
            w = (torch.randn(inter, hidden, device="cuda", generator=gen) / hidden ** 0.5).half()
            b = torch.randn(inter, device="cuda", generator=gen).half() * 0.1
            ref = reference(x, w, b)
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            systems = {
                "torch linear then gelu": lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b)),
                "torch linear alone (the floor)": lambda: torch.nn.functional.linear(x, w, b),
                "cuBLASLt GELU epilogue (tanh approximation)": lambda: torch._addmm_activation(b, x, w.T, use_gelu=True),
                **{f"triton {c}": (lambda c=c: dense_gelu(x, w, b, c)) for c in CONFIGS},
                **{f"triton descriptors {c}": (lambda c=c: dense_gelu_tma(x, w, b, c)) for c in CONFIGS},
                **{f"triton descriptors persistent {c}": (lambda c=c: dense_gelu_tma(x, w, b, c, programs=sms))
                   for c in CONFIGS},
                **gluon_systems(x, w, b),
            }
            row = dict(tokens=tokens, hidden=hidden, intermediate=inter)
            for name, fn in systems.items():
                try:
                    out = fn()
                    row[f"{name} ms"] = do_bench(fn, warmup=25, rep=100, return_mode="median")
                    if "alone" not in name:
                        row[f"{name} err"] = (out.float() - ref).abs().max().item()
                except Exception as e:  # a configuration out of shared memory, say
                    row[f"{name} error"] = repr(e)[:200]
            rows.append(row)
            best = {family: min(((v, k) for k, v in row.items() if k.endswith(" ms") and k.startswith(family)
                                 and (family != "triton (" or "descriptors" not in k)), default=(None, None))
                    for family in ("torch linear then", "torch linear alone", "cuBLASLt", "triton (",
                                   "triton descriptors (", "triton descriptors persistent", "gluon warp-specialized, bias +",
                                   "gluon warp-specialized, bias alone")}
            print(f"[{tokens}, {hidden} -> {inter}] " + "; ".join(
                f"{k.removesuffix(' ms')}: {v:.3f} ms" for v, k in best.values() if v is not None), flush=True)
    env = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    with open(path, "w") as f:
        json.dump(dict(env=env, rows=rows), f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        check()
    else:
        main(sys.argv[1])
