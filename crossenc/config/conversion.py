"""The conversion vocabulary: how a CausalLM reranker's token logits become a classifier's score.

An LLM reranker scores a (query, document) pair with the logits of a few vocabulary tokens
("no"/"yes", "0"/"1", "Yes") at the last position. A config asks for a conversion with vLLM's keys
`classifier_from_token` and `method`; a method says how the tokens' lm_head rows become the
`score` weight, how many labels that gives, and what the CausalLM itself would have scored.
crossenc.config.overrides validates a request; model_executor/models/conversion.py loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Config keys (set through `--hf-overrides` or by a preset). The first two are vLLM's names.
TOKENS_KEY = "classifier_from_token"
METHOD_KEY = "method"
# Written by crossenc's validation: the single vocabulary id of each token, in order.
TOKEN_IDS_KEY = "classifier_from_token_ids"

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
