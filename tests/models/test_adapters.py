"""`as_seq_cls_model`: one named, importable, picklable class per base, carrying the static
information vLLM reads (pooling model, score type, default pooling) that the registry table
states for it."""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from crossenc.model_executor.models import adapters
from crossenc.model_executor.models.adapters import as_seq_cls_model
from crossenc.model_executor.models.registry import (
    ADAPTERS_MODULE,
    CROSSENC_ARCH_NAMES,
    MODEL_FILES,
    causal_seq_cls_specs,
    crossenc_archs,
    pooling_class_name,
)

# Generated bases: one class object per name, so a name always means the same base;
# the first base to claim a classifier name owns it.
_BASES: dict[str, type] = {}
_OWNERS: dict[str, type] = {}


def _base(name: str) -> type:
    if name not in _BASES:
        _BASES[name] = type(name, (nn.Module,), {"__module__": "tests.models.generated"})
    return _BASES[name]


base_names = st.builds(
    lambda stem, suffix: stem + suffix,
    st.from_regex(r"Gen[A-Z][A-Za-z0-9]{0,8}", fullmatch=True),
    st.sampled_from(["ForCausalLM", "ForConditionalGeneration", "ChatModel", "LMHeadModel", "Model", ""]),
)


@settings(max_examples=60, deadline=None)
@given(name=base_names)
def test_factory_is_idempotent_names_and_pickles(name):
    base = _base(name)
    owner = _OWNERS.setdefault(pooling_class_name(name), base)
    if owner is not base:  # e.g. GenAModel after GenAForCausalLM: the name is taken
        with pytest.raises(ValueError, match="one name can refer to one class only"):
            as_seq_cls_model(base)
        return
    cls = as_seq_cls_model(base)
    assert as_seq_cls_model(base) is cls
    stem = name
    for suffix in ("ForCausalLM", "ForConditionalGeneration", "ChatModel", "LMHeadModel", "Model"):
        if name.endswith(suffix):
            stem = name.removesuffix(suffix)
            break
    assert cls.__name__ == cls.__qualname__ == stem + "ForSequenceClassification"
    assert cls.__name__ == pooling_class_name(name)
    # A base outside crossenc: the adapters module hosts the class under its name.
    assert cls.__module__ == ADAPTERS_MODULE
    assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert issubclass(cls, base)


def test_one_name_one_class():
    other = type("OnlyClashForCausalLM", (nn.Module,), {"__module__": "tests.models.elsewhere"})
    _OWNERS.setdefault("OnlyClashForSequenceClassification", _base("OnlyClashForCausalLM"))
    as_seq_cls_model(_base("OnlyClashForCausalLM"))
    with pytest.raises(ValueError, match="OnlyClashForSequenceClassification.*one name can refer to one class"):
        as_seq_cls_model(other)


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="NoSuchFamilyForSequenceClassification"):
        adapters.NoSuchFamilyForSequenceClassification
    with pytest.raises(AttributeError):
        adapters.not_a_class


def test_deberta_heads_are_classes_of_their_model_file():
    from crossenc.model_executor.models import deberta_v2

    for arch, head in (("DebertaV2ForSequenceClassification", adapters.EncoderForSequenceClassification),
                       ("DebertaV2ForTokenClassification", adapters.EncoderForTokenClassification)):
        cls = getattr(deberta_v2, arch)
        assert issubclass(cls, head) and cls.base_cls is deberta_v2.DebertaV2Model
        assert f"{cls.__module__}:{cls.__qualname__}" == crossenc_archs()[arch].class_ref
        assert pickle.loads(pickle.dumps(cls)) is cls


def test_every_model_file_class_has_the_capabilities_the_table_names():
    for module, classes in MODEL_FILES.items():
        for name, capabilities in classes.items():
            cls = getattr(importlib.import_module(module), name)
            assert issubclass(cls, capabilities) and cls.__qualname__ == name
            for attr in ("pooling_tasks", "head_kind", "default_seq_pooling_type", "default_tok_pooling_type"):
                assert getattr(cls, attr) == getattr(capabilities, attr), (name, attr)


# The static information vLLM's registry reads from each class equals the registry table's.
SAMPLED_FAMILIES = ("Qwen3ForSequenceClassification", "LlamaForSequenceClassification",
                    "Qwen2ForSequenceClassification", "InternLM3ForSequenceClassification")


@pytest.mark.parametrize("arch", SAMPLED_FAMILIES)
def test_named_classifier_reports_what_the_table_says(arch):
    from vllm.model_executor.models.registry import _ModelInfo

    spec = causal_seq_cls_specs()[arch]
    module, _, name = spec.class_ref.partition(":")
    cls = getattr(importlib.import_module(module), name)
    base_module, _, base_name = spec.base_ref.partition(":")
    base = getattr(importlib.import_module(base_module), base_name)
    assert cls is as_seq_cls_model(base) and issubclass(cls, base)
    info = _ModelInfo.from_model_cls(cls)
    assert info.is_pooling_model and not info.is_text_generation_model
    assert info.score_type == spec.score_type == "cross-encoder"
    assert info.default_seq_pooling_type == spec.default_pooling == "LAST"


@pytest.mark.parametrize("arch", sorted(CROSSENC_ARCH_NAMES))
def test_deberta_classes_report_what_the_table_says(arch):
    from vllm.model_executor.models.registry import _ModelInfo

    spec = crossenc_archs()[arch]
    cls = getattr(importlib.import_module(spec.module), spec.class_name)
    info = _ModelInfo.from_model_cls(cls)
    assert info.is_pooling_model and not info.is_text_generation_model
    assert info.score_type == spec.score_type
    assert info.default_seq_pooling_type == spec.default_pooling or spec.head == "token"


def test_named_classifiers_unpickle_in_a_fresh_process():
    # Pickled here, loaded where nothing has built the classes yet: the module's __getattr__
    # finds the CausalLM in vLLM's registry and builds the same class.
    names = ["Qwen3ForSequenceClassification", "InternLM3ForSequenceClassification"]
    payload = pickle.dumps([getattr(adapters, n) for n in names])
    code = (
        "import json, pickle, sys\n"
        "classes = pickle.loads(sys.stdin.buffer.read())\n"
        "from crossenc.model_executor.models import adapters\n"
        "print(json.dumps([[c.__module__, c.__qualname__, getattr(adapters, c.__qualname__) is c]"
        " for c in classes]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    # InternLM3 is served by vLLM's Llama class: its classifier is Llama's.
    assert got == [[ADAPTERS_MODULE, "Qwen3ForSequenceClassification", True],
                   [ADAPTERS_MODULE, "LlamaForSequenceClassification", True]]
