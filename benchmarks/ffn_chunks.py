"""An encoder block's feed-forward, dense2(GELU(dense1(x))), on one GPU: in one go, as the model runs
it, against the tokens in chunks that reuse one intermediate buffer, so that the [chunk, 4 x hidden]
activations stay in L2 between the GEMM that writes them, the exact GELU pass and the GEMM that reads
them (in one go, the whole batch's intermediate, 335 MB at [41,000, 4,096] fp16, is written to
device memory and read back twice). Exact GELU throughout, fp16, cuBLAS GEMMs with the bias in their epilogue; timing and max
|difference| to the one-go result. Timing only, not the model's.

    python benchmarks/ffn_chunks.py [OUT.json]
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

SHAPES = {"v3-base": (768, 3072), "v3-large": (1024, 4096)}
TOKENS = (41_000, 65_536)
CHUNKS = (1024, 2048, 4096, 8192)


def one_go(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def chunked(x, w1, b1, w2, b2, chunk, buffer, out):
    for start in range(0, x.shape[0], chunk):
        rows = slice(start, min(start + chunk, x.shape[0]))
        h = buffer[: rows.stop - rows.start]
        torch.addmm(b1, x[rows], w1.t(), out=h)
        torch.ops.aten.gelu_(h)
        torch.addmm(b2, h, w2.t(), out=out[rows])
    return out


def main() -> None:
    torch.manual_seed(0)
    rows = []
    print(torch.cuda.get_device_name(), "L2", torch.cuda.get_device_properties(0).L2_cache_size >> 20, "MiB")
    for name, (hidden, inter) in SHAPES.items():
        w1 = torch.randn(inter, hidden, device="cuda", dtype=torch.half) * hidden ** -0.5
        b1 = torch.randn(inter, device="cuda", dtype=torch.half) * 0.02
        w2 = torch.randn(hidden, inter, device="cuda", dtype=torch.half) * inter ** -0.5
        b2 = torch.randn(hidden, device="cuda", dtype=torch.half) * 0.02
        for tokens in TOKENS:
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.half)
            ref = one_go(x, w1, b1, w2, b2)
            base = do_bench(lambda: one_go(x, w1, b1, w2, b2), warmup=25, rep=200)
            gemms = do_bench(lambda: F.linear(F.linear(x, w1, b1), w2, b2), warmup=25, rep=200)
            row = dict(shape=name, tokens=tokens, one_go_ms=base, gemms_only_ms=gemms, chunks={})
            out = torch.empty_like(ref)
            for chunk in CHUNKS:
                buffer = torch.empty(chunk, inter, device="cuda", dtype=torch.half)
                got = chunked(x, w1, b1, w2, b2, chunk, buffer, out)
                diff = (got - ref).abs().max().item()
                ms = do_bench(lambda: chunked(x, w1, b1, w2, b2, chunk, buffer, out), warmup=25, rep=200)
                row["chunks"][chunk] = dict(ms=ms, max_abs_diff=diff)
            rows.append(row)
            best = min(row["chunks"].items(), key=lambda kv: kv[1]["ms"])
            print(f"{name} [{tokens}, {hidden} -> {inter} -> {hidden}]: one go {base:.3f} ms (GEMMs alone {gemms:.3f}); "
                  + ", ".join(f"{c}: {v['ms']:.3f}" for c, v in row["chunks"].items())
                  + f"; best {best[0]} (max |diff| {best[1]['max_abs_diff']:.1e})", flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
