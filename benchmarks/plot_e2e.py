"""Plot the end-to-end rows (benchmarks/score.py, benchmarks/http_rerank.py) as one SVG, no
plotting library needed: offline pairs/s on the GPU and the CPU, HTTP /rerank pairs/s by clients.

    python benchmarks/plot_e2e.py --gpu docs/benchmarks_gpu_score_h200.jsonl \
        --http docs/benchmarks_http_h200.jsonl --cpu docs/benchmarks_cpu_e2e.jsonl --out docs/benchmarks_e2e.svg

Where a file holds several runs of one system (or of one CrossEncoder batch size), the last row
counts; CrossEncoder is shown at its best batch size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLORS = ("#3b6ea8", "#8fb3de", "#d08c3b", "#7a9a4a", "#a05d8c", "#888888")


def rows(path: str | None) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()] if path else []


def offline_bars(data: list[dict], pairs: int) -> list[tuple[str, float]]:
    """(label, pairs/s): each crossenc/vLLM system's last row, CrossEncoder's best batch size."""
    last: dict[str, float] = {}
    cross_encoder: dict[str, float] = {}  # batch size -> the last run's pairs/s
    for r in data:
        # The GPU's v3-base and the CPU's v3-xsmall rows; not v3-large, nor an A/B's other commit
        # (gpu_session.sh crossenc-tree), which is not this release.
        # Nor a run with engine requests capped (gpu_session.sh crossenc-request-pairs).
        if (r["pairs"] != pairs or r.get("shape", "v3-base") not in ("v3-base", "v3-xsmall") or r.get("crossenc_tree")
                or r.get("env", {}).get("CROSSENC_PACK_MAX_PAIRS")):
            continue
        if r["system"].startswith("CrossEncoder"):
            cross_encoder[r["system"].replace("CrossEncoder.predict", "CrossEncoder, best:")] = r["pairs_per_s"]
            continue
        label = r["system"].replace(" (LLM.classify of token ids)", "")
        if r.get("in_process"):
            label += ", in-process engine"
        if r.get("device", "").startswith("cpu"):
            cores = "every core" if r.get("env", {}).get("VLLM_CPU_NUM_OF_RESERVED_CPU") == "0" else "1 core"
            label += f", {r.get('dtype', '?').removeprefix('torch.')}, {cores}"
        last[label] = r["pairs_per_s"]
    best = max(cross_encoder.items(), key=lambda item: item[1], default=None)
    return list(last.items()) + ([best] if best else [])


def bar_panel(title: str, bars: list[tuple[str, float]], x: int, y: int, w: int) -> list[str]:
    out = [f'<text x="{x}" y="{y}" font-weight="bold">{title}</text>']
    top = max((v for _, v in bars), default=1.0)
    w -= 60  # room for the value
    for i, (label, value) in enumerate(bars):
        by = y + 14 + i * 22
        bw = (w - 310) * value / top
        out.append(f'<text x="{x}" y="{by + 13}" font-size="11">{label[:48]}</text>')
        out.append(f'<rect x="{x + 300}" y="{by}" width="{bw:.1f}" height="16" fill="{COLORS[i % len(COLORS)]}"/>')
        shown = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
        out.append(f'<text x="{x + 304 + bw:.1f}" y="{by + 13}" font-size="11">{shown}</text>')
    return out


def line_panel(title: str, data: list[dict], x: int, y: int, w: int, h: int) -> list[str]:
    series: dict[str, dict[int, float]] = {}
    for r in data:
        if r.get("docs") == 32 and "p50_s" in r:
            series.setdefault(r.get("serve_args") or "vLLM defaults", {})[r["clients"]] = r["pairs_per_s"]
    out = [f'<text x="{x}" y="{y}" font-weight="bold">{title}</text>']
    clients = sorted({c for s in series.values() for c in s})
    top = max((v for s in series.values() for v in s.values()), default=1.0)
    left, bottom = x + 50, y + h

    def px(c: int) -> float:
        return left + (w - 80) * clients.index(c) / max(1, len(clients) - 1)

    def py(v: float) -> float:
        return bottom - (h - 30) * v / top

    out.append(f'<line x1="{left}" y1="{bottom}" x2="{left + w - 80}" y2="{bottom}" stroke="black"/>')
    out += [f'<text x="{px(c):.1f}" y="{bottom + 14}" font-size="11" text-anchor="middle">{c}</text>' for c in clients]
    out.append(f'<text x="{left + (w - 80) / 2}" y="{bottom + 28}" font-size="11" text-anchor="middle">'
               'concurrent clients (1 query x 32 documents per request)</text>')
    for frac in (0.5, 1.0):
        out.append(f'<text x="{x}" y="{py(top * frac) + 4:.1f}" font-size="10">{top * frac:,.0f}</text>')
    for i, (name, points) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = " ".join(f"{px(c):.1f},{py(v):.1f}" for c, v in sorted(points.items()))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{left + 10}" y="{y + 16 + 14 * i}" font-size="11" fill="{color}">{name}</text>')
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu")
    parser.add_argument("--http")
    parser.add_argument("--cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    width, parts, y = 760, [], 24
    gpu, cpu = rows(args.gpu), rows(args.cpu)
    for pairs in (256, 2048):
        if bars := offline_bars(gpu, pairs):
            parts += bar_panel(f"GPU (H200), offline, {pairs} pairs: pairs/s", bars, 10, y, width)
            y += 40 + 22 * len(bars)
    if http := rows(args.http):
        parts += line_panel("GPU (H200), vllm serve /rerank: pairs/s", http, 10, y, width, 200)
        y += 250
    for pairs in sorted({r["pairs"] for r in cpu}):
        bars = offline_bars(cpu, pairs)
        parts += bar_panel(f"CPU (2 cores), offline, {pairs} pairs: pairs/s", bars, 10, y, width)
        y += 40 + 22 * len(bars)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>' + "".join(parts) + "</svg>\n")
    Path(args.out).write_text(svg)


if __name__ == "__main__":
    main()
