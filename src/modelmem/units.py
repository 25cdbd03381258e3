"""Byte units. Only the edges (rendering, parsing sizes) use them; the core counts integer bytes."""

from __future__ import annotations

BYTES_IN_MIB = 1024**2
BYTES_IN_GIB = 1024**3
BYTES_IN_GB = 10**9  # the decimal gigabyte printed on GPU boxes and in the seed article
FP32_BYTES = 4  # torch.float32: master weights, upcast logits, norm statistics, softmax outputs
BOOL_BYTES = 1  # torch.bool: dropout masks


def gib(n_bytes: int | float) -> float:
    return n_bytes / BYTES_IN_GIB


def fmt_count(n: int) -> str:
    """12,345,678 -> '12.35M' style, for parameter counts."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
