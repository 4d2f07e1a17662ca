#!/bin/bash
# On the GPU machine, from the repository root: vLLM 0.26.0 from its two parts (see
# ../shared/gpu-vllm/), then the CUDA tests or end-to-end benchmark steps, logs and rows in OUT_DIR.
#   bash benchmarks/gpu_session.sh PART_A_ZIP PART_B_DIR tests|bench OUT_DIR [STEP...]
# bench steps (default: all, in this order):
#   crossenc-default    benchmarks/score.py, crossenc at vLLM's defaults
#   crossenc-large      ... at the v3-large shape
#   cross-encoder-large sentence-transformers' CrossEncoder at every batch size, v3-large
#   vllm-bench          vLLM's `vllm bench serve --backend vllm-rerank` against crossenc's server
#                       (benchmarks/vllm_bench_rerank.sh; v3-base, after a step that built it)
#   crossenc-tree       crossenc-default with the crossenc package of another commit, for an A/B in one
#                       session: CROSSENC_TREE=DIR holding its crossenc/ (`git archive COMMIT crossenc |
#                       tar -x -C DIR`); DIR's name goes in the rows as crossenc_tree
#   crossenc-graphs     ... with vLLM's PIECEWISE CUDA graphs (crossenc's encoders default to none);
#                       alternate it with crossenc-default for an A/B on one machine
#   crossenc-65536      ... with --max-num-batched-tokens 65536
#   crossenc-compile    ... with CROSSENC_TORCH_COMPILE=1 (vLLM's torch.compile and CUDA graphs)
#   crossenc-per-pair   ... tokenizing pair by pair, as vLLM's own scoring does
#   crossenc-unpacked   ... one pair per engine request (CROSSENC_PACK_PAIRS=0), 100/256/2048 pairs
#   crossenc-request-pairs  ... with engine requests of at most N pairs (CROSSENC_PACK_MAX_PAIRS=N for N
#                       in REQUEST_PAIRS, default "16 32 64"): smaller streamed requests start the engine
#                       sooner and leave less after the last one
#   cross-encoder       sentence-transformers' CrossEncoder at every batch size
#   vllm-bert           vLLM's own BERT of the same width
#   profile             a cProfile of crossenc's LLM.score, engine in-process
#   torch-profile       torch.profiler of crossenc's LLM.score and LLM.classify (256 and 2,048 pairs,
#                       engine in-process): GPU busy time against wall time, model-runner scopes, kernels
#   torch-profile-compile  ... with CROSSENC_TORCH_COMPILE=1
#   engine-profile      vLLM's torch profiler on the engine's worker through one LLM.score of 256 pairs
#                       (vLLM's defaults, engine in its own process): trace and table in OUT_DIR/engine-profile
#   forward             benchmarks/gpu_forward.py: the model forward alone against its peers, v3-base,
#                       rerank-short and long-2k
#   forward-tree        ... crossenc's (and HF's) with the crossenc package of CROSSENC_TREE (an A/B)
#   forward-compile     ... crossenc eager against its encoder compiled (torch.compile, Inductor)
#   kernel              benchmarks/attention_kernel.py: the attention op alone per tile configuration,
#                       far tiles on and off, and the --sweep configurations (Hopper tuning)
#   kernel-far          ... rerank-long and long-2k, the far ranges' keys 64 and 128 at a time too
#   crossenc-v2         crossenc-default on vLLM's V2 model runner (VLLM_USE_V2_MODEL_RUNNER=1), one
#                       engine request per pair; crossenc-v2-packed ... with CROSSENC_PACK_PAIRS_V2=1
#   front-end           benchmarks/front_end_tokenize.py: the front end's PairEncoder against the
#                       tokenizer's call, 256 pairs, on this host's cores; and in chunks of 32/64/128 pairs
#   profile-forward     benchmarks/profile_forward.py: the model forward alone, the same kind of batch
#   client-ceiling      benchmarks/client_ceiling.py: the load generator against a server that answers at once
#   http-default        benchmarks/http_rerank.py, `vllm serve` with its defaults
#   http-tuned          ... with --max-num-batched-tokens 65536 --api-server-count 4
#   http-servers4       ... with --api-server-count 4 only
#   http-servers8       ... with --api-server-count 8 only
#   http-servers8-unpacked  ... and one pair per engine request (CROSSENC_PACK_PAIRS=0)
#   http-compile        ... with CROSSENC_TORCH_COMPILE=1, vLLM's defaults otherwise
#   http-pyspy          ... one client, then py-spy of the server while it answers 1 x 100 documents
#                       (PY_SPY: py-spy's executable)
#   score-pyspy         py-spy of crossenc's LLM.score of 100 and 256 pairs and its engine process
#   fork-check          $FORK_CHECK (a script) with vLLM's default way of starting its engine
#                       process, with and without crossenc
set -o pipefail
source "$(dirname "$2")/install.sh" "$1" "$2" /tmp/site || exit 3
# A fixed host address: the first engine start on a fresh machine otherwise stalls on a host lookup.
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 VLLM_HOST_IP=127.0.0.1
# STALL_DUMP_S=N: N s into the first step, its engine processes print their Python stacks and
# stop (faulthandler on SIGABRT), to see where a first start-up on a fresh machine stalls.
export PYTHONFAULTHANDLER=1
# On the H200 of 2026-12-03, LLM's engine process failed at start with "Cannot re-initialize CUDA
# in forked subprocess" from benchmarks/score.py (not from the tests or `vllm serve`): spawn it.
export VLLM_WORKER_MULTIPROC_METHOD=${VLLM_WORKER_MULTIPROC_METHOD:-spawn}
out=$4
S="python3 benchmarks/score.py --warmup 2 --iters 5 --out $out/gpu_score.jsonl"
H="python3 benchmarks/http_rerank.py --seconds 8 --iters 10 --out $out/http.jsonl"
run_step() {
  case $1 in
    crossenc-default) timeout ${DEFAULT_TIMEOUT:-240} $S --system crossenc --pairs ${PAIRS:-100,256,2048} ;;
    crossenc-tree) CROSSENC_TREE_LABEL=$(basename "$CROSSENC_TREE") PYTHONPATH=$CROSSENC_TREE:$PYTHONPATH \
      run_step crossenc-default ;;
    crossenc-large) timeout 300 $S --system crossenc --shape v3-large --pairs ${PAIRS:-100,256,2048} ;;
    cross-encoder-large) timeout 240 $S --system cross-encoder --shape v3-large --pairs 100,256,2048 ;;
    vllm-bench) mkdir -p "$out/vllm-bench" && timeout 300 bash benchmarks/vllm_bench_rerank.sh \
      /tmp/crossenc-bench/deberta-v3-base "$out/vllm-bench" --num-prompts 20480 --max-concurrency 64 ;;
    crossenc-compile) CROSSENC_TORCH_COMPILE=1 timeout 300 $S --system crossenc ;;
    crossenc-graphs) timeout 240 $S --system crossenc --compilation-config '{"cudagraph_mode": "PIECEWISE"}' \
      --pairs ${PAIRS:-100,256,2048} ;;
    crossenc-65536) timeout 120 $S --system crossenc --max-num-batched-tokens 65536 ;;
    crossenc-per-pair) timeout 100 $S --system crossenc --per-pair --pairs 256 ;;
    crossenc-unpacked) CROSSENC_PACK_PAIRS=0 timeout 150 $S --system crossenc --pairs 100,256,2048 ;;
    crossenc-request-pairs) for n in ${REQUEST_PAIRS:-16 32 64}; do
        CROSSENC_PACK_MAX_PAIRS=$n DEFAULT_TIMEOUT=120 run_step crossenc-default; done ;;
    cross-encoder) timeout 100 $S --system cross-encoder --pairs 100,256,2048 ;;
    vllm-bert) timeout 110 $S --system vllm-bert ;;
    profile) VLLM_ENABLE_V1_MULTIPROCESSING=0 timeout 80 $S --system crossenc --pairs 256 \
      --profile "$out/profile-crossenc-score.txt" ;;
    torch-profile) VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CUSTOM_SCOPES_FOR_PROFILING=1 timeout 200 $S --system crossenc \
      --pairs ${PAIRS:-256,2048} --torch-profile "$out/torch-profile-score${PROFILE_SUFFIX:-}.txt" ;;
    torch-profile-compile) CROSSENC_TORCH_COMPILE=1 PROFILE_SUFFIX=-compile run_step torch-profile ;;
    engine-profile) VLLM_CUSTOM_SCOPES_FOR_PROFILING=1 timeout 150 $S --system crossenc --pairs ${PAIRS:-256} \
      --engine-profile "$out/engine-profile" ;;
    forward) timeout 500 python3 benchmarks/gpu_forward.py --shapes v3-base --workloads rerank-short long-2k \
      --out "$out/forward.json" ;;
    forward-tree) PYTHONPATH=$CROSSENC_TREE:$PYTHONPATH timeout 200 python3 benchmarks/gpu_forward.py --shapes v3-base \
      --workloads rerank-short long-2k --systems hf-eager crossenc --out "$out/forward-$(basename "$CROSSENC_TREE").json" ;;
    forward-compile) timeout 300 python3 benchmarks/gpu_forward.py --shapes v3-base --workloads rerank-short long-2k \
      --systems crossenc crossenc+compile --out "$out/forward-compile.json" ;;
    kernel) timeout 500 python3 benchmarks/attention_kernel.py --sweep --out "$out/kernel.json" ;;
    kernel-far) timeout 300 python3 benchmarks/attention_kernel.py --workloads rerank-long long-2k \
      --far-block-n 64 128 --out "$out/kernel-far.json" ;;
    crossenc-v2) VLLM_USE_V2_MODEL_RUNNER=1 timeout 240 $S --system crossenc --pairs ${PAIRS:-100,256,2048} ;;
    crossenc-v2-packed) VLLM_USE_V2_MODEL_RUNNER=1 CROSSENC_PACK_PAIRS_V2=1 timeout 240 $S --system crossenc \
      --pairs ${PAIRS:-100,256,2048} ;;
    front-end) timeout 120 python3 benchmarks/front_end_tokenize.py --pairs 256 --chunks 32,64,128 \
      --out "$out/front_end.jsonl" ;;
    profile-forward) timeout 100 python3 benchmarks/profile_forward.py --system crossenc --shape v3-base \
      --workload rerank-short --rows 30 ;;
    client-ceiling) timeout 100 python3 benchmarks/client_ceiling.py --seconds 4 --out $out/client_ceiling.jsonl ;;
    http-default) timeout 240 $H ;;
    http-compile) CROSSENC_TORCH_COMPILE=1 timeout 200 $H ;;
    http-tuned) timeout 120 $H --serve-args "--max-num-batched-tokens 65536 --api-server-count 4" ;;
    http-servers4) timeout 240 $H --serve-args "--api-server-count 4" ;;
    http-servers8) timeout 130 $H --serve-args "--api-server-count 8" ;;
    http-servers8-unpacked) CROSSENC_PACK_PAIRS=0 timeout 130 $H --serve-args "--api-server-count 8" ;;
    http-pyspy) timeout 300 $H --concurrency 1 --py-spy "$PY_SPY" --profile-out "$out/pyspy-serve" ;;
    score-pyspy) timeout 200 "$PY_SPY" record --subprocesses --rate 1000 --format raw --nonblocking \
      --output "$out/pyspy-score.txt" -- $S --system crossenc --pairs 100,256 ;;
    fork-check) for plugins in crossenc ""; do
        echo "== VLLM_PLUGINS=$plugins"
        env -u VLLM_WORKER_MULTIPROC_METHOD VLLM_PLUGINS=$plugins timeout 150 python3 "$FORK_CHECK"
      done ;;
    *) echo "unknown step $1"; return 2 ;;
  esac
}
case $3 in
  tests) timeout 560 python3 -m pytest ${TESTS:-tests/gpu tests/kernels} -q -s -p no:cacheprovider 2>&1 | tee "$out/cuda-tests.log" | grep -E "passed|failed|FAILED|Error|max" ;;
  bench)
    shift 4
    for s in ${@:-crossenc-default crossenc-65536 crossenc-per-pair cross-encoder vllm-bert profile http-default http-tuned}; do
      dump=
      if [ -n "${STALL_DUMP_S:-}" ]; then (sleep "$STALL_DUMP_S"; pkill -ABRT -f EngineCore) & dump=$!; STALL_DUMP_S=; fi
      run_step "$s" > "$out/$s.log" 2>&1; echo "== $s (rc $?) $(date +%T)"
      [ -n "$dump" ] && kill "$dump" 2>/dev/null
      grep -E "pairs/s|tok/s|256 pairs|docs:|engine start|Traceback|Error" "$out/$s.log" | tail -12
    done ;;
esac
