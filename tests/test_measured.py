"""Every usable published measurement (shared/validation/measured.jsonl) within its committed tolerance.

The expected values are the measurements; the tolerance per record is committed data (tests/data/
measured_tolerances.json): today's |error| rounded up to a whole percentage point plus 2 points, at least 3 %.
A change that moves any record past its tolerance fails here, so a better model tightens the file and a worse
one must say why. Records are scored exactly as benchmarks/accuracy.py scores them (same selection, same metric).

    python tests/test_measured.py --write   # rewrite the tolerance file from today's errors (review the diff)
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOLERANCES = REPO / "tests" / "data" / "measured_tolerances.json"
FLOOR = 0.03  # no record is held tighter than 3 %: published readings carry unit and rounding noise
MARGIN = 0.02  # 2 percentage points above today's error


def _accuracy():
    spec = importlib.util.spec_from_file_location("accuracy_for_tests", REPO / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


acc = _accuracy()
MEASURED = acc.VALIDATION / "measured.jsonl"
RECORDS = [r for r in acc.load_records(MEASURED) if acc.usable(r)] if MEASURED.exists() else []
TOL = json.loads(TOLERANCES.read_text())["tolerances"] if TOLERANCES.exists() else {}


def tolerance_for(error: float) -> float:
    """|error| rounded up to a whole point, plus MARGIN, at least FLOOR (as fractions)."""
    return max(FLOOR, math.ceil(abs(error) * 100 - 1e-9) / 100 + MARGIN)


def test_tolerance_rule():
    assert tolerance_for(0.0) == FLOOR
    assert tolerance_for(0.004) == FLOOR  # 1 % + 2 % = 3 %
    assert tolerance_for(-0.128) == pytest.approx(0.15)
    assert tolerance_for(0.41) == pytest.approx(0.43)


@pytest.mark.skipif(not MEASURED.exists(), reason="shared/validation/measured.jsonl is absent")
def test_every_usable_record_has_a_tolerance():
    ids = {r["id"] for r in RECORDS}
    assert len(ids) == len(RECORDS) >= 30
    assert sorted(ids - set(TOL)) == [], "usable records without a committed tolerance"
    assert sorted(set(TOL) - ids) == [], "tolerances for records that are no longer usable"


@pytest.mark.skipif(not MEASURED.exists(), reason="shared/validation/measured.jsonl is absent")
@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r["id"])
def test_record_within_tolerance(record):
    row = acc.score(record)
    assert row["estimate"] is not None, row["note"]
    tol = TOL[record["id"]]
    assert FLOOR <= tol < 1.0
    assert abs(row["error"]) <= tol, (
        f"{record['id']}: estimate {row['estimate']:,} vs measured {row['measured']:,} B "
        f"({row['error'] * 100:+.1f} %, tolerance {tol * 100:.0f} %)")


def _write() -> None:
    tolerances = {}
    for r in RECORDS:
        row = acc.score(r)
        tolerances[r["id"]] = round(tolerance_for(row["error"]), 2)
    TOLERANCES.parent.mkdir(exist_ok=True)
    TOLERANCES.write_text(json.dumps({
        "rule": "max(3 %, |error| rounded up to a whole point + 2 points), from benchmarks/accuracy.py scoring",
        "tolerances": dict(sorted(tolerances.items())),
    }, indent=1) + "\n")
    print(f"{TOLERANCES}: {len(tolerances)} records")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    if sys.argv[1:] == ["--write"]:
        _write()
