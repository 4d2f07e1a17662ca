"""A summary of a torch profiler trace of vLLM's engine worker (`score.py --engine-profile DIR`,
run with VLLM_CUSTOM_SCOPES_FOR_PROFILING=1): the timeline of its scheduler and model-runner
scopes, the time the GPU ran kernels (the union of their intervals) against the traced span, and
for each model-runner scope of the first step the CPU ops that fill it.

    python benchmarks/trace_summary.py OUT/engine-profile/rank0.*.pt.trace.json.gz
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json


def busy_time(intervals: list[tuple[float, float]]) -> tuple[float, list[tuple[float, float]]]:
    """Total covered time of `intervals` and the gaps between them (length, start)."""
    busy, gaps, end = 0.0, [], None
    for s, e in sorted(intervals):
        if end is None or s > end:
            if end is not None:
                gaps.append((s - end, end))
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy, gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace")
    parser.add_argument("--ops", type=int, default=8, help="CPU ops listed per scope")
    args = parser.parse_args()
    opener = gzip.open if args.trace.endswith(".gz") else open
    with opener(args.trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    t0 = min(e["ts"] for e in events)
    kernels = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    busy, gaps = busy_time(kernels)
    print(f"traced span {(max(e['ts'] + e['dur'] for e in events) - t0) / 1e3:.1f} ms; GPU busy {busy / 1e3:.1f} ms; "
          f"kernels from {(min(kernels)[0] - t0) / 1e3:.1f} to {(max(e for _, e in kernels) - t0) / 1e3:.1f} ms")
    print("largest GPU gaps (ms at ms):", ", ".join(f"{g / 1e3:.2f} at {(at - t0) / 1e3:.1f}"
                                                     for g, at in sorted(gaps, reverse=True)[:5]))
    print("\ntimeline (ms from the trace's start; CPU scopes, and the GPU's span of each model-runner scope):")
    for e in sorted(events, key=lambda e: e["ts"]):
        if e.get("cat") in ("user_annotation", "gpu_user_annotation") and e["dur"] > 10:
            where = "GPU" if e["cat"] == "gpu_user_annotation" else "CPU"
            print(f"  {(e['ts'] - t0) / 1e3:8.2f} {e['dur'] / 1e3:7.2f} {where} {e['name']}")
    cpu = [e for e in events if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver")]
    steps = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("execute_context")]
    first = steps[0] if steps else None
    for scope in sorted(events, key=lambda e: e["ts"]):
        if not (scope.get("cat") == "user_annotation" and scope["name"].startswith("gpu_model_runner")):
            continue
        if first is None or not first["ts"] <= scope["ts"] <= first["ts"] + first["dur"]:
            continue
        start, end = scope["ts"], scope["ts"] + scope["dur"]
        top, last = [], -1.0
        for op in sorted((c for c in cpu if c["ts"] >= start and c["ts"] + c["dur"] <= end),
                         key=lambda c: (c["ts"], -c["dur"])):
            if op["ts"] >= last:  # outermost ops only
                top.append(op)
                last = op["ts"] + op["dur"]
        covered = sum(op["dur"] for op in top)
        print(f"\n{scope['name']} (first step): {scope['dur'] / 1e3:.2f} ms, torch ops {covered / 1e3:.2f} ms, "
              f"Python between them {(scope['dur'] - covered) / 1e3:.2f} ms")
        total, calls = collections.Counter(), collections.Counter()
        for op in top:
            total[op["name"]] += op["dur"]
            calls[op["name"]] += 1
        for name, dur in total.most_common(args.ops):
            print(f"  {dur / 1e3:6.2f} ms x{calls[name]:4d} {name[:80]}")


if __name__ == "__main__":
    main()
