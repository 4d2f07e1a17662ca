"""The residual add of a layer's output block in cuBLAS's GEMM rather than in the LayerNorm.

Now: h = dense(x) (cuBLAS, bias in its epilogue), then LayerNorm(h + residual) in one kernel
that reads both [T, hidden] tensors. Tried: h = residual + x @ W^T (cuBLAS's addmm, which reads
the residual in its epilogue), then LayerNorm(h + bias), the kernel reading one [T, hidden]
tensor and the bias row. fp16, 41,000 tokens, the four output blocks of v3-base and v3-large;
median ms (`triton.testing.do_bench`) and the max error against an fp32 reference.

    python benchmarks/residual_gemm.py OUT.json
"""
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.append(str(Path(__file__).resolve().parents[1]))  # this checkout's crossenc, after PYTHONPATH's
from crossenc.kernels.triton_add_layernorm import triton_add_layer_norm


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for tokens in (41000,):
        for k, n in ((768, 768), (3072, 768), (1024, 1024), (4096, 1024)):
            torch.manual_seed(0)
            x = torch.randn(tokens, k, device="cuda", dtype=torch.float16)
            w = (torch.randn(n, k, device="cuda") / k ** 0.5).half()
            b = torch.randn(n, device="cuda", dtype=torch.float16)
            res = torch.randn(tokens, n, device="cuda", dtype=torch.float16)
            ln = torch.nn.LayerNorm(n, eps=1e-7, device="cuda", dtype=torch.float16)
            torch.nn.init.normal_(ln.weight)
            torch.nn.init.normal_(ln.bias)
            ref = torch.nn.functional.layer_norm(x.float() @ w.float().t() + b.float() + res.float(), (n,),
                                                 ln.weight.float(), ln.bias.float(), 1e-7)

            def now():
                return triton_add_layer_norm(torch.nn.functional.linear(x, w, b), res, ln.weight, ln.bias, 1e-7)

            def tried():
                return triton_add_layer_norm(torch.addmm(res, x, w.t()), b, ln.weight, ln.bias, 1e-7)

            h1, h2 = torch.nn.functional.linear(x, w, b), torch.addmm(res, x, w.t())
            row = dict(tokens=tokens, k=k, n=n,
                       now_ms=bench(now), tried_ms=bench(tried),
                       linear_ms=bench(lambda: torch.nn.functional.linear(x, w, b)),
                       addmm_ms=bench(lambda: torch.addmm(res, x, w.t())),
                       ln_residual_ms=bench(lambda: triton_add_layer_norm(h1, res, ln.weight, ln.bias, 1e-7)),
                       ln_bias_ms=bench(lambda: triton_add_layer_norm(h2, b, ln.weight, ln.bias, 1e-7)),
                       now_err=(now().float() - ref).abs().max().item(),
                       tried_err=(tried().float() - ref).abs().max().item())
            row["saved_ms"] = row["now_ms"] - row["tried_ms"]
            print(" ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                           for key, value in row.items()), flush=True)
            rows.append(row)
    json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows),
              open(sys.argv[1], "w"), indent=1)
