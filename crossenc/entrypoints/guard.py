"""What an operator needs around `vllm serve`: readiness, bounded queueing, clear 404s, and
whether the engine died. An ASGI middleware that vLLM loads with `--middleware
crossenc.entrypoints.guard.ServingGuard` (crossenc's serve entry point adds it).

- `GET /ready`: 200 when the engine scores a one-token probe within `CROSSENC_READY_TIMEOUT`
  seconds (default 10), else 503 with the reason. vLLM's `/health` keeps its meaning (the engine
  process is alive), so a wedged engine that never answers fails `/ready` but not `/health`.
- In-flight limits on the pooling endpoints (`/score`, `/rerank`, `/classify`, `/pooling`,
  `/v1/embeddings`, ...): `CROSSENC_MAX_REQUESTS_IN_FLIGHT` requests and
  `CROSSENC_MAX_PAIRS_IN_FLIGHT` inputs (a /rerank's documents, a /classify's texts). Beyond
  them a request is answered at once with 429 and `Retry-After`, instead of queueing without
  bound; a single request larger than the pair limit gets 413. Unset: no limit.
- A pooling endpoint the model does not serve (e.g. `/v1/embeddings` on a classifier) answers
  404 saying so, instead of a bare "Not Found".
- `engine_died()`: whether the engine of an app this process served has died, for the serve
  entry point's exit status (vLLM's own server exits with status 0 when its engine dies).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

READY_PATH = "/ready"
MAX_REQUESTS_ENV = "CROSSENC_MAX_REQUESTS_IN_FLIGHT"
MAX_PAIRS_ENV = "CROSSENC_MAX_PAIRS_IN_FLIGHT"
READY_TIMEOUT_ENV = "CROSSENC_READY_TIMEOUT"
DEFAULT_READY_TIMEOUT = 10.0
RETRY_AFTER_SECONDS = 1
# vLLM's pooling endpoints: the ones the in-flight limits count.
POOLING_PATHS = frozenset({
    "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/classify", "/pooling",
    "/v1/embeddings",
})
# Request fields that hold one input each per list entry, by the endpoints above.
_LIST_FIELDS = ("documents", "data_2", "text_2", "queries", "data_1", "text_1", "input")
# The pooling tasks a readiness probe can ask for, in order of preference.
_PROBE_TASKS = ("classify", "embed", "token_classify", "token_embed")

_engine_clients: list[Any] = []


def engine_died() -> bool:
    """Whether the engine of an app this process served has died."""
    return any(getattr(client, "errored", False) for client in _engine_clients)


def _env_number(name: str, cast=int):
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        number = cast(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if number <= 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return number


def count_inputs(body: bytes) -> int:
    """How many inputs a pooling request holds: the longest list among its input fields (a
    /rerank's documents, a /score's pairs, a /classify's texts), or 1."""
    try:
        request = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return 1  # vLLM answers the malformed body itself
    if not isinstance(request, dict):
        return 1
    return max([len(v) for k in _LIST_FIELDS if isinstance(v := request.get(k), list)] or [1])


class ServingGuard:
    def __init__(self, app, max_requests: int | None = None, max_pairs: int | None = None,
                 ready_timeout: float | None = None):
        self.app = app
        self.max_requests = max_requests if max_requests is not None else _env_number(MAX_REQUESTS_ENV)
        self.max_pairs = max_pairs if max_pairs is not None else _env_number(MAX_PAIRS_ENV)
        self.ready_timeout = (ready_timeout if ready_timeout is not None
                              else _env_number(READY_TIMEOUT_ENV, float) or DEFAULT_READY_TIMEOUT)
        self.requests = 0
        self.pairs = 0
        self._probe: asyncio.Future | None = None

    async def __call__(self, scope, receive, send):
        state = getattr(scope.get("app"), "state", None)
        engine = getattr(state, "engine_client", None)
        if engine is not None and engine not in _engine_clients:
            _engine_clients.append(engine)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == READY_PATH and scope.get("method") in ("GET", "HEAD"):
            return await self._ready(engine, send)
        if path not in POOLING_PATHS:
            return await self.app(scope, receive, send)
        if not _routed(scope.get("app"), path):
            return await _respond(send, 404, _error(
                f"this model does not serve {path}: vLLM registers the endpoints of the model's "
                "pooling tasks only (`crossenc explain MODEL` lists which it serves)", "NotFoundError", 404))
        if self.max_requests is None and self.max_pairs is None:
            return await self.app(scope, receive, send)
        pairs = 1
        if self.max_pairs is not None:
            body, receive = await _buffered(receive)
            if body is None:
                return  # the client went away
            pairs = count_inputs(body)
            if pairs > self.max_pairs:
                return await _respond(send, 413, _error(
                    f"this request holds {pairs} inputs, more than this server takes in flight "
                    f"at once ({self.max_pairs}, {MAX_PAIRS_ENV}); split it", "RequestTooLarge", 413))
        if ((self.max_requests is not None and self.requests + 1 > self.max_requests)
                or (self.max_pairs is not None and self.pairs + pairs > self.max_pairs)):
            return await _respond(send, 429, _error(
                f"the server is at its in-flight limit ({self.requests} requests, {self.pairs} inputs; "
                f"limits {self.max_requests} and {self.max_pairs}); retry after {RETRY_AFTER_SECONDS} s",
                "TooManyRequests", 429), [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
        self.requests += 1
        self.pairs += pairs
        try:
            return await self.app(scope, receive, send)
        finally:
            self.requests -= 1
            self.pairs -= pairs

    # --- Readiness ---------------------------------------------------------------------------

    async def _ready(self, engine, send):
        start = time.monotonic()
        if engine is None:
            return await _respond(send, 503, {"ready": False, "reason": "no engine yet"})
        if engine.errored:
            return await _respond(send, 503, {"ready": False, "reason": "the engine has died"})
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._score_probe(engine))
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), self.ready_timeout)
        except asyncio.TimeoutError:
            return await _respond(send, 503, {"ready": False, "reason": (
                f"the engine did not score a one-token probe within {self.ready_timeout:g} s "
                f"({READY_TIMEOUT_ENV}); it is wedged or its queue is that long")})
        except Exception as e:  # noqa: BLE001 - any failure of the probe: not ready, and why
            return await _respond(send, 503, {"ready": False, "reason": f"{type(e).__name__}: {e}"})
        return await _respond(send, 200, {"ready": True, "seconds": round(time.monotonic() - start, 4)})

    async def _score_probe(self, engine) -> None:
        from vllm import PoolingParams

        tasks = tuple(await engine.get_supported_tasks())
        task = next((t for t in _PROBE_TASKS if t in tasks), None)
        if task is None:
            raise RuntimeError(f"the engine serves none of the pooling tasks {_PROBE_TASKS} (it serves {tasks})")
        request_id = f"crossenc-ready-{uuid.uuid4().hex}"
        async for _ in engine.encode({"prompt_token_ids": [0]}, PoolingParams(task=task), request_id):
            pass


def _routed(app, path: str) -> bool:
    """Whether the app has a route for `path` (unknown apps: assume so)."""
    routes = getattr(app, "routes", None)
    if routes is None:
        return True
    return any(getattr(route, "path", None) == path for route in routes)


def _error(message: str, kind: str, code: int) -> dict:
    """vLLM's error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def _respond(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


async def _buffered(receive):
    """(the request body, a receive that replays it), or (None, None) when the client left."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
