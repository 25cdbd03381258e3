"""Safetensors headers: one pure parser for local files, Hub range requests and tests.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the tensor data
(https://huggingface.co/docs/safetensors/index#format). Reading the first 8 + N bytes gives every tensor's dtype,
shape and exact stored size without touching the weights. Each failure has its own error naming the file,
as in huggingface_hub's `_get_safetensors_metadata_size` / `_parse_safetensors_header`.

`stored_weights` turns headers into `StoredWeights`: bytes exactly as stored (packed int4, FP8, MXFP4 and
bitsandbytes tensors included, scales and zero points too) and the logical (unpacked) parameter count.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelmem import limits
from modelmem.errors import ConfigError, SourceError, shown
from modelmem.spec import StoredWeights

# The safetensors reader's own cap (safetensors/src/tensor.rs MAX_HEADER_SIZE = 100_000_000); huggingface_hub
# caps remote headers at 25 MB (constants.SAFETENSORS_MAX_HEADER_LENGTH). Headers of the largest checkpoints
# (DeepSeek-V3 shards) are a few hundred KB. The bound lives in modelmem.limits with the others.
MAX_HEADER_BYTES = limits.SAFETENSORS_HEADER_BYTES.maximum
LENGTH_PREFIX_BYTES = 8


class SafetensorsError(SourceError):
    """A safetensors file or header could not be read; `source` names the file."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"safetensors {source}: {message}")


class HeaderTooShortError(SafetensorsError):
    """Fewer than the 8 bytes of the header-length prefix."""


class HeaderTooLargeError(SafetensorsError):
    """The header length prefix exceeds MAX_HEADER_BYTES (a corrupt or hostile file)."""


class HeaderTruncatedError(SafetensorsError):
    """The data ends before the header length prefix says the header does."""


class HeaderNotJSONError(SafetensorsError):
    """The header bytes are not UTF-8 JSON."""


class HeaderMalformedError(SafetensorsError):
    """The header is JSON but not a safetensors header (bad entries, sizes or offsets)."""


class HeaderLimitError(HeaderMalformedError):
    """The header is beyond what modelmem accepts (modelmem.limits): too deep, too many tensors, huge numbers."""


class DataTruncatedError(SafetensorsError):
    """The file is shorter than its header's tensors (an interrupted download)."""


@dataclass(frozen=True)
class Dtype:
    code: str  # as written in headers: "BF16"
    name: str  # modelmem's name: "bf16"
    bits: int  # per element (safetensors Dtype::bitsize)


# safetensors/src/tensor.rs `Dtype` and `bitsize()`. F4/F6 are sub-byte: a tensor's shape counts elements
# and its bytes are numel × bits / 8.
DTYPES: Mapping[str, Dtype] = {
    d.code: d
    for d in (
        Dtype("BOOL", "bool", 8),
        Dtype("F4", "fp4", 4),
        Dtype("F6_E2M3", "fp6_e2m3", 6),
        Dtype("F6_E3M2", "fp6_e3m2", 6),
        Dtype("U8", "uint8", 8),
        Dtype("I8", "int8", 8),
        Dtype("F8_E5M2", "fp8_e5m2", 8),
        Dtype("F8_E4M3", "fp8_e4m3", 8),
        Dtype("F8_E8M0", "fp8_e8m0", 8),
        Dtype("I16", "int16", 16),
        Dtype("U16", "uint16", 16),
        Dtype("F16", "fp16", 16),
        Dtype("BF16", "bf16", 16),
        Dtype("I32", "int32", 32),
        Dtype("U32", "uint32", 32),
        Dtype("F32", "fp32", 32),
        Dtype("C64", "complex64", 64),
        Dtype("F64", "fp64", 64),
        Dtype("I64", "int64", 64),
        Dtype("U64", "uint64", 64),
    )
}
FLOAT_NAMES = ("fp32", "fp16", "bf16", "fp64", "fp8_e4m3", "fp8_e5m2")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # header code, e.g. "BF16"
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # relative to the end of the header

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype_name(self) -> str:
        known = DTYPES.get(self.dtype)
        return known.name if known else self.dtype.lower()


@dataclass(frozen=True)
class SafetensorsHeader:
    source: str
    header_length: int  # N, the JSON's length in bytes
    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)  # __metadata__, kept but never interpreted

    @property
    def data_bytes(self) -> int:
        return max((t.data_offsets[1] for t in self.tensors), default=0)

    @property
    def file_bytes(self) -> int:
        """The size a complete file with this header has."""
        return LENGTH_PREFIX_BYTES + self.header_length + self.data_bytes

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def header_length(prefix: bytes, source: str) -> int:
    """N from the first 8 bytes; rejects a short prefix and a length over the cap."""
    if len(prefix) < LENGTH_PREFIX_BYTES:
        raise HeaderTooShortError(
            source, f"{len(prefix)} bytes is too short for the 8-byte header length; is it a safetensors file?"
        )
    (n,) = struct.unpack("<Q", prefix[:LENGTH_PREFIX_BYTES])
    if n > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(
            source, f"header length {n:,d} bytes exceeds the {MAX_HEADER_BYTES:,d}-byte cap; the file is corrupt"
        )
    return n


def parse_header(data: bytes, source: str, *, file_size: int | None = None) -> SafetensorsHeader:
    """Parse the 8-byte length and JSON header at the start of `data` (bytes after the header are ignored).

    `file_size`, when known, is checked against the end of the last tensor to catch truncated downloads.
    """
    n = header_length(data, source)
    end = LENGTH_PREFIX_BYTES + n
    if len(data) < end:
        raise HeaderTruncatedError(
            source, f"header length says {n:,d} bytes but only {len(data) - LENGTH_PREFIX_BYTES:,d} follow the prefix"
        )
    if n == 0:
        raise HeaderNotJSONError(source, "header is empty (length 0); expected a JSON object")
    body = bytes(data[LENGTH_PREFIX_BYTES:end])
    # Each tensor entry has one unescaped "data_offsets" key: counting them bounds the tensors before any parsing.
    limits.check_int(limits.TENSORS_PER_HEADER, body.count(b'"data_offsets"'), lambda m: HeaderLimitError(source, m))
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HeaderNotJSONError(source, f"header is not UTF-8 JSON ({e})") from e

    def fail(message: str) -> SafetensorsError:
        if message.startswith("not valid JSON"):
            return HeaderNotJSONError(source, f"header is not UTF-8 JSON ({message.removeprefix('not valid JSON').strip(' ()')})")
        return HeaderLimitError(source, f"header: {message}")

    raw = limits.loads_json(body, fail)
    if not isinstance(raw, dict):
        raise HeaderMalformedError(source, f"header is a JSON {type(raw).__name__}, expected an object")
    metadata = raw.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise HeaderMalformedError(source, f"__metadata__ is a JSON {type(metadata).__name__}, expected an object")
    limits.check_int(limits.TENSORS_PER_HEADER, len(raw) - ("__metadata__" in raw), lambda m: HeaderLimitError(source, m))
    tensors = tuple(_tensor(name, entry, source) for name, entry in raw.items() if name != "__metadata__")
    _check_layout(tensors, source)
    header = SafetensorsHeader(source=source, header_length=n, tensors=tensors, metadata=metadata)
    if file_size is not None and file_size < header.file_bytes:
        raise DataTruncatedError(
            source, f"file is {file_size:,d} bytes but its header describes {header.file_bytes:,d}; re-download it"
        )
    return header


def _tensor(name: str, entry: Any, source: str) -> TensorInfo:
    if type(entry) is not dict:
        raise HeaderMalformedError(source, f"tensor {shown(name)} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if type(dtype) is not str:
        raise HeaderMalformedError(source, f"tensor {shown(name)} has no dtype")
    if not _counts(shape) or len(shape) > limits.TENSOR_DIMS.maximum:
        raise HeaderMalformedError(
            source, f"tensor {shown(name)} has shape {shown(shape)}, expected a list of at most "
                    f"{limits.TENSOR_DIMS.maximum} integers from 0 to 2^63 - 1"
        )
    if not _counts(offsets) or len(offsets) != 2:
        raise HeaderMalformedError(source, f"tensor {shown(name)} has data_offsets {shown(offsets)}, expected [begin, end]")
    begin, end = offsets
    if end < begin:
        raise HeaderMalformedError(source, f"tensor {shown(name)} ends ({end}) before it begins ({begin})")
    info = TensorInfo(name, dtype, tuple(shape), (begin, end))
    known = DTYPES.get(dtype)
    if known is not None:
        bits = info.numel * known.bits
        if bits % 8 or bits // 8 != info.nbytes:
            raise HeaderMalformedError(
                source, f"tensor {shown(name)}: {dtype} {list(shape)} needs {bits / 8:g} bytes, offsets give {info.nbytes}"
            )
    return info


_INT_ONLY = {int}
_MAX_EXTENT = limits.TENSOR_EXTENT.maximum


def _counts(values: Any) -> bool:
    """A list of integers from 0 to 2^63 - 1 (bools excluded); C-level checks, as headers hold 100k+ of them."""
    return (type(values) is list and set(map(type, values)) <= _INT_ONLY
            and (not values or (min(values) >= 0 and max(values) <= _MAX_EXTENT)))


def _check_layout(tensors: tuple[TensorInfo, ...], source: str) -> None:
    # safetensors' own validate(): tensors tile the data buffer from 0 with no gaps or overlaps.
    position = 0
    for t in sorted(tensors, key=lambda t: t.data_offsets):
        if t.data_offsets[0] != position:
            raise HeaderMalformedError(
                source, f"tensor {t.name!r} starts at {t.data_offsets[0]}, expected {position} (gap or overlap)"
            )
        position = t.data_offsets[1]


# --- from headers to StoredWeights -------------------------------------------------------------------------------

# Tensors that hold quantization state rather than parameters: GPTQ/AutoGPTQ (qzeros, scales, g_idx), AWQ,
# FP8 (weight_scale, weight_scale_inv, input_scale: DeepSeek-V3 / compressed-tensors / fbgemm), NVFP4
# (weight_scale_2, weight_global_scale), bitsandbytes (SCB, weight_format, absmax, quant_map, quant_state.*),
# KV-cache scales. Counted in bytes, not in parameters, and only when the config declares a quantization.
_QUANT_STATE_NAMES = frozenset({
    "qzeros", "scales", "g_idx", "weight_scale", "weight_scale_inv", "input_scale", "weight_scale_2",
    "weight_global_scale", "input_global_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
    "k_scale", "v_scale", "output_scale", "SCB", "weight_format", "absmax", "quant_map", "nested_absmax",
    "nested_quant_map",
})


def quantized_weight_bits(quantization: Mapping[str, Any] | None) -> int | None:
    """Bits per weight a pre-quantized checkpoint packs its linear weights to, from its quantization_config.

    A bit width outside 1…32, or a config_groups that is not an object of objects, raises ConfigError naming it.
    """
    if not quantization:
        return None
    method = str(quantization.get("quant_method", "")).lower()
    if method == "bitsandbytes":
        return 4 if quantization.get("load_in_4bit") else 8
    if method in ("mxfp4",):
        return 4  # gpt-oss: FP4 E2M1 values in U8 *_blocks, two per byte, E8M0 *_scales per 32
    if method in ("fp8", "fbgemm_fp8"):
        return 8
    if method == "modelopt":
        algo = str(quantization.get("quant_algo", "")).upper()
        return 8 if algo.startswith("FP8") else 4
    if method == "compressed-tensors":
        groups = quantization.get("config_groups") or {}
        if not isinstance(groups, Mapping):
            raise ConfigError("quantization_config", f"config_groups must be an object, got {shown(groups)}")
        for name, group in groups.items():
            weights = group.get("weights") if isinstance(group, Mapping) else None
            if isinstance(weights, Mapping) and weights.get("num_bits") is not None:
                return _bits(weights["num_bits"], f"config_groups.{name}.weights.num_bits")
        return None
    for key in ("bits", "w_bit"):  # GPTQ: bits; AutoAWQ: w_bit (newer: bits)
        if quantization.get(key) is not None:
            return _bits(quantization[key], key)
    return None


def _bits(value: Any, key: str) -> int:
    # Packed formats store 1 to 32 bits per weight (int32 words hold 32/bits of them).
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
        raise ConfigError("quantization_config", f"{key} must be an integer from 1 to 32, got {shown(value)}")
    return value


def logical_params(tensor: TensorInfo, quantization: Mapping[str, Any] | None) -> int:
    """Parameters a stored tensor holds once unpacked; 0 for quantization state (scales, zeros, indices)."""
    if not quantization:
        return tensor.numel
    last = tensor.name.rsplit(".", 1)[-1]
    if last in _QUANT_STATE_NAMES or ".quant_state." in tensor.name or last.startswith("quant_state"):
        return 0
    if last.endswith("_scales") and tensor.dtype == "U8":  # MXFP4 E8M0 block scales (gpt-oss *_scales)
        return 0
    bits = quantized_weight_bits(quantization)
    dtype = DTYPES.get(tensor.dtype)
    if bits is None or dtype is None or tensor.dtype.startswith("F"):
        return tensor.numel  # floats (incl. F8/F4) are stored one element per parameter
    packed = last in ("qweight", "weight_packed", "weight") or last.endswith("_blocks")
    if packed and dtype.bits > bits and dtype.bits % bits == 0:
        # GPTQ/AWQ qweight: int32 holding 32/bits weights; bitsandbytes 4-bit / NVFP4 / MXFP4: two per uint8.
        return tensor.numel * (dtype.bits // bits)
    return tensor.numel


def stored_weights(
    headers: Iterable[SafetensorsHeader], quantization: Mapping[str, Any] | None = None, source: str = ""
) -> StoredWeights:
    """Exact stored bytes (by modelmem dtype name) and logical parameter count over all shards' headers."""
    total = 0
    params = 0
    by_dtype: dict[str, int] = {}
    for header in headers:
        for t in header.tensors:
            total += t.nbytes
            params += logical_params(t, quantization)
            by_dtype[t.dtype_name] = by_dtype.get(t.dtype_name, 0) + t.nbytes
    return StoredWeights(
        total_bytes=total,
        num_params=params,
        bytes_by_dtype=dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
        source=source,
    )


# Decoder blocks as transformers names them: model.layers.N (Llama & co), transformer.h.N (GPT-2, BLOOM, Falcon),
# gpt_neox.layers.N, model.decoder.layers.N (OPT), language_model.model.layers.N (VLMs). Vision and audio towers
# number their own layers and are left out.
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_NOT_DECODER = re.compile(r"vision|visual|image|audio|mm_|multi_modal|encoder\.")


def per_layer_bytes(headers: Iterable[SafetensorsHeader], num_layers: int) -> tuple[int, ...]:
    """Stored bytes of each of the first `num_layers` decoder blocks; () when the names do not show them all.

    Blocks past num_layers (DeepSeek-V3's multi-token-prediction layer 61) stay outside, like embeddings.
    """
    sizes = [0] * num_layers
    seen: set[int] = set()
    for header in headers:
        for t in header.tensors:
            match = _BLOCK.search(t.name)
            if match is None or _NOT_DECODER.search(t.name):
                continue
            index = int(match.group(1))
            if index < num_layers:
                sizes[index] += t.nbytes
                seen.add(index)
    return tuple(sizes) if num_layers and len(seen) == num_layers else ()


def dominant_float_dtype(stored: StoredWeights) -> str | None:
    """The 16/32-bit float dtype holding the most bytes (a checkpoint's dtype when the config does not say)."""
    floats = {k: v for k, v in stored.bytes_by_dtype.items() if k in ("fp32", "fp16", "bf16")}
    return max(floats, key=lambda k: floats[k]) if floats else None
