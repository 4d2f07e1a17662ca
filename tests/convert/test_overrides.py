"""Online conversion overrides are validated when vLLM builds its config, before any weights load.

The vLLM tests build the engine config only (`EngineArgs.create_engine_config`, which loads
crossenc as a vLLM plugin): no weights are read, so the checkpoint here has none at all.
"""

from __future__ import annotations

import shutil

import pytest
from transformers import AutoConfig, AutoTokenizer, BertConfig, Gemma2Config

from crossenc import presets
from crossenc.config.overrides import OverrideError, requested_conversion, validate_conversion

SEQ_CLS = "Qwen3ForSequenceClassification"


@pytest.fixture(scope="module")
def no_weights_dir(causal_lm_dir, tmp_path_factory):
    """The tiny Qwen3 reranker's config and tokenizer, without its weights."""
    src = causal_lm_dir("qwen3")
    out = tmp_path_factory.mktemp("qwen3-no-weights")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{src}/{name}", out / name)
    return str(out)


def engine_config(model_dir, hf_overrides):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=model_dir, hf_overrides=hf_overrides, max_model_len=512).create_engine_config()


def overrides(tokens=("no", "yes"), method="from_2_way_softmax", **extra):
    return {"architectures": [SEQ_CLS], "classifier_from_token": list(tokens), "method": method, **extra}


@pytest.mark.parametrize(
    "hf_overrides, message",
    [
        (
            overrides(tokens=("no", "YES")),
            r"classifier token 'YES' must tokenize to exactly one id, but it tokenizes to 3 ids "
            r"\[\d+, \d+, \d+\] \['Y', 'E', 'S'\]; single-token near misses: 'yes' \(id \d+\), "
            r"'Yes' \(id \d+\)",
        ),
        (
            overrides(tokens=("no", " yes")),
            r"classifier token ' yes' is ambiguous: the text tokenizes to id \d+ \['Ġyes'\] but "
            r"' yes' is not a vocabulary entry; single-token near misses: 'yes'",
        ),
        (overrides(method="softmax"), r"unknown method 'softmax'; known methods: from_2_way_softmax"),
        (
            overrides(tokens=("yes",)),
            r"from_2_way_softmax needs exactly 2 tokens in classifier_from_token, got \['yes'\] "
            r"\(the false token first, then the true one\)",
        ),
        (overrides(num_labels=2), r"num_labels=2 contradicts from_2_way_softmax over 2 tokens"),
        (
            {"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"},
            r"served with runner='generate', convert='none'; add \"architectures\": "
            r"\[\"Qwen3ForSequenceClassification\"\]",
        ),
        (
            {"architectures": [SEQ_CLS], "classifier_from_token": ["no", "yes"]},
            r"classifier_from_token is set but method is not: give both",
        ),
        (
            overrides(tokens=("yes", "no"), crossenc_preset="qwen3-reranker"),
            r"this checkpoint is the qwen3-reranker preset .* scored with "
            r"classifier_from_token=\['no', 'yes'\] and method='from_2_way_softmax'",
        ),
        (
            {"architectures": [SEQ_CLS], "crossenc_preset": "bge-reranker-v2-gemma"},
            r"preset bge-reranker-v2-gemma is for gemma checkpoints",
        ),
    ],
    ids=[
        "multi-id-token",
        "not-a-vocab-entry",
        "unknown-method",
        "token-count",
        "num-labels",
        "not-a-classifier",
        "method-missing",
        "preset-mismatch",
        "preset-model-type",
    ],
)
def test_bad_overrides_fail_in_vllm_before_weights_load(no_weights_dir, hf_overrides, message):
    with pytest.raises(Exception, match=message):
        engine_config(no_weights_dir, hf_overrides)


def test_valid_overrides_are_recorded_in_the_config(no_weights_dir):
    from vllm.entrypoints.pooling.scoring import io_processor

    from crossenc.entrypoints.pooling.score_template import TemplatedCrossEncoderIOProcessor

    tokenizer = AutoTokenizer.from_pretrained(no_weights_dir)
    config = engine_config(no_weights_dir, overrides(crossenc_preset="qwen3-reranker"))
    hf_config = config.model_config.hf_config
    assert config.model_config.runner_type == "pooling"
    assert hf_config.num_labels == 1
    assert hf_config.classifier_from_token_ids == [tokenizer.convert_tokens_to_ids(t) for t in ("no", "yes")]
    assert hf_config.crossenc_preset == "qwen3-reranker"
    assert io_processor.ScoringIOProcessors["cross-encoder"] is TemplatedCrossEncoderIOProcessor


def test_preset_alone_supplies_tokens_and_method(no_weights_dir):
    config = engine_config(no_weights_dir, {"architectures": [SEQ_CLS], "crossenc_preset": "qwen3-reranker"})
    hf_config = config.model_config.hf_config
    assert (hf_config.classifier_from_token, hf_config.method) == (["no", "yes"], "from_2_way_softmax")
    assert hf_config.num_labels == 1


def test_recognised_checkpoint_needs_only_the_architecture(no_weights_dir, tmp_path):
    named = tmp_path / "Qwen3-Reranker-tiny"
    shutil.copytree(no_weights_dir, named)
    config = engine_config(str(named), {"architectures": [SEQ_CLS]})
    hf_config = config.model_config.hf_config
    assert (hf_config.classifier_from_token, hf_config.method) == (["no", "yes"], "from_2_way_softmax")
    assert hf_config.crossenc_preset == "qwen3-reranker"
    # Without overrides it is the CausalLM it is, with the template ready for scoring.
    config = engine_config(str(named), {})
    assert config.model_config.runner_type == "generate"
    assert getattr(config.model_config.hf_config, "classifier_from_token", None) is None


def test_vllms_original_qwen3_reranker_flag_is_validated_too(no_weights_dir):
    """vLLM's own spelling for Qwen3-Reranker (`is_original_qwen3_reranker`, which sets the
    method) goes through the same checks."""
    flag = {"architectures": [SEQ_CLS], "is_original_qwen3_reranker": True}
    config = engine_config(no_weights_dir, {**flag, "classifier_from_token": ["no", "yes"]})
    assert config.model_config.hf_config.method == "from_2_way_softmax"
    assert len(config.model_config.hf_config.classifier_from_token_ids) == 2
    with pytest.raises(Exception, match=r"classifier token 'Yes ' must tokenize to exactly one id.*near misses: 'Yes'"):
        engine_config(no_weights_dir, {**flag, "classifier_from_token": ["no", "Yes "]})


# Checks that need configs other than the tiny Qwen3's, on transformers objects directly.
def _with(config, **keys):
    for key, value in keys.items():
        setattr(config, key, value)
    return config


def test_non_decoder_architecture_is_refused(causal_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_dir("qwen3"))
    config = _with(BertConfig(), classifier_from_token=["no", "yes"], method="from_2_way_softmax")
    with pytest.raises(OverrideError, match="model_type .bert. is not a decoder language model whose classifier is a last-token score head"):
        validate_conversion(config, tokenizer)


def test_soft_capped_logits_are_refused(causal_lm_dir):
    # Gemma-2 applies tanh soft-capping to its logits: the lm_head rows alone are not the logits.
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_dir("gemma"))
    config = _with(
        Gemma2Config(vocab_size=len(tokenizer), final_logit_softcapping=30.0),
        classifier_from_token=["Yes"],
        method="no_post_processing",
    )
    with pytest.raises(OverrideError, match="applies final_logit_softcapping=30.0 to its logits"):
        validate_conversion(config, tokenizer)


def test_token_ids_outside_the_lm_head_are_refused(causal_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_dir("qwen3"))
    config = AutoConfig.from_pretrained(causal_lm_dir("qwen3"))
    config = _with(config, vocab_size=10, classifier_from_token=["no", "yes"], method="from_2_way_softmax")
    with pytest.raises(OverrideError, match=r"classifier token 'no' has id \d+, outside the model's 10-row"):
        validate_conversion(config, tokenizer)


def test_validation_gives_ids_and_labels(causal_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_dir("gemma"))
    config = _with(AutoConfig.from_pretrained(causal_lm_dir("gemma")), classifier_from_token=["Yes"],
                   method="no_post_processing")
    conversion = validate_conversion(config, tokenizer, preset=presets.get("bge-reranker-v2-gemma"))
    assert conversion.token_ids == (tokenizer.convert_tokens_to_ids("Yes"),)
    assert (conversion.num_labels, conversion.id2label) == (1, {0: "Yes"})


@pytest.mark.parametrize("method", [[], {"name": "from_2_way_softmax"}, 2])
def test_a_method_that_is_not_a_name_is_a_clear_error(method):
    from transformers import Qwen3Config

    config = Qwen3Config(vocab_size=64, method=method, classifier_from_token=["no", "yes"])
    with pytest.raises(OverrideError, match="unknown method"):
        requested_conversion(config)
