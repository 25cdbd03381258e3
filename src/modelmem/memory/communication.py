"""Buffers that sharding and data parallelism add on each GPU during a training step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelmem.dtypes import DTYPE_BYTES
from modelmem.job import Job
from modelmem.memory.optimizer import gradient_bytes, master_dtype_bytes
from modelmem.parallel import layout_of

if TYPE_CHECKING:
    from modelmem.model import PreparedModel
    from modelmem.parallel import Shares


def largest_unit_params(m: PreparedModel) -> int:
    """Parameters FSDP gathers at once: one decoder layer, or the embedding / LM head if larger."""
    return max(m.per_layer_params, m.counts.embeddings, m.counts.lm_head)


def collective_buffer_bytes(m: PreparedModel, job: Job, n: int, sh: Shares) -> int:
    """Communication buffers alive through forward and backward, per GPU."""
    c = DTYPE_BYTES[job.dtype]
    if job.strategy == "ddp" and n > 1:
        # DDP's gradient buckets copy every gradient this rank holds (bucket views off).
        return int(gradient_bytes(job, m.trainable) * sh.grads)
    comm = 0
    if (job.strategy in ("zero3", "fsdp") and n > 1) or job.offload == "params":
        # FSDP/ZeRO-3 all-gather the current unit and prefetch the next (FSDP2 default), and reduce-scatter the
        # unit's unsharded gradients in backward (frozen LoRA bases reduce no gradients).
        unit = largest_unit_params(m)
        comm = 2 * unit * c if job.uses_lora or not m.trainable else 2 * unit * c + unit * master_dtype_bytes(job)
    elif job.strategy == "zero2" and n > 1:
        comm = 2 * largest_unit_params(m) * master_dtype_bytes(job)  # reduce buckets
    return comm // layout_of(job, n).tp  # a tensor-parallel rank gathers and reduces its 1/t of each unit
