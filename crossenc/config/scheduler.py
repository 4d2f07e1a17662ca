"""Scheduler defaults for the encoders crossenc serves, where the user has not chosen.

vLLM sizes an engine step (`max_num_batched_tokens`) for decoding LLMs: 8,192 tokens for
`vllm serve` and 16,384 for `LLM` on an H100/H200, 2,048 and 8,192 on smaller GPUs. A rerank
call of 256 pairs of ~160 tokens is ~41,000 tokens, so an encoder's batch ran in 3–6 steps, each
paying the engine's per-step host work. On a GPU crossenc's encoders default to 65,536 tokens
(one step for such a call; measured on an H200, docs/benchmarks.md); a value the user passes is
kept, and the CPU build keeps vLLM's defaults.
"""

from __future__ import annotations

from crossenc.model_executor.models.registry import CROSSENC_ARCHS

# Tokens per engine step for crossenc's encoders on a GPU.
ENCODER_MAX_NUM_BATCHED_TOKENS = 65536


def encoder_max_num_batched_tokens(
    architecture: str | None,
    runner_type: str,
    device_type: str,
    vllm_default: int,
    max_num_seqs: int,
    max_model_len: int,
) -> int:
    """`max_num_batched_tokens` for an engine whose user did not set it: `vllm_default` (what
    vLLM chose) unless crossenc serves `architecture` as an encoder on a GPU; then
    ENCODER_MAX_NUM_BATCHED_TOKENS, bounded as vLLM bounds its own defaults by
    `max_num_seqs * max_model_len`, and never below vLLM's choice."""
    if architecture not in CROSSENC_ARCHS or runner_type != "pooling" or device_type != "cuda":
        return vllm_default
    return max(vllm_default, min(ENCODER_MAX_NUM_BATCHED_TOKENS, max_num_seqs * max_model_len))


def apply_encoder_defaults(engine_args, model_config) -> None:
    """Engine-args hook (`compat.add_batch_defaults_hook`): runs after vLLM filled in defaults,
    only when the user left `max_num_batched_tokens` unset."""
    from crossenc import compat

    chosen = encoder_max_num_batched_tokens(
        getattr(model_config, "architecture", None),
        model_config.runner_type,
        compat.device_type(),
        engine_args.max_num_batched_tokens,
        engine_args.max_num_seqs,
        model_config.max_model_len,
    )
    if chosen != engine_args.max_num_batched_tokens:
        compat.logger.info(
            "crossenc: max_num_batched_tokens %d for %s (vLLM's default: %d); pass "
            "--max-num-batched-tokens to choose another", chosen, model_config.architecture,
            engine_args.max_num_batched_tokens)
        engine_args.max_num_batched_tokens = chosen
