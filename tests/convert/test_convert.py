"""`crossenc convert`: the written checkpoint is a standard transformers classifier whose score is
the CausalLM's token score on the templated prompt."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from crossenc import convert, presets
from crossenc.cli import main as cli
from tests.convert.tiny import DOCUMENTS, FAMILIES, QUERIES, REFERENCE_PROMPTS, reference_scores

PAIRS = [(q, d) for q in QUERIES for d in DOCUMENTS]
ATOL = 1e-5


def classifier_scores(model_dir, prompts):
    """sigmoid of the single logit, from one right-padded batch (pooling the last real token)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = model.config.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (len(prompts), 1)
    return logits[:, 0].sigmoid().tolist()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_checkpoint_scores_equal_the_causal_lm(family, causal_lm_dir, tmp_path, capfd):
    src = causal_lm_dir(family)
    preset = presets.get(FAMILIES[family][1])
    out = tmp_path / "converted"
    assert cli(["convert", src, "-o", str(out), "--preset", preset.name, "--verify"]) == 0
    stdout, stderr = capfd.readouterr()
    assert "verified: max |diff|" in stdout
    assert f"writing {out}" in stderr and "100%" in stderr  # the progress bar

    config = json.loads((out / "config.json").read_text())
    seq_cls = {"qwen3": "Qwen3", "qwen2": "Qwen2", "gemma": "Gemma"}[family] + "ForSequenceClassification"
    assert config["architectures"] == [seq_cls]
    assert config["id2label"] == {"0": preset.tokens[-1]}
    assert config[presets.PRESET_KEY] == preset.name
    assert not {"classifier_from_token", "method", "classifier_from_token_ids"} & set(config)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert f.get_tensor("score.weight").shape == (1, 64)

    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = [REFERENCE_PROMPTS[preset.name](tokenizer, q, d) for q, d in PAIRS]
    expected = reference_scores(src, preset, PAIRS)
    got = classifier_scores(out, prompts)
    assert max(abs(g - e) for g, e in zip(got, expected)) <= ATOL
    assert max(expected) - min(expected) > 1e-3  # the pairs are told apart


def test_convert_without_preset_and_sharded(causal_lm_dir, tmp_path, capfd):
    """--tokens/--method on a checkpoint no preset recognises; shards with an index."""
    src = causal_lm_dir("qwen3")
    out = tmp_path / "plain"
    argv = ["convert", src, "-o", str(out), "--tokens", "no,yes", "--method", "from_2_way_softmax",
            "--max-shard-size", "150KB", "--verify"]
    assert cli(argv) == 0
    assert "verified" in capfd.readouterr().out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    assert index["weight_map"]["score.weight"] in shards
    config = json.loads((out / "config.json").read_text())
    assert presets.PRESET_KEY not in config and config["id2label"] == {"0": "yes"}

    # The score is softmax([no, yes])[yes] of the CausalLM on any prompt.
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(src)
    prompts = [tokenizer(q + " " + d)["input_ids"] for q, d in PAIRS]
    causal = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("no", "yes")]
    with torch.no_grad():
        expected = [causal(torch.tensor([p])).logits[0, -1, ids].softmax(-1)[1].item() for p in prompts]
    got = classifier_scores(out, prompts)
    assert max(abs(g - e) for g, e in zip(got, expected)) <= ATOL


def test_verify_fails_loudly_on_a_mismatch(causal_lm_dir, tmp_path, capfd):
    src = causal_lm_dir("qwen3")
    plan = convert.plan(src, "no,yes", "from_2_way_softmax", presets.NO_PRESET)
    out = tmp_path / "converted"
    convert.write(plan, out, max_shard_size=10**9)
    capfd.readouterr()
    # Checked against the wrong tokens (as if the head had been built from [yes, no]).
    swapped = dataclasses.replace(
        plan.conversion, tokens=("yes", "no"), token_ids=plan.conversion.token_ids[::-1]
    )
    assert not convert.verify(dataclasses.replace(plan, conversion=swapped), out, atol=1e-4)
    assert "VERIFY FAILED" in capfd.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tokens", "no,YES", "--method", "from_2_way_softmax"], "classifier token 'YES' must tokenize"),
        (["--tokens", "no,yes", "--method", "no_post_processing", "--preset", "qwen3-reranker"],
         "this checkpoint is the qwen3-reranker preset"),
        (["--preset", "bge-reranker-v2-gemma"], "preset bge-reranker-v2-gemma is for gemma checkpoints"),
        ([], "give --tokens and --method, or a --preset"),
    ],
    ids=["bad-token", "preset-mismatch", "preset-model-type", "nothing-to-do"],
)
def test_convert_errors(causal_lm_dir, tmp_path, capfd, args, message):
    out = tmp_path / "never"
    assert cli(["convert", causal_lm_dir("qwen3"), "-o", str(out), *args]) == 2
    assert message in capfd.readouterr().err
    assert not Path(out).exists()  # nothing written
