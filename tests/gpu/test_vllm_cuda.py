"""DeBERTa (v3 and v1) in a real vLLM engine on a GPU: fp16 and bf16, vLLM's defaults, `enforce_eager`,
CUDA graphs the user asks for and the encoder compiled, mixed lengths up to 512 tokens (and up to
2,048 for v3), the Triton kernel in use, and `vllm serve` answering /rerank. Skipped without CUDA or without vLLM.

The reference is transformers in float32 on the same weights; the bound is the dtype's tolerance
as in tests/models/test_dtypes_vllm.py (fp16 5e-3, bf16 4e-2), or 1.5x transformers' own error
in that dtype where that is larger, with decisions equal beyond twice the bound.
"""

from __future__ import annotations

import gc
import random

import pytest
import torch

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
vllm = pytest.importorskip("vllm")

from crossenc import compat  # noqa: E402
from tests.utils import WORDS, compiled_variants, save_deberta  # noqa: E402

TOL = {"float16": 5e-3, "bfloat16": 4e-2}
# v3-base's attention shape (head size 64, 256 log buckets over 512 positions), fewer layers.
V3_SHAPE = dict(hidden_size=256, num_attention_heads=4, intermediate_size=512, num_hidden_layers=3,
                pooler_hidden_size=256, position_buckets=256, max_relative_positions=512)
# DeBERTa v1 (deberta-base's attention: linear relative positions over 512), the same width.
SHAPES = {"v3": ("v3", V3_SHAPE),
          "v1": ("v1-base", {**{k: v for k, v in V3_SHAPE.items() if k != "position_buckets"},
                             "max_relative_positions": -1})}


def _texts(n: int, seed: int = 0) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    query = " ".join(rng.choices(WORDS, k=6))
    # 2 to ~480 words: pairs from a few tokens up to the 512-token limit.
    docs = [" ".join(rng.choices(WORDS, k=rng.choice([2, 8, 30, 120, 250, 480]))) for _ in range(n)]
    return query, docs


def _calibrate(path, query: str, docs: list[str], max_length: int) -> None:
    """Rescale the classifier of the checkpoint at `path` so that transformers' float32 logits on
    the pairs spread over about [-4, 4] (std 1.5), and save it in float16: scores away from
    sigmoid's flat ends, where fp16/bf16 errors would be invisible."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        # Undo tests.utils.spread's x25 on the pooler: a saturated pooler amplifies rounding
        # (transformers' own bf16 scores then move by 0.17), which would say nothing about us.
        model.pooler.dense.weight.div_(25.0)
        batch = tok([query] * len(docs), docs, truncation="only_second", max_length=max_length, padding=True,
                    return_tensors="pt")
        logits = model(**batch).logits[:, 0]
        scale = 1.5 / logits.std()
        model.classifier.weight.mul_(scale)
        model.classifier.bias.copy_((model.classifier.bias - logits.mean()) * scale)
    model.half().save_pretrained(path)


def _reference(checkpoint, query: str, docs: list[str], max_length: int):
    """Transformers' scores in float32, how far its own fp16 / bf16 runs are from them, and the
    pairs' lengths in tokens."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)

    def scores(dtype):
        # Loaded in float32, then cast: transformers' DeBERTa v1 keeps q_bias/v_bias in float32
        # when loaded in half precision, and its attention then fails on mixed dtypes.
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, dtype=torch.float32).to(dtype).cuda().eval()
        with torch.no_grad():
            out = torch.tensor([model(**tok(query, d, truncation="only_second", max_length=max_length,
                                            return_tensors="pt").to("cuda")).logits[0, 0].float().sigmoid().item()
                                for d in docs])
        del model
        torch.cuda.empty_cache()
        return out

    reference = scores(torch.float32)
    hf_error = {name: (scores(getattr(torch, name)) - reference).abs().max().item() for name in TOL}
    lengths = [len(tok(query, d, truncation="only_second", max_length=max_length)["input_ids"]) for d in docs]
    return reference, lengths, hf_error


@pytest.fixture(scope="module", params=list(SHAPES))
def checkpoint(tmp_path_factory, request):
    """A float16 v3- (or v1-) shaped reranker, calibrated on the test pairs (`_calibrate`)."""
    variant, shape = SHAPES[request.param]
    path = save_deberta(tmp_path_factory.mktemp("cuda") / request.param, "seq_cls", variant, num_labels=1, **shape)
    _calibrate(path, *_texts(48), max_length=512)
    return path


@pytest.fixture(scope="module")
def expected(checkpoint):
    query, docs = _texts(48)
    return (query, docs, *_reference(checkpoint, query, docs, 512))


def _bound(dtype, hf_error):
    """The dtype's tolerance, or 1.5x transformers' own error in that dtype if that is larger
    (a random-weight model can be badly conditioned in bf16: rounding alone moves its scores)."""
    return max(TOL[dtype], 1.5 * hf_error[dtype])


@pytest.fixture
def kernel_calls(monkeypatch):
    """How often the Triton kernel runs (the engine runs in this process)."""
    from crossenc.kernels import triton_disentangled_attention as module

    calls = []
    original = module.triton_disentangled_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "triton_disentangled_attention", counted)
    try:  # and how often it hands a batch to the warpgroup-MMA kernel (Hopper)
        from crossenc.kernels import gluon_disentangled_attention as gluon
    except ImportError:
        return calls
    original_gluon = gluon.wgmma_attention

    def counted_gluon(*args, **kwargs):
        calls.append("wgmma")
        return original_gluon(*args, **kwargs)

    monkeypatch.setattr(gluon, "wgmma_attention", counted_gluon)
    return calls


def _compiled_variants() -> dict[str, int]:
    """How many variants of each of crossenc's kernels Triton has compiled in this process."""
    import importlib

    counts = {}
    for module, name in (("triton_disentangled_attention", "_disentangled_attention_fwd"),
                         ("triton_add_layernorm", "_add_layer_norm_fwd"),
                         ("gluon_disentangled_attention", "_wgmma_attention_fwd"),
                         ("gluon_dense_gelu", "_dense_gelu_ws")):
        try:
            kernel = getattr(importlib.import_module(f"crossenc.kernels.{module}"), name)
        except ImportError:  # a Triton without the Gluon these need
            continue
        counts[name] = compiled_variants(kernel)
    return counts


def _wgmma_expected(dtype: str) -> bool:
    from crossenc.kernels.disentangled_attention import uses_wgmma_kernel

    return uses_wgmma_kernel(64, getattr(torch, dtype), torch.device("cuda"))


# vLLM's defaults (crossenc's encoders then run without CUDA graphs), enforce_eager, and CUDA
# graphs the user asks for (vLLM pads each batch of up to 512 tokens to a captured size).
SETTINGS = {"default": ({}, "NONE"), "eager": ({"enforce_eager": True}, "NONE"),
            "graphs": ({"compilation_config": {"cudagraph_mode": "PIECEWISE"}}, "PIECEWISE")}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_score_on_gpu_equals_transformers(checkpoint, expected, kernel_calls, dtype, setting):
    query, docs, want, lengths, hf_error = expected
    assert max(lengths) >= 450 and min(lengths) < 20
    assert 0.01 < want.min() and want.max() < 0.99 and want.std() > 0.1  # scores not saturated
    kwargs, graphs = SETTINGS[setting]
    llm = vllm.LLM(str(checkpoint), runner="pooling", dtype=dtype, max_model_len=512, seed=0,
                   gpu_memory_utilization=0.3, **kwargs)
    assert llm.llm_engine.model_config.head_dtype == torch.float32
    assert llm.llm_engine.vllm_config.compilation_config.cudagraph_mode.name == graphs
    kernel_calls.clear()
    warmed_up = _compiled_variants()
    got = torch.tensor([o.outputs.score for o in llm.score(query, docs)])
    # vLLM's warmup compiled every kernel variant the requests need: none of them waited for Triton.
    assert _compiled_variants() == warmed_up
    [handlers] = llm.apply_model(_vllm_weight_handlers)
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    assert kernel_calls, "the Triton kernel did not run"
    # On Hopper the warpgroup-MMA kernel runs them.
    assert ("wgmma" in kernel_calls) == _wgmma_expected(dtype)
    # vLLM's weight classes on the GPU, with torch functions dispatched as for a plain
    # nn.Parameter (compat.plain_parameter_dispatch).
    assert handlers and all(h is torch._C._disabled_torch_function_impl for h in handlers)
    diff = (got - want).abs().max().item()
    bound = _bound(dtype, hf_error)
    print(f"\n{dtype} {setting}: max |Δscore| {diff:.3g} over {len(want)} pairs "
          f"(transformers' own {dtype}: {hf_error[dtype]:.3g}; bound {bound:.3g})")
    assert diff <= bound, f"max |Δ| {diff:.3g} > {bound:.3g}"
    for i in range(len(want)):
        for j in range(len(want)):
            if want[i] - want[j] > 2 * bound:
                assert got[i] > got[j]


_COMPILED_RUN = """
import json, sys
import vllm

if __name__ == "__main__":
    path, dtype, query, docs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    llm = vllm.LLM(path, runner="pooling", dtype=dtype, max_model_len=512, seed=0, gpu_memory_utilization=0.3)
    # All the pairs, then batches of other sizes (other CUDA-graph sizes, or none).
    got = [o.outputs.score for o in llm.score(query, docs)]
    parts = [[o.outputs.score for o in llm.score(query, docs[i:i + n])] for i, n in ((0, 3), (3, 17), (20, 1))]
    compiled = llm.apply_model(lambda m: getattr(m.deberta.encoder, "compiled", None))[0]
    config = llm.llm_engine.vllm_config
    print("RESULT " + json.dumps({
        "got": got, "parts": parts, "compiled": compiled, "cudagraph_mode": str(config.compilation_config.cudagraph_mode),
        "v2": bool(getattr(config, "use_v2_model_runner", True)),
        "packs": llm.pooling_io_processors["cross-encoder"].packs_pairs}))
"""


def _run_engine(checkpoint, dtype, query, docs, **env) -> dict:
    """`_COMPILED_RUN` in a fresh interpreter with `env` added (an in-process engine)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **env}
    out = subprocess.run([sys.executable, "-c", _COMPILED_RUN, str(checkpoint), dtype, query, json.dumps(docs)],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    [line] = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_compiled_score_on_gpu_equals_transformers(checkpoint, expected, dtype):
    """CROSSENC_TORCH_COMPILE=1 with vLLM's defaults otherwise: the encoder compiled (CUDA graphs
    around the attention op) scores as transformers, whatever the batch."""
    query, docs, want, _, hf_error = expected
    result = _run_engine(checkpoint, dtype, query, docs, CROSSENC_TORCH_COMPILE="1")
    assert result["compiled"] is True
    got = torch.tensor(result["got"])
    diff = (got - want).abs().max().item()
    bound = _bound(dtype, hf_error)
    print(f"\ncompiled {dtype} ({result['cudagraph_mode']}): max |Δscore| {diff:.3g} (bound {bound:.3g})")
    assert diff <= bound, f"max |Δ| {diff:.3g} > {bound:.3g}"
    parts = torch.tensor([s for part in result["parts"] for s in part])
    assert (parts - got[:len(parts)]).abs().max().item() <= bound


@pytest.mark.skipif(compat.parse_version(compat.installed_vllm_version()) < (0, 32, 0),
                    reason="vLLM 0.26's V2 model runner does not start a model without a KV cache (its "
                           "warmup_kernels divides by the KV blocks per request, 0 for an encoder: "
                           "ZeroDivisionError, seen on an H200); 0.32 on skip that step for encoders")
@pytest.mark.parametrize("packed", [False, True], ids=["request-per-pair", "packed"])
def test_score_on_vllms_v2_model_runner_equals_transformers(checkpoint, expected, packed):
    """vLLM's V2 model runner (vLLM 0.34's only one; chosen here with VLLM_USE_V2_MODEL_RUNNER=1),
    which asks the model for its state (`pair_packing.model_state_cls`): scores as transformers,
    one engine request per pair (crossenc's default on V2) and with packed requests
    (CROSSENC_PACK_PAIRS_V2=1, each pair's positions from crossenc's model state), in float16."""
    query, docs, want, _, hf_error = expected
    result = _run_engine(checkpoint, "float16", query, docs, VLLM_USE_V2_MODEL_RUNNER="1",
                         CROSSENC_PACK_PAIRS_V2="1" if packed else "0")
    assert result["v2"] is True and result["packs"] is packed
    got = torch.tensor(result["got"])
    diff = (got - want).abs().max().item()
    bound = _bound("float16", hf_error)
    print(f"\nV2 model runner, {'packed' if packed else 'one request per pair'}: max |Δscore| {diff:.3g} "
          f"(bound {bound:.3g})")
    assert diff <= bound, f"max |Δ| {diff:.3g} > {bound:.3g}"
    parts = torch.tensor([s for part in result["parts"] for s in part])
    assert (parts - got[:len(parts)]).abs().max().item() <= bound


def _vllm_weight_handlers(model):
    from vllm.model_executor.parameter import BasevLLMParameter

    return [type(p).__torch_function__ for p in model.parameters() if isinstance(p, BasevLLMParameter)]


def test_server_answers_rerank_on_gpu(checkpoint, expected):
    requests = pytest.importorskip("requests")
    from crossenc.demo.server import ServerSettings, VllmServer

    query, docs, want, _, hf_error = expected
    settings = ServerSettings(str(checkpoint), max_model_len=512,
                              extra_args=("--gpu-memory-utilization", "0.3"))  # dtype: auto (fp16)
    with VllmServer(settings) as server:
        resp = requests.post(server.url + "/rerank", json={"query": query, "documents": docs[:16]}, timeout=120)
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
    got = {r["index"]: r["relevance_score"] for r in results}
    assert sorted(got) == list(range(16))
    diff = max(abs(got[i] - want[i].item()) for i in got)
    print(f"\n/rerank (dtype auto: float16): max |Δscore| {diff:.3g} over 16 documents")
    assert diff <= _bound("float16", hf_error)


# v3's attention has no absolute positions, so a v3 checkpoint may take 2,048 tokens. Weights
# drawn with std 0.07 instead of 0.02: with 0.02 the pairs' fp32 logits spread by 0.008 only, the
# calibration scales them 186x, and rounding alone then moved transformers' own bf16 scores by 0.65
# (0.5 on a CPU); with 0.07 they spread by 4.6 and transformers' bf16 / fp16 scores on a CPU are
# within 0.020 / 0.0055 of its fp32 ones.
LONG_SHAPE = {**V3_SHAPE, "max_position_embeddings": 2048, "initializer_range": 0.07}


def _long_texts(n: int, seed: int = 1) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    query = " ".join(rng.choices(WORDS, k=6))
    docs = [" ".join(rng.choices(WORDS, k=k)) for k in [2, 30, 300, 600, 1100, 1500, 1900, 2030] * (n // 8)]
    rng.shuffle(docs)
    return query, docs


@pytest.fixture(scope="module")
def long_expected(tmp_path_factory):
    """A v3-shaped reranker taking 2,048 tokens, its pairs from a few tokens to 2,048 (past 512 the
    kernel's 16-bit default is 64x64 tiles), and transformers' scores (`_reference`)."""
    from tests.utils import save_tokenizer

    query, docs = _long_texts(16)
    path = save_deberta(tmp_path_factory.mktemp("cuda") / "v3-long", "seq_cls", "v3", num_labels=1, **LONG_SHAPE)
    save_tokenizer(path, model_max_length=2048)
    _calibrate(path, query, docs, max_length=2048)
    return path, query, docs, *_reference(path, query, docs, 2048)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_long_sequences_on_gpu_equal_transformers(long_expected, kernel_calls, dtype):
    """Pairs of up to 2,048 tokens (vLLM's defaults otherwise): scores as transformers."""
    from crossenc.kernels.disentangled_attention import query_tile_rows

    path, query, docs, want, lengths, hf_error = long_expected
    assert max(lengths) > 2000 and any(512 < n < 1536 for n in lengths) and min(lengths) < 20
    assert query_tile_rows(64, getattr(torch, dtype), max(lengths)) == 64
    llm = vllm.LLM(str(path), runner="pooling", dtype=dtype, max_model_len=2048, seed=0, gpu_memory_utilization=0.3)
    kernel_calls.clear()
    got = torch.tensor([o.outputs.score for o in llm.score(query, docs)])
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    assert kernel_calls, "the Triton kernel did not run"
    # On Hopper the warpgroup-MMA kernel takes these too, with its far ranges past 575 tokens.
    assert ("wgmma" in kernel_calls) == _wgmma_expected(dtype)
    diff = (got - want).abs().max().item()
    bound = _bound(dtype, hf_error)
    print(f"\n{dtype}, {min(lengths)} to {max(lengths)} tokens: max |Δscore| {diff:.3g} over {len(want)} pairs "
          f"(transformers' own {dtype}: {hf_error[dtype]:.3g}; bound {bound:.3g})")
    assert diff <= bound, f"max |Δ| {diff:.3g} > {bound:.3g}"
