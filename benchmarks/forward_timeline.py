"""Where a crossenc forward's wall time goes besides its kernels, on one GPU.

For each shape (rerank-short, fp16, random weights, as benchmarks/gpu_forward.py runs it):
- wall: median of CUDA events around each forward (gpu_forward's figure);
- busy: the union of the kernels' intervals in one profiled forward (torch.profiler), and the
  profiled forward's own wall time;
- graph: the same forward captured once as a CUDA graph and replayed, median (no host work: the
  GPU-bound floor of these kernels);
- preamble: host time from the call to the first encoder layer (embeddings, layout, position
  tables), with an idle GPU at the start, and the GPU's time to the same point;
- the host's functions before the first layer (cProfile of 50 preambles, by own time).

    python benchmarks/forward_timeline.py OUT.json [--shapes v3-large v3-base]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time

import torch

from gpu_forward import Batch, build, deberta_config, measure


class _Stop(Exception):
    pass


def kernel_busy_ms(fn) -> tuple[float, float]:
    """(busy ms, wall ms) of one profiled forward: the union of its CUDA kernels' intervals."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        start.record()
        fn()
        end.record()
        end.synchronize()
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, reach = 0.0, float("-inf")
    for a, b in spans:
        busy += max(0.0, b - max(a, reach))
        reach = max(reach, b)
    return busy / 1e3, start.elapsed_time(end)


def graph_ms(fn) -> tuple[float, bool]:
    """Median ms of the forward replayed from one CUDA graph, and whether its output equals eager's."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(), fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    eager = fn()
    graph.replay()
    torch.cuda.synchronize()
    return measure(lambda: (graph.replay(), out)[1], 3, 10)["median_ms"], bool(torch.equal(out, eager))


def preamble(fn, first_layer: torch.nn.Module) -> dict:
    """Host and GPU time from the call to the first layer, the GPU idle at the call."""
    marks = {}

    def stop(module, args):
        marks["event"] = torch.cuda.Event(enable_timing=True)
        marks["event"].record()
        marks["host"] = time.perf_counter()
        raise _Stop

    hook = first_layer.register_forward_pre_hook(stop)
    host, gpu = [], []
    try:
        for _ in range(20):
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            try:
                fn()
            except _Stop:
                pass
            host.append((marks["host"] - t0) * 1e3)
            torch.cuda.synchronize()
            gpu.append(start.elapsed_time(marks["event"]))
        profiler = cProfile.Profile()
        for _ in range(50):
            torch.cuda.synchronize()
            profiler.enable()
            try:
                fn()
            except _Stop:
                pass
            profiler.disable()
    finally:
        hook.remove()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return dict(preamble_host_ms=statistics.median(host), preamble_gpu_ms=statistics.median(gpu),
                preamble_profile=text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--shapes", nargs="+", default=["v3-large", "v3-base"])
    args = parser.parse_args()
    from transformers import DebertaV2ForSequenceClassification

    torch.backends.cuda.matmul.allow_tf32 = False
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    for shape in args.shapes:
        torch.manual_seed(0)
        state = {k: v.half() for k, v in DebertaV2ForSequenceClassification(deberta_config(shape)).state_dict().items()}
        batch = Batch("rerank-short")
        with torch.inference_mode():
            fn = build("crossenc", shape, state, batch)
            first_layer = fn.model.deberta.encoder.layer[0]
            wall = measure(fn, 3, 10)["median_ms"]
            busy, profiled_wall = kernel_busy_ms(fn)
            replay, same = graph_ms(fn)
            row = dict(shape=shape, workload="rerank-short", tokens=batch.tokens, wall_ms=wall,
                       tokens_per_s=batch.tokens / wall * 1e3, busy_ms=busy, profiled_wall_ms=profiled_wall,
                       graph_ms=replay, graph_equals_eager=same, **preamble(fn, first_layer))
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k != "preamble_profile"},
              flush=True)
        print(row["preamble_profile"][-3500:], flush=True)
        results["runs"].append(row)
        del fn
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
