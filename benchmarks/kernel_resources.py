"""Registers and spill stack of the Triton attention kernel as compiled for Hopper (sm_90).

No GPU needed: Triton lowers the kernel with the ptxas it ships, and its cuobjdump reads the
resource use of the cubin. One row per tile configuration, position terms and far ranges.
Compiled as the model launches it: Triton's JIT marks every pointer that is 16-byte aligned and
every integer that is a multiple of 16 as such (`tt.divisibility`), and the model's tensors are
(v3: the q/k/v views of the fused projection, strides 2,304 and 64); without those marks every
load is a 16-bit scalar one and the figures are not the running kernel's.

Also the key loop's length: the machine instructions (SASS) of the kernel's longest loop, one
step of BLOCK_N keys for a warp, and per score element of a step (warps x instructions /
(BLOCK_M x BLOCK_N)). Where there are far ranges the longest loop is one of the three key loops.
The op is bound by instruction issue rather than memory: on an H200 the per-element figure
ranked the tile configurations as their timings did (docs/benchmarks.md).

With `--wgmma`, the warpgroup-MMA kernel (crossenc/kernels/gluon_disentangled_attention.py, heads
of 64, fp16/bf16; Triton 3.6) instead, per position terms and far ranges: its loops are the near
step (the longest) and, with far ranges, the two far ranges' steps.

With `--dense-gelu`, the intermediate dense + GELU kernel (crossenc/kernels/gluon_dense_gelu.py):
the registers each partition sets itself (`setmaxnreg`), spill stack, shared memory, and the
warpgroup MMAs per K step of its main loop.

    python benchmarks/kernel_resources.py [--dtype fp16] [--head-dim 64] [--wgmma | --dense-gelu]
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from crossenc.kernels import triton_disentangled_attention as module

CONFIGS = [(16, 16, 1, 2), (32, 32, 1, 2), (32, 32, 2, 2), (32, 32, 4, 2), (64, 64, 4, 1), (64, 64, 4, 2)]
TERMS = [(True, True), (True, False), (False, False)]


def resources(config, dtype: str, head_dim: int, c2p: bool, p2c: bool, far: bool, far_block_n: int | None = None,
              carry: bool | None = None) -> dict:
    """carry: c2p's half window carried from one key step to the next (None: the model's default
    for the tiles, `carries_c2p`)."""
    fn = module._disentangled_attention_fwd
    block_m, block_n, warps, stages = config
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
                      WIN=triton.next_power_of_2(block_m + block_n - 1), HAS_C2P=c2p, HAS_P2C=p2c,
                      PRECISION="ieee" if dtype == "fp32" else "tf32", HAS_FAR=far,
                      FAR_BLOCK_N=far_block_n if far and far_block_n else block_n, PAIRS=0 if dtype == "fp32" else 2,
                      CARRY=module.carries_c2p(block_m, block_n, carry))
    kernel = triton.compile(launch_source(fn, constexprs, dtype), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "num_stages": stages})
    usage, sass = cuobjdump(kernel)
    match = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    loop = len(longest_loop(sass))
    return dict(registers=int(match.group(1)), stack_bytes=int(match.group(2)), shared_bytes=kernel.metadata.shared,
                loop_instructions=loop, per_score_element=loop * warps / (block_m * block_n))


def wgmma_resources(dtype: str, c2p: bool, p2c: bool, far: bool) -> dict:
    """The warpgroup-MMA kernel as the op launches it (one warpgroup, 64x64 tiles)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from crossenc.kernels import gluon_disentangled_attention as gluon

    constexprs = dict(HEAD_DIM=64, HAS_C2P=c2p, HAS_P2C=p2c, HAS_FAR=far, WIDE=False)
    kernel = triton.compile(launch_source(gluon._wgmma_attention_fwd, constexprs, dtype, GluonASTSource),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    usage, sass = cuobjdump(kernel)
    match = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    steps = sorted((len(loop) for loop in loops(sass) if len(loop) > 100), reverse=True)
    return dict(registers=int(match.group(1)), stack_bytes=int(match.group(2)), shared_bytes=kernel.metadata.shared,
                loop_instructions=steps, per_score_element=steps[0] * 4 / (64 * 64))


def dense_gelu_resources(dtype: str) -> dict:
    """The dense + GELU kernel as `dense_gelu` launches it (fp16/bf16; aligned bias)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from crossenc.kernels import gluon_dense_gelu as dense

    element = {"fp16": gl.float16, "bf16": gl.bfloat16}[dtype]
    bm, bn, bk = dense.TILE

    def descriptor(shape):
        layout = gl.NVMMASharedLayout.get_default_for(shape, element)
        return f"tensordesc<{dtype}[{shape[0]}, {shape[1]}],{layout!r}>"

    signature = dict(x_desc=descriptor([bm, bk]), w_desc=descriptor([bn, bk]), o_desc=descriptor([bm, bn]),
                     bias=f"*{dtype}", m="i32", n="i32", k="i32", GELU="constexpr")
    source = GluonASTSource(fn=dense._dense_gelu_ws, signature=signature, attrs={(3,): [["tt.divisibility", 16]]},
                            constexprs={(7,): True})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    usage, sass = cuobjdump(kernel)
    match = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    # The K loops: the innermost loops with MMAs (one per consumer), not the tile loops around them.
    with_mma = [loop for loop in loops(sass) if any("HGMMA" in op for op in loop)]
    main_loops = [loop for loop in with_mma if len(loop) == min(map(len, with_mma))]
    return dict(launch_registers=int(match.group(1)), stack_bytes=int(match.group(2)),
                shared_bytes=kernel.metadata.shared,
                setmaxnreg=sorted(set(map(int, re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)",
                                                          kernel.asm["ptx"])))),
                mma_per_k_step=sorted({op.split()[0] for loop in main_loops for op in loop if "HGMMA" in op}),
                mma_count_per_k_step=[sum("HGMMA" in op for op in loop) for loop in main_loops],
                main_loop_instructions=[len(loop) for loop in main_loops])


def launch_source(fn, constexprs: dict, dtype: str, source_class=ASTSource):
    """The attention kernel `fn` (crossenc's, or a prototype with its parameters) as the model
    launches it: the JIT's specialization, aligned pointers and strides multiples of 16."""
    names = list(inspect.signature(fn.fn).parameters)
    pointers = {"Q", "K", "V", "O", "PK", "PQ"}
    signature = {n: "constexpr" if n in constexprs else f"*{dtype}" if n in pointers
                 else "*i32" if n in ("REL", "CU", "TILES") else "fp32" if n == "qk_scale_log2" else "i32"
                 for n in names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if n in pointers | {"REL", "CU", "TILES"} or n.startswith("stride_")}
    return source_class(fn=fn, signature=signature, attrs=aligned,
                        constexprs={(names.index(n),): v for n, v in constexprs.items()})


def cuobjdump(kernel) -> tuple[str, str]:
    """The compiled kernel's resource usage and machine code (SASS), read by Triton's cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return usage, sass


def loops(sass: str) -> list[list[str]]:
    """The instructions between each backward branch and its target."""
    code = [(int(m.group(1), 16), m.group(2)) for line in sass.splitlines()
            if (m := re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?);", line))]
    spans = [(target, address) for address, text in code
             if (branch := re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)) and (target := int(branch.group(1), 16)) <= address]
    return [[text for a, text in code if lo <= a <= hi] for lo, hi in spans]


def longest_loop(sass: str) -> list[str]:
    """The instructions between a backward branch and its target, the longest such span."""
    return max(loops(sass), key=len, default=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--far-block-n", nargs="+", type=int, default=[],
                        help="also each configuration with far ranges, their keys this many at a time")
    parser.add_argument("--wgmma", action="store_true", help="the warpgroup-MMA kernel instead (fp16/bf16, heads of 64)")
    parser.add_argument("--dense-gelu", action="store_true", help="the intermediate dense + GELU kernel instead")
    args = parser.parse_args()
    if args.dense_gelu:
        print(f"triton {triton.__version__}, sm_90, {args.dtype}, the dense + GELU kernel")
        for key, value in dense_gelu_resources(args.dtype).items():
            print(f"{key}: {value}")
        return
    if args.wgmma:
        print(f"triton {triton.__version__}, sm_90, {args.dtype}, the warpgroup-MMA kernel, 64x64 tiles, 4 warps")
        print("c2p | p2c | far ranges | registers | stack B | shared B | loop instructions (near, far ranges) "
              "| near, per score element")
        for c2p, p2c in TERMS[:2] + [(False, True)]:
            for far in (False, True):
                r = wgmma_resources(args.dtype, c2p, p2c, far)
                print(f"{c2p} | {p2c} | {far} | {r['registers']} | {r['stack_bytes']} | {r['shared_bytes']} | "
                      f"{', '.join(map(str, r['loop_instructions']))} | {r['per_score_element']:.2f}", flush=True)
        return
    print(f"triton {triton.__version__}, sm_90, {args.dtype}, head_dim {args.head_dim}")
    print("config (BM, BN, warps, stages) | c2p | p2c | far ranges (keys per step) | registers | stack B | shared B"
          " | loop instructions | per score element")
    for config in CONFIGS:
        for c2p, p2c in TERMS:
            for far in ((True, False) if c2p or p2c else (False,)):
                for far_block_n in [config[1], *args.far_block_n] if far else [None]:
                    r = resources(config, args.dtype, args.head_dim, c2p, p2c, far, far_block_n)
                    ranges = f"{far} ({far_block_n})" if far else "False"
                    print(f"{config} | {c2p} | {p2c} | {ranges} | {r['registers']} | {r['stack_bytes']} | "
                          f"{r['shared_bytes']} | {r['loop_instructions']} | {r['per_score_element']:.2f}", flush=True)


if __name__ == "__main__":
    main()
