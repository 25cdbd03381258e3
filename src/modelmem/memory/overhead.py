"""What torch's allocated counter does not show: allocator slack, CUDA context, communication buffers."""

from __future__ import annotations

from collections.abc import Mapping

from modelmem.job import Job
from modelmem.units import BYTES_IN_MIB

# CUDA context with lazy module loading (CUDA ≥ 11.7) plus cuBLAS/cuDNN handles: 300–600 MiB on A100/H100
# (PyTorch "CUDA semantics" notes; nvidia-smi minus max_memory_reserved in the measured records).
CUDA_CONTEXT_BYTES = 500 * BYTES_IN_MIB
# NCCL communicators' buffers per process (NCCL_BUFFSIZE 4 MiB × channels × peers), measured ~200–400 MiB on 8 GPUs.
NCCL_BYTES = 256 * BYTES_IN_MIB


def allocator_overhead(components: Mapping[str, int]) -> int:
    """reserved − allocated for PyTorch's caching allocator.

    Blocks are rounded (512 B; 2 MiB segments below 1 MiB requests, 20 MiB below 10 MiB) and freed blocks stay
    cached for reuse, so memory that churns inside a step — the loss's vocabulary-sized buffers above all, then
    activations, gradients and step temporaries — leaves reserved-but-unallocated slack. Fitted on the allocator
    replays of 96 traced jobs (benchmarks/results/trace_grid.jsonl; median 1.6 %, p90 5.5 % error on reserved):
    2 % of everything allocated, 30 % of the logits/loss buffers, 2 % more of the short-lived components.
    """
    allocated = sum(components.values())
    churn = sum(components.get(k, 0) for k in ("activations", "gradients", "temporaries"))
    return int(0.02 * allocated + 0.3 * components.get("logits", 0) + 0.02 * churn)


def device_extra(job: Job, num_gpus: int) -> int:
    return CUDA_CONTEXT_BYTES + (NCCL_BYTES if num_gpus > 1 else 0)
