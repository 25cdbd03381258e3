"""Ground truth without a GPU: run the real transformers/PEFT workload on fake tensors and watch every storage.

`trace(spec, job)` reports the exact allocated peak by component and a caching-allocator replay of the reserved
peak; `measure(spec, job)` runs the same workload on a CUDA GPU. torch, transformers and peft (the `trace` extra)
are imported only when one of these is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from modelmem.job import Job
    from modelmem.result import Estimate
    from modelmem.spec import ModelSpec

__all__ = ["trace", "measure"]


def trace(spec: ModelSpec, job: Job, progress: Callable[[str], None] | None = None) -> Estimate:
    """Trace `job` on `spec` under fake tensors (no GPU, nothing downloaded); method "trace". `progress`, if
    given, is called with the name of each stage as it begins ("building", "warm step", "traced step", "prefill",
    "decode", "replay") and with "" at the end."""
    from modelmem.trace._engine import trace as _trace

    return _trace(spec, job, progress)


def measure(spec: ModelSpec, job: Job) -> Estimate:
    """Run `job` on `spec` on this machine's CUDA GPU; method "measure". Raises NoCudaError without one."""
    from modelmem.trace._engine import measure as _measure

    return _measure(spec, job)
