"""The main job: serve a cross-encoder with `vllm serve` and rank documents for a query over HTTP.

By default it serves the demo DeBERTa cross-encoder (built offline on first use, then cached);
`--model` serves any other checkpoint instead.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

# Written for the demo, not taken from the training corpus: the first two (RELEVANT) answer the query.
DEFAULT_QUERY = "How do I compress a file?"
DEFAULT_DOCUMENTS = (
    "The gzip module provides a simple interface to compress and decompress files, "
    "like the GNU programs gzip and gunzip.",
    "Compress data with the zlib library and return the compressed bytes.",
    "Return a random floating point number between 0.0 and 1.0.",
    "The calendar module prints calendars like the Unix cal program.",
    "Create a new socket using the given address family and socket type.",
    "Parse command-line options and arguments for a program.",
    "A thread runs an activity in a separate thread of control.",
    "Send an email message to the list of recipients over SMTP.",
)
RELEVANT = (0, 1)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="crossenc demo",
        description="Start `vllm serve` on 127.0.0.1 with a cross-encoder, rank documents for a query "
                    "with /rerank, print them, and stop the server. Arguments after `--` go to vllm serve.",
    )
    parser.add_argument("--model", help="a cross-encoder checkpoint (default: the demo DeBERTa model, "
                                         "built offline on first use and cached)")
    parser.add_argument("--query", default=DEFAULT_QUERY)
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--documents", nargs="+", metavar="TEXT", help="the documents to rank")
    docs.add_argument("--documents-file", type=Path, metavar="FILE", help="documents to rank, one per line")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--compile", action="store_true",
                        help="let vLLM compile the model (slower start) instead of --enforce-eager")
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    args.vllm_args = extra
    return args


def _documents(args: argparse.Namespace) -> list[str]:
    if args.documents_file is not None:
        if not args.documents_file.is_file():
            raise SystemExit(f"--documents-file: no such file: {args.documents_file}")
        docs = [line.strip() for line in args.documents_file.read_text().splitlines() if line.strip()]
    else:
        docs = list(args.documents or DEFAULT_DOCUMENTS)
    if not docs:
        raise SystemExit("no documents to rank: --documents or --documents-file gave none")
    return docs


def format_ranking(query: str, results: list[dict], documents: list[str], width: int = 100) -> str:
    lines = [f"query: {query}", "", "rank  score   document"]
    for rank, result in enumerate(results, 1):
        text = textwrap.shorten(documents[result["index"]], width=width - 16, placeholder="...")
        lines.append(f"{rank:>4}  {result['relevance_score']:.4f}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    documents = _documents(args)
    if not args.query.strip():
        raise SystemExit("--query is empty")
    if args.model is not None and args.model.startswith((".", "/", "~")) and not Path(args.model).expanduser().is_dir():
        raise SystemExit(f"--model: no such checkpoint directory: {args.model}")
    try:
        return _run(args, documents)
    except KeyboardInterrupt:  # VllmServer has stopped the server on the way out
        print("\ninterrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, documents: list[str]) -> int:
    from crossenc.demo.server import ServerSettings, VllmServer

    if args.model is None:
        from crossenc.demo.cache import ensure_demo_model, stored_quality

        model = ensure_demo_model(log=lambda line: print(line, flush=True))
        quality = stored_quality(model)
        print(f"demo model: {model}")
        if quality is not None:
            print(f"  held-out quality: picks the relevant passage among {quality.candidates} "
                  f"{quality.accuracy:.1%} of the time (chance {quality.chance:.1%}, teacher "
                  f"{quality.teacher_accuracy:.1%}); Spearman vs teacher {quality.spearman:.3f}")
    else:
        model = str(Path(args.model).expanduser())

    vllm_args = ("--runner", "pooling", "--dtype", "float32",
                 *(() if args.compile else ("--enforce-eager",)), *args.vllm_args)
    settings = ServerSettings(model=str(model), max_model_len=args.max_model_len, extra_args=vllm_args)
    print("starting vllm serve on 127.0.0.1 (a minute or so on CPU) ...", flush=True)
    with VllmServer(settings) as server:
        print(f"vllm serve is up at {server.url}; POST /rerank with {len(documents)} documents\n", flush=True)
        results = server.rerank(args.query, documents)
    print(format_ranking(args.query, results, documents))
    print("\nvllm serve stopped.")
    return 0
