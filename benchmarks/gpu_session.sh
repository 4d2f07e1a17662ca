#!/bin/bash
# On the GPU machine, from the repository root: vLLM 0.26.0 from its two parts (see
# ../shared/gpu-vllm/), then the CUDA tests or the end-to-end benchmark.
#   bash benchmarks/gpu_session.sh PART_A_ZIP PART_B_DIR tests|bench OUT_DIR
set -o pipefail
source "$(dirname "$2")/install.sh" "$1" "$2" /tmp/site || exit 3
# Imported by vLLM 0.26's API server (model-hosting-container-standards) and not in part-b.
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
case $3 in
  tests) timeout 560 python3 -m pytest ${TESTS:-tests/gpu tests/kernels} -q -s -p no:cacheprovider 2>&1 | tee "$4/cuda-tests.log" | grep -E "passed|failed|FAILED|Error|max" ;;
  bench)
    for args in "--system crossenc" "--system crossenc --per-pair" "--system crossenc --enforce-eager" "--system cross-encoder"; do
      timeout 200 python3 benchmarks/gpu_score.py $args --out "$4/gpu_score.jsonl" --iters 5 > "$4/bench-${args// /_}.log" 2>&1
      grep "pairs/s" "$4/bench-${args// /_}.log"
    done
    grep -h -i "captur\|graph\|compil" "$4"/bench-*crossenc.log | grep -v "Initializing" | cut -c1-200 | head -12 ;;
esac
