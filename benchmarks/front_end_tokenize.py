"""The scoring front end's tokenization of one call's pairs: crossenc's `PairEncoder` (the Rust
tokenizer's `encode_batch_fast` on a private copy of the backend) against the tokenizer's own call
(`encode_batch`, offsets and a dict per text), both through vLLM's scoring processor, interleaved;
and PairEncoder a chunk of --chunks pairs at a time, as `LLM.score`'s streamed requests tokenize
(`score_template.STREAM_CHUNK_PAIRS`).

The checkpoint and texts of benchmarks/score.py (DeBERTa-v3-shaped tokenizer: Unigram, 128k
pieces; one query, documents making pairs of 64-256 tokens); median of --iters rounds.

    python benchmarks/front_end_tokenize.py --pairs 256 --out front_end.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

# This checkout's crossenc after PYTHONPATH's: an A/B puts another commit's package first
# (gpu_session.sh crossenc-tree), and spawned engine processes inherit this order.
sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--chunks", default="32,64", help="chunk sizes, comma-separated")
    parser.add_argument("--checkpoint", default="/tmp/crossenc-bench")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from crossenc.entrypoints.pooling.pair_encoder import PairEncoder
    from score import build_checkpoint, checkpoint_dir
    from tests.utils import score_render_params, scoring_processor
    from workload import rerank_texts

    path = checkpoint_dir(args.checkpoint, "tiny", "deberta")  # the tokenizer is the same for every shape
    build_checkpoint(path, "tiny", "deberta")
    query, docs = rerank_texts(AutoTokenizer.from_pretrained(path), args.pairs, cache=path / "texts.json")
    processor = scoring_processor(path)
    start = time.perf_counter()
    encoder = PairEncoder.of(processor.tokenizer)
    assert encoder is not None and encoder.ready(timeout=None)
    copy_s = time.perf_counter() - start
    requests = [score_render_params(processor, query, d) for d in docs[:args.pairs]]
    chunks = [int(n) for n in args.chunks.split(",") if n]
    systems = {"PairEncoder (encode_batch_fast)": (encoder, args.pairs), "the tokenizer's call": (None, args.pairs),
               **{f"PairEncoder, chunks of {n}": (encoder, n) for n in chunks}}
    times: dict[str, list[float]] = {name: [] for name in systems}
    ids = {}
    for _ in range(args.iters):
        for name, (pair_encoder, chunk) in systems.items():
            processor._pair_encoder = pair_encoder
            batch = copy.deepcopy(requests)
            start = time.perf_counter()
            for i in range(0, len(batch), chunk):
                processor._pretokenize(batch[i:i + chunk])
            times[name].append(time.perf_counter() - start)
            ids[name] = [rp["crossenc_tokens"][0] for rp in batch]
    assert len(set(map(str, ids.values()))) == 1, "the paths made different ids"
    env = dict(pairs=args.pairs, cpus=len(os.sched_getaffinity(0)), copy_s=copy_s,
               tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM"))
    print(f"PairEncoder's copy of the tokenizer: {copy_s:.2f} s (once, in a thread of its own)")
    with open(args.out, "a") as f:
        for name, ts in times.items():
            med = statistics.median(ts)
            f.write(json.dumps({"system": name, "median_ms": med * 1e3, **env}) + "\n")
            print(f"{name:35s} {args.pairs} pairs {med * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
