"""The dtypes users run: every DeBERTa task and a converted LLM reranker in vLLM's CPU build over
fp32, bf16 and fp16, each with vLLM's default float32 `head_dtype` and with `head_dtype="model"`,
and `dtype="auto"` on a float16 checkpoint (what `vllm serve` does with one: float16, or for
crossenc's encoders on a CPU without float16 arithmetic float32, crossenc.config.scheduler).

The reference is transformers in float32 on the same weights (a float16 checkpoint's weights
upcast). Tolerances, max |Δ| of what vLLM serves (probabilities, scores, normalised
embeddings), per dtype:

- fp32: 1e-4 (observed at most 2.4e-7);
- float16 and auto on a float16 checkpoint: 5e-3 (observed at most 1.5e-3, token classification);
- bfloat16: 4e-2 (observed at most 1.5e-2; bf16 keeps 8 bits of mantissa).

and the decisions equal: the ranking of documents, the top label and each token's label,
wherever transformers' own margin is wider than twice the tolerance.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytestmark = pytest.mark.engine  # starts a vLLM engine

vllm = pytest.importorskip("vllm")

from crossenc import presets  # noqa: E402
from crossenc.config import scheduler  # noqa: E402
from tests.convert.tiny import DOCUMENTS as LLM_DOCUMENTS  # noqa: E402
from tests.convert.tiny import QUERIES as LLM_QUERIES  # noqa: E402
from tests.convert.tiny import reference_scores  # noqa: E402
from tests.conftest import HfRunner, VllmRunner, release  # noqa: E402
from tests.utils import DOCUMENTS, QUERY, hf_logits, save_deberta  # noqa: E402

TEXTS = [QUERY, *DOCUMENTS, "what is the weather in paris", "send an email to the server"]
PAIRS_DOCS = [*DOCUMENTS, "the zip module can read an archive of files", "how to open a socket"]

# mode -> (vLLM dtype, checkpoint dtype)
MODES = {"fp32": ("float32", "float32"), "bf16": ("bfloat16", "float32"), "fp16": ("float16", "float16"),
         "auto-fp16": ("auto", "float16")}
TOL = {"fp32": 1e-4, "fp16": 5e-3, "auto-fp16": 5e-3, "bf16": 4e-2}
HEADS = {"head-fp32": None, "head-model": "model"}
# auto's dtype is one of the others': its head choice is theirs.
MATRIX = [(m, h) for m in MODES for h in HEADS if m != "auto-fp16" or h == "head-fp32"]


def _ids(params):
    return f"{params[0]}-{params[1]}"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(checkpoint dtype, kind) -> directory, made once."""
    root = tmp_path_factory.mktemp("dtypes")
    cache = {}

    def get(ckpt_dtype: str, kind: str):
        key = (ckpt_dtype, kind)
        if key not in cache:
            path = root / f"{kind}-{ckpt_dtype}"
            if kind == "score":
                save_deberta(path, "seq_cls", "v3", num_labels=1, dtype=ckpt_dtype)
            elif kind == "classify":
                save_deberta(path, "seq_cls", "token-types", num_labels=3, dtype=ckpt_dtype,
                             id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                             label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
            elif kind == "token":
                save_deberta(path, "token_cls", "v2-conv", num_labels=5, dtype=ckpt_dtype)
            elif kind == "embed":
                save_deberta(path, "model", "v3", dtype=ckpt_dtype)
            cache[key] = path
        return cache[key]

    return get


def _engine(path, mode, head, **kwargs):
    dtype, _ = MODES[mode]
    overrides = {} if HEADS[head] is None else {"head_dtype": HEADS[head]}
    llm = VllmRunner(path, runner="pooling", dtype=dtype, hf_overrides=overrides or None, **kwargs).llm
    config = llm.llm_engine.model_config
    want = torch.float32 if HEADS[head] is None else config.dtype
    assert config.head_dtype == want
    if mode == "auto-fp16":  # auto follows the checkpoint where the CPU computes in float16
        assert config.dtype == scheduler.encoder_dtype(
            config.architecture, "pooling", "cpu", "auto", torch.float16, scheduler.cpu_flags())
    return llm


def _release(llm):
    release(llm)


def _assert_close(got, expected, tol, what):
    diff = (got.float() - expected.float()).abs().max().item()
    assert diff <= tol, f"{what}: max |Δ| {diff:.3g} > {tol}"


def _assert_same_order(got, expected, tol):
    """Every pair of documents transformers separates by more than 2*tol is ranked alike."""
    for i in range(len(expected)):
        for j in range(len(expected)):
            if expected[i] - expected[j] > 2 * tol:
                assert got[i] > got[j], (i, j, got, expected)


def _assert_same_argmax(got, expected, tol):
    """Rows [N, C]: the top class is the same wherever transformers' top-2 margin > 2*tol."""
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert clear.any()
    assert torch.equal(got.argmax(-1)[clear], expected.argmax(-1)[clear])


@pytest.mark.parametrize("mode,head", MATRIX, ids=[_ids(p) for p in MATRIX])
def test_score(checkpoints, mode, head):
    path = checkpoints(MODES[mode][1], "score")
    hf = HfRunner(path, "AutoModelForSequenceClassification")
    tok, model = hf.tokenizer, hf.model
    with torch.no_grad():
        batch = tok([QUERY] * len(PAIRS_DOCS), PAIRS_DOCS, padding=True, return_tensors="pt")
        expected = model(**batch).logits[:, 0].sigmoid()
    llm = _engine(path, mode, head)
    got = torch.tensor([o.outputs.score for o in llm.score(QUERY, PAIRS_DOCS)])
    _release(llm)
    _assert_close(got, expected, TOL[mode], "score")
    _assert_same_order(got, expected, TOL[mode])


@pytest.mark.parametrize("mode,head", MATRIX, ids=[_ids(p) for p in MATRIX])
def test_classify(checkpoints, mode, head):
    from transformers import AutoModelForSequenceClassification

    path = checkpoints(MODES[mode][1], "classify")
    expected = torch.stack(hf_logits(path, AutoModelForSequenceClassification, TEXTS)).softmax(-1)
    llm = _engine(path, mode, head, enforce_eager=True)
    got = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    _release(llm)
    _assert_close(got, expected, TOL[mode], "classify")
    _assert_same_argmax(got, expected, TOL[mode])


@pytest.mark.parametrize("mode,head", MATRIX, ids=[_ids(p) for p in MATRIX])
def test_token_classify(checkpoints, mode, head):
    from transformers import AutoModelForTokenClassification

    path = checkpoints(MODES[mode][1], "token")
    expected = [x.softmax(-1) for x in hf_logits(path, AutoModelForTokenClassification, TEXTS)]
    llm = _engine(path, mode, head)
    got = [o.outputs.data.float() for o in llm.encode(TEXTS, pooling_task="token_classify")]
    _release(llm)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        _assert_close(g, e, TOL[mode], "token_classify")
    _assert_same_argmax(torch.cat(got), torch.cat(expected), TOL[mode])


@pytest.mark.parametrize("mode,head", MATRIX, ids=[_ids(p) for p in MATRIX])
def test_embed(checkpoints, mode, head):
    """The base model as an embedder (vLLM's default CLS pooling, normalised) and cosine score."""
    path = checkpoints(MODES[mode][1], "embed")
    hf = HfRunner(path, "AutoModel")
    tok, model = hf.tokenizer, hf.model
    with torch.no_grad():
        cls = torch.stack([model(**tok(t, return_tensors="pt")).last_hidden_state[0, 0] for t in TEXTS])
    expected = torch.nn.functional.normalize(cls, dim=-1)
    llm = _engine(path, mode, head)
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    cosine = torch.tensor([o.outputs.score for o in llm.score(TEXTS[0], TEXTS[1:])])
    _release(llm)
    _assert_close(got, expected, TOL[mode], "embedding")
    _assert_close(cosine, expected[1:] @ expected[0], TOL[mode], "cosine score")


@pytest.fixture(scope="module")
def reranker_dirs(causal_lm_dir, tmp_path_factory):
    """A tiny Qwen3 reranker saved in float32 and the same weights in float16."""
    from transformers import AutoModelForCausalLM

    src = causal_lm_dir("qwen3")
    half = tmp_path_factory.mktemp("qwen3-fp16")
    shutil.copytree(src, half, dirs_exist_ok=True)
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).half().save_pretrained(half)
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    return {"float32": src, "float16": str(half)}


@pytest.mark.parametrize("mode,head", MATRIX, ids=[_ids(p) for p in MATRIX])
def test_converted_llm_reranker(reranker_dirs, mode, head):
    dtype, ckpt = MODES[mode]
    path = reranker_dirs[ckpt]
    preset = presets.get("qwen3-reranker")
    pairs = [(q, d) for q in LLM_QUERIES for d in LLM_DOCUMENTS]
    expected = torch.tensor(reference_scores(path, preset, pairs))
    overrides = preset.overrides() | ({} if HEADS[head] is None else {"head_dtype": HEADS[head]})
    llm = VllmRunner(path, dtype=dtype, hf_overrides=overrides).llm
    config = llm.llm_engine.model_config
    assert config.head_dtype == (torch.float32 if HEADS[head] is None else config.dtype)
    got = torch.tensor([o.outputs.score for o in llm.score([q for q, _ in pairs], [d for _, d in pairs])])
    _release(llm)
    _assert_close(got, expected, TOL[mode], "converted reranker score")
    _assert_same_order(got, expected, TOL[mode])


def test_unknown_head_dtype_is_vllms_error(checkpoints):
    """A head_dtype vLLM does not know is refused with vLLM's own message, before weights load."""
    path = checkpoints("float32", "score")
    with pytest.raises(Exception, match=r"Unknown dtype: 'float33'"):
        VllmRunner(path, runner="pooling", hf_overrides={"head_dtype": "float33"})
