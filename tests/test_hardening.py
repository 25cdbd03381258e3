"""Issue 9: one regression test per root cause the fuzzing run found, and the limits that bound every input.

Each test names its cause by number (1–15 in the issue). Expected behaviour is the contract, not a measured value:
a one-line ModelmemError naming the field, never another exception, a hang or a blocked open().
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time

import pytest

import modelmem
from modelmem import limits
from modelmem.cli import main
from modelmem.dtypes import GGML_TYPES, GGUF_BPW, GGUF_FILE_TYPES, LLAMA_FILE_TYPES, gguf_bits
from modelmem.errors import ConfigError, InvalidJobError, ModelmemError, SourceError
from modelmem.job import make_job
from modelmem.runtimes import llamacpp
from modelmem.sources import gguf as gguf_source
from modelmem.sources.config import spec_from_config
from modelmem.sources.gguf import GGUFError, GGUFMalformedError, GGUFTensor, GGUFTooLargeError, parse_gguf_header
from modelmem.sources.local import ShardIndexError, read_index, spec_from_folder
from modelmem.sources.safetensors import HeaderLimitError, HeaderNotJSONError, parse_header, quantized_weight_bits

TINY = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 128, "torch_dtype": "bfloat16",
}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelmem: error:"), err
    return lines[0]


# --- 1, 4: integer and fraction fields ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 2.5, 10**400, "1" + "0" * 400,
                                   "9" * 5000, "²", limits.SEQ_LEN.maximum + 1], ids=lambda v: repr(v)[:12])
def test_integer_fields_refuse_what_is_not_a_bounded_integer(value):  # causes 1 and 4
    with pytest.raises(InvalidJobError, match=r"^seq_len: .* expected an integer ≥ 1 and ≤ 134,217,728$"):
        make_job(seq_len=value)


@pytest.mark.parametrize("value", [10**400, float("inf"), "1e400", -0.5])
def test_gpu_memory_utilization_overflow_is_refused(value):  # cause 1
    with pytest.raises(InvalidJobError, match=r"^gpu_memory_utilization: .*a fraction in \(0, 1\]"):
        make_job(runtime="vllm", gpu_memory_utilization=value)


def test_a_huge_integer_in_any_field_is_named_not_printed():  # cause 4: repr() of 5,000 digits raises ValueError
    with pytest.raises(InvalidJobError, match=r"^gpu: an integer of about 5,000 digits is not allowed"):
        make_job(gpu=10**4999)


def test_cli_seq_len_with_400_zeros_is_one_line(capsys):  # cause 4
    rc, _, err = cli(capsys, "estimate", "llama-3-8b", "--seq-len", "1" + "0" * 400)
    assert rc == 2 and "seq_len" in one_line_error(err)


# --- 2: one GGUF type table ----------------------------------------------------------------------------------------


def test_one_gguf_type_table():  # cause 2
    assert gguf_source.GGML_TYPES is GGML_TYPES and gguf_source.LLAMA_FILE_TYPES is LLAMA_FILE_TYPES
    # bits per weight are derived from block bytes: ggml-common.h block_q4_K is 144 bytes per 256 weights
    assert GGUF_BPW["Q4_K"] == 4.5 and GGUF_BPW["MXFP4"] == 17 * 8 / 32 and GGUF_BPW["NVFP4"] == 36 * 8 / 64
    # every llama.cpp file type is a --quant value
    assert set(LLAMA_FILE_TYPES.values()) <= set(GGUF_FILE_TYPES)


@pytest.mark.parametrize("file_type", ["IQ3_XS", "IQ3_M", "IQ2_M", "MXFP4_MOE", "NVFP4", "Q1_0", "ALL_F32", "Q4_K_M"])
def test_every_llama_cpp_file_type_estimates(file_type):  # cause 2 (and issue 8's gguf:IQ3_M traceback)
    est = modelmem.estimate("llama-3.1-8b", quant=f"gguf:{file_type.lower()}", num_gpus=1)
    weights = est.to_dict()["per_gpu"]["components"]["weights"]
    params = est.model.params
    # base type of most tensors (llama-quant.cpp default_type) ≤ bits ≤ the widest type any role gets
    low = min(gguf_bits(file_type, r, m) for r in ("other", "output", "attn_v") for m in (False, True))
    high = max(gguf_bits(file_type, r, m) for r in ("other", "output", "attn_v", "token_embd") for m in (False, True))
    assert low / 8 * params * 0.9 <= weights <= high / 8 * params * 1.1


def test_unknown_gguf_type_is_refused_with_the_list(capsys):  # cause 2
    rc, _, err = cli(capsys, "estimate", "llama-3-8b", "--quant", "gguf:Q9_Z")
    assert rc == 2 and "quant: 'gguf:Q9_Z'" in one_line_error(err) and "IQ3_M" in err


# --- 3, 5: sizes and shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["1e400", "1e30", "1e20", "100T", "1" + "0" * 40 + "B"])
def test_sizes_past_the_limit_are_refused(capsys, size):  # causes 3 and 5
    rc, _, err = cli(capsys, "estimate", size)
    assert rc == 2 and "parameters" in one_line_error(err)


def test_the_largest_accepted_size_estimates():
    assert modelmem.estimate("1e13", num_gpus=1).model.params == pytest.approx(1e13, rel=0.01)


@pytest.mark.parametrize("key, value, field", [
    ("num_hidden_layers", 10**9, "num_hidden_layers"), ("num_hidden_layers", 32_000, "num_hidden_layers"),
    ("hidden_size", 10**7, "hidden_size"), ("vocab_size", 10**9, "vocab_size"),
    ("num_attention_heads", 10**6, "num_attention_heads"), ("intermediate_size", 10**12, "intermediate_size"),
])
def test_config_shapes_past_the_limits_name_the_key(key, value, field):  # cause 5
    started = time.process_time()
    with pytest.raises(ConfigError, match=rf"{field} .* exceeds modelmem's limit of [\d,]+ \(largest real"):
        spec_from_config(TINY | {key: value}, name="x")
    assert time.process_time() - started < 1


def test_sliding_window_on_10_billion_layers_is_refused_before_allocating():  # cause 5: MemoryError before
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        spec_from_config(TINY | {"model_type": "mistral", "num_hidden_layers": 10**10, "sliding_window": 4096}, name="x")


def test_moe_experts_past_the_limit():
    config = TINY | {"model_type": "mixtral", "num_local_experts": 10**6, "num_experts_per_tok": 2}
    with pytest.raises(ConfigError, match="num_local_experts .* exceeds"):
        spec_from_config(config, name="x")


def test_a_spec_built_in_code_meets_the_same_limits():
    spec = spec_from_config(TINY, name="x")
    import dataclasses

    with pytest.raises(ConfigError, match="num_layers 100000 exceeds"):
        modelmem.estimate(dataclasses.replace(spec, num_layers=100_000))


# --- 6, 7: JSON depth and digits -----------------------------------------------------------------------------------


def test_deep_nesting_in_config_json_is_refused_without_recursion(tmp_path):  # cause 6
    path = tmp_path / "config.json"
    path.write_bytes(b'{"model_type": "llama", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(ConfigError, match=r"JSON nesting depth exceeds modelmem's limit of 64"):
        modelmem.estimate(str(path))


def test_deep_nesting_in_a_safetensors_header():  # cause 6
    body = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(HeaderLimitError, match="JSON nesting depth"):
        parse_header(struct.pack("<Q", len(body)) + body, "deep.safetensors")


def test_unbalanced_brackets_are_not_json():
    body = b"[" * 100_000
    with pytest.raises(HeaderNotJSONError, match="brackets do not balance"):
        parse_header(struct.pack("<Q", len(body)) + body, "open.safetensors")


def test_json_depth_counts_brackets_outside_strings_only():
    assert limits.scan_json(b'{"a": "[[[[{{", "b": [[1], {"c": "]\\"]"}]}').depth == 3
    assert limits.loads_json(b'[' * 64 + b']' * 64, ValueError) is not None
    with pytest.raises(ValueError, match="nesting depth"):
        limits.loads_json(b'[' * 65 + b']' * 65, ValueError)


@pytest.mark.parametrize("number", [b"1" * 4301, b"1" * 41, b"1e400", b"NaN", b"-Infinity"])
def test_config_numbers_outside_what_python_and_the_formulas_hold(tmp_path, number):  # cause 7
    path = tmp_path / "config.json"
    path.write_bytes(json.dumps(TINY).encode()[:-1] + b', "rope_theta": ' + number + b"}")
    with pytest.raises(ConfigError, match=r"digits|out of range|not a number"):
        modelmem.estimate(str(path))


# --- 8, 9: index files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard", [["a.safetensors"], {"a": 1}, 5, None, "", "../model.safetensors", "/etc/passwd"])
def test_weight_map_values_must_be_shard_file_names(tmp_path, shard):  # cause 8
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ShardIndexError, match=r"weight_map\['w'\] is .*expected a shard file name"):
        spec_from_folder(tmp_path)


@pytest.mark.parametrize("metadata", [[], "x", 5])
def test_index_metadata_must_be_an_object(tmp_path, metadata):  # cause 9
    path = tmp_path / "pytorch_model.bin.index.json"
    path.write_text(json.dumps({"metadata": metadata, "weight_map": {}}))
    with pytest.raises(ShardIndexError, match="metadata must be an object"):
        read_index(path)


# --- 10: compressed-tensors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant, match", [
    ({"quant_method": "compressed-tensors", "config_groups": [1]}, "config_groups must be an object"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 0}}}}, "num_bits must be"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": -1}}}}, "num_bits must be"),
    ({"quant_method": "gptq", "bits": 2**40}, "bits must be an integer from 1 to 32"),
])
def test_quantization_bits_outside_1_to_32_are_refused(quant, match):  # cause 10
    with pytest.raises(ConfigError, match=match):
        quantized_weight_bits(quant)


# --- 11: GGUF metadata and tensor names ----------------------------------------------------------------------------

GGUF_META = {
    "general.architecture": "deepseek2", "deepseek2.embedding_length": 64, "deepseek2.block_count": 2,
    "deepseek2.attention.head_count": 4, "deepseek2.feed_forward_length": 128, "deepseek2.vocab_size": 128,
}


@pytest.mark.parametrize("extra, match", [
    ({"deepseek2.attention.key_length": "192", "deepseek2.attention.kv_lora_rank": 16}, r"key_length is '192'"),
    ({"deepseek2.attention.head_count_kv": [1, "a", 2.5]}, r"head_count_kv is .*expected an integer"),
    ({"deepseek2.feed_forward_length": [128, 2.5]}, r"feed_forward_length"),
    ({"deepseek2.block_count": 10**9}, r"block_count: num_layers 1000000000 exceeds"),
])
def test_gguf_metadata_of_the_wrong_type_is_malformed(extra, match):  # cause 11 (and 5's block_count)
    with pytest.raises(GGUFError, match=match):
        gguf_source.spec_from_metadata(GGUF_META | extra, [], name="x", source="x.gguf")


@pytest.mark.parametrize("name", ["blk.².attn_q.weight", "blk.٣.attn_q.weight", "blk.-1.attn_q.weight"])
def test_non_ascii_digits_are_not_block_numbers(name):  # cause 11: str.isdigit() accepts "²"
    tensors = [GGUFTensor(name, "F32", 64, 256)]
    layout = llamacpp.layout_from_tensors(tensors, 2)
    assert layout.layer_bytes == (0, 0) and layout.other_bytes == 256


def test_a_block_number_past_the_layer_limit_is_malformed():  # cause 5: blk.100000000 grew a 1.5 GiB list
    with pytest.raises(GGUFMalformedError, match="block 100,000,000"):
        llamacpp.layout_from_tensors([GGUFTensor("blk.100000000.attn_q.weight", "F32", 1, 4)], 2)


def _gguf(kv: bytes, n_kv: int, n_tensors: int = 0, tensors: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv + tensors


def _gstr(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def test_gguf_counts_past_the_limits_are_refused_before_reading():
    with pytest.raises(GGUFTooLargeError, match="GGUF tensors"):
        parse_gguf_header(_gguf(b"", 0, n_tensors=limits.GGUF_TENSORS.maximum + 1) + bytes(64), "x.gguf")


def test_gguf_string_arrays_past_the_limit_are_refused():
    n = limits.GGUF_STRINGS.maximum + 1
    kv = _gstr(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n) + _gstr(b"t") * n
    with pytest.raises(GGUFTooLargeError, match="GGUF array strings"):
        parse_gguf_header(_gguf(kv, 1), "x.gguf")


def test_gguf_long_string_arrays_are_skipped_exactly():
    kv = _gstr(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 5000) + _gstr(b"tok") * 5000
    header = parse_gguf_header(_gguf(kv, 1), "x.gguf")
    assert header.metadata["tokenizer.ggml.tokens.count"] == 5000
    truncated = _gguf(kv, 1)[:-2]
    with pytest.raises(GGUFError, match="cut short"):
        parse_gguf_header(truncated, "x.gguf")


# --- 12: FIFOs, devices, folders -----------------------------------------------------------------------------------


def _finishes(fn, seconds: float = 3.0):
    """Run fn in a daemon thread; the test fails (instead of hanging) if it blocks."""
    box: list = []

    def target():
        try:
            box.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001
            box.append(("raised", e))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"blocked for more than {seconds} s"
    return box[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("name", ["config.json", "model.gguf", "model.safetensors", "fifo"])
def test_a_fifo_is_refused_before_opening(tmp_path, name):  # cause 12
    fifo = tmp_path / name
    os.mkfifo(fifo)
    kind, value = _finishes(lambda: modelmem.estimate(str(fifo)))
    assert kind == "raised" and isinstance(value, SourceError) and "FIFO" in str(value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_config_json_in_a_folder_is_refused(tmp_path):  # cause 12
    os.mkfifo(tmp_path / "config.json")
    kind, value = _finishes(lambda: modelmem.estimate(str(tmp_path)))
    assert kind == "raised" and isinstance(value, ModelmemError) and "FIFO" in str(value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_the_cli_refuses_a_fifo_in_one_line(tmp_path, capsys):  # cause 12
    os.mkfifo(tmp_path / "fifo")
    kind, rc = _finishes(lambda: main(["estimate", str(tmp_path / "fifo")]))
    assert (kind, rc) == ("ok", 2) and "FIFO" in one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_is_refused():  # cause 12: /dev/zero would be read forever
    kind, value = _finishes(lambda: modelmem.estimate("/dev/zero"))
    assert kind == "raised" and "device" in str(value)


def test_a_folder_where_config_json_belongs(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ModelmemError, match="config"):
        modelmem.estimate(str(tmp_path))


# --- 13: the Hub without network -----------------------------------------------------------------------------------


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on it now: connections are refused at once
    return port


def test_hub_without_network_fails_fast_in_one_line(tmp_path, monkeypatch, capsys):  # cause 13
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    started = time.perf_counter()
    rc, _, err = cli(capsys, "estimate", "some-org/some-model")
    assert time.perf_counter() - started < 3
    assert rc == 2 and "cannot reach" in one_line_error(err)


# --- 14: large headers ----------------------------------------------------------------------------------------------


def test_too_many_tensors_are_refused_before_parsing():  # cause 14
    n = limits.TENSORS_PER_HEADER.maximum + 1
    body = b"{" + b",".join(b'"t%d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1)
                            for i in range(n)) + b"}"
    started = time.process_time()
    with pytest.raises(HeaderLimitError, match="tensors in one header"):
        parse_header(struct.pack("<Q", len(body)) + body, "many.safetensors")
    assert time.process_time() - started < 1


# --- 15: argparse abbreviations ------------------------------------------------------------------------------------


def test_abbreviated_flags_are_refused(capsys):  # cause 15
    rc, _, err = cli(capsys, "estimate", "llama-3-8b", "--gpu-memory", "36GiB")
    assert rc == 2 and "unrecognized arguments: --gpu-memory 36GiB" in one_line_error(err)


def test_a_newline_in_a_value_keeps_the_error_on_one_line(capsys):
    rc, _, err = cli(capsys, "estimate", "llama-3-8b", "--nope", "a\nb")
    assert rc == 2
    one_line_error(err)


# --- the limits table -----------------------------------------------------------------------------------------------


def test_every_limit_names_its_field_and_the_largest_real_value():
    assert len(limits.ALL) >= 25
    for limit in limits.ALL:
        assert limit.field and limit.largest_real and limit.maximum > 0
        message = limit.problem(limit.maximum + 1)
        assert limit.problem(limit.maximum) is None
        assert message.startswith(limit.field) and "largest real" in message and "\n" not in message


def test_every_catalog_model_is_within_the_limits():
    from modelmem.catalog.models import entries, lookup

    for entry in entries():
        limits.check_spec(lookup(entry.id), AssertionError)


# --- invariant violations the fuzzing found (per-GPU allocated peak) --------------------------------------------------


def _peak(model: str, **job) -> int:
    return modelmem.estimate(model, **job).per_gpu.allocated_peak


def test_fsdp_gathers_a_tied_262k_embedding_once():
    # Traced (modelmem trace, FSDP2 fully_shard over a fake 2-rank group, seq 512): unsharded_params 603,982,336
    # bytes = the tied 262,144 × 1,152 bf16 embedding once; the estimate had it twice (1.12 GiB).
    est = modelmem.estimate("google/gemma-3-1b-pt", mode="lora", num_gpus=2, strategy="fsdp", seq_len=512)
    assert est.to_dict()["per_gpu"]["components"]["temporaries"] == 262_144 * 1152 * 2
    assert est.per_gpu.allocated_peak == pytest.approx(4_283_073_024, rel=0.03)  # the trace's allocated peak
    assert est.per_gpu.allocated_peak < _peak("google/gemma-3-1b-pt", mode="lora", num_gpus=1, seq_len=512)


def test_litgpt_whole_block_gradients_stay_off_the_gpu_under_offload():
    # issue 9: gemma-2-27b LitGPT LoRA FSDP with offload params went from 4.74 GB on 1 GPU to 57.95 GB on 2.
    job = {"mode": "lora", "runtime": "litgpt", "strategy": "fsdp", "offload": "params", "seq_len": 512}
    one, two = (modelmem.estimate("google/gemma-2-27b", num_gpus=n, **job) for n in (1, 2))
    assert two.to_dict()["per_gpu"]["components"]["gradients"] == 0
    assert two.per_gpu.allocated_peak - one.per_gpu.allocated_peak <= two.to_dict()["per_gpu"]["components"]["temporaries"]


def test_zero2_reduce_buckets_hold_only_trainable_gradients():
    # LoRA reduces only the adapters' gradients; buckets the size of the embedding were modelled (Qwen3-8B: 2.5 GB).
    est = modelmem.estimate("Qwen/Qwen3-8B", mode="lora", runtime="litgpt", strategy="zero2", num_gpus=2, seq_len=512)
    assert est.to_dict()["per_gpu"]["components"]["temporaries"] <= 2 * est.model.trainable_params * 4


def test_selective_checkpointing_never_keeps_more_than_none_with_eager_attention():
    # issue 9: at 131k tokens eager's s × s scores stayed in "selective", which then held a layer more than "none".
    job = {"mode": "train", "attention": "eager", "seq_len": 131_072, "num_gpus": 1}
    none, selective, full = (_peak("EleutherAI/pythia-410m", grad_checkpointing=g, **job) for g in ("none", "selective", "full"))
    assert none >= selective >= full


def test_qlora_above_lora_says_why():
    # GPTQ with one scale per weight stores 0.5 + 2.5 bytes per weight, more than bf16's 2: QLoRA really needs more.
    job = {"num_gpus": 1, "seq_len": 128, "quant_group_size": 1}
    qlora = modelmem.estimate("Qwen/Qwen3-0.6B", mode="qlora", quant="gptq", **job)
    lora = modelmem.estimate("Qwen/Qwen3-0.6B", mode="lora", num_gpus=1, seq_len=128)
    assert qlora.per_gpu.allocated_peak > lora.per_gpu.allocated_peak
    assert any("QLoRA above LoRA here" in line and "group size 1" in line for line in qlora.explanation)
    plain = modelmem.estimate("Qwen/Qwen3-0.6B", mode="qlora", num_gpus=1, seq_len=128)
    assert plain.per_gpu.allocated_peak <= lora.per_gpu.allocated_peak
    assert not any("QLoRA above LoRA" in line for line in plain.explanation)
