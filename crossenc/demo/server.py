"""A real `vllm serve` subprocess on 127.0.0.1, and the one HTTP call the demo makes to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServerSettings:
    model: str
    max_model_len: int = 512
    startup_timeout_s: float = 600.0
    extra_args: tuple[str, ...] = ()
    # CPU build: a small KV cache (an encoder needs none), and crossenc's plugin loaded.
    env: dict[str, str] = field(default_factory=lambda: {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_PLUGINS": "crossenc",
        "HF_HUB_OFFLINE": "1",
    })


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class VllmServer:
    """`with VllmServer(settings) as server:` starts `vllm serve`, waits for /health, stops it."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="crossenc-demo-vllm-", suffix=".log", delete=False)
        self._proc: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "crossenc.entrypoints.serve", self.settings.model,
                "--host", HOST, "--port", str(self.port),
                "--max-model-len", str(self.settings.max_model_len), *self.settings.extra_args]

    def __enter__(self) -> "VllmServer":
        env = {**os.environ, **{k: os.environ.get(k, v) for k, v in self.settings.env.items()}}
        # Its own session, so stopping it reaches the engine process it forks too.
        self._proc = subprocess.Popen(self.command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:  # Ctrl-C included: never leave a server behind
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:  # keep the log only when something went wrong
            Path(self._log.name).unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self._proc.returncode} before it was "
                                   f"ready; the end of its log ({self._log.name}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"vllm serve was not healthy within {self.settings.startup_timeout_s:.0f}s; "
                           f"the end of its log ({self._log.name}):\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM lets vLLM shut its engine down cleanly (seconds once it serves); SIGKILL if it
        does not, e.g. while it is still loading the model."""
        if self._proc is None or self._proc.poll() is not None:
            return None if self._proc is None else self._proc.returncode
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            return self._proc.wait()

    def post(self, route: str, payload: dict, timeout_s: float = 120.0) -> dict:
        req = urllib.request.Request(self.url + route, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"POST {route} answered {exc.code}: {exc.read().decode(errors='replace')}") from exc

    def rerank(self, query: str, documents: list[str]) -> list[dict]:
        """`/rerank`'s results, best first: each has index, document.text and relevance_score."""
        return self.post("/rerank", {"model": self.settings.model, "query": query, "documents": documents})["results"]
