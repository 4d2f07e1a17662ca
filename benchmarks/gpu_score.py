"""Offline reranking on a GPU, end to end: vLLM's `LLM.score` with crossenc against
sentence-transformers' `CrossEncoder.predict`, the same checkpoint and texts.

A DeBERTa-v3-base-shaped reranker (hidden 768, 12 layers, 12 heads, intermediate 3072, vocab
128100, 256 position buckets; random weights, one logit, saved in float16) scores one query
against --pairs documents of 64–256 tokens. Timed: one whole scoring call (tokenization
included), median of --iters after --warmup. One system per invocation, appended to --out:

    python benchmarks/gpu_score.py --system crossenc --out gpu_score.jsonl
    python benchmarks/gpu_score.py --system crossenc --enforce-eager --out gpu_score.jsonl
    python benchmarks/gpu_score.py --system crossenc --per-pair --out gpu_score.jsonl

`--per-pair` tokenizes pair by pair, as vLLM's own scoring does (crossenc tokenizes the pairs of
a call at once): the same engine, to measure what the front end costs.
    python benchmarks/gpu_score.py --system cross-encoder --out gpu_score.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "v3-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "v3-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def build_checkpoint(path: Path, shape: str) -> None:
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from tests.utils import save_tokenizer

    if (path / "config.json").exists():
        return
    save_tokenizer(path)
    config = DebertaV2Config(
        **SHAPES[shape], vocab_size=128100, max_position_embeddings=512, relative_attention=True,
        position_buckets=256, max_relative_positions=-1, pos_att_type="p2c|c2p", share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
        num_labels=1)
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    model.half().save_pretrained(path)


def make_texts(pairs: int, path: Path) -> tuple[str, list[str]]:
    """One query and documents whose pairs tokenize to 64–256 tokens."""
    from transformers import AutoTokenizer

    from tests.utils import WORDS

    tok = AutoTokenizer.from_pretrained(path)
    rng = random.Random(0)
    query = " ".join(rng.choices(WORDS, k=8))
    docs = []
    while len(docs) < pairs:
        target = rng.randint(64, 256)
        doc = " ".join(rng.choices(WORDS, k=target))
        ids = tok(query, doc)["input_ids"]
        while len(ids) > target:
            doc = " ".join(doc.split()[:-max(1, (len(ids) - target) // 2)])
            ids = tok(query, doc)["input_ids"]
        docs.append(doc)
    return query, docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=["crossenc", "cross-encoder"], required=True)
    parser.add_argument("--shape", choices=list(SHAPES), default="v3-base")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--per-pair", action="store_true", help="tokenize pair by pair, as vLLM does")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--checkpoint", default="/tmp/crossenc-bench")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    path = Path(args.checkpoint) / args.shape
    build_checkpoint(path, args.shape)
    query, docs = make_texts(args.pairs, path)
    runs: dict[str, object] = {}
    if args.system == "crossenc":
        import vllm

        if args.per_pair:
            from crossenc.entrypoints.pooling.score_template import TemplatedCrossEncoderIOProcessor

            TemplatedCrossEncoderIOProcessor._pretokenize = lambda self, requests: None
        llm = vllm.LLM(str(path), runner="pooling", max_model_len=512, seed=0,
                       enforce_eager=args.enforce_eager, gpu_memory_utilization=0.5)
        name = "crossenc LLM.score" + (" (enforce_eager)" if args.enforce_eager else "")
        runs[name + (" (per-pair tokenization)" if args.per_pair else "")] = (
            lambda: [o.outputs.score for o in llm.score(query, docs, use_tqdm=False)])
        env = {"vllm": vllm.__version__, "dtype": str(llm.llm_engine.model_config.dtype),
               "compile_env": os.environ.get("CROSSENC_TORCH_COMPILE", "0")}
    else:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(path), device="cuda", max_length=512, model_kwargs={"dtype": torch.float16})
        for batch in (32, 64, 128, 256):
            runs[f"CrossEncoder.predict batch {batch}"] = (
                lambda b=batch: [float(x) for x in model.predict([(query, d) for d in docs], batch_size=b)])
        env = {}
    results = []
    for name, fn in runs.items():
        for _ in range(args.warmup):
            scores = fn()
        times = []
        for _ in range(args.iters):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        med = statistics.median(times)
        row = {"system": name, "shape": args.shape, "pairs": args.pairs, "median_s": med,
               "pairs_per_s": args.pairs / med, "device": torch.cuda.get_device_name(), "first_scores": scores[:4],
               **env}
        results.append(row)
        print(f"{name:40s} {med * 1e3:8.1f} ms {args.pairs / med:9.0f} pairs/s", flush=True)
    with open(args.out, "a") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
