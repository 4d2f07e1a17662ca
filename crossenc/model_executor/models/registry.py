"""The architectures crossenc adds to vLLM, with their static capabilities.

One declarative table. Everything that needs to know what an architecture can do (the
plugin's registration, `crossenc.config` resolution, `crossenc explain`) reads it from
here; no module compares architecture-name suffixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PoolingTask = Literal["embed", "classify", "score", "token_classify", "token_embed"]
# How `/score` and `/rerank` are served for an architecture:
#   cross-encoder: the pair is encoded together and the classifier's single logit is the score;
#   embed-cosine: query and document are embedded separately and compared by cosine similarity;
#   none: the architecture cannot score (the reason is given by `score_route_reason`).
ScoreRoute = Literal["cross-encoder", "embed-cosine", "none"]


@dataclass(frozen=True)
class ArchSpec:
    arch: str
    module: str
    class_name: str
    pooling_tasks: tuple[str, ...]
    # "seq_cls": one vector per sequence through a classifier; the score route then depends
    # on num_labels (1: cross-encoder, more: classify only). "embed": cosine scoring.
    # "token": per-token outputs, no scoring.
    head: Literal["seq_cls", "embed", "token"]
    default_pooling: Literal["CLS", "MEAN", "LAST", "ALL"]

    @property
    def class_ref(self) -> str:
        return f"{self.module}:{self.class_name}"


_DEBERTA = "crossenc.model_executor.models.deberta_v2"

CROSSENC_ARCHS: dict[str, ArchSpec] = {
    spec.arch: spec
    for spec in (
        ArchSpec(
            "DebertaV2ForSequenceClassification",
            _DEBERTA,
            "DebertaV2ForSequenceClassification",
            ("classify", "score", "token_classify"),
            head="seq_cls",
            default_pooling="CLS",
        ),
        ArchSpec(
            "DebertaV2ForTokenClassification",
            _DEBERTA,
            "DebertaV2ForTokenClassification",
            ("token_classify",),
            head="token",
            default_pooling="ALL",
        ),
        ArchSpec(
            "DebertaV2Model",
            _DEBERTA,
            "DebertaV2Model",
            ("embed", "token_embed", "score"),
            head="embed",
            default_pooling="CLS",
        ),
    )
}


def score_route(spec: ArchSpec, num_labels: int | None) -> tuple[ScoreRoute, str]:
    """The score route of an architecture for a checkpoint with `num_labels`, and why."""
    if spec.head == "embed":
        return "embed-cosine", "an embedding model: score is the cosine similarity of the two embeddings"
    if spec.head == "token":
        return "none", "a token classifier gives one output per token, not one score per pair"
    if num_labels == 1:
        return "cross-encoder", "a single-logit classifier scores the (query, document) pair together"
    return "none", f"num_labels={num_labels}: a multi-label classifier classifies, it does not score pairs"


def register_with_vllm() -> None:
    """Register every architecture of the table with vLLM's ModelRegistry, lazily."""
    from vllm import ModelRegistry

    for spec in CROSSENC_ARCHS.values():
        ModelRegistry.register_model(spec.arch, spec.class_ref)
