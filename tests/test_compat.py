"""The supported vLLM range, checked at start-up against the installed release."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crossenc import compat


@pytest.mark.parametrize("version,parsed", [("0.26.0", (0, 26, 0)), ("0.32.0+cpu", (0, 32, 0)),
                                            ("0.27.0rc1", (0, 27, 0)), ("1.0", (1, 0, 0))])
def test_parse_version(version, parsed):
    assert compat.parse_version(version) == parsed


@pytest.mark.parametrize("version", ["0.26.0", "0.26.0+cpu", "0.29.1", "0.32.0", "0.32.3+cpu"])
def test_supported_versions(version):
    assert compat.unsupported_reason(version) is None


@pytest.mark.parametrize("version,says", [("0.25.1", "older"), ("0.33.0", "newer"), ("1.0.0", "newer")])
def test_unsupported_versions_say_why(version, says):
    reason = compat.unsupported_reason(version)
    assert reason is not None and says in reason and compat.SUPPORTED_RANGE in reason


def test_installed_vllm_is_supported_and_register_runs():
    pytest.importorskip("vllm")
    version = compat.check_supported_vllm()
    import vllm

    assert compat.parse_version(version) == compat.parse_version(vllm.__version__)
    import crossenc

    crossenc.register()  # idempotent; refuses an unsupported vLLM


def test_unsupported_vllm_is_refused_at_register(monkeypatch):
    """A release outside the range stops vLLM at plugin load with the reason, unless allowed."""
    pytest.importorskip("vllm")
    monkeypatch.setattr(compat, "installed_vllm_version", lambda: "0.40.0")
    monkeypatch.delenv(compat.ALLOW_UNSUPPORTED_ENV, raising=False)
    import crossenc

    with pytest.raises(compat.IncompatibleVLLMError, match=r"vLLM 0\.40\.0 is newer than crossenc supports"):
        crossenc.register()
    monkeypatch.setenv(compat.ALLOW_UNSUPPORTED_ENV, "1")
    assert compat.check_supported_vllm() == "0.40.0"


def test_missing_internal_names_itself(monkeypatch):
    pytest.importorskip("vllm")
    with pytest.raises(compat.IncompatibleVLLMError, match=r"vllm\.forward_context\.no_such_name"):
        compat._internal("vllm.forward_context", "no_such_name")


def test_serve_entry_point_runs_vllms_cli():
    pytest.importorskip("vllm")
    out = subprocess.run([sys.executable, "-m", "crossenc.entrypoints.serve", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "vllm serve" in out.stdout  # vLLM's own CLI parsed the command
