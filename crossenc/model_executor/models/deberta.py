"""DeBERTa (v1: deberta-base, deberta-large, deberta-large-mnli) for vLLM, on DeBERTa-v2's encoder.

transformers' modeling_deberta.py differs from v2 in what this file states:

- q, k and v come from one fused `in_proj` without bias, its rows laid out head by head (q, k
  and v of head 0, then of head 1, ...), plus separate `q_bias` and `v_bias`. They load into
  v2's stacked q/k/v matmul: the rows reordered to q, k, v, and the two biases as its q and v
  biases (k's is zero).
- The position projections are `pos_proj` (c2p, no bias) and `pos_q_proj` (p2c, with bias),
  always separate from the content ones.
- Relative positions are linear, clamped at +-max_relative_positions (the position table has
  2 * max_relative_positions rows): no log buckets, no LayerNorm on the table, no convolution.
  v2's encoder, attention op and Triton kernel take that as they are.
- `talking_head` mixes attention scores across heads, which the fused attention does not do:
  such a config is refused by name.

transformers' DebertaLayerNorm (epsilon inside the square root, statistics in float32) is
torch's LayerNorm.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from crossenc.model_executor.models.adapters import EncoderForSequenceClassification, EncoderForTokenClassification
from crossenc.model_executor.models.deberta_v2 import (
    DebertaV2Arch,
    DebertaV2ContextPooler,
    DebertaV2Model,
    DebertaV2SelfAttention,
    UnsupportedConfigError,
)
from crossenc.model_executor.models.utils import CheckpointMapper, StackedParam

# Config fields of DeBERTa-v2 that v1's modeling code never reads: a v1 config carrying them is
# served as transformers runs it, without them.
_V2_ONLY = dict(position_buckets=-1, share_att_key=False, norm_rel_ebd=False, conv_kernel_size=0)


class DebertaSelfAttention(DebertaV2SelfAttention):
    """v2's attention with v1's projections: no bias on c2p's (`pos_proj`)."""

    pos_key_bias = False


def _qkv_rows(num_heads: int) -> Any:
    """in_proj's rows, head by head (q, k, v of each), reordered to q of all heads, k, v."""

    def reorder(weight: torch.Tensor) -> torch.Tensor:
        three_heads, hidden = weight.shape
        head_size = three_heads // (3 * num_heads)
        return weight.view(num_heads, 3, head_size, hidden).transpose(0, 1).reshape(three_heads, hidden)

    return reorder


class DebertaModel(DebertaV2Model):
    """The DeBERTa (v1) encoder; served on its own as an embedding model."""

    self_attention_cls = DebertaSelfAttention

    @classmethod
    def read_config(cls, config: Any) -> DebertaV2Arch:
        if getattr(config, "talking_head", False):
            raise UnsupportedConfigError(
                "talking_head=True: DeBERTa's talking-head attention mixes scores across heads, "
                "which crossenc's fused attention does not do")
        arch = DebertaV2Arch.from_config(config)
        return dataclasses.replace(arch, **_V2_ONLY, att_span=arch.max_relative_positions)

    @property
    def checkpoint_mapper(self) -> CheckpointMapper:
        """v2's mapping, with v1's names for the attention's tensors."""
        v2 = DebertaV2Model.checkpoint_mapper
        return dataclasses.replace(v2, stacked=(
            StackedParam(".qkv_proj.weight", ".in_proj.weight", None, _qkv_rows(self.arch.num_heads)),
            StackedParam(".qkv_proj.bias", ".q_bias", "q"),
            StackedParam(".qkv_proj.bias", ".v_bias", "v"),
            StackedParam(".pos_key_proj.", ".pos_proj.", None),
            StackedParam(".pos_query_proj.", ".pos_q_proj.", None),
        ), zero_shards=((".qkv_proj.bias", "k"),))


class DebertaForSequenceClassification(EncoderForSequenceClassification):
    """deberta-large-mnli and other v1 classifiers; one label: a cross-encoder's score."""

    base_cls = DebertaModel
    projector_cls = DebertaV2ContextPooler


class DebertaForTokenClassification(EncoderForTokenClassification):
    """v1 token classifiers (NER): one row of logits per token."""

    base_cls = DebertaModel
