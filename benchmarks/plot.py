"""Plot and tabulate benchmarks/gpu_forward.py results: a PNG and a markdown table.

    python benchmarks/plot.py results.json --png docs/benchmarks.png --markdown
"""

from __future__ import annotations

import argparse
import json

WORKLOADS = ("rerank-short", "rerank-long", "long-2k")


def table(results: dict) -> str:
    runs = results["runs"]
    systems = list(dict.fromkeys(r["system"] for r in runs))
    lines = ["| shape / workload | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
    for shape in dict.fromkeys(r["shape"] for r in runs):
        for workload in WORKLOADS:
            cells = []
            for system in systems:
                row = next((r for r in runs if (r["shape"], r["workload"], r["system"]) == (shape, workload, system)),
                           None)
                cells.append("—" if row is None else
                             f"{row['tokens_per_s'] / 1e6:.2f} M ({row['median_ms']:.1f} ms, {row['peak_gib']:.2f} GiB)")
            lines.append(f"| {shape} {workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    shapes = list(dict.fromkeys(r["shape"] for r in runs))
    systems = list(dict.fromkeys(r["system"] for r in runs))
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.2), squeeze=False)
    width = 0.8 / len(systems)
    for ax, shape in zip(axes[0], shapes):
        for s, system in enumerate(systems):
            values = [next((r["tokens_per_s"] / 1e6 for r in runs
                            if (r["shape"], r["workload"], r["system"]) == (shape, w, system)), 0.0)
                      for w in WORKLOADS]
            bars = ax.bar([w + s * width for w in range(len(WORKLOADS))], values, width, label=system)
            ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
        ax.set_xticks([w + width * (len(systems) - 1) / 2 for w in range(len(WORKLOADS))], WORKLOADS)
        ax.set_title(f"DeBERTa-{shape}, fp16, model forward")
        ax.set_ylabel("real tokens / s (millions)")
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=7)
    env = results["env"]
    fig.suptitle(f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--png")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    if args.png:
        plot(results, args.png)
    if args.markdown:
        print(table(results))


if __name__ == "__main__":
    main()
