"""An encoder block's intermediate dense with its bias and exact GELU, GELU(x @ W^T + b), as one
Hopper kernel in Gluon: the GELU pass that follows cuBLAS's GEMM (a read and a write of the
[tokens, intermediate] activations) moves into the GEMM's epilogue.

Persistent, one program per SM walking 128x128 output tiles, warp-specialized as a ping-pong: one
warp issues the TMA loads of x's and W's 128x64 tiles into a ring of STAGES buffers, in tile order;
two consumer warpgroups take the tiles alternately, each accumulating its tile with warpgroup MMAs
and then running the epilogue (bias, GELU, a TMA store) while the other one's MMAs run: their main
loops take turns (a pair of mbarriers), so one consumer's epilogue overlaps the other's main loop,
and it must stay the shorter of the two.

The values are those of torch's path (`gelu(linear(x, W, b))`) up to the GEMM's summation order:
the bias is added in fp32 and the sum rounded to the input dtype, as cuBLAS's bias epilogue does,
and the GELU is computed from that rounded value in fp32, then rounded, as torch's kernel does
(x * 0.5 * (1 + erf(x / sqrt(2)))); the normal CDF comes from a branch-free erfc (`_gelu`) whose
relative error, below 7.8e-6, is far under an fp16 or bf16 rounding.

sm_90 only (wgmma and warp specialization), fp16/bf16, 2-D x with unit stride and rows 16-byte
aligned; `supports` says when it applies. `python benchmarks/fused_dense_gelu.py` times it.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

TILE = (128, 128, 64)  # BLOCK_M, BLOCK_N, BLOCK_K
BLOCK_M, BLOCK_N, BLOCK_K = map(gl.constexpr, TILE)
STAGES = gl.constexpr(4)


@gluon.jit
def _tile(tile, tiles_n):
    """Tiles in row-major order: consecutive tiles share x's rows, W stays in L2."""
    return (tile // tiles_n) * BLOCK_M, (tile % tiles_n) * BLOCK_N


@gluon.jit
def _approx(instruction: gl.constexpr, x):
    """One fp32 PTX approximation (rcp/ex2 .approx.ftz: one MUFU instruction each, without the
    range scaling of `1 / x` and `exp`)."""
    return gl.inline_asm_elementwise(instruction + " $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _gelu(x):
    """x * Phi(x), Phi the normal CDF, in fp32 without branches, from Phi(-|x|) = erfc(a) / 2 with
    a = |x| / sqrt(2) and erfc(a) = t * exp(-a^2 + P(t)), t = 1 / (1 + a / 2) (the form of Numerical
    Recipes' erfcc), in base 2 with the 1/2 folded in: Phi(-|x|) = t * 2^(Q(t) - x^2 log2(e) / 2).
    Q is a degree-5 fit (weighted least squares toward minimax over a in [0, 9]): relative error of
    Phi(-|x|) below 7.8e-6, far under fp16's and bf16's half unit in the last place, so the GELU
    stays within one rounding of the exact one (`test_gelu_over_every_value`). About 15 instructions
    an element (two MUFU; erfcc's degree 9 took 21): the epilogue, run by one warpgroup, must stay
    shorter than the other's main loop. libdevice's erff (coefficients selected per element) and
    full-range division and exp took more than twice as many and made the kernel slower than cuBLAS and a GELU pass (H100: 0.88 ms,
    then 0.80, then 0.38 with erfcc's degree 9, against 0.46 ms at [41,000, 768 -> 3,072])."""
    t = _approx("rcp.approx.ftz.f32", gl.abs(x) * 0.35355339059327373 + 1.0)
    q = 0.33007869 * t - 1.02314782
    q = q * t + 0.68453592
    q = q * t + 0.36710119
    q = q * t + 1.46867537
    q = q * t - 2.82723236
    half_erfc = t * _approx("ex2.approx.ftz.f32", (x * -0.7213475204444817) * x + q)  # Phi(-|x|)
    xh = x * half_erfc
    return gl.where(x >= 0, x - xh, xh)


@gluon.jit
def _loader(x_desc, w_desc, a_bufs, b_bufs, ready, empty, num_tiles, tiles_n, k_steps):
    """The producer warp: every tile's K steps, in order, into the ring."""
    step = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile(tile, tiles_n)
        for kk in range(k_steps):
            s = step % STAGES
            mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)  # the first pass finds them free
            mbarrier.expect(ready.index(s), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [off_m, kk * BLOCK_K], ready.index(s), a_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [off_n, kk * BLOCK_K], ready.index(s), b_bufs.index(s))
            step += 1


@gluon.jit
def _consumer(o_desc, bias, a_bufs, b_bufs, c_smem, ready, empty, order, num_tiles, tiles_n, k_steps, n,
              WHICH: gl.constexpr, GELU: gl.constexpr):
    """Consumer WHICH (0 or 1): the program's tiles WHICH, WHICH + 2, ... ."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    dtype: gl.constexpr = o_desc.dtype
    programs = gl.num_programs(0)
    first = gl.program_id(0) + WHICH * programs
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, acc_layout))
    i = 0
    for tile in range(first, num_tiles, 2 * programs):
        # The main loops take turns (`order`): a consumer waits on the ring only once the other's
        # main loop is done, never a whole phase of a ring buffer ahead of it (mbarrier waits
        # tell phases apart by parity alone).
        if WHICH == 0:
            mbarrier.wait(order.index(0), (i + 1) & 1, pred=i > 0)
        else:
            mbarrier.wait(order.index(1), i & 1)
        off_m, off_n = _tile(tile, tiles_n)
        step = (tile - gl.program_id(0)) // programs * k_steps  # the ring's count at this tile's first step
        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=acc_layout)
        for kk in range(k_steps):
            s = step % STAGES
            mbarrier.wait(ready.index(s), (step // STAGES) & 1)
            acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, is_async=True)
            # One MMA in flight: the step before's is done, its buffers go back to the loader.
            acc, _, _ = warpgroup_mma_wait(1, deps=(acc, a_bufs.index(s), b_bufs.index(s)))
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), pred=kk > 0)
            step += 1
        # The other consumer may start issuing while this one's last MMAs run (its first steps
        # are in other ring buffers, and it cannot wait on a buffer a phase ahead: the loader
        # refills this tile's last buffer only once it is released below).
        mbarrier.arrive(order.index(1 - WHICH))
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES))
        i += 1

        b = gl.load(bias + off_n + cols, mask=off_n + cols < n, other=0.0).to(gl.float32)
        tma.store_wait(0)  # this consumer's last store has left c_smem
        c_smem.store((acc + b[None, :]).to(dtype))
        if GELU:  # from c_smem in halves, each thread the elements it stored: fewer live registers
            for r in gl.static_range(0, BLOCK_M, BLOCK_M // 2):
                half = c_smem.slice(r, BLOCK_M // 2, dim=0)
                # Rows r..r+63 of acc_layout's [128, N] are the same threads' in its [64, N].
                x = half.load(acc_layout).to(gl.float32)
                half.store(_gelu(x).to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [off_m, off_n], c_smem)
    tma.store_wait(0)


# Not specialized on the token count (Triton would compile other variants for m = 1 and m % 16 != 0):
# vLLM's warmup compiles the one variant and no request waits for a compile.
@gluon.jit(do_not_specialize=["m"])
def _dense_gelu_ws(x_desc, w_desc, o_desc, bias, m, n, k, GELU: gl.constexpr):
    dtype: gl.constexpr = x_desc.dtype
    a_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    c0 = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], o_desc.layout)
    c1 = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], o_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(order.index(0), count=1)
    mbarrier.init(order.index(1), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    fence_async_shared()

    tiles_n = gl.cdiv(n, BLOCK_N)
    num_tiles = gl.cdiv(m, BLOCK_M) * tiles_n
    k_steps = gl.cdiv(k, BLOCK_K)
    gl.warp_specialize([
        (_consumer, (o_desc, bias, a_bufs, b_bufs, c0, ready, empty, order, num_tiles, tiles_n, k_steps, n, 0, GELU)),
        (_consumer, (o_desc, bias, a_bufs, b_bufs, c1, ready, empty, order, num_tiles, tiles_n, k_steps, n, 1, GELU)),
        (_loader, (x_desc, w_desc, a_bufs, b_bufs, ready, empty, num_tiles, tiles_n, k_steps)),
    ], [4, 1], [232, 40])


def supports(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `dense_gelu` runs these: Hopper, fp16/bf16 throughout, a bias, TMA-compatible rows."""
    return (x.is_cuda and torch.cuda.get_device_capability(x.device)[0] == 9 and x.dim() == 2
            and x.dtype in (torch.float16, torch.bfloat16) and weight.dtype == x.dtype
            and bias is not None and bias.dtype == x.dtype and bias.is_contiguous()
            and x.stride(1) == 1 and weight.stride(1) == 1 and x.shape[1] == weight.shape[1]
            and all(t.stride(0) % 8 == 0 and t.data_ptr() % 16 == 0 for t in (x, weight))
            and weight.shape[0] % 8 == 0)


@functools.lru_cache(maxsize=None)
def _layouts(dtype: torch.dtype) -> tuple:
    """x's, W's and the output's tile layouts in shared memory (made once: ~20 us of host time a
    call otherwise, more than the kernel of a small batch)."""
    element = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[dtype]
    bm, bn, bk = TILE
    return tuple(gl.NVMMASharedLayout.get_default_for(shape, element) for shape in ([bm, bk], [bn, bk], [bm, bn]))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int | None) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def dense_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = True,
               out: torch.Tensor | None = None, programs: int | None = None) -> torch.Tensor:
    """GELU(x @ weight^T + bias) (without the GELU when `gelu` is False), [M, N], on `supports`
    inputs; `programs` walking the tiles (None: one per SM, at most one per tile)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m, k = x.shape
    n = weight.shape[0]
    bm, bn, bk = TILE
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    x_desc, w_desc, o_desc = (
        TensorDescriptor.from_tensor(t, list(shape), layout)
        for t, shape, layout in zip((x, weight, out), ((bm, bk), (bn, bk), (bm, bn)), _layouts(x.dtype)))
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    programs = min(tiles, programs or _sm_count(x.device.index))
    _dense_gelu_ws[(programs,)](x_desc, w_desc, o_desc, bias, m, n, k, GELU=gelu, num_warps=4)
    return out
