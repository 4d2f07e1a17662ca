"""crossenc: cross-encoders, rerankers and classifiers as first-class vLLM models."""

import logging

__version__ = "0.1.0"

logger = logging.getLogger("crossenc")


def register() -> None:
    """vLLM plugin entry point (``vllm.general_plugins``), run in every vLLM process.

    Registers crossenc's architectures lazily, as "module:Class" strings, so no model
    module is imported until vLLM inspects or loads that architecture.

    It never raises: vLLM does not catch a plugin's exception, so one would stop vLLM for every
    model. On a vLLM release newer than the tested range it registers when every internal it
    needs is present (one warning names the tested range). On an older release, or where an
    internal is missing, it registers nothing of its own, logs exactly why, and enters
    placeholders for its own architectures: vLLM serves its own models as usual, and a request
    for one of crossenc's fails with that reason.
    """
    from crossenc import compat

    _configure_logging()
    try:
        version, problems, warning = compat.compatibility()
        if not problems:
            if warning:
                logger.warning("crossenc: %s", warning)
            _register_all()
            return
    except Exception as e:  # noqa: BLE001 - whatever happens, vLLM must keep serving
        logger.exception("crossenc: registering its models failed")
        version, problems = compat.installed_vllm_version(), [f"registration failed ({type(e).__name__}: {e})"]
    _register_unavailable(compat.unavailable_message(version, problems))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test's capture, a redirected stream)."""

    @property
    def stream(self):
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _configure_logging() -> None:
    """crossenc's messages next to vLLM's, as vLLM configures its own logger: to stderr at
    VLLM_LOGGING_LEVEL (default INFO), unless VLLM_CONFIGURE_LOGGING=0 or a handler is already set.
    Without this only warnings would show, not the defaults crossenc chooses."""
    import os

    if os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0" or logger.handlers:
        return
    level = logging.getLevelName(os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper())
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(message)s", "%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else logging.INFO)
    logger.propagate = False


def _register_all() -> None:
    from crossenc import compat
    from crossenc.config.overrides import install_config_hooks
    from crossenc.config.scheduler import apply_encoder_defaults
    from crossenc.entrypoints.pooling import score_template
    from crossenc.model_executor.layers import pair_packing
    from crossenc.model_executor.models.registry import register_with_vllm

    register_with_vllm()
    # Embedding models saved by sentence-transformers 5.x or later get their own pooling on the
    # vLLM releases that know only the older module names.
    compat.read_new_sentence_transformers_modules()
    # In every process: `vllm serve --api-server-count N` builds the scoring processor in
    # processes that never run the model-config hook.
    score_template.install()
    # Before the engine config is built: larger engine steps for crossenc's encoders on a GPU.
    compat.add_batch_defaults_hook(apply_encoder_defaults)
    # In an engine's process (vLLM loads the plugins there as the engine starts): packed scoring
    # requests longer than max_model_len, where the front end offered them.
    if compat.engine_loaded():
        compat.add_engine_config_hook(pair_packing.take_long_requests)
    # Last: hooks every architecture registered above (LLM-reranker overrides, presets).
    install_config_hooks()


def _register_unavailable(reason: str) -> None:
    import os

    from crossenc import compat
    from crossenc.model_executor.models import unavailable
    from crossenc.model_executor.models.registry import CROSSENC_ARCH_NAMES

    logger.error("%s", reason)
    os.environ[compat.UNAVAILABLE_ENV] = reason  # for vLLM's registry-inspection subprocesses
    try:
        for arch in sorted(CROSSENC_ARCH_NAMES):
            compat.register_model(arch, f"{unavailable.__name__}:{arch}")
    except Exception:  # noqa: BLE001
        logger.exception("crossenc: could not enter placeholders for its architectures")
