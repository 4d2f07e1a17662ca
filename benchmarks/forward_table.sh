#!/bin/bash
# docs/benchmarks.md's GPU forward table on one GPU, no vLLM needed: benchmarks/gpu_forward.py with
# every system (the peers' wheels from PEERS_DIR, installed without dependencies into a scratch
# directory), v3-base and v3-large, every workload; its plot and table; the forward's per-kernel
# profile (v3-base rerank-short); the attention op against torch's varlen FlashAttention
# (benchmarks/attention_kernel.py, and Nsight Compute's occupancy and issue figures of the kernel
# where `ncu` is installed); the intermediate dense + GELU benchmark; the feed-forward in token
# chunks (benchmarks/ffn_chunks.py). Results in OUT_DIR.
#   pip download flashdeberta==0.0.8 disentangled-flash==1.1.1 --no-deps -d PEERS_DIR   # where PyPI is reachable
#   bash benchmarks/forward_table.sh PEERS_DIR OUT_DIR
set -o pipefail
peers=$1 out=$2
export PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
pip install --no-deps --target /tmp/crossenc-peers "$peers"/*.whl -q 2>&1 | grep -v "root"
export PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/crossenc-peers
echo "== forward, every system $(date +%T)"
timeout 300 python3 benchmarks/gpu_forward.py --out "$out/benchmarks.json" 2>&1 | grep -E "tok/s|FAIL|rror"
python3 benchmarks/plot.py "$out/benchmarks.json" --png "$out/benchmarks.png" --markdown > "$out/table.md" 2>&1 \
  || echo "no plot: $(tail -1 "$out/table.md")"
echo "== profile of the forward $(date +%T)"
timeout 100 python3 benchmarks/profile_forward.py --system crossenc --shape v3-base --workload rerank-short \
  --rows 30 > "$out/profile_forward.txt" 2>&1
tail -36 "$out/profile_forward.txt" | cut -c1-160
echo "== attention op $(date +%T)"
timeout 150 python3 benchmarks/attention_kernel.py --out "$out/kernel.json" 2>&1 | grep -A30 "^best per"
if command -v ncu > /dev/null; then
  timeout 150 ncu --kernel-name "regex:_disentangled_attention|_wgmma_attention_fwd" --launch-skip 2 --launch-count 1 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    python3 benchmarks/attention_kernel.py --out /tmp/crossenc-ncu.json --workloads rerank-short --model-only > "$out/ncu.txt" 2>&1
  grep -E "Theoretical Occupancy|Achieved Active Warps|Issue Slots Busy|Warp Cycles Per Issued|Block Limit" "$out/ncu.txt"
fi
echo "== dense + GELU $(date +%T)"
timeout 200 python3 benchmarks/fused_dense_gelu.py "$out/dense_gelu.json" 2>&1 | grep -E "^\[|rror"
echo "== feed-forward in chunks $(date +%T)"
timeout 100 python3 benchmarks/ffn_chunks.py "$out/ffn_chunks.json" 2>&1 | grep -E "^v3|rror"
echo "== end $(date +%T)"
