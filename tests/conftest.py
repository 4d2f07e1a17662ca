import os

import pytest

# vLLM engines in tests: in-process (half the start-up time) with a small KV cache on CPU.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def no_gluon_kernel_failed():
    """A Gluon kernel that raises is replaced by its fallback (crossenc.kernels.gluon_kernel_failed),
    which would let a test pass on the fallback: every test ends with none failed."""
    yield
    from crossenc.kernels import failed_gluon_kernels

    failed = failed_gluon_kernels()
    assert not failed, f"Gluon kernels raised and their fallbacks ran: {failed}"


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


def release(llm) -> None:
    """Shut a test's vLLM engine down now, so that its memory is back before the next one starts."""
    import gc

    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()
    gc.collect()


class VllmRunner:
    """`with vllm_runner(model, **kwargs) as llm:` a vLLM engine with the tests' defaults
    (float32, max_model_len 512, seed 0; kwargs win), shut down on leaving the block."""

    def __init__(self, model, **kwargs):
        import vllm

        self.llm = vllm.LLM(str(model), **{"dtype": "float32", "max_model_len": 512, "seed": 0, **kwargs})

    def __enter__(self):
        return self.llm

    def __exit__(self, *exc):
        release(self.llm)
        self.llm = None


@pytest.fixture(scope="session")
def vllm_runner():
    return VllmRunner


class HfRunner:
    """transformers' reference for a checkpoint directory: its tokenizer and the model of
    `cls_name` in float32 (a half-precision checkpoint's weights upcast), in eval mode."""

    def __init__(self, path, cls_name: str = "AutoModelForSequenceClassification"):
        import torch
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = getattr(transformers, cls_name).from_pretrained(path, dtype=torch.float32).eval()

    def logits(self, texts: list[str]) -> list:
        """The logits of each text alone: the reference every served number is compared with."""
        import torch

        with torch.no_grad():
            return [self.model(**self.tokenizer(t, return_tensors="pt")).logits[0] for t in texts]


@pytest.fixture(scope="session")
def hf_runner():
    return HfRunner
