"""Offline reranking end to end, on a GPU or on vLLM's CPU build: vLLM's `LLM.score` with
crossenc against sentence-transformers' `CrossEncoder.predict` and vLLM's own BERT of the same
width, the same texts and tokenizer.

A DeBERTa-v3-shaped reranker (random weights, one logit, vocab 128100, 256 position buckets;
saved in float16 for a GPU, float32 for the CPU) with a DeBERTa-v3-shaped tokenizer
(benchmarks/workload.py: Unigram, 128k pieces, Metaspace) scores one query against each of
--pairs documents; pairs are 64–256 tokens. Timed: one whole scoring call (tokenization
included), median of --iters after --warmup. crossenc runs at vLLM's defaults (dtype "auto",
the scheduler's and the CPU build's thread defaults) unless a flag says otherwise;
`CrossEncoder.predict` runs at each batch size of --batch-sizes (its best is what to compare
with), in float16 on a GPU and float32 on the CPU. One system (one engine) per invocation,
rows appended to --out:

    python benchmarks/score.py --system crossenc --out score.jsonl
    python benchmarks/score.py --system crossenc --max-num-batched-tokens 65536 --out score.jsonl
    python benchmarks/score.py --system crossenc --per-pair --out score.jsonl
    python benchmarks/score.py --system vllm-bert --out score.jsonl
    python benchmarks/score.py --system cross-encoder --out score.jsonl
    # vLLM's CPU build, 2 cores:
    python benchmarks/score.py --shape v3-xsmall --pairs 64 --system crossenc --out cpu.jsonl
    python benchmarks/score.py --shape v3-xsmall --pairs 64 --system cross-encoder --batch-sizes 1,2,4,8,16 \
        --out cpu.jsonl

crossenc and vllm-bert also time "the engine alone": `LLM.classify` of the pairs' token ids.
`--per-pair` tokenizes pair by pair, as vLLM's own scoring does, on the same engine. vllm-bert
runs vLLM's BertForSequenceClassification with crossenc not loaded (VLLM_PLUGINS unset to none).
`--profile FILE` writes a cProfile of one call (run the engine in-process,
VLLM_ENABLE_V1_MULTIPROCESSING=0, to see the engine's side too).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

# This checkout's crossenc after PYTHONPATH's: an A/B puts another commit's package first
# (gpu_session.sh crossenc-tree), and spawned engine processes inherit this order.
sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {
    # One small layer: the engine is not the bottleneck (load and memory benchmarks of the server).
    "tiny": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=256),
    # DeBERTa-v3-xsmall's width with 3 layers: the server's memory under mixed load, 4x faster.
    "v3-xsmall-3l": dict(hidden_size=384, num_hidden_layers=3, num_attention_heads=6, intermediate_size=1536),
    "v3-xsmall": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "v3-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "v3-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def checkpoint_dir(root: str | Path, shape: str, arch: str = "deberta") -> Path:
    """Where the benchmark's checkpoint of `shape` is saved (float16 on a GPU, float32 on the CPU)."""
    return Path(root) / (f"{arch}-{shape}" if on_gpu() else f"{arch}-{shape}-float32")


def build_checkpoint(path: Path, shape: str, arch: str) -> None:
    """Save the benchmark's checkpoint at `path` (once), in a child process: torch's CPU threads
    started in this process would deadlock the engine process vLLM forks from it (seen as vLLM's
    GPU model runner hanging in its first `torch.zeros`)."""
    import multiprocessing

    if (path / "config.json").exists():
        return
    child = multiprocessing.get_context("spawn").Process(target=_save_checkpoint, args=(path, shape, arch))
    child.start()
    child.join()
    if child.exitcode != 0:
        sys.exit(f"building the checkpoint at {path} failed ({child.exitcode})")


def _save_checkpoint(path: Path, shape: str, arch: str) -> None:
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, DebertaV2Config,
                              DebertaV2ForSequenceClassification)

    from workload import save_spm_tokenizer

    if (path / "config.json").exists():
        return
    save_spm_tokenizer(path)
    torch.manual_seed(0)
    if arch == "deberta":
        config = DebertaV2Config(
            **SHAPES[shape], vocab_size=128100, max_position_embeddings=512, relative_attention=True,
            position_buckets=256, max_relative_positions=-1, pos_att_type="p2c|c2p", share_att_key=True,
            norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
            num_labels=1)
        model = DebertaV2ForSequenceClassification(config).eval()
    else:
        config = BertConfig(**SHAPES[shape], vocab_size=128100, max_position_embeddings=512, type_vocab_size=2,
                            num_labels=1)
        model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # spread the scores (random init leaves every logit near 0)
        model.classifier.weight.mul_(50.0)
    (model.half() if on_gpu() else model).save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=["crossenc", "vllm-bert", "cross-encoder"], required=True)
    parser.add_argument("--shape", choices=list(SHAPES), default="v3-base")
    parser.add_argument("--pairs", default="256,2048", help="comma-separated call sizes")
    parser.add_argument("--batch-sizes", default="32,64,128,256", help="CrossEncoder.predict's, comma-separated")
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--compilation-config", type=json.loads,
                        help="crossenc's and vllm-bert's (vLLM's --compilation-config, JSON)")
    parser.add_argument("--dtype", default="auto", help="crossenc's and vllm-bert's (vLLM's --dtype)")
    parser.add_argument("--per-pair", action="store_true", help="tokenize pair by pair, as vLLM does")
    parser.add_argument("--profile", help="write a cProfile of one 256-pair call here")
    parser.add_argument("--torch-profile", help="write torch.profiler's summary of one call of the first size here "
                        "(GPU busy time against wall time, vLLM's model-runner scopes, the kernels)")
    parser.add_argument("--engine-profile", help="a directory: vLLM's own torch profiler traces the engine's worker "
                        "through one call of the first size (its trace and table land there)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--checkpoint", default="/tmp/crossenc-bench")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from workload import rerank_texts

    arch = "bert" if args.system == "vllm-bert" else "deberta"
    path = checkpoint_dir(args.checkpoint, args.shape, arch)
    build_checkpoint(path, args.shape, arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    sizes = [int(n) for n in args.pairs.split(",")]
    query, all_docs = rerank_texts(tokenizer, max(sizes), cache=path / "texts.json")
    runs: dict[tuple[str, int], object] = {}
    adds: list[float] = []
    env: dict[str, object] = {"max_num_batched_tokens_arg": args.max_num_batched_tokens, "dtype_arg": args.dtype,
                              "torch_compile": os.environ.get("CROSSENC_TORCH_COMPILE") == "1",
                              "pack_pairs": os.environ.get("CROSSENC_PACK_PAIRS", "1") != "0",
                              # The crossenc package measured, when not this checkout's (gpu_session.sh crossenc-tree).
                              "crossenc_tree": os.environ.get("CROSSENC_TREE_LABEL")}
    if args.system == "crossenc":  # which crossenc package the call ran
        import crossenc

        env["crossenc_package"] = str(Path(crossenc.__file__).parent)
    if args.system in ("crossenc", "vllm-bert"):
        if args.system == "vllm-bert":
            os.environ["VLLM_PLUGINS"] = ""
        import vllm

        if args.per_pair:
            from crossenc.entrypoints.pooling.score_template import TemplatedCrossEncoderIOProcessor

            TemplatedCrossEncoderIOProcessor._pretokenize = lambda self, requests: None
        extra = {} if args.max_num_batched_tokens is None else {"max_num_batched_tokens": args.max_num_batched_tokens}
        if args.compilation_config is not None:
            extra["compilation_config"] = args.compilation_config
        if args.engine_profile:
            extra["profiler_config"] = {"profiler": "torch", "torch_profiler_dir": str(Path(args.engine_profile).resolve()),
                                        "torch_profiler_with_stack": False}
        # On the CPU build this is the share of RAM reserved for the KV cache.
        started = time.perf_counter()
        llm = vllm.LLM(str(path), runner="pooling", max_model_len=args.max_model_len, seed=0, enforce_eager=args.enforce_eager,
                       dtype=args.dtype,
                       gpu_memory_utilization=0.5 if on_gpu() else 0.1, **extra)
        sched = llm.llm_engine.vllm_config.scheduler_config
        env.update(engine_start_s=time.perf_counter() - started, compilation_config_arg=args.compilation_config,
                   cudagraph_mode=getattr(llm.llm_engine.vllm_config.compilation_config.cudagraph_mode, "name", None))
        print(f"engine start {env['engine_start_s']:.1f} s, cudagraph_mode {env['cudagraph_mode']}", flush=True)
        env.update(vllm=vllm.__version__, dtype=str(llm.llm_engine.model_config.dtype),
                   max_num_batched_tokens=sched.max_num_batched_tokens, max_num_seqs=sched.max_num_seqs,
                   max_model_len=llm.llm_engine.model_config.max_model_len,
                   in_process=os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0")
        # When each call hands its requests to the engine (the front end's share of the call).
        add_request = llm.llm_engine.add_request

        def stamped_add_request(*a, **k):
            adds.append(time.perf_counter())
            return add_request(*a, **k)

        llm.llm_engine.add_request = stamped_add_request
        label = {"crossenc": "crossenc", "vllm-bert": "vLLM BERT"}[args.system]
        label += "".join(f" ({s})" for s, on in (("enforce_eager", args.enforce_eager),
                                                  ("per-pair tokenization", args.per_pair),
                                                  ("one pair per engine request",
                                                   args.system == "crossenc" and not env["pack_pairs"])) if on)
        for n in sizes:
            docs = all_docs[:n]
            runs[(f"{label} LLM.score", n)] = (
                lambda docs=docs: [o.outputs.score for o in llm.score(query, docs, use_tqdm=False)])
            ids = [vllm.TokensPrompt(prompt_token_ids=i) for i in tokenizer([query] * n, docs)["input_ids"]]
            runs[(f"{label} engine alone (LLM.classify of token ids)", n)] = (
                lambda ids=ids: [o.outputs.probs[0] for o in llm.classify(ids, use_tqdm=False)])
    else:
        from sentence_transformers import CrossEncoder

        dtype = torch.float16 if on_gpu() else torch.float32
        model = CrossEncoder(str(path), device="cuda" if on_gpu() else "cpu", max_length=512,
                             model_kwargs={"dtype": dtype})
        env.update(dtype=str(dtype), torch_threads=torch.get_num_threads())
        for n in sizes:
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                runs[(f"CrossEncoder.predict batch {batch}", n)] = (
                    lambda b=batch, n=n: [float(x) for x in model.predict([(query, d) for d in all_docs[:n]],
                                                                          batch_size=b)])
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    env.update(load_avg_start=list(os.getloadavg()),
               env={k: os.environ[k] for k in ("OMP_NUM_THREADS", "VLLM_CPU_NUM_OF_RESERVED_CPU",
                                                "VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                                "CROSSENC_PACK_MAX_PAIRS", "VLLM_ALLOW_LONG_MAX_MODEL_LEN",
                                                # the model runner (crossenc sets "0" where vLLM has V1)
                                                "VLLM_USE_V2_MODEL_RUNNER", "CROSSENC_PACK_PAIRS_V2")
                    if k in os.environ})
    if args.system != "cross-encoder":  # the engine's tokenizer alone, in this (the front end's) process
        engine_tokenizer = llm.get_tokenizer()
        # ... and its Rust backend alone: encode_batch, and encode_batch_fast (no offsets), where it has them.
        backend = getattr(engine_tokenizer, "backend_tokenizer", None) or getattr(engine_tokenizer, "_tokenizer", None)

        def median_ms(fn) -> float:
            times = []
            for _ in range(5):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1e3

        for n in sizes:
            pairs = list(zip([query] * n, all_docs[:n]))
            env[f"tokenize_{n}_ms"] = median_ms(lambda n=n: engine_tokenizer(
                [query] * n, all_docs[:n], truncation=True, max_length=args.max_model_len))
            line = f"the engine's tokenizer alone, {n} pairs: {env[f'tokenize_{n}_ms']:.1f} ms"
            for method in ("encode_batch", "encode_batch_fast"):
                if hasattr(backend, method):
                    env[f"tokenize_{method}_{n}_ms"] = median_ms(lambda m=method, p=pairs: getattr(backend, m)(p))
                    line += f"; its backend's {method} {env[f'tokenize_{method}_{n}_ms']:.1f} ms"
            print(line, flush=True)
        env.update(cpus=len(os.sched_getaffinity(0)), tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM"))
    results = []
    for (name, n), fn in runs.items():
        for _ in range(args.warmup):
            scores = fn()
        times, first_add, last_add = [], [], []
        for _ in range(args.iters):
            sync()
            adds.clear()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
            if adds:
                first_add.append((adds[0] - start) * 1e3)
                last_add.append((adds[-1] - start) * 1e3)
        med = statistics.median(times)
        row = {"system": name, "shape": args.shape, "pairs": n, "median_s": med, "pairs_per_s": n / med,
               "device": device, "tokenizer": "unigram-128k", **env,
               "scores": [float(s) for s in scores[:256]]}
        if first_add:  # ms from the call's start to its first and last engine request
            row.update(first_add_ms=statistics.median(first_add), last_add_ms=statistics.median(last_add))
        results.append(row)
        adds_text = f" (engine requests from {row['first_add_ms']:.1f} to {row['last_add_ms']:.1f} ms)" if first_add else ""
        print(f"{name:60s} {n:5d} pairs {med * 1e3:8.1f} ms {n / med:9.0f} pairs/s{adds_text}", flush=True)
    with open(args.out, "a") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")
    if args.profile and args.system != "cross-encoder":
        fn = runs[(f"{label} LLM.score", sizes[0])]
        profiler = cProfile.Profile()
        profiler.enable()
        fn()
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).sort_stats("tottime")
        stats.print_stats(45)
        stats.sort_stats("cumulative").print_stats(45)
        Path(args.profile).write_text(text.getvalue())
    if args.engine_profile and args.system != "cross-encoder":
        fn = runs[(f"{label} LLM.score", sizes[0])]
        fn()
        llm.start_profile()
        start = time.perf_counter()
        fn()
        print(f"engine profile: one LLM.score of {sizes[0]} pairs took {(time.perf_counter() - start) * 1e3:.1f} ms "
              "(profiled)", flush=True)
        llm.stop_profile()
    if args.torch_profile and args.system != "cross-encoder":
        text = [torch_profile(name, fn, torch, sync) for (name, n), fn in runs.items() if n == sizes[0]]
        Path(args.torch_profile).write_text("\n\n".join(text))


def torch_profile(name: str, fn, torch, sync) -> str:
    """torch.profiler of one call of `fn` after a warm-up: wall time, the time the GPU ran kernels
    (the union of their intervals), its idle gaps, the CPU time of vLLM's model-runner scopes
    (VLLM_CUSTOM_SCOPES_FOR_PROFILING=1) and the kernels by GPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from trace_summary import busy_time

    fn()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - start
    events = prof.events()
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
    busy, gaps = busy_time(kernels)
    t0 = min((e.time_range.start for e in events), default=0.0)
    scopes: dict[str, list[float]] = {}
    for e in events:
        if e.device_type == DeviceType.CPU and e.name.startswith("gpu_model_runner:"):
            scopes.setdefault(e.name, []).append(e.time_range.elapsed_us())
    lines = [f"== {name}: wall {wall * 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms "
             f"({busy / 1e3 / (wall * 1e3):.0%}), {len(kernels)} GPU events"]
    for scope, times in sorted(scopes.items()):
        lines.append(f"  {scope:40s} x{len(times):3d} {sum(times) / 1e3:8.1f} ms CPU")
    lines.append("  largest GPU idle gaps (ms, at ms from the first event):")
    for gap, at in sorted(gaps, reverse=True)[:12]:
        lines.append(f"    {gap / 1e3:7.2f} at {(at - t0) / 1e3:8.1f}")
    if kernels:
        lines.append(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
