"""Disentangled attention on Hopper's warpgroup MMA (wgmma), in Gluon.

The same contract as `triton_disentangled_attention` for fp16/bf16 batches with heads of 64 (every
v3 model's) on sm_90, at any length. One warpgroup (4 warps) per 64x64 tile pair: each product's B
operand is read from shared memory once per 64 query rows, where the Triton kernel's one-warp 32x32
tiles read theirs once per 32 and gather the window's entries through register shuffles.

Each query tile walks its key tiles in three ranges, as the Triton kernel does: near the diagonal
the window (below); where every distance of a tile pair is past the position rows' saturation
(`far`: v3 from ~512 on) the far ranges (`_far_range`), whose c2p is one value per query row and
p2c one per key, taken by the QK product with the saturated row of pos_query added to the queries.
Where no tile pair is that far apart (`has_far_ranges`; v3 up to 575 tokens) the far code is
compiled out: 235 registers and 90 KiB of shared memory; with it, 250 and 98 KiB (far steps of
393-433 instructions per warp against the near step's 807; `benchmarks/kernel_resources.py
--wgmma`). Two programs (8 warps) per SM either way. On an H200 (v3-base, 12 heads, fp16, one
layer's op): long-2k 0.520 ms against the Triton kernel's 0.900, where torch's FlashAttention
without position terms takes 0.309 (docs/benchmarks.md).

Keys are taken in reverse order within each key tile (local j' is key n0 + 63 - j'), so that a tile
pair's window row x = i + j' holds distance m0 - n0 - 63 + x (127 distances, a window of 128 rows):

    c2p[i, j'] = C[i, i + j'],   C = q @ window_k^T   [64, 128]
    p2c[i, j'] = T[j', i + j'],  T = k @ window_q^T   [64, 128]

Each product is stored in the input dtype with row stride 128 + 8 and read back through a padded
view of row stride 128 + 8 + 1 (view[a, b] = X[a, a + b]): the skew costs one 16-bit shared load per
score element, in the accumulator's own layout (its first two register bases swapped, so that no
read is a misaligned pair). The stores' rows fall in distinct banks (stride 68 words), the skewed
reads' in at most two. c2p + p2c, summed in the input dtype as transformers does, is the QK
product's initial value; P stays in registers as the PV product's A operand.

Consecutive key tiles' c2p windows overlap by half: step t+1's window rows 64..127 are step t's rows
0..63. Without far ranges the kernel loads and multiplies only the 64 new rows per step (a 64x64
product instead of 64x128) and carries the other half in registers, in the input dtype, to the
store: the same values, 17 % less MMA work per step, half the pk copies (207 -> 235 registers). On
an H100 the v3 forward's rerank-long went 1.5-2 % faster with it, rerank-short no faster
(docs/benchmarks.md).

Each buffer's next load is issued as soon as the step is done with it (the windows after the
position products, k after QK, v after PV). On an H100 (v3-base, 12 heads, fp16, one layer's op,
`benchmarks/attention_kernel.py`): rerank-short 0.360 against the Triton kernel's 0.520 ms,
rerank-long 0.349 against 0.573 (docs/benchmarks.md).
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, warpgroup_mma

from crossenc.kernels.disentangled_attention import has_far_ranges

BLOCK = 64  # query rows and keys per tile
WINDOW = 128  # position rows per tile pair: 2 * BLOCK - 1 distances
PAD = 8  # the products' row padding, in elements


@gluon.jit
def _rel_rows(REL, dist, max_seqlen):
    """rel_index's entries for distances `dist`, clamped as the Triton kernel's (distances outside
    +-(max_seqlen-1) only occur for masked pairs)."""
    dist = gl.minimum(gl.maximum(dist, 1 - max_seqlen), max_seqlen - 1)
    return gl.load(REL + (dist + max_seqlen - 1))


@gluon.jit
def _load_kv(k_smem, v_smem, K, V, tok, mask, head, offs_d, stride_kt, stride_kh, stride_vt, stride_vh):
    """A range's first key tile (tokens `tok`): k and v copied in, a group each."""
    async_copy.async_copy_global_to_shared(
        k_smem, K + tok[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=mask)
    async_copy.commit_group()
    async_copy.async_copy_global_to_shared(
        v_smem, V + tok[:, None] * stride_vt + head * stride_vh + offs_d[None, :], mask=mask)
    async_copy.commit_group()


@gluon.jit
def _softmax_pv(s, acc, m_i, l_i, v_smem, v_next, mask_next, prefetch, qk_scale_log2, PENDING: gl.constexpr,
                s_mma: gl.constexpr):
    """One key step's online softmax of the scores `s` and its PV product, once all but the last
    PENDING copy groups are in (this step's v among them); then, where `prefetch`, the copy of the
    next step's v (`v_next`, `mask_next`) into the same buffer, as its own group."""
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_mma, k_width=2)
    # The running maximum in unscaled units: the scale joins each exponent in one multiply-add.
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    alpha = gl.exp2((m_i - m_new) * qk_scale_log2)
    p = gl.exp2(s * qk_scale_log2 - (m_new * qk_scale_log2)[:, None])
    l_i = l_i * alpha + gl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    async_copy.wait_group(PENDING)
    gl.thread_barrier()
    fence_async_shared()
    acc = warpgroup_mma(gl.convert_layout(p.to(v_smem.dtype), p_op), v_smem, acc)
    gl.thread_barrier()
    if prefetch:
        async_copy.async_copy_global_to_shared(v_smem, v_next, mask=mask_next)
    async_copy.commit_group()
    return acc, m_new, l_i


@gluon.jit
def _far_range(
    q_smem, k_smem, v_smem, acc, m_i, l_i, lo, hi, length, start, head, row,
    K, V, PK, PQ, REL,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_pkr, stride_pkh, stride_pqr, stride_pqh, qk_scale_log2,
    HEAD_DIM: gl.constexpr,
    HAS_C2P: gl.constexpr,
    HAS_P2C: gl.constexpr,
    s_mma: gl.constexpr,
    rows: gl.constexpr,
):
    """The keys [lo, hi) (multiples of 64 but for a last `hi` = length) into the online softmax,
    where every distance of every tile pair maps to the position row rel_index[row]: c2p is one
    value per query row (q_i . pos_key[row]) and p2c one per key (k_j . pos_query[row]), which
    the QK product takes with that row added to the queries ((q_i + pos_query[row]) . k_j), its A
    operand stored to shared memory once per range (as a register operand, converted from the
    loads' layout, the results were wrong on an H200, Triton 3.6). No window, no second product;
    keys in order. Starts and ends with no copy in flight but the query tile's, which it waits for."""
    BM: gl.constexpr = 64
    BN: gl.constexpr = 64
    dtype: gl.constexpr = q_smem.dtype
    offs_r = gl.arange(0, BM, layout=gl.SliceLayout(1, rows))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, rows))
    rows_k = lo + offs_r
    _load_kv(k_smem, v_smem, K, V, start + rows_k, (rows_k < length)[:, None], head, offs_d,
             stride_kt, stride_kh, stride_vt, stride_vh)
    async_copy.wait_group(2)  # the query tile
    gl.thread_barrier()
    q = q_smem.load(rows).to(gl.float32)
    rel = gl.load(REL + row)
    c2p = gl.zeros([BM], gl.float32, layout=gl.SliceLayout(1, rows))
    if HAS_C2P:
        pk = gl.load(PK + rel * stride_pkr + head * stride_pkh + offs_d).to(gl.float32)
        c2p = gl.sum(q * pk[None, :], axis=1)
    if HAS_P2C:
        pq = gl.load(PQ + rel * stride_pqr + head * stride_pqh + offs_d).to(gl.float32)
        q = q + pq[None, :]
    # The QK product's A operand from shared memory, as the near range's.
    q_far = gl.allocate_shared_memory(dtype, [BM, HEAD_DIM], q_smem.layout)
    q_far.store(q.to(dtype))
    c2p = gl.convert_layout(c2p, gl.SliceLayout(1, s_mma))
    keys = gl.arange(0, BN, layout=gl.SliceLayout(0, s_mma))
    for n0 in range(lo, hi, BN):
        n1 = n0 + BN
        rows_k = n1 + offs_r
        mask_k = (rows_k < length)[:, None]
        tok_k = start + rows_k
        async_copy.wait_group(1)  # k (v may still be on its way)
        gl.thread_barrier()
        fence_async_shared()
        s = warpgroup_mma(q_far, k_smem.permute((1, 0)), gl.zeros([BM, BN], gl.float32, layout=s_mma),
                          use_acc=False)
        gl.thread_barrier()
        if n1 < hi:
            async_copy.async_copy_global_to_shared(
                k_smem, K + tok_k[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=mask_k)
        async_copy.commit_group()
        if HAS_C2P:
            s = s + c2p[:, None]
        if n1 > length:  # only a last key tile at the sequence's end is partial
            s = gl.where(((n0 + keys) < length)[None, :], s, -float("inf"))
        # v: the next k may still be on its way
        acc, m_i, l_i = _softmax_pv(s, acc, m_i, l_i, v_smem, V + tok_k[:, None] * stride_vt + head * stride_vh +
                                    offs_d[None, :], mask_k, n1 < hi, qk_scale_log2, 1, s_mma)
    async_copy.wait_group(0)
    return acc, m_i, l_i


@gluon.jit(do_not_specialize=["num_seqs", "max_seqlen", "search_steps", "far"])
def _wgmma_attention_fwd(
    Q, K, V, O, PK, PQ, REL, CU, TILES,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_pkr, stride_pkh, stride_pqr, stride_pqh,
    num_seqs, max_seqlen, search_steps, far, qk_scale_log2,
    HEAD_DIM: gl.constexpr,
    HAS_C2P: gl.constexpr,
    HAS_P2C: gl.constexpr,
    HAS_FAR: gl.constexpr,
    WIDE: gl.constexpr,
):
    tile_smem: gl.constexpr = TILE_SMEM
    win_smem: gl.constexpr = WIN_SMEM
    stored: gl.constexpr = STORED
    skew: gl.constexpr = SKEW
    s_mma: gl.constexpr = S_MMA
    w_mma: gl.constexpr = W_MMA
    skew_read: gl.constexpr = SKEW_READ
    skew_read_t: gl.constexpr = SKEW_READ_T
    rows: gl.constexpr = ROWS
    BM: gl.constexpr = 64
    BN: gl.constexpr = 64
    WIN: gl.constexpr = 128
    dtype: gl.constexpr = Q.dtype.element_ty

    tile = gl.program_id(0)
    head = gl.program_id(1)
    if tile >= gl.load(TILES + num_seqs):
        return
    # The sequence of this tile: the last with TILES[seq] <= tile (as the Triton kernel finds it).
    lo = tile * 0
    hi = lo + num_seqs
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        right = gl.load(TILES + mid) <= tile
        lo = gl.where(right, mid, lo)
        hi = gl.where(right, hi, mid)
    seq = lo
    start = gl.load(CU + seq)
    length = gl.load(CU + seq + 1) - start
    m0 = (tile - gl.load(TILES + seq)) * BM
    if WIDE:  # token offsets past 2**31 elements
        start = start.to(gl.int64)

    offs_r = gl.arange(0, BM, layout=gl.SliceLayout(1, rows))
    offs_w = gl.arange(0, WIN, layout=gl.SliceLayout(1, rows))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, rows))
    q_smem = gl.allocate_shared_memory(dtype, [BM, HEAD_DIM], tile_smem)
    k_smem = gl.allocate_shared_memory(dtype, [BN, HEAD_DIM], tile_smem)
    v_smem = gl.allocate_shared_memory(dtype, [BN, HEAD_DIM], tile_smem)
    pk_smem = gl.allocate_shared_memory(dtype, [WIN, HEAD_DIM], win_smem)
    pq_smem = gl.allocate_shared_memory(dtype, [WIN, HEAD_DIM], win_smem)
    c_smem = gl.allocate_shared_memory(dtype, [BM, WIN], stored)
    t_smem = gl.allocate_shared_memory(dtype, [BN, WIN], stored)

    rows_q = m0 + offs_r
    async_copy.async_copy_global_to_shared(
        q_smem, Q + (start + rows_q)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=(rows_q < length)[:, None])
    async_copy.commit_group()
    m_i = gl.full([BM], -float("inf"), gl.float32, layout=gl.SliceLayout(1, s_mma))
    l_i = gl.zeros([BM], gl.float32, layout=gl.SliceLayout(1, s_mma))
    acc = gl.zeros([BM, HEAD_DIM], gl.float32, layout=s_mma)

    # Key tiles in three ranges, as the Triton kernel's: those whose every distance to this query
    # tile is `far` or more (before it) or -far or less (after it) share one position row per side
    # (`_far_range`); the tiles between take the window.
    near_lo = 0
    near_hi = length
    if HAS_FAR:  # compiled out where no tile pair is that far apart (`has_far_ranges`; v3 up to 512 tokens)
        before = m0 - (BN - 1) - far  # the last key tile start whose distances are all >= far
        near_lo = gl.where(before >= 0, (before // BN + 1) * BN, 0)
        near_hi = gl.minimum((m0 + BM - 1 + far + BN - 1) // BN * BN, length)
        if near_lo > 0:
            acc, m_i, l_i = _far_range(
                q_smem, k_smem, v_smem, acc, m_i, l_i, 0, near_lo, length, start, head, 2 * max_seqlen - 2,
                K, V, PK, PQ, REL, stride_kt, stride_kh, stride_vt, stride_vh, stride_pkr, stride_pkh,
                stride_pqr, stride_pqh, qk_scale_log2, HEAD_DIM, HAS_C2P, HAS_P2C, s_mma, rows)
    # The near range's first operands, in two groups: the windows and k; v.
    rel = _rel_rows(REL, (m0 - near_lo - (BN - 1)) + offs_w, max_seqlen)
    if HAS_C2P:
        async_copy.async_copy_global_to_shared(pk_smem, PK + rel[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
    if HAS_P2C:
        async_copy.async_copy_global_to_shared(pq_smem, PQ + rel[:, None] * stride_pqr + head * stride_pqh + offs_d[None, :])
    rows_k = near_lo + (BN - 1) - offs_r  # keys reversed within the tile
    _load_kv(k_smem, v_smem, K, V, start + rows_k, (rows_k < length)[:, None], head, offs_d,
             stride_kt, stride_kh, stride_vt, stride_vh)

    keys = gl.arange(0, BN, layout=gl.SliceLayout(0, s_mma))
    # c2p's half window carried (module docstring): not with far ranges, where it took 255
    # registers and spilled.
    CARRY: gl.constexpr = HAS_C2P and not HAS_FAR
    if CARRY:  # the first step's window rows 64..127
        async_copy.wait_group(1)
        gl.thread_barrier()
        fence_async_shared()
        carry = warpgroup_mma(q_smem, pk_smem.slice(BN, BN, dim=0).permute((1, 0)),
                              gl.zeros([BM, BN], gl.float32, layout=s_mma), use_acc=False).to(dtype)
    for n0 in range(near_lo, near_hi, BN):
        # Each step commits three groups (the next windows, k, v): waiting for all but the last one
        # or two leaves exactly the loads this point needs complete.
        n1 = n0 + BN
        rel = _rel_rows(REL, (m0 - n1 - (BN - 1)) + offs_w, max_seqlen)
        rows_k = n1 + (BN - 1) - offs_r
        mask_k = (rows_k < length)[:, None]
        tok_k = start + rows_k
        async_copy.wait_group(1)  # the query tile, the windows and k (v may still be on its way)
        gl.thread_barrier()
        fence_async_shared()  # the copies' writes, before the MMA reads them
        if CARRY:
            # Window rows 0..63 are new; rows 64..127 are the last step's rows 0..63.
            c_lo = warpgroup_mma(q_smem, pk_smem.slice(0, BN, dim=0).permute((1, 0)),
                                 gl.zeros([BM, BN], gl.float32, layout=s_mma), use_acc=False).to(dtype)
            c_smem.slice(0, BN, dim=1).store(c_lo)
            c_smem.slice(BN, BN, dim=1).store(carry)
            carry = c_lo
        elif HAS_C2P:
            c = warpgroup_mma(q_smem, pk_smem.permute((1, 0)), gl.zeros([BM, WIN], gl.float32, layout=w_mma),
                              use_acc=False)
            c_smem.store(c.to(dtype))
        if HAS_P2C:
            t = warpgroup_mma(k_smem, pq_smem.permute((1, 0)), gl.zeros([BN, WIN], gl.float32, layout=w_mma),
                              use_acc=False)
            t_smem.store(t.to(dtype))
        gl.thread_barrier()
        if n1 < near_hi:  # the next windows, while this step goes on
            if CARRY:  # only the next window's new rows
                rel_new = _rel_rows(REL, (m0 - n1 - (BN - 1)) + offs_r, max_seqlen)
                async_copy.async_copy_global_to_shared(
                    pk_smem.slice(0, BN, dim=0),
                    PK + rel_new[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
            elif HAS_C2P:
                async_copy.async_copy_global_to_shared(
                    pk_smem, PK + rel[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
            if HAS_P2C:
                async_copy.async_copy_global_to_shared(
                    pq_smem, PQ + rel[:, None] * stride_pqr + head * stride_pqh + offs_d[None, :])
        async_copy.commit_group()
        pos = gl.zeros([BM, BN], dtype, layout=s_mma)
        if HAS_C2P:
            pos = gl.convert_layout(c_smem._reinterpret(dtype, [BM, WIN], skew).slice(0, BN, dim=1).load(skew_read),
                                    s_mma)
        if HAS_P2C:
            p2c = t_smem._reinterpret(dtype, [BN, WIN], skew).slice(0, BM, dim=1).load(skew_read_t)
            pos = pos + gl.convert_layout(gl.permute(p2c, [1, 0]), s_mma)
        s = warpgroup_mma(q_smem, k_smem.permute((1, 0)), pos.to(gl.float32))
        gl.thread_barrier()
        if n1 < near_hi:
            async_copy.async_copy_global_to_shared(
                k_smem, K + tok_k[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=mask_k)
        async_copy.commit_group()
        if n1 > length:  # only a last key tile at the sequence's end is partial
            s = gl.where(((n0 + (BN - 1) - keys) < length)[None, :], s, -float("inf"))

        # This step's v: the next windows and k may still be on their way.
        acc, m_i, l_i = _softmax_pv(s, acc, m_i, l_i, v_smem, V + tok_k[:, None] * stride_vt + head * stride_vh +
                                    offs_d[None, :], mask_k, n1 < near_hi, qk_scale_log2, 2, s_mma)
    async_copy.wait_group(0)
    if HAS_FAR:
        if near_hi < length:
            acc, m_i, l_i = _far_range(
                q_smem, k_smem, v_smem, acc, m_i, l_i, near_hi, length, length, start, head, 0,
                K, V, PK, PQ, REL, stride_kt, stride_kh, stride_vt, stride_vh, stride_pkr, stride_pkh,
                stride_pqr, stride_pqh, qk_scale_log2, HEAD_DIM, HAS_C2P, HAS_P2C, s_mma, rows)

    out = gl.convert_layout((acc / l_i[:, None]).to(dtype), rows)
    gl.store(O + (start + rows_q)[:, None] * stride_ot + head * stride_oh + offs_d[None, :], out,
             mask=(rows_q < length)[:, None])


def layouts() -> dict:
    """The kernel's layouts, fp16's and bf16's alike (only the element width enters). The [64, 64]
    wgmma accumulator (4 warps of 16 rows) has registers [[0,1],[8,0],[0,8],[0,16],[0,32]], lanes
    [[0,2],[0,4],[1,0],[2,0],[4,0]], warps [[16,0],[32,0]]; the skewed reads take it with its first
    two register bases swapped (`skew_read`; one 16-bit load per element), and p2c's its transpose.
    The padded views: 128a + b + a + (PAD/2)(2a) = (128 + PAD + 1)a + b for b < 64 (paddings of 1
    every 128 elements and PAD/2 every 64)."""
    element = gl.float16
    padded = gl.PaddedSharedLayout.with_identity_for
    regs = [[8, 0], [0, 1], [0, 8], [0, 16], [0, 32]]
    lanes = [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]]
    warps = [[16, 0], [32, 0]]

    def transposed(bases):
        return [[b, a] for a, b in bases]

    return dict(
        tile_smem=gl.NVMMASharedLayout.get_default_for([BLOCK, 64], element),
        win_smem=gl.NVMMASharedLayout.get_default_for([WINDOW, 64], element),
        stored=padded([[WINDOW, PAD]], [BLOCK, WINDOW], [1, 0]),
        skew=padded([[WINDOW, 1], [BLOCK, PAD // 2]], [BLOCK, WINDOW], [1, 0]),
        s_mma=gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16]),
        w_mma=gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16]),
        skew_read=gl.DistributedLinearLayout(reg_bases=regs, lane_bases=lanes, warp_bases=warps, block_bases=[],
                                             shape=[BLOCK, BLOCK]),
        skew_read_t=gl.DistributedLinearLayout(reg_bases=transposed(regs), lane_bases=transposed(lanes),
                                               warp_bases=transposed(warps), block_bases=[], shape=[BLOCK, BLOCK]),
        rows=gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0]),  # copies: 16 bytes of a row per thread
    )


# The layouts reach the kernel as compile-time globals, not as launch arguments: a Triton JIT hook
# (vLLM's JIT monitor installs one) serializes a launch's constexpr arguments to JSON, which a layout
# is not, and the compile would fail.
_L = layouts()
TILE_SMEM, WIN_SMEM, STORED, SKEW, S_MMA, W_MMA, SKEW_READ, SKEW_READ_T, ROWS = (gl.constexpr(_L[name]) for name in (
    "tile_smem", "win_smem", "stored", "skew", "s_mma", "w_mma", "skew_read", "skew_read_t", "rows"))


def wgmma_attention(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale, tiles, out,
                    far=None):
    """Launch on checked inputs (`triton_disentangled_attention` checks them and decides that this
    kernel applies): q/k/v [T, H, 64] fp16/bf16 with unit stride in D, ``tiles`` =
    ``query_tiles(cu_seqlens, 64)``, ``rel_index`` int32, ``out`` [T, H, 64]. ``far``: as the op's
    (`saturation_distance`; None: max_seqlen, the window on every tile pair)."""
    total, heads, dim = q.shape
    batch = cu_seqlens.numel() - 1
    pk = pos_key if pos_key is not None else q  # placeholder pointer, never read
    pq = pos_query if pos_query is not None else q
    wide = max(x.stride(0) for x in (q, k, v, out)) * total >= 2**31
    far = max_seqlen if far is None else far
    has_far = (pos_key is not None or pos_query is not None) and has_far_ranges(far, max_seqlen, BLOCK, BLOCK)
    grid = (triton.cdiv(total, BLOCK) + batch, heads)
    _wgmma_attention_fwd[grid](
        q, k, v, out, pk, pq, rel_index, cu_seqlens, tiles,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        pk.stride(0), pk.stride(1), pq.stride(0), pq.stride(1),
        batch, max_seqlen, batch.bit_length(), far, float(scale) * 1.4426950408889634,
        HEAD_DIM=dim, HAS_C2P=pos_key is not None, HAS_P2C=pos_query is not None, HAS_FAR=has_far, WIDE=wide,
        num_warps=4)
    return out
