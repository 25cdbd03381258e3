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
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmem import limits
from modelmem.dtypes import GGML_TYPES, LLAMA_FILE_TYPES
from modelmem.errors import SourceError, shown
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
MAX_GGUF_HEADER_BYTES = limits.GGUF_HEADER_BYTES.maximum  # metadata + tensor table (vocab, merges: tens of MB)
MAX_DIMS = 8  # GGML_MAX_DIMS is 4; leave room, reject nonsense
_PREAMBLE = 24

# GGUF value types: id → struct format (8 string, 9 array handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_STRUCTS: dict[str, struct.Struct] = {}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: str  # "Q4_K", "F32", "MXFP4"…
    n_elements: int
    n_bytes: int  # exact: n_elements × type size / block size (ggml GGML_QUANT_SIZES)
    offset: int = 0  # from the start of the tensor data


def _number(meta: Mapping[str, Any], name: str, source: str, *, real: bool = False) -> Any:
    """A numeric metadata value, or None. Per-layer arrays (OpenELM, Gemma 3n) give their largest entry, which bounds
    memory; a string, a bool or a mixed array where a number belongs is a malformed file."""
    value = meta.get(name)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    kinds = (int, float) if real else (int,)
    if not all(isinstance(v, kinds) and not isinstance(v, bool) for v in items):
        raise GGUFMalformedError(source, f"{name} is {shown(value)}, expected {'a number' if real else 'an integer'} "
                                         "or an array of them")
    return max(items) if items else None


def config_from_metadata(meta: Mapping[str, Any], tensors: Sequence[GGUFTensor], source: str) -> dict[str, Any]:
    """An HF-style config.json dict from GGUF metadata (`{arch}.block_count` → num_hidden_layers …)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(source, "no general.architecture; not a model GGUF (an mmproj or LoRA adapter?)")

    def key(name: str, real: bool = False) -> Any:
        return _number(meta, f"{arch}.{name}", source, real=real)

    hidden, layers, heads = key("embedding_length"), key("block_count"), key("attention.head_count")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads)):
        raise GGUFError(
            source, f"{arch}.embedding_length / .block_count / .attention.head_count missing; cannot size the model"
        )
    limits.check_int(limits.LAYERS, layers, lambda m: GGUFMalformedError(source, f"{arch}.block_count: {m}"))
    by_name = {t.name: t for t in tensors}
    embd = by_name.get("token_embd.weight")
    vocab = key("vocab_size") or _number(meta, "tokenizer.ggml.tokens.count", source)
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
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", real=True),
        "layer_norm_eps": key("attention.layer_norm_epsilon", real=True),
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
    if not isinstance(value, int) or isinstance(value, bool):
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
        self.items_left = limits.GGUF_STRINGS.maximum  # strings and nested arrays walked one by one

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
        return self.unpack_all(fmt, what)[0]

    def unpack_all(self, fmt: str, what: str) -> tuple[Any, ...]:
        packer = _STRUCTS.get(self.order + fmt) or _STRUCTS.setdefault(self.order + fmt, struct.Struct(self.order + fmt))
        return packer.unpack_from(self.buf, self.need(packer.size, what))

    def spend(self, count: int, what: str) -> None:
        self.items_left -= count
        if self.items_left < 0:
            raise GGUFTooLargeError(self.source, f"{what}: {limits.GGUF_STRINGS.problem(limits.GGUF_STRINGS.maximum + 1)}")

    def string(self, what: str, *, keep: bool = True) -> str:
        n = self.unpack("Q", what)
        start = self.need(n, what)
        if not keep:
            return ""
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Step over `count` strings (a token list) reading only their lengths: a tight loop, no objects built."""
        self.spend(count, what)
        buf, pos, end = self.buf, self.pos, min(self.size, self.limit)
        length = struct.Struct(self.order + "Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, what)  # raises: truncated, or past the header cap
            pos += 8 + length(buf, pos)[0]
        if pos > end:
            self.pos = end
            self.need(pos - end, what)  # raises likewise
        self.pos = pos

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
            if count > MAX_ARRAY_ITEMS:
                self.skip_strings(count, what)
                return count
            self.spend(count, what)
            return [self.string(what) for _ in range(count)]
        if item == _ARRAY:
            if count * 12 > self.size - self.pos:
                self.need(count * 12, what)  # raises: each array needs its 4-byte type and 8-byte count
            self.spend(count, what)
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
    limits.check_int(limits.GGUF_TENSORS, n_tensors, lambda m: GGUFTooLargeError(source, m))
    limits.check_int(limits.GGUF_KV, n_kv, lambda m: GGUFTooLargeError(source, m))
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
    for _ in range(n_tensors):
        name = c.string("a tensor name")
        n_dims = c.unpack("I", "a tensor's dimension count")
        if not 0 < n_dims <= MAX_DIMS:
            raise GGUFMalformedError(source, f"tensor {shown(name)} has {n_dims} dimensions")
        dims = c.unpack_all("Q" * n_dims, "a tensor's dimensions")
        if max(dims) > limits.TENSOR_EXTENT.maximum:
            raise GGUFMalformedError(source, f"tensor {shown(name)}: {limits.TENSOR_EXTENT.problem(max(dims))}")
        type_id, offset = c.unpack_all("IQ", "a tensor's type and offset")
        type_name, block, block_bytes = _ggml_type(type_id, name, source)
        n = math.prod(dims)
        if dims[0] % block:
            raise GGUFMalformedError(source, f"tensor {shown(name)}: rows of {dims[0]} are not whole {type_name} blocks")
        if name in names:
            raise GGUFMalformedError(source, f"tensor {shown(name)} appears twice")
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
    limits.regular_file_size(path, lambda m: GGUFError(str(path), m))
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
            size = os.fstat(f.fileno()).st_size
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
        limits.check_int(limits.GGUF_SPLITS, count, lambda m: GGUFMalformedError(str(path), f"split.count: {m}"))
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
            limits.check_int(limits.GGUF_TENSORS, len(tensors), lambda m: GGUFTooLargeError(str(path), m))
    return meta, tensors


def spec_from_gguf(path: str | Path) -> ModelSpec:
    """The spec of a GGUF model file, read from its header (no extra needed)."""
    path = Path(path)
    limits.regular_file_size(path, lambda m: GGUFError(str(path), m if path.exists() else "no such file"))
    meta, tensors = read_gguf(path)
    name = meta.get("general.name") if isinstance(meta.get("general.name"), str) else path.stem
    return spec_from_metadata(meta, tensors, name=name, source=str(path))
