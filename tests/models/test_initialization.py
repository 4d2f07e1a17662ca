"""Every architecture crossenc registers from its model files has an example, and builds from it,
loads transformers' weights of it and computes what transformers does (fp32, without vLLM)."""

from __future__ import annotations

import importlib

import pytest
import torch
import transformers

from crossenc.model_executor.models.registry import CROSSENC_ARCH_NAMES, crossenc_archs
from tests.models.registry import EXAMPLE_MODELS
from tests.utils import pack_batch, pad_batch, spread


def test_every_crossenc_architecture_has_an_example():
    assert set(EXAMPLE_MODELS) == CROSSENC_ARCH_NAMES


@pytest.mark.parametrize("arch", sorted(EXAMPLE_MODELS))
def test_example_initialises_loads_and_equals_transformers(arch):
    example = EXAMPLE_MODELS[arch]
    spec = crossenc_archs()[arch]
    cls = getattr(importlib.import_module(spec.module), spec.class_name)
    torch.manual_seed(0)
    hf = spread(getattr(transformers, example.hf_class)(example.config()))
    ours = cls(config=hf.config).eval()
    assert ours.load_weights(hf.state_dict().items()) == {n for n, _ in ours.named_parameters()}
    seqs = [[5, 9, 2, 7], [3], list(range(1, 40))]
    ids, mask = pad_batch(seqs)
    packed, positions = pack_batch(seqs)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
        hidden = ours(packed, positions)
        if spec.head == "seq_cls":
            got, expected = ours.logits(hidden, positions), out.logits
        elif spec.head == "token":
            got, expected = ours.logits(hidden), out.logits[mask.bool()]
        else:
            got, expected = hidden, out.last_hidden_state[mask.bool()]
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4
