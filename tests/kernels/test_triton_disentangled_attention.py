"""The Triton disentangled-attention kernel against the torch reference, and the model against HF.

Runs on a CUDA machine; skipped without one. Tolerances: the kernel rounds probabilities to the
input dtype before the P @ V product (as FlashAttention does) and accumulates in fp32, so its
relative L2 error against the fp32 reference stays near the input dtype's resolution
(fp16 ~5e-4, bf16 ~4e-3); the bounds below leave about 4x headroom.
"""

from __future__ import annotations


import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from crossenc.kernels.disentangled_attention import (  # noqa: E402
    attention_scale,
    disentangled_attention_ref,
    relative_position_index,
    saturation_distance,
)
from tests.utils import compiled_variants  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REL_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
# (position_buckets, max_relative_positions): v3's log buckets, small buckets, v2 without buckets.
BUCKETS = [(256, 512), (32, 64), (-1, 512), (-1, 24)]


def _packed_inputs(lengths, heads, dim, dtype, buckets, max_rel, c2p, p2c, seed, fused=True):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    total, max_seqlen = sum(lengths), max(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    if fused:  # q, k, v as strided views of one fused projection, as the model hands them over
        qkv = torch.randn(total, 3, heads, dim, device="cuda", dtype=dtype, generator=gen)
        q, k, v = qkv.unbind(1)
    else:
        q, k, v = (torch.randn(total, heads, dim, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    span = buckets if buckets > 0 else max_rel
    pos_key = torch.randn(2 * span, heads, dim, device="cuda", dtype=dtype, generator=gen) if c2p else None
    pos_query = torch.randn(2 * span, heads, dim, device="cuda", dtype=dtype, generator=gen) if p2c else None
    rel_index = relative_position_index(max_seqlen, buckets, max_rel, span, device="cuda")
    scale = attention_scale(dim, 1 + int(c2p) + int(p2c))
    return q, k, v, cu.cuda(), max_seqlen, pos_key, pos_query, rel_index, scale


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _run(args, config=None, mode="far"):
    """The kernel against the reference. `mode` "far": key tiles past the buckets' saturation
    take the saturated rows' terms (as the model runs it); "window": the window everywhere."""
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

    far = None if mode == "window" else saturation_distance(args[7].cpu())
    out = triton_disentangled_attention(*args, config=config, far=far)
    ref = disentangled_attention_ref(*args[:3], args[3], args[4], args[5], args[6], args[7], args[8])
    assert out.shape == args[0].shape and out.dtype == args[0].dtype
    assert torch.isfinite(out).all()
    return out, ref


lengths_st = st.lists(st.integers(1, 2048), min_size=1, max_size=4).filter(lambda ls: sum(ls) <= 4096)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=lengths_st,
    heads=st.integers(1, 3),
    dim=st.sampled_from([32, 64, 128]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    bucket=st.sampled_from(BUCKETS),
    terms=st.sampled_from([(True, True), (True, False), (False, True), (False, False)]),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["far", "window"]),
)
def test_kernel_matches_reference(lengths, heads, dim, dtype, bucket, terms, seed, mode):
    args = _packed_inputs(lengths, heads, dim, dtype, *bucket, *terms, seed)
    out, ref = _run(args, mode=mode)
    assert _rel_err(out, ref) < REL_TOL[dtype], (lengths, heads, dim, dtype, bucket, terms, mode)


@pytest.mark.parametrize("dim", [32, 64, 128])
@pytest.mark.parametrize("fused", [True, False])
def test_kernel_mixed_short_and_long_fp32(dim, fused):
    # fp32 inputs use exact fp32 products: near-exact agreement.
    args = _packed_inputs([1, 7, 64, 65, 300, 129], 2, dim, torch.float32, 256, 512, True, True, 0, fused)
    out, ref = _run(args)
    assert _rel_err(out, ref) < REL_TOL[torch.float32]


@pytest.mark.parametrize("mode", ["far", "window"])
@pytest.mark.parametrize("config", [(32, 32, 2, 2), (32, 32, 1, 2), (64, 64, 4, 2), (64, 64, 4, 1), (64, 32, 4, 2),
                                    (32, 64, 4, 2), (16, 32, 4, 1)])
def test_kernel_tile_configs(config, mode):
    # Tiles where BLOCK_M != BLOCK_N get a padded window (next power of two of BM+BN-1 rows);
    # the 1100-token sequence goes past v3's log buckets (distances >= 512 share a row).
    args = _packed_inputs([1, 31, 33, 100, 257, 64, 1100], 3, 64, torch.float16, 256, 512, True, True, 2)
    out, ref = _run(args, config, mode)
    assert _rel_err(out, ref) < REL_TOL[torch.float16]


@pytest.mark.parametrize("far_block_n", [64, 128])
@pytest.mark.parametrize("config", [(32, 32, 2, 2), (32, 32, 4, 2), (32, 32, 1, 2)])
@pytest.mark.parametrize("bucket", [(256, 512), (16, 32)], ids=["v3", "small-buckets"])
def test_far_ranges_in_larger_steps(far_block_n, config, bucket):
    """The far ranges' keys taken `far_block_n` at a time (more than the near tiles' BLOCK_N): a
    step may reach past the far-before range into the near one, whose keys it must mask."""
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

    args = _packed_inputs([1, 600, 1100, 2048, 77], 2, 64, torch.float16, *bucket, True, True, 3)
    far = saturation_distance(args[7].cpu())
    assert far < args[4]
    out = triton_disentangled_attention(*args, config=config, far=far, far_block_n=far_block_n)
    ref = disentangled_attention_ref(*args)
    assert _rel_err(out, ref) < REL_TOL[torch.float16]
    default = triton_disentangled_attention(*args, config=config, far=far)
    assert _rel_err(out, default) < REL_TOL[torch.float16]


def test_one_compiled_kernel_whatever_the_batch():
    """A server's steps differ in sequence count, lengths and token count: after the first call of
    each kernel (the Triton one, and on Hopper the warpgroup-MMA one), none of them compiles
    another variant (a request would wait for Triton)."""
    from crossenc.kernels import triton_disentangled_attention as module

    kernels = [module._disentangled_attention_fwd]
    if _wgmma():
        from crossenc.kernels import gluon_disentangled_attention

        kernels.append(gluon_disentangled_attention._wgmma_attention_fwd)

    def compiled() -> int:
        return sum(compiled_variants(k) for k in kernels)

    # Each variant's first call (on Hopper the warpgroup kernel's, without and with far ranges; else the
    # Triton kernel's 32- and 64-row tiles), then batches of both kinds.
    first_calls = [[7], [600]]
    batches = [[1], [300, 5], [1] * 17, [16] * 16, [33] * 40, [2] * 1500 + [511], [64] * 2000, [700, 3], [513] * 3]
    for i, lengths in enumerate(first_calls + batches):
        out, ref = _run(_packed_inputs(lengths, 2, 64, torch.float16, 256, 512, True, True, seed=i))
        assert _rel_err(out, ref) < REL_TOL[torch.float16], lengths[:3]
        if i == len(first_calls) - 1:
            first = compiled()
    assert compiled() == first


def _wgmma(dtype: torch.dtype = torch.float16) -> bool:
    """Whether this GPU runs the warpgroup-MMA kernel (Hopper and a verified Triton)."""
    from crossenc.kernels.disentangled_attention import uses_wgmma_kernel

    return uses_wgmma_kernel(64, dtype, torch.device("cuda"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, 512), min_size=1, max_size=6),
    heads=st.integers(1, 3),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    bucket=st.sampled_from(BUCKETS + [(-1, 512 + 64)]),
    terms=st.sampled_from([(True, True), (True, False), (False, True), (False, False)]),
    seed=st.integers(0, 2**16),
)
def test_wgmma_kernel_matches_reference(lengths, heads, dtype, bucket, terms, seed):
    """On Hopper, fp16/bf16 batches of up to 512 tokens with heads of 64 (every v3 model's) run the
    warpgroup-MMA kernel through the op: v3's log buckets, v2's linear positions (also past 512
    tokens of span), small buckets (whose far ranges start within 512 tokens), c2p or p2c alone.
    Each against the reference (`test_wgmma_far_ranges_match_reference`: up to 2,048 tokens)."""
    from crossenc.kernels.disentangled_attention import uses_wgmma_kernel

    if not _wgmma():
        pytest.skip("the warpgroup-MMA kernel runs on Hopper with a verified Triton")
    args = _packed_inputs(lengths, heads, 64, dtype, *bucket, *terms, seed)
    assert uses_wgmma_kernel(64, dtype, args[0].device)
    out, ref = _run(args)
    assert _rel_err(out, ref) < REL_TOL[dtype], (lengths, heads, dtype, bucket, terms)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=lengths_st,
    heads=st.integers(1, 3),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    bucket=st.sampled_from(BUCKETS + [(16, 32)]),
    terms=st.sampled_from([(True, True), (True, False), (False, True)]),
    seed=st.integers(0, 2**16),
)
def test_wgmma_far_ranges_match_reference(lengths, heads, dtype, bucket, terms, seed):
    """The warpgroup-MMA kernel with its far ranges (tile pairs past the rows' saturation take one
    position row per side, without the window), at every length up to 2,048 (the op hands it
    these batches on Hopper): v3's log buckets, v2's linear positions, small buckets; c2p or p2c
    alone. Against the reference."""
    from crossenc.kernels.disentangled_attention import WGMMA_TILE, query_tiles

    if not _wgmma():
        pytest.skip("the warpgroup-MMA kernel runs on Hopper with a verified Triton")
    from crossenc.kernels.gluon_disentangled_attention import wgmma_attention

    args = _packed_inputs(lengths, heads, 64, dtype, *bucket, *terms, seed)
    far = saturation_distance(args[7].cpu())
    out = wgmma_attention(*args, query_tiles(args[3], WGMMA_TILE), torch.empty_like(args[0]), far=far)
    ref = disentangled_attention_ref(*args)
    assert torch.isfinite(out).all()
    assert _rel_err(out, ref) < REL_TOL[dtype], (lengths, heads, dtype, bucket, terms)


@pytest.mark.parametrize("bucket", [(256, 512), (-1, 24), (16, 32)], ids=["v3", "v2-linear-24", "small-buckets"])
@pytest.mark.parametrize("terms", [(True, True), (True, False), (False, True)], ids=["both", "c2p", "p2c"])
def test_wgmma_far_ranges_on_their_edges(bucket, terms):
    """Query tiles with far keys before, after and on both sides, a last key tile that is partial,
    a sequence of exactly 18 tiles, short ones beside them; fp16 and bf16."""
    from crossenc.kernels.disentangled_attention import WGMMA_TILE, query_tiles

    if not _wgmma():
        pytest.skip("the warpgroup-MMA kernel runs on Hopper with a verified Triton")
    from crossenc.kernels.gluon_disentangled_attention import wgmma_attention

    for dtype in (torch.float16, torch.bfloat16):
        args = _packed_inputs([2048, 1, 700, 1152, 65, 1601], 2, 64, dtype, *bucket, *terms, 5)
        far = saturation_distance(args[7].cpu())
        out = wgmma_attention(*args, query_tiles(args[3], WGMMA_TILE), torch.empty_like(args[0]), far=far)
        assert _rel_err(out, disentangled_attention_ref(*args)) < REL_TOL[dtype], (dtype, bucket, terms)


def test_wgmma_kernel_agrees_with_the_triton_kernel():
    """The two CUDA kernels on one batch (v3, fp16 and bf16): within each dtype's tolerance of each
    other, and the Triton kernel is what an explicit ``config`` runs."""
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

    if not _wgmma():
        pytest.skip("the warpgroup-MMA kernel runs on Hopper with a verified Triton")
    for dtype in (torch.float16, torch.bfloat16):
        args = _packed_inputs([1, 64, 65, 130, 500, 512, 7], 12, 64, dtype, 256, 512, True, True, 3)
        far = saturation_distance(args[7].cpu())
        wgmma = triton_disentangled_attention(*args, far=far)
        triton_kernel = triton_disentangled_attention(*args, far=far, config=(32, 32, 1, 2))
        ref = disentangled_attention_ref(*args)
        assert _rel_err(wgmma, ref) < REL_TOL[dtype] and _rel_err(triton_kernel, ref) < REL_TOL[dtype]
        assert _rel_err(wgmma, triton_kernel) < REL_TOL[dtype]


def test_every_token_written_and_sequences_isolated():
    # Changing one sequence's tokens must leave the other sequences' outputs bit-identical.
    args = list(_packed_inputs([50, 200, 3], 2, 64, torch.float16, 256, 512, True, True, 1, fused=False))
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

    before = triton_disentangled_attention(*args)
    for i in range(3):
        args[i] = args[i].clone()
        args[i][50:250] = torch.randn_like(args[i][50:250])
    after = triton_disentangled_attention(*args)
    assert torch.equal(before[:50], after[:50]) and torch.equal(before[250:], after[250:])
    assert not torch.equal(before[50:250], after[50:250])


def test_bad_input_errors():
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

    args = list(_packed_inputs([10], 2, 64, torch.float16, 256, 512, True, True, 0))
    bad = list(args)
    bad[0] = torch.randn(10, 2, 48, device="cuda", dtype=torch.float16)
    bad[1] = bad[2] = bad[0]
    with pytest.raises(ValueError, match="head dim"):
        triton_disentangled_attention(*bad)
    bad = list(args)
    bad[7] = args[7][:-1]
    with pytest.raises(ValueError, match="rel_index"):
        triton_disentangled_attention(*bad)
    bad = list(args)
    bad[3] = args[3].long()
    with pytest.raises(ValueError, match="cu_seqlens"):
        triton_disentangled_attention(*bad)
    with pytest.raises(ValueError, match="tiles must be query_tiles"):
        triton_disentangled_attention(*args, tiles=torch.zeros(5, dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError, match="far must be within"):
        triton_disentangled_attention(*args, far=0)
    with pytest.raises(ValueError, match="far_block_n must be a power of two"):
        triton_disentangled_attention(*args, far_block_n=48)
    with pytest.raises(ValueError, match="out must be"):
        triton_disentangled_attention(*args, out=torch.empty(10, 2, 64, device="cuda", dtype=torch.float32))


@pytest.mark.parametrize("lengths", [[70, 600, 3], [70, 300, 3]], ids=["past-512", "short"])
def test_output_written_where_the_caller_asks(lengths):
    """Into a strided view the caller allocated (vLLM's compiled graphs hand the attention a
    buffer of the graph before it): the same numbers, nothing outside the view touched (both
    kernels: the batch of up to 512 tokens runs the warpgroup-MMA one on Hopper)."""
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

    args = _packed_inputs(lengths, 2, 64, torch.float16, 256, 512, True, True, 0)
    expected = triton_disentangled_attention(*args)
    buffer = torch.full((sum(lengths), 3, 64), float("nan"), device="cuda", dtype=torch.float16)
    out = triton_disentangled_attention(*args, out=buffer[:, 1:])
    assert out.data_ptr() == buffer[:, 1:].data_ptr()
    assert torch.equal(buffer[:, 1:], expected) and buffer[:, 0].isnan().all()


@pytest.mark.parametrize("lengths", [[3, 70, 1, 33], [3, 700, 1, 513]], ids=["short", "past-512"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_tiles_made_once_per_forward_give_the_same_output(lengths, dtype):
    """The model makes the query tiles once per forward with the rows of the kernel that runs
    (`query_tile_rows`: 64 for the warpgroup-MMA kernel and past 512 tokens in fp16/bf16, else 32)."""
    from crossenc.kernels.disentangled_attention import query_tile_rows, query_tiles
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

    args = _packed_inputs(lengths, 4, 64, dtype, 256, 512, True, True, 1)
    far = saturation_distance(args[7].cpu())
    alone = triton_disentangled_attention(*args, far=far)
    rows = query_tile_rows(64, dtype, args[4], args[0].device)
    wgmma = dtype != torch.float32 and _wgmma(dtype)
    assert rows == (64 if dtype != torch.float32 and (max(lengths) > 512 or wgmma) else 32)
    given = triton_disentangled_attention(*args, far=far, tiles=query_tiles(args[3], rows))
    assert torch.equal(alone, given)
    ref = disentangled_attention_ref(*args)
    assert _rel_err(given, ref) < REL_TOL[dtype]


def _hf_and_ours(config, logit_gain):
    import transformers

    from crossenc.model_executor.models import deberta, deberta_v2

    v1 = config.model_type == "deberta"
    name = "DebertaForSequenceClassification" if v1 else "DebertaV2ForSequenceClassification"
    torch.manual_seed(0)
    hf = getattr(transformers, name)(config).eval().cuda()
    with torch.no_grad():
        hf.classifier.weight.mul_(logit_gain)
    ours = getattr(deberta if v1 else deberta_v2, name)(config=config)
    ours.load_weights(hf.state_dict().items())
    return hf, ours.cuda().eval()


def _packed_batch(lengths, vocab):
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]
    padded = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for b, x in enumerate(ids):
        padded[b, : len(x)] = x
        mask[b, : len(x)] = 1
    packed = torch.cat(ids)
    positions = torch.cat([torch.arange(n) for n in lengths])
    return padded.cuda(), mask.cuda(), packed.cuda(), positions.cuda()


VARIANTS = {
    "v3": dict(position_buckets=256, max_relative_positions=512, pos_att_type=["p2c", "c2p"],
               share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False),
    "v2-c2p": dict(position_buckets=-1, max_relative_positions=-1, pos_att_type=["c2p"],
                   share_att_key=False, position_biased_input=True),
    # DeBERTa v1 (deberta-base): linear relative positions through the same kernel.
    "v1": dict(max_relative_positions=-1, pos_att_type=["c2p", "p2c"], position_biased_input=False),
    # v3 past 512 tokens: the far ranges, and in fp16 the 64-row tiles with the model's query tiles.
    "v3-1100-tokens": dict(position_buckets=256, max_relative_positions=512, pos_att_type=["p2c", "c2p"],
                           share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("logit_gain", [1.0, 50.0])
def test_model_matches_transformers(variant, logit_gain):
    """crossenc's packed model (the kernel on CUDA) against transformers' padded eager model.

    fp32: rounding only. fp16 against HF fp32: within 2e-3 at the random-init logit scale
    (|logit| up to ~0.25), and at gain 50 (|logit| up to ~13, where fp16 itself moves logits
    by ~1e-2) within 3x transformers' own fp16 error (measured on an H100: 2.4x for v3).
    """
    from transformers import DebertaConfig, DebertaV2Config

    config = (DebertaConfig if variant == "v1" else DebertaV2Config)(
        vocab_size=1000, hidden_size=768, num_hidden_layers=3, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, relative_attention=True,
        type_vocab_size=0, num_labels=1, hidden_act="gelu", **VARIANTS[variant],
    )
    lengths = [5, 1100, 77, 1, 600] if variant == "v3-1100-tokens" else [5, 512, 77, 1, 300]
    padded, mask, packed, positions = _packed_batch(lengths, config.vocab_size)
    hf, ours = _hf_and_ours(config, logit_gain)
    with torch.no_grad():
        ref = hf(input_ids=padded, attention_mask=mask).logits.float()
        got32 = ours.logits(ours(packed, positions), positions).float()
        hf16 = hf.half()(input_ids=padded, attention_mask=mask).logits.float()
        ours.half()
        got16 = ours.logits(ours(packed, positions), positions).float()
    assert got32.shape == ref.shape == (len(lengths), 1)
    err32, err16, hf_err16 = ((x - ref).abs().max().item() for x in (got32, got16, hf16))
    print(f"{variant} gain {logit_gain}: |logit| max {ref.abs().max().item():.3f}, dlogit fp32 {err32:.2e}, "
          f"fp16 {err16:.2e} (transformers fp16: {hf_err16:.2e})")
    assert err32 <= 1e-4
    if logit_gain == 1.0:
        assert err16 <= 2e-3
    else:
        assert err16 <= 3.0 * hf_err16
