"""GGUF: metadata → spec, exact bytes per ggml type, llama.cpp's --n-gpu-layers placement.

Expected sizes come from ggml's block layouts (ggml-common.h): Q4_K is 144 bytes per 256 weights, Q6_K 210 bytes
per 256, Q8_0 34 bytes per 32; F32 is 4 bytes per weight.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import pytest

from modelmem.sources.gguf import (
    GGML_TYPES,
    LLAMA_FILE_TYPES,
    GGUFBadMagicError,
    GGUFError,
    GGUFMalformedError,
    GGUFTensor,
    GGUFTooLargeError,
    GGUFTooShortError,
    GGUFTruncatedError,
    parse_gguf_header,
    spec_from_gguf,
    spec_from_metadata,
)
from modelmem.runtimes.llamacpp import GGUFLayout, gguf_split, offloaded

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

Q4_K, Q6_K, Q8_0 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.Q8_0
BLOCK = {Q4_K: (256, 144), Q6_K: (256, 210), Q8_0: (32, 34)}

# The tiny model: hidden 256, 4 heads of 64, 2 KV heads, FFN 512, vocab 32, 2 blocks.
EMBD = 32 * (256 // 32) * 34  # token_embd Q8_0 [32, 256] = 8704
OUT_NORM = 256 * 4  # 1024
OUT = 32 * 210  # output Q6_K [32, 256] = 6720
LAYER = (
    256 * 4  # attn_norm F32
    + 256 * 144  # attn_q Q4_K [256, 256]
    + 128 * 144  # attn_k Q4_K [128, 256]
    + 128 * 210  # attn_v Q6_K [128, 256]
    + 256 * 144  # attn_output Q4_K
    + 256 * 4  # ffn_norm F32
    + 512 * 144 * 2  # ffn_gate, ffn_up Q4_K [512, 256]
    + 256 * 2 * 210  # ffn_down Q6_K [256, 512]: two 256-blocks per row
)
TOTAL = EMBD + OUT_NORM + OUT + 2 * LAYER


def quant(rows: int, cols: int, qtype) -> np.ndarray:
    block, nbytes = BLOCK[qtype]
    return np.zeros((rows, cols // block * nbytes), dtype=np.uint8)


def write_tiny(path: Path, *, tied: bool = False, extra_kv: dict | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(2)
    w.add_context_length(4096)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_token_list([f"t{i}" for i in range(32)])
    for k, v in (extra_kv or {}).items():
        w.add_uint32(k, v)
    w.add_tensor("token_embd.weight", quant(32, 256, Q8_0), raw_dtype=Q8_0)
    w.add_tensor("output_norm.weight", np.zeros(256, dtype=np.float32))
    if not tied:
        w.add_tensor("output.weight", quant(32, 256, Q6_K), raw_dtype=Q6_K)
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.zeros(256, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", quant(256, 256, Q4_K), raw_dtype=Q4_K)
        w.add_tensor(f"blk.{i}.attn_k.weight", quant(128, 256, Q4_K), raw_dtype=Q4_K)
        w.add_tensor(f"blk.{i}.attn_v.weight", quant(128, 256, Q6_K), raw_dtype=Q6_K)
        w.add_tensor(f"blk.{i}.attn_output.weight", quant(256, 256, Q4_K), raw_dtype=Q4_K)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.zeros(256, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", quant(512, 256, Q4_K), raw_dtype=Q4_K)
        w.add_tensor(f"blk.{i}.ffn_up.weight", quant(512, 256, Q4_K), raw_dtype=Q4_K)
        w.add_tensor(f"blk.{i}.ffn_down.weight", quant(256, 512, Q6_K), raw_dtype=Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path / "tiny-Q4_K_M.gguf")


def test_architecture_metadata_becomes_the_spec(tiny):
    spec = spec_from_gguf(tiny)
    assert spec.name == "tiny-llama"
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads) == (256, 2, 4, 2)
    assert (spec.head_dim, spec.intermediate_size, spec.vocab_size) == (64, 512, 32)
    assert spec.max_position_embeddings == 4096
    assert spec.tie_word_embeddings is False
    assert spec.quantization == {"quant_method": "gguf", "file_type": "Q4_K_M"}


def test_exact_bytes_by_quant_type_and_block(tiny):
    stored = spec_from_gguf(tiny).stored
    assert stored.total_bytes == TOTAL
    assert stored.per_layer_bytes == (LAYER, LAYER)
    assert dict(stored.bytes_by_dtype) == {
        "Q4_K": 2 * (256 + 128 + 256 + 512 + 512) * 144,
        "Q6_K": OUT + 2 * (128 * 210 + 256 * 2 * 210),
        "Q8_0": EMBD,
        "F32": OUT_NORM + 2 * 2 * 256 * 4,
    }
    # Logical weights: GGUF shapes count elements, not bytes.
    per_layer = 256 + 256 * 256 + 2 * 128 * 256 + 256 * 256 + 256 + 3 * 512 * 256
    assert stored.num_params == 32 * 256 + 256 + 32 * 256 + 2 * per_layer


@pytest.mark.parametrize(
    "gpu_layers,gpu_bytes,layers_on_gpu,output_on_gpu",
    [
        (None, 2 * LAYER + OUT_NORM + OUT, 2, True),  # everything but the input layer
        (99, 2 * LAYER + OUT_NORM + OUT, 2, True),
        (3, 2 * LAYER + OUT_NORM + OUT, 2, True),  # n_layer + 1 slots
        (2, LAYER + OUT_NORM + OUT, 1, True),  # the output layer goes first, then the last block
        (1, OUT_NORM + OUT, 0, True),
        (0, 0, 0, False),
    ],
)
def test_gpu_layer_split(tiny, gpu_layers, gpu_bytes, layers_on_gpu, output_on_gpu):
    split = gguf_split(spec_from_gguf(tiny), gpu_layers)
    assert split.gpu_bytes == gpu_bytes
    assert split.cpu_bytes == TOTAL - gpu_bytes  # token_embd always stays on the CPU
    assert (split.gpu_layers, split.output_on_gpu) == (layers_on_gpu, output_on_gpu)


def test_spec_config_stays_json(tiny):
    import json

    spec = spec_from_gguf(tiny)
    assert json.loads(json.dumps(dict(spec.config)))["modelmem_gguf_layout"]["layer_bytes"] == [LAYER, LAYER]


def test_tied_head_is_a_gpu_copy_of_the_embeddings(tmp_path):
    spec = spec_from_gguf(write_tiny(tmp_path / "tied.gguf", tied=True))
    assert spec.tie_word_embeddings is True
    assert spec.stored.total_bytes == EMBD + OUT_NORM + 2 * LAYER
    split = gguf_split(spec, None)
    assert split.gpu_bytes == 2 * LAYER + OUT_NORM + EMBD
    assert split.cpu_bytes == EMBD
    assert gguf_split(spec, 2).gpu_bytes == LAYER + OUT_NORM + EMBD
    off = gguf_split(spec, 0)  # output slot on the CPU: the head reads token_embd in place, no copy
    assert (off.gpu_bytes, off.cpu_bytes) == (0, EMBD + OUT_NORM + 2 * LAYER)


def test_offloaded_matches_llama_cpp_slots():
    # 32 blocks, -ngl 16: i_gpu_start = 33 - 16 = 17, so blocks 17..31 and the output layer.
    layers, output = offloaded(32, 16)
    assert [i for i, g in enumerate(layers) if g] == list(range(17, 32))
    assert output is True
    assert offloaded(32, -1) == ((True,) * 32, True)
    assert offloaded(32, 0) == ((False,) * 32, False)


def test_layout_split_is_pure():
    layout = GGUFLayout(input_bytes=10, layer_bytes=(100, 200, 300), output_bytes=7)
    assert layout.split(2).gpu_bytes == 300 + 7
    assert layout.split(2).cpu_bytes == 10 + 100 + 200


def test_not_a_gguf_names_the_file(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"GGML" + b"\0" * 60)
    with pytest.raises(GGUFBadMagicError, match=r"junk\.gguf: starts with b'GGML'.*not a GGUF file"):
        spec_from_gguf(p)


def test_truncated_tensor_data(tiny):
    data = tiny.read_bytes()
    tiny.write_bytes(data[: len(data) - 5000])
    with pytest.raises(GGUFTruncatedError, match="re-download"):
        spec_from_gguf(tiny)


def test_every_cut_inside_the_header_is_a_named_error(tiny):
    data = tiny.read_bytes()
    header_end = len(data) - TOTAL  # tensor data is TOTAL bytes (the writer pads only before it)
    for cut in [*range(0, header_end + 8, 7), len(data) - 1]:
        with pytest.raises((GGUFTooShortError, GGUFTruncatedError)):
            parse_gguf_header(data[:cut], "cut.gguf", file_size=cut)
    assert parse_gguf_header(data, "whole.gguf", file_size=len(data)).file_bytes == len(data)


def test_reads_without_the_gguf_package(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    assert spec_from_gguf(tiny).stored.total_bytes == TOTAL


def preamble(version: int = 3, tensors: int = 0, kvs: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


def test_smallest_gguf_and_the_header_cap_boundary():
    # magic + version + two counts = 24 bytes, no metadata, no tensors.
    header = parse_gguf_header(preamble(), "empty.gguf", max_header_bytes=24)
    assert (header.version, header.tensors, header.data_offset) == (3, (), 32)  # rounded up to 32-byte alignment
    with pytest.raises(GGUFTooLargeError, match="empty.gguf"):
        parse_gguf_header(preamble(), "empty.gguf", max_header_bytes=23)


def test_too_short_and_old_versions():
    with pytest.raises(GGUFTooShortError, match="23 bytes"):
        parse_gguf_header(preamble()[:23], "x.gguf")
    with pytest.raises(GGUFBadMagicError, match="version 1 is not supported"):
        parse_gguf_header(preamble(version=1), "x.gguf")


def gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_malformed_headers():
    bad_value = preamble(kvs=1) + gguf_string("k") + struct.pack("<I", 99) + b"\0" * 16
    with pytest.raises(GGUFMalformedError, match="unknown value type 99"):
        parse_gguf_header(bad_value, "x.gguf")
    no_dims = preamble(tensors=1) + gguf_string("t") + struct.pack("<I", 0) + b"\0" * 40
    with pytest.raises(GGUFMalformedError, match="0 dimensions"):
        parse_gguf_header(no_dims, "x.gguf")
    bad_align = preamble(kvs=1) + gguf_string("general.alignment") + struct.pack("<II", 4, 3)
    with pytest.raises(GGUFMalformedError, match="power of two"):
        parse_gguf_header(bad_align, "x.gguf")


def test_unknown_ggml_type_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    t = preamble(tensors=1) + gguf_string("t") + struct.pack("<IQIQ", 1, 32, 99, 0)
    with pytest.raises(GGUFMalformedError, match="ggml type 99, unknown here"):
        parse_gguf_header(t, "x.gguf")


def test_hand_written_tensor_table():
    # One Q4_K tensor of 4 x 512 weights: 4 rows x 2 blocks x 144 bytes = 1152.
    t = preamble(tensors=1) + gguf_string("blk.0.w") + struct.pack("<IQQIQ", 2, 512, 4, 12, 0)
    header = parse_gguf_header(t, "x.gguf")
    assert header.tensors == (GGUFTensor("blk.0.w", "Q4_K", 2048, 1152, 0),)
    # Header: 24 preamble + 15 name + 4 n_dims + 16 dims + 4 type + 8 offset = 71, rounded up to 96.
    assert header.file_bytes == 96 + 1152


def test_tables_agree_with_gguf_py():
    assert {i: (n, b, s) for i, (n, b, s) in GGML_TYPES.items() if n != "Q8_1"} == {
        int(t): (t.name, b, s) for t, (b, s) in gguf.GGML_QUANT_SIZES.items() if t.name != "Q8_1"
    }
    assert LLAMA_FILE_TYPES == {
        int(t): t.name.removeprefix("MOSTLY_") for t in gguf.LlamaFileType if t.name != "GUESSED"
    }


def test_large_vocabulary_is_fast(tmp_path):
    # Qwen2.5's 152,064 tokens, scores and types: gguf-py's GGUFReader takes ~15 s on this; the parser skips them.
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_feed_forward_length(128)
    w.add_token_list([f"t{i}" for i in range(152064)])
    w.add_token_scores([0.0] * 152064)
    w.add_tensor("token_embd.weight", np.zeros((152064, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    start = time.perf_counter()
    spec = spec_from_gguf(path)
    assert time.perf_counter() - start < 5
    assert spec.vocab_size == 152064
    assert spec.stored.total_bytes == 152064 * 64 * 2


def test_moe_metadata():
    # Qwen3-30B-A3B's published config: 128 experts, 8 active, moe_intermediate_size 768, head_dim 128.
    meta = {
        "general.architecture": "qwen3moe", "qwen3moe.block_count": 48, "qwen3moe.embedding_length": 2048,
        "qwen3moe.attention.head_count": 32, "qwen3moe.attention.head_count_kv": 4,
        "qwen3moe.attention.key_length": 128, "qwen3moe.expert_count": 128, "qwen3moe.expert_used_count": 8,
        "qwen3moe.expert_feed_forward_length": 768, "qwen3moe.feed_forward_length": 6144,
    }
    spec = spec_from_metadata(meta, [GGUFTensor("token_embd.weight", "Q8_0", 151936 * 2048, 1)], name="q", source="q")
    assert spec.model_type == "qwen3_moe"
    assert (spec.moe.num_experts, spec.moe.experts_per_token, spec.moe.expert_intermediate_size) == (128, 8, 768)
    assert (spec.head_dim, spec.vocab_size) == (128, 151936)
    assert spec.quantization == {"quant_method": "gguf", "file_type": "Q8_0"}  # no general.file_type: largest type


def test_deepseek_mla_metadata():
    # DeepSeek-V3: kv_lora_rank 512, q_lora_rank 1536, qk_nope 128 + qk_rope 64, v_head_dim 128.
    arch = "deepseek2"
    meta = {"general.architecture": arch} | {f"{arch}.{k}": v for k, v in {
        "block_count": 61, "embedding_length": 7168, "attention.head_count": 128, "attention.head_count_kv": 1,
        "attention.key_length": 576, "attention.value_length": 512, "attention.key_length_mla": 192,
        "attention.value_length_mla": 128, "attention.kv_lora_rank": 512, "attention.q_lora_rank": 1536,
        "rope.dimension_count": 64, "expert_count": 256, "expert_used_count": 8, "expert_feed_forward_length": 2048,
        "feed_forward_length": 18432, "expert_shared_count": 1, "leading_dense_block_count": 3, "vocab_size": 129280,
    }.items()}
    spec = spec_from_metadata(meta, [], name="d", source="d")
    assert (spec.mla.kv_lora_rank, spec.mla.q_lora_rank) == (512, 1536)
    assert (spec.mla.qk_nope_head_dim, spec.mla.qk_rope_head_dim, spec.mla.v_head_dim) == (128, 64, 128)
    assert (spec.moe.num_shared_experts, spec.moe.first_dense_layers) == (1, 3)
    assert spec.num_kv_heads == 128


def test_adapter_without_architecture_is_refused():
    with pytest.raises(GGUFError, match="general.architecture"):
        spec_from_metadata({}, [], name="x", source="x.gguf")
