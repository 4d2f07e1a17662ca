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

For a pooling model vLLM's dtype "auto" serves a float32 checkpoint in float16, on the CPU build
too. A CPU without half-precision arithmetic (x86 without AVX512-FP16 or AMX-FP16, e.g. AMD
Zen 4, Intel before Sapphire Rapids) converts every float16 operand: measured on 2 cores of an AMD
EPYC with AVX512-BF16, v3-xsmall `LLM.score` ran 3.7 pairs/s in float16, 12.8 in float32 and 17.5
in bfloat16 (docs/benchmarks.md). So at dtype "auto" crossenc's encoders on such a CPU run in
float32: exact, at least as precise as vLLM's choice, and the fastest of the two. bfloat16 is
faster still where the CPU has it but loses precision (scores moved by up to 1.5e-2 there); it is
the user's to choose (`--dtype bfloat16`), as is any dtype they pass.

crossenc's cross-encoders score several pairs per engine request, up to 16,384 tokens within the
engine's step (`pair_packing`); the engine's own process takes them, `max_model_len` stays the
model's everywhere a user sees it.

On a GPU vLLM captures CUDA graphs of the model for batches of up to 512 tokens (51 sizes) and
pads every batch of that size up to the next one. crossenc's encoders are not compiled (unless
`CROSSENC_TORCH_COMPILE=1`), so those "graphs" hold no piece of the model: the capture runs the
forward 51 times at start-up and the padding computes tokens nobody asked for. So on a GPU their
engines run without CUDA graphs (`cudagraph_mode` NONE) unless the user chose a mode, compiles the
encoder, or passed `enforce_eager` (which is NONE already).

vLLM has two model runners from 0.26 through 0.33; 0.32 and 0.33 run every model on the newer
one (V2) on a GPU by default, 0.26 runs pooling models on V1. crossenc's encoders are served and
measured on V1 (each packed pair's positions and the token types come from it), so they run on
V1 wherever vLLM has it and the user has not chosen (`VLLM_USE_V2_MODEL_RUNNER`). From 0.34 on
vLLM has V2 only: the front end then sends one engine request per pair
(`pair_packing.engine_splits_pairs`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from crossenc.model_executor.layers import pair_packing
from crossenc.model_executor.models.registry import CROSSENC_ARCH_NAMES, crossenc_archs

# Tokens per engine step for crossenc's encoders on a GPU.
ENCODER_MAX_NUM_BATCHED_TOKENS = 65536
# Environment variables crossenc set in this process for an engine, and their values
# (`apply_encoder_defaults`): not the user's, so not kept for the next engine.
_own_env: dict[str, str] = {}


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
    if architecture not in CROSSENC_ARCH_NAMES or runner_type != "pooling" or device_type != "cuda":
        return vllm_default
    return max(vllm_default, min(ENCODER_MAX_NUM_BATCHED_TOKENS, max_num_seqs * max_model_len))


def encoder_cudagraph_mode(architecture: str | None, runner_type: str, device_type: str, user_mode: object,
                           enforce_eager: bool, torch_compile: bool) -> str | None:
    """The `cudagraph_mode` crossenc sets for an engine, or None to keep vLLM's: "NONE" for
    crossenc's uncompiled encoders on a GPU where the user chose no mode (`user_mode` None)."""
    if architecture not in CROSSENC_ARCH_NAMES or runner_type != "pooling" or device_type != "cuda":
        return None
    if user_mode is not None or enforce_eager or torch_compile:
        return None
    return "NONE"


def cpu_reserved_cores(architecture: str | None, runner_type: str, device_type: str, world_size: int,
                       environ: Mapping[str, str]) -> str | None:
    """The `VLLM_CPU_NUM_OF_RESERVED_CPU` crossenc sets for an engine, or None to keep vLLM's:
    "0" for crossenc's encoders on the CPU build with one worker, where the user set neither the
    reserve nor a thread binding of their own (`VLLM_CPU_OMP_THREADS_BIND` other than "auto")."""
    from crossenc import compat

    if architecture not in CROSSENC_ARCH_NAMES or runner_type != "pooling" or device_type != "cpu":
        return None
    if world_size != 1 or compat.CPU_RESERVED_CORES_ENV in environ:
        return None
    if environ.get(compat.CPU_THREADS_BIND_ENV, "auto") != "auto":
        return None
    return "0"


def model_runner_env(architecture: str | None, runner_type: str, has_v1_runner: bool,
                     environ: Mapping[str, str]) -> str | None:
    """The `VLLM_USE_V2_MODEL_RUNNER` crossenc sets for an engine, or None to keep vLLM's choice:
    "0" (the V1 model runner) for crossenc's encoders where vLLM has it (0.26 through 0.33) and
    the user did not choose a runner."""
    from crossenc import compat

    if architecture not in CROSSENC_ARCH_NAMES or runner_type != "pooling" or not has_v1_runner:
        return None
    return None if compat.V2_MODEL_RUNNER_ENV in environ else "0"


# CPU flags (Linux /proc/cpuinfo: x86 "flags", Arm "Features") of native half-precision arithmetic.
_NATIVE_CPU_FLAGS = {
    torch.float16: frozenset({"avx512_fp16", "amx_fp16", "asimdhp"}),
    torch.bfloat16: frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags, or None where they cannot be read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def encoder_dtype(architecture: str | None, runner_type: str, device_type: str, dtype_arg: object,
                  resolved: torch.dtype, flags: frozenset[str] | None) -> torch.dtype:
    """The dtype crossenc's encoder runs in: `resolved` (vLLM's) unless crossenc serves
    `architecture` as an encoder on the CPU, the user left dtype "auto", and `resolved` is a half
    precision the CPU's `flags` say it cannot compute natively; then float32. Unknown flags keep
    vLLM's choice."""
    if architecture not in CROSSENC_ARCH_NAMES or runner_type != "pooling" or device_type != "cpu":
        return resolved
    if dtype_arg != "auto" or flags is None or resolved not in _NATIVE_CPU_FLAGS:
        return resolved
    return resolved if flags & _NATIVE_CPU_FLAGS[resolved] else torch.float32


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
    compilation = engine_args.compilation_config
    graphs = encoder_cudagraph_mode(architecture, model_config.runner_type, device,
                                    getattr(compilation, "cudagraph_mode", None), engine_args.enforce_eager,
                                    compat.torch_compile_enabled())
    if graphs is not None:
        # Copied into the engine's configuration after this hook (EngineArgs.create_engine_config).
        compilation.cudagraph_mode = compat.cudagraph_mode(graphs)
        compat.logger.info(
            "crossenc: %s runs without CUDA graphs (cudagraph_mode %s): its encoder is not compiled, so "
            "they would hold none of it; pass --compilation-config to choose", architecture, graphs)
    spec = crossenc_archs().get(architecture)
    if spec is not None and spec.head == "seq_cls" and model_config.runner_type == "pooling":
        tokens = pair_packing.request_tokens(model_config.max_model_len, engine_args.max_num_batched_tokens)
        pair_packing.offer_long_requests(model_config, tokens)  # logged by the engine that takes them
    if device == "cpu" and architecture in CROSSENC_ARCH_NAMES:
        vllm_dtype = model_config.dtype
        chosen_dtype = encoder_dtype(architecture, model_config.runner_type, device, engine_args.dtype,
                                     vllm_dtype, cpu_flags())
        if chosen_dtype != vllm_dtype:
            # Read by the worker when it builds the model (nothing before reads it for an encoder).
            model_config.dtype = chosen_dtype
            compat.logger.info(
                "crossenc: %s runs in float32 on the CPU (dtype 'auto'; vLLM chose %s, which this CPU "
                "has no arithmetic for); pass --dtype to choose", architecture,
                str(vllm_dtype).removeprefix("torch."))
        else:
            compat.logger.info(
                "crossenc: %s runs in %s on the CPU (dtype %r); pass --dtype to choose", architecture,
                str(chosen_dtype).removeprefix("torch."), engine_args.dtype)
    # What crossenc set for an earlier engine of this process is not the user's.
    for name, value in _own_env.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    _own_env.clear()
    # Both are read by vLLM where it builds the engine's configuration and starts its worker,
    # in this process or in one started after it.
    runner = model_runner_env(architecture, model_config.runner_type, compat.has_v1_model_runner(), os.environ)
    if runner is not None:
        os.environ[compat.V2_MODEL_RUNNER_ENV] = _own_env[compat.V2_MODEL_RUNNER_ENV] = runner
        compat.logger.info(
            "crossenc: %s runs on vLLM's V1 model runner (%s=%s), the one crossenc is tested and measured "
            "on; set %s to choose", architecture, compat.V2_MODEL_RUNNER_ENV, runner, compat.V2_MODEL_RUNNER_ENV)
    world_size = engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size
    reserved = cpu_reserved_cores(architecture, model_config.runner_type, device, world_size, os.environ)
    if reserved is not None:
        os.environ[compat.CPU_RESERVED_CORES_ENV] = _own_env[compat.CPU_RESERVED_CORES_ENV] = reserved
        compat.logger.info(
            "crossenc: the model's threads get every core (%s=%s; vLLM's default leaves one core per "
            "worker to its own processes); set %s to choose", compat.CPU_RESERVED_CORES_ENV, reserved,
            compat.CPU_RESERVED_CORES_ENV)
