"""What torch's allocated counter does not show: allocator slack, CUDA context, communication buffers."""

from __future__ import annotations

from collections.abc import Mapping

from modelmem.job import Job
from modelmem.memory.fitted import ALLOCATOR_SLACK_ALL, ALLOCATOR_SLACK_LOGITS
from modelmem.units import BYTES_IN_GIB, BYTES_IN_MIB

# CUDA context with lazy module loading (CUDA ≥ 11.7) plus cuBLAS/cuDNN handles: 300–600 MiB on A100/H100
# (PyTorch "CUDA semantics" notes; nvidia-smi minus max_memory_reserved in the measured records).
CUDA_CONTEXT_BYTES = 500 * BYTES_IN_MIB
# ROCm: the HIP context, rocBLAS/hipBLASLt handles and their code objects, loaded eagerly (HIP has no lazy module
# loading). No measured figure is published; vLLM's ROCm CI calls the initialisation overhead "larger on ROCm than on
# CUDA" (vllm-project/vllm#43236). 1 GiB is assumed, not measured.
ROCM_CONTEXT_BYTES = BYTES_IN_GIB
# Metal (Apple): no per-process device reservation is counted in the GPU's working set; the binding limit is the
# working-set cap below, and the OS and other apps live in the rest of unified memory.
METAL_CONTEXT_BYTES = 0
# Gaudi (HPU): unmeasured here; taken as CUDA's until a report is found.
HPU_CONTEXT_BYTES = CUDA_CONTEXT_BYTES
CONTEXT_BYTES = {"cuda": CUDA_CONTEXT_BYTES, "rocm": ROCM_CONTEXT_BYTES, "metal": METAL_CONTEXT_BYTES, "hpu": HPU_CONTEXT_BYTES}

# Metal lets the GPU wire only part of unified memory: MTLDevice.recommendedMaxWorkingSetSize, as llama.cpp prints it,
# is 2/3 of RAM up to 32 GiB (16 GiB → 10922.67 MiB, abetlen/llama-cpp-python#687; 32 GiB → 21845.34 MiB,
# ggml-org/llama.cpp#2011) and 3/4 above (64 GiB → 49152 MiB, ggml-org/llama.cpp#1870; 96 GiB → 73728 MiB,
# ggml-org/llama.cpp#3213). The OS and other apps need the rest; `sudo sysctl iogpu.wired_limit_mb=…` raises the cap
# (and newer macOS raises it on large machines: 107.52 of 128 GiB on an M5 Max, antirez/ds4#893).
METAL_SMALL_FRACTION = 2 / 3
METAL_LARGE_FRACTION = 3 / 4
METAL_LARGE_ABOVE_BYTES = 32 * BYTES_IN_GIB
# NCCL communicator buffers per process (NCCL_BUFFSIZE 4 MiB × channels × peers × protocols; channels picked from the
# topology): measured through PyTorch process groups on 4×A100 NVLink after a 4 MB all-reduce, 544 MB for a
# 2-GPU group and 688 MB for larger ones (NVIDIA/nccl#964; nvidia-smi's MiB). More channels (H100 NVLink,
# all-to-all: NVIDIA/nccl#1685) take more; no job field says which, so these are the published floor.
NCCL_PAIR_BYTES = 544 * BYTES_IN_MIB
NCCL_GROUP_BYTES = 688 * BYTES_IN_MIB


def allocator_overhead(components: Mapping[str, int]) -> int:
    """reserved − allocated for PyTorch's caching allocator.

    Blocks are rounded (512 B; 2 MiB segments below 1 MiB requests, 20 MiB below 10 MiB) and freed blocks stay
    cached for reuse, so memory that churns inside a step — the loss's vocabulary-sized buffers above all, then
    then the rest of what a step allocates — leaves reserved-but-unallocated slack. Fitted on the allocator replays
    of the traced grid (memory/fitted.py): a share of everything allocated, and a larger one of the loss's buffers.
    """
    allocated = sum(components.values())
    return int(ALLOCATOR_SLACK_ALL * allocated + ALLOCATOR_SLACK_LOGITS * components.get("logits", 0))


def metal_working_set_bytes(unified_bytes: int) -> int:
    """recommendedMaxWorkingSetSize for a Mac with this much unified memory (fractions and sources above)."""
    fraction = METAL_LARGE_FRACTION if unified_bytes > METAL_LARGE_ABOVE_BYTES else METAL_SMALL_FRACTION
    return int(unified_bytes * fraction)


def device_extra(job: Job, num_gpus: int) -> int:
    """The runtime's per-process reservation on the device (by platform) plus collective buffers on several GPUs."""
    from modelmem.catalog.gpus import resolve_gpu

    platform = resolve_gpu(job.gpu).platform
    nccl = 0 if num_gpus < 2 else NCCL_PAIR_BYTES if num_gpus == 2 else NCCL_GROUP_BYTES
    return CONTEXT_BYTES[platform] + nccl
