"""The one seam between the planner and the estimator: every number the planner reports comes from here, that is
from `modelmem.plan.estimate_spec` — the estimator the user runs, never a second model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modelmem.errors import ModelmemError
from modelmem.job import Job, make_job
from modelmem.result import Estimate
from modelmem.spec import ModelSpec

MAX_GPUS = 1024


class Evaluator:
    """Estimates of one model under variations of the user's job fields, each computed once."""

    def __init__(self, spec: ModelSpec, given: Mapping[str, Any]) -> None:
        self.spec = spec
        self.given = {k: v for k, v in given.items() if v is not None}
        self._jobs: dict[tuple, Job | None] = {}
        self._estimates: dict[Job, Estimate] = {}
        self.calls = 0

    def fields(self, change: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {k: v for k, v in {**self.given, **(change or {})}.items() if v is not None}

    def job(self, change: Mapping[str, Any] | None = None) -> Job | None:
        """The user's fields with `change` applied, checked by make_job; None when the combination is not allowed."""
        fields = self.fields(change)
        key = tuple(sorted((k, str(v)) for k, v in fields.items()))
        if key not in self._jobs:
            try:
                self._jobs[key] = make_job(**fields)
            except ModelmemError:
                self._jobs[key] = None
        return self._jobs[key]

    def estimate(self, change: Mapping[str, Any] | None = None) -> Estimate | None:
        """The estimate of the changed job on a fixed GPU count (change or the user's num_gpus; auto is not
        searched here); None when the changed job is not allowed or its layout does not fit the GPU count."""
        job = self.job(change)
        if job is None or job.num_gpus == "auto":
            return None
        hit = self._estimates.get(job)
        if hit is None:
            from modelmem.plan import estimate_spec

            self.calls += 1
            try:
                hit = estimate_spec(self.spec, job)
            except ModelmemError:
                return None
            self._estimates[job] = hit
        return hit

    def fewest_gpus(self, change: Mapping[str, Any] | None = None, max_gpus: int = MAX_GPUS) -> Estimate | None:
        """The estimate on the fewest GPUs (≤ max_gpus) where the changed job fits, or None.

        Per-GPU memory never grows with the GPU count for a fixed layout kind (every share is non-increasing in n),
        so a binary search over the allowed counts finds the fewest with O(log n) estimates."""
        from modelmem.parallel import layout_problem

        change = dict(change or {})
        one = self.estimate({**change, "num_gpus": 1})
        if one is not None and one.fits:
            return one
        base = self.job({**change, "num_gpus": 2})
        if base is None:
            return None
        counts = [n for n in range(2, max_gpus + 1) if layout_problem(self.spec, base, n) is None]
        if not counts:
            return None
        top = self.estimate({**change, "num_gpus": counts[-1]})
        if top is None or not top.fits:
            return None
        lo, hi = 0, len(counts) - 1  # counts[hi] fits
        while lo < hi:
            mid = (lo + hi) // 2
            e = self.estimate({**change, "num_gpus": counts[mid]})
            if e is not None and e.fits:
                hi = mid
            else:
                lo = mid + 1
        return self.estimate({**change, "num_gpus": counts[hi]})


def largest(fits: Callable[[int], bool], lo: int, cap: int) -> int | None:
    """The largest v in [lo, cap] with fits(v), given fits is true up to some point and false after it."""
    if not fits(lo):
        return None
    good, step = lo, 1
    while True:  # exponential probe: find a value that does not fit
        probe = min(cap, good + step)
        if probe == good:
            return good
        if not fits(probe):
            bad = probe
            break
        good, step = probe, step * 2
        if good == cap:
            return good
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
