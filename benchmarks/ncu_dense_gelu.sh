#!/bin/bash
# Nsight Compute's throughput figures (SpeedOfLight, MemoryWorkloadAnalysis) of the dense + GELU
# kernel (crossenc/kernels/gluon_dense_gelu.py) and of cuBLAS's GEMM with bias on the same shape,
# fp16 [41,000, 1,024] x [4,096, 1,024]^T (v3-large's intermediate dense, rerank-short's tokens):
# one launch each, after two. Needs an sm_90 GPU and `ncu`; the reports go to OUT_DIR.
#   bash benchmarks/ncu_dense_gelu.sh OUT_DIR
out=${1:?OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
script=$(mktemp --suffix .py)
cat > "$script" <<'PY'
import sys
import torch
from crossenc.kernels.gluon_dense_gelu import dense_gelu
x = torch.randn(41000, 1024, device="cuda").half()
w = (torch.randn(4096, 1024, device="cuda") / 32).half()
b = torch.zeros(4096, device="cuda").half()
for _ in range(3):
    dense_gelu(x, w, b) if sys.argv[1] == "kernel" else torch.nn.functional.linear(x, w, b)
torch.cuda.synchronize()
PY
for system in kernel cublas; do
  timeout 150 ncu --launch-skip 2 --launch-count 1 --kernel-name regex:"_dense_gelu_ws|nvjet|gemm|sm90" \
    --section SpeedOfLight --section MemoryWorkloadAnalysis python3 "$script" $system > "$out/ncu-$system.txt" 2>&1
  echo "== $system: $(grep -oE '^  [a-z_0-9]+' "$out/ncu-$system.txt" | head -1)"
  grep -E "Duration|L2 Cache Throughput|DRAM Throughput|Compute \(SM\) Throughput|L2 Hit Rate" "$out/ncu-$system.txt"
done
rm -f "$script"
