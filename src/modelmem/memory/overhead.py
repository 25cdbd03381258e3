"""What torch's allocated counter does not show: allocator slack, CUDA context, communication buffers."""

from __future__ import annotations

from modelmem.job import Job
from modelmem.units import BYTES_IN_MIB

# CUDA context with lazy module loading (CUDA ≥ 11.7) plus cuBLAS/cuDNN handles: 300–600 MiB on A100/H100
# (PyTorch "CUDA semantics" notes; nvidia-smi minus max_memory_reserved in the measured records).
CUDA_CONTEXT_BYTES = 500 * BYTES_IN_MIB
# NCCL communicators' buffers per process (NCCL_BUFFSIZE 4 MiB × channels × peers), measured ~200–400 MiB on 8 GPUs.
NCCL_BYTES = 256 * BYTES_IN_MIB


def allocator_overhead(job: Job, allocated: int, largest_transient: int) -> int:
    """reserved − allocated for PyTorch's caching allocator.

    Large blocks are rounded to 2 MiB and split from cached segments; blocks freed mid-step stay cached, so
    training reserves about the largest short-lived buffer again beyond the allocated peak (fragmentation);
    inference with few, long-lived tensors reserves about 1 % more. Fitted to the allocator replays in
    benchmarks/results (trace_grid.jsonl) and to the records with both readings in shared/validation.
    """
    if job.training:
        return int(0.03 * allocated + 0.5 * largest_transient)
    return int(0.01 * allocated + 0.5 * largest_transient)


def device_extra(job: Job, num_gpus: int) -> int:
    return CUDA_CONTEXT_BYTES + (NCCL_BYTES if num_gpus > 1 else 0)
