"""`crossenc explain MODEL_DIR [--hf-overrides JSON]`: how vLLM with crossenc will serve a
checkpoint, which endpoints work and why, from its config and tokenizer (no weights load)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from crossenc.config.resolve import CONVERT_OPTIONS, RUNNER_OPTIONS, Resolution, ResolutionError, resolve
from crossenc.model_executor.models.registry import all_specs, pooling_class_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossenc explain", description=__doc__)
    parser.add_argument("model_dir", help="a local checkpoint directory (config.json, tokenizer)")
    parser.add_argument("--hf-overrides", default=None, help="JSON object, as for `vllm serve`")
    parser.add_argument("--runner", default="auto", choices=RUNNER_OPTIONS)
    parser.add_argument("--convert", default="auto", choices=CONVERT_OPTIONS)
    return parser


def _tokenizer_or_none(model_dir: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None


def _has_sentence_transformers_pooling(model_dir: str) -> bool:
    from crossenc import compat

    if not compat.vllm_installed():
        return False
    return compat.get_pooling_config(model_dir, revision=None) is not None


def describe(res: Resolution) -> str:
    from crossenc.config.resolve import endpoints

    how = (
        "a class registered by name, so vLLM reads runner, convert and score type from it"
        if res.explicit
        else "vLLM's own class" + (" (converted when the weights load)" if res.convert != "none" else "")
    )
    lines = [
        f"architecture   {res.architecture}",
        f"class          {res.served_class}",
        f"               {how}",
        f"runner         {res.runner}",
        f"convert        {res.convert}",
    ]
    if res.conversion:
        lines.append(f"conversion     {res.conversion} (lm_head rows become the score head)")
    if res.preset:
        lines.append(f"preset         {res.preset}: /score and /rerank put each pair in its prompt template")
    if res.runner == "pooling":
        lines += [
            f"pooling tasks  {', '.join(res.pooling_tasks)} (main: {res.pooling_task})",
            f"num_labels     {res.num_labels}",
        ]
    lines += [f"score          {res.score_route}: {res.score_reason}", "", "endpoints"]
    for endpoint, works, why in endpoints(res):
        lines.append(f"  {'yes' if works else 'no ':<4} {endpoint:<28} {why}")
    classifier = pooling_class_name(res.architecture)
    if res.runner == "generate" and classifier in all_specs():
        lines += [
            "",
            f"To serve it as a reranker: --hf-overrides '{{\"architectures\": [\"{classifier}\"], "
            '"classifier_from_token": [...], "method": ...}\' (or a preset), or write a classifier '
            "checkpoint with `crossenc convert`.",
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        hf_overrides = json.loads(args.hf_overrides) if args.hf_overrides else None
    except json.JSONDecodeError as e:
        print(f"error: --hf-overrides is not valid JSON: {e}", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        print(f"error: {args.model_dir} has no config.json", file=sys.stderr)
        return 2
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(args.model_dir)
    except (OSError, ValueError) as e:
        print(f"error: cannot read {args.model_dir}/config.json: {e}", file=sys.stderr)
        return 2
    try:
        res = resolve(
            hf_config,
            args.runner,
            args.convert,
            hf_overrides,
            tokenizer=_tokenizer_or_none(args.model_dir),
            sentence_transformers=_has_sentence_transformers_pooling(args.model_dir),
        )
    except ResolutionError as e:
        print(f"vLLM with crossenc cannot serve {args.model_dir} this way: {e}", file=sys.stderr)
        return 1
    print(describe(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
