"""A server under a realistic, hostile mix: crossenc's serve entry point under --clients concurrent
clients sending --requests requests drawn from a seeded mix of kinds:

- normal:    /rerank of 1 query x --docs documents of the benchmark texts
- long:      /rerank of 1 query x 4 documents of about max_model_len tokens each
- oversized: /rerank of 1 query x 2 documents of 1 MB (refused with 400, or with
             truncate_prompt_tokens=128 every other time, cut and scored)
- malformed: bodies that must be refused: not JSON, documents a number, a lone surrogate

Reported (printed, and one JSON row per round plus a summary appended to --out): throughput
(requests/s, pairs/s), p50/p95/p99 latency per kind, answers by status per kind, the resident
memory (RSS) of every server process over time, and max |score difference| of every answered
normal or long request against the same request sent alone before the load.

    python benchmarks/serve_load.py --shape tiny --clients 32 --requests 2400 --rounds 6 --out load.jsonl
    python benchmarks/serve_load.py --serve-args "--max-pairs-in-flight 512" --out load.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_rerank import add_server_options, served_workload, wait_until_serving  # noqa: E402

KINDS = {"normal": 0.7, "long": 0.1, "oversized": 0.1, "malformed": 0.1}
MEGABYTE = "read the gzip file and write it back " * 28_000


def make_requests(model: str, query: str, docs: list[str], n: int, docs_per_request: int, seed: int):
    """(kind, body bytes, solo key or None) for n requests, seeded; bodies of the same solo key
    are identical, so their answers must equal the answer to that body sent alone."""
    rng = random.Random(seed)
    pool = {f"normal-{i}": docs[i * docs_per_request:(i + 1) * docs_per_request] for i in range(16)}
    # Documents of about 400 tokens (the pair stays within 512).
    pool.update({f"long-{i}": [" ".join(docs[4 * i + j: 4 * i + j + 4])[:1500] for j in range(4)] for i in range(4)})
    malformed = [b'{"model": "m", "query": ', json.dumps({"model": model, "query": query, "documents": 5}).encode(),
                 b'{"model": "%s", "query": "ok", "documents": ["bad \\ud800"]}' % model.encode()]
    out = []
    for k in range(n):
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        if kind in ("normal", "long"):
            key = f"{kind}-{rng.randrange(16 if kind == 'normal' else 4)}"
            out.append((kind, json.dumps({"model": model, "query": query, "documents": pool[key]}).encode(), key))
        elif kind == "oversized":
            extra = {"truncate_prompt_tokens": 128} if k % 2 else {}
            out.append((kind, json.dumps({"model": model, "query": query, "documents": [MEGABYTE] * 2, **extra}).encode(),
                        None))
        else:
            out.append((kind, rng.choice(malformed), None))
    return out, pool


class RssSampler(threading.Thread):
    """RSS in MB of the server process and every process under it, once a second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stopped = pid, [], threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        start = time.monotonic()
        while not self.stopped.wait(1.0):
            try:
                procs = [root, *root.children(recursive=True)]
                rss = {f"{p.pid} {p.name()}": round(p.memory_info().rss / 2**20, 1) for p in procs}
            except psutil.Error:
                continue
            self.samples.append((round(time.monotonic() - start, 1), rss))

    def now(self) -> dict:
        return self.samples[-1][1] if self.samples else {}


async def run_round(url: str, requests_, solo: dict, clients: int) -> dict:
    import aiohttp  # not httpx: its AsyncClient tops out at ~100 requests/s from 64 clients up

    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    statuses: dict[str, dict[str, int]] = {k: {} for k in KINDS}
    worst = 0.0
    pairs = 0
    queue = list(reversed(requests_))

    async def client(http) -> None:
        nonlocal worst, pairs
        while queue:
            kind, body, key = queue.pop()
            start = time.perf_counter()
            try:
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    status, text = str(r.status), await r.text()
            except aiohttp.ClientError as e:
                status, text = type(e).__name__, None
            latencies[kind].append(time.perf_counter() - start)
            statuses[kind][status] = statuses[kind].get(status, 0) + 1
            if status == "200" and key is not None:
                got = {x["index"]: x["relevance_score"] for x in json.loads(text)["results"]}
                worst = max([worst, *(abs(got[i] - solo[key][i]) for i in got)])
                pairs += len(got)

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - start

    def quantiles(values):
        values = sorted(values)
        q = lambda p: round(values[min(len(values) - 1, int(len(values) * p))], 4) if values else None  # noqa: E731
        return {"p50_s": q(0.5), "p95_s": q(0.95), "p99_s": q(0.99)}

    return {"requests": len(requests_), "seconds": round(elapsed, 2), "requests_per_s": round(len(requests_) / elapsed, 1),
            "pairs_per_s": round(pairs / elapsed, 1), "latency": {k: quantiles(v) for k, v in latencies.items()},
            "statuses": statuses, "max_abs_diff_vs_solo": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2400)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    add_server_options(parser, 8766)
    args = parser.parse_args()

    import httpx

    from score import on_gpu

    path, query, docs = served_workload(args.checkpoint, args.shape)
    cmd = [sys.executable, "-m", "crossenc.entrypoints.serve", str(path), "--runner", "pooling",
           "--max-model-len", "512", "--port", str(args.port), *shlex.split(args.serve_args)]
    if not on_gpu() and "--gpu-memory-utilization" not in args.serve_args:
        cmd += ["--gpu-memory-utilization", "0.1"]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{args.port}"
    try:
        model = wait_until_serving(server, base)
        requests_, pool = make_requests(model, query, docs, args.requests, args.docs, args.seed)
        solo = {}
        for key, documents in pool.items():
            r = httpx.post(f"{base}/rerank", json={"model": model, "query": query, "documents": documents}, timeout=600)
            solo[key] = {x["index"]: x["relevance_score"] for x in r.raise_for_status().json()["results"]}
        sampler = RssSampler(server.pid)
        sampler.start()
        rows = []
        per_round = len(requests_) // args.rounds
        for i in range(args.rounds):
            res = asyncio.run(run_round(f"{base}/rerank", requests_[i * per_round:(i + 1) * per_round], solo,
                                        args.clients))
            time.sleep(1.5)  # one more RSS sample after the round
            row = {"round": i + 1, **res, "rss_mb": sampler.now()}
            rows.append(row)
            print(json.dumps(row), flush=True)
        sampler.stopped.set()
        summary = {"summary": True, "shape": args.shape, "clients": args.clients, "docs": args.docs,
                   "serve_args": args.serve_args, "rss_series_mb": sampler.samples,
                   "max_abs_diff_vs_solo": max(r["max_abs_diff_vs_solo"] for r in rows),
                   "statuses": {k: {s: sum(r["statuses"][k].get(s, 0) for r in rows)
                                    for s in {s for r in rows for s in r["statuses"][k]}} for k in KINDS},
                   "server_alive": server.poll() is None}
        print(json.dumps({k: v for k, v in summary.items() if k != "rss_series_mb"}), flush=True)
        with open(args.out, "a") as f:
            for row in [*rows, summary]:
                f.write(json.dumps(row) + "\n")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
