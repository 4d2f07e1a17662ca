"""crossenc's registry table: the named classifiers of vLLM's CausalLM families, lazy
registration, and the engine-config hooks the named classes keep."""

from __future__ import annotations

from crossenc import compat
from crossenc.model_executor.models.registry import (
    ADAPTERS_MODULE,
    all_specs,
    causal_seq_cls_specs,
    pooling_class_name,
    vllm_archs,
)
from tests.config.families import run_python


# --- the table ----------------------------------------------------------------------------


def test_named_classifiers_cover_causal_lms_vllm_resolves_by_suffix():
    specs = causal_seq_cls_specs()
    native = vllm_archs()
    assert {"Qwen3ForSequenceClassification", "LlamaForSequenceClassification",
            "Qwen2ForSequenceClassification"} <= set(specs)
    # Gemma: vLLM's own class through 0.33; from 0.34 vLLM serves it with its Transformers modeling
    # backend, and its own conversion with it.
    gemma_backend = native["GemmaForCausalLM"].startswith(compat.TRANSFORMERS_BACKEND_MODULE)
    assert ("GemmaForSequenceClassification" in specs) != gemma_backend
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
    out = run_python("""
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


