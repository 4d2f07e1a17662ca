"""The attention op with c2p's half window carried from one key step to the next (`carry_c2p=True`)
and with the whole window multiplied at every step (`carry_c2p=False`), per tile configuration:
one warp's 32x32 tiles up to 512 tokens, the 64-key tiles past 512. v3-base attention (12 heads of
64, fp16), median of `triton.testing.do_bench`; each output checked against the fp32 reference.
Rows in OUT.json.

    python benchmarks/attention_carry.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
import triton

from attention_kernel import inputs
from crossenc.kernels.disentangled_attention import disentangled_attention_ref, saturation_distance
from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

SHORT = [(32, 32, 1, 2)]
LONG = [(64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (32, 64, 4, 2), (32, 64, 2, 2)]
PLAN = {"rerank-short": SHORT, "rerank-long": SHORT + LONG, "long-2k": LONG}


def main(out_path: str) -> None:
    rows = []
    for workload, configs in PLAN.items():
        args, _ = inputs(workload, 12, 64, torch.float16)
        ref = disentangled_attention_ref(*args).float()
        far = saturation_distance(args[7])
        for config in configs:
            for carry in (False, True):
                def fn(config=config, carry=carry):
                    return triton_disentangled_attention(*args, far=far, config=config, carry_c2p=carry)

                err = ((fn().float() - ref).norm() / ref.norm()).item()
                ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
                print(f"{workload:12s} {str(config):16s} carry {carry!s:5s} {ms:.3f} ms err {err:.1e}", flush=True)
                rows.append(dict(workload=workload, config=config, carry=carry, ms=ms, rel_err=err))
    with open(out_path, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main(sys.argv[1])
