"""What the encoder's position tables cost a forward: every layer's pos_key / pos_query made
(a [2S, hidden] projection per layer, what each forward did before they were kept) against
reused (the check that the weights are unchanged), and the memory they keep. Random weights of
the shape, float32 on the CPU (2 threads) or float16 on a GPU; median of 5.

    python benchmarks/position_tables.py [--shapes v3-xsmall v3-base v3-large] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crossenc.model_executor.models.deberta_v2 import DebertaV2ForSequenceClassification
from gpu_forward import deberta_config


def timed(fn, device: str) -> float:
    times = []
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["v3-xsmall", "v3-base", "v3-large"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    for shape in args.shapes:
        model = DebertaV2ForSequenceClassification(config=deberta_config(shape)).to(args.device, dtype).eval()
        encoder = model.deberta.encoder
        with torch.inference_mode():
            def made():
                encoder.weights_loaded()
                encoder.position_tables()

            made_s = timed(made, args.device)
            reused_s = timed(encoder.position_tables, args.device)
        kept = sum(t.numel() * t.element_size() for pair in encoder.position_tables() for t in pair if t is not None)
        print(f"{shape} ({args.device}, {dtype}): made {made_s * 1e3:.2f} ms, reused {reused_s * 1e6:.0f} us, "
              f"kept {kept / 2**20:.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
