"""The Triton kernel's logic on any machine: Triton's interpreter (TRITON_INTERPRET=1, which runs
a kernel's program instances with numpy on the CPU) runs `triton_disentangled_attention` against
the torch reference, for every bucket configuration and position term, batches with one and
with many sequences, and the bounded layout vLLM uses on a GPU (empty sequences at the end of
`cu_seqlens`, the query tiles made once by the caller). The CUDA tests (test_triton_disentangled_attention.py)
check the compiled kernel's numerics in fp16/bf16 on the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# (name, lengths, heads, head dim, dtype, position_buckets, max_relative_positions, c2p, p2c, bounded)
CASES = [
    ("v3 log buckets", [70, 33, 1, 5], 2, 32, "float32", 256, 512, True, True, False),
    ("v3 log buckets, one sequence", [1], 1, 32, "float32", 256, 512, True, True, False),
    ("small log buckets, past the buckets", [150, 2], 1, 32, "float32", 16, 32, True, True, False),
    ("v2 linear positions", [40, 64, 3], 2, 64, "float32", -1, 512, True, True, False),
    ("v2 linear, clamped span", [90], 1, 32, "float32", -1, 24, True, True, False),
    ("c2p only", [50, 17], 1, 32, "float32", 256, 512, True, False, False),
    ("p2c only", [50, 17], 1, 32, "float32", 256, 512, False, True, False),
    ("no position terms", [50, 17], 1, 32, "float32", 256, 512, False, False, False),
    ("many sequences", [3] * 37 + [1] * 5, 1, 32, "float32", 256, 512, True, True, False),
    ("bounded layout, as vLLM on a GPU", [45, 2, 30], 2, 32, "float32", 256, 512, True, True, True),
    ("float16", [33, 40], 1, 32, "float16", 256, 512, True, True, False),
    # Past v3's buckets (distances >= ~512 share a row): key tiles that far take the row's terms.
    ("v3 log buckets, 600 tokens", [600, 7], 1, 32, "float32", 256, 512, True, True, False),
    ("v3 log buckets, 600 tokens, c2p only", [600], 1, 32, "float32", 256, 512, True, False, False),
    ("v3 log buckets, 600 tokens, p2c only, float16", [600], 1, 32, "float16", 256, 512, False, True, False),
    # fp16 past 512 tokens: the default 64-row tiles, their query tiles made by the caller as the model does.
    ("v3 log buckets, 600 tokens, float16, bounded layout", [530, 70], 1, 64, "float16", 256, 512, True, True, True),
]

_CHILD = r"""
import json, sys
import torch
from crossenc.kernels.disentangled_attention import (
    attention_scale, disentangled_attention_ref, query_tile_rows, query_tiles, relative_position_index,
    saturation_distance)
from crossenc.kernels.triton_disentangled_attention import triton_disentangled_attention

errors = {}
for name, lengths, heads, dim, dtype, buckets, max_rel, c2p, p2c, bounded in json.loads(sys.argv[1]):
    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(len(errors))
    total = sum(lengths)
    max_seqlen = max(128, *lengths) if bounded else max(lengths)  # bounded: vLLM's max_model_len
    cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    if bounded:  # more entries than sequences: the empty ones end at the token count
        cu = torch.cat([cu, cu.new_full((4,), total)])
    cu = cu.to(torch.int32)
    q, k, v = torch.randn(3, total, heads, dim, generator=gen).to(dtype).unbind(0)
    span = buckets if buckets > 0 else max_rel
    pos_key = torch.randn(2 * span, heads, dim, generator=gen).to(dtype) if c2p else None
    pos_query = torch.randn(2 * span, heads, dim, generator=gen).to(dtype) if p2c else None
    rel = relative_position_index(max_seqlen, buckets, max_rel, span)
    scale = attention_scale(dim, 1 + int(c2p) + int(p2c))
    tiles = query_tiles(cu, query_tile_rows(dim, dtype, max_seqlen)) if bounded else None
    ref = disentangled_attention_ref(q.float(), k.float(), v.float(), cu, max_seqlen,
                                     None if pos_key is None else pos_key.float(),
                                     None if pos_query is None else pos_query.float(), rel, scale)
    # With the far tiles as the model runs it, and (short cases; the long ones cost ~10 s each
    # interpreted) with the window everywhere.
    # Where there are far ranges, also with their keys taken 64 at a time (twice the near tiles').
    runs = [(saturation_distance(rel), None, name)] + ([(None, None, name + ", window only")] if total <= 256 else [])
    if saturation_distance(rel) < max_seqlen:
        runs.append((saturation_distance(rel), 64, name + ", far keys 64 at a time"))
    # These as the model runs them (c2p's half window carried where `carries_c2p` says: 64-key tiles);
    # short cases also in 16x16 tiles (a window of 32 rows; the query tiles made here), carried.
    runs = [(*run, None, None) for run in runs] + ([(saturation_distance(rel), None, name + ", 16x16 tiles", (16, 16, 1, 2), True)]
                                                   if total <= 256 else [])
    # Short cases also with c2p's half window carried from step to step in the model's tiles.
    if total <= 256:
        runs.append((saturation_distance(rel), None, name + ", half window carried", None, True))
    for far, far_block_n, label, config, carry in runs:
        out = triton_disentangled_attention(q, k, v, cu, max_seqlen, pos_key, pos_query, rel, scale,
                                            tiles=None if config else tiles, far=far, far_block_n=far_block_n,
                                            config=config, carry_c2p=carry)
        errors[label] = ((out.float() - ref).norm() / ref.norm()).item()
    if name == "v3 log buckets":  # into an output the caller allocated, a strided view (vLLM's graphs' buffers)
        buffer = torch.full((total, heads + 1, dim), float("nan"), dtype=dtype)
        out = triton_disentangled_attention(q, k, v, cu, max_seqlen, pos_key, pos_query, rel, scale, tiles=tiles,
                                            far=saturation_distance(rel), out=buffer[:, 1:])
        assert out.data_ptr() == buffer[:, 1:].data_ptr() and buffer[:, 0].isnan().all()
        errors[name + ", into a given output"] = ((buffer[:, 1:].float() - ref).norm() / ref.norm()).item()
print(json.dumps(errors))
"""


# A loop whose bound is a kernel argument, as the kernel's: the interpreter of some Triton releases
# (3.6) turns the bound into a Python int with int() of a 1-element array, which NumPy 2.4 refuses.
_PROBE = r"""
import torch, triton, triton.language as tl

@triton.jit
def _loop(X, n):
    total = 0
    for _ in range(n):
        total += 1
    tl.store(X, total)

x = torch.zeros(1, dtype=torch.int32)
_loop[(1,)](x, 3)
assert x.item() == 3
"""


def _interpret(code: str, *args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def interpreted_errors():
    probe = _interpret(_PROBE)
    if probe.returncode != 0:
        import numpy
        import triton

        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run a loop of a runtime length with "
                    f"NumPy {numpy.__version__} ({probe.stderr.strip().splitlines()[-1]}); the CUDA tests "
                    "check the compiled kernel")
    out = _interpret(_CHILD, json.dumps(CASES))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_interpreted_kernel_matches_reference(interpreted_errors, case):
    name, dtype = case[0], case[4]
    labels = [label for label in interpreted_errors
              if label in (name, name + ", window only", name + ", into a given output", name + ", far keys 64 at a time",
                           name + ", 16x16 tiles", name + ", half window carried")]
    assert name in labels
    for label in labels:
        assert interpreted_errors[label] < (1e-5 if dtype == "float32" else 2e-3), label


@pytest.mark.parametrize("dtype,head_dim,c2p,p2c,far,block,far_block_n,carry", [
    ("fp16", 64, True, True, True, 32, 32, False), ("fp16", 64, True, True, True, 32, 64, False),
    ("fp16", 64, True, True, False, 32, 32, False), ("fp16", 64, True, True, False, 32, 32, True),
    ("fp16", 64, True, True, True, 64, 64, True),  # the default past 512 tokens (`carries_c2p`)
    ("bf16", 128, False, True, True, 32, 32, False), ("fp32", 32, True, False, False, 32, 32, False)])
def test_kernel_compiles_for_hopper(dtype, head_dim, c2p, p2c, far, block, far_block_n, carry):
    """The compiled kernel, not only the interpreted one: Triton lowers it for an H100/H200
    (sm_90) with the ptxas it ships, no GPU needed, as the model launches it (aligned pointers,
    strides multiples of 16); every batch-dependent integer is left unspecialized (one kernel
    whatever the batch), and each key loop computes its softmax once: two exponentials (the
    rescale and the probabilities) per loop, where Triton once computed them in two layouts."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from crossenc.kernels import triton_disentangled_attention as module

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton ships no ptxas")
    fn = module._disentangled_attention_fwd
    assert {"num_seqs", "max_seqlen", "search_steps", "far"} <= {p.name for p in fn.params if p.do_not_specialize}
    names = list(inspect.signature(fn.fn).parameters)
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_M=block, BLOCK_N=block, WIN=2 * block, HAS_C2P=c2p, HAS_P2C=p2c,
                      PRECISION="ieee" if dtype == "fp32" else "tf32", HAS_FAR=far, FAR_BLOCK_N=far_block_n,
                      PAIRS=0 if dtype == "fp32" else 2, CARRY=carry)
    pointers = {"Q", "K", "V", "O", "PK", "PQ"}
    signature = {n: "constexpr" if n in constexprs else f"*{dtype}" if n in pointers
                 else "*i32" if n in ("REL", "CU", "TILES") else "fp32" if n == "qk_scale_log2" else "i32"
                 for n in names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if n in pointers | {"REL", "CU", "TILES"} or n.startswith("stride_")}
    source = ASTSource(fn=fn, signature=signature, attrs=aligned,
                       constexprs={(names.index(n),): v for n, v in constexprs.items()})
    for warps in (1, 2) if block == 32 else (4,):
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
        assert kernel.asm["cubin"]
        loops = 3 if far else 1  # the keys before, near and after the query tile
        assert kernel.asm["ttgir"].count("math.exp2") == 2 * loops, warps
        # 16-bit window terms are gathered in pairs, the half kept by one prmt per output.
        assert ("prmt.b32.rc16" in kernel.asm["ptx"]) == (dtype != "fp32"), warps


_ADD_LN_CHILD = r"""
import json
import torch
from crossenc.kernels.triton_add_layernorm import triton_add_layer_norm

errors = {}
for rows, hidden, dtype in ((10, 768, torch.float32), (3, 1024, torch.float32), (9, 96, torch.float16), (0, 64, torch.float32)):
    gen = torch.Generator().manual_seed(rows)
    x, r = (torch.randn(rows, hidden, generator=gen) * 3 + 1).to(dtype), torch.randn(rows, hidden, generator=gen).to(dtype)
    w, b = torch.randn(hidden, generator=gen).to(dtype), torch.randn(hidden, generator=gen).to(dtype)
    ref = torch.nn.functional.layer_norm(x.float() + r.float(), (hidden,), w.float(), b.float(), 1e-7)
    out = triton_add_layer_norm(x, r, w, b, 1e-7)
    assert out.shape == x.shape and out.dtype == dtype
    errors[f"{rows}x{hidden} {dtype}"] = (out.float() - ref).abs().max().item() if rows else 0.0
    if rows:  # the other form: one row (a bias) added to every row
        ref = torch.nn.functional.layer_norm(x.float() + r[0].float(), (hidden,), w.float(), b.float(), 1e-7)
        errors[f"{rows}x{hidden} {dtype} row"] = (triton_add_layer_norm(x, r[0].clone(), w, b, 1e-7).float() - ref).abs().max().item()
print(json.dumps(errors))
"""


def test_interpreted_add_layer_norm_matches_torch(interpreted_errors):
    """The fused residual add + LayerNorm (the encoder blocks' CUDA path): rows that do not fill
    a program, features that are not a power of two, fp16 rounding once at the end; and its form
    with one row added to every row."""
    out = _interpret(_ADD_LN_CHILD)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = json.loads(out.stdout.splitlines()[-1])
    assert len(errors) == 7
    for label, error in errors.items():
        assert error < (1e-4 if "float32" in label else 1e-2), (label, error)


@pytest.mark.parametrize("dtype,hidden", [("fp16", 768), ("bf16", 1024), ("fp32", 1536)])
def test_add_layer_norm_compiles_for_hopper(dtype, hidden):
    """The fused residual add + LayerNorm lowered for sm_90, as the encoder blocks launch it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from crossenc.kernels import triton_add_layernorm as module

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton ships no ptxas")
    constexprs = dict(N=hidden, BLOCK=triton.next_power_of_2(hidden), ROWS=module.ROWS_PER_PROGRAM, R_ROW=False)
    signature = dict(X=f"*{dtype}", R=f"*{dtype}", W=f"*{dtype}", B=f"*{dtype}", O=f"*{dtype}", n_rows="i32",
                     eps="fp32", N="constexpr", BLOCK="constexpr", ROWS="constexpr", R_ROW="constexpr")
    names = list(signature)
    source = ASTSource(fn=module._add_layer_norm_fwd, signature=signature,
                       constexprs={(names.index(n),): v for n, v in constexprs.items()})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert kernel.asm["cubin"]
