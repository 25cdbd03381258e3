"""Gradients and optimizer states, and the optimizer step's temporaries."""

from __future__ import annotations

from modelmem.dtypes import DTYPE_BYTES
from modelmem.job import Job
from modelmem.runtimes.profiles import profile_for

# bitsandbytes 8-bit optimizers: uint8 state + one fp32 absmax per 256-value block (bnb optim Optimizer8bit,
# blockwise quantization, Dettmers et al. 2022 "8-bit Optimizers via Block-wise Quantization").
_BNB8_BYTES_PER_STATE = 1 + 4 / 256


def master_dtype_bytes(job: Job) -> int:
    return 4 if job.precision == "mixed" else DTYPE_BYTES[job.dtype]


def gradient_bytes(job: Job, trainable: int) -> int:
    # Gradients take the dtype of the parameter they belong to (autograd accumulates into param.grad's dtype).
    return trainable * master_dtype_bytes(job)


def optimizer_state_bytes(job: Job, trainable: int) -> int:
    """States resident on the GPU from the first step on (torch keeps AdamW states in the parameter's dtype)."""
    p = master_dtype_bytes(job)
    opt = job.optimizer
    if opt == "adamw":
        return 2 * trainable * p  # exp_avg + exp_avg_sq (Loshchilov & Hutter 2019)
    if opt == "adamw-8bit":
        return int(2 * trainable * _BNB8_BYTES_PER_STATE)
    if opt in ("paged-adamw", "paged-adamw-8bit"):
        # Paged states live in CUDA unified memory and page out under pressure: torch's allocator never sees them.
        return 0
    if opt == "sgd":
        return 0
    if opt in ("sgd-momentum", "lion"):
        return trainable * p  # one momentum buffer (Chen et al. 2023, Lion Algorithm 2)
    if opt == "adafactor":
        # Factored second moment: a row and a column vector per matrix (Shazeer & Stern 2018 §3), ~ 2·sqrt(n) per
        # matrix; bounded here by 1 % of the parameters, which it never exceeds for hidden sizes ≥ 256.
        return int(trainable * p * 0.01)
    raise ValueError(opt)


def optimizer_step_temporary_bytes(job: Job, trainable: int) -> int:
    """Extra memory the step itself allocates: torch's foreach AdamW materializes one state-sized temporary
    (torch.optim.adamw._multi_tensor_adamw: _foreach_sqrt); the fused kernel (profile.fused_adamw) none."""
    if job.optimizer != "adamw" or profile_for(job).fused_adamw or job.optimizer_in_backward:
        return 0
    return trainable * master_dtype_bytes(job)


def paged_state_bytes(job: Job, trainable: int) -> int:
    """Paged optimizers' states (unified memory): reported in notes, not in allocated memory."""
    p = master_dtype_bytes(job)
    if job.optimizer == "paged-adamw":
        return 2 * trainable * p
    if job.optimizer == "paged-adamw-8bit":
        return int(2 * trainable * _BNB8_BYTES_PER_STATE)
    return 0
