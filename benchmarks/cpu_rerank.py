"""Reranking on CPU: crossenc in vLLM's CPU build against sentence-transformers' CrossEncoder.

A DeBERTa-v3-xsmall-shaped reranker (hidden 384, 12 layers, 6 heads, intermediate 1536, vocab
128100, 256 position buckets; random weights, one logit) scores one query against --pairs
documents. Both systems run in this process on the same cores, the same checkpoint and the same
texts, in float32; their runs alternate so that load from other processes hits both alike.
Timed: one whole scoring call (tokenization included), median of --iters after --warmup.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/cpu_rerank.py --out cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests.utils tokenizer

XSMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
              vocab_size=128100, position_buckets=256)


def build_checkpoint(path: Path, layers: int) -> None:
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from tests.utils import save_tokenizer

    save_tokenizer(path)
    config = DebertaV2Config(
        **{**XSMALL, "num_hidden_layers": layers}, max_position_embeddings=512, relative_attention=True,
        max_relative_positions=-1, pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, num_labels=1,
    )
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(config).eval()
    with torch.no_grad():  # spread the scores (random init leaves every logit near 0)
        model.classifier.weight.mul_(50.0)
    model.save_pretrained(path)


def make_texts(pairs: int, min_words: int, max_words: int) -> tuple[str, list[str]]:
    from tests.utils import WORDS

    rng = random.Random(0)
    query = " ".join(rng.choices(WORDS, k=8))
    docs = [" ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words))) for _ in range(pairs)]
    return query, docs


def load_avg() -> list[float]:
    return list(os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--min-words", type=int, default=40)
    parser.add_argument("--max-words", type=int, default=200)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    # vLLM's CPU worker otherwise drops torch to one thread for serving; both systems get the same.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import vllm
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(args.threads)
    load_start = load_avg()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "xsmall-reranker"
        build_checkpoint(path, args.layers)
        query, docs = make_texts(args.pairs, args.min_words, args.max_words)
        tokenizer_lengths = [len(x) for x in CrossEncoder(str(path), device="cpu").tokenizer(
            [query] * len(docs), docs, truncation=True, max_length=512)["input_ids"]]

        cross_encoder = CrossEncoder(str(path), device="cpu", max_length=512)
        llm = vllm.LLM(str(path), runner="pooling", dtype="float32", max_model_len=512, seed=0)

        def run_st():
            return [float(x) for x in cross_encoder.predict([(query, d) for d in docs], batch_size=args.pairs)]

        def run_vllm():
            return [o.outputs.score for o in llm.score(query, docs, use_tqdm=False)]

        systems = {"sentence-transformers CrossEncoder (HF eager)": run_st, "crossenc in vLLM CPU": run_vllm}
        times: dict[str, list[float]] = {name: [] for name in systems}
        threads: dict[str, set[int]] = {name: set() for name in systems}
        scores = {}
        for name, fn in systems.items():
            for _ in range(args.warmup):
                scores[name] = fn()
        for _ in range(args.iters):  # alternate, so background load hits both systems alike
            for name, fn in systems.items():
                threads[name].add(torch.get_num_threads())
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    tokens = sum(tokenizer_lengths)
    names = list(systems)
    result = {
        "env": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                "vllm": vllm.__version__, "transformers": metadata.version("transformers"),
                "sentence-transformers": metadata.version("sentence-transformers"),
                "load_avg_1_5_15_start": load_start, "load_avg_1_5_15_end": load_avg()},
        "model": {**XSMALL, "num_hidden_layers": args.layers, "dtype": "float32"},
        "pairs": args.pairs, "real_tokens": tokens, "mean_pair_tokens": tokens / args.pairs,
        "iters": args.iters, "warmup": args.warmup,
        "max_abs_score_diff": max(abs(a - b) for a, b in zip(scores[names[0]], scores[names[1]])),
        "first_scores": {name: scores[name][:4] for name in names},
        "systems": {},
    }
    for name in names:
        med = statistics.median(times[name])
        result["systems"][name] = {"median_s": med, "min_s": min(times[name]), "max_s": max(times[name]),
                                   "pairs_per_s": args.pairs / med, "tokens_per_s": tokens / med,
                                   "torch_threads_seen": sorted(threads[name])}
    result["speedup_vllm_over_cross_encoder"] = (result["systems"][names[0]]["median_s"]
                                                 / result["systems"][names[1]]["median_s"])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for name in names:
        r = result["systems"][name]
        print(f"{name:48s} {r['median_s'] * 1e3:8.1f} ms  {r['pairs_per_s']:7.1f} pairs/s  "
              f"{r['tokens_per_s']:8.0f} tok/s")
    print(f"speedup {result['speedup_vllm_over_cross_encoder']:.2f}x, max |score diff| "
          f"{result['max_abs_score_diff']:.1e}, load {load_start} -> {result['env']['load_avg_1_5_15_end']}")


if __name__ == "__main__":
    main()
