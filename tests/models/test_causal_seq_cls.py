"""CausalLM families as named `*ForSequenceClassification` classes, end to end in vLLM's CPU build.

Tiny random Qwen3 and Llama checkpoints saved by transformers as `*ForSequenceClassification`
are served through crossenc's named classes (runner=pooling, convert=none, cross-encoder score,
read from the class), and their scores equal transformers' (last non-pad token, fp32). The
same Qwen3 checkpoint served by vLLM without crossenc (its implicit conversion) gives the same
scores. The engines run in fresh processes, one with crossenc's plugin and one without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

pytest.importorskip("vllm")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

from crossenc.config.resolve import resolve  # noqa: E402
from crossenc.model_executor.models.registry import ADAPTERS_MODULE  # noqa: E402
from tests.utils import DOCUMENTS, QUERY, save_deberta, save_tokenizer  # noqa: E402

ATOL = 1e-4
PAIRS_DOCS = DOCUMENTS
TEXTS = [QUERY, *PAIRS_DOCS, "the cat sat on the mat"]
# vLLM's CPU attention needs a supported head size (32).
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                initializer_range=0.2)  # wide enough that pairs score visibly apart


def _save(path, config_cls, model_cls, num_labels: int, seed: int):
    vocab = save_tokenizer(path, token_types=False)  # a decoder LLM's tokenizer sends none
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = config_cls(vocab_size=vocab, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
                        **_DECODER)
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal-seq-cls")
    return {
        "qwen3": _save(root / "qwen3", Qwen3Config, Qwen3ForSequenceClassification, 1, seed=0),
        "llama": _save(root / "llama", LlamaConfig, LlamaForSequenceClassification, 3, seed=1),
        # crossenc's own encoder classifier, for the registry table's static information.
        "deberta": str(save_deberta(root / "deberta", "seq_cls", "v3", num_labels=1)),
    }


_ENGINE = """
import gc, json, sys
import vllm
args = json.loads(sys.argv[1])
for model in args["models"]:
    llm = vllm.LLM(model, dtype="float32", max_model_len=512, seed=0, enforce_eager=True)
    mc = llm.model_config
    out = {
        "runner": mc.runner_type, "convert": mc.convert_type, "score_type": mc.score_type,
        "tasks": sorted(llm.supported_tasks),
        "class": llm.apply_model(lambda m: f"{type(m).__module__}:{type(m).__qualname__}")[0],
        "classify": [o.outputs.probs for o in llm.classify(args["texts"])],
    }
    try:
        out["score"] = [o.outputs.score for o in llm.score(args["query"], args["documents"])]
    except ValueError as e:
        out["score_error"] = str(e)
    print("RESULT " + json.dumps(out), flush=True)
    del llm
    gc.collect()
"""


def _serve(model_dirs: list[str], plugin: bool) -> list[dict]:
    """Score and classify in a fresh vLLM process, with crossenc's plugin or without it."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           # A list naming only other plugins keeps crossenc out.
           "VLLM_PLUGINS": "crossenc" if plugin else "none"}
    args = {"models": model_dirs, "texts": TEXTS, "query": QUERY, "documents": PAIRS_DOCS}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_ENGINE), json.dumps(args)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return [json.loads(ln.removeprefix("RESULT ")) for ln in lines]


@pytest.fixture(scope="module")
def served(checkpoints):
    families = ["qwen3", "llama", "deberta"]
    with_plugin = _serve([checkpoints[f] for f in families], plugin=True)
    (without_plugin,) = _serve([checkpoints["qwen3"]], plugin=False)
    return {**{(f, True): out for f, out in zip(families, with_plugin)}, ("qwen3", False): without_plugin}


def _hf_logits(model_dir: str, encodings: list[list[int]]) -> torch.Tensor:
    """transformers' classifier over a right-padded batch: it reads the last non-pad token."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = model.config.pad_token_id
    width = max(map(len, encodings))
    ids = torch.tensor([e + [pad] * (width - len(e)) for e in encodings])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids != pad).long()).logits


@pytest.mark.parametrize("family, class_ref", [
    ("qwen3", f"{ADAPTERS_MODULE}:Qwen3ForSequenceClassification"),
    ("llama", f"{ADAPTERS_MODULE}:LlamaForSequenceClassification"),
    ("deberta", "crossenc.model_executor.models.deberta_v2:DebertaV2ForSequenceClassification"),
])
def test_served_through_the_named_class(served, checkpoints, family, class_ref):
    out = served[(family, True)]
    assert out["class"] == class_ref
    assert (out["runner"], out["convert"], out["score_type"]) == ("pooling", "none", "cross-encoder")
    # resolve, from the config alone, says what the engine did (supported tasks included).
    from transformers import AutoConfig

    res = resolve(AutoConfig.from_pretrained(checkpoints[family]))
    assert (res.runner, res.convert, res.score_type) == (out["runner"], out["convert"], out["score_type"])
    assert sorted(res.pooling_tasks) == out["tasks"]
    assert res.class_ref == out["class"]


def test_without_crossenc_vllm_converts_implicitly(served):
    out = served[("qwen3", False)]
    assert out["class"].startswith("vllm.")
    assert (out["runner"], out["convert"]) == ("pooling", "classify")


def test_scores_equal_vllms_implicit_conversion(served):
    ours, theirs = served[("qwen3", True)], served[("qwen3", False)]
    torch.testing.assert_close(torch.tensor(ours["score"]), torch.tensor(theirs["score"]),
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.tensor(ours["classify"]), torch.tensor(theirs["classify"]),
                               atol=ATOL, rtol=0)


def test_qwen3_score_and_classify_equal_transformers(served, checkpoints):
    out = served[("qwen3", True)]
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["qwen3"])
    # vLLM encodes a cross-encoder pair with the tokenizer's pair template ([CLS] q [SEP] d [SEP]).
    pairs = [tokenizer(QUERY, d)["input_ids"] for d in PAIRS_DOCS]
    scores = _hf_logits(checkpoints["qwen3"], pairs)[:, 0].sigmoid()
    assert scores.std() > 1e-3  # the pairs really score differently
    torch.testing.assert_close(torch.tensor(out["score"]), scores, atol=ATOL, rtol=0)
    texts = [tokenizer(t)["input_ids"] for t in TEXTS]
    probs = _hf_logits(checkpoints["qwen3"], texts).sigmoid()
    torch.testing.assert_close(torch.tensor(out["classify"]), probs, atol=ATOL, rtol=0)


def test_llama_classify_equals_transformers_and_score_is_refused(served, checkpoints):
    out = served[("llama", True)]
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["llama"])
    probs = _hf_logits(checkpoints["llama"], [tokenizer(t)["input_ids"] for t in TEXTS]).softmax(-1)
    torch.testing.assert_close(torch.tensor(out["classify"]), probs, atol=ATOL, rtol=0)
    # Three labels: a classifier, not a cross-encoder (resolve says the same).
    assert "num_labels == 1" in out["score_error"]
