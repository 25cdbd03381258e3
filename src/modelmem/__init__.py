"""modelmem: how much GPU memory an LLM job needs, per GPU and in bytes.

    >>> import modelmem
    >>> est = modelmem.estimate("llama-3.1-8b", mode="lora", gpu="rtx-4090")
    >>> est.per_gpu.allocated_peak, est.num_gpus, est.fits

Only the standard library is imported here; tracing, the Hub and GGUF are optional extras loaded on use.
"""

from __future__ import annotations

from typing import Any

from modelmem.errors import ModelmemError
from modelmem.job import Job, make_job
from modelmem.result import Estimate, GPUInfo

__all__ = [
    "Estimate",
    "GPUInfo",
    "Job",
    "ModelmemError",
    "estimate",
    "fit",
    "from_module",
    "params",
    "print_trainable_parameters",
    "resolve_model",
]
__version__ = "0.1.0"


def resolve_model(model: Any, revision: str | None = None):
    """A ModelSpec from a catalog name, Hub id, config.json, model folder, .gguf, size ('7B') or live module."""
    from modelmem.model import resolve_model as _resolve

    return _resolve(model, revision=revision)


def estimate(model: Any, *, method: str = "detailed", revision: str | None = None, **job: Any) -> Estimate:
    """Per-GPU memory for `model` running `job` (JOBS.md keyword arguments: mode, dtype, batch_size, …).

    method "detailed" (default) models every component at the step's peak; "seed" reproduces the seed article's
    rules of thumb exactly. `gpu` is a catalog name, a size ("24GiB", "metal:36GB") or a `GPUInfo` / dict
    describing any device. A detailed estimate carries `speed`: estimated times, with their assumptions.
    """
    from modelmem.job import METHODS
    from modelmem.errors import InvalidJobError
    from modelmem.plan import estimate_spec

    if method not in METHODS:
        raise InvalidJobError("method", method, ", ".join(METHODS))
    from modelmem.speed import attach

    resolved_job = make_job(**job)
    spec = resolve_model(model, revision=revision)
    if spec.live_lora is not None:  # a live PEFT model trains its own adapters unless told otherwise
        from modelmem.model import live_job_defaults

        job = live_job_defaults(spec, job)
        resolved_job = make_job(**job)
    est = attach(estimate_spec(spec, resolved_job, method=method), spec)
    if method == "detailed":
        from modelmem.planner.suggest import with_suggestions
        from modelmem.planner._evaluate import Evaluator

        est = with_suggestions(Evaluator(spec, job), est)
    return est


def fit(model: Any, max: str, *, revision: str | None = None, **job: Any):
    """The largest value of one job field (`max`: batch-size, seq-len, new-tokens, lora-rank, gpu-layers,
    max-num-seqs, max-model-len) that fits on the job's GPUs (num_gpus defaults to 1), as a `FitResult`."""
    from modelmem.planner.fit import fit as _fit

    return _fit(resolve_model(model, revision=revision), max, job)


def params(model: Any, *, revision: str | None = None, **job: Any):
    """Trainable and total parameters for the job (full training, LoRA, QLoRA), as `TrainableParams`."""
    from modelmem.trainable import trainable_params

    from modelmem.model import live_job_defaults

    spec = resolve_model(model, revision=revision)
    return trainable_params(spec, make_job(**live_job_defaults(spec, job)))


def from_module(model: Any):
    """A ModelSpec from any object with `named_parameters()` (torch module, PEFT model), without importing torch."""
    from modelmem.sources.module import from_module as _from_module

    return _from_module(model)


def print_trainable_parameters(model: Any) -> None:
    """Print the seed's line `trainable params: X || all params: Y || trainable%: Z` for a live module."""
    from modelmem.sources.module import print_trainable_parameters as _print

    _print(model)
