"""QLoRA's 4-bit base, as a shim of identical storage sizes.

Why a shim and not bitsandbytes: bitsandbytes' Params4bit is a tensor subclass that clashes with FakeTensorMode
(its meta kernels work only on plain `meta` tensors, where SDPA falls back to the math kernel and stores the s×s
scores: shared/TRACING.md), and it is a 100 MB native dependency. The shim stores exactly what
`bnb.nn.Linear4bit` stores and allocates what `bnb.matmul_4bit` (MatMul4Bit, bitsandbytes/autograd/_functions.py)
allocates: the packed weight (uint8, n/2 bytes, shape (n/2, 1)), an fp32 absmax per 64-element block (or, with
double quantization, a uint8 absmax per block plus an fp32 absmax per 256 of those and a 256-entry fp32 code),
a full dequantized weight in the compute dtype for each forward matmul and again in backward, and nothing saved
for backward but the quantized weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelmem.job import Job

BLOCKSIZE = 64  # bitsandbytes' default 4-bit blocksize
DQ_BLOCKSIZE = 256  # blocksize of the second quantization of the absmax values


class _Dequant4bitMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_f: int, in_f: int) -> torch.Tensor:
        w = torch.empty((out_f, in_f), dtype=x.dtype, device=x.device)  # F.dequantize_4bit's output
        ctx.shape = (out_f, in_f)
        ctx.save_for_backward(packed)
        return nn.functional.linear(x, w, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (packed,) = ctx.saved_tensors
        w = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device)
        return torch.matmul(grad, w), None, None, None, None


class Linear4bitShim(nn.Linear):
    """Stores what bnb.nn.Linear4bit stores; computes like bnb.matmul_4bit (dequantize, then a dense matmul)."""

    def __init__(self, linear: nn.Module, compute_dtype: torch.dtype, double_quant: bool) -> None:
        nn.Module.__init__(self)
        if isinstance(linear, nn.Linear):
            self.in_features, self.out_features = linear.in_features, linear.out_features
        else:  # transformers' Conv1D (GPT-2 family): weight [in, out]; bitsandbytes' integration converts it too
            self.in_features, self.out_features = linear.weight.shape
        n = self.in_features * self.out_features
        dev = linear.weight.device
        self.weight = nn.Parameter(torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=dev), requires_grad=False)
        blocks = -(-n // BLOCKSIZE)
        if double_quant:
            self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, device=dev))
            self.register_buffer("absmax2", torch.empty(-(-blocks // DQ_BLOCKSIZE), dtype=torch.float32, device=dev))
            self.register_buffer("code2", torch.empty(256, dtype=torch.float32, device=dev))
        else:
            self.register_buffer("absmax", torch.empty(blocks, dtype=torch.float32, device=dev))
        self.register_buffer("code", torch.empty(16, dtype=torch.float32, device=dev))
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        return _Dequant4bitMatmul.apply(x, self.weight, self.bias, self.out_features, self.in_features)


def quantize_4bit(model: nn.Module, job: Job, compute_dtype: torch.dtype) -> int:
    """Replace every linear of the decoder (not the output head, as transformers' bnb integration skips it)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # transformers' replace_with_bnb_linear converts nn.Linear and Conv1D alike.
            if (type(child) is nn.Linear or type(child).__name__ == "Conv1D") and child is not head:
                setattr(parent, name, Linear4bitShim(child, compute_dtype, job.quant == "nf4-dq"))
                replaced += 1
    return replaced


def quantize_4bit_bnb(model: nn.Module, job: Job, compute_dtype: torch.dtype) -> int:
    """On a CUDA device (measure): the same replacement with bitsandbytes' real Linear4bit and its 4-bit kernels.

    Mirrors transformers' replace_with_bnb_linear (integrations/bitsandbytes.py): every nn.Linear/Conv1D but the
    head becomes bnb.nn.Linear4bit; its Params4bit quantizes on the move to the device (Params4bit._quantize)."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        from modelmem.errors import MissingExtraError

        raise MissingExtraError(f"measure with quant {job.quant}", "gpu") from e
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quant_type = "fp4" if job.quant == "fp4" else "nf4"
    double = job.quant == "nf4-dq"
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not ((type(child) is nn.Linear or type(child).__name__ == "Conv1D") and child is not head):
                continue
            weight = child.weight.data if isinstance(child, nn.Linear) else child.weight.data.t()  # Conv1D: [in, out]
            out_f, in_f = weight.shape
            layer = bnb.nn.Linear4bit(in_f, out_f, bias=child.bias is not None, compute_dtype=compute_dtype,
                                      compress_statistics=double, quant_type=quant_type, device="meta")
            layer.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, compress_statistics=double,
                                             quant_type=quant_type, module=layer).to(weight.device)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer)
            replaced += 1
    return replaced
