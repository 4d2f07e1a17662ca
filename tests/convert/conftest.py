"""Fixtures of the conversion tests: tiny CausalLM rerankers, built once per session."""

from __future__ import annotations

import pytest

from tests.convert.tiny import make_causal_lm


@pytest.fixture(scope="session")
def causal_lm_dir(tmp_path_factory):
    """family -> directory of a saved tiny CausalLM (built once per session)."""
    cache: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in cache:
            path = tmp_path_factory.mktemp(f"{family}-causal")
            make_causal_lm(path, family)
            cache[family] = str(path)
        return cache[family]

    return get
