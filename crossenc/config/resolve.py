"""How vLLM (with crossenc) will serve a checkpoint, decided from its config alone.

`resolve` follows vLLM's `ModelConfig` (runner and convert resolution, architecture lookup,
`score_type`, the pooling task and `enable_scoring_api`) over static information: crossenc's
registry table (`crossenc.model_executor.models.registry`) and the names in vLLM's registry.
It imports no model code and loads no weights; `crossenc explain` prints its result.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Literal

from crossenc import compat
from crossenc.model_executor.models.registry import ArchSpec, all_specs, vllm_archs

Runner = Literal["generate", "pooling"]
Convert = Literal["none", "embed", "classify"]
# How `/score` and `/rerank` are served for an architecture:
#   cross-encoder: the pair is encoded together and the classifier's single logit is the score;
#   embed-cosine: query and document are embedded separately and compared by cosine similarity;
#   late-interaction: per-token embeddings of each, compared by MaxSim;
#   none: the model cannot score pairs (`score_route` says why).
ScoreRoute = Literal["cross-encoder", "embed-cosine", "late-interaction", "none"]
RUNNER_OPTIONS = ("auto", "generate", "pooling")
CONVERT_OPTIONS = ("auto", "none", "embed", "classify")

_SEQ_CLS_TASKS = ("classify", "token_classify")
_EMBED_TASKS = ("embed", "token_embed")


def score_route(pooling_task: str | None, num_labels: int | None) -> tuple[ScoreRoute, str]:
    """How `/score` and `/rerank` are served for a model whose main pooling task is
    `pooling_task` (vLLM's `ModelConfig.get_pooling_task`), and why; vLLM's rule
    (`enable_scoring_api`) in words."""
    if pooling_task is None:
        return "none", "not a pooling model: it generates text and has no pooling endpoints"
    if pooling_task == "embed":
        return "embed-cosine", "an embedding model: score is the cosine similarity of the two embeddings"
    if pooling_task == "token_embed":
        return "late-interaction", "per-token embeddings: score is their late-interaction (MaxSim) similarity"
    if pooling_task == "classify":
        if num_labels == 1:
            return "cross-encoder", "a single-logit classifier scores the (query, document) pair together"
        return "none", f"num_labels={num_labels}: a multi-label classifier classifies, it does not score pairs"
    return "none", f"its main task is {pooling_task}: one output per token, not one score per pair"


class ResolutionError(ValueError):
    """The checkpoint cannot be served as asked; the message says why and what to change."""


@dataclass(frozen=True)
class Resolution:
    architecture: str  # the config's architecture vLLM serves
    class_ref: str  # "module:Class" vLLM loads
    explicit: bool  # a class registered by name (no conversion at load time)
    runner: Runner
    convert: Convert  # vLLM's convert type: "none" for a named class
    pooling_tasks: tuple[str, ...]  # () when runner == "generate"
    pooling_task: str | None  # the main one, which /pooling, /classify, /v1/embeddings serve
    score_type: str  # vLLM's ModelConfig.score_type
    num_labels: int | None
    conversion: str | None  # e.g. "from_2_way_softmax over ['no', 'yes']"
    preset: str | None  # an LLM reranker preset: its prompt template formats /score pairs
    score_route: ScoreRoute
    score_reason: str

    @property
    def served_class(self) -> str:
        if self.convert == "none":
            return self.class_ref
        wrapper = "as_seq_cls_model" if self.convert == "classify" else "as_embedding_model"
        return f"vLLM's {wrapper}({self.class_ref}), converted at load time"


@dataclass(frozen=True)
class _ClassInfo:
    """What vLLM's registry inspection (`_ModelInfo`) would report, known statically."""

    class_ref: str
    is_pooling: bool
    is_generative: bool
    score_type: str
    pooling_tasks: tuple[str, ...]
    explicit: bool


def _class_info(arch: str) -> _ClassInfo | None:
    spec: ArchSpec | None = all_specs().get(arch)
    if spec is not None:
        return _ClassInfo(spec.class_ref, True, False, spec.score_type, spec.pooling_tasks, True)
    ref = vllm_archs().get(arch)
    if ref is not None and arch.endswith("ForCausalLM"):
        return _ClassInfo(ref, False, True, "bi-encoder", (), False)
    return None


def _registered(arch: str) -> bool:
    return arch in all_specs() or arch in vllm_archs()


@functools.cache
def _suffix_defaults() -> tuple[tuple[str, Runner, Convert], ...]:
    """vLLM's architecture-name defaults (suffix -> runner, convert), which vLLM itself falls
    back to for names that are not registered. First match wins. Empty without vLLM."""
    return compat.architecture_defaults()  # type: ignore[return-value]


def _suffix_default(arch: str, runner: str | None = None, convert: str | None = None):
    for suffix, default_runner, default_convert in _suffix_defaults():
        if (
            arch.endswith(suffix)
            and runner in (None, default_runner)
            and convert in (None, default_convert)
        ):
            return suffix, default_runner, default_convert
    return None


def _normalize(arch: str, runner: str | None, convert: str | None) -> str:
    """vLLM's `_normalize_arch`: an unregistered name maps to a registered base by suffix."""
    if _registered(arch):
        return arch
    match = _suffix_default(arch, runner, convert)
    if match:
        for suffix, _, _ in _suffix_defaults():
            base = arch.replace(match[0], suffix)
            if _registered(base):
                return base
    return arch


def _inspect(archs: list[str], runner: str | None, convert: str | None) -> tuple[_ClassInfo, str]:
    for arch in archs:
        normalized = _normalize(arch, runner, convert)
        info = _class_info(normalized)
        if info is not None:
            return info, arch
        if normalized in vllm_archs():
            raise ResolutionError(
                f"{arch} is served by vLLM's own {vllm_archs()[normalized]}; crossenc has no "
                "static information about it (vLLM inspects the class itself)"
            )
    raise ResolutionError(
        f"architectures {archs} are neither crossenc's (DeBERTa-v2, and "
        "<Family>ForSequenceClassification for vLLM's CausalLM families) nor a CausalLM in "
        "vLLM's registry"
        + ("" if runner is None else f" that can be served with runner={runner}, convert={convert}")
    )


def _default_runner(archs: list[str], sentence_transformers: bool) -> Runner:
    if sentence_transformers:  # vLLM: "Some Sentence Transformers models use *ForCausalLM archs"
        return "pooling"
    for arch in archs:
        if _registered(arch):
            info, _ = _inspect(archs, None, None)
            if info.is_pooling:
                return "pooling"
            if info.is_generative:
                return "generate"
        match = _suffix_default(arch)
        if match:
            return match[1]
    return "generate"


def _default_convert(archs: list[str], runner: Runner) -> Convert:
    for arch in archs:
        if _registered(arch):
            info, _ = _inspect(archs, None, None)
            if (runner == "generate" and info.is_generative) or (
                runner == "pooling" and info.is_pooling
            ):
                return "none"
        match = _suffix_default(arch, runner)
        if match:
            return match[2]
    return "embed" if runner == "pooling" else "none"


def _apply_overrides(hf_config: Any, hf_overrides: dict[str, Any] | None) -> Any:
    """A copy of the config with `--hf-overrides` applied as vLLM applies them."""
    from transformers import PretrainedConfig

    if not isinstance(hf_config, PretrainedConfig):
        raise TypeError(f"hf_config must be a transformers PretrainedConfig, not {type(hf_config)}")
    if hf_overrides is not None and not isinstance(hf_overrides, dict):
        raise ResolutionError(f"hf_overrides must be a JSON object, not {hf_overrides!r}")
    config = copy.deepcopy(hf_config)
    for key, value in (hf_overrides or {}).items():
        nested = getattr(config, key, None)
        target, items = (
            (nested, value.items())
            if isinstance(value, dict) and isinstance(nested, PretrainedConfig)
            else (config, [(key, value)])
        )
        for name, item in items:
            try:
                setattr(target, name, item)
            except (TypeError, ValueError) as e:  # e.g. num_labels="two"
                raise ResolutionError(f"hf_overrides {name}={item!r} is not valid: {e}") from e
    return config


def _plan(config: Any, arch: str, hf_overrides: dict[str, Any], runner: str, convert: str,
          tokenizer: Any) -> Any:
    """crossenc's conversion plan for the config (crossenc.config.overrides.plan_conversion, as
    its config hook runs it), after what vLLM's own hook for the architecture adds:
    Qwen3ForSequenceClassification gives the original Qwen3-Reranker layout its method."""
    from crossenc.config.overrides import plan_conversion

    if arch == "Qwen3ForSequenceClassification" and getattr(config, "is_original_qwen3_reranker", False):
        config.get_text_config().method = "from_2_way_softmax"
    try:
        return plan_conversion(config, hf_overrides, runner=runner, convert=convert, tokenizer=tokenizer)
    except (ValueError, TypeError) as e:  # an unknown preset, a bad override
        raise ResolutionError(str(e)) from e


def resolve(
    hf_config: Any,
    runner: str = "auto",
    convert: str = "auto",
    hf_overrides: dict[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    sentence_transformers: bool = False,
) -> Resolution:
    """How vLLM with crossenc serves a checkpoint with this config, or a ResolutionError.

    `tokenizer`: the checkpoint's tokenizer, to validate conversion tokens
    (`classifier_from_token`) as crossenc does when vLLM builds the config; without it every
    other check runs. `sentence_transformers`: the checkpoint has a sentence-transformers
    pooling module (modules.json), which makes vLLM default to the pooling runner.
    """
    if runner not in RUNNER_OPTIONS:
        raise ResolutionError(f"runner must be one of {RUNNER_OPTIONS}, not {runner!r}")
    if convert not in CONVERT_OPTIONS:
        raise ResolutionError(f"convert must be one of {CONVERT_OPTIONS}, not {convert!r}")
    config = _apply_overrides(hf_config, hf_overrides)
    archs = getattr(config, "architectures", None)
    if not archs or not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        raise ResolutionError(
            f"the config's architectures is {archs!r}; it must name the model class, e.g. "
            '--hf-overrides \'{"architectures": ["Qwen3ForSequenceClassification"]}\''
        )
    archs = list(archs)

    first_info, _ = _inspect(archs, None, None)
    if runner != "auto":
        runner_type: Runner = runner  # type: ignore[assignment]
    elif convert in ("auto", "none"):
        runner_type = _default_runner(archs, sentence_transformers)
    else:
        runner_type = "pooling"
    convert_type: Convert = (
        convert if convert != "auto" else _default_convert(archs, runner_type)  # type: ignore[assignment]
    )
    if first_info.is_pooling and not first_info.is_generative and runner_type == "generate":
        raise ResolutionError(
            f"{archs[0]} is a pooling model: it cannot be served with runner=generate"
        )
    if runner_type == "generate" and not first_info.is_generative:
        raise ResolutionError(f"{archs[0]} does not support runner=generate")
    if runner_type == "pooling" and not first_info.is_pooling and convert_type == "none":
        raise ResolutionError(
            f"{archs[0]} generates text; with runner=pooling it needs convert=embed or "
            "convert=classify, or serve it as a named classifier ("
            f"--hf-overrides '{{\"architectures\": [\"<Family>ForSequenceClassification\"]}}')"
        )

    info, arch = _inspect(archs, runner_type, convert_type)
    converted = convert_type != "none" and not info.is_pooling
    if runner_type == "generate":
        tasks: tuple[str, ...] = ()
    elif converted:
        tasks = _SEQ_CLS_TASKS if convert_type == "classify" else _EMBED_TASKS
    else:
        tasks = info.pooling_tasks

    num_labels = getattr(config, "num_labels", None)
    plan = _plan(config, arch, hf_overrides or {}, runner_type, convert_type, tokenizer)
    preset, conversion = plan.preset, plan.conversion
    if conversion is not None:
        num_labels = conversion.num_labels

    pooling_task = compat.main_pooling_task(tasks, archs)
    route, reason = score_route(pooling_task, num_labels)
    return Resolution(
        architecture=arch,
        class_ref=info.class_ref,
        explicit=info.explicit and not converted,
        runner=runner_type,
        convert=convert_type,
        pooling_tasks=tasks,
        pooling_task=pooling_task,
        score_type="cross-encoder" if convert_type == "classify" else info.score_type,
        num_labels=num_labels,
        conversion=(
            None
            if conversion is None
            else f"{conversion.method.name} over tokens {list(conversion.tokens)}"
        ),
        preset=None if preset is None else preset.name,
        score_route=route,
        score_reason=reason,
    )


def _embeddings_why(task: str) -> str:
    if task == "embed":
        return "one embedding per input"
    if task in compat.embeddings_endpoint_tasks():
        return "per-token embeddings, one vector per input token"
    if task == "token_embed":
        return f"vLLM {compat.installed_vllm_version()} serves it for embed only (0.33 and later: token_embed too)"
    return f"the main pooling task is {task}, not embed"


# The HTTP endpoints of `vllm serve` for pooling models, and when vLLM registers them
# (vllm/entrypoints/pooling/factories.py), on the installed vLLM.
def endpoints(res: Resolution) -> list[tuple[str, bool, str]]:
    """(endpoint, works, why) for each pooling endpoint of `vllm serve`."""
    task = res.pooling_task
    scoring = res.score_route != "none"
    if task is None:
        why_not = "the model is served as a text generator (runner=generate)"
        return [(e, False, why_not) for e in ("/score, /rerank, /v1/rerank", "/classify",
                                               "/v1/embeddings", "/pooling")]
    return [
        ("/score, /rerank, /v1/rerank", scoring, res.score_reason),
        (
            "/classify",
            task == "classify",
            (
                "the sigmoid of the single logit"
                if res.num_labels == 1
                else f"softmax over the {res.num_labels} labels"
            )
            if task == "classify"
            else f"the main pooling task is {task}, not classify",
        ),
        ("/v1/embeddings", task in compat.embeddings_endpoint_tasks(), _embeddings_why(task)),
        ("/pooling", True, f"raw {task} outputs"),
    ]
