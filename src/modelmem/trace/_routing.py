"""Kernel choices made as a CUDA GPU makes them, so that fake tensors (CPU or CUDA) allocate what the GPU would.

On fake tensors `scaled_dot_product_attention` cannot ask the device which kernel to use: on fake CPU it takes the
CPU's choice (math, keeping s × s probabilities, for unequal q/k and v head sizes or some masks), on fake CUDA on
the CPU wheel there is no CUDA selector at all and it always takes the math path. `gpu_kernels()` picks the kernel
with the rules of torch's CUDA selector (aten/src/ATen/native/transformers/sdp_utils.cpp, torch 2.13, sm80+: flash,
then memory-efficient, then math) and calls that kernel's aten op, whose fake (meta) implementation allocates what
the CUDA kernel allocates. Dropout takes CUDA's fused kernel (`native_dropout`: a bool mask), where the CPU's
`at::dropout` keeps a mask in the input's dtype (aten/src/ATen/native/Dropout.cpp, `is_fused_kernel_acceptable`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

_aten = torch.ops.aten
_HALF = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256  # check_head_dim_size_flash: q, k and v head sizes equal and at most 256
MEM_EFFICIENT_ALIGN = 16  # bytes: check_head_dim_size_mem_efficient wants head sizes that are multiples of 16 bytes
MEM_EFFICIENT_BIAS_ALIGN = 16  # elements: the bias's last dim is padded to a multiple of 16 (preprocess_mask)


def cuda_sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                     is_causal: bool, enable_gqa: bool) -> str:
    """"flash", "efficient" or "math": the first kernel torch's CUDA selector accepts for these inputs."""
    dq, dk, dv = q.shape[-1], k.shape[-1], v.shape[-1]
    gqa = enable_gqa and q.shape[-3] != k.shape[-3]
    non_square_causal = is_causal and q.shape[-2] != k.shape[-2]
    if (q.dtype in _HALF and attn_mask is None and dq == dk == dv and dq <= FLASH_MAX_HEAD_DIM
            and not non_square_causal):
        return "flash"
    align = MEM_EFFICIENT_ALIGN // q.element_size()
    if (q.dtype in (*_HALF, torch.float32) and dq == dk and dq % align == 0 and dv % align == 0 and not gqa):
        return "efficient"
    return "math"


def _bias(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The additive bias the memory-efficient kernel gets: a bool mask becomes 0 / −inf in q's dtype
    (convert_boolean_attn_mask), its last dim padded to a multiple of 16 and sliced back (preprocess_mask)."""
    if mask.dtype == torch.bool:
        mask = torch.where(mask.logical_not(), float("-inf"), torch.zeros((), dtype=q.dtype, device=q.device))
    s = mask.shape[-1]
    if s % MEM_EFFICIENT_BIAS_ALIGN:
        mask = F.pad(mask, (0, MEM_EFFICIENT_BIAS_ALIGN - s % MEM_EFFICIENT_BIAS_ALIGN))[..., :s]
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return mask.expand(shape)


def routed_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention through the kernel a CUDA GPU would run."""
    low = _autocast_dtype()
    if low is not None:
        # scaled_dot_product_attention is on autocast's lower-precision list: its floating inputs are cast to the
        # autocast dtype before CUDA's kernel selector sees them (an fp32 q after an fp32 RoPE still runs flash)
        query, key, value = (t.to(low) if t.is_floating_point() else t for t in (query, key, value))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(low)
    kernel = cuda_sdpa_kernel(query, key, value, attn_mask, is_causal, enable_gqa)
    if kernel == "flash":
        return _aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    if kernel == "efficient":
        bias = None if attn_mask is None else _bias(attn_mask, query, key)
        lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        return _aten._scaled_dot_product_efficient_attention(query, key, value, bias, lse, dropout_p, is_causal, scale=scale)[0]
    return _aten._scaled_dot_product_attention_math(query, key, value, attn_mask, dropout_p, is_causal, None,
                                                    scale=scale, enable_gqa=enable_gqa)[0]


def _autocast_dtype() -> torch.dtype | None:
    """The dtype an active autocast region casts to (the CUDA route's, else the CPU route's), or None."""
    for device in ("cuda", "cpu"):
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    return None


def fused_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
    """F.dropout as CUDA runs it: native_dropout, which saves a bool mask (1 byte per element)."""
    if training and 0.0 < p < 1.0 and input.numel() > 0 and not inplace:
        return _aten.native_dropout(input, p, True)[0]
    return _ORIG_DROPOUT(input, p, training, inplace)


_ORIG_DROPOUT = F.dropout


@contextlib.contextmanager
def gpu_kernels() -> Iterator[None]:
    """While active, attention and dropout called through torch.nn.functional take the CUDA GPU's kernels."""
    orig_sdpa, orig_dropout = F.scaled_dot_product_attention, F.dropout
    F.scaled_dot_product_attention = routed_sdpa  # type: ignore[assignment]
    F.dropout = fused_dropout  # type: ignore[assignment]
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig_sdpa  # type: ignore[assignment]
        F.dropout = orig_dropout  # type: ignore[assignment]
