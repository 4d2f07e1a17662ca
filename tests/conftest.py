import os

import pytest

# vLLM engines in tests: in-process (half the start-up time) with a small KV cache on CPU.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def causal_lm_dir(tmp_path_factory):
    """family -> directory of a saved tiny CausalLM reranker (tests/convert/tiny.py), built once
    per session."""
    from tests.convert.tiny import make_causal_lm

    cache: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in cache:
            path = tmp_path_factory.mktemp(f"{family}-causal")
            make_causal_lm(path, family)
            cache[family] = str(path)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def vllm_with_crossenc():
    """vLLM with its general plugins loaded: crossenc registered, its config hooks in place."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # crossenc's entry point: registration and config hooks
    from vllm import ModelRegistry

    assert "Qwen3ForSequenceClassification" in ModelRegistry.get_supported_archs()
