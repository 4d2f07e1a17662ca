"""crossenc: cross-encoders, rerankers and classifiers as first-class vLLM models."""

__version__ = "0.1.0"


def register() -> None:
    """vLLM plugin entry point (``vllm.general_plugins``), run in every vLLM process.

    Registers crossenc's architectures lazily, as "module:Class" strings, so no model
    module is imported until vLLM inspects or loads that architecture.
    """
    from crossenc.compat import check_supported_vllm
    from crossenc.model_executor.models.registry import register_with_vllm

    # An unsupported vLLM is an error here, at start-up, naming the version and the range.
    check_supported_vllm()

    register_with_vllm()
    # Last: hooks every architecture registered above (LLM-reranker overrides, presets).
    from crossenc.config.overrides import install_config_hooks

    install_config_hooks()
