"""Where an API server's time goes under /rerank load: a cProfile of `vllm serve`'s API process.

Starts `vllm serve` on a one-layer DeBERTa-v3-shaped reranker (hidden 64, so the engine is not the
bottleneck) with the benchmarks' tokenizer and texts, under cProfile; 1 then 16 clients send
/rerank requests of 1 query x 32 documents for --seconds each; then the server stops and the
profile of its API process is printed (cumulative time of the request path's functions):

    python benchmarks/profile_serve.py --out serve-profile.txt

The engine runs in its own processes, unprofiled; so does vLLM's renderer thread (cProfile sees
the API process's main thread: the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# This checkout's crossenc after PYTHONPATH's: an A/B puts another commit's package first
# (gpu_session.sh crossenc-tree), and spawned engine processes inherit this order.
sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The request path's functions, as the printed profile lists them.
REQUEST_PATH = ("scoring/serving.py", "base/serving.py", "score_template.py", "encode_batch", "async_llm.py",
                "pooling_params.py", "input_processor.py")


def build_tiny(path: Path) -> None:
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from workload import save_spm_tokenizer

    save_spm_tokenizer(path)
    torch.manual_seed(0)
    config = DebertaV2Config(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, vocab_size=128100,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, max_relative_positions=-1,
        pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
        type_vocab_size=0, num_labels=1)
    DebertaV2ForSequenceClassification(config).eval().save_pretrained(path)


def serve(profile_path: str, argv: list[str]) -> None:
    from crossenc import compat

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        compat.run_vllm_cli(argv)
    finally:
        profiler.disable()
        profiler.dump_stats(profile_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--port", type=int, default=8777)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from http_rerank import _load, rerank_bodies, wait_until_serving
    from workload import rerank_texts

    with tempfile.TemporaryDirectory() as tmp:
        path, profile = Path(tmp) / "tiny", Path(tmp) / "api.prof"
        build_tiny(path)
        query, docs = rerank_texts(AutoTokenizer.from_pretrained(path), 2048)
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import profile_serve; "
                f"profile_serve.serve({str(profile)!r}, sys.argv[1:])")
        cmd = [sys.executable, "-c", code, "serve", str(path), "--max-model-len", "512", "--port", str(args.port),
               "--gpu-memory-utilization", "0.1"]
        server = subprocess.Popen(cmd, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
        base = f"http://127.0.0.1:{args.port}"
        body_for = rerank_bodies(wait_until_serving(server, base, 300), query, docs, 32)

        asyncio.run(_load(f"{base}/rerank", body_for, 4, 3.0))
        lines = []
        for clients in (1, 16):
            res = asyncio.run(_load(f"{base}/rerank", body_for, clients, args.seconds))
            lines.append(f"{clients} clients: {res['requests']} requests, {res['pairs_per_s']:.0f} pairs/s, "
                         f"p50 {res['p50_s'] * 1e3:.0f} ms, errors {res['errors']}")
            print(lines[-1], flush=True)
        server.send_signal(signal.SIGINT)
        server.wait(120)
        text = io.StringIO()
        stats = pstats.Stats(str(profile), stream=text).sort_stats("cumulative")
        stats.print_stats("|".join(p.replace(".", r"\.") for p in REQUEST_PATH), 40)
    Path(args.out).write_text("\n".join(lines) + "\n" + text.getvalue())


if __name__ == "__main__":
    main()
