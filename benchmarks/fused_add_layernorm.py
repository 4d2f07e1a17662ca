"""LayerNorm(x + residual) on one GPU: torch's add then LayerNorm against one Triton kernel.

Timing only (the kernel is not yet the model's): [T, 768 | 1024] fp16, T = 41,000 and 65,536,
errors against an fp32 reference, per rows-per-program and warps.

    python benchmarks/fused_add_layernorm.py OUT.json
"""
import json, sys
import torch, triton
import triton.language as tl


@triton.jit
def _add_ln(X, R, W, B, O, n_rows, eps, N: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    cmask = cols < N
    mask = (rows[:, None] < n_rows) & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(cmask[None, :], x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    y = xc * tl.rsqrt(var + eps)[:, None] * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :] + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(O + offs, y.to(O.dtype.element_ty), mask=mask)


def add_ln(x, r, w, b, eps, rows=4, warps=4):
    out = torch.empty_like(x)
    n_rows, n = x.shape
    _add_ln[(triton.cdiv(n_rows, rows),)](x, r, w, b, out, n_rows, eps, N=n, BLOCK=triton.next_power_of_2(n), ROWS=rows, num_warps=warps)
    return out


if __name__ == "__main__":
    res = []
    for hidden in (768, 1024):
        for tokens in (41000, 65536):
            x, r = torch.randn(2, tokens, hidden, device="cuda", dtype=torch.float16).unbind(0)
            ln = torch.nn.LayerNorm(hidden, eps=1e-7, device="cuda", dtype=torch.float16)
            torch.nn.init.normal_(ln.weight); torch.nn.init.normal_(ln.bias)
            ref = torch.nn.functional.layer_norm((x.float() + r.float()), (hidden,), ln.weight.float(), ln.bias.float(), 1e-7)
            t_torch = triton.testing.do_bench(lambda: ln(x + r), warmup=25, rep=100, return_mode="median")
            e_torch = (ln(x + r).float() - ref).abs().max().item()
            row = dict(hidden=hidden, tokens=tokens, torch_ms=t_torch, torch_err=e_torch)
            for rows, warps in ((1, 4), (2, 4), (4, 4), (4, 8), (8, 8), (16, 8)):
                try:
                    fn = lambda: add_ln(x, r, ln.weight, ln.bias, 1e-7, rows, warps)
                    err = (fn().float() - ref).abs().max().item()
                    row[f"triton_{rows}x{warps}_ms"] = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
                    row[f"triton_{rows}x{warps}_err"] = err
                except Exception as e:
                    row[f"triton_{rows}x{warps}"] = repr(e)[:200]
            print(row, flush=True)
            res.append(row)
    json.dump(res, open(sys.argv[1], "w"), indent=1)
