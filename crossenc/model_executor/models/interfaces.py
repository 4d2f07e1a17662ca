"""What a crossenc model class can do, declared once, by the capability class it derives from.

Light on purpose (no torch, no model code): crossenc's registry and config resolution read
these without importing a model file. vLLM reads the same attributes from the class it loads
(`is_pooling_model`, `default_*_pooling_type`, `score_type`, `attn_type`).
"""

from __future__ import annotations

from typing import ClassVar, Literal


class PoolingEncoder:
    """An encoder-only pooling model: no generation, first-token pooling for sequences."""

    is_pooling_model: ClassVar[bool] = True
    attn_type: ClassVar[str] = "encoder_only"
    default_seq_pooling_type: ClassVar[str] = "CLS"
    default_tok_pooling_type: ClassVar[str] = "ALL"
    # vLLM's pooling tasks the class serves; how crossenc's registry describes its head
    pooling_tasks: ClassVar[tuple[str, ...]]
    head_kind: ClassVar[Literal["seq_cls", "token", "embed"]]

    @property
    def get_model_state_cls(self):
        """What vLLM's V2 model runner asks a model for (`hasattr(model, "get_model_state_cls")`,
        then a call): on a GPU, the state that passes crossenc's encoders their token types and
        each packed pair's positions (`pair_packing.model_state_cls`). Elsewhere the attribute is
        absent (AttributeError), so vLLM chooses its own, as for a model without one."""
        from crossenc.model_executor.layers import pair_packing

        cls = pair_packing.model_state_cls()
        if cls is None:
            raise AttributeError("get_model_state_cls")
        return lambda: cls


class SupportsSequenceClassification(PoolingEncoder):
    """One vector per sequence through a classifier: vLLM's `score` for one label (the pair
    encoded together), `classify` for more."""

    pooling_tasks = ("classify", "token_classify")
    head_kind = "seq_cls"
    score_type: ClassVar[str] = "cross-encoder"


class SupportsTokenClassification(PoolingEncoder):
    """Logits for every token (NER, PII); no scoring."""

    pooling_tasks = ("token_classify",)
    head_kind = "token"


class SupportsEmbedding(PoolingEncoder):
    """The bare encoder as an embedder: a first-token embedding, or every token's."""

    pooling_tasks = ("embed", "token_embed")
    head_kind = "embed"
