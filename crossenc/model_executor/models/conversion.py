"""Loading a conversion: a CausalLM reranker's token rows of `lm_head` as a classifier's `score` head.

The tokens' logits are rows of `lm_head` applied to the final hidden state, so a `score` Linear
built from the same rows gives the same numbers without computing the whole vocabulary; the
method (crossenc/config/conversion.py) says how the rows become the score weight.

The same code serves vLLM's weight loading (online conversion, `load_seq_cls_weights`) and
`crossenc convert` (offline conversion into a `*ForSequenceClassification` checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from crossenc.config.conversion import METHOD_KEY, TOKEN_IDS_KEY, TOKENS_KEY, SeqClsConversion

LM_HEAD = "lm_head.weight"
# Where a tied lm_head's rows live in decoder checkpoints (`model.embed_tokens.weight`).
TIED_EMBEDDING_SUFFIX = "embed_tokens.weight"

class ScoreRowCollector:
    """Picks the classifier tokens' rows out of a stream of checkpoint tensors.

    The stream passes through unchanged except `lm_head.weight`, which a classifier does not
    have. A tied lm_head's rows come from the input embedding, which still passes through.
    """

    def __init__(self, token_ids: Iterable[int], tied: bool):
        self.token_ids = torch.tensor(list(token_ids), dtype=torch.long)
        self.tied = tied
        self._lm_head_rows: torch.Tensor | None = None
        self._embedding_rows: torch.Tensor | None = None

    def _take(self, weight: torch.Tensor) -> torch.Tensor:
        if int(self.token_ids.max()) >= weight.shape[0]:
            raise ValueError(
                f"classifier token ids {self.token_ids.tolist()} are outside the "
                f"{weight.shape[0]}-row lm_head"
            )
        # Clone: loaders may reuse the buffer of the tensor they yield.
        return weight.index_select(0, self.token_ids.to(weight.device)).clone()

    def watch(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, weight in weights:
            if name == LM_HEAD:
                self._lm_head_rows = self._take(weight)
                continue
            if self.tied and name.endswith(TIED_EMBEDDING_SUFFIX):
                self._embedding_rows = self._take(weight)
            yield name, weight

    def rows(self) -> torch.Tensor:
        rows = self._lm_head_rows if self._lm_head_rows is not None else self._embedding_rows
        if rows is None:
            where = f"'{LM_HEAD}'" + (f" or '*{TIED_EMBEDDING_SUFFIX}'" if self.tied else "")
            raise ValueError(
                f"the checkpoint has no {where}: there are no token rows to build the score "
                "head from (is it a CausalLM checkpoint?)"
            )
        return rows


def is_tied(hf_config: Any) -> bool:
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return bool(getattr(text_config, "tie_word_embeddings", False))


def load_seq_cls_weights(
    model: torch.nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    hf_config: Any,
    load_backbone: Callable[[Iterable[tuple[str, torch.Tensor]]], set[str]] | None = None,
) -> set[str]:
    """Load a CausalLM checkpoint into a `*ForSequenceClassification` model with a `score` head.

    The backbone's tensors go to `load_backbone` (default: the loader of vLLM's pooling
    adapter the model class derives from); the classifier tokens' lm_head rows, folded by the
    method, become `model.score.weight`. Returns the names of the loaded parameters.
    """
    conversion = SeqClsConversion.from_hf_config(hf_config)
    if conversion is None:
        raise ValueError(f"the config has no {TOKENS_KEY}/{METHOD_KEY}: nothing to convert")
    if conversion.token_ids is None:
        raise ValueError(
            f"{TOKEN_IDS_KEY} is missing: crossenc's config hook validates {TOKENS_KEY} and records "
            "their ids when vLLM builds its config; is the crossenc plugin loaded (VLLM_PLUGINS)?"
        )
    collector = ScoreRowCollector(conversion.token_ids, tied=is_tied(hf_config))

    from crossenc import compat

    if load_backbone is None:
        # vLLM's pooling adapter loads through the family's own load_weights (its name mapper,
        # stacked q/k/v, "model." prefixes); lm_head never reaches it.
        load_backbone = compat.load_pooling_backbone(model)
    loaded = set(load_backbone(collector.watch(weights)))

    score_weight = conversion.score_weight(collector.rows())
    param = model.score.weight
    if tuple(param.shape) != tuple(score_weight.shape):
        raise ValueError(
            f"score head has shape {tuple(param.shape)} but {conversion.method.name} over "
            f"{len(conversion.tokens)} tokens gives {tuple(score_weight.shape)}: num_labels must "
            f"be {conversion.num_labels}"
        )
    # The score head is in vLLM's head_dtype (float32 unless overridden), whatever the model's.
    compat.weight_loader_for(param)(param, score_weight.to(param.dtype))
    loaded.add("score.weight")
    loaded.discard(LM_HEAD)
    return loaded
