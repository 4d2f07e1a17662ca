"""A cooperative variant of crossenc's dense + GELU kernel (crossenc/kernels/gluon_dense_gelu.py),
timed against it and against cuBLAS: 256x128 output tiles, both consumer warpgroups on one tile (128
rows each, sharing W's tile: a quarter less operand traffic through L2 per output than 128x128
tiles), and a third warpgroup that applies the GELU to each half tile in shared memory and stores
it while the consumers run the next tile. Timing only, not the model's; sm_90 and Triton 3.6.

The registers of each consumer (COOP_CONSUMER_REGS, default 208; the epilogue warpgroup, the default
partition, gets 512 - 2 x that - 40 a thread) and the epilogue's rows at a time (COOP_EPILOGUE_ROWS,
default 32) are set from the environment.

    python benchmarks/dense_gelu_cooperative.py
"""

from __future__ import annotations

import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from crossenc.kernels.gluon_dense_gelu import _gelu, _sm_count, dense_gelu

BLOCK_M, BLOCK_N, BLOCK_K = gl.constexpr(256), gl.constexpr(128), gl.constexpr(64)
HALF_M = gl.constexpr(128)  # each consumer's rows; x's and the output's TMA tiles
STAGES = gl.constexpr(3)
CONSUMER_REGS = gl.constexpr(int(os.environ.get("COOP_CONSUMER_REGS", 208)))
EPI_ROWS = gl.constexpr(int(os.environ.get("COOP_EPILOGUE_ROWS", 32)))


@gluon.jit
def _tile(tile, tiles_n):
    return (tile // tiles_n) * BLOCK_M, (tile % tiles_n) * BLOCK_N


@gluon.jit
def _loader(x_desc, w_desc, a_bufs, b_bufs, ready, empty, num_tiles, tiles_n, k_steps):
    """The producer warp: every tile's K steps, in order, into the ring (x's two 128-row halves, W's tile)."""
    step = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile(tile, tiles_n)
        for kk in range(k_steps):
            s = step % STAGES
            mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)  # the first pass finds them free
            mbarrier.expect(ready.index(s), 2 * x_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [off_m, kk * BLOCK_K], ready.index(s), a_bufs.index(2 * s))
            tma.async_copy_global_to_shared(x_desc, [off_m + HALF_M, kk * BLOCK_K], ready.index(s),
                                            a_bufs.index(2 * s + 1))
            tma.async_copy_global_to_shared(w_desc, [off_n, kk * BLOCK_K], ready.index(s), b_bufs.index(s))
            step += 1


@gluon.jit
def _consumer(bias, a_bufs, b_bufs, c_bufs, ready, empty, c_full, c_free, num_tiles, tiles_n, k_steps, n,
              WHICH: gl.constexpr):
    """Consumer WHICH (0 or 1): rows WHICH * 128 .. of every tile, into c_smem for the epilogue."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    dtype: gl.constexpr = c_bufs.dtype
    c_smem = c_bufs.index(WHICH)
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, acc_layout))
    step = 0
    i = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile(tile, tiles_n)
        acc = gl.zeros([HALF_M, BLOCK_N], gl.float32, layout=acc_layout)
        for kk in range(k_steps):
            s = step % STAGES
            mbarrier.wait(ready.index(s), (step // STAGES) & 1)
            a = a_bufs.index(2 * s + WHICH)
            acc = warpgroup_mma(a, b_bufs.index(s).permute((1, 0)), acc, is_async=True)
            acc, _, _ = warpgroup_mma_wait(1, deps=(acc, a, b_bufs.index(s)))
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), pred=kk > 0)
            step += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES))
        b = gl.load(bias + off_n + cols, mask=off_n + cols < n, other=0.0).to(gl.float32)
        mbarrier.wait(c_free.index(WHICH), (i & 1) ^ 1)  # the epilogue is done with the tile before
        c_smem.store((acc + b[None, :]).to(dtype))
        gl.thread_barrier()  # every thread's rows stored
        mbarrier.arrive(c_full.index(WHICH))
        i += 1


@gluon.jit
def _epilogue(o_desc, c_bufs, c_full, c_free, num_tiles, tiles_n, GELU: gl.constexpr):
    """The epilogue warpgroup: each half tile's GELU in place, EPI_ROWS rows at a time, then its store."""
    rows: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    dtype: gl.constexpr = o_desc.dtype
    i = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = _tile(tile, tiles_n)
        for h in gl.static_range(2):
            c = c_bufs.index(h)
            mbarrier.wait(c_full.index(h), i & 1)
            if GELU:
                for r in gl.static_range(0, HALF_M, EPI_ROWS):
                    part = c.slice(r, EPI_ROWS, dim=0)
                    part.store(_gelu(part.load(rows).to(gl.float32)).to(dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(o_desc, [off_m + h * HALF_M, off_n], c)
            tma.store_wait(0)
            mbarrier.arrive(c_free.index(h))
        i += 1


@gluon.jit(do_not_specialize=["m"])
def _dense_gelu_coop(x_desc, w_desc, o_desc, bias, m, n, k, GELU: gl.constexpr):
    dtype: gl.constexpr = x_desc.dtype
    a_bufs = gl.allocate_shared_memory(dtype, [2 * STAGES, HALF_M, BLOCK_K], x_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    c_bufs = gl.allocate_shared_memory(dtype, [2, HALF_M, BLOCK_N], o_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    c_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    c_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(c_full.index(i), count=1)
        mbarrier.init(c_free.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # both consumers release each buffer
    fence_async_shared()

    tiles_n = gl.cdiv(n, BLOCK_N)
    num_tiles = gl.cdiv(m, BLOCK_M) * tiles_n
    k_steps = gl.cdiv(k, BLOCK_K)
    gl.warp_specialize([
        (_epilogue, (o_desc, c_bufs, c_full, c_free, num_tiles, tiles_n, GELU)),
        (_consumer, (bias, a_bufs, b_bufs, c_bufs, ready, empty, c_full, c_free, num_tiles, tiles_n, k_steps, n, 0)),
        (_consumer, (bias, a_bufs, b_bufs, c_bufs, ready, empty, c_full, c_free, num_tiles, tiles_n, k_steps, n, 1)),
        (_loader, (x_desc, w_desc, a_bufs, b_bufs, ready, empty, num_tiles, tiles_n, k_steps)),
    ], [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, 40])


def dense_gelu_coop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = True) -> torch.Tensor:
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    element = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[x.dtype]
    shapes = ([HALF_M.value, BLOCK_K.value], [BLOCK_N.value, BLOCK_K.value], [HALF_M.value, BLOCK_N.value])
    x_desc, w_desc, o_desc = (
        TensorDescriptor.from_tensor(t, shape, gl.NVMMASharedLayout.get_default_for(shape, element))
        for t, shape in zip((x, weight, out), shapes))
    tiles = triton.cdiv(m, BLOCK_M.value) * triton.cdiv(n, BLOCK_N.value)
    _dense_gelu_coop[(min(tiles, _sm_count(x.device.index)),)](x_desc, w_desc, o_desc, bias, m, n, k, GELU=gelu,
                                                              num_warps=4)
    return out


def main() -> None:
    from triton.testing import do_bench

    F = torch.nn.functional
    print(f"consumer registers {CONSUMER_REGS.value}, epilogue rows {EPI_ROWS.value}; median ms (do_bench)")
    for hidden, inter in ((768, 3072), (1024, 4096)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(41_000, hidden, device="cuda", generator=gen).half()
        w = (torch.randn(inter, hidden, device="cuda", generator=gen) / hidden ** 0.5).half()
        b = torch.randn(inter, device="cuda", generator=gen).half()
        ref = F.gelu(x.float() @ w.float().T + b.float())
        err = {name: (fn(x, w, b).float() - ref).abs().max().item()
               for name, fn in (("torch", lambda *a: F.gelu(F.linear(*a))), ("crossenc", dense_gelu),
                                ("cooperative", dense_gelu_coop))}
        times = {"cuBLAS alone": lambda: F.linear(x, w, b), "cuBLAS then GELU": lambda: F.gelu(F.linear(x, w, b)),
                 "crossenc, bias": lambda: dense_gelu(x, w, b, gelu=False),
                 "crossenc, GELU": lambda: dense_gelu(x, w, b),
                 "cooperative, bias": lambda: dense_gelu_coop(x, w, b, gelu=False),
                 "cooperative, GELU": lambda: dense_gelu_coop(x, w, b)}
        ms = {name: do_bench(fn, warmup=25, rep=300, return_mode="median") for name, fn in times.items()}
        print(f"[41,000, {hidden} -> {inter}] " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
              + " | max |error| " + ", ".join(f"{k} {v:.1e}" for k, v in err.items()), flush=True)


if __name__ == "__main__":
    main()
