"""An example of every architecture crossenc registers from its own model files
(`registry.MODEL_FILES`): a tiny config with a published checkpoint's features, the transformers
class that is its reference, and the published checkpoints it stands for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.utils import deberta_config, deberta_v1_config


@dataclass(frozen=True)
class ExampleModel:
    config: Callable[[], Any]
    hf_class: str  # transformers' class of the same checkpoints
    published: tuple[str, ...]


EXAMPLE_MODELS: dict[str, ExampleModel] = {
    "DebertaV2ForSequenceClassification": ExampleModel(
        lambda: deberta_config("v3", num_labels=1), "DebertaV2ForSequenceClassification",
        ("cross-encoder/nli-deberta-v3-base", "mixedbread-ai/mxbai-rerank-base-v1",
         "protectai/deberta-v3-base-prompt-injection-v2")),
    "DebertaV2ForTokenClassification": ExampleModel(
        lambda: deberta_config("v3", num_labels=5), "DebertaV2ForTokenClassification",
        ("iiiorg/piiranha-v1-detect-personal-information",)),
    "DebertaV2Model": ExampleModel(
        lambda: deberta_config("v3"), "DebertaV2Model", ("microsoft/deberta-v3-base",)),
    "DebertaForSequenceClassification": ExampleModel(
        lambda: deberta_v1_config("base", num_labels=3), "DebertaForSequenceClassification",
        ("microsoft/deberta-large-mnli", "microsoft/deberta-base-mnli")),
    "DebertaForTokenClassification": ExampleModel(
        lambda: deberta_v1_config("clamped", num_labels=5), "DebertaForTokenClassification", ()),
    "DebertaModel": ExampleModel(
        lambda: deberta_v1_config("base"), "DebertaModel", ("microsoft/deberta-base",)),
}
