"""Suggestions: what to change when a job does not fit (or needs more than one GPU), each checked by the estimator.

A suggestion changes one or two job fields; it is estimated on the GPUs the user has (their --num-gpus, or one GPU
when they left the count to `auto`), and changes that add GPUs say how many. Ranked: fits first, then fewer GPUs,
then the smaller price paid in speed or in what is trained (`COST` below), then less memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelmem.planner._evaluate import Evaluator, largest
from modelmem.result import Estimate
from modelmem.runtimes.profiles import profile_for

# What each change costs, roughly, in order (lower first): a chunked loss and 8-bit AdamW change nothing else that
# matters (Dettmers et al. 2022 report 8-bit AdamW matching 32-bit); selective recomputation costs a few % of
# compute (Korthikanti et al. 2022 §5), full recomputation one extra forward (~33 %, Chen et al. 2016); gradient
# accumulation runs smaller, slower kernels; QLoRA, SGD and Adafactor change what is trained; offload moves traffic to
# PCIe (ZeRO-Offload, Ren et al. 2021); more GPUs and another GPU model cost hardware.
COST = {
    "loss": 0, "optimizer:adamw-8bit": 1, "grad_checkpointing:selective": 1, "optimizer:paged-adamw-8bit": 2,
    "kv_dtype": 2, "grad_checkpointing:full": 3, "batch_size": 3, "quant": 4, "mode": 4, "optimizer:adafactor": 4,
    "optimizer:sgd": 5, "activation_offload": 5, "offload:optimizer": 6, "offload:params": 7, "gpu_layers": 6,
    "num_gpus": 8, "strategy": 8, "gpu": 9,
}


@dataclass(frozen=True)
class Suggestion:
    change: Mapping[str, Any]  # job fields and their new values
    num_gpus: int
    device_total: int  # per GPU, bytes, as the estimate with the change reports it
    fits: bool
    note: str = ""  # why, when the change alone does not say it (e.g. the accumulation steps)
    gpu: str = ""  # the GPU the figures are for
    cost: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = {"change": dict(self.change), "num_gpus": int(self.num_gpus), "device_total": int(self.device_total),
               "fits": bool(self.fits)}
        if self.note:
            out["note"] = self.note
        return out

    def flags(self) -> str:
        return " ".join(f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in self.change.items())


def _flag_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _cost(change: Mapping[str, Any]) -> int:
    worst = 0
    for k, v in change.items():
        worst = max(worst, COST.get(f"{k}:{v}", COST.get(k, 5)))
    return worst


def _candidates(ev: Evaluator, est: Estimate) -> list[tuple[dict[str, Any], str]]:
    """(change, note) pairs that could lower the per-GPU memory of this job."""
    job = est.job
    out: list[tuple[dict[str, Any], str]] = []
    if job.training:
        if job.grad_checkpointing != "full":
            out.append(({"grad_checkpointing": "full"}, ""))
        if job.grad_checkpointing == "none":
            out.append(({"grad_checkpointing": "selective"}, ""))
        if job.batch_size > 1:
            accum = int(getattr(job, "grad_accum", 1) or 1)
            steps = job.batch_size * accum
            if hasattr(job, "grad_accum"):
                out.append(({"batch_size": 1, "grad_accum": steps}, f"{steps} accumulation steps keep the global batch"))
            else:
                out.append(({"batch_size": 1}, f"accumulate {steps} steps to keep the global batch of {steps} per GPU"))
        if job.loss == "full":
            out.append(({"loss": "chunked"}, ""))
        for o in ("adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd"):
            if job.optimizer != o and job.optimizer in ("adamw", "paged-adamw", "adamw-8bit", "lion", "sgd-momentum"):
                out.append(({"optimizer": o}, ""))
        if job.mode == "lora":
            out.append(({"mode": "qlora"}, "the frozen base in 4-bit NF4"))
        if not job.activation_offload:
            out.append(({"activation_offload": True}, ""))
        if job.offload == "none":
            sharded = job.strategy if job.strategy in ("zero1", "zero2", "zero3", "fsdp") else None
            out.append(({"offload": "optimizer"} if sharded else {"strategy": "zero2", "offload": "optimizer"},
                        "optimizer states, fp32 masters and gradients in CPU memory"))
            out.append(({"offload": "params"} if sharded in ("zero3", "fsdp") else {"strategy": "zero3", "offload": "params"},
                        "parameters too in CPU memory"))
        elif job.offload == "optimizer":
            out.append(({"offload": "params"} if job.strategy in ("zero3", "fsdp") else {"strategy": "zero3", "offload": "params"},
                        "parameters too in CPU memory"))
    else:
        if job.kv_dtype not in ("fp8", "int8", "int4") and not profile_for(job).gpu_layer_split:
            out.append(({"kv_dtype": "fp8"}, ""))
        if job.quant == "none" and not ev.spec.quantization:
            for q in ("fp8", "awq", "nf4"):
                out.append(({"quant": q}, "a quantized checkpoint" if q == "awq" else ""))
    return out


def suggest(ev: Evaluator, est: Estimate, limit: int = 12) -> tuple[Suggestion, ...]:
    """Ranked changes for a job that does not fit on the GPUs the user has, or needs more than one."""
    job = est.job
    auto = str(ev.given.get("num_gpus", "auto")).lower() == "auto"
    n_user = 1 if auto else int(ev.given["num_gpus"])
    found: list[Suggestion] = []

    def add(change: dict[str, Any], note: str, e: Estimate | None) -> None:
        if e is None:
            return
        found.append(Suggestion(change, e.num_gpus, e.per_gpu.device_total, e.fits, note,
                                e.gpu.label or e.gpu.name, _cost(change)))

    fixed = {"num_gpus": n_user}
    for change, note in _candidates(ev, est):
        add(change, note, ev.estimate({**change, **fixed}))
    if profile_for(job).gpu_layer_split and ev.spec.stored is not None and ev.spec.stored.per_layer_bytes:
        def fits(k: int) -> bool:
            e = ev.estimate({"gpu_layers": k, **fixed})
            return e is not None and e.fits

        k = largest(fits, 0, ev.spec.num_layers + 1)
        if k is not None and k != job.gpu_layers:
            add({"gpu_layers": k}, "the other layers run on the CPU", ev.estimate({"gpu_layers": k, **fixed}))
    if not any(s.fits for s in found):
        # No single change is enough: pair full recomputation with each of the cheap ones.
        for change, note in _candidates(ev, est):
            if job.training and "grad_checkpointing" not in change and job.grad_checkpointing != "full":
                pair = {"grad_checkpointing": "full", **change}
                add(pair, note, ev.estimate({**pair, **fixed}))
    # More GPUs: the fewest that fit under the sharding strategies each mode uses.
    strategies = ("fsdp", "zero3") if job.training else ("tp", "pp")
    for strategy in strategies:
        change: dict[str, Any] = {"strategy": strategy}
        e = ev.fewest_gpus(change)
        if e is not None and (e.num_gpus != n_user or strategy != job.strategy) and e.num_gpus > 1:
            add({"num_gpus": e.num_gpus, "strategy": strategy}, "", e)
    # A GPU with more memory: the smallest in the catalog on which the job fits unchanged.
    from modelmem.catalog.gpus import gpus

    for g in sorted(gpus(), key=lambda g: (g.memory_bytes, g.name)):
        if g.memory_bytes <= est.gpu.memory_bytes:
            continue
        e = ev.estimate({"gpu": g.name, **fixed})
        if e is not None and e.fits:
            add({"gpu": g.name}, "", e)
            break
    best: dict[tuple, Suggestion] = {}
    for s in found:
        key = tuple(sorted((k, str(v)) for k, v in s.change.items()))
        if key not in best:
            best[key] = s
    ranked = sorted(best.values(), key=lambda s: (not s.fits, s.num_gpus, s.cost, s.device_total))
    return tuple(ranked[:limit])


def with_suggestions(ev: Evaluator, est: Estimate) -> Estimate:
    """The estimate carrying its suggestions when it does not fit, or when `auto` needed more than one GPU."""
    auto = str(ev.given.get("num_gpus", "auto")).lower() == "auto"
    if est.fits and not (auto and est.num_gpus > 1):
        return est

    def compute() -> tuple[Suggestion, ...]:
        base = est
        if auto and est.num_gpus > 1:
            one = ev.estimate({"num_gpus": 1})
            base = one if one is not None else est
        return suggest(ev, base)

    return dataclasses.replace(est, suggestions=LazySuggestions(compute))


class LazySuggestions(Sequence):
    """Suggestions worked out on first use: each is a whole estimate (20–45 of them), so `modelmem.estimate` stays
    one estimate's cost and only what reads them (the JSON, the CLI's verdict, the page) pays for them."""

    def __init__(self, compute: Callable[[], tuple[Suggestion, ...]]) -> None:
        self._compute: Callable[[], tuple[Suggestion, ...]] | None = compute
        self._items: tuple[Suggestion, ...] = ()

    def _get(self) -> tuple[Suggestion, ...]:
        if self._compute is not None:
            self._items, self._compute = self._compute(), None
        return self._items

    def __getitem__(self, index: Any) -> Any:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._get())
