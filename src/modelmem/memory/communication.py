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
        # FSDP/ZeRO-3 hold gathered units and reduce-scatter the unit's unsharded gradients in backward (frozen
        # LoRA bases reduce no gradients).
        comm = gathered_bytes(m, job)
        if not (job.uses_lora or not m.trainable):
            comm += largest_unit_params(m) * master_dtype_bytes(job)
    elif job.strategy == "zero2" and n > 1:
        # Reduce buckets hold gradients, so never more than the trainable parameters (LoRA: the adapters only).
        comm = 2 * min(largest_unit_params(m), m.trainable) * master_dtype_bytes(job)
    return comm // layout_of(job, n).tp  # a tensor-parallel rank gathers and reduces its 1/t of each unit


def gathered_bytes(m: PreparedModel, job: Job) -> int:
    """Unsharded parameters FSDP/ZeRO-3 hold at the step's peak: the root unit (embeddings, head), which FSDP keeps
    gathered from forward into backward, or the layer being computed plus the one prefetched (FSDP2 default),
    whichever is larger. Traced (FSDP2 fully_shard, fake 2-rank group, seq 512): google/gemma-3-1b-pt LoRA holds
    its tied 262k × 1152 embedding once (603,982,336 bytes), not twice. A QLoRA base is gathered as stored."""
    c = DTYPE_BYTES[job.dtype]
    counts = m.counts
    root = counts.embeddings + counts.position_embeddings + counts.lm_head
    layer = m.per_layer_params * c
    if job.quant != "none":
        from modelmem.memory.weights import weight_bytes

        frozen = weight_bytes(m.spec, job, counts, m.linears, m.trainable).frozen
        layer = max(0, frozen - root * c) // max(1, m.spec.num_layers)  # layers packed, embeddings in dtype
    return max(root * c, 2 * layer)
