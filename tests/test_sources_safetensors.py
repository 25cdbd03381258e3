"""The safetensors header parser: sizes from first principles, boundary lengths, every named error."""

from __future__ import annotations

import json
import struct

import pytest

from modelmem.errors import SourceError
from modelmem.sources import safetensors as st
from modelmem.sources.safetensors import (
    DataTruncatedError,
    HeaderMalformedError,
    HeaderNotJSONError,
    HeaderTooLargeError,
    HeaderTooShortError,
    HeaderTruncatedError,
    parse_header,
    per_layer_bytes,
    stored_weights,
)


def header_bytes(entries: dict, pad_to: int | None = None) -> bytes:
    """8-byte little-endian length + JSON, as the safetensors format defines it (no tensor data appended)."""
    body = json.dumps(entries).encode()
    if pad_to is not None:
        body += b" " * (pad_to - len(body))
    return struct.pack("<Q", len(body)) + body


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_sizes_come_from_data_offsets():
    # 4x4 BF16 = 16 elements x 2 bytes = 32; 3 F32 = 12; 2x8 F8_E4M3 = 16; 10 F4 = 5 bytes (4 bits each).
    data = header_bytes({
        "__metadata__": {"format": "pt"},
        "a": entry("BF16", [4, 4], 0, 32),
        "b": entry("F32", [3], 32, 44),
        "c": entry("F8_E4M3", [2, 8], 44, 60),
        "d": entry("F4", [10], 60, 65),
    })
    header = parse_header(data, "x.safetensors")
    assert [t.name for t in header.tensors] == ["a", "b", "c", "d"]  # __metadata__ is not a tensor
    assert [t.nbytes for t in header.tensors] == [32, 12, 16, 5]
    assert header.total_bytes == 65
    assert header.metadata == {"format": "pt"}
    assert header.file_bytes == 8 + header.header_length + 65


@pytest.mark.parametrize(
    "dtype,bytes_per_16",
    [("F64", 128), ("F32", 64), ("F16", 32), ("BF16", 32), ("I64", 128), ("I32", 64), ("I16", 32), ("I8", 16),
     ("U8", 16), ("BOOL", 16), ("F8_E4M3", 16), ("F8_E5M2", 16), ("F8_E8M0", 16), ("F4", 8), ("F6_E2M3", 12),
     ("U16", 32), ("U32", 64), ("U64", 128), ("C64", 128)],
)
def test_every_dtype_size(dtype, bytes_per_16):
    header = parse_header(header_bytes({"t": entry(dtype, [16], 0, bytes_per_16)}), "x.safetensors")
    assert header.total_bytes == bytes_per_16


def test_size_that_disagrees_with_dtype_and_shape_is_malformed():
    with pytest.raises(HeaderMalformedError, match=r"x\.safetensors.*'w'.*needs 32 bytes"):
        parse_header(header_bytes({"w": entry("BF16", [4, 4], 0, 30)}), "x.safetensors")


def test_gaps_and_overlaps_are_malformed():
    with pytest.raises(HeaderMalformedError, match="gap or overlap"):
        parse_header(header_bytes({"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 6, 10)}), "x.safetensors")
    with pytest.raises(HeaderMalformedError, match="gap or overlap"):
        parse_header(header_bytes({"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}), "x.safetensors")


def test_unknown_dtype_is_sized_from_offsets():
    header = parse_header(header_bytes({"t": entry("F3_NEW", [8], 0, 3)}), "x.safetensors")
    assert header.total_bytes == 3


def test_cap_is_huggingface_hubs():
    # huggingface_hub constants.SAFETENSORS_MAX_HEADER_LENGTH; safetensors' own 100 MB would let a 1M-tensor header
    # take seconds (issue 9, cause 14).
    assert st.MAX_HEADER_BYTES == 25_000_000


def test_header_of_exactly_the_cap_is_accepted():
    data = header_bytes({}, pad_to=25_000_000)
    header = parse_header(data, "big.safetensors")
    assert header.header_length == 25_000_000
    assert header.tensors == ()


def test_header_one_byte_over_the_cap_is_rejected_from_the_prefix_alone():
    with pytest.raises(HeaderTooLargeError, match=r"big\.safetensors.*25,000,001"):
        parse_header(struct.pack("<Q", 25_000_001), "big.safetensors")


@pytest.mark.parametrize("size", [0, 1, 7])
def test_shorter_than_the_prefix(size):
    with pytest.raises(HeaderTooShortError, match=rf"tiny\.safetensors: {size} bytes is too short"):
        parse_header(b"\x00" * size, "tiny.safetensors")


def test_eight_bytes_with_length_zero_is_an_empty_header():
    with pytest.raises(HeaderNotJSONError, match=r"empty\.safetensors.*length 0"):
        parse_header(struct.pack("<Q", 0), "empty.safetensors")


def test_length_pointing_past_the_end_is_truncated():
    data = header_bytes({"a": entry("U8", [1], 0, 1)})
    with pytest.raises(HeaderTruncatedError, match=r"cut\.safetensors"):
        parse_header(data[:-1], "cut.safetensors")
    with pytest.raises(HeaderTruncatedError, match=r"says 10 bytes but only 2"):
        parse_header(struct.pack("<Q", 10) + b"{}", "cut.safetensors")


def test_length_exactly_to_the_end_is_parsed():
    assert parse_header(struct.pack("<Q", 2) + b"{}", "x.safetensors").tensors == ()


def test_bytes_after_the_header_are_ignored():
    header = parse_header(header_bytes({"a": entry("U8", [4], 0, 4)}) + b"\x01\x02\x03\x04", "x.safetensors")
    assert header.total_bytes == 4


def test_not_json_and_not_utf8():
    with pytest.raises(HeaderNotJSONError, match=r"bad\.safetensors.*not UTF-8 JSON"):
        parse_header(struct.pack("<Q", 5) + b"{nope", "bad.safetensors")
    with pytest.raises(HeaderNotJSONError):
        parse_header(struct.pack("<Q", 2) + b"\xff\xfe", "bad.safetensors")


@pytest.mark.parametrize(
    "body",
    [[1, 2], {"a": 3}, {"a": {"shape": [1], "data_offsets": [0, 1]}}, {"a": {"dtype": "U8", "shape": [-1],
     "data_offsets": [0, 1]}}, {"a": {"dtype": "U8", "shape": [1], "data_offsets": [1]}},
     {"a": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}],
)
def test_malformed_entries(body):
    with pytest.raises(HeaderMalformedError, match=r"m\.safetensors"):
        parse_header(header_bytes(body), "m.safetensors")


def test_every_error_is_a_source_error():
    for cls in (HeaderTooShortError, HeaderTooLargeError, HeaderTruncatedError, HeaderNotJSONError,
                HeaderMalformedError, DataTruncatedError):
        assert issubclass(cls, SourceError)


def test_file_shorter_than_its_tensors():
    data = header_bytes({"a": entry("F32", [4], 0, 16)})
    with pytest.raises(DataTruncatedError, match="re-download"):
        parse_header(data, "part.safetensors", file_size=len(data) + 15)
    assert parse_header(data, "part.safetensors", file_size=len(data) + 16).total_bytes == 16


# --- StoredWeights from headers: pre-quantized checkpoints sized as stored -------------------------------------


def headers(entries: dict) -> list[st.SafetensorsHeader]:
    return [parse_header(header_bytes(entries), "q.safetensors")]


def layout(*tensors: tuple[str, str, list[int], int]) -> dict:
    """Entries laid end to end: (name, dtype, shape, nbytes)."""
    out, pos = {}, 0
    for name, dtype, shape, nbytes in tensors:
        out[name] = entry(dtype, shape, pos, pos + nbytes)
        pos += nbytes
    return out


def test_plain_checkpoint_counts_every_element():
    stored = stored_weights(headers(layout(("w", "BF16", [4, 4], 32), ("n", "F32", [4], 16))))
    assert stored.total_bytes == 48
    assert stored.num_params == 20
    assert dict(stored.bytes_by_dtype) == {"bf16": 32, "fp32": 16}


def test_gptq_int32_packs_eight_4bit_weights():
    # A 128x64 linear at 4 bits, group 128: qweight [128/8, 64] int32 = 4096 B, scales [1, 64] fp16 = 128 B,
    # qzeros [1, 64/8] int32 = 32 B, g_idx [128] int32 = 512 B.
    stored = stored_weights(
        headers(layout(
            ("l.qweight", "I32", [16, 64], 4096), ("l.scales", "F16", [1, 64], 128),
            ("l.qzeros", "I32", [1, 8], 32), ("l.g_idx", "I32", [128], 512),
        )),
        {"quant_method": "gptq", "bits": 4, "group_size": 128},
    )
    assert stored.total_bytes == 4096 + 128 + 32 + 512
    assert stored.num_params == 128 * 64
    assert dict(stored.bytes_by_dtype) == {"int32": 4640, "fp16": 128}


def test_awq_w_bit():
    stored = stored_weights(headers(layout(("l.qweight", "I32", [128, 8], 4096))), {"quant_method": "awq", "w_bit": 4})
    assert stored.num_params == 128 * 64


def test_fp8_block_scales_are_bytes_not_params():
    # DeepSeek-V3 style: 256x256 F8_E4M3 weight + [2, 2] fp32 weight_scale_inv (128x128 blocks).
    stored = stored_weights(
        headers(layout(("l.weight", "F8_E4M3", [256, 256], 65536), ("l.weight_scale_inv", "F32", [2, 2], 16))),
        {"quant_method": "fp8", "weight_block_size": [128, 128]},
    )
    assert stored.total_bytes == 65552
    assert stored.num_params == 65536


def test_mxfp4_blocks_hold_two_values_per_byte():
    # gpt-oss: [experts=2, rows=4, blocks=3, 16 bytes] U8 blocks = 384 B = 768 FP4 values; scales [2, 4, 3] U8.
    stored = stored_weights(
        headers(layout(
            ("e.gate_up_proj_blocks", "U8", [2, 4, 3, 16], 384), ("e.gate_up_proj_scales", "U8", [2, 4, 3], 24),
            ("e.gate_up_proj_bias", "BF16", [2, 4], 16),
        )),
        {"quant_method": "mxfp4"},
    )
    assert stored.total_bytes == 424
    assert stored.num_params == 768 + 8


def test_bitsandbytes_4bit_uint8_weight_is_two_params_per_byte():
    stored = stored_weights(
        headers(layout(
            ("l.weight", "U8", [2048, 1], 2048), ("l.weight.absmax", "F32", [64], 256),
            ("l.weight.quant_map", "F32", [16], 64), ("l.weight.quant_state.bitsandbytes__nf4", "U8", [100], 100),
        )),
        {"quant_method": "bitsandbytes", "load_in_4bit": True},
    )
    assert stored.num_params == 4096
    assert stored.total_bytes == 2048 + 256 + 64 + 100


def test_bitsandbytes_8bit_keeps_one_param_per_byte():
    stored = stored_weights(
        headers(layout(("l.weight", "I8", [64, 64], 4096), ("l.SCB", "F32", [64], 256))),
        {"quant_method": "bitsandbytes", "load_in_8bit": True},
    )
    assert stored.num_params == 4096


def test_compressed_tensors_nvfp4_packed():
    stored = stored_weights(
        headers(layout(
            ("l.weight_packed", "U8", [64, 32], 2048), ("l.weight_scale", "F8_E4M3", [64, 4], 256),
            ("l.weight_global_scale", "F32", [1], 4),
        )),
        {"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}},
    )
    assert stored.num_params == 64 * 64


def test_per_layer_bytes_from_decoder_block_names():
    hs = headers(layout(
        ("model.embed_tokens.weight", "BF16", [8, 4], 64),
        ("model.layers.0.self_attn.q_proj.weight", "BF16", [4, 4], 32),
        ("model.layers.0.input_layernorm.weight", "F32", [4], 16),
        ("model.layers.1.mlp.down_proj.weight", "BF16", [4, 8], 64),
        ("model.layers.2.mtp.weight", "BF16", [4, 4], 32),  # beyond num_layers: not a decoder block
        ("vision_tower.encoder.layers.0.fc1.weight", "BF16", [4, 4], 32),  # a vision block
    ))
    assert per_layer_bytes(hs, 2) == (48, 64)
    assert per_layer_bytes(hs, 4) == ()  # block 3 is missing: the names do not describe the stack
