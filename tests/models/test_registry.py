"""Static registry information, `crossenc.config.resolve` and `crossenc explain`.

`resolve` decides from the config alone what vLLM decides when it builds a ModelConfig; the
agreement test builds vLLM's own ModelConfig (with crossenc's plugin loaded) from tiny local
checkpoint directories and compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, Qwen3Config

from crossenc import compat
from crossenc.config import explain
from crossenc.config.resolve import (
    CONVERT_OPTIONS,
    RUNNER_OPTIONS,
    Resolution,
    ResolutionError,
    endpoints,
    resolve,
)
from crossenc.model_executor.models.registry import (
    ADAPTERS_MODULE,
    all_specs,
    causal_seq_cls_specs,
    pooling_class_name,
    vllm_archs,
)
from tests.utils import deberta_config, deberta_v1_config, save_tokenizer

# Words of tests.utils' tokenizer: each one id, so they can be classifier tokens.
GOOD_TOKENS = ["cat", "dog"]
# Not single ids there ("yes" -> y ##e ##s): validation must refuse them.
BAD_TOKENS = ["no", "yes"]

_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, max_position_embeddings=512, pad_token_id=0)
FAMILIES = {
    "qwen3": (lambda v: Qwen3Config(vocab_size=v, **_DECODER),
              ("Qwen3ForSequenceClassification", "Qwen3ForCausalLM")),
    "llama": (lambda v: LlamaConfig(vocab_size=v, **_DECODER),
              ("LlamaForSequenceClassification", "LlamaForCausalLM")),
    "deberta": (lambda v: deberta_config("v3", vocab_size=v),
                ("DebertaV2ForSequenceClassification", "DebertaV2ForTokenClassification",
                 "DebertaV2Model")),
    "deberta-v1": (lambda v: deberta_v1_config("base", vocab_size=v),
                   ("DebertaForSequenceClassification", "DebertaForTokenClassification", "DebertaModel")),
}


def _config(family: str, arch: str, num_labels: int = 1):
    config = FAMILIES[family][0](300)
    config.architectures = [arch]
    config.num_labels = num_labels
    return config


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory):
    """family -> a checkpoint directory with config.json and tokenizer (no weights: neither
    resolve nor vLLM's ModelConfig reads them)."""
    dirs = {}
    for family, (make, archs) in FAMILIES.items():
        path = tmp_path_factory.mktemp(family)
        config = make(save_tokenizer(path))
        config.architectures = [archs[0]]
        config.save_pretrained(path)
        dirs[family] = str(path)
    return dirs


# --- the table ----------------------------------------------------------------------------


def test_named_classifiers_cover_causal_lms_vllm_resolves_by_suffix():
    specs = causal_seq_cls_specs()
    native = vllm_archs()
    assert {"Qwen3ForSequenceClassification", "LlamaForSequenceClassification",
            "Qwen2ForSequenceClassification", "GemmaForSequenceClassification"} <= set(specs)
    for arch, spec in specs.items():
        causal = arch.removesuffix("ForSequenceClassification") + "ForCausalLM"
        assert native[causal] == spec.base_ref
        assert arch not in native  # vLLM has no class of that name
        # Named after the class vLLM serves the family with (InternLM3 -> Llama's).
        assert spec.class_ref == f"{ADAPTERS_MODULE}:{pooling_class_name(spec.base_ref.rpartition(':')[2])}"
        assert spec.default_pooling == "LAST" and spec.score_type == "cross-encoder"
    # vLLM's own classifiers stay vLLM's.
    for arch in ("GPT2ForSequenceClassification", "JambaForSequenceClassification"):
        assert arch in native and arch not in specs
    assert specs["InternLM3ForSequenceClassification"].class_name == "LlamaForSequenceClassification"


def test_register_with_vllm_registers_names_lazily_and_imports_no_model_module():
    out = _run_python("""
        import json, sys
        from vllm import ModelRegistry
        from crossenc.model_executor.models.registry import register_with_vllm, class_refs
        register_with_vllm()
        refs = {a: f"{e.module_name}:{e.class_name}" for a, e in ModelRegistry.models.items()
                if a in class_refs()}
        print(json.dumps({"refs": refs, "models": model_modules()}))
    """)
    # Each class where its spec (read from the class itself) says it is.
    assert out["refs"] == {a: s.class_ref for a, s in all_specs().items()}
    assert out["models"] == []


def test_named_classifiers_keep_their_family_engine_config_hook(vllm_with_crossenc):
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    inherited = 0
    for arch in causal_seq_cls_specs():
        family = MODELS_CONFIG_MAP.get(arch.removesuffix("ForSequenceClassification") + "ForCausalLM")
        if family is not None and arch != "Qwen3ForSequenceClassification":  # vLLM has its own
            ours, theirs = MODELS_CONFIG_MAP[arch].verify_and_update_config, family.verify_and_update_config
            assert getattr(ours, "__func__", ours) is getattr(theirs, "__func__", theirs)
            inherited += 1
    assert inherited >= 5  # GPT-OSS, Mamba, NemotronH, Qwen3.5, Gemma4, ...


# --- resolve: properties ------------------------------------------------------------------

known_archs = st.sampled_from(sorted({a for _, archs in FAMILIES.values() for a in archs}))
arch_names = st.one_of(
    known_archs,
    st.sampled_from(["BertForSequenceClassification", "GPT2ForSequenceClassification",
                     "FooForSequenceClassification", "Qwen3Model", "GemmaForSequenceClassification"]),
    st.builds(lambda stem, suffix: stem + suffix,
              st.from_regex(r"[A-Z][A-Za-z0-9]{0,8}", fullmatch=True),
              st.sampled_from(["ForCausalLM", "ForSequenceClassification", "Model", "ForTokenClassification", ""])),
    st.text(max_size=12),
)
override_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 4), st.text(max_size=6),
                            st.lists(st.text(max_size=4), max_size=3))
overrides = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["architectures", "num_labels", "classifier_from_token", "method",
                         "is_original_qwen3_reranker", "crossenc_preset", "use_sep_token"]),
        override_values, max_size=3),
    st.just({"classifier_from_token": GOOD_TOKENS, "method": "from_2_way_softmax"}),
    st.just({"classifier_from_token": ["cat"], "method": "no_post_processing"}),
)


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from(sorted(FAMILIES)), arch=arch_names, num_labels=st.integers(1, 4),
       runner=st.sampled_from(RUNNER_OPTIONS + ("bogus",)),
       convert=st.sampled_from(CONVERT_OPTIONS + ("bogus",)), hf_overrides=overrides)
def test_resolve_is_total_and_deterministic(family, arch, num_labels, runner, convert, hf_overrides):
    config = _config(family, arch, num_labels)
    try:
        first = resolve(config, runner, convert, hf_overrides)
    except ResolutionError as e:
        assert str(e)  # a clear error, and the same one again
        with pytest.raises(ResolutionError, match=None) as again:
            resolve(config, runner, convert, hf_overrides)
        assert str(again.value) == str(e)
        return
    assert resolve(config, runner, convert, hf_overrides) == first
    assert config.architectures == [arch]  # the caller's config is left as it was
    _assert_score_route_rules(first)


def _assert_score_route_rules(res: Resolution) -> None:
    works = {endpoint: ok for endpoint, ok, _ in endpoints(res)}
    if res.runner == "generate":
        assert res.pooling_task is None and res.score_route == "none" and not any(works.values())
        return
    assert works["/pooling"]
    if res.pooling_task == "classify":
        assert res.score_route == ("cross-encoder" if res.num_labels == 1 else "none")
        assert works["/classify"] and not works["/v1/embeddings"]
        if res.num_labels != 1:
            assert f"num_labels={res.num_labels}" in res.score_reason
    elif res.pooling_task == "embed":
        assert res.score_route == "embed-cosine" and works["/v1/embeddings"]
    else:
        assert res.pooling_task == "token_classify" and res.score_route == "none"
    assert works["/score, /rerank, /v1/rerank"] == (res.score_route != "none")


@pytest.mark.parametrize(
    "family, arch, num_labels, route",
    [("qwen3", "Qwen3ForSequenceClassification", 1, "cross-encoder"),
     ("llama", "LlamaForSequenceClassification", 3, "none"),
     ("deberta", "DebertaV2ForSequenceClassification", 1, "cross-encoder"),
     ("deberta", "DebertaV2ForSequenceClassification", 2, "none"),
     ("deberta", "DebertaV2Model", 1, "embed-cosine"),
     ("deberta", "DebertaV2ForTokenClassification", 1, "none")],
)
def test_score_route_rules(family, arch, num_labels, route):
    res = resolve(_config(family, arch, num_labels))
    assert (res.runner, res.convert, res.explicit) == ("pooling", "none", True)
    assert res.score_route == route
    assert res.class_ref == all_specs()[arch].class_ref


def test_conversion_makes_a_single_score_and_needs_a_pooling_runner():
    config = _config("qwen3", "Qwen3ForCausalLM", num_labels=2)
    named = {"architectures": ["Qwen3ForSequenceClassification"],
             "classifier_from_token": GOOD_TOKENS, "method": "from_2_way_softmax"}
    res = resolve(config, hf_overrides=named)
    assert (res.num_labels, res.score_route, res.explicit) == (1, "cross-encoder", True)
    assert res.conversion == "from_2_way_softmax over tokens ['cat', 'dog']"
    with pytest.raises(ResolutionError, match="runner=generate"):
        resolve(config, hf_overrides={"classifier_from_token": GOOD_TOKENS, "method": "from_2_way_softmax"})
    with pytest.raises(ResolutionError, match="exactly 2 tokens"):
        resolve(config, hf_overrides={**named, "classifier_from_token": ["cat"]})
    # A preset named in the overrides supplies tokens and method, as crossenc's hook does.
    preset = resolve(config, hf_overrides={"architectures": ["Qwen3ForSequenceClassification"],
                                           "crossenc_preset": "qwen3-reranker"})
    assert (preset.preset, preset.num_labels, preset.score_route) == ("qwen3-reranker", 1, "cross-encoder")
    assert preset.conversion == "from_2_way_softmax over tokens ['no', 'yes']"
    # A recognised checkpoint served as a classifier: its preset applies without being named.
    config._name_or_path = "/models/Qwen3-Reranker-0.6B"
    recognised = resolve(config, hf_overrides={"architectures": ["Qwen3ForSequenceClassification"]})
    assert (recognised.preset, recognised.num_labels) == ("qwen3-reranker", 1)
    with pytest.raises(ResolutionError, match="preset bge-reranker-v2-gemma is for gemma"):
        resolve(config, hf_overrides={"architectures": ["Qwen3ForSequenceClassification"],
                                      "crossenc_preset": "bge-reranker-v2-gemma"})


def test_resolve_imports_no_model_module():
    out = _run_python("""
        import json
        from transformers import DebertaV2Config, Qwen3Config
        from crossenc.config.resolve import resolve
        resolve(Qwen3Config(architectures=["Qwen3ForSequenceClassification"], num_labels=1))
        resolve(Qwen3Config(architectures=["Qwen3ForCausalLM"]), "pooling", "classify")
        resolve(DebertaV2Config(architectures=["DebertaV2ForSequenceClassification"]))
        print(json.dumps({"models": model_modules()}))
    """)
    assert out["models"] == []


# --- agreement with vLLM's ModelConfig ----------------------------------------------------


@pytest.fixture(scope="module")
def vllm_with_crossenc():
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # crossenc's entry point: registration and config hooks
    from vllm import ModelRegistry

    assert "Qwen3ForSequenceClassification" in ModelRegistry.get_supported_archs()


@st.composite
def serving_cases(draw):
    family = draw(st.sampled_from(sorted(FAMILIES)))
    hf_overrides = {"architectures": [draw(st.sampled_from(FAMILIES[family][1]))],
                    "num_labels": draw(st.integers(1, 3))}
    tokens = draw(st.one_of(st.none(), st.sampled_from([
        ("from_2_way_softmax", GOOD_TOKENS), ("no_post_processing", ["cat"]),
        ("from_2_way_softmax", BAD_TOKENS), ("preset", "qwen3-reranker")])))
    if tokens is not None and tokens[0] == "preset":
        hf_overrides["crossenc_preset"] = tokens[1]
    elif tokens is not None:
        hf_overrides.update(method=tokens[0], classifier_from_token=tokens[1])
        if draw(st.booleans()):
            del hf_overrides["num_labels"]
    # "auto" half the time: the combinations users run; the rest tries every option.
    runner = draw(st.one_of(st.just("auto"), st.sampled_from(RUNNER_OPTIONS)))
    convert = draw(st.one_of(st.just("auto"), st.sampled_from(CONVERT_OPTIONS)))
    return family, runner, convert, hf_overrides


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=serving_cases())
def test_resolve_agrees_with_vllm_model_config(vllm_with_crossenc, config_dirs, case):
    from vllm.config import ModelConfig

    family, runner, convert, hf_overrides = case
    model_dir = config_dirs[family]
    try:
        model_config = ModelConfig(model=model_dir, runner=runner, convert=convert,
                                   hf_overrides=dict(hf_overrides))
        vllm_error = None
    except ValueError as e:
        vllm_error = e
    try:
        res = resolve(AutoConfig.from_pretrained(model_dir), runner, convert, hf_overrides,
                      tokenizer=AutoTokenizer.from_pretrained(model_dir))
        ours = None
    except ResolutionError as e:
        ours = e
    assert (vllm_error is None) == (ours is None), (vllm_error, ours)
    event("both refuse" if ours is not None else f"both serve: {res.runner}/{res.convert}/{res.score_route}")
    if ours is not None:
        return
    info = model_config._model_info
    assert res.runner == model_config.runner_type
    assert res.convert == model_config.convert_type
    assert res.score_type == model_config.score_type
    assert res.architecture == model_config.architecture
    assert res.num_labels == model_config.hf_config.num_labels
    if res.explicit:
        # The class vLLM inspected is the one crossenc named, and says the same of itself.
        assert info.architecture == res.class_ref.rpartition(":")[2]
        assert info.is_pooling_model and not info.is_text_generation_model
        assert info.score_type == all_specs()[res.architecture].score_type
    if res.runner == "pooling":
        assert model_config.get_pooling_task(res.pooling_tasks) == res.pooling_task


# --- crossenc explain ---------------------------------------------------------------------


def test_explain_prints_endpoints(config_dirs, capsys):
    overrides = json.dumps({"architectures": ["Qwen3ForSequenceClassification"], "num_labels": 1})
    assert explain.main([config_dirs["qwen3"], "--hf-overrides", overrides]) == 0
    out = capsys.readouterr().out
    assert f"{ADAPTERS_MODULE}:Qwen3ForSequenceClassification" in out
    assert "runner         pooling" in out and "convert        none" in out
    assert "yes  /score, /rerank, /v1/rerank" in out
    assert "no   /v1/embeddings" in out

    convert = json.dumps({"architectures": ["Qwen3ForSequenceClassification"],
                          "classifier_from_token": BAD_TOKENS, "method": "from_2_way_softmax"})
    assert explain.main([config_dirs["qwen3"], "--hf-overrides", convert]) == 1
    assert "classifier token 'no'" in capsys.readouterr().err

    causal = json.dumps({"architectures": ["Qwen3ForCausalLM"]})
    assert explain.main([config_dirs["qwen3"], "--hf-overrides", causal]) == 0
    out = capsys.readouterr().out
    assert "runner         generate" in out and "no   /pooling" in out
    assert 'To serve it as a reranker: --hf-overrides \'{"architectures": ["Qwen3ForSequenceClassification"]' in out

    assert explain.main([config_dirs["llama"], "--hf-overrides", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_explain_cli_loads_no_weights_or_model_code(config_dirs):
    # The directory has no weights at all; the command still explains it.
    proc = subprocess.run(
        [sys.executable, "-m", "crossenc.cli", "explain", config_dirs["deberta"],
         "--hf-overrides", '{"architectures": ["DebertaV2Model"]}'],
        capture_output=True, text=True, check=True)
    assert "score          embed-cosine" in proc.stdout
    assert "yes  /v1/embeddings" in proc.stdout
    # DeBERTa v1 (model_type "deberta"): an NLI classifier classifies, it does not score pairs.
    proc = subprocess.run(
        [sys.executable, "-m", "crossenc.cli", "explain", config_dirs["deberta-v1"],
         "--hf-overrides", '{"num_labels": 3}'],
        capture_output=True, text=True, check=True)
    assert "crossenc.model_executor.models.deberta:DebertaForSequenceClassification" in proc.stdout
    assert "num_labels=3: a multi-label classifier classifies" in proc.stdout


# --- helpers ------------------------------------------------------------------------------

_PRELUDE = '''
import sys
def model_modules():
    """Model code in sys.modules: vLLM model families, crossenc's model files, HF modeling."""
    infra = {"registry", "interfaces", "interfaces_base", "config"}
    return sorted(
        m for m in sys.modules
        if (m.startswith("vllm.model_executor.models.") and m.split(".")[3] not in infra)
        or m in ("crossenc.model_executor.models.adapters", "crossenc.model_executor.models.deberta_v2",
                 "crossenc.model_executor.models.deberta")
        # transformers' auto mappings are name tables; a family's modeling file is model code
        or (m.startswith("transformers.models.") and ".modeling_" in m and ".auto." not in m)
    )
'''


def _run_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("tasks,num_labels", [
    (("embed", "token_embed"), None), (("token_embed",), None), (("embed",), None),
    (("classify", "token_classify"), 1), (("classify", "token_classify"), 3), (("token_classify",), None),
])
def test_endpoints_agree_with_the_routes_vllm_registers(tasks, num_labels):
    """explain's endpoint table against vLLM's own router registration on the installed release
    (0.33 serves /v1/embeddings for a token_embed model, earlier releases do not)."""
    factories = pytest.importorskip("vllm.entrypoints.pooling.factories")
    from fastapi import FastAPI

    from crossenc.model_executor.models.registry import score_route

    def main_task(supported):
        return compat.main_pooling_task(tuple(supported), [])

    task = main_task(tasks)
    app = FastAPI()
    factories.register_pooling_api_routers(
        app, tasks, SimpleNamespace(get_pooling_task=main_task, hf_config=SimpleNamespace(num_labels=num_labels)))
    routes = {r.path: r.endpoint.__module__ for r in app.routes if hasattr(r, "endpoint")}
    route, reason = score_route(task, num_labels)
    works = {e: ok for e, ok, _ in endpoints(SimpleNamespace(
        pooling_task=task, score_route=route, score_reason=reason, num_labels=num_labels))}
    # vLLM builds the embeddings handler for the main task only: the route's module names it.
    served = routes.get("/v1/embeddings", "").endswith(f".{task}.api_router")
    assert works["/v1/embeddings"] == served, routes
    assert works["/score, /rerank, /v1/rerank"] == all(p in routes for p in ("/score", "/rerank", "/v1/rerank"))
    assert works["/pooling"] == ("/pooling" in routes)
