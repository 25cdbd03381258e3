"""Bytes per element for dtypes, and bytes per weight for quantization formats (scales and zero points included)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
# KV-cache element sizes; int4 packs two per byte (torchao / HF quantized cache).
KV_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # llama.cpp -ctk/-ctv: ggml blocks of 32 with an fp16 scale
# The seed article's rule: 1B params = 4 / 2 / 1 / 0.5 GB for fp32 / 16-bit / 8-bit / 4-bit.
SEED_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}

# The one GGUF type table. ggml type id → (name, weights per block, bytes per block): ggml/src/ggml.c type_traits,
# as gguf-py's GGML_QUANT_SIZES (Q8_1 is ggml's 36-byte block_q8_1; it is a matmul scratch type, never stored).
GGML_TYPES: Mapping[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
# Bits per weight of each block format = block bytes × 8 / block size, derived from the table above.
GGUF_BPW: Mapping[str, float] = {name: size * 8 / block for name, block, size in GGML_TYPES.values()}

# general.file_type → llama.cpp's name (include/llama.h llama_ftype, LLAMA_FTYPE_MOSTLY_ prefix dropped).
LLAMA_FILE_TYPES: Mapping[int, str] = {
    0: "ALL_F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}
# Every llama.cpp file type as (base type for most tensors, type of attn_v / ffn_down on the "more bits" layers,
# type of output.weight): base from llama-quant.cpp llama_model_quantize_impl's default_type switch, boost and output
# from llama_tensor_get_type's common case (output is Q6_K unless the file is 8-bit; MXFP4_MOE keeps Q8_0 outside
# the experts). Unquantized file types keep every tensor in their own type.
GGUF_MIXES: Mapping[str, tuple[str, str, str]] = {
    "ALL_F32": ("F32", "F32", "F32"), "F16": ("F16", "F16", "F16"), "BF16": ("BF16", "BF16", "BF16"),
    "Q4_0": ("Q4_0", "Q4_0", "Q6_K"), "Q4_1": ("Q4_1", "Q4_1", "Q6_K"), "Q5_0": ("Q5_0", "Q5_0", "Q6_K"),
    "Q5_1": ("Q5_1", "Q5_1", "Q6_K"), "Q8_0": ("Q8_0", "Q8_0", "Q8_0"),
    "Q2_K": ("Q2_K", "Q4_K", "Q6_K"), "Q2_K_S": ("Q2_K", "Q2_K", "Q6_K"),
    "Q3_K_S": ("Q3_K", "Q3_K", "Q6_K"), "Q3_K_M": ("Q3_K", "Q5_K", "Q6_K"), "Q3_K_L": ("Q3_K", "Q5_K", "Q6_K"),
    "Q4_K_S": ("Q4_K", "Q5_K", "Q6_K"), "Q4_K_M": ("Q4_K", "Q6_K", "Q6_K"),
    "Q5_K_S": ("Q5_K", "Q5_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K", "Q6_K"),
    "Q6_K": ("Q6_K", "Q6_K", "Q6_K"),
    "IQ1_S": ("IQ1_S", "IQ1_S", "Q6_K"), "IQ1_M": ("IQ1_M", "IQ1_M", "Q6_K"),
    "IQ2_XXS": ("IQ2_XXS", "IQ2_XXS", "Q6_K"), "IQ2_XS": ("IQ2_XS", "Q4_K", "Q6_K"),
    "IQ2_S": ("IQ2_XS", "IQ3_S", "Q6_K"), "IQ2_M": ("IQ2_S", "IQ3_S", "Q6_K"),
    "IQ3_XXS": ("IQ3_XXS", "IQ3_S", "Q6_K"), "IQ3_XS": ("IQ3_S", "IQ3_S", "Q6_K"),
    "IQ3_S": ("IQ3_S", "IQ3_S", "Q6_K"), "IQ3_M": ("IQ3_S", "Q4_K", "Q6_K"),
    "IQ4_NL": ("IQ4_NL", "IQ4_NL", "Q6_K"), "IQ4_XS": ("IQ4_XS", "IQ4_XS", "Q6_K"),
    "TQ1_0": ("TQ1_0", "TQ1_0", "Q6_K"), "TQ2_0": ("TQ2_0", "TQ2_0", "Q6_K"),
    "MXFP4_MOE": ("MXFP4", "MXFP4", "Q8_0"), "NVFP4": ("NVFP4", "NVFP4", "Q6_K"), "Q1_0": ("Q1_0", "Q1_0", "Q6_K"),
}
# Block types accepted as a file type too (`gguf:Q8_K`, `gguf:MXFP4`): every tensor in that type, head at Q6_K.
GGUF_FILE_TYPES: tuple[str, ...] = tuple(dict.fromkeys((*GGUF_MIXES, *(
    n for n in GGUF_BPW if n not in ("Q8_1", "I8", "I16", "I32", "I64", "F64")
))))


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
        # torchao int8_weight_only (quant_api.py apply_int8wo_quant): int8 weight, and per output channel a scale in
        # the weight's dtype (bf16, choose_qparams_affine) and an int64 zero point (zero_point_dtype=torch.int64).
        return QuantFormat(quant, 8, 0, 2.0 + 8.0, "torchao int8_weight_only: per-channel bf16 scale + int64 zero point")
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
    """`gguf:q4_k_m` → "Q4_K_M"; raises ValueError for a type outside GGUF_FILE_TYPES (job validation names it)."""
    name = quant.split(":", 1)[1].upper() if ":" in quant else quant.upper()
    if name not in GGUF_FILE_TYPES:
        raise ValueError(name)
    return name


def gguf_bits(file_type: str, role: str, more_bits_layer: bool) -> float:
    """Bits per weight llama.cpp gives a tensor of `role` ("output", "token_embd", "attn_v", "ffn_down", other)."""
    if file_type in GGUF_MIXES:
        base, boost, output = GGUF_MIXES[file_type]
    elif file_type in GGUF_FILE_TYPES:
        # A bare block type: plain block types keep output.weight at Q6_K unless 8-bit or wider (llama-quant.cpp).
        base = boost = file_type
        output = file_type if GGUF_BPW[file_type] >= 8 else "Q6_K"
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
