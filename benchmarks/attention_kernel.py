"""Attention op alone on one GPU: the Triton kernel's tile configurations.

For each workload of shared/benchmarks.md (v3 attention: 768 wide, 256 log buckets) times
`triton_disentangled_attention` per (BLOCK_M, BLOCK_N, warps, stages): "far" as the model calls it
(key tiles past the buckets' saturation without the window), "window" with every tile pair
through the window, and the same kernel with no position terms ("no-position": a plain varlen
FlashAttention, the floor for the fused kernel). "model": what the model runs (no configuration
given: on Hopper the warpgroup-MMA kernel where it applies, else the Triton kernel's default).
"wgmma-window": on Hopper, where the model runs the warpgroup-MMA kernel on a batch with far ranges,
the same kernel with the window on every tile pair instead. Each variant is first checked against
the fp32 torch reference on the same inputs. "flash-attention" is torch's own varlen FlashAttention
(`torch.nn.attention.varlen.varlen_attn`, else `aten._flash_attention_forward`) on the same
packed q/k/v without position terms, checked against crossenc's "no-position" output.
"same-rows" (`--same-rows`, a diagnostic, not a result) runs the model's configuration with every
distance mapped to position row 0, so that each step's window loads stay in L1: a bound on what the
position rows' traffic through L2 costs. With 32x32 tiles it runs slower, not faster (every load of
a window then reads one row), so it says something only for the 64x64 tiles. `--sweep` adds the tile configurations tried for Hopper;
`--far-block-n 64 128` adds each "far" configuration with the far ranges' keys taken that many at
a time (they need no window, so they can step further than the near tiles).

    python benchmarks/attention_kernel.py --out kernel.json [--sweep] [--far-block-n 64 128]
"""

from __future__ import annotations

import argparse
import json

import torch
import triton

from crossenc.kernels.disentangled_attention import (
    WGMMA_TILE,
    attention_scale,
    disentangled_attention_ref,
    has_far_ranges,
    query_tiles,
    relative_position_index,
    saturation_distance,
    uses_wgmma_kernel,
)
from crossenc.kernels.triton_disentangled_attention import default_config, triton_disentangled_attention

WORKLOADS = {"rerank-short": (256, 64, 256), "rerank-long": (64, 256, 512), "long-2k": (8, 1536, 2048)}
# (mode, (BLOCK_M, BLOCK_N, num_warps, num_stages)) per head size; "no-position" drops c2p/p2c
VARIANTS = {
    64: [(mode, c) for c in [(32, 32, 2, 2), (32, 32, 4, 2), (64, 64, 4, 2)] for mode in ("far", "window")]
    + [("far", (32, 32, 1, 2)), ("far", (64, 64, 4, 1))]
    + [("no-position", c) for c in [(128, 64, 8, 2)]],
    32: [("far", c) for c in [(32, 32, 2, 2), (32, 32, 4, 2)]],
    128: [("far", c) for c in [(32, 32, 2, 2), (32, 32, 4, 2)]],
}
# More tile shapes, warps and pipeline depths (`--sweep`), for the position-term kernel.
SWEEP = [(32, 32, 1, 2), (32, 32, 1, 1), (32, 32, 1, 3), (32, 32, 2, 3), (32, 32, 2, 4), (16, 32, 1, 2),
         (16, 16, 1, 1), (16, 16, 1, 2), (16, 16, 2, 2),
         (32, 16, 2, 2), (32, 64, 2, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 32, 4, 3), (64, 32, 4, 1), (64, 64, 4, 1),
         (64, 64, 2, 1), (64, 64, 8, 1), (64, 64, 8, 2),
         (128, 32, 8, 2)]


def inputs(workload: str, heads: int, dim: int, dtype: torch.dtype, seed: int = 0):
    batch, lo, hi = WORKLOADS[workload]
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (batch,), generator=gen)
    total, max_seqlen = int(lengths.sum()), int(lengths.max())
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    qkv = torch.randn(total, 3, heads, dim, generator=gen).to("cuda", dtype)
    q, k, v = qkv.unbind(1)
    pos = torch.randn(2, 512, heads, dim, generator=gen).to("cuda", dtype)
    rel_index = relative_position_index(max_seqlen, 256, 512, 256, device="cuda")
    return (q, k, v, cu.cuda(), max_seqlen, pos[0], pos[1], rel_index, attention_scale(dim, 3)), lengths


def flash_attention(q, k, v, cu_seqlens, max_seqlen, scale):
    """torch's varlen FlashAttention on the packed batch, no position terms, as a callable."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return lambda: torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, 0.0, False, False, scale=scale)[0]
    return lambda: varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dims", nargs="+", type=int, default=[64])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--sweep", action="store_true", help="also the SWEEP tile configurations (far mode)")
    parser.add_argument("--same-rows", action="store_true", help="also the diagnostic 'same-rows' variant")
    parser.add_argument("--model-only", action="store_true",
                        help="only the model's configuration (for a profiler: every launch is the model's kernel)")
    parser.add_argument("--far-block-n", nargs="+", type=int, default=[],
                        help="also every far-mode configuration with the far ranges' keys this many at a time")
    args = parser.parse_args()
    rows = []
    for dim in args.dims:
        heads = 768 // dim
        for workload in args.workloads:
            op_args, lengths = inputs(workload, heads, dim, torch.float16)
            ref = disentangled_attention_ref(*op_args).float()
            # QK^T and PV only (4 L^2 D per head), the usual FlashAttention count.
            flops = float((4 * lengths.double() ** 2 * dim * heads).sum())
            far = saturation_distance(op_args[7])
            wgmma = uses_wgmma_kernel(dim, torch.float16, op_args[0].device)
            if args.model_only:
                variants = [("model", None, None)]
            else:
                variants = [(m, c, None) for m, c in VARIANTS[dim] + ([("far", c) for c in SWEEP] if args.sweep else [])]
                variants += [(m, c, n) for m, c, _ in variants if m == "far" for n in args.far_block_n]
                variants += [("model", None, None), ("flash-attention", None, None)]
                if wgmma and has_far_ranges(far, op_args[4], WGMMA_TILE, WGMMA_TILE):
                    variants += [("wgmma-window", None, None)]  # what its far ranges save
            if args.same_rows:
                variants += [("same-rows", default_config(dim, torch.float16, op_args[4]), None)]
            plain = None
            for mode, config, far_block_n in variants:
                call_args = op_args if mode != "no-position" else (*op_args[:5], None, None, *op_args[7:])
                if mode == "same-rows":
                    call_args = (*op_args[:7], torch.zeros_like(op_args[7]), op_args[8])
                options = dict(config=config, far=far if mode in ("far", "same-rows", "model") else None,
                               far_block_n=far_block_n)

                def fn():
                    return triton_disentangled_attention(*call_args, **options)

                if mode == "flash-attention":
                    fn = flash_attention(*op_args[:5], op_args[8])
                elif mode == "wgmma-window":  # the warpgroup-MMA kernel without its far ranges
                    from crossenc.kernels.gluon_disentangled_attention import wgmma_attention

                    tiles = query_tiles(op_args[3], WGMMA_TILE)

                    def fn():
                        return wgmma_attention(*op_args, tiles, torch.empty_like(op_args[0]))

                row = dict(dim=dim, heads=heads, workload=workload, mode=mode, config=config, far_block_n=far_block_n,
                           max_seqlen=op_args[4])
                try:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    out = fn()
                    row["peak_over_inputs_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                    if mode == "no-position":
                        plain = out.float()
                    elif mode == "flash-attention":
                        if plain is not None:
                            row["rel_err_vs_no_position"] = ((out.float() - plain).norm() / plain.norm()).item()
                    elif mode != "same-rows":
                        row["rel_err"] = ((out.float() - ref).norm() / ref.norm()).item()
                    row["ms"] = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"[:300]
                    print(dim, workload, mode, config, row["error"], flush=True)
                    rows.append(row)
                    continue
                row["tflops_qk_pv"] = flops / row["ms"] / 1e9
                rows.append(row)
                print(f"D={dim} {workload:13s} {mode:12s} {str(config):18s} far keys {far_block_n or (config or [0, 0])[1]:3d} "
                      f"{row['ms']:7.3f} ms "
                      f"{row['tflops_qk_pv']:6.1f} TFLOP/s err {row.get('rel_err', 0):.1e} "
                      f"+{row['peak_over_inputs_mib']:.0f} MiB", flush=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    print("\nbest per workload/mode:")
    for dim in args.dims:
        for workload in args.workloads:
            for mode in ("model", "far", "window", "wgmma-window", "no-position", "flash-attention", "same-rows"):
                ok = [r for r in rows if r["dim"] == dim and r["workload"] == workload and r["mode"] == mode
                      and "ms" in r and r.get("rel_err", 0) < 1e-2]
                if ok:
                    best = min(ok, key=lambda r: r["ms"])
                    print(f"D={dim} {workload:13s} {mode:15s} {str(best['config']):18s} "
                          f"far keys {best['far_block_n'] or (best['config'] or [0, 0])[1]} {best['ms']:.3f} ms")
            model = [r for r in rows if r["dim"] == dim and r["workload"] == workload and r["mode"] == "model"
                     and "ms" in r]
            flash = [r for r in rows if r["dim"] == dim and r["workload"] == workload and r["mode"] == "flash-attention"
                     and "ms" in r]
            if model and flash:
                print(f"D={dim} {workload:13s} the model's kernel against FlashAttention: "
                      f"{model[0]['ms']:.3f} / {flash[0]['ms']:.3f} ms = {model[0]['ms'] / flash[0]['ms']:.2f}x")


if __name__ == "__main__":
    main()
