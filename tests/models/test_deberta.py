"""DeBERTa (v1) model math against transformers' modeling_deberta, on CPU in fp32, without a vLLM engine."""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaForSequenceClassification as HFSeqCls
from transformers import DebertaForTokenClassification as HFTokenCls
from transformers import DebertaModel as HFModel

from crossenc.model_executor.models.deberta import (
    DebertaForSequenceClassification,
    DebertaForTokenClassification,
    DebertaModel,
)
from crossenc.model_executor.models.deberta_v2 import UnsupportedConfigError
from tests.utils import V1_VARIANTS, deberta_v1_config, loaded_from, pack_batch, pad_batch, random_sequences, spread

ATOL = 1e-4
@pytest.mark.parametrize("variant", V1_VARIANTS)
def test_hidden_states_equal_transformers(variant):
    torch.manual_seed(0)
    hf = spread(HFModel(deberta_v1_config(variant)))
    ours = loaded_from(DebertaModel, hf)
    seqs = random_sequences(hf.config.vocab_size)
    ids, mask = pad_batch(seqs)
    type_ids = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids) * mask
    if not hf.config.type_vocab_size:
        type_ids = torch.zeros_like(ids)
    packed_ids, positions = pack_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=type_ids).last_hidden_state[mask.bool()]
        got = ours(packed_ids, positions, token_type_ids=type_ids[mask.bool()])
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= ATOL


@pytest.mark.parametrize("variant", ["base", "clamped"])
@pytest.mark.parametrize("num_labels", [1, 3])
def test_sequence_logits_equal_transformers(variant, num_labels):
    """One label: a cross-encoder's score; three: deberta-large-mnli's NLI labels."""
    torch.manual_seed(1)
    hf = spread(HFSeqCls(deberta_v1_config(variant, num_labels=num_labels)))
    ours = loaded_from(DebertaForSequenceClassification, hf)
    seqs = random_sequences(hf.config.vocab_size, seed=1)
    ids, mask = pad_batch(seqs)
    packed_ids, positions = pack_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours.logits(ours(packed_ids, positions), positions)
    assert got.shape == (len(seqs), num_labels)
    assert (got - expected).abs().max() <= ATOL


def test_token_logits_equal_transformers():
    torch.manual_seed(2)
    hf = spread(HFTokenCls(deberta_v1_config("base", num_labels=5)))
    ours = loaded_from(DebertaForTokenClassification, hf)
    seqs = random_sequences(hf.config.vocab_size, seed=2)
    ids, mask = pad_batch(seqs)
    packed_ids, positions = pack_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        got = ours.logits(ours(packed_ids, positions))
    assert (got - expected).abs().max() <= ATOL


def test_long_sequences_reach_the_clamped_relative_positions():
    """512 tokens against deberta-base's 512 relative positions, and against a table of 64."""
    for max_rel in (-1, 64):
        torch.manual_seed(3)
        hf = spread(HFModel(deberta_v1_config("base", max_relative_positions=max_rel, num_hidden_layers=1)))
        ours = loaded_from(DebertaModel, hf)
        seqs = random_sequences(hf.config.vocab_size, seed=3, lengths=(512, 300, 2))
        ids, mask = pad_batch(seqs)
        with torch.no_grad():
            expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
            got = ours(*pack_batch(seqs))
        assert (got - expected).abs().max() <= ATOL, max_rel


def test_fused_projection_is_read_head_by_head():
    """in_proj's rows are q, k, v of head 0, then head 1, ...: a checkpoint whose heads differ
    only in their k rows gives transformers' numbers, and v1 has no key bias."""
    torch.manual_seed(4)
    hf = spread(HFModel(deberta_v1_config("base", num_hidden_layers=1)))
    ours = loaded_from(DebertaModel, hf)
    attn = ours.encoder.layer[0].attention.self
    q_size = attn.q_size
    assert torch.equal(attn.qkv_proj.bias[q_size: 2 * q_size], torch.zeros(q_size))
    assert torch.equal(attn.qkv_proj.bias[:q_size], hf.encoder.layer[0].attention.self.q_bias)
    hf_weight = hf.encoder.layer[0].attention.self.in_proj.weight.view(4, 3, 8, 32)
    assert torch.equal(attn.qkv_proj.weight[q_size: 2 * q_size].view(4, 8, 32), hf_weight[:, 1])


def test_talking_head_is_refused_by_name():
    config = deberta_v1_config("base", talking_head=True)
    with pytest.raises(UnsupportedConfigError, match="talking_head=True"):
        DebertaForSequenceClassification(config=config)


def test_checkpoint_mismatches_are_named_in_v1_terms():
    torch.manual_seed(5)
    hf = HFSeqCls(deberta_v1_config("base", num_labels=1))
    state = dict(hf.state_dict())
    del state["deberta.encoder.layer.1.attention.self.v_bias"]
    state["deberta.encoder.layer.0.attention.self.in_proj.weight"] = torch.zeros(96, 31)
    with pytest.raises(ValueError) as err:
        DebertaForSequenceClassification(config=hf.config).load_weights(state.items())
    text = str(err.value)
    assert "missing tensors: ['deberta.encoder.layer.1.attention.self.v_bias']" in text
    assert "deberta.encoder.layer.0.attention.self.in_proj.weight: checkpoint (96, 31), config expects (96, 32)" in text
