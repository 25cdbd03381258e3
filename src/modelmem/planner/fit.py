"""fit: the largest value of one job field that still fits on the job's GPUs.

Memory never decreases as batch, sequence, generated tokens, LoRA rank or llama.cpp GPU layers grow (helper tests
prove it per family: tests/test_fuzz*.py), so an exponential probe followed by a binary search finds the exact
boundary — the value fits, value + 1 does not — with about 2·log2(max) estimates. vLLM's two limits are read in
closed form from its KV-block pool, which the estimate sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelmem.errors import InvalidJobError
from modelmem.planner._evaluate import Evaluator, largest
from modelmem.planner.suggest import Suggestion, suggest
from modelmem.result import Estimate
from modelmem.runtimes.profiles import profile_for
from modelmem.spec import ModelSpec

# CLI spelling → job field.
FIT_FIELDS = {
    "batch-size": "batch_size",
    "seq-len": "seq_len",
    "new-tokens": "new_tokens",
    "lora-rank": "lora_rank",
    "gpu-layers": "gpu_layers",
    "max-num-seqs": "max_num_seqs",
    "max-model-len": "max_model_len",
}
# Far beyond any real job (limits.py bounds the inputs themselves); reaching one means memory stopped growing.
_CAPS = {"batch_size": 1 << 24, "seq_len": 1 << 26, "new_tokens": 1 << 26, "lora_rank": 1 << 16}


@dataclass(frozen=True)
class FitResult:
    field: str
    max: int | None  # None: not even the smallest value fits
    estimate: Estimate  # at the max; at the smallest value when none fits
    reason: str = ""  # why the answer is None or is a cap rather than a memory boundary
    over: Estimate | None = None  # the estimate at max + 1 (the first value that does not fit), when there is one
    suggestions: tuple[Suggestion, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "max": self.max, "estimate": self.estimate.to_dict()}
        if self.reason:
            out["reason"] = self.reason
        out["suggestions"] = [s.to_dict() for s in self.suggestions]
        return out


def _field_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key not in FIT_FIELDS:
        raise InvalidJobError("max", name, ", ".join(FIT_FIELDS))
    return FIT_FIELDS[key]


def fit(spec: ModelSpec, field_name: str, given: Mapping[str, Any]) -> FitResult:
    """Largest value of `field_name` (a CLI spelling like "batch-size" or a job field) for the job `given`
    (JOBS.md keyword arguments) on its GPUs; num_gpus defaults to 1, and "auto" is refused (the count is fixed).
    The estimate at the answer is exactly what `modelmem.estimate` reports for that job (speed included)."""
    from modelmem.speed import attach

    result = _fit(spec, field_name, given)
    return dataclasses.replace(result, estimate=attach(result.estimate, spec))


def _fit(spec: ModelSpec, field_name: str, given: Mapping[str, Any]) -> FitResult:
    name = _field_name(field_name)
    given = {k: v for k, v in given.items() if v is not None and k != name}
    given.setdefault("num_gpus", 1)
    if str(given["num_gpus"]).strip().lower() == "auto":
        raise InvalidJobError("num_gpus", "auto", "a GPU count for fit (the field is maximised on a fixed count)")
    ev = Evaluator(spec, given)
    base = ev.job()
    if base is None:  # let make_job say what is wrong with the user's own fields
        from modelmem.job import make_job

        make_job(**ev.fields())
        raise InvalidJobError("max", field_name, "a job that make_job accepts")  # unreachable: make_job raised
    _check_applies(spec, name, base)
    from modelmem.catalog.gpus import lookup_gpu

    lookup_gpu(base.gpu)  # an unknown GPU is the user's error, not "nothing fits"

    if name in ("max_num_seqs", "max_model_len"):
        return _fit_vllm(spec, ev, name)

    lo = 0 if name in ("new_tokens", "gpu_layers") else 1
    cap = _cap(spec, name)

    def at(v: int) -> Estimate | None:
        return ev.estimate({name: v})

    def fits(v: int) -> bool:
        e = at(v)
        return e is not None and e.fits

    best = largest(fits, lo, cap)
    if best is None:
        smallest = at(lo)
        assert smallest is not None  # the base job is valid, and lo is within the field's range
        return FitResult(name, None, smallest, _none_fits(smallest, name, lo), suggestions=suggest(ev, smallest))
    est = at(best)
    assert est is not None
    reason = ""
    if best == cap:
        reason = (f"{name} reached {cap}, every GPU layer" if name == "gpu_layers"
                  else f"{name} reached the search cap {cap} without running out of memory")
    return FitResult(name, best, est, reason, over=None if best == cap else at(best + 1))


def _cap(spec: ModelSpec, name: str) -> int:
    if name == "gpu_layers":
        return spec.num_layers + 1  # llama.cpp counts n_layer + 1 slots: the blocks, then the output layer
    if name == "lora_rank":
        return min(_CAPS[name], spec.hidden_size)  # a rank above the layer width adds nothing LoRA can use
    return _CAPS[name]


def _check_applies(spec: ModelSpec, name: str, job: Any) -> None:
    habits = profile_for(job)
    if name == "gpu_layers" and (not habits.gpu_layer_split or spec.stored is None or not spec.stored.per_layer_bytes):
        raise InvalidJobError("max", "gpu-layers", "a field of this job: gpu-layers needs --runtime llamacpp and a .gguf model")
    if name in ("max_num_seqs", "max_model_len") and not habits.kv_block_pool:
        raise InvalidJobError("max", name.replace("_", "-"), "a field of this job: it needs --runtime vllm")
    if name == "lora_rank" and not job.uses_lora:
        raise InvalidJobError("max", "lora-rank", "a field of this job: it needs --mode lora or qlora")
    if name == "new_tokens" and job.training:
        raise InvalidJobError("max", "new-tokens", "a field of this job: it needs --mode inference")


def _none_fits(est: Estimate, name: str, lo: int) -> str:
    from modelmem.units import gib

    return (f"even {name} {lo} needs {gib(est.per_gpu.device_total):.1f} GiB per GPU, more than the "
            f"{gib(est.gpu.usable_bytes):.1f} GiB of {est.num_gpus}× {est.gpu.label or est.gpu.name}")


def _fit_vllm(spec: ModelSpec, ev: Evaluator, name: str) -> FitResult:
    """vLLM: the KV-block pool left after weights and the profile run (the estimate's kv_cache) bounds the longest
    request (vLLM refuses max_model_len beyond the pool: "larger than the maximum number of tokens that can be
    stored in KV cache") and the requests of max_model_len that run at once (vLLM logs "Maximum concurrency")."""
    from modelmem.memory import kv_cache as kv
    from modelmem.parallel import shares

    est = ev.estimate()
    assert est is not None
    job = est.job
    pool = est.per_gpu.components.get("kv_cache", 0)
    # One block of block_size tokens for one sequence, on one GPU of the tensor-parallel group.
    block_bytes = max(1, int(kv.kv_cache_bytes(spec, job, job.block_size, 1) * shares(spec, job, est.num_gpus).kv))
    tokens = (pool // block_bytes) * job.block_size
    limit = spec.max_position_embeddings or tokens
    if name == "max_model_len":
        best = min(tokens, limit)
        if best < 1:
            return FitResult(name, None, est, "weights and the profile run leave no KV-cache blocks",
                             suggestions=suggest(ev, est))
        chosen = ev.estimate({"max_model_len": best}) or est
        reason = "" if best == tokens else f"capped by the model's max_position_embeddings ({limit})"
        return FitResult(name, best, chosen, reason)
    length = job.max_model_len or limit
    best = tokens // length
    if best < 1:
        return FitResult(name, None, est, f"the KV pool holds {tokens} tokens, less than one request of max_model_len {length}",
                         suggestions=suggest(ev, est))
    return FitResult(name, best, ev.estimate({"max_num_seqs": best}) or est)
