#!/bin/bash
# The model forward and the attention op of this checkout's crossenc against another commit's, arms
# alternated in one process per run (no vLLM needed), on one GPU; rows and logs in OUT_DIR.
#   bash benchmarks/forward_ab.sh COMMIT_TREE OUT_DIR [ROUNDS]
# COMMIT_TREE holds the other commit's crossenc/ (`git archive COMMIT crossenc | tar -x -C DIR`).
# Each round runs benchmarks/gpu_forward.py (v3-base and v3-large, every workload, crossenc only;
# transformers' eager model too in the first, for |dlogit|) for this checkout, then for the other;
# then benchmarks/attention_kernel.py for each. ROUNDS defaults to 2.
set -o pipefail
tree=$1 out=$2 rounds=${3:-2}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
arm() {  # NAME PYTHONPATH ROUND SYSTEMS
  echo "== forward $1 round $3 $(date +%T)"
  PYTHONPATH=$2:$PWD/benchmarks timeout 200 python3 benchmarks/gpu_forward.py --shapes v3-base v3-large \
    --systems $4 --out "$out/forward-$1-$3.json" 2>&1 | grep -E "tok/s|FAIL|Error"
}
for round in $(seq "$rounds"); do
  systems=crossenc; [ "$round" = 1 ] && systems="hf-eager crossenc"
  arm head "$PWD" "$round" "$systems"
  arm "$(basename "$tree")" "$tree" "$round" crossenc
done
for name in head "$(basename "$tree")"; do
  path=$PWD; [ "$name" = head ] || path=$tree
  echo "== attention op $name $(date +%T)"
  PYTHONPATH=$path:$PWD/benchmarks timeout 120 python3 benchmarks/attention_kernel.py --out "$out/op-$name.json" \
    2>&1 | grep -v "^$" | tail -9
done
