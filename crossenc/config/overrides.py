"""Validation of `classifier_from_token` / `method` before any weights load.

Online conversion (`--hf-overrides '{"classifier_from_token": [...], "method": ...}'`) and
`crossenc convert` both go through `validate_conversion`: a bad override is a clear error naming
the token, the method or the config field, never a silently wrong score. In vLLM it runs as a
per-architecture config hook (`install_config_hooks`), when the ModelConfig is built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from crossenc import presets
from crossenc.config.conversion import (
    METHOD_KEY,
    METHODS,
    TOKEN_IDS_KEY,
    TOKENS_KEY,
    SeqClsConversion,
    config_value,
)

# Config fields that make logits a non-linear (or rescaled) function of the lm_head rows:
# a score head made of the raw rows would give different numbers.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


class OverrideError(ValueError):
    """A conversion override that cannot give the scores it asks for."""


def _problem(tokenizer: Any, token: str) -> tuple[int | None, str]:
    """The token's id, or None and what is wrong with it as a classifier token.

    The text must encode to exactly one id, and that id must be the vocabulary entry spelled
    like the token: vLLM's own conversion looks tokens up by spelling, so a text that encodes
    to another entry (" yes" -> "Ġyes", SentencePiece's "▁Yes" vs "Yes") would pick a
    different lm_head row there.
    """
    ids = list(tokenizer.encode(token, add_special_tokens=False))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if len(ids) != 1:
        return None, f"must tokenize to exactly one id, but it tokenizes to {len(ids)} ids {ids} {pieces}"
    if ids[0] == tokenizer.unk_token_id:
        return None, f"tokenizes to the unknown token {pieces[0]!r} (id {ids[0]})"
    vocab_id = tokenizer.get_vocab().get(token)
    if vocab_id != ids[0]:
        entry = "is not a vocabulary entry" if vocab_id is None else f"is vocabulary id {vocab_id}"
        return None, f"is ambiguous: the text tokenizes to id {ids[0]} {pieces} but {token!r} {entry}"
    return ids[0], ""


def _near_misses(tokenizer: Any, token: str) -> list[str]:
    stripped = token.strip()
    variants = dict.fromkeys(
        v
        for v in (stripped, stripped.lower(), stripped.capitalize(), stripped.upper())
        if v and v != token
    )
    return [
        f"{v!r} (id {id_})" for v in variants if (id_ := _problem(tokenizer, v)[0]) is not None
    ]


def token_ids_or_raise(tokenizer: Any, tokens, vocab_size: int | None = None) -> tuple[int, ...]:
    """The single vocabulary id of each classifier token, or an error naming the bad token."""
    ids = []
    for token in tokens:
        id_, problem = _problem(tokenizer, token)
        if id_ is None:
            near = _near_misses(tokenizer, token)
            hint = f"; single-token near misses: {', '.join(near)}" if near else ""
            raise OverrideError(f"classifier token {token!r} {problem}{hint}")
        if vocab_size is not None and id_ >= vocab_size:
            raise OverrideError(
                f"classifier token {token!r} has id {id_}, outside the model's "
                f"{vocab_size}-row lm_head"
            )
        ids.append(id_)
    return tuple(ids)


def check_convertible(hf_config: Any) -> str:
    """The checkpoint's family classifies with a last-token `score` head over the hidden state
    lm_head reads, and its token logits are linear in that state. Returns the name of the
    family's `*ForSequenceClassification` class (what a converted checkpoint is)."""
    import transformers
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    model_type = getattr(hf_config, "model_type", None)
    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if name else None
    if cls is None or not issubclass(cls, GenericForSequenceClassification):
        raise OverrideError(
            f"model_type {model_type!r} is not a decoder language model whose classifier is a "
            f"last-token score head: {TOKENS_KEY}/{METHOD_KEY} convert CausalLM rerankers "
            "(Qwen3, Qwen2, Gemma, Llama, ...) only"
        )
    text_config = hf_config.get_text_config()
    for field in _LOGIT_TRANSFORMS:
        value = getattr(text_config, field, None)
        if value not in (None, 1, 1.0):
            raise OverrideError(
                f"{model_type} applies {field}={value} to its logits, so the lm_head rows alone "
                "do not give the token logits; converting it is not supported"
            )
    return name


def _declared_num_labels(hf_config: Any, hf_overrides: dict[str, Any]) -> int | None:
    if "num_labels" in hf_overrides:
        return int(hf_overrides["num_labels"])
    labels = list((getattr(hf_config, "id2label", None) or {}).values())
    # transformers fills id2label with LABEL_0, LABEL_1 when a config declares none.
    if labels and not all(_DEFAULT_LABEL.fullmatch(str(label)) for label in labels):
        return len(labels)
    return None


def requested_conversion(hf_config: Any, preset: presets.Preset | None = None) -> SeqClsConversion:
    """What the config asks for, checked without a tokenizer: both keys given, the method
    known, the number of tokens right for it, the family convertible, the preset agreeing.
    The result has no token ids (`validate_conversion` adds them)."""
    method_name, tokens = config_value(hf_config, METHOD_KEY), config_value(hf_config, TOKENS_KEY)
    if method_name is None or tokens is None:
        given, missing = (TOKENS_KEY, METHOD_KEY) if method_name is None else (METHOD_KEY, TOKENS_KEY)
        raise OverrideError(f"{given} is set but {missing} is not: give both")
    if not isinstance(method_name, str) or method_name not in METHODS:
        known = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
        raise OverrideError(f"unknown {METHOD_KEY} {method_name!r}; known methods: {known}")
    method = METHODS[method_name]
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
        raise OverrideError(
            f"{TOKENS_KEY} must be a list of strings, e.g. [\"no\", \"yes\"]; got {tokens!r}"
        )
    if len(set(tokens)) != len(tokens):
        raise OverrideError(f"{TOKENS_KEY}={list(tokens)} repeats a token")
    n = len(tokens)
    if n < method.min_tokens or (method.max_tokens is not None and n > method.max_tokens):
        raise OverrideError(
            f"{method.name} needs {method.expects()} in {TOKENS_KEY}, got {tokens!r}"
            + (" (the false token first, then the true one)" if method.max_tokens == 2 else "")
        )
    check_convertible(hf_config)
    if preset is not None and (tuple(tokens), method_name) != (preset.tokens, preset.method):
        raise OverrideError(
            f"this checkpoint is the {preset.name} preset ({preset.checkpoints}), scored with "
            f"{TOKENS_KEY}={list(preset.tokens)} and {METHOD_KEY}={preset.method!r}, but "
            f"{list(tokens)} with {method_name!r} were given; set "
            f'"{presets.PRESET_KEY}": "{presets.NO_PRESET}" in --hf-overrides (crossenc convert: '
            f"--preset {presets.NO_PRESET}) to score it your own way"
        )
    return SeqClsConversion(method, tuple(tokens))


def validate_conversion(
    hf_config: Any,
    tokenizer: Any,
    hf_overrides: dict[str, Any] | None = None,
    preset: presets.Preset | None = None,
) -> SeqClsConversion:
    """`requested_conversion`, then each token's single id and num_labels' consistency."""
    conversion = requested_conversion(hf_config, preset)
    ids = token_ids_or_raise(tokenizer, conversion.tokens, hf_config.get_text_config().vocab_size)
    declared = _declared_num_labels(hf_config, hf_overrides or {})
    if declared is not None and declared != conversion.num_labels:
        raise OverrideError(
            f"num_labels={declared} contradicts {conversion.method.name} over "
            f"{len(conversion.tokens)} tokens, which gives {conversion.num_labels} output(s)"
        )
    return dataclasses.replace(conversion, token_ids=ids)


def fill_from_preset(hf_config: Any, hf_overrides: dict[str, Any], preset: presets.Preset | None,
                     converting: bool = False) -> None:
    """A preset asked for by name, or recognised on a checkpoint served as another architecture
    (a converted checkpoint needs no override), or for `crossenc convert` (`converting`),
    supplies the tokens and method not given."""
    asked = converting or presets.PRESET_KEY in hf_overrides or "architectures" in hf_overrides
    if preset is None or not asked:
        return
    for key, value in ((TOKENS_KEY, list(preset.tokens)), (METHOD_KEY, preset.method)):
        if config_value(hf_config, key) is None:
            setattr(hf_config, key, value)


@dataclasses.dataclass(frozen=True)
class ConversionPlan:
    preset: presets.Preset | None
    # what the config asks for, validated; with token ids where a tokenizer was given
    conversion: SeqClsConversion | None


def plan_conversion(hf_config: Any, hf_overrides: dict[str, Any] | None = None, *,
                    runner: str = "pooling", convert: str = "classify", tokenizer: Any = None,
                    load_tokenizer: Callable[[], Any] | None = None, names: tuple[str | None, ...] = (),
                    preset_name: str | None = None, converting: bool = False) -> ConversionPlan:
    """Every rule that turns an LLM reranker's config into a classifier, each stated once, for
    vLLM's config hook, `crossenc.config.resolve` and `crossenc convert` alike.

    The checkpoint's preset (named in the config or `preset_name`, or recognised from `names`)
    fills in the tokens and method not given; a conversion needs the pooling runner and no
    embedding conversion; then the request is validated (`validate_conversion` with the
    tokenizer, given or loaded by `load_tokenizer` only now; every check but the tokens' ids
    without one). `hf_config` gets the preset's tokens and
    method; nothing else changes (`apply` records a validated conversion)."""
    hf_overrides = hf_overrides or {}
    preset = presets.for_config(hf_config, *names, preset_name=preset_name)
    fill_from_preset(hf_config, hf_overrides, preset, converting)
    if not SeqClsConversion.requested(hf_config):
        return ConversionPlan(preset, None)
    if runner != "pooling" or convert == "embed":
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as SEQ_CLS_NAMES,
        )

        arch = SEQ_CLS_NAMES.get(getattr(hf_config, "model_type", None), "<Family>ForSequenceClassification")
        raise OverrideError(
            f"{TOKENS_KEY}/{METHOD_KEY} turn the model into a classifier, but it would be "
            f"served with runner={runner!r}, convert={convert!r}; add \"architectures\": [\"{arch}\"] "
            "to --hf-overrides (or pass --runner pooling --convert classify)"
        )
    if tokenizer is None and load_tokenizer is not None:
        tokenizer = load_tokenizer()
    if tokenizer is None:
        return ConversionPlan(preset, requested_conversion(hf_config, preset))
    return ConversionPlan(preset, validate_conversion(hf_config, tokenizer, hf_overrides, preset))


def apply(hf_config: Any, conversion: SeqClsConversion) -> None:
    """Record a validated conversion in the config the model is built from."""
    for config in {id(c): c for c in (hf_config, hf_config.get_text_config())}.values():
        config.num_labels = conversion.num_labels
        config.id2label = conversion.id2label
        config.label2id = {label: i for i, label in conversion.id2label.items()}
        setattr(config, TOKEN_IDS_KEY, list(conversion.token_ids))
        # LLM rerankers read query and document as one text, without a separator token.
        if getattr(config, "use_sep_token", None) is None:
            config.use_sep_token = False


def verify_and_update_model_config(model_config: Any) -> None:
    """vLLM hook (ModelConfig built, no weights loaded): the conversion plan, recorded in the config."""
    from crossenc import compat

    hf_config = model_config.hf_config
    hf_overrides = model_config.hf_overrides if isinstance(model_config.hf_overrides, dict) else {}
    plan = plan_conversion(hf_config, hf_overrides, runner=model_config.runner_type,
                           convert=model_config.convert_type, names=(model_config.model,),
                           load_tokenizer=lambda: compat.get_tokenizer(model_config))
    if plan.conversion is not None:
        apply(hf_config, plan.conversion)
    if plan.preset is not None:
        setattr(hf_config, presets.PRESET_KEY, plan.preset.name)


def install_config_hooks() -> None:
    """Run `verify_and_update_model_config` for every architecture vLLM knows (idempotent), after
    vLLM's own model-config hook for it, when vLLM builds a ModelConfig.

    Only registered names and names that already have a hook get one: a registered name
    resolves to itself, so vLLM's fallback lookup for unregistered names is unaffected. Call it
    after crossenc registers its architectures.
    """
    from crossenc import compat

    for arch in {*compat.supported_archs(), *compat.config_hook_archs()}:
        compat.add_model_config_hook(arch, verify_and_update_model_config, "_crossenc_hook")
