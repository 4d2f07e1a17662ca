"""Conversion methods: a CausalLM reranker's token logits as a classifier's `score` head.

An LLM reranker scores a (query, document) pair with the logits of a few vocabulary tokens
("no"/"yes", "0"/"1", "Yes") at the last position. Those logits are rows of `lm_head` applied
to the final hidden state, so a `score` Linear built from the same rows gives the same numbers
without computing the whole vocabulary. A method says how the rows become the score weight.

The same code serves vLLM's weight loading (online conversion, `load_seq_cls_weights`) and
`crossenc convert` (offline conversion into a `*ForSequenceClassification` checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

# Config keys (set through `--hf-overrides` or by a preset). The first two are vLLM's names.
TOKENS_KEY = "classifier_from_token"
METHOD_KEY = "method"
# Written by crossenc's validation: the single vocabulary id of each token, in order.
TOKEN_IDS_KEY = "classifier_from_token_ids"

LM_HEAD = "lm_head.weight"
# Where a tied lm_head's rows live in decoder checkpoints (`model.embed_tokens.weight`).
TIED_EMBEDDING_SUFFIX = "embed_tokens.weight"


@dataclass(frozen=True)
class ConversionMethod:
    name: str
    summary: str
    min_tokens: int
    max_tokens: int | None
    # rows of lm_head for the tokens, in order [n_tokens, hidden] -> score weight [labels, hidden]
    fold: Callable[[torch.Tensor], torch.Tensor]
    # num_labels of the converted head for n tokens
    num_labels: Callable[[int], int]
    # The CausalLM's own scores from the tokens' logits at the last position [..., n_tokens]:
    # what the converted classifier must serve (see `served_scores`).
    causal_scores: Callable[[torch.Tensor], torch.Tensor]

    def expects(self) -> str:
        if self.max_tokens == self.min_tokens:
            return f"exactly {self.min_tokens} tokens"
        return f"at least {self.min_tokens} token"


def _two_way_softmax(rows: torch.Tensor) -> torch.Tensor:
    # softmax([l_false, l_true])[true] == sigmoid(l_true - l_false) == sigmoid((W_t - W_f) . h),
    # and a single-logit classifier's score is its sigmoid. fp32 keeps the difference exact.
    return rows[1:2].float() - rows[0:1].float()


def _rows_as_they_are(rows: torch.Tensor) -> torch.Tensor:
    return rows


METHODS: dict[str, ConversionMethod] = {
    m.name: m
    for m in (
        ConversionMethod(
            "from_2_way_softmax",
            "tokens [false, true] -> one score, softmax over the two tokens' logits (P(true))",
            min_tokens=2,
            max_tokens=2,
            fold=_two_way_softmax,
            num_labels=lambda n: 1,
            causal_scores=lambda logits: logits.float().softmax(-1)[..., 1:],
        ),
        ConversionMethod(
            "no_post_processing",
            "one output per token: that token's logit as it is",
            min_tokens=1,
            max_tokens=None,
            fold=_rows_as_they_are,
            num_labels=lambda n: n,
            causal_scores=lambda logits: served_scores(logits),
        ),
    )
}


def served_scores(logits: torch.Tensor) -> torch.Tensor:
    """A classifier's scores as vLLM serves them: sigmoid of a single logit, else softmax."""
    logits = logits.float()
    return logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)


def config_value(hf_config: Any, key: str) -> Any:
    """A conversion key from the config, or from its text config for composite models."""
    value = getattr(hf_config, key, None)
    if value is None and hasattr(hf_config, "get_text_config"):
        value = getattr(hf_config.get_text_config(), key, None)
    return value


@dataclass(frozen=True)
class SeqClsConversion:
    """What a config asks for: method and tokens, with their ids once validated."""

    method: ConversionMethod
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...] | None = None

    @property
    def num_labels(self) -> int:
        return self.method.num_labels(len(self.tokens))

    @property
    def id2label(self) -> dict[int, str]:
        # from_2_way_softmax's single output is P(true token); otherwise one label per token.
        labels = self.tokens[-1:] if self.num_labels == 1 else self.tokens
        return dict(enumerate(labels))

    @staticmethod
    def requested(hf_config: Any) -> bool:
        return any(config_value(hf_config, key) is not None for key in (TOKENS_KEY, METHOD_KEY))

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> SeqClsConversion | None:
        """The conversion a config asks for (None if none), as validated by crossenc.config.overrides."""
        if not cls.requested(hf_config):
            return None
        method, tokens = config_value(hf_config, METHOD_KEY), config_value(hf_config, TOKENS_KEY)
        if method not in METHODS or not tokens:
            raise ValueError(
                f"{METHOD_KEY}={method!r} with {TOKENS_KEY}={tokens!r} was not validated; "
                "crossenc.config.overrides.validate_conversion explains what is wrong"
            )
        ids = config_value(hf_config, TOKEN_IDS_KEY)
        return cls(METHODS[method], tuple(tokens), tuple(ids) if ids is not None else None)

    def score_weight(self, rows: torch.Tensor) -> torch.Tensor:
        return self.method.fold(rows)


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
