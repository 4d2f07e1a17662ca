"""What an operator meets, against real servers of crossenc's serve entry point on the CPU build:
readiness, in-flight limits (429 with Retry-After, 413), oversized documents refused or cut
without delaying other requests, clear 4xx errors, and the exit status when the engine dies
(crossenc.entrypoints.guard, crossenc.entrypoints.serve)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import statistics
import time

import pytest

pytest.importorskip("vllm")

import requests  # noqa: E402

from crossenc.demo.server import ServerSettings, VllmServer  # noqa: E402
from crossenc.entrypoints import guard, serve  # noqa: E402
from tests.utils import DOCUMENTS, QUERY, save_deberta  # noqa: E402

pytestmark = pytest.mark.engine
MAX_PAIRS = 48
MEGABYTE_DOCUMENT = "read the gzip file and write it back " * 28_000  # 1,036,000 characters


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(save_deberta(tmp_path_factory.mktemp("cross"), "seq_cls", "v3", num_labels=1))


def _memory_args() -> tuple[str, ...]:
    """Two servers of this module run at once: on a GPU each takes a share of its memory."""
    import torch

    return ("--gpu-memory-utilization", "0.3") if torch.cuda.is_available() else ()


@pytest.fixture(scope="module")
def server(checkpoint):
    settings = ServerSettings(checkpoint, max_model_len=128, extra_args=(
        "--runner", "pooling", "--max-pairs-in-flight", str(MAX_PAIRS), "--ready-timeout", "5", *_memory_args()))
    with VllmServer(settings) as server:
        yield server


def _rerank(server, documents, timeout=120, **extra):
    return requests.post(server.url + "/rerank", json={
        "model": server.settings.model, "query": QUERY, "documents": documents, **extra}, timeout=timeout)


def _scores(resp):
    assert resp.status_code == 200, resp.text
    return {r["index"]: r["relevance_score"] for r in resp.json()["results"]}


def test_ready_answers_when_the_engine_scores(server):
    resp = requests.get(server.url + "/ready", timeout=30)
    assert resp.status_code == 200 and resp.json()["ready"] is True
    assert requests.get(server.url + "/health", timeout=30).status_code == 200


def test_in_flight_limit_answers_429_with_retry_after_and_keeps_scores_exact(server):
    """48 concurrent requests of 6 documents against a limit of 48 pairs in flight, with the engine
    held still (SIGSTOP) so that the first ones stay in flight whatever the hardware: 8 are taken,
    the other 40 answered 429 at once; once the engine runs again the 8 get the scores they get
    alone."""
    documents = DOCUMENTS * 2
    assert len(documents) * 8 == MAX_PAIRS
    solo = _scores(_rerank(server, documents))
    engine = _engine_process(server)
    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        os.kill(engine.pid, signal.SIGSTOP)
        try:
            taken = [pool.submit(_rerank, server, documents) for _ in range(8)]
            time.sleep(2.0)  # all 8 in flight
            start = time.monotonic()
            refused = list(pool.map(lambda _: _rerank(server, documents), range(40)))
            refusing = time.monotonic() - start
        finally:
            os.kill(engine.pid, signal.SIGCONT)
        answers = [t.result() for t in taken]
    assert [r.status_code for r in refused] == [429] * 40 and refusing < 30  # not queued behind the engine
    for answer in refused:
        assert answer.headers["retry-after"] == str(guard.RETRY_AFTER_SECONDS)
        assert "in-flight limit" in answer.json()["error"]["message"]
    for answer in answers:  # the same scores as alone, up to the batch they ran in
        assert _scores(answer) == pytest.approx(solo, abs=1e-5)
    too_big = _rerank(server, DOCUMENTS * (MAX_PAIRS // len(DOCUMENTS) + 1))
    assert too_big.status_code == 413 and "split it" in too_big.json()["error"]["message"]
    # Served again once the burst is over.
    assert _scores(_rerank(server, documents)) == pytest.approx(solo, abs=1e-5)


@pytest.mark.parametrize("truncate", [None, 64])
def test_oversized_documents_cost_what_a_maximum_length_one_does(server, truncate):
    """8 documents of 1 MB are refused (400) or cut, and a normal request sent meanwhile waits
    at most a few normal requests' time (it waited 159x before the text was cut first)."""
    extra = {} if truncate is None else {"truncate_prompt_tokens": truncate}

    def normal():
        start = time.monotonic()
        assert _rerank(server, DOCUMENTS[:1]).status_code == 200
        return time.monotonic() - start

    def refused_at_once():  # the same 8 MB body, refused before any text is read
        start = time.monotonic()
        assert _rerank(server, [MEGABYTE_DOCUMENT] * 8, truncate_prompt_tokens=0).status_code == 400
        return time.monotonic() - start

    alone = statistics.median(normal() for _ in range(5))
    body = max(refused_at_once() for _ in range(2))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        big = pool.submit(_rerank, server, [MEGABYTE_DOCUMENT] * 8, **extra)
        time.sleep(0.05)
        meanwhile = pool.submit(normal)
        answer, waited = big.result(), meanwhile.result()
    if truncate is None:
        assert answer.status_code == 400 and "maximum context length is 128" in answer.text
    else:
        assert len(_scores(answer)) == 8
    after = normal()
    # Receiving and parsing the 8 MB body holds vLLM's event loop whatever is done with it (0.2 to
    # 0.6 s on vLLM 0.26 on 2 cores): the bound is 10x a normal request, counted as at least
    # 50 ms, plus the time the server takes to refuse the same body at once.
    ratio = (max(waited, after) - body) / max(alone, 0.05)
    print(f"normal /rerank alone {alone * 1000:.0f} ms; beside 8 x 1 MB documents {waited * 1000:.0f} ms, "
          f"after them {after * 1000:.0f} ms; the same body refused at once {body * 1000:.0f} ms "
          f"(beyond that, {ratio:.1f}x of max(alone, 50 ms))")
    assert ratio <= 10


def test_clear_errors_for_what_cannot_be_scored(server):
    zero = _rerank(server, DOCUMENTS[:1], truncate_prompt_tokens=0)
    assert zero.status_code == 400 and "truncate_prompt_tokens=0 leaves no tokens" in zero.text
    surrogate = requests.post(server.url + "/rerank", timeout=60, headers={"Content-Type": "application/json"},
                              data=b'{"model": "%s", "query": "ok", "documents": ["bad \\ud800 text"]}'
                              % server.settings.model.encode())
    assert surrogate.status_code == 400 and "lone UTF-16 surrogate" in surrogate.text
    embeddings = requests.post(server.url + "/v1/embeddings", json={"model": server.settings.model, "input": "x"},
                               timeout=60)
    assert embeddings.status_code == 404 and "does not serve /v1/embeddings" in embeddings.text
    # The server keeps serving.
    assert _rerank(server, DOCUMENTS).status_code == 200


def _engine_process(server):
    import psutil

    children = psutil.Process(server._proc.pid).children(recursive=True)
    engines = [p for p in children if "EngineCore" in " ".join(p.cmdline()) or "EngineCor" in p.name()]
    assert len(engines) == 1, [(p.pid, p.name(), p.cmdline()) for p in children]
    return engines[0]


def test_a_wedged_engine_fails_ready_and_a_dead_one_exits_non_zero(checkpoint):
    settings = ServerSettings(checkpoint, max_model_len=128,
                              extra_args=("--runner", "pooling", "--ready-timeout", "3", *_memory_args()))
    with VllmServer(settings) as server:
        engine = _engine_process(server)
        assert requests.get(server.url + "/ready", timeout=30).status_code == 200
        os.kill(engine.pid, signal.SIGSTOP)
        try:
            ready = requests.get(server.url + "/ready", timeout=30)
            assert ready.status_code == 503 and "within 3 s" in ready.json()["reason"]
            assert requests.get(server.url + "/health", timeout=30).status_code == 200  # vLLM's meaning
        finally:
            os.kill(engine.pid, signal.SIGCONT)
        assert requests.get(server.url + "/ready", timeout=30).status_code == 200
        os.kill(engine.pid, signal.SIGKILL)
        status = server._proc.wait(timeout=120)
        assert status == serve.ENGINE_DIED_STATUS, server.log_tail(60)
        assert "engine died while serving" in server.log_tail(300)
