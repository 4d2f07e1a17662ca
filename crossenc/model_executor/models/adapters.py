"""Classification heads: the encoder heads model files subclass, and `as_seq_cls_model` for CausalLMs.

Encoder heads (`EncoderForSequenceClassification`, `EncoderForTokenClassification`) have
transformers' layout: the backbone under its `base_model_prefix`, the first token through the
encoder's projector (`pooler.dense` in checkpoints) and a `classifier` Linear. A model file
declares each head as a class of its own (`class DebertaV2ForSequenceClassification(
EncoderForSequenceClassification)`), with the capabilities vLLM and crossenc's registry read.
In vLLM the heads (projector and classifier) are built in vLLM's `head_dtype` (float32 for
pooling models unless `--hf-overrides '{"head_dtype": ...}'` says otherwise), as vLLM's own
BERT heads are: vLLM casts the pooled states to it, whatever the model's dtype.

`as_seq_cls_model` makes a *named* class for a CausalLM (`Qwen3ForCausalLM` ->
`Qwen3ForSequenceClassification`) that is importable as "module:Name", picklable, and the same
object for the same base, so vLLM's registry inspects the class actually served: vLLM's
last-token classifier, its `score` Linear built from the checkpoint's `score.weight` or, when
the config asks for a conversion, from lm_head rows (crossenc's conversion.py).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from crossenc import compat
from crossenc.model_executor.layers import pair_packing
from crossenc.model_executor.models.interfaces import SupportsSequenceClassification, SupportsTokenClassification
from crossenc.model_executor.models.registry import base_ref_for, pooling_class_name
from crossenc.model_executor.models.utils import load_checkpoint

_SEQ_CLS = "ForSequenceClassification"
# (base class, suffix) -> the class made for it; name -> class, for every class made: this module
# hosts them, so that "module:Name" and pickle find them.
_MADE: dict[tuple[type, str], type] = {}
_HOSTED: dict[str, type] = {}


def _make(base_cls: type, suffix: str, build: Callable[[type], type]) -> type:
    """The named class for `base_cls` (vLLM's CausalLMs), built once and held by this module,
    through its module-level `__getattr__`."""
    key = (base_cls, suffix)
    if key in _MADE:
        return _MADE[key]
    name = pooling_class_name(base_cls.__name__, suffix)
    if name in _HOSTED:
        raise ValueError(
            f"{base_cls.__module__}.{base_cls.__qualname__} would make {name}, but {__name__} "
            f"already holds {name} made from {_HOSTED[name].base_cls.__module__}."
            f"{_HOSTED[name].base_cls.__qualname__}; one name can refer to one class only"
        )
    cls = build(base_cls)
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = __name__
    cls.base_cls = base_cls
    _MADE[key] = _HOSTED[name] = cls
    return cls


def __getattr__(name: str) -> type:
    """`<Family>ForSequenceClassification` for a CausalLM family in vLLM's registry, built on
    first access: what vLLM's lazy "module:Class" registration and unpickling look up."""
    if name in _HOSTED:
        return _HOSTED[name]
    base_ref = base_ref_for(name) if name.endswith(_SEQ_CLS) else None
    if base_ref is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, class_name = base_ref.partition(":")
    return as_seq_cls_model(getattr(importlib.import_module(module), class_name))


def _first_tokens(positions: torch.Tensor) -> torch.Tensor:
    return (positions == 0).nonzero().flatten()


class _EncoderHeadModel(nn.Module):
    """Shared body of encoder heads: the backbone (`base_cls`, built under its
    `base_model_prefix` as in transformers' checkpoints) and weight loading."""

    base_cls: type[nn.Module]
    # checkpoint prefix -> our module, for head tensors named otherwise in checkpoints
    head_prefixes: dict[str, str] = {}

    def _head_dtype(self, vllm_config) -> torch.dtype | None:
        # None: the default dtype (the model's, outside vLLM).
        return compat.head_dtype(vllm_config) if vllm_config is not None else None

    def _init_backbone(self, vllm_config, prefix, config):
        base = self.base_cls
        self.config = config if config is not None else vllm_config.model_config.hf_config
        setattr(self, base.base_model_prefix, base(
            vllm_config=vllm_config, prefix=f"{prefix}.{base.base_model_prefix}".lstrip("."),
            config=self.config, with_pooler=False))
        num_labels = getattr(self.config, "num_labels", None)
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels={num_labels!r}: a classifier needs at least one label")
        self.num_labels = num_labels

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.base_cls.base_model_prefix)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_input_ids(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None,
                token_type_ids=None, pair_positions=None, num_pair_seqs=None) -> torch.Tensor:
        return self.backbone(input_ids, positions, intermediate_tensors, inputs_embeds, token_type_ids,
                             pair_positions, num_pair_seqs)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """A transformers checkpoint: the backbone under its prefix, then the head's tensors,
        through the backbone's name mapping and the head's renames, in one pass."""
        mapper = dataclasses.replace(self.backbone.checkpoint_mapper, prefixes=self.head_prefixes)
        return load_checkpoint(self, weights, mapper)


class EncoderForSequenceClassification(SupportsSequenceClassification, _EncoderHeadModel):
    """transformers' sequence-classification head over an encoder: the first token's hidden
    state through the encoder's projector (`projector_cls`, e.g. DeBERTa's ContextPooler,
    `pooler.*` in checkpoints), then a `classifier` Linear. A model file subclasses it with
    its `base_cls` and `projector_cls`."""

    projector_cls: type[nn.Module]
    head_prefixes = {"pooler.": "projector."}

    def __init__(self, *, vllm_config: Any = None, prefix: str = "", config: Any = None):
        super().__init__()
        self._init_backbone(vllm_config, prefix, config)
        dtype = self._head_dtype(vllm_config)
        self.projector = self.projector_cls(self.backbone.arch, dtype=dtype)
        self.classifier = nn.Linear(self.config.hidden_size, self.num_labels, dtype=dtype)
        if vllm_config is not None:
            # The projector is part of pooling, before the classifier; a lambda keeps its
            # weights registered once, under `projector`.
            self.pooler = compat.seq_cls_pooler(vllm_config, lambda x: self.projector(x), self.classifier)
            # Several pairs per engine request (`pair_packing`): the model runner (in this
            # process, where vLLM built it) passes the pairs' positions, through crossenc's hook
            # in V1 or the model state it asks the model for in V2; scored pair by pair.
            if hasattr(self.backbone, "saw_pair_positions"):
                compat.add_model_kwargs_hook(pair_packing.add_pair_positions)
                compat.pooler_over_pairs(self.pooler, pair_packing.pair_lens,
                                         lambda: self.backbone.saw_pair_positions)

    def logits(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Without vLLM: one row of logits per sequence of the packed batch."""
        first = hidden_states[_first_tokens(positions)].to(self.classifier.weight.dtype)
        return self.classifier(self.projector(first))


class EncoderForTokenClassification(SupportsTokenClassification, _EncoderHeadModel):
    """transformers' token-classification head over an encoder: a `classifier` Linear on every
    token's hidden state. A model file subclasses it with its `base_cls`."""

    def __init__(self, *, vllm_config: Any = None, prefix: str = "", config: Any = None):
        super().__init__()
        self._init_backbone(vllm_config, prefix, config)
        self.classifier = nn.Linear(self.config.hidden_size, self.num_labels,
                                    dtype=self._head_dtype(vllm_config))
        if vllm_config is not None:
            self.pooler = compat.token_cls_pooler(vllm_config, self.classifier)

    def logits(self, hidden_states: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Without vLLM: one row of logits per token."""
        return self.classifier(hidden_states.to(self.classifier.weight.dtype))


def _decoder_seq_cls(base_cls: type) -> type:
    """vLLM's last-token classifier over a CausalLM (`score` head, lm_head never built),
    loading conversions (`classifier_from_token`/`method`) through crossenc's conversion.py."""
    from crossenc.config.conversion import SeqClsConversion
    from crossenc.model_executor.models.conversion import load_seq_cls_weights

    # vLLM's adapter builds the `score` head in head_dtype and casts the pooled state to it.
    class DecoderForSequenceClassification(compat.vllm_seq_cls_adapter(base_cls)):
        # Not a text generator: vLLM's registry then reports a pooling-only model, so it
        # resolves runner=pooling and refuses runner=generate for it.
        compute_logits = None

        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
            if SeqClsConversion.requested(self.config):
                return load_seq_cls_weights(self, weights, self.config)
            # A *ForSequenceClassification checkpoint: backbone and its `score.weight`.
            return super().load_weights(weights)

    return DecoderForSequenceClassification


def as_seq_cls_model(base_cls: type) -> type:
    """The `*ForSequenceClassification` class for a CausalLM `base_cls` (the same object on
    every call): vLLM's last-token classifier, named. Encoders declare theirs in their model
    file (`EncoderForSequenceClassification`)."""
    return _make(base_cls, _SEQ_CLS, _decoder_seq_cls)
