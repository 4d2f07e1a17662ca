"""One way to make a classifier: `as_seq_cls_model` / `as_token_cls_model`.

Each returns a *named* class (`DebertaV2Model` -> `DebertaV2ForSequenceClassification`,
`Qwen3ForCausalLM` -> `Qwen3ForSequenceClassification`) that is importable as "module:Name",
picklable, and the same object for the same base, so vLLM's registry inspects the class
actually served.

Encoders (a base class with `base_model_prefix` and `seq_cls_projector`, e.g. DeBERTa) get
transformers' head layout: backbone under the prefix, the first token through the projector
(`pooler.dense` in checkpoints) and a `classifier` Linear. In vLLM the heads (projector and
classifier) are built in vLLM's `head_dtype` (float32 for pooling models unless
`--hf-overrides '{"head_dtype": ...}'` says otherwise), as vLLM's own BERT heads are: vLLM
casts the pooled states to it, whatever the model's dtype. Decoders get vLLM's: the last
token's hidden state through a `score` Linear, built from the checkpoint's `score.weight`
or, when the config asks for a conversion, from lm_head rows (crossenc's conversion.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from crossenc import compat
from crossenc.model_executor.layers import default_weight_loader, pair_packing
from crossenc.model_executor.models.registry import base_ref_for, pooling_class_name

_SEQ_CLS = "ForSequenceClassification"
_TOKEN_CLS = "ForTokenClassification"
# (base class, suffix) -> the class made for it; name -> class, for the classes this module
# hosts (made for bases outside crossenc), so that "module:Name" and pickle find them.
_MADE: dict[tuple[type, str], type] = {}
_HOSTED: dict[str, type] = {}


def _is_encoder(base_cls: type) -> bool:
    return hasattr(base_cls, "base_model_prefix") and hasattr(base_cls, "seq_cls_projector")


def _make(base_cls: type, suffix: str, build: Callable[[type], type]) -> type:
    """The named class for `base_cls`, built once. A crossenc base's module holds it (its model
    file assigns it to the name, e.g. DeBERTa); for any other base (vLLM's CausalLMs) this
    module does, through its module-level `__getattr__`."""
    key = (base_cls, suffix)
    if key in _MADE:
        return _MADE[key]
    name = pooling_class_name(base_cls.__name__, suffix)
    hosted = not base_cls.__module__.startswith("crossenc.")
    if hosted and name in _HOSTED:
        raise ValueError(
            f"{base_cls.__module__}.{base_cls.__qualname__} would make {name}, but {__name__} "
            f"already holds {name} made from {_HOSTED[name].base_cls.__module__}."
            f"{_HOSTED[name].base_cls.__qualname__}; one name can refer to one class only"
        )
    cls = build(base_cls)
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = __name__ if hosted else base_cls.__module__
    cls.base_cls = base_cls
    _MADE[key] = cls
    if hosted:
        _HOSTED[name] = cls
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
    """Shared body of encoder classifiers: backbone, weight loading, no-vLLM logits."""

    is_pooling_model = True
    base_cls: type[nn.Module]
    # checkpoint prefix -> our module, for the head's tensors
    head_prefixes: dict[str, str]

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
        """A transformers checkpoint: backbone under its prefix, then the head's tensors."""
        prefix = f"{self.base_cls.base_model_prefix}."
        head_params = {name: p for name, p in self.named_parameters() if not name.startswith(prefix)}
        head: dict[str, torch.Tensor] = {}

        def backbone_weights():
            for name, tensor in weights:
                for hf_prefix, ours in self.head_prefixes.items():
                    if name.startswith(hf_prefix):
                        head[ours + name.removeprefix(hf_prefix)] = tensor
                        break
                else:
                    yield name, tensor

        loaded = {prefix + n for n in self.backbone.load_weights(backbone_weights())}
        missing = sorted(set(head_params) - set(head))
        unexpected = sorted(set(head) - set(head_params))
        misshaped = [f"{n}: checkpoint {tuple(t.shape)}, model {tuple(head_params[n].shape)}"
                     for n, t in head.items() if n in head_params and t.shape != head_params[n].shape]
        if missing or unexpected or misshaped:
            raise ValueError(
                f"{type(self).__name__} head does not match the checkpoint: missing {missing}, "
                f"unexpected {unexpected}, mis-shaped {misshaped} (num_labels={self.num_labels})")
        for name, tensor in head.items():
            param = head_params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
        return loaded | set(head)


def _encoder_seq_cls(base_cls: type) -> type:
    class EncoderForSequenceClassification(_EncoderHeadModel):
        # vLLM reads these statically: first-token pooling, a cross-encoder score route.
        default_seq_pooling_type = "CLS"
        default_tok_pooling_type = "ALL"
        attn_type = "encoder_only"
        score_type = "cross-encoder"
        head_prefixes = {base_cls.hf_seq_cls_projector_prefix: "projector.", "classifier.": "classifier."}

        def __init__(self, *, vllm_config: Any = None, prefix: str = "", config: Any = None):
            super().__init__()
            self._init_backbone(vllm_config, prefix, config)
            dtype = self._head_dtype(vllm_config)
            self.projector = base_cls.seq_cls_projector(self.config, dtype=dtype)
            self.classifier = nn.Linear(self.config.hidden_size, self.num_labels, dtype=dtype)
            if vllm_config is not None:
                # The projector (e.g. DeBERTa's ContextPooler) is part of pooling, before the
                # classifier; a lambda keeps its weights registered once, under `projector`.
                self.pooler = compat.seq_cls_pooler(
                    vllm_config, lambda x: self.projector(x), self.classifier)
                # Several pairs per engine request (`pair_packing`): the model runner (in this
                # process, where vLLM built it) passes the pairs' positions; scored pair by pair.
                if hasattr(self.backbone, "saw_pair_positions") and compat.add_model_kwargs_hook(
                        pair_packing.add_pair_positions):
                    compat.pooler_over_pairs(self.pooler, pair_packing.pair_lens,
                                             lambda: self.backbone.saw_pair_positions)

        def logits(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            """Without vLLM: one row of logits per sequence of the packed batch."""
            first = hidden_states[_first_tokens(positions)].to(self.classifier.weight.dtype)
            return self.classifier(self.projector(first))

    return EncoderForSequenceClassification


def _encoder_token_cls(base_cls: type) -> type:
    class EncoderForTokenClassification(_EncoderHeadModel):
        default_seq_pooling_type = "CLS"
        default_tok_pooling_type = "ALL"
        attn_type = "encoder_only"
        head_prefixes = {"classifier.": "classifier."}

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

    return EncoderForTokenClassification


def _decoder_seq_cls(base_cls: type) -> type:
    """vLLM's last-token classifier over a CausalLM (`score` head, lm_head never built),
    loading conversions (`classifier_from_token`/`method`) through crossenc's conversion.py."""
    from crossenc.model_executor.models.conversion import SeqClsConversion, load_seq_cls_weights

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
    """The `*ForSequenceClassification` class for `base_cls` (the same object on every call):
    an encoder's first-token classifier, or a decoder's last-token one."""
    build = _encoder_seq_cls if _is_encoder(base_cls) else _decoder_seq_cls
    return _make(base_cls, _SEQ_CLS, build)


def as_token_cls_model(base_cls: type) -> type:
    """The `*ForTokenClassification` class for an encoder `base_cls`."""
    if not _is_encoder(base_cls):
        raise TypeError(f"{base_cls.__name__} is not an encoder with a base_model_prefix and projector")
    return _make(base_cls, _TOKEN_CLS, _encoder_token_cls)
