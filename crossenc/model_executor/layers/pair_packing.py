"""Several (query, document) pairs in one engine request.

vLLM pays a cost per engine request (input processing, scheduling, the transfer to and from the
engine, output handling: about 0.2 ms of host time on an H200 machine), and cross-encoder
scoring sends one request per pair, while crossenc's encoders already run packed sequences.
So the scoring front end packs consecutive pairs of a call or request into one engine request
and names their lengths in the request's pooling parameters (`PAIRS_KEY`). In the engine, the
model runner gives the model each token's position within its pair (restarting at 0 at each
pair, as separate requests would), and the pooler scores each pair's first token as a request of
its own. Each pair's score is the one it gets sent alone.

A packed request holds up to REQUEST_TOKENS tokens (within `max_num_batched_tokens`), more than
`max_model_len` (512 for DeBERTa): ~100 pairs of 160 tokens instead of ~3 per request. Measured
on an H200 (docs/benchmarks.md): `LLM.score` of 256 pairs 3,135-3,651 pairs/s (2,415-3,051
before), one /rerank client 1,272-1,495 pairs/s (592-754 before).

`max_model_len` keeps every meaning a user sees (each pair's truncation and limit, the served
model's length). Only the engine's own process takes the longer requests (`take_long_requests`:
its scheduler and input buffers; vLLM's token-id buffers, [max_num_seqs, tokens], then reserve
80 MiB of host memory at 1,024 sequences, paged in only as requests fill them), and the front
end lets a packed request through when each pair is within `max_model_len`
(`packed_prompt_fits`). An engine in the front end's own process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`) shares its configuration: requests of `max_model_len` then.

The positions come from crossenc's hook in vLLM's V1 model runner, where crossenc's encoders run
wherever vLLM has it (`config/scheduler.py`). vLLM's V2 runner (the only one from vLLM 0.34 on)
asks the model for a model state, and crossenc's passes the positions (`model_state_cls`); until
that has run in a V2 engine on a GPU, an engine on V2 gets one request per pair unless
`CROSSENC_PACK_PAIRS_V2=1` (`engine_splits_pairs`).

`CROSSENC_PACK_PAIRS=0` sends one engine request per pair again.
`CROSSENC_PACK_MAX_PAIRS` (default 4096) bounds the pairs of one request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# Key of a packed request's pooling parameters (`extra_kwargs`): its pairs' token counts.
PAIRS_KEY = "crossenc_pair_lens"
PACK_ENV = "CROSSENC_PACK_PAIRS"
MAX_PAIRS_ENV = "CROSSENC_PACK_MAX_PAIRS"
V2_PACK_ENV = "CROSSENC_PACK_PAIRS_V2"
# Pairs per engine request at most, unless MAX_PAIRS_ENV says otherwise.
MAX_PAIRS_PER_REQUEST = 4096
# Tokens of a packed engine request at most (and within the engine's step). Measured on an H200
# (v3-base fp16): 16,384 and 65,536 gave the same LLM.score speed (docs/benchmarks.md).
REQUEST_TOKENS = 16384
# vLLM ModelConfig attribute set by the front end (`offer_long_requests`): (tokens of a packed
# request, the id of the process that set it); None once an engine in that process declined.
_OFFER_ATTR = "crossenc_packed_request_tokens"


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


def pack_runs(lengths: Sequence[int | None], kinds: Sequence[object], budget: int,
              pair_limit: int | None = None) -> list[list[int]]:
    """Index groups of items in order: consecutive items of one kind packed by `pack_groups`;
    an item without a length (not packable) or longer than `pair_limit` (vLLM refuses it with
    its own length) alone."""
    if pair_limit is not None:
        lengths = [n if n is None or n <= pair_limit else None for n in lengths]
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


def request_tokens(max_model_len: int, max_num_batched_tokens: int) -> int:
    """Tokens a packed engine request may hold: REQUEST_TOKENS within the engine's step, and
    never fewer than `max_model_len`."""
    return max(max_model_len, min(REQUEST_TOKENS, max_num_batched_tokens))


def offer_long_requests(model_config, tokens: int) -> bool:
    """Front end, while vLLM builds the engine's configuration: packed requests of `tokens`
    tokens, if more than `max_model_len` and the hooks that carry them are in place (the
    engine's, where this process can run an engine itself)."""
    from crossenc import compat

    if tokens <= model_config.max_model_len:
        return False
    if compat.engine_loaded() and not compat.add_engine_config_hook(take_long_requests):
        return False
    setattr(model_config, _OFFER_ATTR, (tokens, os.getpid()))
    return accept_long_requests(model_config)


def accept_long_requests(model_config) -> bool:
    """A front end (an API server's or `LLM`'s) lets the offered packed requests through vLLM's
    prompt length check; where it cannot, its requests stay within `max_model_len`."""
    from crossenc import compat

    if request_budget(model_config) <= model_config.max_model_len:
        return False
    if compat.add_prompt_length_hook(packed_prompt_fits):
        return True
    setattr(model_config, _OFFER_ATTR, None)
    return False


def request_budget(model_config) -> int:
    """Tokens one packed engine request holds: the offered length (`offer_long_requests`)
    unless an engine declined it, else `max_model_len`."""
    offer = getattr(model_config, _OFFER_ATTR, None)
    return offer[0] if offer else model_config.max_model_len


def engine_splits_pairs(vllm_config) -> bool:
    """An engine of `vllm_config` gives each pair of a packed request its own positions and
    pools it on its own: vLLM's V1 model runner, through crossenc's hook (`add_pair_positions`).
    On vLLM's V2 runner (the only one from vLLM 0.34 on, or chosen with VLLM_USE_V2_MODEL_RUNNER=1)
    crossenc's model state passes the positions on a GPU (`model_state_cls`), not yet run in a
    V2 engine: one engine request per pair there unless `CROSSENC_PACK_PAIRS_V2=1`."""
    from crossenc import compat

    if compat.uses_v1_model_runner(vllm_config):
        return True
    return os.environ.get(V2_PACK_ENV) == "1" and compat.device_type() == "cuda"


def take_long_requests(vllm_config) -> None:
    """Engine hook (`compat.add_engine_config_hook`), before the engine builds its workers and
    scheduler: an engine in a process of its own takes the offered request length as its
    `max_model_len`; one in the front end's process shares the front end's configuration and
    declines (its requests stay within `max_model_len`), as does one that takes no packed
    requests (`engine_splits_pairs`)."""
    from crossenc import compat

    model_config = vllm_config.model_config
    offer = getattr(model_config, _OFFER_ATTR, None)
    if not offer:
        return
    if not engine_splits_pairs(vllm_config):
        setattr(model_config, _OFFER_ATTR, None)
        return
    tokens, pid = offer
    if pid == os.getpid():
        setattr(model_config, _OFFER_ATTR, None)
        compat.logger.info("crossenc: the engine runs in this process; packed scoring requests hold up "
                           "to max_model_len (%d) tokens", model_config.max_model_len)
        return
    compat.logger.info("crossenc: packed scoring requests hold up to %d tokens in the engine (pairs "
                       "within max_model_len, %d)", tokens, model_config.max_model_len)
    model_config.max_model_len = tokens


def packed_prompt_fits(model_config, pooling_params, prompt_len: int) -> bool:
    """A packed request may be longer than `max_model_len`: its pairs add up to `prompt_len`,
    each within `max_model_len`, and the whole within `request_budget`."""
    lens = pair_lens(pooling_params)
    if not lens or sum(lens) != prompt_len or prompt_len > request_budget(model_config):
        return False
    return all(0 < n <= model_config.max_model_len for n in lens)


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


def step_inputs(seq_lens: Sequence[int], pairs: dict[int, Sequence[int]], device) -> dict:
    """The model's inputs for a step with packed requests (`seq_lens` tokens each, `pairs`:
    request index -> its pair lengths): each token's position within its pair (`pair_positions`)
    and how many sequences the step holds (`num_pair_seqs`)."""
    import torch

    sequences = segments(seq_lens, pairs)
    positions = torch.from_numpy(segment_positions(sequences))
    return {"pair_positions": positions.to(device, non_blocking=True), "num_pair_seqs": len(sequences)}


def add_pair_positions(model_runner, model_kwargs: dict) -> None:
    """vLLM's V1 model-runner hook (`compat.add_model_kwargs_hook`): `step_inputs` for a step
    with packed requests."""
    from crossenc import compat

    params = compat.step_requests_params(model_runner)
    pairs = {i: lens for i, p in enumerate(params) if (lens := pair_lens(p))}
    if pairs:
        model_kwargs.update(step_inputs(compat.step_seq_lens(model_runner), pairs, model_runner.device))


def model_state_cls():
    """The state vLLM's V2 model runner keeps for crossenc's encoders on a GPU
    (`compat.encoder_model_state_cls`: the token types and `step_inputs`), or None (vLLM's own)."""
    from crossenc import compat

    return compat.encoder_model_state_cls(pair_lens, step_inputs, compat.device_type())
