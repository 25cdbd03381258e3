"""Draws docs/accuracy.png: every tool's estimate against the measured value, log-log, with the y = x line.

Run with the peers' venv (it has matplotlib; the project's venv does not need it):

    /work/peers-venv/bin/python benchmarks/plot_accuracy.py ROWS.jsonl [--out docs/accuracy.png]

ROWS.jsonl has one line per record x tool, as benchmarks/accuracy.py writes it:
    {"record_id": "...", "category": "LoRA", "measured_bytes": 1.9e10, "tool": "modelmem", "estimate_bytes": 2.0e10}
`estimate_bytes` is null where the tool cannot express the record; those rows are counted in the legend, not drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

GIB = 2**30
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "accuracy.png"

# modelmem first and most visible; peers and rules of thumb after it in a fixed order, others appended.
TOOL_ORDER = ["modelmem", "accelerate", "llm-analysis", "deepspeed", "hf-mem", "seed", "16-bytes-per-param",
              "weights-x1.2"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h"]


def load_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("measured_bytes", "tool"):
                if key not in row:
                    raise ValueError(f"{path}:{line_no}: row has no {key!r}")
            rows.append(row)
    return rows


def plot(rows: list[dict], out: Path, title: str | None = None) -> dict[str, tuple[int, int]]:
    """Writes the figure; returns {tool: (drawn, cannot express)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    missing: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.get("estimate_bytes") is None or not row["measured_bytes"]:
            missing[row["tool"]] += 1
        else:
            points[row["tool"]].append((row["measured_bytes"] / GIB, row["estimate_bytes"] / GIB))
    tools = [t for t in TOOL_ORDER if t in points or t in missing]
    tools += sorted(t for t in set(points) | set(missing) if t not in tools)

    fig, ax = plt.subplots(figsize=(8, 7), dpi=120)
    values = [v for pts in points.values() for p in pts for v in p]
    lo, hi = (min(values) / 1.5, max(values) * 1.5) if values else (0.5, 200)
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="estimate = measured")
    for factor, style in ((1.1, ":"), (1 / 1.1, ":")):
        ax.plot([lo, hi], [lo * factor, hi * factor], color="grey", linewidth=0.8, linestyle=style)
    for i, tool in enumerate(tools):
        pts = points.get(tool, [])
        label = f"{tool} ({len(pts)} drawn" + (f", {missing[tool]} cannot express)" if missing.get(tool) else ")")
        if not pts:
            ax.plot([], [], linestyle="none", marker=MARKERS[i % len(MARKERS)], label=label)
            continue
        xs, ys = zip(*pts)
        emphasis = tool == "modelmem"
        ax.scatter(xs, ys, marker=MARKERS[i % len(MARKERS)], s=55 if emphasis else 30,
                   alpha=0.95 if emphasis else 0.7, zorder=3 if emphasis else 2, label=label,
                   edgecolors="black" if emphasis else "none", linewidths=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("measured (GiB, per GPU)")
    ax.set_ylabel("estimated (GiB, per GPU)")
    ax.set_title(title or "GPU memory: estimate against measurement (dotted: ±10 %)")
    ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return {t: (len(points.get(t, [])), missing.get(t, 0)) for t in tools}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("rows", type=Path, help="JSONL of {record_id, category, measured_bytes, tool, estimate_bytes}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    counts = plot(load_rows(args.rows), args.out, args.title)
    print(f"wrote {args.out}: " + ", ".join(f"{t} {n}" for t, (n, _) in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
