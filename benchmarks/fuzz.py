"""Fuzz every input modelmem reads, as an adversarial user would, and print issue 9's table.

    nice python benchmarks/fuzz.py                 # 100,000+ inputs over all six kinds (≈ 20 min on 2 busy cores)
    python benchmarks/fuzz.py --scale 0.01         # a quick smoke run
    python benchmarks/fuzz.py --bounds             # only time the largest inputs the limits accept

Kinds: random jobs through the API, monotonicity pairs, CLI argument vectors (cli.main in-process), mutated
config.json files, mutated safetensors headers (in memory and as model folders), mutated GGUF files.

Each input runs in a worker process under a 1.5 GiB address-space limit (RLIMIT_AS) and two alarms (setitimer):
5 s of CPU time (ITIMER_PROF; on a shared machine wall time measures the neighbours, not modelmem) and 30 s of
wall time (ITIMER_REAL; a blocked open() spends no CPU). A worker handles many inputs, so per-input cost is the
input's own work, not a process start. Outcomes per input:
  ok or a ModelmemError (a one-line refusal)  — both fine;
  any other exception                          — a bug;
  either alarm, or > 5 CPU seconds spent       — a hang;
  MemoryError                                  — a memory blow-up;
  a dead worker (segfault, OOM kill)           — counted as a bug of the chunk's input kind;
  a successful estimate that breaks an invariant (components ≥ 0, sum = allocated, reserved ≥ allocated,
  device_total ≥ reserved), or a pair that moves the wrong way — an invariant violation.
Inputs are derived from (kind, seed, index), so any failure can be replayed with --replay KIND:INDEX.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import multiprocessing as mp
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TIME_LIMIT_S = 5.0  # CPU seconds (ITIMER_PROF): what one input may cost, whatever else shares the machine
WALL_LIMIT_S = 30.0  # wall seconds (ITIMER_REAL): catches inputs that block without spending CPU (a FIFO's open)
MEMORY_LIMIT_BYTES = int(1.5 * 2**30)
KINDS = ("api", "mono", "cli", "config", "safetensors", "gguf")
# Inputs per kind at --scale 1 (≥ 100,000 in all); the API and pair kinds are the cheapest per input.
COUNTS = {"api": 40_000, "mono": 20_000, "cli": 10_000, "config": 14_000, "safetensors": 10_000, "gguf": 8_000}
TITLES = {
    "api": "random jobs through the API", "mono": "monotonicity pairs", "cli": "random CLI argument vectors",
    "config": "mutated config.json", "safetensors": "mutated safetensors headers", "gguf": "mutated GGUF files",
}
CHUNK = 250


class _Timeout(Exception):
    pass


# --- hostile values ---------------------------------------------------------------------------------------------

HOSTILE = [
    0, -1, 1, 2, 3, 7, 64, 4096, 10**6, 10**9, 2**31, 2**63, 10**30, 10**400, -(10**30), 1.5, 0.0, -0.0, 1e300,
    float("inf"), float("-inf"), float("nan"), True, False, None, "", " ", "x", "1e400", "1" + "0" * 400,
    "9" * 5000, "²", "auto", "all-linear", "-5", "0x10", "nan", [], {}, [1, "a"], {"a": 1}, "q_proj,v_proj",
    "gguf:IQ3_M", "gguf:NOPE", "gguf:", "\x00", "a\nb",
]
CHOICES = {
    "mode": ["inference", "train", "lora", "qlora"], "dtype": ["fp32", "fp16", "bf16"], "precision": ["pure", "mixed"],
    "quant": ["none", "int8", "int8-wo", "nf4", "fp4", "nf4-dq", "int4", "fp8", "awq", "gptq", "gguf:Q4_K_M",
              "gguf:IQ3_M", "gguf:Q8_0", "gguf:MXFP4_MOE", "gguf:ALL_F32", "gguf:IQ2_M"],
    "optimizer": ["adamw", "adamw-8bit", "paged-adamw-8bit", "paged-adamw", "sgd", "sgd-momentum", "adafactor", "lion"],
    "kv_dtype": ["fp32", "bf16", "fp16", "fp8", "int8", "int4"], "grad_checkpointing": ["none", "full", "selective"],
    "attention": ["eager", "sdpa", "flash"], "strategy": ["none", "ddp", "zero1", "zero2", "zero3", "fsdp", "tp", "pp",
                                                           "layer-split"],
    "offload": ["none", "optimizer", "params"], "runtime": ["hf", "torchtune", "litgpt", "torchao", "vllm", "llamacpp"],
    "loss": ["full", "chunked"], "compile": [True, False], "optimizer_in_backward": [True, False],
    "activation_offload": [True, False], "gpu": ["h100-80gb", "a100-40gb", "rtx-4090", "l4", "nope-gpu"],
    "lora_targets": ["default", "all-linear", "q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj", "c_attn", "nope"],
}
INTS = {
    "batch_size": [1, 2, 4, 8, 32], "seq_len": [1, 128, 512, 2048, 8192, 32768, 131072], "new_tokens": [0, 1, 128, 2048],
    "lora_rank": [1, 8, 16, 64, 256, 4096], "lora_alpha": [8, 16, 32], "num_gpus": [1, 2, 4, 8, "auto"],
    "quant_group_size": [32, 64, 128], "gpu_memory_utilization": [0.5, 0.9, 1.0], "max_model_len": [2048, 8192],
    "max_num_seqs": [1, 256], "block_size": [16, 32], "gpu_layers": [0, 1, 10, 999],
}
FIELDS = (*CHOICES, *INTS)
SIZES = ["7B", "70b", "350m", "1.5e9", "1e30", "1e400", "1e14", "0.0001k", "1" + "0" * 40 + "B", "405B", "1T", "1e13"]


def _models() -> list[str]:
    from modelmem.catalog.models import entries

    return [e.id for e in entries()]


def random_job(rng: random.Random, hostile: float) -> dict:
    job: dict = {"mode": rng.choice(CHOICES["mode"])}
    for name in rng.sample(FIELDS, rng.randint(0, 6)):
        if rng.random() < hostile:
            job[name] = rng.choice(HOSTILE)
        elif name in CHOICES:
            job[name] = rng.choice(CHOICES[name])
        else:
            job[name] = rng.choice(INTS[name])
    if "num_gpus" not in job:
        job["num_gpus"] = "auto" if rng.random() < 0.05 else rng.choice([1, 1, 2, 4, 8])
    return job


def valid_job(rng: random.Random) -> dict:
    """A job that make_job accepts, for the pair kind: fields chosen so modes and runtimes agree."""
    mode = rng.choice(["train", "lora", "qlora", "inference"])
    job: dict = {"mode": mode, "batch_size": rng.choice([1, 2, 4]), "seq_len": rng.choice([128, 512, 2048, 8192, 32768, 131072]),
                 "attention": rng.choice(CHOICES["attention"]), "gpu": "h100-80gb"}
    if mode == "inference":
        job["new_tokens"] = rng.choice([0, 16, 512])
        job["num_gpus"] = 1
    else:
        job["grad_checkpointing"] = rng.choice(CHOICES["grad_checkpointing"])
        job["runtime"] = rng.choice(["hf", "torchtune", "litgpt"])
        job["strategy"] = rng.choice(["none", "fsdp", "zero3", "zero2", "ddp"])
        job["num_gpus"] = 1 if job["strategy"] == "none" else rng.choice([1, 2, 4])
        if job["strategy"] in ("fsdp", "zero3", "zero2") and rng.random() < 0.3:
            job["offload"] = rng.choice(["optimizer", "params"])
        job["optimizer"] = rng.choice(["adamw", "adamw-8bit", "sgd", "adafactor"])
        if mode in ("lora", "qlora"):
            job["lora_rank"] = rng.choice([8, 16, 64, 256])
            job["lora_targets"] = rng.choice(["default", "all-linear"])
    return job


# --- invariants -------------------------------------------------------------------------------------------------


def invariant_problem(est) -> str | None:
    pg = est.to_dict()["per_gpu"]
    comps = pg["components"]
    if any(not isinstance(v, int) or v < 0 for v in comps.values()):
        return f"negative component {comps}"
    if sum(comps.values()) != pg["allocated_peak"]:
        return "components do not sum to allocated_peak"
    if not pg["allocated_peak"] <= pg["reserved_peak"] <= pg["device_total"]:
        return "allocated ≤ reserved ≤ device_total broken"
    if est.num_gpus < 1:
        return "num_gpus < 1"
    return None


PAIRS = ("batch_size", "seq_len", "lora_rank", "new_tokens", "num_gpus", "grad_checkpointing", "qlora")


def pair(rng: random.Random, models: list[str]) -> tuple[str, dict, dict, str]:
    """(model, smaller job, larger job, what varies): the larger job must not need less memory per GPU."""
    while True:
        job = valid_job(rng)
        what = rng.choice(PAIRS)
        a, b = dict(job), dict(job)
        if what in ("batch_size", "seq_len"):
            b[what] = a[what] * 2
        elif what == "lora_rank" and job["mode"] in ("lora", "qlora"):
            b[what] = a[what] * 2
        elif what == "new_tokens" and job["mode"] == "inference":
            b[what] = a[what] + rng.choice([1, 64, 1024])
        elif what == "num_gpus" and job.get("strategy") in ("fsdp", "zero3", "zero2", "zero1"):
            # more GPUs under sharding: `b` is the one with fewer GPUs (it must need at least as much per GPU)
            a["num_gpus"], b["num_gpus"] = a["num_gpus"] * 2, a["num_gpus"]
        elif what == "grad_checkpointing" and job["mode"] != "inference":
            order = ["full", "selective", "none"]  # less recomputation keeps more alive
            i = rng.randint(0, 1)
            a[what], b[what] = order[i], order[i + 1]
        elif what == "qlora" and job["mode"] in ("lora", "qlora"):
            a["mode"], b["mode"] = "qlora", "lora"
            a.pop("quant", None), b.pop("quant", None)
        else:
            continue
        return rng.choice(models), a, b, what


def pair_problem(what: str, small, large) -> str | None:
    x, y = small.per_gpu.allocated_peak, large.per_gpu.allocated_peak
    if x <= y:
        return None
    if what == "num_gpus" and large.num_gpus == 1 and x - y <= small.to_dict()["per_gpu"]["components"]["temporaries"]:
        return None  # 1 → 2 GPUs: the rise is at most the gather / reduce buffers sharding brings (shown as such)
    if what == "qlora" and any("QLoRA above LoRA here" in line for line in small.explanation):
        return None  # a runtime habit the output states (e.g. LitGPT's 4-bit inputs kept for backward)
    return f"{what}: {x} > {y}"


# --- file builders --------------------------------------------------------------------------------------------------

TINY_CONFIG = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 128, "max_position_embeddings": 256,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}


def tiny_tensors() -> dict:
    h, inter, v = 64, 128, 128
    shapes = {"model.embed_tokens.weight": [v, h], "lm_head.weight": [v, h], "model.norm.weight": [h]}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": [h, h], p + "self_attn.k_proj.weight": [32, h],
                   p + "self_attn.v_proj.weight": [32, h], p + "self_attn.o_proj.weight": [h, h],
                   p + "mlp.gate_proj.weight": [inter, h], p + "mlp.up_proj.weight": [inter, h],
                   p + "mlp.down_proj.weight": [h, inter], p + "input_layernorm.weight": [h],
                   p + "post_attention_layernorm.weight": [h]}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    return header


def mutate_value(rng: random.Random, value):
    r = rng.random()
    if r < 0.5:
        return rng.choice(HOSTILE)
    if isinstance(value, list) and value:
        value = list(value)
        i = rng.randrange(len(value))
        value[i] = mutate_value(rng, value[i])
        return value
    if isinstance(value, dict) and value:
        value = dict(value)
        k = rng.choice(list(value))
        value[k] = mutate_value(rng, value[k])
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return rng.choice([value * 10**rng.randint(1, 12), -value, value + 1, value // 3])
    return rng.choice(HOSTILE)


def mutate_text(rng: random.Random, text: bytes) -> bytes:
    r = rng.random()
    if r < 0.25 and text:
        i = rng.randrange(len(text))
        return text[:i]
    if r < 0.5 and text:
        data = bytearray(text)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if r < 0.65:
        return b"[" * rng.choice([100, 1000, 100_000]) + b"]" * rng.choice([0, 100_000])
    if r < 0.8:
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice([b"1" * 5000, b"1e400", b"NaN", b"-Infinity", b'"\\ud800"', b"\xff\xfe"]) + text[i:]
    return text.replace(b"64", b"6" + b"4" * rng.randint(2, 60), 1)


def mutated_config(rng: random.Random, base: dict) -> bytes:
    config = json.loads(json.dumps(base))
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.5 and config:
            k = rng.choice(list(config))
            config[k] = mutate_value(rng, config[k])
        elif r < 0.6 and config:
            config.pop(rng.choice(list(config)))
        elif r < 0.7:
            config["layer_types"] = rng.choice([["sliding_attention"] * 10**5, ["x"], None, 5])
            config["sliding_window"] = rng.choice([1, 4096, 10**9, None])
        elif r < 0.8:
            config["quantization_config"] = rng.choice([
                {"quant_method": "compressed-tensors", "config_groups": [1]},
                {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": rng.choice([0, -1, 3, 99, "4"])}}}},
                {"quant_method": "gptq", "bits": rng.choice([0, -4, 4, 2**40])}, {"quant_method": "bitsandbytes", "load_in_4bit": True},
                [], "x",
            ])
        else:
            config[rng.choice(["num_hidden_layers", "hidden_size", "vocab_size", "num_local_experts", "intermediate_size"])] = \
                rng.choice([10**9, 10**10, 32000, 10**30, 4096, 2**20])
    text = json.dumps(config, allow_nan=True).encode()
    return mutate_text(rng, text) if rng.random() < 0.3 else text


def mutated_safetensors(rng: random.Random) -> bytes:
    header = tiny_tensors()
    r = rng.random()
    if r < 0.55:
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(list(header))
            entry = dict(header[name]) if isinstance(header[name], dict) else {}
            key = rng.choice(["dtype", "shape", "data_offsets", "__extra"])
            entry[key] = mutate_value(rng, entry.get(key))
            header[name] = entry if rng.random() < 0.9 else mutate_value(rng, entry)
        if rng.random() < 0.2:
            header["__metadata__"] = rng.choice([[], {"a": "b"}, 5, None, {"format": "pt"}])
        if rng.random() < 0.1:
            first = next(iter(header.values()))
            header[rng.choice(["blk.²", "model.layers.²².x", "model.layers.99999999999.mlp.weight"])] = (
                dict(first) if isinstance(first, dict) else first)
    elif r < 0.62:  # many tensors, some past the limit
        n = rng.choice([1000, 1000, 20_000, 140_000])
        body = b"{" + b",".join(b'"t%d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1)
                                for i in range(n)) + b"}"
        return struct.pack("<Q", len(body)) + body + bytes(n)
    body = json.dumps(header, allow_nan=True).encode()
    if r >= 0.62:
        body = mutate_text(rng, body)
    prefix_len = len(body)
    if rng.random() < 0.05:
        prefix_len = rng.choice([0, 2**64 - 1, 10**8 + 1, len(body) + 10])
    data_bytes = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in tiny_tensors().values())
    return struct.pack("<Q", prefix_len) + body + bytes(data_bytes if rng.random() < 0.8 else 10)


# GGUF writer (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), enough for fixtures and mutations.
def _gstr(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _gval(v) -> tuple[int, bytes]:
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return (4, struct.pack("<I", v)) if 0 <= v < 2**32 else (10, struct.pack("<Q", v % 2**64))
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, _gstr(v)
    if isinstance(v, list):
        if not v:
            return 9, struct.pack("<IQ", 4, 0)
        types = [_gval(x) for x in v]
        kind = types[0][0]
        return 9, struct.pack("<IQ", kind, len(v)) + b"".join(t[1] for t in types)
    raise TypeError(v)


def gguf_bytes(meta: dict, tensors: list[tuple[str, list[int], int]], *, data: bool = True) -> bytes:
    """A GGUF v3 file: metadata, tensor infos (name, ne dims, ggml type id) and zeroed data (up to 64 MiB; past that
    the file is cut short, which the parser must report as truncated)."""
    from modelmem.dtypes import GGML_TYPES

    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(meta))]
    for k, v in meta.items():
        t, b = _gval(v)
        out += [_gstr(k), struct.pack("<I", t), b]
    offset = 0
    sizes = []
    for name, dims, type_id in tensors:
        _, block, size = GGML_TYPES.get(type_id, ("?", 1, 1))
        n = math.prod(dims) // block * size if dims and dims[0] % block == 0 else 0
        out += [_gstr(name), struct.pack("<I", len(dims)), b"".join(struct.pack("<Q", d % 2**64) for d in dims),
                struct.pack("<IQ", type_id, offset)]
        sizes.append(n)
        offset += -(-n // 32) * 32
    head = b"".join(out)
    head += bytes(-len(head) % 32)
    return head + (bytes(min(offset, 1 << 26)) if data else b"")


def tiny_gguf() -> tuple[dict, list]:
    meta = {
        "general.architecture": "llama", "general.name": "tiny", "general.file_type": 7,
        "llama.embedding_length": 64, "llama.block_count": 2, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.feed_forward_length": 128, "llama.context_length": 256,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "tokenizer.ggml.tokens": [f"t{i}" for i in range(128)],
    }
    tensors = [("token_embd.weight", [64, 128], 8), ("output_norm.weight", [64], 0), ("output.weight", [64, 128], 8)]
    for i in range(2):
        tensors += [(f"blk.{i}.attn_q.weight", [64, 64], 8), (f"blk.{i}.attn_k.weight", [64, 32], 8),
                    (f"blk.{i}.attn_v.weight", [64, 32], 8), (f"blk.{i}.attn_output.weight", [64, 64], 8),
                    (f"blk.{i}.ffn_gate.weight", [64, 128], 8), (f"blk.{i}.ffn_up.weight", [64, 128], 8),
                    (f"blk.{i}.ffn_down.weight", [128, 64], 8), (f"blk.{i}.attn_norm.weight", [64], 0),
                    (f"blk.{i}.ffn_norm.weight", [64], 0)]
    return meta, tensors


def mutated_gguf(rng: random.Random) -> bytes:
    meta, tensors = tiny_gguf()
    r = rng.random()
    if r < 0.6:
        for _ in range(rng.randint(1, 3)):
            s = rng.random()
            if s < 0.4:
                k = rng.choice(list(meta))
                v = mutate_value(rng, meta[k])
                try:
                    _gval(v)
                except (TypeError, struct.error, OverflowError):
                    v = "x"
                meta[k] = v
            elif s < 0.55:
                meta[rng.choice(["llama.attention.key_length", "llama.attention.kv_lora_rank", "llama.expert_count",
                                 "split.count", "general.alignment", "llama.block_count"])] = rng.choice(
                    ["64", 7, 10**9, [1, 2.5], ["a", "b"], 2**40, 0, 3, 512])
            elif s < 0.8:
                i = rng.randrange(len(tensors))
                name, dims, t = tensors[i]
                tensors[i] = (rng.choice([name, "blk.².attn_q.weight", "blk.100000000.attn_q.weight", "blk.-1.x",
                                          "blk.٣.attn_q.weight", name + "\n", "x" * 1000]),
                              rng.choice([dims, [], [0], [2**63, 2**63], [64] * 9, [63, 64], [2**40, 2**40]]),
                              rng.choice([t, t, 99, 40, 41, 14, 2**31]))
            else:
                tensors.append((tensors[0][0], tensors[0][1], tensors[0][2]))  # a duplicate name
    try:
        data = gguf_bytes(meta, tensors, data=rng.random() < 0.9)
    except (TypeError, struct.error, OverflowError, ValueError):
        data = gguf_bytes(*tiny_gguf())
    if r >= 0.6:
        data = bytearray(data)
        s = rng.random()
        if s < 0.3:
            data = data[: rng.randrange(len(data))]
        elif s < 0.7:
            end = min(len(data), 3000)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(end)] = rng.randrange(256)
        else:  # a huge count in the preamble or an array header
            at = rng.choice([8, 16])
            data[at:at + 8] = struct.pack("<Q", rng.choice([2**20, 2**32, 2**63, 10**6]))
        data = bytes(data)
    return data


# --- one input --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    calls: int = 0
    bugs: int = 0
    hangs: int = 0
    blowups: int = 0
    violations: int = 0
    slowest_s: float = 0.0
    samples: list = dataclasses.field(default_factory=list)

    def add(self, other: "Tally") -> None:
        for f in ("calls", "bugs", "hangs", "blowups", "violations"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.slowest_s = max(self.slowest_s, other.slowest_s)
        self.samples += other.samples[: max(0, 12 - len(self.samples))]


class Worker:
    def __init__(self, seed: int, tmp: Path) -> None:
        import modelmem
        from modelmem import cli

        self.modelmem, self.cli = modelmem, cli
        self.seed, self.tmp = seed, tmp
        self.models = _models()
        from modelmem.catalog.models import lookup

        self.configs = [dict(lookup(m).config) for m in self.models[::7]]
        self.fifo = tmp / "fifo"
        if not self.fifo.exists():
            os.mkfifo(self.fifo)

    def run(self, kind: str, index: int) -> tuple[str, str]:
        """(outcome, detail): outcome is ok, refused, bug, violation."""
        rng = random.Random(f"{self.seed}:{kind}:{index}")
        return getattr(self, "_" + kind)(rng, index)

    def _estimate(self, model, job) -> tuple[str, str]:
        try:
            est = self.modelmem.estimate(model, **job)
        except self.modelmem.ModelmemError:
            return "refused", ""
        problem = invariant_problem(est)
        return ("violation", problem) if problem else ("ok", "")

    def _pick_model(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.8:
            return rng.choice(self.models)
        if r < 0.95:
            return rng.choice(SIZES)
        return rng.choice([str(self.fifo), str(self.tmp), "/dev/null", "/dev/zero", "", "x" * 5000, "a/b\x00c",
                           "~nobody/config.json", "org/../x"])

    def _api(self, rng: random.Random, index: int) -> tuple[str, str]:
        return self._estimate(self._pick_model(rng), random_job(rng, hostile=0.15))

    def _mono(self, rng: random.Random, index: int) -> tuple[str, str]:
        model, a, b, what = pair(rng, self.models)
        try:
            small = self.modelmem.estimate(model, **a)
            large = self.modelmem.estimate(model, **b)
        except self.modelmem.ModelmemError:
            return "refused", ""
        problem = pair_problem(what, small, large) or invariant_problem(small) or invariant_problem(large)
        return ("violation", f"{problem}: {model} {a} vs {b}") if problem else ("ok", "")

    def _cli(self, rng: random.Random, index: int) -> tuple[str, str]:
        command = rng.choice(["estimate", "params", "estimate", "models", "gpus", "nope", "--version", ""])
        argv = [command] if command else []
        if command in ("estimate", "params"):
            argv.append(self._pick_model(rng))
        for name, value in random_job(rng, hostile=0.3).items():
            flag = "--" + name.replace("_", "-")
            if rng.random() < 0.1:
                flag = flag[: rng.randint(3, len(flag))]  # abbreviations must be refused
            argv += [flag, str(value)[:100]]
        if rng.random() < 0.3:
            argv.append("--json")
        if rng.random() < 0.05:
            argv.append(rng.choice(["--help", "-h", "--", "-", "--json=1", "--gpu-memory", "36GiB"]))
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = self.cli.main(argv)
        except SystemExit as e:
            rc = e.code
        if rc not in (0, 2, None):
            return "bug", f"exit {rc} for {argv}"
        if rc == 2 and len(err.getvalue().strip().splitlines()) > 1:
            return "bug", f"multi-line error for {argv}: {err.getvalue()[:200]}"
        return ("ok" if rc in (0, None) else "refused"), ""

    def _config(self, rng: random.Random, index: int) -> tuple[str, str]:
        path = self.tmp / f"c{index % 7}" / "config.json"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(mutated_config(rng, rng.choice(self.configs + [TINY_CONFIG])))
        job = valid_job(rng)
        return self._estimate(str(path if rng.random() < 0.5 else path.parent), job)

    def _safetensors(self, rng: random.Random, index: int) -> tuple[str, str]:
        from modelmem.errors import ModelmemError
        from modelmem.sources.safetensors import parse_header

        data = mutated_safetensors(rng)
        if rng.random() < 0.7:
            try:
                parse_header(data, "fuzz.safetensors", file_size=len(data))
                return "ok", ""
            except ModelmemError:
                return "refused", ""
        folder = self.tmp / f"s{index % 5}"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
        (folder / "model.safetensors").write_bytes(data)
        if rng.random() < 0.2:
            index_doc = rng.choice([
                {"weight_map": {"a": ["x"], "b": None}}, {"metadata": [], "weight_map": {"a": "model.safetensors"}},
                {"weight_map": {"a": "../../etc/passwd"}}, {"weight_map": {"a": 5}}, {"weight_map": []}, [],
                {"weight_map": {"a": "model.safetensors"}},
            ])
            (folder / "model.safetensors.index.json").write_text(json.dumps(index_doc))
        else:
            (folder / "model.safetensors.index.json").unlink(missing_ok=True)
        return self._estimate(str(folder), valid_job(rng))

    def _gguf(self, rng: random.Random, index: int) -> tuple[str, str]:
        path = self.tmp / f"g{index % 5}.gguf"
        path.write_bytes(mutated_gguf(rng))
        job = {"mode": "inference", "runtime": rng.choice(["llamacpp", "hf"]), "num_gpus": 1,
               "seq_len": rng.choice([128, 4096])}
        if job["runtime"] == "llamacpp" and rng.random() < 0.5:
            job["gpu_layers"] = rng.choice([0, 1, 2, 999])
        return self._estimate(str(path), job)


def _alarm(signum, frame):
    raise _Timeout()


def run_chunk(worker: Worker, kind: str, start: int, count: int) -> Tally:
    tally = Tally()
    for index in range(start, start + count):
        tally.calls += 1
        began = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, TIME_LIMIT_S)
        signal.setitimer(signal.ITIMER_REAL, WALL_LIMIT_S)
        outcome, detail = "ok", ""
        try:
            outcome, detail = worker.run(kind, index)
        except _Timeout:
            outcome, detail = "hang", ""
        except MemoryError:
            outcome, detail = "blowup", ""
        except RecursionError as e:
            outcome, detail = "bug", f"RecursionError {e}"
        except Exception as e:  # noqa: BLE001 — any other exception is the bug this counts
            tb = traceback.extract_tb(e.__traceback__)[-1]
            outcome, detail = "bug", f"{type(e).__name__}: {str(e)[:160]} at {Path(tb.filename).name}:{tb.lineno}"
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.process_time() - began
        if outcome in ("ok", "refused", "violation"):
            tally.slowest_s = max(tally.slowest_s, elapsed)
        if elapsed > TIME_LIMIT_S and outcome != "hang":
            outcome, detail = "hang", f"{elapsed:.1f}s"
        if outcome in ("bug", "hang", "blowup", "violation"):
            field = {"bug": "bugs", "hang": "hangs", "blowup": "blowups", "violation": "violations"}[outcome]
            setattr(tally, field, getattr(tally, field) + 1)
            if len(tally.samples) < 12:
                tally.samples.append(f"{kind}:{index} {outcome} {detail}"[:400])
    return tally


def _worker_main(seed: int, tasks, results) -> None:
    os.nice(5)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGPROF, _alarm)
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="modelmem-fuzz-") as tmp:
        worker = Worker(seed, Path(tmp))
        while True:
            task = tasks.get()
            if task is None:
                break
            kind, start, count = task
            tally = run_chunk(worker, kind, start, count)
            results.put((kind, start, tally, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def fuzz(seed: int, scale: float, workers: int) -> tuple[dict[str, Tally], int]:
    ctx = mp.get_context("fork")
    tasks, results = ctx.Queue(), ctx.Queue()
    chunks = []
    for kind in KINDS:
        n = max(1, int(COUNTS[kind] * scale))
        chunks += [(kind, s, min(CHUNK, n - s)) for s in range(0, n, CHUNK)]
    random.Random(seed).shuffle(chunks)  # mix kinds so a slow kind does not leave a worker idle at the end
    tallies = {k: Tally() for k in KINDS}
    in_flight: dict = {}
    procs: list = []

    def spawn():
        p = ctx.Process(target=_worker_main, args=(seed, tasks, results), daemon=True)
        p.start()
        procs.append(p)

    for chunk in chunks:
        tasks.put(chunk)
    for _ in range(workers):
        spawn()
    done, peak_rss, started = 0, 0, time.time()
    while done < len(chunks):
        try:
            kind, start, tally, rss = results.get(timeout=30)
        except Exception:  # a worker may have died: replace it, charge its chunk as a bug
            for p in list(procs):
                if not p.is_alive():
                    procs.remove(p)
                    print(f"worker {p.pid} died (exit {p.exitcode}); its chunk is counted as a bug", file=sys.stderr)
                    spawn()
                    # which chunk it held is unknown to the parent: count one bug against every kind's tally later
                    tallies["api"].bugs += 1
                    done += 1
            continue
        tallies[kind].add(tally)
        peak_rss = max(peak_rss, rss)
        done += 1
        if done % 40 == 0:
            print(f"{done}/{len(chunks)} chunks, {time.time() - started:.0f}s", file=sys.stderr)
    for _ in procs:
        tasks.put(None)
    for p in procs:
        p.join(timeout=10)
    return tallies, peak_rss


# --- bounds: the largest inputs the limits accept -------------------------------------------------------------------


def _largest_cases() -> list[tuple[str, object, object]]:
    """(name, prepare, run): `prepare` builds the input outside the timing, `run(input)` is what is timed."""
    import modelmem
    from modelmem import limits as L
    from modelmem.sources.config import spec_from_config
    from modelmem.sources.gguf import parse_gguf_header
    from modelmem.sources.safetensors import parse_header

    def big_config(**over):
        return {"model_type": "llama", "hidden_size": 16384, "num_hidden_layers": L.LAYERS.maximum,
                "num_attention_heads": 128, "num_key_value_heads": 8, "intermediate_size": 53248,
                "vocab_size": L.VOCAB.maximum, "max_position_embeddings": L.POSITIONS.maximum} | over

    def config_case(config, **job):
        return lambda: config, lambda c: modelmem.estimate(spec_from_config(c, name="largest"), **job)

    def largest_header() -> bytes:
        # 131,072 entries whose names are padded so the JSON is just under the 100 MB cap.
        n = L.TENSORS_PER_HEADER.maximum
        entry = b'"%s%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}'
        fixed = len(entry % (b"", 0, 10**8, 10**8)) + 1
        pad = b"x" * ((L.SAFETENSORS_HEADER_BYTES.maximum - 2) // n - fixed)
        body = b"{" + b",".join(entry % (pad, i, i, i + 1) for i in range(n)) + b"}"
        return struct.pack("<Q", len(body)) + body

    def largest_gguf() -> bytes:
        meta, _ = tiny_gguf()
        meta.pop("tokenizer.ggml.tokens")
        head = gguf_bytes(meta, [("token_embd.weight", [64, 128], 8)], data=False)
        # splice in one more key: a token array of GGUF_STRINGS one-byte strings, then many tensor infos
        n_strings = L.GGUF_STRINGS.maximum - 1
        tokens = _gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n_strings) + (struct.pack("<Q", 1) + b"t") * n_strings
        n_tensors = L.GGUF_TENSORS.maximum
        infos = b"".join(_gstr(f"blk.{i % 500}.t{i}.weight") + struct.pack("<IQIQ", 1, 32, 8, 64 * i)
                         for i in range(n_tensors))
        preamble = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(meta) + 1)
        kv = head[24:head.index(_gstr("token_embd.weight"))]
        return preamble + kv + tokens + infos

    moe = big_config(model_type="mixtral", num_local_experts=L.EXPERTS.maximum, num_experts_per_tok=8,
                     hidden_size=4096, intermediate_size=14336)
    return [
        ("config at every limit, train, auto GPUs", *config_case(big_config(), mode="train")),
        ("config at every limit, lora all-linear, 8 GPUs fsdp", *config_case(
            big_config(), mode="lora", lora_targets="all-linear", num_gpus=8, strategy="fsdp")),
        (f"{L.EXPERTS.maximum:,d}-expert MoE at the layer limit, qlora, auto GPUs", *config_case(moe, mode="qlora")),
        ("sliding window on every layer, eager, largest batch × seq_len", *config_case(
            big_config(model_type="mistral", sliding_window=4096), seq_len=L.SEQ_LEN.maximum, attention="eager",
            batch_size=L.BATCH.maximum, num_gpus=1)),
        (f"size {L.PARAMS.maximum:.0e}, train, auto GPUs".replace("+", ""), lambda: f"{L.PARAMS.maximum:.0e}".replace("+", ""),
         lambda size: modelmem.estimate(size, mode="train")),
        (f"safetensors header: {L.TENSORS_PER_HEADER.maximum:,d} tensors, {L.SAFETENSORS_HEADER_BYTES.maximum // 10**6} MB", largest_header,
         lambda data: parse_header(data, "largest.safetensors")),
        (f"GGUF header: {L.GGUF_TENSORS.maximum:,d} tensors, {L.GGUF_STRINGS.maximum:,d} strings", largest_gguf,
         lambda data: parse_gguf_header(data, "largest.gguf")),
    ]


def _bound_child(i: int, out) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    name, prepare, run = _largest_cases()[i]
    data = prepare()
    import gc

    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began, wall = time.process_time(), time.perf_counter()
    try:
        run(data)
        status = "ok"
    except Exception as e:  # noqa: BLE001
        status = f"{type(e).__name__}: {str(e)[:120]}"
    elapsed = time.process_time() - began
    status += f" ({time.perf_counter() - wall:.1f} s wall)"
    # ru_maxrss is a high-water mark: the growth past what building the input took is the run's own peak.
    out.put((name, status, elapsed, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024))


def bounds() -> list[tuple[str, str, float, int]]:
    ctx = mp.get_context("fork")
    rows = []
    for i in range(len(_largest_cases())):
        q = ctx.Queue()
        p = ctx.Process(target=_bound_child, args=(i, q))
        p.start()
        try:
            rows.append(q.get(timeout=300))
        except Exception:
            rows.append((_largest_cases()[i][0], "no result (killed?)", float("nan"), 0))
        p.join(timeout=5)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the default 102,000 inputs")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bounds", action="store_true", help="only time the largest accepted inputs")
    ap.add_argument("--no-bounds", action="store_true", help="skip the largest-input timings")
    ap.add_argument("--replay", help="KIND:INDEX — run one input in this process and show its traceback")
    args = ap.parse_args(argv)
    if args.replay:
        kind, index = args.replay.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            print(Worker(args.seed, Path(tmp)).run(kind, int(index)))
        return 0
    if not args.bounds:
        started = time.time()
        tallies, peak_rss = fuzz(args.seed, args.scale, args.workers)
        total = sum(t.calls for t in tallies.values())
        print(f"\n{total:,d} inputs in {time.time() - started:.0f} s, {args.workers} worker processes, "
              f"limits {TIME_LIMIT_S:g} CPU s ({WALL_LIMIT_S:g} s wall) and {MEMORY_LIMIT_BYTES / 2**30:g} GiB per input; "
              f"worker peak RSS {peak_rss / 2**20:.0f} MiB\n")
        print("| input | calls | bugs (other exception) | hangs > 5 s | memory blow-ups | invariant violations | slowest (CPU) |")
        print("|---|---|---|---|---|---|---|")
        for kind in KINDS:
            t = tallies[kind]
            print(f"| {TITLES[kind]} | {t.calls:,d} | {t.bugs} | {t.hangs} | {t.blowups} | {t.violations} | "
                  f"{t.slowest_s:.2f} s |")
        samples = [s for t in tallies.values() for s in t.samples]
        if samples:
            print("\nfirst failures (replay with --replay KIND:INDEX):")
            for s in samples[:40]:
                print("  " + s)
    if not args.no_bounds:
        print("\n| largest accepted input | result | CPU seconds | peak memory |")
        print("|---|---|---|---|")
        for name, status, seconds, rss in bounds():
            print(f"| {name} | {status} | {seconds:.2f} | {rss / 2**20:.0f} MiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
