"""GGUF files (llama.cpp): architecture metadata → ModelSpec, exact tensor bytes by quant type, GPU-layer split.

The `gguf` package (the `gguf` extra) reads the header: key/value metadata and the tensor table (name, ggml type,
shape, offset). Tensor data is memory-mapped and never read. `spec_from_metadata` is the pure half: metadata and
tensor table in, spec out; tests feed it files written with `gguf.GGUFWriter`.

llama.cpp places tensors in three groups (src/llama-model.cpp `load_tensors`): the input layer (token_embd and
other LLM_TENSOR_LAYER_INPUT tensors) always on the CPU ("very little benefit to offloading the input layer");
the n_layer repeating blocks (`blk.N.*`); and the output layer (output_norm, output), which is slot n_layer.
`--n-gpu-layers N` offloads the last N of those n_layer + 1 slots: i_gpu_start = max(n_layer + 1 - N, 0).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmem.errors import MissingExtraError, SourceError
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
# LLM_TENSOR_LAYER_INPUT and LLM_TENSOR_LAYER_OUTPUT tensors (src/llama-arch.cpp LLM_TENSOR_INFOS).
INPUT_TENSORS = ("token_embd", "position_embd", "token_types", "per_layer_token_embd")
OUTPUT_TENSORS = ("output", "output_norm", "cls", "cls_out", "output_scale")
_FILE_TYPE_DTYPES = {"ALL_F32": "fp32", "F16": "fp16", "BF16": "bf16"}  # others: quantized, computed in f16
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
MAX_ARRAY_ITEMS = 4096  # metadata arrays kept whole (per-layer values); token lists are only counted


class GGUFError(SourceError):
    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"gguf {source}: {message}")


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: str  # "Q4_K", "F32", "MXFP4"…
    n_elements: int
    n_bytes: int  # exact: n_elements × type size / block size (ggml GGML_QUANT_SIZES)


@dataclass(frozen=True)
class GGUFSplit:
    gpu_bytes: int
    cpu_bytes: int
    gpu_layers: int  # repeating blocks on the GPU
    output_on_gpu: bool

    @property
    def total_bytes(self) -> int:
        return self.gpu_bytes + self.cpu_bytes


@dataclass(frozen=True)
class GGUFLayout:
    """Weight bytes in llama.cpp's placement groups."""

    input_bytes: int  # token_embd & co: always on the CPU
    layer_bytes: tuple[int, ...]  # blk.N.*
    output_bytes: int  # output_norm, output (the LM head)
    other_bytes: int = 0  # e.g. rope_freqs, token_embd_norm: placed with the first block
    tied_output_bytes: int = 0  # no output.weight: llama.cpp duplicates token_embd as the head (TENSOR_DUPLICATED)

    @property
    def total_bytes(self) -> int:
        """Bytes in the file; the tied head's GPU copy is not in the file."""
        return self.input_bytes + sum(self.layer_bytes) + self.output_bytes + self.other_bytes

    def split(self, gpu_layers: int | None) -> GGUFSplit:
        """Weight bytes on GPU and CPU for llama.cpp `--n-gpu-layers gpu_layers` (None: everything offloaded)."""
        on_gpu, output_on_gpu = offloaded(len(self.layer_bytes), gpu_layers)
        gpu = sum(b for b, g in zip(self.layer_bytes, on_gpu) if g)
        if on_gpu and on_gpu[0]:
            gpu += self.other_bytes
        if output_on_gpu:
            # A tied head is a GPU copy of token_embd; the CPU keeps the original for the input layer.
            gpu += self.output_bytes + self.tied_output_bytes
        return GGUFSplit(
            gpu_bytes=gpu, cpu_bytes=self.total_bytes - gpu + (self.tied_output_bytes if output_on_gpu else 0),
            gpu_layers=sum(on_gpu), output_on_gpu=output_on_gpu,
        )


def offloaded(num_layers: int, gpu_layers: int | None) -> tuple[tuple[bool, ...], bool]:
    """Which blocks, and whether the output layer, llama.cpp puts on the GPU for `--n-gpu-layers gpu_layers`.

    src/llama-model.cpp: i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0), act_gpu_layers = min(n_gpu_layers,
    n_layer + 1); slot il (n_layer is the output layer) is on the GPU iff i_gpu_start <= il < i_gpu_start + act.
    A negative value (llama.cpp's -1 default) or None offloads everything. KV cache for a block lives with it.
    """
    slots = num_layers + 1
    n = slots if gpu_layers is None or gpu_layers < 0 else gpu_layers
    start = max(slots - n, 0)
    active = min(n, slots)
    gpu = tuple(start <= il < start + active for il in range(slots))
    return gpu[:num_layers], gpu[num_layers]


def gguf_split(source: ModelSpec | GGUFLayout, gpu_layers: int | None) -> GGUFSplit:
    """GPU and CPU weight bytes of a GGUF model under `--n-gpu-layers`; `source` is a spec from spec_from_gguf."""
    layout = source if isinstance(source, GGUFLayout) else gguf_layout(source)
    if layout is None:
        raise GGUFError(getattr(source, "name", "?"), "the spec was not read from a GGUF file; no layer split known")
    return layout.split(gpu_layers)


def gguf_layout(spec: ModelSpec) -> GGUFLayout | None:
    """The placement groups `spec_from_gguf` recorded in `spec.config["gguf_layout"]`."""
    layout = spec.config.get("gguf_layout")
    return layout if isinstance(layout, GGUFLayout) else None


def layout_from_tensors(tensors: Sequence[GGUFTensor], num_layers: int) -> GGUFLayout:
    layers = [0] * num_layers
    input_bytes = output_bytes = other = 0
    names = set()
    for t in tensors:
        stem = t.name.split(".", 1)[0]
        names.add(stem)
        parts = t.name.split(".")
        if stem == "blk" and len(parts) > 2 and parts[1].isdigit():
            index = int(parts[1])
            if index >= num_layers:  # MTP / NextN blocks beyond block_count (GLM-4.5, DeepSeek-V3 GGUFs)
                layers.extend([0] * (index + 1 - num_layers))
                num_layers = index + 1
            layers[index] += t.n_bytes
        elif stem in INPUT_TENSORS:
            input_bytes += t.n_bytes
        elif stem in OUTPUT_TENSORS:
            output_bytes += t.n_bytes
        else:
            other += t.n_bytes
    tied = 0
    if "output" not in names:
        tied = sum(t.n_bytes for t in tensors if t.name == "token_embd.weight")
    return GGUFLayout(input_bytes, tuple(layers), output_bytes, other, tied)


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
    """general.file_type as llama.cpp names it ("Q4_K_M"), when the gguf package knows the number."""
    value = meta.get("general.file_type")
    if not isinstance(value, int):
        return None
    try:
        from gguf import LlamaFileType
    except ImportError:  # pragma: no cover - spec_from_gguf imports gguf first
        return str(value)
    try:
        return LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(value)


def spec_from_metadata(
    meta: Mapping[str, Any], tensors: Sequence[GGUFTensor], *, name: str, source: str
) -> ModelSpec:
    """Pure: GGUF metadata + tensor table → ModelSpec with exact stored bytes by ggml type and per block."""
    from modelmem.sources.config import spec_from_config

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
    dtype = _FILE_TYPE_DTYPES.get(file_type or "", "fp16")
    spec = spec_from_config(config, name=name, source=source)
    quantization = None if file_type in ("F16", "BF16", "ALL_F32") else {"quant_method": "gguf", "file_type": file_type}
    return dataclasses.replace(
        spec, dtype=dtype, stored=stored, quantization=quantization, config={**config, "gguf_layout": layout}
    )


def read_gguf(path: str | Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """Metadata and tensor table of a GGUF file and, for split files (-00001-of-0000N), of all its parts."""
    gguf = _import_gguf()
    path = Path(path)
    meta, tensors = _read_one(gguf, path)
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
            tensors += _read_one(gguf, part)[1]
    return meta, tensors


def spec_from_gguf(path: str | Path) -> ModelSpec:
    """The spec of a GGUF model file, read from its header with the `gguf` package (extra `gguf`)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(str(path), "no such file")
    meta, tensors = read_gguf(path)
    name = meta.get("general.name") if isinstance(meta.get("general.name"), str) else path.stem
    return spec_from_metadata(meta, tensors, name=name, source=str(path))


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:
        raise MissingExtraError("GGUF files", "gguf") from e
    return gguf


def _read_one(gguf: Any, path: Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    try:
        reader = gguf.GGUFReader(str(path), "r")
        meta: dict[str, Any] = {}
        for key, f in reader.fields.items():
            if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
                meta[f"{key}.count"] = len(f.data)
                if len(f.data) <= MAX_ARRAY_ITEMS and f.types[-1] != gguf.GGUFValueType.STRING:
                    meta[key] = f.contents()
            else:
                meta[key] = f.contents()
        tensors = [
            GGUFTensor(t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors
        ]
    except (ValueError, IndexError, KeyError, OSError, TypeError, UnicodeDecodeError) as e:
        raise GGUFError(str(path), f"not a readable GGUF file ({e})") from e
    return meta, tensors
