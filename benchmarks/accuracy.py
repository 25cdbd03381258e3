"""Score modelmem against the real GPU measurements in shared/validation/measured.jsonl.

    python benchmarks/accuracy.py [--method detailed|seed] [--json] [--write-docs]

--write-docs also scores the peers' committed answers (benchmarks/results/peers.jsonl, made by peers.py) and the
seed's rule on the same records, and writes docs/ACCURACY.md (+ docs/accuracy_rows.jsonl for plot_accuracy.py).

Prints, per usable record, the estimate, the measurement and the error, then the median and 90th-percentile
absolute error overall and by category. A record the tool cannot run counts as 100 % off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import modelmem  # noqa: E402
from modelmem.errors import ModelmemError  # noqa: E402

VALIDATION = ROOT.parent / "shared" / "validation"
SKIP_METRICS = ("kv_capacity", "max_seq_len_that_fits", "_after_load", "cuda_context")


def usable(record: dict) -> bool:
    """The records shared/validation/README.md says to score."""
    metric = record["expected"]["metric"]
    return (
        record.get("usable_for_scoring") is True
        and record.get("fully_in_vocabulary") is True
        and record.get("architecture_family") == "decoder"
        and not any(s in metric for s in SKIP_METRICS)
    )


def load_records(path: Path = VALIDATION / "measured.jsonl") -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_value(est: modelmem.Estimate, metric: str) -> int:
    pg = est.per_gpu
    if metric in ("allocated_peak", "active_peak", "allocated_peak_decode"):
        return pg.allocated_peak
    if metric == "reserved_peak":
        return pg.reserved_peak
    if metric == "device_total":
        return pg.device_total
    if metric == "sum_allocated_over_gpus":
        return pg.allocated_peak * est.num_gpus
    if metric in ("weights", "kv_cache"):
        return pg.components.get(metric, 0)
    if metric == "activation_peak":
        return pg.components.get("activations", 0)
    raise KeyError(metric)


def score(record: dict, method: str = "detailed") -> dict:
    job = dict(record["job"])
    model = job.pop("model")
    expected = record["expected"]["value"]
    row = {"id": record["id"], "category": record["category"], "metric": record["expected"]["metric"], "measured": expected}
    try:
        est = modelmem.estimate(model, method=method, **job)
        value = metric_value(est, record["expected"]["metric"])
        row.update(estimate=value, error=(value - expected) / expected, note="")
    except (ModelmemError, KeyError) as e:
        row.update(estimate=None, error=1.0, note=f"cannot run: {e}")
    return row


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(rows: list[dict]) -> dict[str, tuple[int, float, float]]:
    groups: dict[str, list[float]] = {"all": []}
    for r in rows:
        err = abs(r["error"])
        groups["all"].append(err)
        groups.setdefault(r["category"], []).append(err)
    return {k: (len(v), statistics.median(v), percentile(v, 0.9)) for k, v in groups.items()}


EXPLANATIONS = Path(__file__).resolve().parent / "explanations.json"


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v * 100:.1f} %"


def write_docs(records: list[dict], rows: list[dict]) -> str:
    """docs/ACCURACY.md: modelmem, the seed's rule and every peer on the same records, by category."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_results import DEFAULT_PATH, load_peer_results

    peers = load_peer_results(DEFAULT_PATH) if DEFAULT_PATH.exists() else {}
    seed_rows = {r["id"]: score(rec, "seed") for rec, r in zip(records, rows)}
    tools: dict[str, dict[str, float | None]] = {"modelmem": {r["id"]: r["error"] for r in rows},
                                                 "seed (--method seed)": {k: v["error"] for k, v in seed_rows.items()}}
    plot_rows = []
    for r in rows:
        plot_rows.append({"record_id": r["id"], "category": r["category"], "measured_bytes": r["measured"], "tool": "modelmem", "estimate_bytes": r["estimate"]})
        for peer, res in sorted(peers.get(r["id"], {}).items()):
            if peer == "seed":  # the same rule as modelmem --method seed, already a row
                continue
            err = (res.estimate_bytes - r["measured"]) / r["measured"] if res.estimate_bytes is not None else None
            tools.setdefault(peer, {})[r["id"]] = err
            plot_rows.append({"record_id": r["id"], "category": r["category"], "measured_bytes": r["measured"], "tool": peer, "estimate_bytes": res.estimate_bytes})
    categories = sorted({r["category"] for r in rows})
    explanations = json.loads(EXPLANATIONS.read_text()) if EXPLANATIONS.exists() else {}
    out = ["# Accuracy", "",
           "Generated by `python benchmarks/accuracy.py --write-docs` from `shared/validation/measured.jsonl` (the usable,",
           "in-vocabulary decoder records; capacity and load-only metrics skipped). Error = (estimate − measured) / measured;",
           "tables give the median and 90th-percentile absolute error over the records a tool can express, with how many",
           "it expresses. A record modelmem cannot run counts as 100 % off. Peers' answers come from",
           "`benchmarks/results/peers.jsonl` (`benchmarks/peers.py`, run in a separate venv made by `setup_peers.sh`).", ""]
    header = "| tool | " + " | ".join(["all"] + categories) + " |"
    out += ["## Median |error| (p90) [records expressed]", "", header, "|" + "---|" * (len(categories) + 2)]
    for tool, errs in tools.items():
        cells = []
        for cat in ["all"] + categories:
            vals = [abs(e) for rid, e in errs.items() if e is not None and (cat == "all" or next(r["category"] for r in rows if r["id"] == rid) == cat)]
            n_cat = sum(1 for r in rows if cat == "all" or r["category"] == cat)
            cells.append(f"{_fmt(statistics.median(vals)) if vals else 'cannot express'} ({_fmt(percentile(vals, 0.9)) if vals else '-'}) [{len(vals)}/{n_cat}]")
        out.append(f"| {tool} | " + " | ".join(cells) + " |")
    out += ["", "## modelmem, record by record", "", "| record | category | metric | estimate GiB | measured GiB | error | why (errors above 10 %) |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -abs(r["error"])):
        est = f"{r['estimate'] / 2**30:.2f}" if r["estimate"] is not None else "-"
        why = explanations.get(r["id"], "") if abs(r["error"]) > 0.10 else ""
        if abs(r["error"]) > 0.10 and not why:
            why = "NOT YET EXPLAINED"
        out.append(f"| {r['id']} | {r['category']} | {r['metric']} | {est} | {r['measured'] / 2**30:.2f} | {r['error'] * 100:+.1f} % | {why} |")
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "accuracy_rows.jsonl").write_text("".join(json.dumps(x) + "\n" for x in plot_rows))
    if (docs / "accuracy.png").exists():
        out += ["", "![estimate vs measured](accuracy.png)", "",
                "Plot: `/work/peers-venv/bin/python benchmarks/plot_accuracy.py docs/accuracy_rows.jsonl`."]
    from gpu_validation import render_section  # "Our own GPU runs": its own section, never mixed into the scores above

    out += [""] + render_section()
    text = "\n".join(out) + "\n"
    old = (docs / "ACCURACY.md").read_text() if (docs / "ACCURACY.md").exists() else ""
    kept = "## Trace agreement, per family"  # written by benchmarks/trace_agreement.py --write-docs: keep it
    if kept in old:
        text += "\n" + kept + old.split(kept, 1)[1]
    (docs / "ACCURACY.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="detailed")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    records = [r for r in load_records() if usable(r)]
    rows = [score(r, args.method) for r in records]
    if args.write_docs:
        write_docs(records, rows)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    gib = 2**30
    print(f"{'record':<46}{'metric':<24}{'estimate':>10}{'measured':>10}{'error':>9}")
    for r in rows:
        est = f"{r['estimate'] / gib:.2f}" if r["estimate"] is not None else "-"
        print(f"{r['id']:<46}{r['metric']:<24}{est:>10}{r['measured'] / gib:>10.2f}{r['error'] * 100:>8.1f}%  {r['note']}")
    print()
    print(f"{'category':<26}{'n':>4}{'median |err|':>14}{'p90 |err|':>12}")
    for cat, (n, med, p90) in sorted(summarize(rows).items(), key=lambda kv: (kv[0] != "all", kv[0])):
        print(f"{cat:<26}{n:>4}{med * 100:>13.1f}%{p90 * 100:>11.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
