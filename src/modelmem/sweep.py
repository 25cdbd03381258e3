"""Sweeps: the same job estimated over a grid of values of one or two job fields (`modelmem sweep --over`).

A sweep only calls the public `estimate`; it adds no formula. Values are written as a comma list
(`optimizer=adamw,sgd`), an arithmetic range (`batch_size=1:8` or `1:8:+2`) or a geometric one
(`seq_len=512:32768:x2`); ranges include both ends when the step lands on them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelmem.errors import InvalidJobError
from modelmem.job import FIELDS, make_job
from modelmem.result import Estimate

__all__ = ["Axis", "SweepPoint", "MAX_POINTS", "parse_over", "sweep"]

MAX_POINTS = 1000  # a grid larger than this is a typo (a step of +1 over a million tokens), not a plot
_SPEC_HELP = "FIELD=v1,v2,… or FIELD=start:stop[:+step|:xfactor], e.g. seq_len=512:32768:x2"


@dataclass(frozen=True)
class Axis:
    field: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SweepPoint:
    values: Mapping[str, Any]  # the swept fields at this point, as given
    estimate: Estimate


def _int(field: str, text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidJobError(field, spec, f"integers in a range ({_SPEC_HELP})") from None


def _range(field: str, body: str) -> list[int]:
    parts = body.split(":")
    if len(parts) not in (2, 3):
        raise InvalidJobError(field, body, _SPEC_HELP)
    start, stop = _int(field, parts[0], body), _int(field, parts[1], body)
    step = parts[2] if len(parts) == 3 else "+1"
    if start > stop:
        raise InvalidJobError(field, body, f"a range whose start ≤ stop ({_SPEC_HELP})")
    values: list[int] = []
    if step[:1] in ("x", "*"):
        factor = _int(field, step[1:], body)
        if factor < 2 or start < 1:
            raise InvalidJobError(field, body, f"a geometric range with factor ≥ 2 and start ≥ 1 ({_SPEC_HELP})")
        v = start
        while v <= stop and len(values) <= MAX_POINTS:
            values.append(v)
            v *= factor
    else:
        inc = _int(field, step.lstrip("+"), body)
        if inc < 1:
            raise InvalidJobError(field, body, f"a range with step ≥ 1 ({_SPEC_HELP})")
        values = list(range(start, stop + 1, inc))[: MAX_POINTS + 1]
    return values


def parse_over(spec: str, base_job: Mapping[str, Any] | None = None) -> Axis:
    """`FIELD=VALUES` → Axis; every value is checked against the job (with `base_job`'s other fields) up front,
    so a bad value fails before any estimate runs, naming its field."""
    field, sep, body = spec.partition("=")
    field = field.strip().replace("-", "_")
    if not sep or not field:
        raise InvalidJobError("over", spec, _SPEC_HELP)
    if field not in FIELDS:
        raise InvalidJobError("over", field, "a job field: " + ", ".join(FIELDS))
    body = body.strip()
    if not body:
        raise InvalidJobError(field, body, _SPEC_HELP)
    if ":" in body and not body.startswith("gguf:"):
        values: list[Any] = _range(field, body)
    else:
        values = [v.strip() for v in body.split(",") if v.strip()]
    if not values:
        raise InvalidJobError(field, body, _SPEC_HELP)
    if len(values) > MAX_POINTS:
        raise InvalidJobError(field, body, f"at most {MAX_POINTS} values")
    base = {k: v for k, v in (base_job or {}).items() if k != field}
    for v in values:
        make_job(**base, **{field: v})  # raises InvalidJobError naming the field
    return Axis(field, tuple(values))


def sweep(
    model: Any,
    axes: list[Axis],
    *,
    method: str = "detailed",
    revision: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **job: Any,
) -> list[SweepPoint]:
    """Estimate `job` at every combination of the axes' values (first axis slowest), in order."""
    import modelmem

    if not axes:
        raise InvalidJobError("over", "", _SPEC_HELP)
    fields = [a.field for a in axes]
    if len(set(fields)) != len(fields):
        raise InvalidJobError("over", ",".join(fields), "each field swept once")
    grid = list(itertools.product(*(a.values for a in axes)))
    if len(grid) > MAX_POINTS:
        raise InvalidJobError("over", " × ".join(str(len(a.values)) for a in axes), f"at most {MAX_POINTS} points in all")
    spec = modelmem.resolve_model(model, revision=revision)
    points = []
    for i, combo in enumerate(grid):
        values = dict(zip(fields, combo))
        points.append(SweepPoint(values, modelmem.estimate(spec, method=method, **{**job, **values})))
        if progress is not None:
            progress(i + 1, len(grid))
    return points
