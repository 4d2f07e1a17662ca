"""The model forward on the CPU: crossenc eager, crossenc with its encoder compiled (Inductor, as
vLLM's CPU build compiles it with CROSSENC_TORCH_COMPILE=1) and transformers' eager forward in
the length-sorted padded batches CrossEncoder.predict runs, on the same pairs and weights; and how close the
forward runs to the machine's float32 matmul rate.

Random weights of the shape, float32, 64 sequences of 64-256 tokens (the lengths of
benchmarks/score.py's CPU workload), token ids uniform in the vocabulary. Median of --iters
forwards after one warm-up, the systems interleaved.

    python benchmarks/cpu_forward.py --out cpu_forward.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from transformers import DebertaV2Config
from transformers import DebertaV2ForSequenceClassification as HFSeqCls

from gpu_forward import deberta_config
from score import SHAPES


def matmul_flops(config: DebertaV2Config, lengths: list[int]) -> float:
    """Multiply-adds x 2 of the forward's matmuls: per token the q/k/v, output and feed-forward
    projections; per sequence of L tokens and per head, q.k and p.v (L x L x D each) and c2p and
    p2c against the 2L - 1 position rows of its distances (L x (2L - 1) x D each)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 4 * h * h + 2 * h * inter
    attention = sum(2 * n * n * h + 2 * n * (2 * n - 1) * h for n in lengths)
    return 2.0 * layers * (per_token * sum(lengths) + attention)


def gemm_rate(tokens: int, hidden: int, inter: int) -> float:
    """FLOP/s of one float32 [tokens, hidden] x [hidden, inter] matmul (the feed-forward's)."""
    a, w = torch.randn(tokens, hidden), torch.randn(inter, hidden)
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    start = time.perf_counter()
    for _ in range(10):
        torch.nn.functional.linear(a, w)
    return 10 * 2 * tokens * hidden * inter / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="v3-xsmall", choices=list(SHAPES))
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=16, help="CrossEncoder.predict's best on 2 cores")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from crossenc.model_executor.models.deberta_v2 import DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    config = deberta_config(args.shape)
    hf = HFSeqCls(config).eval()
    ours = DebertaV2ForSequenceClassification(config=config)
    ours.load_weights(hf.state_dict().items())
    ours.eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(64, 257, (args.pairs,), generator=g).tolist()
    seqs = [torch.randint(1, config.vocab_size, (n,), generator=g) for n in lengths]
    ids, positions = torch.cat(seqs), torch.cat([torch.arange(n) for n in lengths])
    batches = []
    by_length = sorted(seqs, key=len, reverse=True)  # as CrossEncoder.predict batches its pairs
    for i in range(0, len(seqs), args.hf_batch_size):
        chunk = by_length[i:i + args.hf_batch_size]
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in chunk], batch_first=True)
        batches.append((padded, mask))

    encoder = ours.deberta.encoder
    eager = encoder.forward
    compiled = torch.compile(eager, fullgraph=True, dynamic=True)

    def crossenc(forward):
        def run():
            encoder.forward = forward
            try:
                return ours.logits(ours(ids, positions), positions)
            finally:
                encoder.forward = eager
        return run

    def transformers_padded():
        return torch.cat([hf(input_ids=p, attention_mask=m).logits for p, m in batches])

    systems = {"crossenc eager": crossenc(eager), "crossenc compiled encoder": crossenc(compiled),
               f"transformers eager, length-sorted batches of {args.hf_batch_size}": transformers_padded}
    times: dict[str, list[float]] = {name: [] for name in systems}
    with torch.inference_mode():
        start = time.perf_counter()
        reference = systems["crossenc eager"]()
        outputs = {name: fn() for name, fn in systems.items()}  # the warm-up (and the compilation)
        print(f"warm-up {time.perf_counter() - start:.1f} s", flush=True)
        for _ in range(args.iters):
            for name, fn in systems.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        rate = gemm_rate(sum(lengths), config.hidden_size, config.intermediate_size)
    flops = matmul_flops(config, lengths)
    env = dict(shape=args.shape, pairs=args.pairs, tokens=sum(lengths), threads=torch.get_num_threads(),
               cpus=len(os.sched_getaffinity(0)), torch=torch.__version__, machine=platform.machine(),
               matmul_gflop=flops / 1e9, gemm_gflops=rate / 1e9)
    print(f"{sum(lengths)} tokens, {flops / 1e9:.0f} GFLOP of matmuls in crossenc's forward; one float32 "
          f"matmul runs at {rate / 1e9:.0f} GFLOP/s on {torch.get_num_threads()} threads")
    with open(args.out, "a") as f:
        for name, ts in times.items():
            med = statistics.median(ts)
            row = {"system": name, "median_s": med, "pairs_per_s": args.pairs / med, **env}
            if name.startswith("crossenc"):
                row["max_abs_diff_to_eager"] = float((outputs[name] - reference).abs().max())
            if name.startswith("crossenc"):
                row["share_of_matmul_rate"] = flops / med / rate
            f.write(json.dumps(row) + "\n")
            share = f", {row['share_of_matmul_rate']:.0%} of the matmul rate" if "share_of_matmul_rate" in row else ""
            print(f"{name:50s} {med * 1e3:8.0f} ms {args.pairs / med:6.1f} pairs/s{share}", flush=True)


if __name__ == "__main__":
    main()
