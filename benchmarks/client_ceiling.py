"""The load generator's own ceiling: benchmarks/http_rerank.py's clients against a server that
answers every /rerank at once (Starlette, as vLLM's server, on uvicorn; a fixed 32-result answer), so whatever limits
the rate is the client. Compared with httpx's AsyncClient, which http_rerank.py used before.
The server runs on core 0 and the clients on core 1 (Linux):

    python benchmarks/client_ceiling.py --out docs/benchmarks_client_ceiling_cpu.jsonl

(On the GPU machine: `gpu_session.sh ... bench OUT client-ceiling`, docs/benchmarks_client_ceiling_h200.jsonl.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PORT = 8811
DOCS = 32  # per request, as benchmarks/http_rerank.py sends
BODY = {"model": "m", "query": "which module reads csv files", "documents": ["the csv module reads and writes " * 8] * DOCS}


def _serve() -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    os.sched_setaffinity(0, {0})
    answer = {"results": [{"index": i, "relevance_score": 0.5} for i in range(DOCS)]}

    async def rerank(request):
        await request.json()
        return JSONResponse(answer)

    app = Starlette(routes=[Route("/rerank", rerank, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")


async def _httpx_load(url: str, clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(http) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            (await http.post(url, json=BODY)).raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
            "p50_s": latencies[len(latencies) // 2], "p99_s": latencies[int(len(latencies) * 0.99)]}


def main() -> None:
    from http_rerank import _load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,64,256")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out")
    args = parser.parse_args()

    server = multiprocessing.get_context("spawn").Process(target=_serve, daemon=True)
    server.start()
    os.sched_setaffinity(0, {1})
    url = f"http://127.0.0.1:{PORT}/rerank"
    import httpx

    for _ in range(100):
        try:
            httpx.post(url, json=BODY, timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    rows = []
    for name, load in (("aiohttp (http_rerank.py)", lambda c: _load(url, lambda k: BODY, c, args.seconds)),
                       ("httpx AsyncClient", lambda c: _httpx_load(url, c, args.seconds))):
        for clients in (int(c) for c in args.clients.split(",")):
            res = asyncio.run(load(clients))
            rate = res["requests_per_s"] if "requests_per_s" in res else res["pairs_per_s"] / DOCS
            rows.append({"client": name, "clients": clients, "requests_per_s": rate, "p50_s": res["p50_s"],
                         "p99_s": res["p99_s"], "cpu": platform.processor() or platform.machine()})
            print(f"{name:26s} {clients:4d} clients: {rate:7.0f} requests/s ({rate * DOCS:8.0f} pairs/s at {DOCS} documents)"
                  f" p50 {res['p50_s'] * 1e3:7.1f} ms p99 {res['p99_s'] * 1e3:7.1f} ms", flush=True)
    server.terminate()
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
