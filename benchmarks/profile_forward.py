"""Where a model forward's GPU time goes: torch.profiler's per-kernel table for one workload.

    python benchmarks/profile_forward.py --system crossenc --shape v3-base --workload rerank-short
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from gpu_forward import SHAPES, WORKLOADS, Batch, build, deberta_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", default="crossenc")
    parser.add_argument("--shape", default="v3-base", choices=list(SHAPES))
    parser.add_argument("--workload", default="rerank-short", choices=list(WORKLOADS))
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--trace", default=None, help="write a Chrome trace here")
    args = parser.parse_args()
    from transformers import DebertaV2ForSequenceClassification

    with torch.inference_mode():
        torch.manual_seed(0)
        state = {k: v.half() for k, v in
                 DebertaV2ForSequenceClassification(deberta_config(args.shape)).state_dict().items()}
        batch = Batch(args.workload)
        fn = build(args.system, args.shape, state, batch)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
    print(f"{args.system} {args.shape} {args.workload}: {batch.tokens} real tokens, 3 forwards")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
