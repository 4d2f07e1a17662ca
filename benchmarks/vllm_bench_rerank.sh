#!/bin/bash
# vLLM's own serving benchmark against crossenc: `vllm bench serve --backend vllm-rerank` on a
# server started with crossenc's entry point (vLLM's defaults otherwise), requests from vLLM's
# random-rerank dataset (1 query and --random-batch-size documents, pairs of --random-input-len
# tokens). Results (vLLM's JSON) in OUT_DIR:
#   bash benchmarks/vllm_bench_rerank.sh MODEL OUT_DIR [more vllm bench serve args]
# e.g. the CPU rows of docs/benchmarks.md:
#   bash benchmarks/vllm_bench_rerank.sh /tmp/crossenc-bench/deberta-v3-xsmall-float32 out \
#     --num-prompts 16 --max-concurrency 1
set -euo pipefail
model=$1 out=$2; shift 2
port=${PORT:-8799}
python -m crossenc.entrypoints.serve "$model" --runner pooling --max-model-len 512 --port "$port" \
  > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { tail -20 "$out/server.log"; exit 1; }
  sleep 1
done
python -c "import sys; from crossenc import compat; compat.run_vllm_cli(sys.argv[1:])" \
  bench serve --backend vllm-rerank --base-url "http://127.0.0.1:$port" --endpoint /v1/rerank \
  --model "$model" --tokenizer "$model" --dataset-name random-rerank --random-input-len 256 \
  --random-batch-size 32 --save-result --result-dir "$out" "$@"
