"""`crossenc` command line: each subcommand lives in its own module and is imported on use."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int`.
SUBCOMMANDS = {
    "explain": ("crossenc.config.explain", "say how vLLM will serve a checkpoint, without loading weights"),
    "convert": ("crossenc.convert", "turn a CausalLM reranker into a *ForSequenceClassification checkpoint"),
    "demo": ("crossenc.demo", "serve the demo cross-encoder with vLLM and rank documents for a query"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        width = max(map(len, SUBCOMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
        print("usage: crossenc {" + ",".join(SUBCOMMANDS) + "} ...\n\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, _ = SUBCOMMANDS[argv[0]]
    return importlib.import_module(module).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
