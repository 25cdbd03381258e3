"""Local folders: config.json + safetensors headers, sized exactly, tensor data never read."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest

from modelmem.sources.local import (
    MissingConfigError,
    MissingShardError,
    PickleRefusedError,
    SourceNote,
    spec_from_folder,
)
from modelmem.sources.safetensors import DataTruncatedError, HeaderTooLargeError

LLAMA = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "torch_dtype": "bfloat16",
}
BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1, "I8": 1, "F8_E4M3": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, data: bool = True) -> int:
    """Write a safetensors file (header + zeroed or sparse data); returns its data bytes."""
    entries, pos = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = BYTES[dtype]
        for d in shape:
            n *= d
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    body = json.dumps(entries).encode()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
        if data:
            f.truncate(8 + len(body) + pos)  # sparse zeros: the reader must never need them
    return pos


def folder(tmp_path: Path, config: dict | None = LLAMA) -> Path:
    d = tmp_path / "tiny-llama"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


def test_single_file_sized_from_its_header(tmp_path):
    d = folder(tmp_path)
    write_safetensors(d / "model.safetensors", {
        "model.embed_tokens.weight": ("BF16", [256, 64]),  # 16384 params, 32768 B
        "model.norm.weight": ("F32", [64]),  # 64 params, 256 B
    })
    spec = spec_from_folder(d)
    assert spec.hidden_size == 64 and spec.num_layers == 2
    assert spec.stored.total_bytes == 32768 + 256
    assert spec.stored.num_params == 16384 + 64
    assert dict(spec.stored.bytes_by_dtype) == {"bf16": 32768, "fp32": 256}
    assert spec.dtype == "bf16"
    assert spec.source == str(d)


def test_huge_sparse_shard_reads_only_the_header(tmp_path):
    d = folder(tmp_path)
    # 2**20 x 4096 F32 = 16 GiB of (sparse) tensor data: reading it would take minutes, the header takes microseconds.
    write_safetensors(d / "model.safetensors", {"w": ("F32", [2**20, 4096])})
    assert spec_from_folder(d).stored.total_bytes == 2**20 * 4096 * 4


def test_index_picks_the_shards_and_ignores_other_safetensors(tmp_path):
    d = folder(tmp_path)
    write_safetensors(d / "model-00001-of-00002.safetensors", {"a": ("BF16", [8, 8])})  # 128 B
    write_safetensors(d / "model-00002-of-00002.safetensors", {"b": ("BF16", [4, 8])})  # 64 B
    write_safetensors(d / "consolidated.safetensors", {"a": ("BF16", [8, 8]), "b": ("BF16", [4, 8])})
    index = {"metadata": {"total_size": 192}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    stored = spec_from_folder(d).stored
    assert stored.total_bytes == 192
    assert stored.num_params == 96
    assert "2 files" in stored.source


def test_missing_shard_is_named(tmp_path):
    d = folder(tmp_path)
    write_safetensors(d / "model-00001-of-00002.safetensors", {"a": ("BF16", [8, 8])})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(MissingShardError, match="model-00002-of-00002.safetensors"):
        spec_from_folder(d)


def test_gptq_folder_is_sized_as_stored(tmp_path):
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 64}
    d = folder(tmp_path, {**LLAMA, "torch_dtype": "float16", "quantization_config": gptq})
    write_safetensors(d / "model.safetensors", {
        "l.qweight": ("I32", [8, 128]),  # 64x128 weights, 8 per int32: 4096 B
        "l.qzeros": ("I32", [1, 16]),  # 64 B
        "l.scales": ("F16", [1, 128]),  # 256 B
        "l.g_idx": ("I32", [64]),  # 256 B
    })
    spec = spec_from_folder(d)
    assert spec.quantization == gptq
    assert spec.stored.total_bytes == 4096 + 64 + 256 + 256
    assert spec.stored.num_params == 64 * 128
    assert spec.dtype == "fp16"


def test_dtype_from_headers_when_config_is_silent(tmp_path):
    d = folder(tmp_path, {k: v for k, v in LLAMA.items() if k != "torch_dtype"})
    write_safetensors(d / "model.safetensors", {"a": ("F16", [16, 16]), "n": ("F32", [16])})
    assert spec_from_folder(d).dtype == "fp16"


def test_truncated_download_names_the_file(tmp_path):
    d = folder(tmp_path)
    write_safetensors(d / "model.safetensors", {"a": ("F32", [4])}, data=False)
    with pytest.raises(DataTruncatedError, match=r"model\.safetensors.*re-download"):
        spec_from_folder(d)


def test_oversized_header_names_the_file(tmp_path):
    d = folder(tmp_path)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(HeaderTooLargeError, match=r"tiny-llama/model\.safetensors"):
        spec_from_folder(d)


def test_pickle_index_gives_bytes_without_unpickling(tmp_path):
    d = folder(tmp_path)
    (d / "pytorch_model-00001-of-00001.bin").write_bytes(b"not a pickle; never opened")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({
        "metadata": {"total_size": 1000}, "weight_map": {"a": "pytorch_model-00001-of-00001.bin"}}))
    stored = spec_from_folder(d).stored
    assert stored.total_bytes == 1000
    assert stored.num_params == 500  # bf16: 2 bytes each


def test_pickles_alone_fall_back_to_config_with_a_note(tmp_path):
    d = folder(tmp_path)
    (d / "pytorch_model.bin").write_bytes(b"never opened")
    with pytest.warns(SourceNote, match="pytorch_model.bin.*config.json alone"):
        spec = spec_from_folder(d)
    assert spec.stored is None
    assert spec.hidden_size == 64


def test_a_pickle_file_is_refused(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"never opened")
    with pytest.raises(PickleRefusedError, match="never loaded"):
        spec_from_folder(p)


def test_a_shard_path_stands_for_its_folder(tmp_path):
    d = folder(tmp_path)
    write_safetensors(d / "model.safetensors", {"a": ("F32", [4])})
    assert spec_from_folder(d / "model.safetensors").stored.total_bytes == 16


def test_folder_without_config(tmp_path):
    d = folder(tmp_path, None)
    write_safetensors(d / "model.safetensors", {"a": ("F32", [4])})
    with pytest.raises(MissingConfigError, match="no config.json"):
        spec_from_folder(d)


def test_no_warning_for_a_complete_folder(tmp_path):
    d = folder(tmp_path)
    write_safetensors(d / "model.safetensors", {"a": ("F32", [4])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec_from_folder(d)


def test_files_written_by_the_safetensors_library(tmp_path):
    torch = pytest.importorskip("torch")
    save_file = pytest.importorskip("safetensors.torch").save_file
    d = folder(tmp_path)
    save_file({
        "a": torch.zeros(4, 4, dtype=torch.bfloat16),  # 32 B
        "b": torch.zeros(3, dtype=torch.float32),  # 12 B
        "c": torch.zeros(2, 8, dtype=torch.float8_e4m3fn),  # 16 B
        "d": torch.zeros(5, dtype=torch.int64),  # 40 B
    }, str(d / "model.safetensors"), metadata={"format": "pt"})
    stored = spec_from_folder(d).stored
    assert stored.total_bytes == 32 + 12 + 16 + 40
    assert stored.num_params == 16 + 3 + 16 + 5
    assert dict(stored.bytes_by_dtype) == {"int64": 40, "bf16": 32, "fp8_e4m3": 16, "fp32": 12}


def test_vision_language_checkpoint_counts_the_vision_tower_as_stored(tmp_path):
    gemma3 = {
        "model_type": "gemma3", "torch_dtype": "bfloat16",
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "image_size": 28,
                          "patch_size": 14},
    }
    d = folder(tmp_path, gemma3)
    write_safetensors(d / "model.safetensors", {
        "language_model.model.embed_tokens.weight": ("BF16", [256, 64]),  # 32768 B
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": ("BF16", [64, 32]),  # 4096 B
        "multi_modal_projector.mm_input_projection_weight": ("BF16", [32, 64]),  # 4096 B
    })
    spec = spec_from_folder(d)
    assert spec.hidden_size == 64
    assert spec.extra_params > 0  # the config alone already knows a vision tower exists
    assert spec.stored.total_bytes == 32768 + 4096 + 4096
    assert spec.stored.num_params == 256 * 64 + 64 * 32 + 32 * 64
