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
