"""Fused varlen disentangled attention (DeBERTa c2p/p2c) in Triton.

Computes, for every packed sequence of a [T, H, D] batch (boundaries in ``cu_seqlens``),

    score[i, j] = (q_i.k_j + q_i.pos_key[rel(i-j)] + k_j.pos_query[rel(i-j)]) * scale
    out_i = softmax_j(score[i, :]) @ v

with FlashAttention's online softmax: no [B, H, L, L] tensor and no per-token position table.

How the position terms are formed: a query tile [i0, i0+BM) and a key tile [j0, j0+BN) meet
only BM+BN-1 relative distances d = i-j. The kernel loads the position rows of those distances
(a window of WIN rows of pos_key / pos_query, gathered through ``rel_index``), multiplies them
on the tensor cores (q @ window^T is [BM, WIN]; window @ k^T is [WIN, BN]) and picks each
pair's entry with ``tl.gather`` at column/row i-j+BN-1. That costs two extra tile products
per step, against writing and re-reading two [T, H, 2S] tables through device memory (measured
on an H100: 0.95 ms against 1.18 ms for the table variant on v3-base rerank-short, one layer).

Far from the diagonal the window is redundant: past the buckets (v3: |i-j| >= 512; v2/v1
linear positions: past max_relative_positions) each side's distances share one position row,
so for a key tile whose every distance to the query tile is that far, c2p is one value per query
row (q_i . pos_key[row]) and p2c one per key (k_j . pos_query[row]), which the QK product takes
with the row added to the query tile once per range ((q_i + pos_query[row]) . k_j): no window,
no gathers, no second product. Each program walks its key tiles in three ranges (far before,
near, far after), split at `far` (`saturation_distance`, given by the caller); the far ranges
may step through their keys in larger tiles (`far_block_n`).
Where no tile pair can be that far apart (`has_far_ranges`: every v3 batch of up to 512 tokens)
the far ranges are compiled out (HAS_FAR): one warp's 32x32 step is then 14 % shorter and spills
nothing (sm_90, Triton 3.6; benchmarks/kernel_resources.py), and the op 25 % faster on an H100.
Two other treatments of the near tiles were timed slower on an H200 and dropped
(docs/benchmarks.md): products over only the position rows a tile pair meets, and per-tile
position tables written by a first kernel.

Programs are laid out over query tiles, not over (sequence, tile) pairs: ``TILES`` holds each
sequence's first tile (a prefix sum of ceil(length / BLOCK_M), made on the device), and a
program finds its sequence by binary search. The grid, cdiv(T, BLOCK_M) + B tiles, is known
from shapes alone, so the launch needs no host copy of the lengths: vLLM can capture it in a
CUDA graph, and an over-sized ``cu_seqlens`` (empty sequences at its end) costs nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from crossenc.kernels import gluon_kernel_failed, gluon_kernel_has_failed
from crossenc.kernels.disentangled_attention import (
    KERNEL_DTYPES,
    KERNEL_HEAD_SIZES,
    WGMMA_TILE,
    has_far_ranges,
    query_tile_rows,
    query_tiles,
    uses_wgmma_kernel,
)

_LOG2E = 1.4426950408889634


@triton.jit
def _gather(x, pick, AXIS: tl.constexpr, PAIRS: tl.constexpr):
    """tl.gather(x, pick, axis=AXIS), PAIRS 0. PAIRS 1 and 2 (16-bit x): two neighbours along AXIS
    travel packed in one 32-bit value, so the gather moves half as many values, and the half that
    `pick`'s parity names is kept: by a select (1), or by PTX's `prmt.rc16` (2, CUDA), whose
    selector is `pick` itself (its bit 0); on CUDA one `mov.b32` packs each pair. Triton gathers
    a [32, 64] tile along the 64 wide axis with two shuffles per output, each moving one 16-bit
    value; packed, with one."""
    if PAIRS == 0:
        out = tl.gather(x, pick, axis=AXIS)
    else:
        bits = x.to(tl.int16, bitcast=True)
        if AXIS == 1:
            even, odd = tl.split(tl.reshape(bits, [x.shape[0], x.shape[1] // 2, 2]))
        else:
            even, odd = tl.split(tl.permute(tl.reshape(bits, [x.shape[0] // 2, 2, x.shape[1]]), (0, 2, 1)))
        if PAIRS == 2:
            packed = tl.inline_asm_elementwise("mov.b32 $0, {$1, $2};", "=r,h,h", [even, odd], dtype=tl.int32,
                                               is_pure=True, pack=1)
            both = tl.gather(packed, pick >> 1, axis=AXIS)
            one = tl.inline_asm_elementwise("prmt.b32.rc16 $0, $1, 0, $2;", "=r,r,r", [both, pick],
                                            dtype=tl.int32, is_pure=True, pack=1)
        else:
            both = tl.gather((even.to(tl.int32) & 0xFFFF) | (odd.to(tl.int32) << 16), pick >> 1, axis=AXIS)
            one = tl.where((pick & 1) == 1, both >> 16, both)
        out = one.to(tl.int16).to(x.dtype, bitcast=True)
    return out


@triton.jit
def _gather_halves(lo, hi, col, upper, PAIRS: tl.constexpr):
    """Column `col` of `hi` where `upper`, else of `lo`, per element: the gather of a [M, 2N] window
    whose columns [0, N) are `lo` and [N, 2N) are `hi`, without forming the window. With 16-bit
    halves (PAIRS 1, 2) one gather moves both halves' values packed, and `upper` picks one, as
    `_gather` does for neighbours."""
    if PAIRS == 0:
        both = tl.reshape(tl.join(lo, hi), [lo.shape[0], 2 * lo.shape[1]])  # column 2c: lo's c; 2c+1: hi's
        out = tl.gather(both, 2 * col + upper, axis=1)
    else:
        lo_bits = lo.to(tl.int16, bitcast=True)
        hi_bits = hi.to(tl.int16, bitcast=True)
        if PAIRS == 2:
            packed = tl.inline_asm_elementwise("mov.b32 $0, {$1, $2};", "=r,h,h", [lo_bits, hi_bits],
                                               dtype=tl.int32, is_pure=True, pack=1)
            both = tl.gather(packed, col, axis=1)
            one = tl.inline_asm_elementwise("prmt.b32.rc16 $0, $1, 0, $2;", "=r,r,r", [both, upper],
                                            dtype=tl.int32, is_pure=True, pack=1)
        else:
            both = tl.gather((lo_bits.to(tl.int32) & 0xFFFF) | (hi_bits.to(tl.int32) << 16), col, axis=1)
            one = tl.where(upper == 1, both >> 16, both)
        out = one.to(tl.int16).to(lo.dtype, bitcast=True)
    return out


@triton.jit
def _rel_rows(REL, dist, max_seqlen):
    """rel_index's entries for distances `dist`. Distances outside +-(max_seqlen-1) only occur for
    masked pairs: they are clamped to stay inside rel_index."""
    dist = tl.minimum(tl.maximum(dist, 1 - max_seqlen), max_seqlen - 1)
    return tl.load(REL + (dist + max_seqlen - 1))


@triton.jit
def _attend(
    q, acc, m_i, l_i, lo, hi, limit, m0, start, head,
    K, V, PK, PQ, REL,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_pkr, stride_pkh, stride_pqr, stride_pqh,
    max_seqlen, qk_scale_log2, c2p_far,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WIN: tl.constexpr,
    HAS_C2P: tl.constexpr,
    HAS_P2C: tl.constexpr,
    PRECISION: tl.constexpr,
    FAR: tl.constexpr,
    PAIRS: tl.constexpr,
    CARRY: tl.constexpr,
):
    """The keys [lo, hi), BLOCK_N at a time, into the online softmax of a query tile; keys from
    `limit` on are masked (the sequence's end, or the end of a range a last step overshoots). FAR: every
    distance of each tile pair maps to one position row, whose c2p is `c2p_far` per query row and
    whose p2c is in `q` (`_far_terms`), without the window. CARRY (WIN == 2 * BLOCK_N): c2p's
    window is formed in halves, and the half of one step that the next step's window shares
    (its distances shift by BLOCK_N) is carried to it instead of being multiplied again."""
    offs_i = tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    use_carry: tl.constexpr = CARRY and HAS_C2P and not FAR
    if use_carry:
        # The first step's upper half: window rows BLOCK_N.. of key tile `lo`.
        rel_first = _rel_rows(REL, (m0 - lo + 1) + offs_j, max_seqlen)
        pk_first = tl.load(PK + rel_first[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
        c2p_upper = tl.dot(q, tl.trans(pk_first), input_precision=PRECISION).to(q.dtype)  # [BLOCK_M, BLOCK_N]
        window_col = offs_i[:, None] - offs_j[None, :] + (BLOCK_N - 1)
        upper = (window_col >= BLOCK_N).to(tl.int32)
        half_col = window_col - upper * BLOCK_N
    else:
        c2p_upper = tl.zeros([BLOCK_M, BLOCK_N], dtype=q.dtype)
    for n0 in range(lo, hi, BLOCK_N):
        rows_k = n0 + offs_j
        mask_k = rows_k < limit
        tok_k = (start + rows_k).to(tl.int64)
        k = tl.load(
            K + tok_k[:, None] * stride_kt + head * stride_kh + offs_d[None, :],
            mask=mask_k[:, None], other=0.0,
        )
        if (HAS_C2P or HAS_P2C) and not FAR:
            # Window row w holds distance (m0 - n0) - (BLOCK_N - 1) + w; pair (i, j) reads
            # row i - j + BLOCK_N - 1.
            offs_w = tl.arange(0, WIN)
            pick = offs_i[:, None] - offs_j[None, :] + (BLOCK_N - 1)
            if HAS_P2C or not use_carry:
                rel = _rel_rows(REL, (m0 - n0 - (BLOCK_N - 1)) + offs_w, max_seqlen)
            # c2p + p2c, the QK product's initial value. Both terms are gathered in the input
            # dtype (half the register shuffles of fp32; the gathers were ~40 % of the op before pairs) and
            # summed in it, as transformers' fp16/bf16 forward does. Added before the product
            # rather than to it, so that the softmax is compiled once: one warp's step is 16 %
            # shorter (benchmarks/kernel_resources.py).
            if use_carry:
                # Window rows 0..BLOCK_N-1 are new; rows BLOCK_N.. are the previous step's 0..BLOCK_N-1.
                rel_new = _rel_rows(REL, (m0 - n0 - (BLOCK_N - 1)) + offs_j, max_seqlen)
                pk = tl.load(PK + rel_new[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
                c2p_lower = tl.dot(q, tl.trans(pk), input_precision=PRECISION).to(q.dtype)  # [BLOCK_M, BLOCK_N]
                pos = _gather_halves(c2p_lower, c2p_upper, half_col, upper, PAIRS)
                c2p_upper = c2p_lower
            elif HAS_C2P:
                pk = tl.load(PK + rel[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
                c2p = tl.dot(q, tl.trans(pk), input_precision=PRECISION)  # [BLOCK_M, WIN]
                pos = _gather(c2p.to(q.dtype), pick, 1, PAIRS)
            if HAS_P2C:
                pq = tl.load(PQ + rel[:, None] * stride_pqr + head * stride_pqh + offs_d[None, :])
                p2c = tl.dot(pq, tl.trans(k), input_precision=PRECISION)  # [WIN, BLOCK_N]
                p2c = _gather(p2c.to(k.dtype), pick, 0, PAIRS)
                pos = pos + p2c if HAS_C2P else p2c
            s = tl.dot(q, tl.trans(k), pos.to(tl.float32), input_precision=PRECISION)
        else:
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # FAR: q holds the p2c row (`_far_terms`)
            if FAR and HAS_C2P:
                s += c2p_far[:, None]
        if BLOCK_N >= 64:
            # Only a range's last key tile is partial: the other steps skip the mask (long-2k's op
            # 0.92 -> 0.89 ms at 64x64 on an H100); one warp's 32x32 step is 3-5 % slower with the branch.
            if n0 + BLOCK_N > limit:
                s = tl.where(mask_k[None, :], s, -float("inf"))
        else:
            s = tl.where(mask_k[None, :], s, -float("inf"))

        # The running maximum in unscaled units: the scale joins each exponent in one multiply-add.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2((m_i - m_new) * qk_scale_log2)
        p = tl.math.exp2(s * qk_scale_log2 - (m_new * qk_scale_log2)[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            V + tok_k[:, None] * stride_vt + head * stride_vh + offs_d[None, :],
            mask=mask_k[:, None], other=0.0,
        )
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _far_terms(q, PK, PQ, REL, row, head, stride_pkr, stride_pkh, stride_pqr, stride_pqh,
               BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr):
    """The position terms of one saturated side (`row`: its entry of rel_index): c2p per query
    row of the tile, and the query tile with that row of pos_query added, so that one product
    with a key gives c2c + p2c (k . q + k . pq)."""
    offs_d = tl.arange(0, HEAD_DIM)
    rel = tl.load(REL + row)
    c2p = tl.zeros([BLOCK_M], dtype=tl.float32)
    q_far = q
    if HAS_C2P:
        pk = tl.load(PK + rel * stride_pkr + head * stride_pkh + offs_d).to(tl.float32)
        c2p = tl.sum(q.to(tl.float32) * pk[None, :], axis=1)
    if HAS_P2C:
        pq = tl.load(PQ + rel * stride_pqr + head * stride_pqh + offs_d).to(tl.float32)
        q_far = (q.to(tl.float32) + pq[None, :]).to(q.dtype)
    return c2p, q_far


# The batch's sizes vary from one engine step to the next: Triton must not compile a variant per
# value (it specializes integers equal to 1 or divisible by 16), or a server's first requests of
# a new shape wait for a compilation. One kernel per dtype, head size, terms and tile config.
@triton.jit(do_not_specialize=["num_seqs", "max_seqlen", "search_steps", "far"])
def _disentangled_attention_fwd(
    Q, K, V, O, PK, PQ, REL, CU, TILES,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_pkr, stride_pkh, stride_pqr, stride_pqh,
    num_seqs, max_seqlen, search_steps, far, qk_scale_log2,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WIN: tl.constexpr,
    HAS_C2P: tl.constexpr,
    HAS_P2C: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_FAR: tl.constexpr,
    FAR_BLOCK_N: tl.constexpr,
    PAIRS: tl.constexpr,
    CARRY: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    if tile >= tl.load(TILES + num_seqs):
        return
    # The sequence of this tile: the last seq with TILES[seq] <= tile (empty ones share a value
    # with the next, so the last is the one that has tiles).
    lo = tile * 0
    hi = lo + num_seqs
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        right = tl.load(TILES + mid) <= tile
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    seq = lo
    start = tl.load(CU + seq)
    length = tl.load(CU + seq + 1) - start
    m0 = (tile - tl.load(TILES + seq)) * BLOCK_M

    offs_i = tl.arange(0, BLOCK_M)  # query rows local to the tile
    offs_d = tl.arange(0, HEAD_DIM)
    rows_q = m0 + offs_i
    mask_q = rows_q < length
    tok_q = (start + rows_q).to(tl.int64)
    q = tl.load(
        Q + tok_q[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=mask_q[:, None], other=0.0,
    )

    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key tiles in three ranges. From distance `far` on, each side's distances share one
    # position row (every one past the buckets, `saturation_distance`): key tiles whose every
    # distance to this query tile is >= far (the keys well before it) or <= -far (well after)
    # take the position terms as a per-row and a per-key vector; the tiles between, the window.
    near_lo = 0
    near_hi = length
    if HAS_FAR:  # compiled out where no tile pair is that far apart (`has_far_ranges`; v3 up to 512 tokens)
        if HAS_C2P or HAS_P2C:
            before = m0 - (BLOCK_N - 1) - far  # the last key tile start whose distances are all >= far
            near_lo = tl.where(before >= 0, (before // BLOCK_N + 1) * BLOCK_N, 0)
            near_hi = tl.minimum(tl.cdiv(m0 + BLOCK_M - 1 + far, BLOCK_N) * BLOCK_N, length)
        if near_lo > 0:
            c2p_far, q_far = _far_terms(q, PK, PQ, REL, 2 * max_seqlen - 2, head, stride_pkr, stride_pkh,
                                        stride_pqr, stride_pqh, BLOCK_M, HEAD_DIM, HAS_C2P, HAS_P2C)
            # Steps of FAR_BLOCK_N may overshoot near_lo (a multiple of BLOCK_N): mask there. Steps of
            # BLOCK_N end on it, so they mask at the sequence's end as the near range does (which
            # compiles to the same code as before far_block_n, kernel_resources.py).
            acc, m_i, l_i = _attend(
                q_far, acc, m_i, l_i, 0, near_lo, length if FAR_BLOCK_N == BLOCK_N else near_lo, m0, start, head,
                K, V, PK, PQ, REL,
                stride_kt, stride_kh, stride_vt, stride_vh, stride_pkr, stride_pkh, stride_pqr, stride_pqh,
                max_seqlen, qk_scale_log2, c2p_far,
                HEAD_DIM, BLOCK_M, FAR_BLOCK_N, WIN, HAS_C2P, HAS_P2C, PRECISION, True, PAIRS, False)
    c2p_none = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend(
        q, acc, m_i, l_i, near_lo, near_hi, length, m0, start, head, K, V, PK, PQ, REL,
        stride_kt, stride_kh, stride_vt, stride_vh, stride_pkr, stride_pkh, stride_pqr, stride_pqh,
        max_seqlen, qk_scale_log2, c2p_none,
        HEAD_DIM, BLOCK_M, BLOCK_N, WIN, HAS_C2P, HAS_P2C, PRECISION, False, PAIRS, CARRY)
    if HAS_FAR:
        if near_hi < length:
            c2p_far, q_far = _far_terms(q, PK, PQ, REL, 0, head, stride_pkr, stride_pkh,
                                        stride_pqr, stride_pqh, BLOCK_M, HEAD_DIM, HAS_C2P, HAS_P2C)
            acc, m_i, l_i = _attend(
                q_far, acc, m_i, l_i, near_hi, length, length, m0, start, head, K, V, PK, PQ, REL,
                stride_kt, stride_kh, stride_vt, stride_vh, stride_pkr, stride_pkh, stride_pqr, stride_pqh,
                max_seqlen, qk_scale_log2, c2p_far,
                HEAD_DIM, BLOCK_M, FAR_BLOCK_N, WIN, HAS_C2P, HAS_P2C, PRECISION, True, PAIRS, False)

    acc = acc / l_i[:, None]
    tl.store(
        O + tok_q[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        acc.to(O.dtype.element_ty),
        mask=mask_q[:, None],
    )


def _check_qkv(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    if x.ndim != 3 or x.shape != like.shape:
        raise ValueError(f"{name} must have shape [T, H, D] = {tuple(like.shape)}, got {tuple(x.shape)}")
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(f"{name} must match q in dtype and device ({like.dtype}, {like.device})")


def _check_pos(name: str, x: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    if x is None:
        return None
    _, heads, dim = q.shape
    if x.ndim != 3 or x.shape[1:] != (heads, dim):
        raise ValueError(f"{name} must have shape [2S, {heads}, {dim}], got {tuple(x.shape)}")
    if x.dtype != q.dtype or x.device != q.device:
        raise ValueError(f"{name} must match q in dtype and device ({q.dtype}, {q.device})")
    return x if x.stride(-1) == 1 else x.contiguous()


def default_config(head_dim: int, dtype: torch.dtype, max_seqlen: int = 512) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages), from benchmarks/attention_kernel.py --sweep.

    Small tiles win up to 512 tokens: the window products and gathers grow with BM+BN-1 per
    tile, and one warp per 32x32 tile was the fastest there. Past 512 tokens (v3: the far
    ranges), 64x64 tiles of four warps took the v3-base long-2k op from 1.16 to 0.96 ms on an H100
    with one stage, and to 0.91 ms with two and c2p's half window carried (`carries_c2p`;
    docs/benchmarks.md). `query_tile_rows` gives BLOCK_M.
    """
    if dtype == torch.float32:
        return 32, 32, 4, 1
    if head_dim <= 64:
        return (64, 64, 4, 2) if query_tile_rows(head_dim, dtype, max_seqlen) == 64 else (32, 32, 1, 2)
    return 32, 32, 4, 2


def carries_c2p(block_m: int, block_n: int, carry_c2p: bool | None = None) -> bool:
    """The kernel's CARRY: whether it carries c2p's half window from one key step to the next.

    Only where the window is two key tiles wide; there ``carry_c2p``, or by default (None) for
    64-key tiles. On an H100 (v3-base, fp16, one layer's op) the carry made four warps' 64x64 tiles
    with two stages the fastest past 512 tokens (long-2k 0.979 -> 0.906 ms, against the whole
    window in one stage), and one warp's 32x32 tiles slower (rerank-short 0.517 -> 0.606 ms): there
    the two halves' registers spill. docs/benchmarks.md.
    """
    if triton.next_power_of_2(block_m + block_n - 1) != 2 * block_n:
        return False
    return block_n >= 64 if carry_c2p is None else carry_c2p


def triton_disentangled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    pos_key: torch.Tensor | None,
    pos_query: torch.Tensor | None,
    rel_index: torch.Tensor,
    scale: float,
    *,
    config: tuple[int, int, int, int] | None = None,
    tiles: torch.Tensor | None = None,
    far: int | None = None,
    far_block_n: int | None = None,
    carry_c2p: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Varlen disentangled attention; q/k/v [T, H, D] -> out [T, H, D] (dtype of q).

    ``cu_seqlens`` int32 [B+1]; ``pos_key``/``pos_query`` [2S, H, D] or None (c2p / p2c off);
    ``rel_index`` int32 or int64 [2*max_seqlen-1] maps distance i-j to a position row (offset
    max_seqlen-1). ``config`` overrides (BLOCK_M, BLOCK_N, num_warps, num_stages). ``tiles``:
    ``query_tiles(cu_seqlens, query_tile_rows(D, dtype, max_seqlen, q.device))``, made once per
    forward by the caller (else here, per call; also with a ``config`` of other rows). Without a
    ``config``, batches that `uses_wgmma_kernel` names run the warpgroup-MMA kernel of
    gluon_disentangled_attention.py (Hopper, fp16/bf16, heads of 64).
    ``far``: ``saturation_distance(rel_index)``, the distance from which each side's distances
    share one position row (tile pairs beyond it skip the window); None: every tile pair takes
    the window. ``far_block_n``: keys per step in those far ranges (a power of two, at least 16;
    None: BLOCK_N, which is 64 in the default tiles past 512 tokens), which need no window and
    so can take larger steps. ``carry_c2p``: where the window is two key tiles wide, multiply only
    its new half of c2p at each key step and carry the other from the step before (False: the
    whole window each step; None: on for 64-key tiles; `carries_c2p`). ``out``: where to write the result ([T, H, D], q's dtype and device, any token
    and head stride), else a new tensor.
    """
    if q.ndim != 3:
        raise ValueError(f"q must have shape [T, H, D], got {tuple(q.shape)}")
    _check_qkv("k", k, q)
    _check_qkv("v", v, q)
    total, heads, dim = q.shape
    if dim not in KERNEL_HEAD_SIZES:
        raise ValueError(f"head dim must be 32, 64 or 128, got {dim}")
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError("cu_seqlens must be a 1-D int32 tensor with B+1 entries")
    if max_seqlen < 1:
        raise ValueError(f"max_seqlen must be >= 1, got {max_seqlen}")
    pos_key = _check_pos("pos_key", pos_key, q)
    pos_query = _check_pos("pos_query", pos_query, q)
    if (pos_key is not None or pos_query is not None) and rel_index.numel() != 2 * max_seqlen - 1:
        raise ValueError(
            f"rel_index must have 2*max_seqlen-1 = {2 * max_seqlen - 1} entries, got {rel_index.numel()}"
        )
    if far is None:
        far = max_seqlen
    elif not 1 <= far <= max_seqlen:
        raise ValueError(f"far must be within 1..max_seqlen ({max_seqlen}), got {far}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    rel_index = rel_index.to(torch.int32)  # 2*max_seqlen-1 entries: int32 halves the kernel's index loads
    cu_seqlens = cu_seqlens.contiguous()

    if out is None:
        out = torch.empty((total, heads, dim), dtype=q.dtype, device=q.device)
    elif out.shape != (total, heads, dim) or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must be [T, H, D] = {(total, heads, dim)} of q's dtype and device with "
                         f"unit stride in D, got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
    batch = cu_seqlens.numel() - 1
    if far_block_n is not None and (far_block_n < 16 or far_block_n & (far_block_n - 1)):
        raise ValueError(f"far_block_n must be a power of two >= 16, got {far_block_n}")
    if tiles is not None and (tiles.shape != (batch + 1,) or tiles.dtype != torch.int32):
        raise ValueError(f"tiles must be query_tiles(cu_seqlens, rows): int32 [{batch + 1}], got "
                         f"{tiles.dtype} {tuple(tiles.shape)}")
    if total == 0 or batch == 0:
        return out
    wgmma = uses_wgmma_kernel(dim, q.dtype, q.device)
    if config is None and wgmma:
        # Hopper, fp16/bf16, heads of 64: the warpgroup-MMA kernel (gluon_disentangled_attention.py).
        from crossenc.kernels.gluon_disentangled_attention import wgmma_attention

        if tiles is None:
            tiles = query_tiles(cu_seqlens, WGMMA_TILE)
        try:
            return wgmma_attention(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale,
                                   tiles, out, far=far)
        except Exception as err:  # raised before the launch (a Triton whose Gluon compiles it otherwise)
            gluon_kernel_failed("gluon_disentangled_attention", err)  # the Triton kernel from now on
            wgmma = False
    block_m, block_n, num_warps, num_stages = config or default_config(dim, q.dtype, max_seqlen)
    # Without a tile pair that far apart the far code is compiled out: one warp's step 1,692 -> 1,462
    # instructions on sm_90, v3-base rerank-short op 0.68 -> 0.51 ms on an H100 (docs/benchmarks.md).
    has_far = has_far_ranges(far, max_seqlen, block_m, block_n)
    if far_block_n is None or not has_far:  # no far ranges: one compiled variant
        far_block_n = block_n
    win = triton.next_power_of_2(block_m + block_n - 1)
    pk = pos_key if pos_key is not None else q  # placeholder pointer, never read
    pq = pos_query if pos_query is not None else q
    # Each sequence's first query tile, on the device: no lengths come back to the host.
    # The caller's tiles have `query_tile_rows(dim, dtype, max_seqlen, device)` rows.
    # After the warpgroup kernel failed, a caller's tiles may still be its 64-row ones.
    if (tiles is None or block_m != (WGMMA_TILE if wgmma else query_tile_rows(dim, q.dtype, max_seqlen))
            or gluon_kernel_has_failed("gluon_disentangled_attention")):
        tiles = query_tiles(cu_seqlens, block_m)
    grid = (triton.cdiv(total, block_m) + batch, heads)
    _disentangled_attention_fwd[grid](
        q, k, v, out, pk, pq, rel_index, cu_seqlens, tiles,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        pk.stride(0), pk.stride(1), pq.stride(0), pq.stride(1),
        # Binary-search steps that find a tile's sequence among the batch's.
        batch, max_seqlen, batch.bit_length(), far, float(scale) * _LOG2E,
        HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, WIN=win,
        HAS_C2P=pos_key is not None, HAS_P2C=pos_query is not None,
        # fp32 inputs get exact fp32 products; fp16/bf16 ignore the setting.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        HAS_FAR=has_far, FAR_BLOCK_N=far_block_n,
        # The window's gathers move 16-bit values in pairs (`_gather`), packed and unpacked through
        # PTX on CUDA: one warp's key step 1,644 -> 1,462 instructions on sm_90, two warps'
        # 1,133 -> 765 (benchmarks/kernel_resources.py); v3-base long-2k forward +18 % on an H100.
        PAIRS=0 if q.dtype == torch.float32 else 2 if q.is_cuda and torch.version.hip is None else 1,
        CARRY=carries_c2p(block_m, block_n, carry_c2p),
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
