"""The architectures crossenc adds to vLLM, with their static capabilities.

crossenc's model files and the classes each registers (DeBERTa), plus one named classifier per
CausalLM family of vLLM's registry, listed from vLLM's table. Everything that needs to know what an architecture can do
(the plugin's registration, `crossenc.config` resolution, `crossenc explain`) reads it from
here. The only name rule is the classifier's name (`pooling_class_name`); vLLM's own suffix
defaults are read from vLLM where resolution must mirror them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from crossenc import compat
from crossenc.model_executor.models import interfaces

# vLLM's pooling task names (vllm.tasks.PoolingTask) that crossenc's architectures support.
PoolingTask = Literal["embed", "classify", "token_classify", "token_embed"]


@dataclass(frozen=True)
class ArchSpec:
    arch: str
    module: str
    class_name: str
    pooling_tasks: tuple[PoolingTask, ...]
    # "seq_cls": one vector per sequence through a classifier; the score route then depends
    # on num_labels (1: cross-encoder, more: classify only). "embed": cosine scoring.
    # "token": per-token outputs, no scoring.
    head: Literal["seq_cls", "embed", "token"]
    default_pooling: Literal["CLS", "MEAN", "LAST", "ALL"]
    # For a classifier made from one of vLLM's CausalLMs: that CausalLM's "module:Class".
    base_ref: str | None = None

    @property
    def class_ref(self) -> str:
        return f"{self.module}:{self.class_name}"

    @property
    def score_type(self) -> str:
        """vLLM's `score_type` of the class (`SupportsCrossEncoding` for classifiers)."""
        return "cross-encoder" if self.head == "seq_cls" else "bi-encoder"


# Each model file crossenc adds, its classes (by architecture name) and the capability class each
# derives from: a new family is one model file and one entry here. What a capability means is
# declared once, in `interfaces`; a test checks every class derives from the one named here.
MODEL_FILES: dict[str, dict[str, type[interfaces.PoolingEncoder]]] = {
    "crossenc.model_executor.models.deberta_v2": {
        "DebertaV2ForSequenceClassification": interfaces.SupportsSequenceClassification,
        "DebertaV2ForTokenClassification": interfaces.SupportsTokenClassification,
        "DebertaV2Model": interfaces.SupportsEmbedding,
    },
    "crossenc.model_executor.models.deberta": {
        "DebertaForSequenceClassification": interfaces.SupportsSequenceClassification,
        "DebertaForTokenClassification": interfaces.SupportsTokenClassification,
        "DebertaModel": interfaces.SupportsEmbedding,
    },
}
CROSSENC_ARCH_NAMES = frozenset(name for classes in MODEL_FILES.values() for name in classes)


def spec_of(arch: str, module: str, capabilities: type[interfaces.PoolingEncoder]) -> ArchSpec:
    """The registry entry of a crossenc model class, from its capability class."""
    head = capabilities.head_kind
    pooling = (capabilities.default_tok_pooling_type if head == "token"
               else capabilities.default_seq_pooling_type)
    return ArchSpec(arch, module, arch, capabilities.pooling_tasks, head=head, default_pooling=pooling)


@functools.cache
def crossenc_archs() -> dict[str, ArchSpec]:
    """crossenc's own architectures (`MODEL_FILES`), without importing a model file."""
    return {arch: spec_of(arch, module, capabilities)
            for module, classes in MODEL_FILES.items() for arch, capabilities in classes.items()}


# --- Named classifiers for vLLM's CausalLMs ------------------------------------------------
#
# vLLM serves `<Family>ForSequenceClassification` of a CausalLM family by renaming the suffix to
# `ForCausalLM` and wrapping that class at load time, so its registry inspects the unconverted
# class. crossenc registers a named class for each such family instead (built by
# `crossenc.model_executor.models.adapters.as_seq_cls_model`), so vLLM reads runner, convert
# type and score type from the class it serves.

ADAPTERS_MODULE = "crossenc.model_executor.models.adapters"
_CAUSAL_LM = "ForCausalLM"
_SEQ_CLS = "ForSequenceClassification"


def pooling_class_name(base_name: str, suffix: str = _SEQ_CLS) -> str:
    """`Qwen3ForCausalLM` -> `Qwen3ForSequenceClassification`; `DebertaV2Model` -> `DebertaV2For...`."""
    for generate_suffix in (*compat.GENERATE_SUFFIXES, "Model"):
        if base_name.endswith(generate_suffix):
            return base_name.removesuffix(generate_suffix) + suffix
    return base_name + suffix


@functools.cache
def vllm_archs() -> dict[str, str]:
    """vLLM's own architectures (not crossenc's) -> "module:Class", read from vLLM's registry
    table without importing any model module. Empty without vLLM."""
    refs = {arch: compat.entry_ref(entry) for arch, entry in compat.registry_entries().items()}
    return {arch: ref for arch, ref in refs.items() if ref and not ref.startswith("crossenc.")}


@functools.cache
def causal_seq_cls_specs() -> dict[str, ArchSpec]:
    """`<Family>ForSequenceClassification` for every `<Family>ForCausalLM` in vLLM's registry
    whose classifier vLLM itself only resolves by suffix, each a class of the adapters module.

    Left out: families vLLM has its own classifier for (GPT2, Jamba, ...), speculative-decoding
    draft heads (not standalone models), multimodal models (vision/audio-prefix and
    encoder-decoder families such as Phi3V or RadioMBartPrefix: crossenc's classifiers, presets
    and templates score text; vLLM keeps its own handling of those names) and CausalLMs served by
    the Transformers modeling backend (one generic class, not a family). Empty without vLLM.
    """
    native = vllm_archs()
    excluded = compat.speculative_drafts() | compat.multimodal_archs()
    specs = {}
    for arch, base_ref in sorted(native.items()):
        if not arch.endswith(_CAUSAL_LM) or arch in excluded:
            continue
        seq_cls = arch.removesuffix(_CAUSAL_LM) + _SEQ_CLS
        if seq_cls in native or base_ref.startswith(compat.TRANSFORMERS_BACKEND_MODULE):
            continue
        specs[seq_cls] = ArchSpec(
            seq_cls,
            ADAPTERS_MODULE,
            # The class's own name: where vLLM serves several architectures with one class
            # (InternLM3ForCausalLM is LlamaForCausalLM), they share its classifier.
            pooling_class_name(base_ref.rpartition(":")[2]),
            ("classify", "token_classify"),
            head="seq_cls",
            default_pooling="LAST",
            base_ref=base_ref,
        )
    return specs


def base_ref_for(name: str) -> str | None:
    """The CausalLM behind a named classifier of the adapters module, by the class's name or
    by an architecture registered for it."""
    specs = causal_seq_cls_specs()
    if name in specs:
        return specs[name].base_ref
    return next((s.base_ref for s in specs.values() if s.class_name == name), None)


def all_specs() -> dict[str, ArchSpec]:
    """Every architecture crossenc registers: its own table and the CausalLM classifiers."""
    return {**causal_seq_cls_specs(), **crossenc_archs()}


def class_refs() -> dict[str, str]:
    """Every architecture crossenc registers -> "module:Class", without importing a model file."""
    return {arch: spec.class_ref for arch, spec in all_specs().items()}


def register_with_vllm() -> None:
    """Register every architecture crossenc serves with vLLM's ModelRegistry, lazily.

    A named classifier also gets its CausalLM family's engine-config hook: vLLM looks up the
    hook of a `<Family>ForSequenceClassification` it converts implicitly under the CausalLM's
    name, and a registered name under itself. (Only the engine-config hook: vLLM does not run
    the CausalLM's model-config hook for its implicit classifier either.)
    """
    for arch, class_ref in class_refs().items():
        compat.register_model(arch, class_ref)
    for arch in causal_seq_cls_specs():
        compat.inherit_engine_config_hook(arch, arch.removesuffix(_SEQ_CLS) + _CAUSAL_LM)
