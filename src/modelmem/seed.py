"""The seed article's rules of thumb, reproduced exactly (`--method seed`).

Bytes per parameter by dtype: 4 / 2 / 1 / 0.5 for fp32 / 16-bit / 8-bit / 4-bit (1B params = 4 / 2 / 1 / 0.5 GB).
Full training: 18 bytes per parameter — 6 for weights (fp32 master + 16-bit copy), 4 for gradients, 8 for AdamW's
two states (2× the fp32 weights; SGD 1×) — Hugging Face "Model training anatomy"; × 1.25 allowance.
LoRA: (all parameters × 2 + trainable × 18) × 1.25. Inference: parameters × bytes × 1.25.
GPUs: ceil(total GB / the GPU's nominal GB).
"""

from __future__ import annotations

import dataclasses
import math

from modelmem.dtypes import SEED_BYTES
from modelmem.job import Job
from modelmem.result import Estimate, GPUInfo, ModelInfo, PerGPU
from modelmem.spec import ModelSpec
from modelmem.units import BYTES_IN_GB, BYTES_IN_GIB

ALLOWANCE = 1.25
# The seed's 18 bytes per trained parameter ("Model training anatomy"): 16-bit weights + fp32 master copy (6),
# fp32 gradients (4), and optimizer states (AdamW 8, others 4).
WEIGHT_COPY_BYTES = 2.0  # the 16-bit copy the forward uses (the detailed method's "weights")
MASTER_BYTES = 4.0  # the fp32 master copy (the detailed method's "master_weights")
GRADIENT_BYTES = 4.0
_QUANT_SEED = {"int8": "int8", "int8-wo": "int8", "fp8": "int8", "nf4": "int4", "fp4": "int4", "nf4-dq": "int4",
               "int4": "int4", "gptq": "int4", "awq": "int4"}


def seed_bytes_per_param(job: Job) -> float:
    if job.quant == "none":
        return SEED_BYTES[job.dtype]
    if job.quant.startswith("gguf:"):
        return SEED_BYTES["int4"] if "Q4" in job.quant or "IQ4" in job.quant else SEED_BYTES["int8"]
    return SEED_BYTES[_QUANT_SEED[job.quant]]


def _optimizer_per_param(job: Job) -> float:
    # AdamW keeps two fp32 states (2× the 4-byte weights); SGD-style optimizers one (1×); plain SGD none.
    if job.optimizer in ("adamw", "paged-adamw", "adamw-8bit", "paged-adamw-8bit"):
        return 8.0
    if job.optimizer == "sgd":
        return 4.0  # the seed: "SGD = 1×" the weights
    return 4.0


def seed_components(params: int, trainable: int, job: Job) -> dict[str, float]:
    """Bytes for all GPUs together, before the allowance, as the seed names them ("weights" holds the masters)."""
    terms = seed_terms(params, trainable, job)
    terms["weights"] += terms.pop("master_weights", 0.0)
    return terms


def seed_terms(params: int, trainable: int, job: Job) -> dict[str, float]:
    """The seed's bytes (all GPUs, before the allowance) under the detailed method's names: its "weights" term
    (6 bytes per trained parameter) split into the 16-bit copy ("weights") and the fp32 masters ("master_weights")."""
    if job.mode == "train":
        return {"weights": params * WEIGHT_COPY_BYTES, "master_weights": params * MASTER_BYTES,
                "gradients": params * GRADIENT_BYTES, "optimizer_states": params * _optimizer_per_param(job)}
    if job.uses_lora:
        return {
            "weights": params * seed_bytes_per_param(job) + trainable * WEIGHT_COPY_BYTES,
            "master_weights": trainable * MASTER_BYTES,
            "gradients": trainable * GRADIENT_BYTES,
            "optimizer_states": trainable * _optimizer_per_param(job),
        }
    return {"weights": params * seed_bytes_per_param(job)}


def _num(x: float) -> str:
    return f"{x:g}"


def seed_formula(params: int, trainable: int, job: Job) -> str:
    """The seed's total as it computes it, with this job's numbers (bytes; P = all parameters, T = trainable)."""
    per_trained = f"({_num(WEIGHT_COPY_BYTES + MASTER_BYTES)} + {_num(GRADIENT_BYTES)} + {_num(_optimizer_per_param(job))})"
    if job.mode == "train":
        return f"{params:,d} × {per_trained} × {ALLOWANCE:g}"
    if job.uses_lora:
        return f"({params:,d} × {_num(seed_bytes_per_param(job))} + {trainable:,d} × {per_trained}) × {ALLOWANCE:g}"
    return f"{params:,d} × {_num(seed_bytes_per_param(job))} × {ALLOWANCE:g}"


def seed_estimate(spec: ModelSpec, job: Job, gpu: GPUInfo) -> Estimate:
    from modelmem.model import prepare

    m, job = prepare(spec, job)
    counts = m.counts
    parts = seed_components(counts.total, m.trainable, job)
    base = sum(parts.values())
    total = base * ALLOWANCE
    gpu_bytes = gpu.nominal_gb * BYTES_IN_GB
    needed = max(1, math.ceil(round(total / gpu_bytes, 9)))
    n = needed if job.num_gpus == "auto" else int(job.num_gpus)
    components = {k: round(v / n) for k, v in parts.items()}
    components["allowance"] = round(base * (ALLOWANCE - 1) / n)
    job = dataclasses.replace(job, num_gpus=n)
    return Estimate(
        model=ModelInfo(spec.name, counts.total, m.trainable, counts.active),
        job=job,
        method="seed",
        per_gpu=PerGPU(components=components),
        gpu=gpu,
        num_gpus=n,
        explanation=(
            f"seed rule: {seed_formula(counts.total, m.trainable, job)} bytes = {total / BYTES_IN_GB:.2f} GB "
            f"({total / BYTES_IN_GIB:.2f} GiB); GPUs = ceil({total / BYTES_IN_GB:.2f} GB / {gpu.nominal_gb:g} GB nominal) = {needed}",
            "the seed ignores activations, logits, the KV cache, the optimizer's dtype and how GPUs share memory; "
            "the detailed method (default) models them",
        ),
        seed_total_bytes=round(total),
    )
