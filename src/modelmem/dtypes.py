"""Bytes per element for dtypes, and bytes per weight for quantization formats (scales and zero points included)."""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
# KV-cache element sizes; int4 packs two per byte (torchao / HF quantized cache).
KV_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # llama.cpp -ctk/-ctv: ggml blocks of 32 with an fp16 scale
# The seed article's rule: 1B params = 4 / 2 / 1 / 0.5 GB for fp32 / 16-bit / 8-bit / 4-bit.
SEED_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}

# llama.cpp ggml block formats: bits per weight = block bytes × 8 / block size (ggml-common.h block structs).
GGUF_BPW = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0,
    "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "Q8_1": 9.0,
    "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625, "Q8_K": 9.125,
    "IQ1_S": 1.5625, "IQ1_M": 1.75, "IQ2_XXS": 2.0625, "IQ2_XS": 2.3125, "IQ2_S": 2.5,
    "IQ3_XXS": 3.0625, "IQ3_S": 3.4375, "IQ4_NL": 4.5, "IQ4_XS": 4.25, "TQ1_0": 1.6875, "TQ2_0": 2.0625,
    "MXFP4": 4.25,
}
# File types that mix block formats (llama-quant.cpp llama_tensor_get_type): base type for most tensors, the type
# used for attn_v / ffn_down on the "more bits" layers, and the type of output.weight.
GGUF_MIXES = {
    "Q2_K": ("Q2_K", "Q4_K", "Q6_K"), "Q2_K_S": ("Q2_K", "Q2_K", "Q6_K"),
    "Q3_K_S": ("Q3_K", "Q3_K", "Q6_K"), "Q3_K_M": ("Q3_K", "Q5_K", "Q6_K"), "Q3_K_L": ("Q3_K", "Q5_K", "Q6_K"),
    "Q4_K_S": ("Q4_K", "Q5_K", "Q6_K"), "Q4_K_M": ("Q4_K", "Q6_K", "Q6_K"),
    "Q5_K_S": ("Q5_K", "Q5_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K", "Q6_K"),
    "Q6_K": ("Q6_K", "Q6_K", "Q6_K"),
    "IQ4_XS": ("IQ4_XS", "IQ4_XS", "Q6_K"), "IQ3_XXS": ("IQ3_XXS", "IQ3_S", "Q6_K"), "IQ2_XS": ("IQ2_XS", "Q4_K", "Q6_K"),
}


@dataclass(frozen=True)
class QuantFormat:
    """Bytes per weight of a quantized linear layer, scales and zero points included."""

    name: str
    bits: float  # packed payload bits per weight
    group_size: int  # weights sharing one scale (0: per output channel)
    scale_bytes: float  # bytes of scale (+ zero point) per group
    source: str

    def bytes_per_weight(self, in_features: int) -> float:
        group = self.group_size or in_features
        return self.bits / 8 + self.scale_bytes / group


def quant_format(quant: str, group_size: int = 128) -> QuantFormat:
    """The storage layout of a `quant` value of JOBS.md (not gguf:, which is per tensor; see gguf_bits)."""
    if quant == "nf4" or quant == "fp4":
        # bitsandbytes Params4bit: 4-bit codes + one fp32 absmax per 64-weight block (bnb functional.quantize_4bit).
        return QuantFormat(quant, 4, 64, 4.0, "bitsandbytes quantize_4bit, blocksize 64, fp32 absmax")
    if quant == "nf4-dq":
        # Double quantization (QLoRA paper §3): absmax in 8 bits per 64-block + one fp32 scale per 256 absmax.
        return QuantFormat(quant, 4, 64, 1.0 + 4.0 / 256, "QLoRA §3 double quantization: 8-bit absmax, blocks of 256")
    if quant == "int8":
        # LLM.int8 (bitsandbytes Int8Params): int8 weight + one fp32 row scale (SCB) per output row.
        return QuantFormat(quant, 8, 0, 4.0, "bitsandbytes Int8Params: int8 CB + fp32 SCB per row")
    if quant == "int8-wo":
        # torchao int8 weight-only: int8 weight + one bf16 scale per output channel.
        return QuantFormat(quant, 8, 0, 2.0, "torchao int8_weight_only: per-channel bf16 scale")
    if quant == "fp8":
        # fbgemm/torchao float8 weight with one fp32 scale per output row (fbgemm_fp8 quantize_fp8_per_row).
        return QuantFormat(quant, 8, 0, 4.0, "fbgemm fp8 per-row fp32 scale")
    if quant == "int4":
        # torchao int4_weight_only: packed int4 + bf16 scale and bf16 zero per group (scales_and_zeros [in/g, out, 2]).
        return QuantFormat(quant, 4, group_size, 4.0, "torchao int4_weight_only: bf16 scale + zero per group")
    if quant == "mxfp4":
        # OCP Microscaling MXFP4: E2M1 values with one E8M0 (1-byte) scale per 32 (OCP MX spec v1.0; gpt-oss experts).
        return QuantFormat(quant, 4, 32, 1.0, "OCP MXFP4: E2M1 codes, one E8M0 scale per 32")
    if quant == "gptq":
        # GPTQ: int32-packed 4-bit qweight, fp16 scale and 4-bit packed zero per group (AutoGPTQ QuantLinear).
        return QuantFormat(quant, 4, group_size, 2.0 + 0.5, "AutoGPTQ QuantLinear: fp16 scales + packed qzeros")
    if quant == "awq":
        # AWQ GEMM: same packing as GPTQ without g_idx (AutoAWQ WQLinear_GEMM).
        return QuantFormat(quant, 4, group_size, 2.0 + 0.5, "AutoAWQ WQLinear_GEMM: fp16 scales + packed qzeros")
    raise ValueError(quant)


def gguf_file_type(quant: str) -> str:
    return quant.split(":", 1)[1].upper()


def gguf_bits(file_type: str, role: str, more_bits_layer: bool) -> float:
    """Bits per weight llama.cpp gives a tensor of `role` ("output", "token_embd", "attn_v", "ffn_down", other)."""
    if file_type in GGUF_BPW and file_type not in GGUF_MIXES:
        base = boost = output = file_type
        if file_type in ("F32", "F16", "BF16"):
            return GGUF_BPW[file_type]
        # Plain block types keep output.weight at Q6_K unless the type is 8-bit (llama-quant.cpp).
        output = "Q8_0" if file_type == "Q8_0" else "Q6_K"
    elif file_type in GGUF_MIXES:
        base, boost, output = GGUF_MIXES[file_type]
    else:
        raise ValueError(file_type)
    if role == "output":
        return GGUF_BPW[output]
    if role in ("attn_v", "ffn_down") and more_bits_layer:
        return GGUF_BPW[boost]
    return GGUF_BPW[base]


def gguf_more_bits(layer: int, num_layers: int) -> bool:
    """llama.cpp's use_more_bits(i, n): the first and last eighth of layers, and every third layer in between."""
    return layer < num_layers // 8 or layer >= 7 * num_layers // 8 or (layer - num_layers // 8) % 3 == 2
