"""`crossenc.config.resolve`: properties of the pure resolution, and its agreement with vLLM.

`resolve` decides from the config alone what vLLM decides when it builds a ModelConfig; the
agreement test builds vLLM's own ModelConfig (with crossenc's plugin loaded) from tiny local
checkpoint directories and compares.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoTokenizer

from crossenc.config.resolve import (
    CONVERT_OPTIONS,
    RUNNER_OPTIONS,
    Resolution,
    ResolutionError,
    endpoints,
    resolve,
)
from crossenc.model_executor.models.registry import all_specs
from tests.config.families import BAD_TOKENS, FAMILIES, GOOD_TOKENS, make_config, run_python


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
    config = make_config(family, arch, num_labels)
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
    res = resolve(make_config(family, arch, num_labels))
    assert (res.runner, res.convert, res.explicit) == ("pooling", "none", True)
    assert res.score_route == route
    assert res.class_ref == all_specs()[arch].class_ref


def test_conversion_makes_a_single_score_and_needs_a_pooling_runner():
    config = make_config("qwen3", "Qwen3ForCausalLM", num_labels=2)
    named = {"architectures": ["Qwen3ForSequenceClassification"],
             "classifier_from_token": GOOD_TOKENS, "method": "from_2_way_softmax"}
    res = resolve(config, hf_overrides=named)
    assert (res.num_labels, res.score_route, res.explicit) == (1, "cross-encoder", True)
    assert res.conversion == "from_2_way_softmax over tokens ['cat', 'dog']"
    with pytest.raises(ResolutionError, match="runner='generate'"):
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
    out = run_python("""
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


# On a fresh machine this is the suite's slowest test (96-105 s) whatever the examples: vLLM inspects each
# architecture the first time in a subprocess (cached under ~/.cache/vllm/modelinfos); the 40 examples
# themselves take under a second.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


