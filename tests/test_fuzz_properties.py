"""Property tests (hypothesis): every parser and job field either accepts or refuses with a ModelmemError, and every
estimate keeps its invariants and moves the right way when the job grows.

Bounded and derandomized so CI stays fast and stable; benchmarks/fuzz.py runs the same kinds of input 100,000+ times.
"""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import modelmem  # noqa: E402
from modelmem import limits  # noqa: E402
from modelmem.errors import ModelmemError  # noqa: E402
from modelmem.job import make_job  # noqa: E402
from modelmem.sources.config import spec_from_config  # noqa: E402
from modelmem.sources.gguf import parse_gguf_header, spec_from_metadata  # noqa: E402
from modelmem.sources.safetensors import parse_header  # noqa: E402

FAST = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
PAIRS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

hostile_scalars = st.one_of(
    st.integers(min_value=-(10**45), max_value=10**45), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=12), st.sampled_from(["auto", "1e400", "1" + "0" * 400, "²", "gguf:IQ3_M"]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40), st.floats(allow_nan=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
JOB_FIELDS = ("mode", "dtype", "precision", "quant", "optimizer", "batch_size", "seq_len", "new_tokens", "kv_dtype",
              "grad_checkpointing", "attention", "lora_rank", "lora_alpha", "lora_targets", "num_gpus", "strategy",
              "offload", "gpu", "runtime", "compile", "loss", "quant_group_size", "gpu_memory_utilization",
              "max_model_len", "max_num_seqs", "block_size", "gpu_layers")


@FAST
@given(st.dictionaries(st.sampled_from(JOB_FIELDS), hostile_scalars, max_size=5))
def test_job_validation_accepts_or_names_the_field(fields):
    try:
        job = make_job(**fields)
    except ModelmemError as e:
        assert "\n" not in str(e) and len(str(e)) < 2000
        return
    for name in ("batch_size", "seq_len", "new_tokens", "lora_rank"):
        assert 0 <= getattr(job, name) <= limits.SEQ_LEN.maximum


TINY = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 128, "max_position_embeddings": 256,
}
CONFIG_KEYS = (*TINY, "head_dim", "sliding_window", "layer_types", "num_local_experts", "num_experts_per_tok",
               "quantization_config", "tie_word_embeddings", "torch_dtype", "text_config", "rope_scaling")


@FAST
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), st.one_of(hostile_scalars, json_values), max_size=4),
       st.sampled_from(["llama", "mistral", "mixtral", "qwen2", "gemma2", "gpt2", "deepseek_v3", "phi3", "gpt_oss"]))
def test_config_parser_accepts_or_refuses(changes, model_type):
    config = TINY | {"model_type": model_type} | changes
    try:
        spec = spec_from_config(config, name="fuzz")
    except ModelmemError:
        return
    limits.check_spec(spec, AssertionError)
    est = modelmem.estimate(spec, num_gpus=1, seq_len=64)
    assert est.per_gpu.allocated_peak >= 0


@FAST
@given(st.binary(max_size=400))
def test_json_loader_never_raises_anything_else(data):
    try:
        limits.loads_json(data, ValueError)
    except ValueError:
        pass


def _header(entries: dict) -> bytes:
    body = json.dumps(entries).encode()
    return struct.pack("<Q", len(body)) + body


VALID_HEADER = _header({"a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
                        "b": {"dtype": "F32", "shape": [3], "data_offsets": [12, 24]}})


@FAST
@given(st.lists(st.tuples(st.integers(0, len(VALID_HEADER) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(VALID_HEADER)))
def test_safetensors_parser_on_mutated_headers(flips, cut):
    data = bytearray(VALID_HEADER)
    for at, byte in flips:
        data[at] = byte
    try:
        parse_header(bytes(data[:cut or None]), "fuzz.safetensors", file_size=len(data) + 24)
    except ModelmemError:
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "x"]), json_values, max_size=3))
def test_safetensors_parser_on_hostile_entries(entry):
    try:
        parse_header(_header({"t": entry}), "fuzz.safetensors")
    except ModelmemError:
        pass


def _gstr(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _tiny_gguf() -> bytes:
    kv = [(b"general.architecture", 8, _gstr(b"llama")), (b"llama.embedding_length", 4, struct.pack("<I", 64)),
          (b"llama.block_count", 4, struct.pack("<I", 2)), (b"llama.attention.head_count", 4, struct.pack("<I", 4)),
          (b"llama.feed_forward_length", 4, struct.pack("<I", 128)),
          (b"tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + _gstr(b"a") + _gstr(b"b") + _gstr(b"c"))]
    tensors = [(b"token_embd.weight", [64, 128]), (b"blk.0.attn_q.weight", [64, 64]), (b"blk.1.attn_q.weight", [64, 64])]
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    out += b"".join(_gstr(k) + struct.pack("<I", t) + v for k, t, v in kv)
    offset = 0
    for name, dims in tensors:
        out += _gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)
        offset += 4 * dims[0] * dims[1]
    return out + bytes(-len(out) % 32) + bytes(offset)


TINY_GGUF = _tiny_gguf()


@FAST
@given(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=6), st.booleans())
def test_gguf_parser_on_mutated_files(flips, cut):
    data = bytearray(TINY_GGUF)
    for at, byte in flips:
        data[at % len(data)] = byte
    if cut:
        data = data[: flips[0][0]]
    try:
        header = parse_gguf_header(bytes(data), "fuzz.gguf", file_size=len(data))
        spec_from_metadata(header.metadata, header.tensors, name="fuzz", source="fuzz.gguf")
    except ModelmemError:
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                                        "llama.attention.key_length", "llama.expert_count", "llama.vocab_size",
                                        "llama.attention.head_count_kv", "general.file_type"]),
                       st.one_of(hostile_scalars, st.lists(hostile_scalars, max_size=3)), max_size=4))
def test_gguf_metadata_of_any_type(changes):
    meta = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.block_count": 2,
            "llama.attention.head_count": 4, "llama.feed_forward_length": 128, "llama.vocab_size": 128} | changes
    try:
        spec_from_metadata(meta, [], name="fuzz", source="fuzz.gguf")
    except ModelmemError:
        pass


# --- invariants and monotonicity ------------------------------------------------------------------------------------

MODELS = ["EleutherAI/pythia-70m", "Qwen/Qwen3-0.6B", "HuggingFaceTB/SmolLM2-135M", "google/gemma-3-1b-pt",
          "facebook/opt-125m", "openai-community/gpt2", "deepseek-ai/DeepSeek-V2-Lite", "Qwen/Qwen3-30B-A3B"]

training_jobs = st.fixed_dictionaries({
    "mode": st.sampled_from(["train", "lora", "qlora"]),
    "batch_size": st.sampled_from([1, 2, 4]),
    "seq_len": st.sampled_from([128, 512, 2048, 8192]),
    "grad_checkpointing": st.sampled_from(["none", "selective", "full"]),
    "attention": st.sampled_from(["sdpa", "eager", "flash"]),
    "runtime": st.sampled_from(["hf", "torchtune", "litgpt"]),
    "optimizer": st.sampled_from(["adamw", "adamw-8bit", "sgd"]),
    "strategy": st.sampled_from(["none", "fsdp", "zero3", "zero2"]),
    "offload": st.sampled_from(["none", "none", "optimizer", "params"]),
})


def _job(job: dict, num_gpus: int = 1) -> dict:
    job = dict(job)
    if job["strategy"] == "none" or num_gpus == 1:
        job["strategy"] = "none" if num_gpus == 1 else job["strategy"]
    if job["strategy"] == "none":
        job.pop("offload")
    job["num_gpus"] = num_gpus
    return job


def _estimate(model: str, **job):
    if job.get("runtime") == "torchtune" and modelmem.resolve_model(model).mla is not None:
        job = {**job, "runtime": "hf"}  # torchtune has no multi-head latent attention: such a job is refused
    return modelmem.estimate(model, **job)


def _peak(model: str, **job) -> int:
    est = _estimate(model, **job)
    d = est.to_dict()["per_gpu"]
    assert all(v >= 0 for v in d["components"].values()), d
    assert sum(d["components"].values()) == d["allocated_peak"] <= d["reserved_peak"] <= d["device_total"]
    return est.per_gpu.allocated_peak


@PAIRS
@given(st.sampled_from(MODELS), training_jobs, st.sampled_from(["batch_size", "seq_len"]))
def test_more_tokens_never_need_less(model, job, what):
    job = _job(job)
    assert _peak(model, **job) <= _peak(model, **job | {what: job[what] * 2})


@PAIRS
@given(st.sampled_from(MODELS), training_jobs.filter(lambda j: j["mode"] != "train"), st.sampled_from([8, 64, 512]))
def test_a_higher_lora_rank_never_needs_less(model, job, rank):
    job = _job(job)
    assert _peak(model, **job, lora_rank=rank) <= _peak(model, **job, lora_rank=rank * 2)


@PAIRS
@given(st.sampled_from(MODELS), st.sampled_from([1, 4]), st.sampled_from([128, 2048]), st.sampled_from([1, 64, 1024]))
def test_more_new_tokens_never_need_less(model, batch, prompt, more):
    job = {"mode": "inference", "batch_size": batch, "seq_len": prompt, "num_gpus": 1}
    assert _peak(model, **job, new_tokens=16) <= _peak(model, **job, new_tokens=16 + more)


@PAIRS
@given(st.sampled_from(MODELS), training_jobs)
def test_checkpointing_none_holds_at_least_selective_at_least_full(model, job):
    job = _job(job)
    none, selective, full = (_peak(model, **job | {"grad_checkpointing": c}) for c in ("none", "selective", "full"))
    assert none >= selective >= full


@PAIRS
@given(st.sampled_from(MODELS), training_jobs.filter(lambda j: j["strategy"] != "none"), st.sampled_from([1, 2, 4]))
def test_more_gpus_under_sharding_never_need_more_per_gpu(model, job, n):
    more = _estimate(model, **_job(job, n * 2))
    fewer = _peak(model, **_job(job, n))
    rise = more.per_gpu.allocated_peak - fewer
    # From one GPU, sharding brings its gather / reduce buffers (FSDP1 runs NO_SHARD on one rank): the rise, if
    # any, is at most those buffers; from two GPUs on, per-GPU memory never rises.
    assert rise <= (more.to_dict()["per_gpu"]["components"]["temporaries"] if n == 1 else 0)


@PAIRS
@given(st.sampled_from(MODELS), training_jobs.filter(lambda j: j["mode"] != "train"))
def test_qlora_needs_no_more_than_lora_unless_the_output_says_why(model, job):
    job = _job(job)
    lora = _estimate(model, **job | {"mode": "lora"})
    qlora = _estimate(model, **job | {"mode": "qlora"})
    if qlora.per_gpu.allocated_peak > lora.per_gpu.allocated_peak:
        assert any("QLoRA above LoRA here" in line for line in qlora.explanation), qlora.explanation
