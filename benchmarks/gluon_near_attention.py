"""A prototype, not used by the model: disentangled attention without far ranges (every v3 batch of
up to 512 tokens) in Gluon (Triton's lower-level language), 32x32 tile pairs on one or two warps
(Ampere's mma), the window's skews read through shared memory instead of Triton's register gathers.
Its successor on Hopper's warpgroup MMA, with the same skewed reads at 64x64, is the model's kernel
there: crossenc/kernels/gluon_disentangled_attention.py.

Status (docs/benchmarks.md, "A Gluon kernel for the near range"): exact (relative error 5e-4 in
fp16 against the fp32 reference, as the Triton kernel) and on one H100 slower than the Triton
kernel: rerank-short 0.56-0.61 ms against 0.51, rerank-long 0.75-0.80 against 0.57. It issues fewer
instructions per key step (one warp 1,206 against 1,462 on sm_90; two warps 602-636 each), but
each waits longer: one warp is held to 255 registers and spills, two warps load every B operand
twice from shared memory, whose pipe then stalls them (Nsight Compute: short-scoreboard and MIO
throttle stalls 3.3 cycles per instruction, against the Triton kernel's 0.6).

Same contract as crossenc.kernels.triton_disentangled_attention without far ranges: packed q/k/v
[T, H, D], cu_seqlens, rel_index, pos_key/pos_query [2S, H, D].

Keys are taken in reverse order within each key tile (local j' is key n0 + BN-1-j'), so that a
tile pair's window row x (distance m0 - n0 - (BN-1) + x, as in the Triton kernel) is x = i + j':
  c2p[i, j'] = C[i, i + j'],   C = q @ window_k^T   [BM, WIN]
  p2c[i, j'] = T[j', i + j'],  T = k @ window_q^T   [BN, WIN]
Each product is stored in the input dtype with row stride WIN + PAD and read through a padded view
of row stride WIN + PAD + 1 (view[a, b] = X[a, a + b]), in the MMA layout with its first two
register bases swapped so that each read is one aligned 16-bit load. PAD = 8 puts the 8 rows of a
32-bit store in distinct banks and a skewed read's in at most two ways; PAD = 0 (row stride 64, read
stride 65) costs 8-way conflicts on both: one warp's rerank-short 0.80 against 0.61 ms. The sum
c2p + p2c is the QK product's initial value, as in the Triton kernel. Each buffer's next load is
issued as soon as the step is done reading it.

    python benchmarks/gluon_near_attention.py            # GPU: checks it against the torch reference
                                                         # and times it against the Triton kernel
    python benchmarks/gluon_near_attention.py --count    # compiles for sm_90, counts the key loop
    python benchmarks/gluon_near_attention.py --emulate  # the index algebra in torch, on the CPU
"""
from __future__ import annotations

import collections
import re

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from crossenc.kernels.gluon_disentangled_attention import _rel_rows  # the model's wgmma kernel's




@gluon.jit
def _near_fwd(
    Q, K, V, O, PK, PQ, REL, CU, TILES,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_pkr, stride_pkh, stride_pqr, stride_pqh,
    num_seqs, max_seqlen, search_steps, qk_scale_log2,
    HEAD_DIM: gl.constexpr,
    HAS_C2P: gl.constexpr,
    HAS_P2C: gl.constexpr,
    stored: gl.constexpr,
    skew: gl.constexpr,
    mma: gl.constexpr,
    rows16: gl.constexpr,
    rows16_t: gl.constexpr,
    rows: gl.constexpr,
    K_STAGES: gl.constexpr,
):
    BM: gl.constexpr = 32
    BN: gl.constexpr = 32
    WIN: gl.constexpr = 64
    dtype: gl.constexpr = Q.dtype.element_ty
    a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    tile_smem: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])

    tile = gl.program_id(0)
    head = gl.program_id(1)
    if tile >= gl.load(TILES + num_seqs):
        return
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

    offs_r = gl.arange(0, BM, layout=gl.SliceLayout(1, rows))
    offs_w = gl.arange(0, WIN, layout=gl.SliceLayout(1, rows))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, rows))
    q_smem = gl.allocate_shared_memory(dtype, [BM, HEAD_DIM], tile_smem)
    k_bufs = gl.allocate_shared_memory(dtype, [K_STAGES, BN, HEAD_DIM], tile_smem)
    v_smem = gl.allocate_shared_memory(dtype, [BN, HEAD_DIM], tile_smem)
    pk_smem = gl.allocate_shared_memory(dtype, [WIN, HEAD_DIM], tile_smem)
    pq_smem = gl.allocate_shared_memory(dtype, [WIN, HEAD_DIM], tile_smem)
    # Allocated in the stored layout (32 x 72 elements), read through the skewed view (its reads end
    # at element 73 * 31 + 31 < 32 * 72): 128 bytes less than the view's own size, 6 programs per SM.
    c_smem = gl.allocate_shared_memory(dtype, [BM, WIN], stored)
    t_smem = gl.allocate_shared_memory(dtype, [BN, WIN], stored)

    rows_q = m0 + offs_r
    async_copy.async_copy_global_to_shared(
        q_smem, Q + (start + rows_q)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=(rows_q < length)[:, None])
    # Step 0's operands. From then on each buffer's next load is issued as soon as the step is done
    # reading it (windows after the position products, k after the QK product or, with two k
    # buffers, at the step's start, v after PV), so that the loads overlap the rest of the step.
    rel = _rel_rows(REL, (m0 - (BN - 1)) + offs_w, max_seqlen)
    if HAS_C2P:
        async_copy.async_copy_global_to_shared(pk_smem, PK + rel[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
    if HAS_P2C:
        async_copy.async_copy_global_to_shared(pq_smem, PQ + rel[:, None] * stride_pqr + head * stride_pqh + offs_d[None, :])
    rows_k = (BN - 1) - offs_r  # keys reversed within the tile
    mask_k = (rows_k < length)[:, None]
    async_copy.async_copy_global_to_shared(
        k_bufs.index(0), K + (start + rows_k)[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=mask_k)
    async_copy.commit_group()
    async_copy.async_copy_global_to_shared(
        v_smem, V + (start + rows_k)[:, None] * stride_vt + head * stride_vh + offs_d[None, :], mask=mask_k)
    async_copy.commit_group()

    m_i = gl.full([BM], -float("inf"), gl.float32, layout=gl.SliceLayout(1, mma))
    l_i = gl.zeros([BM], gl.float32, layout=gl.SliceLayout(1, mma))
    acc = gl.zeros([BM, HEAD_DIM], gl.float32, layout=mma)
    keys = gl.arange(0, BN, layout=gl.SliceLayout(0, mma))
    for n0 in range(0, length, BN):
        n1 = n0 + BN
        # The next step's window rows, loaded ahead (their latency hides behind this step's products).
        rel = _rel_rows(REL, (m0 - n1 - (BN - 1)) + offs_w, max_seqlen)
        rows_k = n1 + (BN - 1) - offs_r
        mask_k = (rows_k < length)[:, None]
        tok_k = start + rows_k
        async_copy.wait_group(1)  # q, the windows and k; v may still be on its way
        gl.thread_barrier()
        if K_STAGES == 2:
            k_smem = k_bufs.index((n0 // BN) % 2)
            if n1 < length:
                async_copy.async_copy_global_to_shared(
                    k_bufs.index((n1 // BN) % 2), K + tok_k[:, None] * stride_kt + head * stride_kh + offs_d[None, :],
                    mask=mask_k)
        else:
            k_smem = k_bufs.index(0)
        q = q_smem.load(a_op)
        pos = gl.zeros([BM, BN], dtype, layout=mma)
        if HAS_C2P:
            c = mma_v2(q, pk_smem.permute([1, 0]).load(b_op), gl.zeros([BM, WIN], gl.float32, layout=mma))
            c_smem.store(c.to(dtype))
        if HAS_P2C:
            t = mma_v2(k_smem.load(a_op), pq_smem.permute([1, 0]).load(b_op), gl.zeros([BN, WIN], gl.float32, layout=mma))
            t_smem.store(t.to(dtype))
        gl.thread_barrier()
        if n1 < length:  # no copies past the last step
            if HAS_C2P:
                async_copy.async_copy_global_to_shared(
                    pk_smem, PK + rel[:, None] * stride_pkr + head * stride_pkh + offs_d[None, :])
            if HAS_P2C:
                async_copy.async_copy_global_to_shared(
                    pq_smem, PQ + rel[:, None] * stride_pqr + head * stride_pqh + offs_d[None, :])
        if K_STAGES == 1:
            async_copy.commit_group()
        if HAS_C2P:
            pos = gl.convert_layout(c_smem._reinterpret(dtype, [BM, WIN], skew).slice(0, BN, dim=1).load(rows16), mma)
        if HAS_P2C:
            p2c = t_smem._reinterpret(dtype, [BN, WIN], skew).slice(0, BM, dim=1).load(rows16_t)
            pos = pos + gl.convert_layout(gl.permute(p2c, [1, 0]), mma)
        q = q_smem.load(a_op)  # again: holding it through the step costs registers
        s = mma_v2(q, k_smem.permute([1, 0]).load(b_op), pos.to(gl.float32))
        if K_STAGES == 1:
            gl.thread_barrier()
            if n1 < length:
                async_copy.async_copy_global_to_shared(
                    k_smem, K + tok_k[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=mask_k)
        async_copy.commit_group()
        if n1 > length:  # only the last key tile is partial
            s = gl.where(((n0 + (BN - 1) - keys) < length)[None, :], s, -float("inf"))

        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        alpha = gl.exp2((m_i - m_new) * qk_scale_log2)
        p = gl.exp2(s * qk_scale_log2 - (m_new * qk_scale_log2)[:, None])
        l_i = l_i * alpha + gl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        async_copy.wait_group(3 - K_STAGES)  # this step's v (the next windows and k may still be on their way)
        gl.thread_barrier()
        acc = mma_v2(gl.convert_layout(p.to(dtype), a_op), v_smem.load(b_op), acc)
        m_i = m_new
        gl.thread_barrier()
        if n1 < length:
            async_copy.async_copy_global_to_shared(
                v_smem, V + tok_k[:, None] * stride_vt + head * stride_vh + offs_d[None, :], mask=mask_k)
        async_copy.commit_group()
    async_copy.wait_group(0)

    out = gl.convert_layout((acc / l_i[:, None]).to(dtype), rows)  # 16-byte stores
    gl.store(O + (start + rows_q)[:, None] * stride_ot + head * stride_oh + offs_d[None, :], out,
             mask=(rows_q < length)[:, None])


def layouts(warps: int, pad: int = 8) -> dict:
    """The kernel's layouts: products stored with row stride 64 + pad and read through the view of
    row stride 64 + pad + 1; with two warps each takes 16 of the 32 query rows (and of the 32 keys
    in p2c's product)."""
    P = gl.PaddedSharedLayout.with_identity_for
    if pad == 0:
        out = dict(stored=gl.SwizzledSharedLayout(1, 1, 1, [1, 0]), skew=P([[64, 1]], [32, 64], [1, 0]))
    else:  # 64a + b + a + (pad / 2)(2a) = (64 + pad + 1)a + b for b < 32 (interval and padding powers of two)
        out = dict(stored=P([[64, pad]], [32, 64], [1, 0]), skew=P([[64, 1], [32, pad // 2]], [32, 64], [1, 0]))
    # The [32, 32] MMA layout (registers [[0,1],[8,0],[0,8],[0,16],[16,0]], lanes [[0,2],[0,4],[1,0],
    # [2,0],[4,0]]; with two warps the last register base is the warp's) with its first two register
    # bases swapped, and its transpose: reads of the skewed views.
    lanes = [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]]
    regs = [[8, 0], [0, 1], [0, 8], [0, 16], [16, 0]]
    warp_bases = [] if warps == 1 else [regs.pop()]
    tr = lambda bases: [[b, a] for a, b in bases]
    out.update(
        mma=gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[warps, 1], instr_shape=[16, 8]),
        rows16=gl.DistributedLinearLayout(reg_bases=regs, lane_bases=lanes, warp_bases=warp_bases, block_bases=[],
                                          shape=[32, 32]),
        rows16_t=gl.DistributedLinearLayout(reg_bases=tr(regs), lane_bases=tr(lanes), warp_bases=tr(warp_bases),
                                            block_bases=[], shape=[32, 32]),
        # Copies: two 16-byte pieces of one row per thread.
        rows=gl.BlockedLayout([1, 16], [8, 4], [warps, 1], [1, 0]))
    return out


# (warps, k buffers, register cap, pad): 6 programs per SM in each (shared memory 37,856 bytes, or
# registers); two k buffers at two warps: 5 programs.
CONFIGS = [(1, 1, None, 0), (1, 1, None, 8), (2, 1, 168, 8), (2, 2, 168, 8)]


def gluon_near_attention(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale, tiles, warps=2,
                         k_stages=1, maxnreg=168, pad=8):
    total, heads, dim = q.shape
    batch = cu_seqlens.numel() - 1
    out = torch.empty_like(q)
    # Token offsets are 32-bit in the kernel (41 fewer instructions per key step than 64-bit, sm_90).
    assert max(x.stride(0) for x in (q, k, v, out)) * total < 2**31
    pk = pos_key if pos_key is not None else q
    pq = pos_query if pos_query is not None else q
    grid = (triton.cdiv(total, 32) + batch, heads)
    _near_fwd[grid](
        q, k, v, out, pk, pq, rel_index.to(torch.int32), cu_seqlens, tiles,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        pk.stride(0), pk.stride(1), pq.stride(0), pq.stride(1),
        batch, max_seqlen, batch.bit_length(), float(scale) * 1.4426950408889634,
        HEAD_DIM=dim, HAS_C2P=pos_key is not None, HAS_P2C=pos_query is not None, K_STAGES=k_stages,
        num_warps=warps, **layouts(warps, pad), **({} if maxnreg is None else dict(maxnreg=maxnreg)))
    return out


def _skew_read(x, win=64):
    """x [A, win] -> [A, 32], view[a, b] = flat[(win + 1) a + b] = x[a, a + b]: the kernel's padded view."""
    flat = x.reshape(-1)
    a = torch.arange(x.shape[0])[:, None]
    b = torch.arange(32)[None, :]
    return flat[(win + 1) * a + b]


def emulate(q, k, v, cu, max_seqlen, pk, pq, rel, scale, tile=32, win=64):
    """The kernel's algorithm in torch (fp32, CPU): keys reversed in each tile, window row x = i + j'
    for distance m0 - n0 - (tile-1) + x, the position terms read through `_skew_read`."""
    out = torch.zeros_like(q)
    lanes = torch.arange(tile)
    for s in range(cu.numel() - 1):
        start, length = int(cu[s]), int(cu[s + 1] - cu[s])
        for h in range(q.shape[1]):
            for m0 in range(0, length, tile):
                rows_q = m0 + lanes
                keep = rows_q < length
                qt = torch.where(keep[:, None], q[(start + rows_q).clamp(max=q.shape[0] - 1), h], 0.0)
                m_i = torch.full((tile,), -float("inf"))
                l_i = torch.zeros(tile)
                acc = torch.zeros(tile, q.shape[2])
                for n0 in range(0, length, tile):
                    rows_k = n0 + (tile - 1) - lanes
                    valid = rows_k < length
                    idx = (start + rows_k).clamp(max=q.shape[0] - 1)
                    kt = torch.where(valid[:, None], k[idx, h], 0.0)
                    vt = torch.where(valid[:, None], v[idx, h], 0.0)
                    dist = ((m0 - n0 - (tile - 1)) + torch.arange(win)).clamp(1 - max_seqlen, max_seqlen - 1)
                    r = rel[dist + max_seqlen - 1]
                    pos = torch.zeros(tile, tile)
                    if pk is not None:
                        pos = pos + _skew_read(qt @ pk[r, h].T, win)  # c2p[i, j'] = C[i, i + j']
                    if pq is not None:
                        pos = pos + _skew_read(kt @ pq[r, h].T, win).T  # p2c[i, j'] = T[j', i + j']
                    sc = torch.where(valid[None, :], (qt @ kt.T + pos) * scale, -float("inf"))
                    m_new = torch.maximum(m_i, sc.max(1).values)
                    p = torch.exp(sc - m_new[:, None])
                    alpha = torch.exp(m_i - m_new)
                    l_i = l_i * alpha + p.sum(1)
                    acc = acc * alpha[:, None] + p @ vt
                    m_i = m_new
                out[start + rows_q[keep], h] = (acc / l_i[:, None])[keep]
    return out


def check_emulation():
    from crossenc.kernels.disentangled_attention import (attention_scale, disentangled_attention_ref,
                                                         relative_position_index)
    torch.manual_seed(0)
    for buckets, max_rel, c2p, p2c in [(256, 512, True, True), (32, 64, True, True), (-1, 512, True, False),
                                       (-1, 24, False, True)]:
        lengths = [1, 31, 33, 70, 150]
        cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
        total, max_seqlen, heads, dim = sum(lengths), max(lengths), 2, 64
        q, k, v = torch.randn(3, total, heads, dim).unbind(0)
        span = buckets if buckets > 0 else max_rel
        pk = torch.randn(2 * span, heads, dim) if c2p else None
        pq = torch.randn(2 * span, heads, dim) if p2c else None
        rel = relative_position_index(max_seqlen, buckets, max_rel, span)
        scale = attention_scale(dim, 1 + int(c2p) + int(p2c))
        ref = disentangled_attention_ref(q, k, v, cu, max_seqlen, pk, pq, rel, scale)
        out = emulate(q, k, v, cu, max_seqlen, pk, pq, rel, scale)
        print(buckets, max_rel, c2p, p2c, "rel err", ((out - ref).norm() / ref.norm()).item())


def check_on_gpu():
    from attention_kernel import inputs
    from crossenc.kernels.disentangled_attention import disentangled_attention_ref, query_tiles, saturation_distance
    from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention
    print(torch.cuda.get_device_name(), "triton", triton.__version__)
    for workload in ("rerank-short", "rerank-long"):
        args, _ = inputs(workload, 12, 64, torch.float16)
        ref = disentangled_attention_ref(*args).float()
        tiles = query_tiles(args[3], 32)
        far = saturation_distance(args[7])
        ms = triton.testing.do_bench(lambda: triton_disentangled_attention(*args, far=far), warmup=25, rep=200,
                                     return_mode="median")
        print(f"{workload:12s} Triton kernel {ms:.3f} ms")
        for warps, k_stages, maxnreg, pad in CONFIGS:
            run = lambda: gluon_near_attention(*args, tiles, warps, k_stages, maxnreg, pad)
            err = ((run().float() - ref).norm() / ref.norm()).item()
            ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
            print(f"{workload:12s} Gluon warps {warps} k buffers {k_stages} registers <= {maxnreg or 255} pad {pad}: "
                  f"{ms:.3f} ms (rel err {err:.1e})")


def compile_and_count():
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from kernel_resources import cuobjdump, launch_source, longest_loop
    for warps, k_stages, maxnreg, pad in CONFIGS:
        constexprs = dict(HEAD_DIM=64, HAS_C2P=True, HAS_P2C=True, K_STAGES=k_stages, **layouts(warps, pad))
        kernel = triton.compile(launch_source(_near_fwd, constexprs, "fp16", GluonASTSource),
                                target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": warps, **({} if maxnreg is None else {"maxnreg": maxnreg})})
        usage, sass = cuobjdump(kernel)
        loop = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0] for text in longest_loop(sass))
        print(f"warps {warps} k buffers {k_stages} pad {pad}:", re.search(r"REG:\d+ STACK:\d+", usage).group(0),
              "shared", kernel.metadata.shared, "loop instructions", sum(loop.values()))
        print(loop.most_common(30))


if __name__ == "__main__":
    import sys
    if "--emulate" in sys.argv:
        check_emulation()
    elif "--count" in sys.argv or not torch.cuda.is_available():
        compile_and_count()
    else:
        check_on_gpu()
