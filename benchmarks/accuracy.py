"""Score modelmem against the real GPU measurements in shared/validation/measured.jsonl.

    python benchmarks/accuracy.py [--method detailed|seed] [--json]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="detailed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [score(r, args.method) for r in load_records() if usable(r)]
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
