"""DeBERTa-v2/v3 model math against transformers, on CPU in fp32, without a vLLM engine."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import DebertaV2ForSequenceClassification as HFSeqCls
from transformers import DebertaV2ForTokenClassification as HFTokenCls
from transformers import DebertaV2Model as HFModel

from crossenc.kernels.disentangled_attention import (
    has_far_ranges,
    log_bucket_position,
    query_tile_rows,
    query_tiles,
    relative_position_index,
    saturation_distance,
)
from crossenc.model_executor.models.deberta_v2 import (
    DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification,
    DebertaV2Model,
    UnsupportedConfigError,
)
from tests.utils import (VARIANTS, GraphRecorder, deberta_config, loaded_from, pack_batch, pad_batch, random_sequences,
                         spread)

ATOL = 1e-4
@pytest.mark.parametrize("variant", VARIANTS)
def test_hidden_states_equal_transformers(variant):
    torch.manual_seed(0)
    hf = spread(HFModel(deberta_config(variant)))
    ours = loaded_from(DebertaV2Model, hf)
    seqs = random_sequences(hf.config.vocab_size)
    ids, mask = pad_batch(seqs)
    type_ids = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids) * mask
    packed_ids, positions = pack_batch(seqs)
    packed_types = type_ids[mask.bool()]
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=type_ids).last_hidden_state[mask.bool()]
        got = ours(packed_ids, positions, token_type_ids=packed_types)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= ATOL


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_labels", [1, 3])
def test_sequence_logits_equal_transformers(variant, num_labels):
    torch.manual_seed(1)
    hf = spread(HFSeqCls(deberta_config(variant, num_labels=num_labels)))
    ours = loaded_from(DebertaV2ForSequenceClassification, hf)
    seqs = random_sequences(hf.config.vocab_size, seed=1)
    ids, mask = pad_batch(seqs)
    packed_ids, positions = pack_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours.logits(ours(packed_ids, positions), positions)
    assert got.shape == (len(seqs), num_labels)
    assert (got - expected).abs().max() <= ATOL


@pytest.mark.parametrize("variant", ["v3", "p2c-only"])
def test_position_tables_made_once_and_remade_when_the_weights_change(variant):
    """At inference the encoder makes every layer's position tables once (the same tensors on the
    next forward), and makes them again when the weights change: loaded in place, edited in place,
    replaced, or converted to another dtype. With autograd on nothing is kept."""
    torch.manual_seed(2)
    hf = spread(HFSeqCls(deberta_config(variant)))
    ours = loaded_from(DebertaV2ForSequenceClassification, hf)
    encoder = ours.deberta.encoder
    seqs = random_sequences(hf.config.vocab_size, seed=2)
    ids, mask = pad_batch(seqs)
    packed_ids, positions = pack_batch(seqs)

    def check(reference, tol=ATOL):
        with torch.inference_mode():
            got = ours.logits(ours(packed_ids, positions), positions)
            first = encoder.position_tables()
            assert all(a is b for pair, again in zip(first, encoder.position_tables()) for a, b in zip(pair, again))
            assert ours.logits(ours(packed_ids, positions), positions).equal(got)
        with torch.no_grad():
            expected = reference(input_ids=ids, attention_mask=mask).logits
        assert (got.double() - expected.double()).abs().max() <= tol

    check(hf)
    other = spread(HFSeqCls(deberta_config(variant)))  # other weights, loaded into the same tensors
    pointers = [p.data_ptr() for p in ours.parameters()]
    ours.load_weights(other.state_dict().items())
    assert [p.data_ptr() for p in ours.parameters()] == pointers
    check(other)
    with torch.no_grad():  # edited in place: the last layer's query projection (q's rows of the stacked one)
        hidden = hf.config.hidden_size
        ours.deberta.encoder.layer[-1].attention.self.qkv_proj.weight[:hidden].mul_(1.5)
        other.deberta.encoder.layer[-1].attention.self.query_proj.weight.mul_(1.5)
    check(other)
    with torch.no_grad():  # replaced: a new Parameter in the module (the first layer's query rows)
        qkv = ours.deberta.encoder.layer[0].attention.self.qkv_proj
        weight = qkv.weight.detach().clone()
        weight[:hidden].mul_(0.5)
        qkv.weight = torch.nn.Parameter(weight)
        other.deberta.encoder.layer[0].attention.self.query_proj.weight.mul_(0.5)
    check(other)
    ours.double()
    check(other.double(), tol=1e-6)  # (the attention's scores are taken in float32)
    with torch.inference_mode():
        assert all(t.dtype == torch.float64 for pair in encoder.position_tables() for t in pair if t is not None)
    with torch.enable_grad():
        encoder.weights_loaded()
        ours(packed_ids, positions)
        assert encoder._tables is None
    with torch.inference_mode():  # weights made under inference_mode (no version counter)
        built = loaded_from(DebertaV2ForSequenceClassification, other)
        assert built.deberta.encoder.layer[0].attention.self.qkv_proj.weight.is_inference()
        got = built.logits(built(packed_ids, positions), positions)
        assert got.equal(built.logits(built(packed_ids, positions), positions))


@pytest.mark.parametrize("variant", ["v3", "v2-conv"])
def test_token_logits_equal_transformers(variant):
    torch.manual_seed(2)
    hf = spread(HFTokenCls(deberta_config(variant, num_labels=5)))
    ours = loaded_from(DebertaV2ForTokenClassification, hf)
    seqs = random_sequences(hf.config.vocab_size, seed=2)
    ids, mask = pad_batch(seqs)
    packed_ids, positions = pack_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        got = ours.logits(ours(packed_ids, positions))
    assert (got - expected).abs().max() <= ATOL


def test_sequences_do_not_attend_across_therandom_sequences():
    torch.manual_seed(3)
    hf = spread(HFModel(deberta_config("v2-conv")))
    ours = loaded_from(DebertaV2Model, hf)
    seqs = random_sequences(hf.config.vocab_size, seed=3)
    with torch.no_grad():
        together = ours(*pack_batch(seqs))
        alone = torch.cat([ours(*pack_batch([s])) for s in seqs])
    assert (together - alone).abs().max() <= 1e-5


def test_log_buckets_equal_transformers():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    rel = torch.arange(-3000, 3001)
    for buckets, max_pos in [(256, 512), (16, 512), (8, 64), (4, 24)]:
        assert torch.equal(log_bucket_position(rel, buckets, max_pos),
                           make_log_bucket_position(rel, buckets, max_pos).long())
    index = relative_position_index(600, 256, 512, 256)
    assert index.min() == 0 and index.max() == 511 and index.shape == (1199,)


@pytest.mark.parametrize("max_seqlen,buckets,max_rel,span", [
    (600, 256, 512, 256), (2048, 256, 512, 256), (128, 256, 512, 256), (300, 16, 32, 16), (90, -1, 24, 24),
    (1100, -1, 512, 512), (5, 256, 512, 256)])
def test_saturation_distance_is_where_each_side_keeps_one_row(max_seqlen, buckets, max_rel, span):
    """The CUDA kernel takes key tiles at least this far from a query tile without the window."""
    index = relative_position_index(max_seqlen, buckets, max_rel, span).tolist()
    far = saturation_distance(torch.tensor(index))
    at = {d: index[d + max_seqlen - 1] for d in range(1 - max_seqlen, max_seqlen)}
    assert 1 <= far <= max_seqlen - 1 or max_seqlen == 1
    assert all(at[d] == at[max_seqlen - 1] and at[-d] == at[1 - max_seqlen] for d in range(far, max_seqlen))
    if far > 1:  # the smallest such distance: one side changes just before it
        assert at[far - 1] != at[max_seqlen - 1] or at[1 - far] != at[1 - max_seqlen]


@settings(max_examples=400, deadline=None)
@given(far=st.integers(1, 2048), max_seqlen=st.integers(1, 2048),
       tiles=st.sampled_from([(32, 32), (64, 64), (64, 32), (32, 64), (16, 16), (16, 32)]))
def test_far_code_is_compiled_in_wherever_a_tile_pair_is_that_far(far, max_seqlen, tiles):
    """The CUDA kernel's far ranges, walked as it walks them for every query tile of a sequence
    of max_seqlen tokens: where one is not empty, has_far_ranges keeps their code in."""
    assume(far <= max_seqlen)
    block_m, block_n = tiles
    needed = False
    for m0 in range(0, max_seqlen, block_m):
        before = m0 - (block_n - 1) - far  # as in _disentangled_attention_fwd
        near_lo = (before // block_n + 1) * block_n if before >= 0 else 0
        near_hi = min(-(-(m0 + block_m - 1 + far) // block_n) * block_n, max_seqlen)
        needed |= near_lo > 0 or near_hi < max_seqlen
    assert has_far_ranges(far, max_seqlen, block_m, block_n) or not needed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_far_code_is_compiled_out_for_v3_up_to_512_tokens(dtype):
    """v3's log buckets saturate at 512: up to 512 tokens (and on to 575 with the 64x64 tiles)
    the kernel runs without its far code; from 576 it has far ranges to take."""
    pytest.importorskip("triton")
    from crossenc.kernels.triton_disentangled_attention import default_config

    for max_seqlen in [*range(1, 700), 1000, 2048]:
        far = saturation_distance(relative_position_index(max_seqlen, 256, 512, 256))
        block_m, block_n, _, _ = default_config(64, dtype, max_seqlen)
        assert block_m == query_tile_rows(64, dtype, max_seqlen)
        assert has_far_ranges(far, max_seqlen, block_m, block_n) == (max_seqlen >= 512 + min(block_m, block_n))


def test_wgmma_kernel_chosen_where_it_applies(monkeypatch):
    """The CUDA op hands a batch to the warpgroup-MMA kernel only on a GPU that runs it (here
    pretended: `_wgmma_available`), in fp16/bf16 and with heads of 64, at every length (its far
    ranges take the tile pairs past the rows' saturation); the model's per-forward tiles then have
    its 64 rows. CROSSENC_WGMMA_ATTENTION=0 turns it off."""
    from crossenc.kernels import disentangled_attention as module

    cuda = torch.device("cuda", 0)
    assert not module.uses_wgmma_kernel(64, torch.float16, torch.device("cpu"))
    monkeypatch.setattr(module, "_wgmma_available", lambda index: True)

    for dtype in (torch.float16, torch.bfloat16):
        assert module.uses_wgmma_kernel(64, dtype, cuda)
        for n in (1, 64, 100, 511, 512, 575, 576, 1000, 2048):
            assert query_tile_rows(64, dtype, n, cuda) == 64
            assert query_tile_rows(64, dtype, n) == (64 if n > 512 else 32)  # without a device: the Triton kernel's
    assert not module.uses_wgmma_kernel(64, torch.float32, cuda)
    assert query_tile_rows(64, torch.float32, 100, cuda) == 32
    for head in (32, 128):
        assert not module.uses_wgmma_kernel(head, torch.float16, cuda)
    monkeypatch.setenv("CROSSENC_WGMMA_ATTENTION", "0")
    assert not module.uses_wgmma_kernel(64, torch.float16, cuda)


def test_query_tiles_count_each_sequences_tiles():
    """The kernel's per-forward tile table: each sequence's first 32-row tile, empty ones included."""
    cu = torch.tensor([0, 5, 5, 70, 102], dtype=torch.int32)
    assert query_tiles(cu).tolist() == [0, 1, 1, 4, 5]
    assert query_tiles(cu, 64).tolist() == [0, 1, 1, 3, 4]


@pytest.mark.parametrize("field,value,message", [
    ("pos_att_type", "c2p|p2p", "pos_att_type"),
    ("hidden_act", "no-such-activation", "hidden_act"),
    ("attention_head_size", 16, "attention_head_size"),
    ("pooler_hidden_size", 48, "pooler_hidden_size"),
    ("conv_kernel_size", 4, "conv_kernel_size"),
])
def test_unservable_config_names_the_field(field, value, message):
    config = deberta_config("v3")
    setattr(config, field, value)
    with pytest.raises(UnsupportedConfigError, match=message):
        DebertaV2ForSequenceClassification(config=config)


def test_checkpoint_mismatches_are_named():
    torch.manual_seed(4)
    hf = HFSeqCls(deberta_config("v2-conv", num_labels=1))
    state = dict(hf.state_dict())
    del state["deberta.encoder.layer.1.attention.self.pos_query_proj.weight"]
    state["deberta.encoder.layer.0.extra.weight"] = torch.zeros(1)
    state["deberta.encoder.layer.0.intermediate.dense.bias"] = torch.zeros(3)
    model = DebertaV2ForSequenceClassification(config=hf.config)
    with pytest.raises(ValueError) as err:
        model.load_weights(state.items())
    text = str(err.value)
    assert "missing tensors: ['deberta.encoder.layer.1.attention.self.pos_query_proj.weight']" in text
    assert "unexpected tensors: ['deberta.encoder.layer.0.extra.weight']" in text
    assert "deberta.encoder.layer.0.intermediate.dense.bias: checkpoint (3,), config expects (64,)" in text


def test_stacked_and_padded_parameters_report_checkpoint_shapes():
    """q/k/v load into one matmul and vLLM pads the vocabulary: shapes are still checked against
    what the checkpoint holds for each, by its own name."""
    hf = HFModel(deberta_config("v3"))
    state = dict(hf.state_dict())
    state["encoder.layer.0.attention.self.key_proj.weight"] = torch.zeros(32, 31)
    state["embeddings.word_embeddings.weight"] = torch.zeros(255, 32)
    with pytest.raises(ValueError) as err:
        DebertaV2Model(config=hf.config).load_weights(state.items())
    text = str(err.value)
    assert "encoder.layer.0.attention.self.key_proj.weight: checkpoint (32, 31), config expects (32, 32)" in text
    assert "embeddings.word_embeddings.weight: checkpoint (255, 32), config expects (256, 32)" in text
    assert "missing" not in text and "unexpected" not in text


def test_head_mismatch_is_named():
    torch.manual_seed(5)
    hf = HFSeqCls(deberta_config("v3", num_labels=3))
    model = DebertaV2ForSequenceClassification(config=deberta_config("v3", num_labels=1))
    with pytest.raises(ValueError, match=r"classifier\.weight: checkpoint \(3, 32\), config expects \(1, 32\)"):
        model.load_weights(hf.state_dict().items())
    base = HFModel(deberta_config("v3"))
    with pytest.raises(ValueError, match=r"missing tensors: \['classifier.bias', 'classifier.weight', 'pooler"):
        model.load_weights((f"deberta.{k}", v) for k, v in base.state_dict().items())


def test_long_sequences_with_published_v3_buckets():
    """position_buckets=256 over 512 positions: the log-bucket region the shrunk configs reach less."""
    torch.manual_seed(6)
    hf = spread(HFModel(deberta_config("v3", position_buckets=256, num_hidden_layers=1)))
    ours = loaded_from(DebertaV2Model, hf)
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(1, 256, (n,), generator=g).tolist() for n in (512, 300, 2)]
    ids, mask = pad_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        got = ours(*pack_batch(seqs))
    assert (got - expected).abs().max() <= ATOL


@pytest.mark.parametrize("chunk_scores", [1, 4 * 40 * 40, 1 << 30])
@pytest.mark.parametrize("variant", ["v3", "v2-conv-groups", "p2c-only"])
def test_sequences_scored_in_chunks_equal_transformers(monkeypatch, variant, chunk_scores):
    """The CPU reference scores a chunk of sequences at a time, each padded to its own longest:
    one sequence per chunk, a few, or the whole batch give transformers' hidden states."""
    from crossenc.kernels import disentangled_attention

    monkeypatch.setattr(disentangled_attention, "REF_CHUNK_SCORES", chunk_scores)
    torch.manual_seed(7)
    hf = spread(HFModel(deberta_config(variant)))
    ours = loaded_from(DebertaV2Model, hf)
    g = torch.Generator().manual_seed(7)
    seqs = [torch.randint(1, hf.config.vocab_size, (n,), generator=g).tolist() for n in (90, 3, 40, 41, 1, 128, 2)]
    ids, mask = pad_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        got = ours(*pack_batch(seqs))
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= ATOL


def test_compiled_attention_is_one_custom_op_node_and_equals_eager():
    """Under torch.compile the attention is the custom op `crossenc::packed_disentangled_attention`,
    one graph node; run eagerly, its implementation is called directly (no op dispatch)."""
    from crossenc.kernels.disentangled_attention import attention_scale
    from crossenc.model_executor.layers.packed_layout import PackedLayout, packed_attention

    torch.manual_seed(0)
    lengths, heads, dim, span = [5, 17, 9], 2, 32, 8
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, dim) for _ in range(3))
    pos_key, pos_query = torch.randn(2 * span, heads, dim), torch.randn(2 * span, heads, dim)
    layout = PackedLayout.from_positions(torch.cat([torch.arange(n) for n in lengths]))
    layout.rel_index = relative_position_index(max(lengths), span, 4 * span, span)
    args = (q, k, v, pos_key, pos_query, attention_scale(dim, 3))
    recording = GraphRecorder()
    with layout.active():
        eager = packed_attention(*args)
        compiled = torch.compile(packed_attention, backend=recording, fullgraph=True)(*args)
    assert recording.targets() == ["crossenc.packed_disentangled_attention.default"]
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("variant", ["v3", "v2-conv"])
def test_compiled_encoder_holds_no_layout(variant):
    """The encoder compiled once (as vLLM compiles it, CROSSENC_TORCH_COMPILE=1: one graph,
    dynamic token count) scores batches of other sequence counts and lengths as eagerly: its
    attention is the custom op `crossenc::packed_disentangled_attention`, one node per layer, which
    reads the batch's layout as it runs."""
    torch.manual_seed(2)
    hf = spread(HFModel(deberta_config(variant)))
    ours = loaded_from(DebertaV2Model, hf)
    recording = GraphRecorder()
    encoder = ours.encoder
    eager = encoder.forward
    compiled = torch.compile(eager, backend=recording, fullgraph=True, dynamic=True)
    for seed, lengths in enumerate([(90, 3, 40, 41, 1), (7, 128), (33,)]):
        g = torch.Generator().manual_seed(seed)
        seqs = [torch.randint(1, hf.config.vocab_size, (n,), generator=g).tolist() for n in lengths]
        ids, mask = pad_batch(seqs)
        with torch.no_grad():
            expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
            encoder.forward = compiled
            try:
                got = ours(*pack_batch(seqs))
            finally:
                encoder.forward = eager
        assert (got - expected).abs().max() <= ATOL, lengths
    assert len(recording.graphs) == 1
    attention = [n for n in recording.graphs[0].graph.nodes
                 if str(n.target) == "crossenc.packed_disentangled_attention.default"]
    assert len(attention) == ours.arch.num_layers


def test_dense_gelu_op_equals_torch_and_compiles():
    """`crossenc::dense_gelu`, the dense + GELU node of a compiled CUDA encoder: its schema, fake
    (meta) function and dispatch pass torch's opcheck, and where the Hopper kernel cannot run
    (here: on the CPU) it is gelu(linear(x)), compiled (dynamic token count) as eagerly."""
    from crossenc.model_executor.layers.dense_gelu import dense_gelu_op

    torch.manual_seed(4)
    w, b = torch.randn(48, 32), torch.randn(48)
    x = torch.randn(7, 32)
    torch.library.opcheck(dense_gelu_op, (x, w, b))
    compiled = torch.compile(dense_gelu_op, fullgraph=True, dynamic=True)
    for m in (7, 1, 130):
        x = torch.randn(m, 32)
        expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))
        assert torch.equal(dense_gelu_op(x, w, b), expected)
        assert torch.allclose(compiled(x, w, b), expected, atol=1e-6)


def test_add_layer_norm_op_equals_torch_and_compiles():
    """`crossenc::add_layer_norm`, the residual add + LayerNorm node of a compiled CUDA encoder: it
    passes torch's opcheck, and where the Triton kernel does not run (here: on the CPU) it is
    layer_norm(x + residual), compiled (dynamic token count) as eagerly, strided inputs too."""
    from crossenc.model_executor.layers.layernorm import add_layer_norm_op

    torch.manual_seed(5)
    w, b = torch.randn(32), torch.randn(32)
    x, residual = torch.randn(7, 32), torch.randn(7, 32)
    torch.library.opcheck(add_layer_norm_op, (x, residual, w, b, 1e-7))
    compiled = torch.compile(add_layer_norm_op, fullgraph=True, dynamic=True)
    for m in (7, 1, 130):
        x, residual = torch.randn(m, 32), torch.randn(32, m).t()
        expected = torch.nn.functional.layer_norm(x + residual, (32,), w, b, 1e-7)
        assert torch.equal(add_layer_norm_op(x, residual, w, b, 1e-7), expected)
        assert torch.allclose(compiled(x, residual, w, b, 1e-7), expected, atol=1e-5)


def test_attention_outside_a_forward_is_refused():
    from crossenc.model_executor.layers.packed_layout import packed_attention

    q = torch.randn(4, 2, 8)
    with pytest.raises(RuntimeError, match="no PackedLayout is active"):
        packed_attention(q, q, q, None, None, 1.0)


def test_vllms_graph_split_runs_the_attention_between_the_pieces():
    """Where vLLM captures CUDA graphs it splits the compiled graph at its splitting ops; with
    CROSSENC_TORCH_COMPILE=1 crossenc's attention op is one (`compat.split_compiled_graph_at`):
    each layer's attention is a piece of its own, run as it is, writing into an output the piece
    before it allocated, and the split graph scores as the eager model."""
    pytest.importorskip("vllm")
    from vllm.compilation.backends import split_graph

    op = "crossenc::packed_disentangled_attention"
    torch.manual_seed(3)
    hf = spread(HFModel(deberta_config("v3")))
    ours = loaded_from(DebertaV2Model, hf)
    splits = []

    def backend(gm, example_inputs):
        split, items = split_graph(gm, [op])
        splits.append(items)
        return split.forward

    encoder = ours.encoder
    eager = encoder.forward
    seqs = random_sequences(hf.config.vocab_size, seed=3)
    ids, mask = pad_batch(seqs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        encoder.forward = torch.compile(eager, backend=backend, fullgraph=True, dynamic=True)
        try:
            got = ours(*pack_batch(seqs))
        finally:
            encoder.forward = eager
    [items] = splits
    attention = [item for item in items if item.is_splitting_graph]
    assert len(attention) == ours.arch.num_layers
    for item in attention:
        targets = [str(n.target) for n in item.graph.graph.nodes if n.op == "call_function"]
        assert targets == ["crossenc.packed_disentangled_attention.default"]
        # Its output is allocated by the piece before it (a CUDA graph's own buffer there).
        before = items[items.index(item) - 1]
        assert not before.is_splitting_graph
        assert any(n.target == "new_empty" for n in before.graph.graph.nodes if n.op == "call_method")
    assert (got - expected).abs().max() <= ATOL
