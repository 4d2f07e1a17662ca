"""LayerNorm(x + residual) on one GPU: torch's add then LayerNorm against one Triton kernel.

The model's kernel on CUDA (crossenc/kernels/triton_add_layernorm.py): [T, 768 | 1024] fp16, T = 41,000 and 65,536,
errors against an fp32 reference, per rows-per-program and warps.

    python benchmarks/fused_add_layernorm.py OUT.json
"""
import json, sys
from pathlib import Path

import torch, triton

sys.path.append(str(Path(__file__).resolve().parents[1]))  # this checkout's crossenc, after PYTHONPATH's
from crossenc.kernels.triton_add_layernorm import triton_add_layer_norm


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
                    fn = lambda: triton_add_layer_norm(x, r, ln.weight, ln.bias, 1e-7, rows=rows, num_warps=warps)
                    err = (fn().float() - ref).abs().max().item()
                    row[f"triton_{rows}x{warps}_ms"] = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
                    row[f"triton_{rows}x{warps}_err"] = err
                except Exception as e:
                    row[f"triton_{rows}x{warps}"] = repr(e)[:200]
            print(row, flush=True)
            res.append(row)
    json.dump(res, open(sys.argv[1], "w"), indent=1)
