"""Engine defaults for the encoders crossenc serves, where the user has not chosen.

vLLM sizes an engine step (`max_num_batched_tokens`) for decoding LLMs: 8,192 tokens for
`vllm serve` and 16,384 for `LLM` on an H100/H200, 2,048 and 8,192 on smaller GPUs. A rerank
call of 256 pairs of ~160 tokens is ~41,000 tokens, so an encoder's batch ran in 3–6 steps, each
paying the engine's per-step host work. On a GPU crossenc's encoders default to 65,536 tokens
(one step for such a call; measured on an H200, docs/benchmarks.md); a value the user passes is
kept, and the CPU build keeps vLLM's step defaults.

vLLM's CPU build binds the model's OpenMP threads to the cores of one NUMA node less one core per
worker, which it leaves to its own processes (scheduler, API server); on a machine of 2 cores the
forward gets 1. An encoder's engine steps are one forward each, with nothing for those processes
to do meanwhile, so crossenc's encoders on the CPU get every core (`VLLM_CPU_NUM_OF_RESERVED_CPU=0`,
measured 1.75x `LLM.score` on 2 cores, docs/benchmarks.md) unless the user set the reserve or a
thread binding of their own, or runs more than one worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from crossenc.model_executor.models.registry import CROSSENC_ARCHS

# Tokens per engine step for crossenc's encoders on a GPU.
ENCODER_MAX_NUM_BATCHED_TOKENS = 65536
# The CPU reserve crossenc set in this process, if any (`apply_encoder_defaults`).
_own_reserve: str | None = None


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


def cpu_reserved_cores(architecture: str | None, runner_type: str, device_type: str, world_size: int,
                       environ: Mapping[str, str]) -> str | None:
    """The `VLLM_CPU_NUM_OF_RESERVED_CPU` crossenc sets for an engine, or None to keep vLLM's:
    "0" for crossenc's encoders on the CPU build with one worker, where the user set neither the
    reserve nor a thread binding of their own (`VLLM_CPU_OMP_THREADS_BIND` other than "auto")."""
    from crossenc import compat

    if architecture not in CROSSENC_ARCHS or runner_type != "pooling" or device_type != "cpu":
        return None
    if world_size != 1 or compat.CPU_RESERVED_CORES_ENV in environ:
        return None
    if environ.get(compat.CPU_THREADS_BIND_ENV, "auto") != "auto":
        return None
    return "0"


def apply_encoder_defaults(engine_args, model_config, batched_tokens_unset: bool = True) -> None:
    """Engine-args hook (`compat.add_batch_defaults_hook`): runs after vLLM filled in its
    defaults, before the engine (and its processes) start."""
    from crossenc import compat

    architecture = getattr(model_config, "architecture", None)
    device = compat.device_type()
    if batched_tokens_unset:
        chosen = encoder_max_num_batched_tokens(
            architecture,
            model_config.runner_type,
            device,
            engine_args.max_num_batched_tokens,
            engine_args.max_num_seqs,
            model_config.max_model_len,
        )
        if chosen != engine_args.max_num_batched_tokens:
            compat.logger.info(
                "crossenc: max_num_batched_tokens %d for %s (vLLM's default: %d); pass "
                "--max-num-batched-tokens to choose another", chosen, architecture,
                engine_args.max_num_batched_tokens)
            engine_args.max_num_batched_tokens = chosen
    if device == "cpu" and architecture in CROSSENC_ARCHS:
        dtype = str(model_config.dtype).removeprefix("torch.")
        compat.logger.info(
            "crossenc: %s runs in %s on the CPU (dtype %r; vLLM's \"auto\" serves a float32 checkpoint in "
            "float16 here; --dtype float32 keeps float32)", architecture, dtype, engine_args.dtype)
    global _own_reserve
    # A reserve crossenc set for an earlier engine of this process is not the user's.
    if _own_reserve is not None and os.environ.get(compat.CPU_RESERVED_CORES_ENV) == _own_reserve:
        del os.environ[compat.CPU_RESERVED_CORES_ENV]
    _own_reserve = None
    world_size = engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size
    reserved = cpu_reserved_cores(architecture, model_config.runner_type, device, world_size, os.environ)
    if reserved is not None:
        # Read where vLLM starts the worker, in a process started after this one's config.
        os.environ[compat.CPU_RESERVED_CORES_ENV] = _own_reserve = reserved
        compat.logger.info(
            "crossenc: the model's threads get every core (%s=%s; vLLM's default leaves one core per "
            "worker to its own processes); set %s to choose", compat.CPU_RESERVED_CORES_ENV, reserved,
            compat.CPU_RESERVED_CORES_ENV)
