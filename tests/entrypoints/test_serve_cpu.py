"""The README's CPU serve command, as written: `python -m crossenc.entrypoints.serve MODEL --runner
pooling` starts on the CPU build without a memory flag (vLLM's default reservation of 0.92 of the
RAM does not start on a machine that runs anything else), and a user's memory setting wins."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossenc.entrypoints import serve

GIB = 1 << 30


@given(total=st.integers(GIB, 1 << 42), free=st.floats(0.0, 1.0))
def test_the_chosen_share_fits_in_the_free_ram(total, free):
    available = int(total * free)
    share = serve.cpu_memory_utilization(total, available)
    if share is None:
        assert available / total < 0.02
    else:
        assert 0.01 <= share <= serve.CPU_MEMORY_SHARE_CAP
        assert math.ceil(total * share) <= available  # vLLM's CPU worker check


@pytest.mark.parametrize("argv,environ", [
    (["m", "--gpu-memory-utilization", "0.3"], {}),
    (["m", "--gpu-memory-utilization=0.3"], {}),
    (["m", "--kv-cache-memory-bytes", "1G"], {}),
    (["m"], {"VLLM_CPU_KVCACHE_SPACE": "2"}),
])
def test_a_users_memory_setting_is_kept(argv, environ):
    assert serve.cpu_memory_args(argv, environ, 24 * GIB, 20 * GIB) == ([], "")


def test_the_choice_is_said_in_one_line_and_too_little_ram_stops_at_once():
    extra, message = serve.cpu_memory_args(["m", "--runner", "pooling"], {}, 24 * GIB, 21 * GIB)
    assert extra == ["--gpu-memory-utilization", "0.43"]
    assert "\n" not in message and "--gpu-memory-utilization 0.43" in message and "21.0 of 24.0 GiB" in message
    with pytest.raises(SystemExit, match="--kv-cache-memory-bytes"):
        serve.cpu_memory_args(["m"], {}, 24 * GIB, GIB // 10)


def test_crossencs_serve_flags_become_the_guards_settings():
    environ = {}
    argv = serve.guard_args(["m", "--runner", "pooling", "--max-pairs-in-flight", "64",
                             "--ready-timeout=5", "--port", "9"], environ)
    assert argv == ["m", "--runner", "pooling", "--port", "9", "--middleware", serve.GUARD_MIDDLEWARE]
    assert environ == {"CROSSENC_MAX_PAIRS_IN_FLIGHT": "64", "CROSSENC_READY_TIMEOUT": "5"}
    # Given once only, even when the user names it.
    assert serve.guard_args(["m", "--middleware", serve.GUARD_MIDDLEWARE], {}).count(serve.GUARD_MIDDLEWARE) == 1
    with pytest.raises(SystemExit, match="needs a value"):
        serve.guard_args(["m", "--max-requests-in-flight"], {})


@pytest.mark.parametrize("body,inputs", [
    (b'{"query": "q", "documents": ["a", "b", "c"]}', 3),
    (b'{"data_1": "q", "data_2": ["a", "b"]}', 2),
    (b'{"queries": ["a", "b"], "documents": ["c", "d"]}', 2),
    (b'{"input": ["a", "b", "c", "d"]}', 4),
    (b'{"input": "a"}', 1),
    (b'not json', 1),
    (b'[1, 2]', 1),
])
def test_the_guard_counts_a_requests_inputs(body, inputs):
    from crossenc.entrypoints import guard

    assert guard.count_inputs(body) == inputs


@pytest.mark.engine
def test_the_readme_cpu_command_serves(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    import requests
    from sentence_transformers import CrossEncoder

    from crossenc import compat
    from crossenc.demo.server import ServerSettings, VllmServer
    from tests.utils import DOCUMENTS, QUERY, save_deberta

    if compat.device_type() != "cpu":
        pytest.skip("the CPU build's command")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    path = str(save_deberta(tmp_path / "cross", "seq_cls", "v3", num_labels=1))
    # The README's flags; host, port and the test checkpoint's length are the harness's.
    settings = ServerSettings(path, max_model_len=128, extra_args=("--runner", "pooling"),
                              env={"VLLM_PLUGINS": "crossenc", "HF_HUB_OFFLINE": "1"})
    with VllmServer(settings) as server:
        resp = requests.post(server.url + "/rerank", json={"model": path, "query": QUERY, "documents": DOCUMENTS},
                             timeout=120)
        assert resp.status_code == 200, resp.text
        log = server.log_tail(400)
    got = {r["index"]: r["relevance_score"] for r in resp.json()["results"]}
    expected = CrossEncoder(path, device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    # dtype "auto": float16, or float32 on a CPU without float16 arithmetic (the dtype tests' bound).
    assert max(abs(got[i] - float(e)) for i, e in enumerate(expected)) <= 5e-3
    assert "serving with --gpu-memory-utilization" in log
