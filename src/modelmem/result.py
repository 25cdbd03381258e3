"""Result types: what `estimate` returns. Totals are computed from their parts, never passed in."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from modelmem.job import Job
from modelmem.units import BYTES_IN_GB


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int
    trainable_params: int
    active_params: int


PLATFORMS = ("cuda", "rocm", "metal", "hpu")


@dataclass(frozen=True)
class GPUInfo:
    """One accelerator: a catalog entry (modelmem gpus), a bare size (gpu="24GiB"), or a description you build.

    Figures that are unknown stay None; throughput is dense (no 2:4 sparsity). `sources` names where each came from.
    """

    name: str
    memory_bytes: int  # as the device reports it (torch.cuda.get_device_properties().total_memory; a Mac's RAM)
    nominal_gb: float  # the size printed on the box, in GB (the seed's GPU_GB)
    label: str = ""
    vendor: str = ""
    platform: str = "cuda"  # cuda, rocm, metal (Apple) or hpu (Gaudi): decides the per-process overhead
    bandwidth_bytes_per_s: int | None = None  # memory bandwidth
    bf16_flops: int | None = None  # dense bf16 tensor throughput; None where the device has none
    fp16_flops: int | None = None
    fp8_flops: int | None = None
    interconnect: str = ""  # its GPU-to-GPU link (nvlink4, infinity-fabric, pcie4, …)
    interconnect_bytes_per_s: int | None = None  # both directions together, as vendors print it
    unified_memory: bool = False  # CPU and GPU share the memory (Apple Silicon)
    sources: tuple[tuple[str, str], ...] = ()  # (field, where its figure comes from)

    @property
    def usable_bytes(self) -> int:
        """What one process may fill: all of it, except on a Mac, where Metal caps the GPU's working set."""
        if self.platform == "metal":
            from modelmem.memory.overhead import metal_working_set_bytes

            return metal_working_set_bytes(self.memory_bytes)
        return self.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "label": self.label, "vendor": self.vendor, "platform": self.platform,
            "memory_bytes": int(self.memory_bytes), "usable_bytes": int(self.usable_bytes), "nominal_gb": self.nominal_gb,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "bf16_flops": self.bf16_flops,
            "fp16_flops": self.fp16_flops, "fp8_flops": self.fp8_flops, "interconnect": self.interconnect,
            "interconnect_bytes_per_s": self.interconnect_bytes_per_s, "unified_memory": self.unified_memory,
            "sources": dict(self.sources),
        }


class Components(Mapping[str, int]):
    """A phase's allocated bytes by component. Subclasses are frozen dataclasses whose fields are the components,
    in the order the JSON lists them; the total is their sum. Reads like a mapping (`c["weights"]`, `.items()`)."""

    def __getitem__(self, key: str) -> int:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_names_cache")
        if names is None:  # computed once per subclass: an estimate reads components thousands of times
            names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
            setattr(cls, "_names_cache", names)
            setattr(cls, "_keys_cache", frozenset(names))
        return names

    @classmethod
    def _keys(cls) -> frozenset[str]:
        cls._names()
        return cls.__dict__["_keys_cache"]

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in self._names())


@dataclass(frozen=True)
class TrainingComponents(Components):
    """What one GPU holds at a moment of a training step."""

    weights: int = 0  # weights in their stored/compute dtype (autocast copies included while fwd/bwd run)
    master_weights: int = 0  # mixed precision: fp32 masters of the trainable weights
    optimizer_states: int = 0
    activations: int = 0  # saved for backward, plus the layer being recomputed
    logits: int = 0  # the output layer's logits and the loss's fp32 buffers
    gradients: int = 0
    temporaries: int = 0  # collective buffers, the optimizer step's own temporaries
    dequant_buffers: int = 0  # one dequantized linear while a quantized matmul runs


@dataclass(frozen=True)
class InferenceComponents(Components):
    """What one GPU holds at a moment of inference."""

    weights: int = 0
    kv_cache: int = 0
    activations: int = 0  # one layer's temporaries
    logits: int = 0
    dequant_buffers: int = 0


@dataclass(frozen=True)
class Phase:
    """A moment of the step (backward start, optimizer step, prefill…) and what is allocated then."""

    name: str
    components: Components


def peak_phase(phases: Sequence[Phase]) -> Phase:
    """The phase with the most memory allocated (the first of equals): the step's peak."""
    return max(phases, key=lambda p: p.components.total)


@dataclass(frozen=True)
class PerGPU:
    """Memory on one GPU (the busiest one) at the step's peak."""

    components: Mapping[str, int]  # allocated at the peak, by component; sums to allocated_peak
    allocator_overhead: int = 0  # reserved − allocated: the caching allocator's rounding and fragmentation
    cuda_context: int = 0  # CUDA context, cuBLAS workspaces, NCCL buffers: seen by nvidia-smi, not by torch
    notes: tuple[str, ...] = ()

    @property
    def allocated_peak(self) -> int:
        return sum(self.components.values())

    @property
    def reserved_peak(self) -> int:
        return self.allocated_peak + self.allocator_overhead

    @property
    def device_total(self) -> int:
        return self.reserved_peak + self.cuda_context

    def to_dict(self) -> dict[str, Any]:
        return {
            "components": {k: int(v) for k, v in self.components.items()},
            "allocated_peak": int(self.allocated_peak),
            "reserved_peak": int(self.reserved_peak),
            "device_total": int(self.device_total),
        }


@dataclass(frozen=True)
class Estimate:
    model: ModelInfo
    job: Job
    method: str  # "detailed" | "seed" | "trace" | "measure"
    per_gpu: PerGPU
    gpu: GPUInfo
    num_gpus: int
    explanation: tuple[str, ...] = field(default=())  # how the method differs, what was assumed
    seed_total_bytes: int | None = None  # seed method only: the seed's own total (its 25 % allowance included)
    # What to change when the job does not fit, or needs more than one GPU (modelmem.planner.suggest.Suggestion).
    suggestions: tuple[Any, ...] = field(default=())
    speed: Any = None  # modelmem.speed.InferenceSpeed or TrainingSpeed: estimated times, attached after the estimate

    @property
    def total_bytes(self) -> int:
        """All GPUs together: the seed's total in seed mode; else device_total × num_gpus."""
        if self.seed_total_bytes is not None:
            return self.seed_total_bytes
        return self.per_gpu.device_total * self.num_gpus

    @property
    def fits(self) -> bool:
        return self.per_gpu.device_total <= self.gpu.usable_bytes if self.method != "seed" else (
            self.total_bytes <= self.num_gpus * self.gpu.nominal_gb * BYTES_IN_GB
        )

    @property
    def headroom_bytes(self) -> int:
        return self.gpu.usable_bytes - self.per_gpu.device_total

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {
                "name": self.model.name,
                "params": int(self.model.params),
                "trainable_params": int(self.model.trainable_params),
                "active_params": int(self.model.active_params),
            },
            "job": self.job.to_dict(),
            "method": self.method,
            "per_gpu": self.per_gpu.to_dict(),
            "total_bytes": int(self.total_bytes),
            "gpu": self.gpu.to_dict(),
            "num_gpus": int(self.num_gpus),
            "fits": bool(self.fits),
            "suggestions": [s.to_dict() for s in self.suggestions],
            **({"speed": self.speed.to_dict()} if self.speed is not None else {}),
        }
