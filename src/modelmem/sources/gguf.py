"""GGUF files (llama.cpp): architecture metadata → ModelSpec, exact tensor bytes by quant type.

`parse_gguf_header` is one pure parser for the GGUF header (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
magic, version, key/value metadata and the tensor table (name, dims, ggml type, offset), with named errors for
short, foreign, truncated, oversized and malformed input. It runs over an mmap of the file, so only the header's
pages are read; tensor data never is. (gguf-py's GGUFReader builds a numpy view per token string and takes ~15 s
on a 152k-token vocabulary; this parser skips token arrays and takes a fraction of a second.) The `gguf` package
is only consulted for ggml types newer than the table below, and tests write their fixtures with its GGUFWriter.
`spec_from_metadata` turns metadata and tensor table into a spec.

llama.cpp's placement of these tensors on GPU and CPU lives in modelmem.runtimes.llamacpp.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import mmap
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmem.errors import SourceError
from modelmem.spec import ModelSpec, StoredWeights

# llama.cpp architecture name → Hugging Face model_type, where they differ (convert_hf_to_gguf.py registrations).
ARCH_MODEL_TYPES: Mapping[str, str] = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gemma3": "gemma3_text",
    "deepseek2": "deepseek_v3",
    "gpt-oss": "gpt_oss",
    "command-r": "cohere",
    "cohere2": "cohere2",
    "starcoder": "gpt_bigcode",
    "gptneox": "gpt_neox",
    "phimoe": "phimoe",
    "olmoe": "olmoe",
}
_FILE_TYPE_DTYPES = {"ALL_F32": "fp32", "F16": "fp16", "BF16": "bf16"}  # others: quantized, computed in f16
_UNQUANTIZED = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
MAX_ARRAY_ITEMS = 4096  # metadata arrays kept whole (per-layer values); token lists are only counted


class GGUFError(SourceError):
    """A GGUF file could not be read; `source` names it."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"gguf {source}: {message}")


class GGUFTooShortError(GGUFError):
    """Fewer bytes than the fixed 24-byte preamble (magic, version, tensor and key/value counts)."""


class GGUFBadMagicError(GGUFError):
    """Not a GGUF file (magic), or a GGUF version this parser does not read (1)."""


class GGUFTruncatedError(GGUFError):
    """The data ends inside the header, or before the tensors the header describes."""


class GGUFTooLargeError(GGUFError):
    """The header runs past MAX_GGUF_HEADER_BYTES (a corrupt or hostile file)."""


class GGUFMalformedError(GGUFError):
    """The header is complete but not valid GGUF (bad value type, dims, ggml type, alignment, names)."""


GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # v1 used 32-bit lengths and counts; llama.cpp dropped it in 2023
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
MAX_GGUF_HEADER_BYTES = 1 << 30  # metadata + tensor table; real ones are tens of MB at most (vocab, merges)
MAX_DIMS = 8  # GGML_MAX_DIMS is 4; leave room, reject nonsense
_PREAMBLE = 24

# ggml type id → (name, weights per block, bytes per block): ggml/src/ggml.c type_traits, as gguf-py's
# GGML_QUANT_SIZES (Q8_1 is ggml's 36-byte block_q8_1; it is a matmul scratch type, never stored).
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
# general.file_type → llama.cpp's name (include/llama.h llama_ftype, LLAMA_FTYPE_MOSTLY_ prefix dropped).
LLAMA_FILE_TYPES: Mapping[int, str] = {
    0: "ALL_F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}
# GGUF value types: id → struct format (8 string, 9 array handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: str  # "Q4_K", "F32", "MXFP4"…
    n_elements: int
    n_bytes: int  # exact: n_elements × type size / block size (ggml GGML_QUANT_SIZES)
    offset: int = 0  # from the start of the tensor data


def _first(value: Any) -> Any:
    """Per-layer arrays (OpenELM, Gemma 3n): the spec takes the largest, which bounds memory."""
    if isinstance(value, (list, tuple)):
        return max(value) if value else None
    return value


def config_from_metadata(meta: Mapping[str, Any], tensors: Sequence[GGUFTensor], source: str) -> dict[str, Any]:
    """An HF-style config.json dict from GGUF metadata (`{arch}.block_count` → num_hidden_layers …)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(source, "no general.architecture; not a model GGUF (an mmproj or LoRA adapter?)")

    def key(name: str) -> Any:
        return _first(meta.get(f"{arch}.{name}"))

    hidden, layers, heads = key("embedding_length"), key("block_count"), key("attention.head_count")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads)):
        raise GGUFError(
            source, f"{arch}.embedding_length / .block_count / .attention.head_count missing; cannot size the model"
        )
    by_name = {t.name: t for t in tensors}
    embd = by_name.get("token_embd.weight")
    vocab = key("vocab_size") or meta.get("tokenizer.ggml.tokens.count")
    if embd is not None and hidden:
        vocab = embd.n_elements // hidden  # rows of the embedding table, padding included
    experts = key("expert_count")
    model_type = ARCH_MODEL_TYPES.get(arch, arch)
    if arch == "llama" and experts:
        model_type = "mixtral"  # convert_hf_to_gguf writes Mixtral as llama + expert_count
    expert_ff = key("expert_feed_forward_length")
    dense_ff = key("feed_forward_length")
    if model_type in ("mixtral", "gpt_oss") and expert_ff:
        dense_ff = expert_ff  # their configs' intermediate_size is the expert width
    config: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv") or heads,
        "intermediate_size": dense_ff or expert_ff,
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in by_name,
    }
    optional = {
        "head_dim": key("attention.key_length"),
        "max_position_embeddings": key("context_length"),
        "sliding_window": key("attention.sliding_window"),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "layer_norm_eps": key("attention.layer_norm_epsilon"),
    }
    if experts:
        optional |= {
            "num_local_experts": experts,
            "num_experts": experts,
            "n_routed_experts": experts,
            "num_experts_per_tok": key("expert_used_count"),
            "moe_intermediate_size": expert_ff or key("feed_forward_length"),
            "n_shared_experts": key("expert_shared_count"),
            "first_k_dense_replace": key("leading_dense_block_count"),
        }
    kv_lora = key("attention.kv_lora_rank")
    if kv_lora:  # DeepSeek-V2/V3 MLA (llama.cpp deepseek2)
        rope = key("rope.dimension_count") or 0
        k_len = key("attention.key_length_mla") or key("attention.key_length") or 0
        optional |= {
            "kv_lora_rank": kv_lora,
            "q_lora_rank": key("attention.q_lora_rank"),
            "qk_rope_head_dim": rope,
            "qk_nope_head_dim": k_len - rope,
            "v_head_dim": key("attention.value_length_mla") or key("attention.value_length"),
            # llama.cpp stores MLA as one shared latent "KV head"; HF configs count every attention head.
            "num_key_value_heads": heads,
        }
    config |= {k: v for k, v in optional.items() if v is not None}
    return config


def file_type_name(meta: Mapping[str, Any]) -> str | None:
    """general.file_type as llama.cpp names it ("Q4_K_M")."""
    value = meta.get("general.file_type")
    if not isinstance(value, int):
        return None
    return LLAMA_FILE_TYPES.get(value, str(value))


def spec_from_metadata(
    meta: Mapping[str, Any], tensors: Sequence[GGUFTensor], *, name: str, source: str
) -> ModelSpec:
    """Pure: GGUF metadata + tensor table → ModelSpec with exact stored bytes by ggml type and per block."""
    from modelmem.sources.config import spec_from_config

    from modelmem.runtimes.llamacpp import LAYOUT_KEY, layout_from_tensors

    config = config_from_metadata(meta, tensors, source)
    layout = layout_from_tensors(tensors, config["num_hidden_layers"])
    by_type: dict[str, int] = {}
    for t in tensors:
        by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.n_bytes
    stored = StoredWeights(
        total_bytes=layout.total_bytes,
        num_params=sum(t.n_elements for t in tensors),  # GGUF shapes count logical elements
        bytes_by_dtype=dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        per_layer_bytes=layout.layer_bytes,
        source=f"{source} GGUF tensor table ({len(tensors)} tensors)",
    )
    file_type = file_type_name(meta)
    quantized = any(t.ggml_type not in _UNQUANTIZED for t in tensors)
    if file_type is None:  # no general.file_type: name it after the type holding the most bytes
        file_type = next(iter(stored.bytes_by_dtype), "F16") if quantized else None
    dtype = _FILE_TYPE_DTYPES.get(file_type or "", "fp16")
    spec = spec_from_config(config, name=name, source=source)
    quantization = {"quant_method": "gguf", "file_type": file_type} if quantized else None
    # The layout rides in the config as plain JSON (ModelSpec has no field for llama.cpp's placement groups).
    return dataclasses.replace(
        spec, dtype=dtype, stored=stored, quantization=quantization,
        config={**config, LAYOUT_KEY: dataclasses.asdict(layout) | {"layer_bytes": list(layout.layer_bytes)}},
    )


@dataclass(frozen=True)
class GGUFHeader:
    source: str
    version: int
    metadata: Mapping[str, Any]  # scalars and short arrays; every array also as "<key>.count"
    tensors: tuple[GGUFTensor, ...]
    data_offset: int  # where tensor data starts: the header's end rounded up to general.alignment

    @property
    def data_bytes(self) -> int:
        return max((t.offset + t.n_bytes for t in self.tensors), default=0)

    @property
    def file_bytes(self) -> int:
        """The size a complete file with this header has (at least)."""
        return self.data_offset + self.data_bytes


class _Cursor:
    def __init__(self, buf: Any, source: str, limit: int) -> None:
        self.buf, self.source, self.limit = buf, source, limit
        self.size = len(buf)
        self.pos = 0
        self.order = "<"

    def need(self, n: int, what: str) -> int:
        start = self.pos
        end = start + n
        if end > self.limit:
            raise GGUFTooLargeError(self.source, f"header passes {self.limit:,d} bytes at {what}; the file is corrupt")
        if end > self.size:
            raise GGUFTruncatedError(
                self.source, f"ends at byte {self.size:,d} inside the header ({what}); the file is cut short"
            )
        self.pos = end
        return start

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack_from(self.order + fmt, self.buf, self.need(size, what))[0]

    def string(self, what: str, *, keep: bool = True) -> str:
        n = self.unpack("Q", what)
        start = self.need(n, what)
        if not keep:
            return ""
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY or depth > 2:
            raise GGUFMalformedError(self.source, f"{what}: unknown value type {vtype}")
        item = self.unpack("I", what)
        count = self.unpack("Q", what)
        if item in _SCALARS:
            size = struct.calcsize(_SCALARS[item])
            if count > MAX_ARRAY_ITEMS:
                self.need(count * size, what)
                return count
            start = self.need(count * size, what)
            return list(struct.unpack_from(f"{self.order}{count}{_SCALARS[item]}", self.buf, start))
        if item == _STRING:
            if count * 8 > self.size - self.pos:
                self.need(count * 8, what)  # raises: each string needs at least its 8-byte length
            keep = count <= MAX_ARRAY_ITEMS
            items = [self.string(what, keep=keep) for _ in range(count)]
            return items if keep else count
        if item == _ARRAY:
            return [self.value(_ARRAY, what, depth + 1) for _ in range(count)]
        raise GGUFMalformedError(self.source, f"{what}: unknown array item type {item}")


def parse_gguf_header(
    data: Any, source: str, *, file_size: int | None = None, max_header_bytes: int = MAX_GGUF_HEADER_BYTES
) -> GGUFHeader:
    """Parse a GGUF header from `data` (bytes, memoryview or mmap starting at the file's first byte).

    Arrays longer than MAX_ARRAY_ITEMS (token lists, scores, merges) are skipped and recorded only as
    "<key>.count". `file_size`, when known, is checked against the end of the last tensor.
    """
    if len(data) < _PREAMBLE:
        raise GGUFTooShortError(source, f"{len(data)} bytes is shorter than the 24-byte GGUF preamble")
    if bytes(data[:4]) != GGUF_MAGIC:
        raise GGUFBadMagicError(source, f"starts with {bytes(data[:4])!r}, not b'GGUF'; not a GGUF file")
    c = _Cursor(data, source, max_header_bytes)
    c.need(4, "magic")
    version = c.unpack("I", "version")
    if version not in GGUF_VERSIONS:
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        if swapped not in GGUF_VERSIONS:
            raise GGUFBadMagicError(source, f"GGUF version {version} is not supported (2 and 3 are); re-convert it")
        c.order, version = ">", swapped  # a big-endian GGUF (s390x builds)
    n_tensors = c.unpack("Q", "tensor count")
    n_kv = c.unpack("Q", "key/value count")
    if n_kv * 13 > c.size - c.pos or n_tensors * 32 > c.size - c.pos:
        c.need(max(n_kv * 13, n_tensors * 32), "the counts")  # each entry has a minimum size: fail fast

    meta: dict[str, Any] = {}
    for i in range(n_kv):
        key = c.string(f"key {i}")
        vtype = c.unpack("I", f"type of {key}")
        value = c.value(vtype, key)
        if vtype == _ARRAY:
            meta[f"{key}.count"] = value if isinstance(value, int) else len(value)
            if isinstance(value, int):
                continue
        meta[key] = value

    tensors = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = c.string(f"tensor {i} name")
        n_dims = c.unpack("I", f"{name} dims")
        if not 0 < n_dims <= MAX_DIMS:
            raise GGUFMalformedError(source, f"tensor {name!r} has {n_dims} dimensions")
        dims = [c.unpack("Q", f"{name} dims") for _ in range(n_dims)]
        type_id = c.unpack("I", f"{name} type")
        offset = c.unpack("Q", f"{name} offset")
        type_name, block, block_bytes = _ggml_type(type_id, name, source)
        n = math.prod(dims)
        if dims[0] % block:
            raise GGUFMalformedError(source, f"tensor {name!r}: rows of {dims[0]} are not whole {type_name} blocks")
        if name in names:
            raise GGUFMalformedError(source, f"tensor {name!r} appears twice")
        names.add(name)
        tensors.append(GGUFTensor(name, type_name, n, n // block * block_bytes, offset))

    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFMalformedError(source, f"general.alignment {alignment!r} is not a power of two")
    data_offset = -(-c.pos // alignment) * alignment
    header = GGUFHeader(source, version, meta, tuple(tensors), data_offset)
    if file_size is not None and file_size < header.file_bytes:
        raise GGUFTruncatedError(
            source, f"file is {file_size:,d} bytes but its tensors end at {header.file_bytes:,d}; re-download it"
        )
    return header


def _ggml_type(type_id: int, tensor: str, source: str) -> tuple[str, int, int]:
    known = GGML_TYPES.get(type_id)
    if known is not None:
        return known
    try:  # a type newer than this table: the installed gguf package may know it
        import gguf

        qtype = gguf.GGMLQuantizationType(type_id)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return qtype.name, block, size
    except (ImportError, ValueError, KeyError):
        raise GGUFMalformedError(
            source, f"tensor {tensor!r} has ggml type {type_id}, unknown here; upgrade modelmem or "
                    "`pip install -U 'modelmem[gguf]'`"
        ) from None


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """One GGUF file's header, through an mmap: only the header's pages are read; parsed once per file version
    (cached by path, size and modification time, so trying many offload settings re-reads nothing)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise GGUFError(str(path), f"cannot read ({e.strerror or e})") from e
    return _cached_header(str(path.resolve()), str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_header(resolved: str, shown: str, size: int, mtime_ns: int) -> GGUFHeader:
    return _read_header(Path(resolved), shown)


def _read_header(path: Path, shown: str) -> GGUFHeader:
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size < _PREAMBLE:
                return parse_gguf_header(f.read(size), shown, file_size=size)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return parse_gguf_header(m, shown, file_size=size)
    except OSError as e:
        raise GGUFError(shown, f"cannot read ({e.strerror or e})") from e


def read_gguf(path: str | Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """Metadata and tensor table of a GGUF file and, for split files (-00001-of-0000N), of all its parts."""
    path = Path(path)
    first = read_gguf_header(path)
    meta = dict(first.metadata)
    tensors = list(first.tensors)
    count = meta.get("split.count")
    if isinstance(count, int) and count > 1:
        match = _SPLIT_NAME.match(path.name)
        if not match:
            raise GGUFError(str(path), f"split.count is {count} but the name is not <stem>-00001-of-{count:05d}.gguf")
        for i in range(1, count + 1):
            part = path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf")
            if part == path:
                continue
            if not part.is_file():
                raise GGUFError(str(path), f"split part {part.name} is missing; download all {count} parts")
            tensors += read_gguf_header(part).tensors
    return meta, tensors


def spec_from_gguf(path: str | Path) -> ModelSpec:
    """The spec of a GGUF model file, read from its header (no extra needed)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(str(path), "no such file")
    meta, tensors = read_gguf(path)
    name = meta.get("general.name") if isinstance(meta.get("general.name"), str) else path.stem
    return spec_from_metadata(meta, tensors, name=name, source=str(path))
