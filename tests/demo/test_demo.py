"""The demo cross-encoder: a seeded build, one set of scores in transformers and vLLM, held-out quality.

The default build is made once (a few minutes on 2 cores) and cached like the main job's; set
CROSSENC_CACHE to build it somewhere else.
"""

from __future__ import annotations

import json

import pytest
import torch

from crossenc.demo.build import BuildSettings, build
from crossenc.demo.cache import QUALITY_FILE, ensure_demo_model
from crossenc.demo.corpus import split, stdlib_pairs, top_module
from crossenc.demo.main import DEFAULT_DOCUMENTS, DEFAULT_QUERY, RELEVANT
from crossenc.demo.quality import evaluate, held_out_pairs

ATOL = 1e-4
# Some pairs besides the demo's own: a long document, a one-word one, and unrelated text.
EXTRA_DOCUMENTS = (
    "Return the number of items in a container. " * 12,
    "Sockets.",
    "Paris is the capital of France.",
)


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_build_is_deterministic_given_its_seed(tmp_path):
    """A short build (1 layer, 3 steps) of the same recipe, twice with one seed and once with another."""
    for name, seed in (("a", 3), ("b", 3), ("other-seed", 4)):
        build(BuildSettings.quick(seed=seed), tmp_path / name, log=lambda *_: None)
    a, b, other = (_weights(tmp_path / n) for n in ("a", "b", "other-seed"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert not all(torch.equal(a[k], other[k]) for k in a)  # the seed is what is fixed, not the result
    keys = [BuildSettings.quick(seed).cache_key() for seed in (3, 3, 4)]
    assert keys[0] == keys[1] != keys[2]


def test_held_out_pairs_share_no_module_or_text_with_training():
    train, held_out = split(stdlib_pairs(), BuildSettings().held_out_percent)
    assert len(held_out) >= 200 and len(train) >= 2 * len(held_out)
    assert not {top_module(p.source) for p in train} & {top_module(p.source) for p in held_out}
    texts = {p.query for p in train} | {p.passage for p in train}
    assert not texts & ({p.query for p in held_out} | {p.passage for p in held_out})


@pytest.fixture(scope="module")
def demo_model():
    return ensure_demo_model()


def _transformers_scores(path, query: str, documents) -> torch.Tensor:
    """sentence-transformers' CrossEncoder convention for one logit: sigmoid."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = tokenizer([query] * len(documents), list(documents), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits[:, 0].sigmoid()


def test_quality_on_held_out_pairs(demo_model):
    """Measured again here, it equals the numbers stored beside the model (and quoted in docs/demo.md)."""
    stored = json.loads((demo_model / QUALITY_FILE).read_text())
    quality = evaluate(demo_model, held_out_pairs())
    assert quality.as_dict() == pytest.approx(stored, abs=1e-6)
    assert quality.queries >= 200
    assert quality.accuracy >= 3 * quality.chance
    assert quality.spearman >= 0.3


@pytest.mark.engine
def test_vllm_scores_equal_transformers_and_rank_the_demo_sensibly(demo_model, vllm_runner):
    pytest.importorskip("vllm")

    documents = [*DEFAULT_DOCUMENTS, *EXTRA_DOCUMENTS]
    expected = _transformers_scores(demo_model, DEFAULT_QUERY, documents)
    with vllm_runner(demo_model, runner="pooling") as llm:
        got = torch.tensor([o.outputs.score for o in llm.score(DEFAULT_QUERY, documents)])
    assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()
    top = got[: len(DEFAULT_DOCUMENTS)].argsort(descending=True)[: len(RELEVANT)]
    assert set(top.tolist()) == set(RELEVANT)


@pytest.mark.engine
def test_main_job_ranks_over_http(demo_model, capsys):
    """`crossenc demo --model DIR`: a real `vllm serve`, /rerank, the ranking printed, the server stopped."""
    pytest.importorskip("vllm")
    from crossenc.demo.main import main

    query = "Which module compresses files?"
    documents = ["Return a random number.", "The gzip module compresses files.", "Open a network socket."]
    assert main(["--model", str(demo_model), "--query", query, "--documents", *documents]) == 0
    out = capsys.readouterr().out
    expected = _transformers_scores(demo_model, query, documents)
    ranked = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(ranked) == len(documents)
    for line, index in zip(ranked, expected.argsort(descending=True).tolist()):
        rank, score, text = line.split(maxsplit=2)
        assert text == documents[index]
        assert abs(float(score) - expected[index].item()) <= 1e-4 + 5e-5  # printed with 4 decimals
    assert ranked[0].split(maxsplit=2)[2] == documents[1]
    assert "vllm serve stopped" in out
