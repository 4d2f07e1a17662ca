"""`crossenc convert`: a CausalLM reranker as a standard `*ForSequenceClassification` checkpoint.

    crossenc convert SRC -o OUT [--tokens no,yes --method from_2_way_softmax] [--preset NAME]
                     [--verify] [--atol 1e-4] [--max-shard-size 5GB]

The checkpoint is streamed tensor by tensor: the backbone is copied as it is, `lm_head` is
replaced by a `score` head built from the classifier tokens' rows (crossenc's conversion
methods), and the config gets architectures, num_labels and id2label, so transformers'
AutoModelForSequenceClassification and vLLM load it with no overrides. A preset's name is kept
in the config so vLLM formats `/score` and `/rerank` prompts with its template.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossenc import presets
from crossenc.config.overrides import OverrideError, check_convertible, plan_conversion
from crossenc.config.conversion import METHOD_KEY, METHODS, TOKEN_IDS_KEY, TOKENS_KEY, SeqClsConversion, served_scores
from crossenc.model_executor.models.conversion import ScoreRowCollector, is_tied

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SCORE = "score.weight"
# Pairs --verify scores; the tokens of the template itself are covered by every pair.
SAMPLE_PAIRS = [
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("Explain gravity", "Gravity is a force that attracts two bodies towards each other."),
    ("Who wrote 'To Kill a Mockingbird'?", "The novel 'Moby-Dick' was written by Herman Melville."),
]


@dataclass(frozen=True)
class Plan:
    """Everything decided before a byte is written."""

    src: Path
    config: Any
    tokenizer: Any
    conversion: SeqClsConversion
    preset: presets.Preset | None
    architecture: str


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crossenc convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="CausalLM checkpoint directory (config, tokenizer, safetensors)")
    parser.add_argument("-o", "--output", required=True, help="directory to write the classifier to")
    parser.add_argument("--tokens", help="classifier tokens, comma-separated: false,true (e.g. no,yes)")
    parser.add_argument("--method", choices=sorted(METHODS), help="how token rows become the score")
    parser.add_argument(
        "--preset",
        help=f"{', '.join(presets.PRESETS)} or {presets.NO_PRESET!r} "
        "(default: recognised from the checkpoint's name)",
    )
    parser.add_argument("--verify", action="store_true", help="compare with the CausalLM's scores")
    parser.add_argument("--atol", type=float, default=1e-4, help="--verify tolerance (fp32 scores)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file written")
    return parser.parse_args(argv)


def plan(src: str, tokens: str | None, method: str | None, preset_name: str | None) -> Plan:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    if tokens:
        setattr(config, TOKENS_KEY, tokens.split(","))
    if method:
        setattr(config, METHOD_KEY, method)
    planned = plan_conversion(config, tokenizer=tokenizer, names=(src,), preset_name=preset_name, converting=True)
    if planned.conversion is None:
        raise OverrideError("give --tokens and --method, or a --preset")
    return Plan(Path(src), config, tokenizer, planned.conversion, planned.preset, check_convertible(config))


def classifier_config(p: Plan) -> Any:
    config = copy.deepcopy(p.config)
    for key in (TOKENS_KEY, METHOD_KEY, TOKEN_IDS_KEY):
        if hasattr(config, key):
            delattr(config, key)
    config.architectures = [p.architecture]
    config.id2label = p.conversion.id2label
    config.label2id = {label: i for i, label in p.conversion.id2label.items()}
    config.use_sep_token = False
    config.tie_word_embeddings = False  # the classifier has no lm_head to tie
    if config.pad_token_id is None:  # transformers pools the last non-pad token
        config.pad_token_id = p.tokenizer.pad_token_id or p.tokenizer.eos_token_id
    if p.preset is not None:
        setattr(config, presets.PRESET_KEY, p.preset.name)
    return config


def _source_files(src: Path) -> list[Path]:
    if (src / SAFETENSORS_INDEX).exists():
        weight_map = json.loads((src / SAFETENSORS_INDEX).read_text())["weight_map"]
        return [src / name for name in dict.fromkeys(weight_map.values())]
    if (src / SAFETENSORS).exists():
        return [src / SAFETENSORS]
    raise FileNotFoundError(f"{src} has no {SAFETENSORS} or {SAFETENSORS_INDEX}")


def _parse_size(size: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    for unit, factor in units.items():
        if size.upper().endswith(unit):
            return int(float(size[: -len(unit)]) * factor)
    return int(size)


def _tensors(files: list[Path]):
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _nbytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def write(p: Plan, out: Path, max_shard_size: int) -> None:
    from safetensors.torch import save_file
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    files = _source_files(p.src)
    collector = ScoreRowCollector(p.conversion.token_ids, tied=is_tied(p.config))
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    written: list[str] = []

    def flush() -> None:
        name = f"model-{len(written) + 1:05d}.safetensors"
        save_file(shards[-1], str(out / name), metadata={"format": "pt"})
        written.append(name)

    with tqdm(total=_nbytes(files), unit="B", unit_scale=True, desc=f"writing {out}") as bar:
        for name, tensor in collector.watch(_tensors(files)):
            size = tensor.numel() * tensor.element_size()
            if shards[-1] and sizes[-1] + size > max_shard_size:
                flush()
                shards[-1], sizes[-1] = {}, 0
            shards[-1][name], sizes[-1] = tensor.contiguous(), sizes[-1] + size
            bar.update(size)
        # The score head in fp32: the difference of two low-precision rows is exact there.
        shards[-1][SCORE] = p.conversion.score_weight(collector.rows()).float().contiguous()
        flush()
        bar.update(bar.total - bar.n)

    names = _final_names(out, written)
    if len(names) > 1:
        weight_map = {}
        for name in names:
            from safetensors import safe_open

            with safe_open(str(out / name), "pt") as f:
                weight_map.update(dict.fromkeys(f.keys(), name))
        index = {"metadata": {"total_size": sum((out / n).stat().st_size for n in names)},
                 "weight_map": weight_map}
        (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    classifier_config(p).save_pretrained(out)
    p.tokenizer.save_pretrained(out)


def _final_names(out: Path, written: list[str]) -> list[str]:
    """model.safetensors for one file, model-0000i-of-0000n.safetensors for several."""
    if len(written) == 1:
        (out / written[0]).rename(out / SAFETENSORS)
        return [SAFETENSORS]
    names = [f"model-{i:05d}-of-{len(written):05d}.safetensors" for i in range(1, len(written) + 1)]
    for old, new in zip(written, names):
        (out / old).rename(out / new)
    return names


def sample_prompts(p: Plan) -> list[list[int]]:
    """Token ids of the pairs --verify scores: the preset's template, else query + document."""
    if p.preset is not None:
        return [p.preset.template.token_ids(p.tokenizer, q, d) for q, d in SAMPLE_PAIRS]
    return [p.tokenizer(q + " " + d)["input_ids"] for q, d in SAMPLE_PAIRS]


def _logits(model: Any, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Per prompt: a CausalLM's logits at the last position, a classifier's logits."""
    with torch.no_grad():
        logits = [model(torch.tensor([ids])).logits[0].float() for ids in prompts]
    return [row[-1] if row.dim() == 2 else row for row in logits]


def verify(p: Plan, out: Path, atol: float) -> bool:
    """The converted classifier's scores equal the CausalLM's token scores on sample prompts."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    prompts = sample_prompts(p)
    ids = list(p.conversion.token_ids)
    causal = AutoModelForCausalLM.from_pretrained(p.src, dtype=torch.float32).eval()
    expected = [p.conversion.method.causal_scores(row[ids]) for row in _logits(causal, prompts)]
    del causal
    gc.collect()  # one model in memory at a time
    classifier = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    got = [served_scores(row) for row in _logits(classifier, prompts)]
    worst = 0.0
    for i, (e, g) in enumerate(zip(expected, got)):
        diff = (e - g).abs().max().item()
        worst = max(worst, diff)
        print(f"  prompt {i}: CausalLM {e.tolist()}  converted {g.tolist()}  |diff| {diff:.2e}")
    if worst > atol:
        print(
            f"crossenc convert: VERIFY FAILED: converted scores differ from the CausalLM's token "
            f"scores by up to {worst:.3e} (> atol {atol:g}); do not use {out}",
            file=sys.stderr,
        )
        return False
    print(f"verified: max |diff| {worst:.2e} <= {atol:g} over {len(prompts)} prompts")
    return True


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        p = plan(args.src, args.tokens, args.method, args.preset)
    except (ValueError, OSError) as e:  # OverrideError is a ValueError
        print(f"crossenc convert: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    preset = f", preset {p.preset.name}" if p.preset else ""
    print(
        f"{p.config.architectures[0] if p.config.architectures else p.config.model_type} -> "
        f"{p.architecture}: {p.conversion.method.name} over {list(p.conversion.tokens)} "
        f"(ids {list(p.conversion.token_ids)}), num_labels={p.conversion.num_labels}{preset}"
    )
    try:
        write(p, out, _parse_size(args.max_shard_size))
    except (ValueError, FileNotFoundError) as e:
        print(f"crossenc convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}; serve it with: vllm serve {out}")
    if args.verify and not verify(p, out, args.atol):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
