"""Scheduler defaults for crossenc's encoders: the rule itself (hypothesis), and vLLM's own engine
configuration built from its EngineArgs with crossenc loaded, for crossenc's DeBERTa and vLLM's BERT,
with and without a user's choice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossenc.config.scheduler import ENCODER_MAX_NUM_BATCHED_TOKENS, encoder_max_num_batched_tokens
from crossenc.model_executor.models.registry import CROSSENC_ARCHS

ARCHS = st.sampled_from([*CROSSENC_ARCHS, "BertForSequenceClassification", "Qwen3ForSequenceClassification", None])


@given(arch=ARCHS, runner=st.sampled_from(["pooling", "generate"]), device=st.sampled_from(["cuda", "cpu", "xpu"]),
       vllm_default=st.integers(1, 1 << 18), max_num_seqs=st.integers(1, 2048),
       max_model_len=st.integers(1, 1 << 15))
def test_encoder_default_only_raises_the_step_for_crossencs_encoders_on_a_gpu(
        arch, runner, device, vllm_default, max_num_seqs, max_model_len):
    got = encoder_max_num_batched_tokens(arch, runner, device, vllm_default, max_num_seqs, max_model_len)
    if arch in CROSSENC_ARCHS and runner == "pooling" and device == "cuda":
        assert got == max(vllm_default, min(ENCODER_MAX_NUM_BATCHED_TOKENS, max_num_seqs * max_model_len))
        assert got >= vllm_default
    else:
        assert got == vllm_default


pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.utils import save_deberta, save_tokenizer

    deberta = tmp_path_factory.mktemp("deberta")
    save_deberta(deberta, "seq_cls", "v3", num_labels=1)
    bert = tmp_path_factory.mktemp("bert")
    vocab = save_tokenizer(bert)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        num_labels=1)).save_pretrained(bert)
    return {"deberta": str(deberta), "bert": str(bert)}


def _scheduler(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    config = EngineArgs(model=model, runner="pooling", max_model_len=512, **kwargs).create_engine_config()
    return config.scheduler_config


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_vllm_engine_config_gets_the_encoder_default(checkpoints, monkeypatch, device):
    from crossenc import compat

    vllm_default = _scheduler(checkpoints["bert"]).max_num_batched_tokens
    monkeypatch.setattr(compat, "device_type", lambda: device)
    deberta = _scheduler(checkpoints["deberta"])
    if device == "cuda":
        assert deberta.max_num_batched_tokens == min(ENCODER_MAX_NUM_BATCHED_TOKENS, deberta.max_num_seqs * 512)
        assert deberta.max_num_batched_tokens > vllm_default
    else:
        assert deberta.max_num_batched_tokens == vllm_default
    # vLLM's own models keep vLLM's defaults; a user's value is kept.
    assert _scheduler(checkpoints["bert"]).max_num_batched_tokens == vllm_default
    assert _scheduler(checkpoints["deberta"], max_num_batched_tokens=3072).max_num_batched_tokens == 3072
    # Bounded by max_num_seqs * max_model_len, as vLLM bounds its own.
    vllm_8 = _scheduler(checkpoints["bert"], max_num_seqs=8).max_num_batched_tokens
    assert _scheduler(checkpoints["deberta"], max_num_seqs=8).max_num_batched_tokens == (
        max(vllm_8, 8 * 512) if device == "cuda" else vllm_8)
