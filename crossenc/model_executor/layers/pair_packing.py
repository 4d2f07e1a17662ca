"""Several (query, document) pairs in one engine request.

vLLM pays a cost per engine request (input processing, scheduling, the transfer to and from the
engine, output handling: about 0.2 ms of host time on an H200 machine), and cross-encoder
scoring sends one request per pair, while crossenc's encoders already run packed sequences.
So the scoring front end packs consecutive pairs of a call or request into one engine request
of at most `max_model_len` tokens and names their lengths in the request's pooling parameters
(`PAIRS_KEY`). In the engine, the model runner gives the model each token's position within
its pair (restarting at 0 at each pair, as separate requests would), and the pooler scores each
pair's first token as a request of its own. Each pair's score is the one it gets sent alone.

`CROSSENC_PACK_PAIRS=0` sends one engine request per pair again.
`CROSSENC_PACK_MAX_PAIRS` (default 16) bounds the pairs of one request; it matters only where
`max_model_len` holds more than 16 pairs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# Key of a packed request's pooling parameters (`extra_kwargs`): its pairs' token counts.
PAIRS_KEY = "crossenc_pair_lens"
PACK_ENV = "CROSSENC_PACK_PAIRS"
MAX_PAIRS_ENV = "CROSSENC_PACK_MAX_PAIRS"
# Pairs per engine request at most, unless MAX_PAIRS_ENV says otherwise.
MAX_PAIRS_PER_REQUEST = 16


def enabled() -> bool:
    return os.environ.get(PACK_ENV, "1") != "0"


def max_pairs_per_request() -> int:
    value = os.environ.get(MAX_PAIRS_ENV, "").strip()
    if not value:
        return MAX_PAIRS_PER_REQUEST
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_PAIRS_ENV}={value!r}: the most pairs per engine request, a whole number >= 1")
    return int(value)


def pack_groups(lengths: Sequence[int], budget: int,
                max_pairs: int | None = None) -> list[range]:
    """Consecutive runs of `lengths` (token counts), each summing to at most `budget` and
    holding at most `max_pairs`; a length over the budget stays alone (vLLM refuses it)."""
    if max_pairs is None:
        max_pairs = max_pairs_per_request()
    groups: list[range] = []
    start, total = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (total + n > budget or i - start >= max_pairs):
            groups.append(range(start, i))
            start, total = i, 0
        total += n
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


def pack_runs(lengths: Sequence[int | None], kinds: Sequence[object], budget: int) -> list[list[int]]:
    """Index groups of items in order: consecutive items of one kind packed by `pack_groups`;
    an item without a length (not packable) alone."""
    groups: list[list[int]] = []
    i = 0
    while i < len(lengths):
        j = i + 1
        if lengths[i] is None:
            groups.append([i])
        else:
            while j < len(lengths) and lengths[j] is not None and kinds[j] == kinds[i]:
                j += 1
            groups.extend([i + k for k in g] for g in pack_groups(lengths[i:j], budget))  # type: ignore[arg-type]
        i = j
    return groups


def pair_lens(pooling_params) -> list[int] | None:
    """The pair lengths a request's pooling parameters carry, or None for one sequence."""
    extra = getattr(pooling_params, "extra_kwargs", None)
    return extra.get(PAIRS_KEY) if extra else None


def segments(seq_lens: Sequence[int], pairs: dict[int, Sequence[int]]) -> list[int]:
    """The sequences of a step (requests back to back, `seq_lens` tokens each), a packed
    request's pairs (`pairs`: request index -> its pair lengths) each a sequence of its own."""
    out: list[int] = []
    for i, n in enumerate(seq_lens):
        lens = pairs.get(i)
        if lens is None or sum(lens) != n:
            out.append(n)
        else:
            out.extend(lens)
    return out


def segment_positions(sequences: Sequence[int]) -> np.ndarray:
    """Positions of a step's tokens, restarting at 0 at the start of every sequence (`segments`)."""
    seg = np.asarray(sequences, dtype=np.int64)
    starts = np.repeat(np.cumsum(seg) - seg, seg)
    return np.arange(int(seg.sum()), dtype=np.int64) - starts


def add_pair_positions(model_runner, model_kwargs: dict) -> None:
    """vLLM model-runner hook (`compat.add_model_kwargs_hook`): for a step with packed
    requests, each token's position within its pair (`pair_positions`) and how many sequences
    the step holds (`num_pair_seqs`), for the model."""
    from crossenc import compat

    params = compat.step_requests_params(model_runner)
    pairs = {i: lens for i, p in enumerate(params) if (lens := pair_lens(p))}
    if not pairs:
        return
    import torch

    sequences = segments(compat.step_seq_lens(model_runner), pairs)
    positions = torch.from_numpy(segment_positions(sequences))
    model_kwargs["pair_positions"] = positions.to(model_runner.device, non_blocking=True)
    model_kwargs["num_pair_seqs"] = len(sequences)
