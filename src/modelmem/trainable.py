"""Trainable parameters for a job: the seed's print_trainable_parameters, from a spec instead of a module."""

from __future__ import annotations

from dataclasses import dataclass

from modelmem.job import Job
from modelmem.spec import ModelSpec


@dataclass(frozen=True)
class TrainableParams:
    trainable: int
    total: int  # all parameters the trained model has (base + adapters, as PEFT counts them)
    base: int
    lora_targets: str

    @property
    def percent(self) -> float:
        return 100 * self.trainable / self.total if self.total else 0.0

    def line(self) -> str:
        # PEFT PeftModel.print_trainable_parameters' format.
        return f"trainable params: {self.trainable:,d} || all params: {self.total:,d} || trainable%: {self.percent:.4f}"

    def to_dict(self) -> dict[str, object]:
        return {"trainable_params": self.trainable, "all_params": self.total, "base_params": self.base,
                "trainable_percent": self.percent, "lora_targets": self.lora_targets}


def trainable_params(spec: ModelSpec, job: Job) -> TrainableParams:
    from modelmem.model import prepare

    m, job = prepare(spec, job)
    base = m.counts.total
    if job.uses_lora:
        return TrainableParams(m.trainable, base + m.trainable, base, job.lora_targets)
    return TrainableParams(m.trainable, base, base, "")
