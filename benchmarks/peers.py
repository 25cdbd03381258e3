"""Runs every peer and rule of thumb on the validation records; writes benchmarks/results/peers.jsonl.

Dev-only benchmark code: run it with the peers' venv (built by benchmarks/setup_peers.sh), never the project's:

    /work/peers-venv/bin/python benchmarks/peers.py            # scored records only
    /work/peers-venv/bin/python benchmarks/peers.py --all      # every record with a model

One output line per record x peer: the peer's estimate of the record's `expected.metric` in bytes, or why it has
none (`cannot_express`: the peer has no input for something the job needs; `error`: it should have answered but
failed). No row is ever dropped. `note` says what the peer's number is, in its own terms.

How a peer's output is mapped to a record's metric (the same rule for every peer):
  * a total metric (allocated/active/reserved peak, device total, decode peak) gets the peer's total for one GPU,
    whatever it leaves out (accelerate has no activations, hf-mem no activations, the rules of thumb no KV cache…);
    those omissions are the peer's error, not a reason to drop the row;
  * a component metric (`weights`, `kv_cache`, …) gets the peer's term for that component, or "cannot express"
    where the peer has no such term;
  * a job the peer has no input for (LoRA, a non-Adam optimizer where the peer assumes Adam, a per-GPU share on
    several GPUs where the peer only knows one device, a quantization format outside its menu) is
    "cannot express". Knobs a peer does not model but that only change the size of a term (batch, sequence,
    checkpointing, compile, chunked loss) are not: the peer answers and is scored on what it says.

Model configs come from ../shared/validation/models.jsonl and extra_models.jsonl; `-Instruct` ids map to the
base row of the same architecture. Each row is written out as a config.json in the checkpoint's own field names,
and each peer reads it through its own code path (accelerate: AutoConfig + AutoModel on the meta device, as its
CLI does after fetching; llm-analysis: its get_model_config_from_hf; hf-mem: a loopback Hub).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import traceback
import warnings
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VALIDATION = REPO.parent / "shared" / "validation"
OUT = BENCH / "results" / "peers.jsonl"

# Metrics the README excludes from scoring (capacity readings, load-only readings).
SKIPPED_METRIC_PARTS = ("kv_capacity", "max_seq_len_that_fits", "_after_load", "cuda_context")

PEERS = ("accelerate", "llm-analysis", "deepspeed", "hf-mem", "seed", "16-bytes-per-param", "weights-x1.2")
PACKAGE = {"accelerate": "accelerate", "llm-analysis": "llm-analysis", "deepspeed": "deepspeed", "hf-mem": "hf-mem"}

TOTAL_METRICS = ("allocated_peak", "active_peak", "reserved_peak", "device_total", "allocated_peak_decode")


# --------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Answer:
    estimate_bytes: int | None = None
    cannot_express: str | None = None
    error: str | None = None
    note: str = ""


def cannot(reason: str) -> Answer:
    return Answer(cannot_express=reason)


def answer(value: float, note: str) -> Answer:
    return Answer(estimate_bytes=int(round(value)), note=note)


def peer_version(peer: str) -> str | None:
    if peer not in PACKAGE:
        return "formula"
    try:
        return version(PACKAGE[peer])
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Records and model rows


def load_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_scored(rec: dict) -> bool:
    return (
        rec.get("usable_for_scoring") is True
        and rec.get("fully_in_vocabulary") is True
        and rec.get("architecture_family") == "decoder"
        and not any(part in rec["expected"]["metric"] for part in SKIPPED_METRIC_PARTS)
    )


@lru_cache(maxsize=None)
def model_rows() -> dict[str, dict]:
    rows = {}
    for name in ("models.jsonl", "extra_models.jsonl"):
        for row in load_jsonl(VALIDATION / name):
            rows[row["hf_id"]] = row
    return rows


def row_for(model_id: str) -> dict | None:
    rows = model_rows()
    return rows.get(model_id) or rows.get(model_id.replace("-Instruct", ""))


def _partial_rotary(positional: str | None) -> float | None:
    m = re.search(r"rotary_dim (\d+) of head_dim (\d+)", positional or "")
    return int(m.group(1)) / int(m.group(2)) if m else None


def hf_config(row: dict, dtype: str) -> dict:
    """config.json for a validation row, in the field names the checkpoint itself uses."""
    model_type = row["model_type"].split()[0]
    torch_dtype = row.get("torch_dtype") or {"fp32": "float32", "fp16": "float16"}.get(dtype, "bfloat16")
    h, layers, heads = row["hidden_size"], row["num_hidden_layers"], row["num_attention_heads"]
    kv, vocab = row["num_key_value_heads"] or heads, row["vocab_size"]
    arch = [row["architectures"][0].split()[0]]
    common = {"model_type": model_type, "architectures": arch, "vocab_size": vocab, "torch_dtype": torch_dtype,
              "tie_word_embeddings": bool(row.get("tie_word_embeddings"))}
    if row.get("max_position_embeddings"):
        common["max_position_embeddings"] = row["max_position_embeddings"]
    if model_type == "gpt_bigcode":
        return {**common, "n_embd": h, "n_layer": layers, "n_head": heads, "n_inner": row["intermediate_size"],
                "n_positions": row.get("max_position_embeddings") or 8192, "multi_query": kv == 1}
    if model_type == "bloom":
        return {**common, "hidden_size": h, "n_layer": layers, "n_head": heads}
    if model_type == "falcon":
        # falcon-7b: one shared K/V head (multi_query), parallel attention+MLP, no biases, FFN = 4h.
        return {**common, "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
                "multi_query": kv == 1, "num_kv_heads": kv, "parallel_attn": bool(row.get("parallel_residual")),
                "bias": bool(row.get("qkv_bias")), "new_decoder_architecture": False, "alibi": False}
    cfg = {**common, "hidden_size": h, "intermediate_size": row["intermediate_size"], "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv}
    if row.get("head_dim"):
        cfg["head_dim"] = row["head_dim"]
    if row.get("rms_norm_eps"):
        cfg["rms_norm_eps"] = row["rms_norm_eps"]
    if row.get("rope_theta"):
        cfg["rope_theta"] = row["rope_theta"]
    if model_type in ("llama",):
        cfg["attention_bias"] = bool(row.get("attention_bias"))
        cfg["mlp_bias"] = bool(row.get("mlp_bias"))
    if model_type == "phi":
        cfg["partial_rotary_factor"] = _partial_rotary(row.get("positional")) or 0.5
        cfg["hidden_act"] = row.get("hidden_act") or "gelu_new"
        cfg.pop("head_dim", None)
    if model_type == "gemma":
        cfg["hidden_act"] = "gelu_pytorch_tanh"
    if model_type == "gpt_neox":
        cfg["use_parallel_residual"] = bool(row.get("parallel_residual"))
        cfg["rotary_pct"] = _partial_rotary(row.get("positional")) or 0.25
    return cfg


@lru_cache(maxsize=1)
def _config_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="modelmem-peers-"))


def config_dir(model_id: str, cfg: dict) -> Path:
    """A local folder holding config.json, readable by AutoConfig.from_pretrained as a model id would be."""
    folder = _config_root() / model_id.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder


# --------------------------------------------------------------------------------------------------------------
# The model built on the meta device (for exact parameter counts, LoRA trainable counts, tensor shapes)


@dataclass
class MetaModel:
    params: int                                  # unique parameters, a tied embedding once (PyTorch's count)
    tensors: dict[str, tuple[tuple[int, ...], str]]   # checkpoint tensors: name -> (shape, safetensors dtype)
    linears: list[tuple[str, int, int]]          # (qualified name, in_features, out_features)
    largest_layer_params: int


@lru_cache(maxsize=None)
def meta_model(model_id: str, dtype: str) -> MetaModel:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = hf_config(row_for(model_id), dtype)
    config = AutoConfig.from_pretrained(config_dir(model_id, cfg))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # not done for modules built under init_empty_weights; safetensors stores a tied head once
    st_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[cfg["torch_dtype"]]
    seen, params, tensors = set(), 0, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # a tied lm_head is not saved a second time in safetensors
            continue
        seen.add(id(p))
        params += p.numel()
        tensors[name] = (tuple(p.shape), st_dtype)
    linears = [(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    largest = max(p.numel() for p in model.parameters())
    return MetaModel(params=params, tensors=tensors, linears=linears, largest_layer_params=largest)


def lora_trainable(mm: MetaModel, targets: str, rank: int) -> int:
    """LoRA adds A (r x in) and B (out x r) per targeted linear (Hu et al. 2021, sec. 4)."""
    if targets == "all-linear":  # PEFT's all-linear: every linear but the output head
        chosen = [l for l in mm.linears if not l[0].endswith("lm_head")]
    else:
        wanted = {t.strip() for t in targets.split(",")}
        chosen = [l for l in mm.linears if l[0].rsplit(".", 1)[-1] in wanted]
    return sum(rank * (fin + fout) for _, fin, fout in chosen)


# --------------------------------------------------------------------------------------------------------------
# Job reading


def job_of(rec: dict) -> dict:
    job = dict(rec["job"])
    job.setdefault("mode", "inference")
    job.setdefault("dtype", "bf16")
    job.setdefault("quant", "none")
    job.setdefault("num_gpus", 1)
    job.setdefault("strategy", "none")
    job.setdefault("optimizer", "adamw")
    job.setdefault("batch_size", 1)
    return job


def weight_width(job: dict) -> tuple[str, float] | None:
    """The 'bytes per parameter' bucket a fixed-width peer or rule would use: (name, bytes), or None."""
    quant = job["quant"]
    if quant == "none":
        return {"fp32": ("fp32", 4.0), "fp16": ("fp16", 2.0), "bf16": ("bf16", 2.0)}[job["dtype"]]
    if quant in ("int8", "int8-wo", "fp8", "gguf:Q8_0"):
        return ("8-bit", 1.0)
    if quant in ("int4", "nf4", "nf4-dq", "fp4", "awq", "gptq") or quant.startswith("gguf:Q4"):
        return ("4-bit", 0.5)
    return None


def multi_gpu(job: dict) -> bool:
    n = job["num_gpus"]
    return n == "auto" or int(n) > 1


# --------------------------------------------------------------------------------------------------------------
# Rules of thumb


def gpu_count(job: dict) -> int | None:
    n = job["num_gpus"]
    return None if n == "auto" else int(n)


def seed_width(job: dict) -> float:
    """The seed's bytes/param: 4 / 2 / 1 / 0.5 for fp32 / 16-bit / 8-bit / 4-bit; a GGUF type by its digit."""
    quant = job["quant"]
    if quant.startswith("gguf:"):
        return 0.5 if "Q4" in quant else 1.0
    width = weight_width(job)
    return width[1] if width else 1.0


def rule_seed(rec: dict, job: dict, mm: MetaModel) -> Answer:
    """The seed article's rules (as modelmem's `--method seed` reproduces them): training P x 18 (6 weights +
    4 grads + 8 AdamW states; 4 for the states of SGD-style optimizers); LoRA P x bytes + trainable x 18;
    inference P x bytes; all x 1.25, split evenly over the GPUs (the seed counts GPUs as ceil(total / GPU))."""
    metric, mode = rec["expected"]["metric"], job["mode"]
    n = gpu_count(job)
    if n is None:
        return cannot("num_gpus auto: the rule picks its own count, not the record's")
    bpp, P = seed_width(job), mm.params
    if metric == "weights":
        return answer(P * bpp / n, f"weights term: {P} params x {bpp} B / {n} GPU(s)")
    if metric not in TOTAL_METRICS:
        return cannot(f"the rule has no {metric} term")
    per_trained = 6 + 4 + (8 if "adamw" in job["optimizer"] else 4)
    if mode == "inference":
        return answer(P * bpp * 1.25 / n, f"inference: P x {bpp} B x 1.25 / {n}")
    if mode == "train":
        return answer(P * per_trained * 1.25 / n, f"training: P x {per_trained} B x 1.25 / {n}")
    trainable = lora_trainable(mm, job.get("lora_targets", "all-linear"), job.get("lora_rank", 8))
    return answer((P * bpp + trainable * per_trained) * 1.25 / n,
                  f"{mode}: (P x {bpp} B + {trainable} trainable x {per_trained} B) x 1.25 / {n}")


def rule_16_bytes(rec: dict, job: dict, mm: MetaModel) -> Answer:
    """'16 bytes per parameter' for full fine-tuning with Adam in mixed precision (2 weights + 2 grads +
    4 master + 8 Adam moments; ZeRO paper, sec. 3.1), split evenly over the GPUs."""
    metric = rec["expected"]["metric"]
    if job["mode"] != "train":
        return cannot(f"the rule covers full fine-tuning only, not {job['mode']}")
    n = gpu_count(job)
    if n is None:
        return cannot("num_gpus auto: the rule picks its own count, not the record's")
    if metric not in TOTAL_METRICS:
        return cannot(f"the rule has no {metric} term")
    return answer(mm.params * 16 / n, f"P x 16 B / {n} GPU(s) (weights, grads, master, Adam); no activations")


def rule_x12(rec: dict, job: dict, mm: MetaModel) -> Answer:
    """Inference needs the weights x 1.2 (the 'add up to 20%' that accelerate's and EleutherAI's docs quote),
    weights at the seed's bytes/param, split evenly over the GPUs."""
    metric = rec["expected"]["metric"]
    if job["mode"] != "inference":
        return cannot(f"the rule covers inference only, not {job['mode']}")
    n = gpu_count(job)
    if n is None:
        return cannot("num_gpus auto: the rule picks its own count, not the record's")
    bpp = seed_width(job)
    if metric == "weights":
        return answer(mm.params * bpp / n, f"weights term: P x {bpp} B / {n}")
    if metric not in TOTAL_METRICS:
        return cannot(f"the rule has no {metric} term")
    return answer(mm.params * bpp * 1.2 / n, f"P x {bpp} B x 1.2 / {n}")


# --------------------------------------------------------------------------------------------------------------
# accelerate: what `accelerate estimate-memory` computes once it has the config


@lru_cache(maxsize=None)
def accelerate_sizes(model_id: str, dtype: str) -> tuple[int, int]:
    """(total_size, largest_layer) in fp32 bytes, exactly as accelerate.commands.estimate.gather_data gets them:
    AutoConfig + AutoModel (the base model: no LM head unless auto_map names one) built in float32 under
    init_empty_weights, then calculate_maximum_sizes."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(config_dir(model_id, hf_config(row_for(model_id), dtype)))
    with init_empty_weights():
        model = AutoModel.from_config(config, torch_dtype=torch.float32)
    total, largest = calculate_maximum_sizes(model)
    return int(total), int(largest[0])


def peer_accelerate(rec: dict, job: dict, mm: MetaModel) -> Answer:
    """accelerate's table has rows float32/float16/int8/int4 with 'Total Size' (fp32 size / 1, 2, 4, 8) and
    'Training using Adam' = max(model, gradients, optimizer, step) of estimate_training_usage: 16 B/param for
    the float32 row (step = 4 x fp32 size), 8 B/param for the float16 row (optimizer = 2 x fp32 size), N/A for
    int8/int4. The CLI offers no bfloat16 row; bf16 is read from the float16 row (same width, same formula)."""
    from accelerate.commands.estimate import estimate_training_usage

    metric, mode = rec["expected"]["metric"], job["mode"]
    if mode in ("lora", "qlora"):
        return cannot("no LoRA: its training figure is for full fine-tuning with Adam")
    if multi_gpu(job) and metric != "sum_allocated_over_gpus":
        return cannot("one device only: it gives the whole model's size, not a per-GPU share")
    total_fp32, largest_fp32 = accelerate_sizes(rec["job"]["model"], job["dtype"])
    if mode == "train":
        if job["quant"] != "none":
            return cannot("no quantized training")
        if job["optimizer"] != "adamw":
            return cannot(f"its training figure assumes Adam, not {job['optimizer']}")
        if metric not in TOTAL_METRICS:
            return cannot(f"no {metric} term")
        row = "float32" if job["dtype"] == "fp32" else "float16"
        usage = estimate_training_usage(total_fp32, row)
        return answer(max(usage.values()), f"'Training using Adam' of the {row} row = max of {usage} (no activations)")
    width = weight_width(job)
    if width is None:
        return cannot(f"quantization {job['quant']} is not one of its float32/float16/int8/int4 rows")
    row, divisor = {"fp32": ("float32", 1), "fp16": ("float16", 2), "bf16": ("float16", 2),
                    "8-bit": ("int8", 4), "4-bit": ("int4", 8)}[width[0]]
    if metric not in TOTAL_METRICS + ("weights", "sum_allocated_over_gpus"):
        return cannot(f"no {metric} term: it reports load size only")
    return answer(total_fp32 / divisor,
                  f"'Total Size' of the {row} row (fp32 size {total_fp32} / {divisor}; base model without LM head"
                  f" as its CLI builds it; largest layer {largest_fp32 // divisor} B); weights only")


# --------------------------------------------------------------------------------------------------------------
# llm-analysis


def _llm_analysis_model_config(model_id: str, dtype: str):
    """llm-analysis's own path from a Hugging Face config (get_model_config_from_hf): it keeps layers, heads,
    hidden, vocab, kv heads and max positions, and ignores intermediate_size (FFN = 4h), biases and the
    untied LM head (the embedding is counted once)."""
    from llm_analysis.config import get_model_config_from_hf

    return get_model_config_from_hf(str(config_dir(model_id, hf_config(row_for(model_id), dtype))))


def _llm_analysis_gpu():
    # The GPU only gates llm-analysis's "does it fit" asserts and its latency figures, never a memory term;
    # a roomy synthetic device lets it report its memory estimate even where it would say "does not fit".
    from llm_analysis.config import GPUConfig

    return GPUConfig(name="roomy", mem_per_GPU_in_GB=100_000, hbm_bandwidth_in_GB_per_sec=2000,
                     intra_node_bandwidth_in_GB_per_sec=300, intra_node_min_message_latency=8e-6,
                     peak_fp16_TFLOPS=312)


def peer_llm_analysis(rec: dict, job: dict, mm: MetaModel) -> Answer:
    from llm_analysis.analysis import ActivationRecomputation, DSZeRO, LLMAnalysis
    from llm_analysis.config import DtypeConfig, ParallelismConfig

    metric, mode = rec["expected"]["metric"], job["mode"]
    if mode in ("lora", "qlora"):
        return cannot("no LoRA: training() models full fine-tuning only")
    width = weight_width(job)
    if width is None:
        return cannot(f"quantization {job['quant']}: weight_bits is one uniform width (4/8/16)")
    n = 1 if job["num_gpus"] == "auto" else int(job["num_gpus"])
    strategy = job["strategy"]
    tp = n if strategy == "tp" else 1
    pp = n if strategy in ("pp", "layer-split") else 1
    dp = n if strategy in ("ddp", "zero1", "zero2", "zero3", "fsdp") else 1
    zero = {"zero1": DSZeRO.STAGE_1, "zero2": DSZeRO.STAGE_2, "zero3": DSZeRO.STAGE_3,
            "fsdp": DSZeRO.STAGE_3}.get(strategy, DSZeRO.NONE)
    if job.get("offload", "none") != "none":
        return cannot("no CPU offload")
    if metric == "sum_allocated_over_gpus":
        return cannot("reports per-GPU memory only")
    act_bits = 32 if job["dtype"] == "fp32" else 16
    w_bits = {"fp32": 32, "fp16": 16, "bf16": 16, "8-bit": 8, "4-bit": 4}[width[0]]
    emb_bits = 32 if job["dtype"] == "fp32" else 16  # its quantized configs keep the embedding at 16 bits
    dtype_cfg = DtypeConfig(name=f"w{w_bits}a{act_bits}e{emb_bits}", weight_bits=w_bits,
                            activation_bits=act_bits, embedding_bits=emb_bits)
    la = LLMAnalysis(_llm_analysis_model_config(rec["job"]["model"], job["dtype"]), _llm_analysis_gpu(),
                     dtype_config=dtype_cfg, parallelism_config=ParallelismConfig(tp_size=tp, pp_size=pp, dp_size=dp))
    if mode == "inference":
        # inference() divides by the generated-token count; a weights-only record generates none, and the
        # weights do not depend on it, so at least one token is asked for.
        new_tokens = max(job.get("new_tokens", 0), 1)
        seq = job.get("seq_len", 1)
        kv_bytes = {"fp8": 1, "int8": 1, "int4": 0.5}.get(job.get("kv_dtype", "bf16"), act_bits // 8)
        s = la.inference(batch_size_per_gpu=job["batch_size"], seq_len=seq, num_tokens_to_generate=new_tokens,
                         ds_zero=zero, kv_cache_dtype_bytes=kv_bytes)
        w, kv = s["weight_memory_per_gpu"], s["kv_cache_memory_per_gpu"]
        act = max(s["prefill_activation_memory_per_gpu"], s["decode_activation_memory_per_gpu"])
        if metric == "weights":
            return answer(w, "weight_memory_per_gpu")
        if metric == "kv_cache":
            return answer(kv, "kv_cache_memory_per_gpu")
        if metric not in TOTAL_METRICS:
            return cannot(f"no {metric} term")
        return answer(w + kv + act, f"weight {w:.0f} + kv_cache {kv:.0f} + max(prefill, decode) activation {act:.0f}")
    # Full training.
    if job["quant"] != "none":
        return cannot("no quantized training")
    opt = job["optimizer"]
    pure = job.get("precision", "pure") == "pure"
    wbytes = w_bits // 8
    # other_op_bytes: optimizer state per parameter beyond the master copy (None = Adam's fp32 m and v).
    # In pure low precision the states are kept in the weights' dtype.
    state_bytes = {"adamw": None if not pure else 2 * wbytes, "adamw-8bit": 2, "paged-adamw-8bit": 2,
                   "paged-adamw": None if not pure else 2 * wbytes, "sgd": 0, "sgd-momentum": wbytes,
                   "lion": wbytes}
    if opt not in state_bytes:
        return cannot(f"optimizer {opt}: only a per-parameter state width can be given")
    recompute = {"none": ActivationRecomputation.NONE, "selective": ActivationRecomputation.SELECTIVE,
                 "full": ActivationRecomputation.FULL}[job.get("grad_checkpointing", "none")]
    gated = row_for(rec["job"]["model"])["model_type"].split()[0] in ("llama", "mistral", "gemma", "qwen2")
    s = la.training(batch_size_per_gpu=job["batch_size"], gradient_accumulation_steps=1, seq_len=job.get("seq_len"),  # None: its default
                    activation_recomputation=recompute, ds_zero=zero,
                    # pure: no fp32 master copy exists, but llm-analysis always counts one; the closest input is
                    # a master copy (and gradients) in the weights' dtype.
                    master_weights_dtype_bytes=wbytes if pure else 4, other_op_bytes=state_bytes[opt],
                    flash_attn=job.get("attention", "sdpa") != "eager", mlp_gated_linear_units=gated)
    if metric == "weights":
        return answer(s["weight_memory_per_gpu"], "weight_memory_per_gpu")
    if metric not in TOTAL_METRICS:
        return cannot(f"no {metric} term")
    return answer(s["(weight+op_state+grad+act)_memory_per_gpu"], "(weight+op_state+grad+act)_memory_per_gpu")


# --------------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO model-state estimators (the *_all_cold functions print a table computed by these two)


def peer_deepspeed(rec: dict, job: dict, mm: MetaModel) -> Answer:
    """GPU bytes of params + grads + optimizer states for mixed-precision Adam under ZeRO-2/3
    (2 B fp16 params + 18 B/N of fp16/fp32 grads, fp32 master and Adam moments); no activations."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    metric, mode, strategy = rec["expected"]["metric"], job["mode"], job["strategy"]
    if mode == "inference":
        return cannot("training model states only; no inference")
    if mode in ("lora", "qlora"):
        return cannot("no LoRA: it counts optimizer states for every parameter")
    if job["optimizer"] != "adamw":
        return cannot(f"assumes Adam; optimizer {job['optimizer']} cannot be given")
    if strategy in ("tp", "pp", "layer-split", "zero1"):
        return cannot(f"strategy {strategy}: the estimators cover ZeRO-2 and ZeRO-3 only")
    if metric not in TOTAL_METRICS:
        return cannot(f"no {metric} term")
    n = 1 if job["num_gpus"] == "auto" else int(job["num_gpus"])
    offload = job.get("offload", "none")
    if strategy in ("zero3", "fsdp"):
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            mm.params, mm.largest_layer_params, num_gpus_per_node=n, num_nodes=1,
            cpu_offload=offload != "none", cpu_offload_params=offload == "params", zero_init=True)
        return answer(gpu, f"ZeRO-3 per-GPU model states over {n} GPU(s), offload={offload}")
    # none / ddp: every GPU holds all states, which is ZeRO-2's formula with one GPU.
    shards = n if strategy == "zero2" else 1
    if offload == "params":
        return cannot("ZeRO-2 has no parameter offload")
    _, gpu = estimate_zero2_model_states_mem_needs(mm.params, num_gpus_per_node=shards, num_nodes=1,
                                                   cpu_offload=offload == "optimizer")
    return answer(gpu, f"ZeRO-2 per-GPU model states over {shards} GPU(s), offload={offload}")


# --------------------------------------------------------------------------------------------------------------
# hf-mem against a loopback Hub


class FakeHub:
    """Serves, on 127.0.0.1, what hf-mem reads from the Hub: the repo tree, config.json and the safetensors
    header of a single model.safetensors (header only; byte ranges past it are answered with zeros)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> {file path: bytes served (a header at most)}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the benchmark output clean
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                for repo, files in hub.repos.items():
                    if path == f"/api/models/{repo}/tree/main":
                        tree = [{"type": "file", "path": name} for name in files]
                        return self._send(200, json.dumps(tree).encode(), "application/json")
                    for name, body in files.items():
                        if path == f"/{repo}/resolve/main/{name}":
                            m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                            if not m:
                                return self._send(200, body, "application/octet-stream")
                            end = int(m.group(2)) if m.group(2) else len(body) - 1
                            return self._send(206, body[int(m.group(1)):end + 1], "application/octet-stream")
                self._send(404, b"not found", "text/plain")

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, model_id: str, config: dict, mm: MetaModel) -> None:
        entries, offset = {"__metadata__": {"format": "pt"}}, 0
        width = {"F32": 4, "F16": 2, "BF16": 2}
        for name, (shape, dtype) in mm.tensors.items():
            n = 1
            for d in shape:
                n *= d
            entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n * width[dtype]]}
            offset += n * width[dtype]
        blob = json.dumps(entries, separators=(",", ":")).encode()
        header = len(blob).to_bytes(8, "little") + blob
        self.repos[model_id] = {"config.json": json.dumps(config).encode(), "model.safetensors": header}

    def add_gguf(self, repo: str, filename: str, header: bytes) -> None:
        self.repos[repo] = {filename: header}

    def close(self) -> None:
        self.server.shutdown()


_HUB: FakeHub | None = None


def _hub() -> FakeHub:
    global _HUB
    if _HUB is None:
        _HUB = FakeHub()
        _redirect_hf_mem(_HUB.port)
    return _HUB


def _redirect_hf_mem(port: int) -> None:
    """hf-mem 0.5.6 builds https://huggingface.co/... URLs itself and ignores HF_ENDPOINT, so its HTTP client
    is given a transport that sends those requests to the loopback server instead. Nothing else is changed."""
    import httpx2
    import hf_mem.run  # noqa: F401 - hf_mem/__init__ rebinds the name `run` to a function; the module is below

    run_module = sys.modules["hf_mem.run"]

    class Loopback(httpx2.AsyncBaseTransport):
        def __init__(self):
            self.inner = httpx2.AsyncHTTPTransport()

        async def handle_async_request(self, request):
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
            return await self.inner.handle_async_request(request)

        async def aclose(self):
            await self.inner.aclose()

    class Client(httpx2.AsyncClient):
        def __init__(self, *args, **kwargs):
            kwargs["http2"] = False
            kwargs["trust_env"] = False  # no proxy mounts: every request goes through the loopback transport
            kwargs["transport"] = Loopback()
            super().__init__(*args, **kwargs)

    class Namespace:
        def __getattr__(self, name):
            return Client if name == "AsyncClient" else getattr(httpx2, name)

    run_module.httpx2 = Namespace()
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"  # stated for completeness; hf-mem does not read it


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(8, "little") + raw


def gguf_q8_0_header(cfg: dict, mm: MetaModel) -> bytes:
    """The metadata section of a GGUF file as llama.cpp writes a Q8_0 model (GGUF v3: magic, version, tensor
    count, key/values, tensor infos): every 2-D weight Q8_0 (type 8), 1-D norms F32 (type 0), as llama-quantize
    and convert_hf_to_gguf --outtype q8_0 do. Only the header exists; hf-mem reads nothing past it."""
    import struct

    arch = "llama"
    kv = {f"{arch}.block_count": cfg["num_hidden_layers"], f"{arch}.head_count": cfg["num_attention_heads"],
          f"{arch}.head_count_kv": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
          f"{arch}.embedding_length": cfg["hidden_size"],
          f"{arch}.context_length": cfg.get("max_position_embeddings", 8192), "general.file_type": 7}
    body = _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string(arch)
    for key, value in kv.items():
        body += _gguf_string(key) + struct.pack("<I", 4) + struct.pack("<I", value)  # 4 = UINT32
    offset = 0
    for name, (shape, _) in mm.tensors.items():
        gtype = 8 if len(shape) == 2 else 0
        n = 1
        for d in shape:
            n *= d
        body += _gguf_string(name) + struct.pack("<I", len(shape))
        body += b"".join(struct.pack("<Q", d) for d in reversed(shape))  # GGUF lists ne0 (innermost) first
        body += struct.pack("<IQ", gtype, offset)
        offset += n * 34 // 32 if gtype == 8 else n * 4  # Q8_0: 32 int8 + one fp16 scale per block
    return b"GGUF" + struct.pack("<IQQ", 3, len(mm.tensors), len(kv) + 1) + body


def peer_hf_mem(rec: dict, job: dict, mm: MetaModel) -> Answer:
    """hf-mem sums the bytes of the checkpoint's tensors from the safetensors header and, with --experimental,
    adds a KV cache for max_model_len x batch_size. No activations; no quantization applied at load time."""
    from hf_mem.run import arun

    metric, mode = rec["expected"]["metric"], job["mode"]
    if mode != "inference":
        return cannot("inference only (weights + KV cache)")
    quant = job["quant"]
    if quant != "none" and not quant.startswith("gguf:"):
        return cannot(f"it reads the checkpoint's stored dtypes; quantization at load ({quant}) cannot be given")
    if multi_gpu(job):
        return cannot("one device only: no per-GPU share")
    if metric not in TOTAL_METRICS + ("weights", "kv_cache"):
        return cannot(f"no {metric} term")
    model_id = rec["job"]["model"]
    cfg = hf_config(row_for(model_id), job["dtype"])
    hub = _hub()
    max_len = job.get("seq_len", 1) + job.get("new_tokens", 0)
    if quant.startswith("gguf:"):
        if quant != "gguf:Q8_0" or cfg["model_type"] != "llama":
            # A gap in this harness: other GGUF types mix per-tensor types by llama.cpp rules not rebuilt here.
            return Answer(error=f"not run: the loopback Hub builds llama Q8_0 GGUF headers only, not {quant}")
        repo, filename = f"{model_id}-GGUF", "model-Q8_0.gguf"
        hub.add_gguf(repo, filename, gguf_q8_0_header(cfg, mm))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = asyncio.run(arun(model_id=repo, revision="main", hf_token=None, experimental=True,
                                      max_model_len=max_len, batch_size=job["batch_size"], kv_cache_dtype="auto",
                                      gguf_file=filename, details=False))
        if metric == "weights":
            return answer(result.memory, "GGUF tensor bytes at hf-mem's bits/weight (Q8_0 8.5)")
        if metric == "kv_cache":
            return answer(result.kv_cache, f"--experimental KV cache (F16), max_model_len {max_len}")
        return answer(result.total_memory, f"GGUF tensor bytes + F16 KV cache for max_model_len {max_len}")
    if model_id not in hub.repos:
        hub.add(model_id, cfg, mm)
    kv_dtype = {"fp8": "fp8", "bf16": "bfloat16"}.get(job.get("kv_dtype", "bf16"), "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = asyncio.run(arun(model_id=model_id, revision="main", hf_token=None, experimental=True,
                                  max_model_len=max_len, batch_size=job["batch_size"], kv_cache_dtype=kv_dtype,
                                  gguf_file=None, details=False))
    if metric == "weights":
        return answer(result.memory, "safetensors bytes")
    if metric == "kv_cache":
        if result.kv_cache is None:
            return cannot("no KV cache estimate for this config")
        return answer(result.kv_cache, f"--experimental KV cache, max_model_len {max_len}")
    kv_note = "no KV cache (its estimator needs hidden_size/num_hidden_layers/num_attention_heads keys)" \
        if result.kv_cache is None else f"+ KV cache {result.kv_cache} for max_model_len {max_len}"
    return answer(result.total_memory, f"safetensors bytes {result.memory} {kv_note}")


# --------------------------------------------------------------------------------------------------------------

RUNNERS = {
    "accelerate": peer_accelerate,
    "llm-analysis": peer_llm_analysis,
    "deepspeed": peer_deepspeed,
    "hf-mem": peer_hf_mem,
    "seed": rule_seed,
    "16-bytes-per-param": rule_16_bytes,
    "weights-x1.2": rule_x12,
}


def run_peer(peer: str, rec: dict) -> Answer:
    if peer in PACKAGE and peer_version(peer) is None:
        return Answer(error=f"did not install: {PACKAGE[peer]} is not importable in {sys.prefix}")
    model = rec["job"].get("model")
    if not model:
        return cannot("the record runs no model")
    if row_for(model) is None:
        return cannot(f"no config row for {model} in the validation data")
    if rec.get("architecture_family") != "decoder":
        # A gap in this harness (its config.json builder covers decoder rows), not a verdict on the peer.
        return Answer(error=f"not run: {rec.get('architecture_family')} model; this harness builds decoder configs only")
    job = job_of(rec)
    try:
        mm = meta_model(model, job["dtype"])
    except Exception as e:  # noqa: BLE001 - recorded, never dropped
        return Answer(error=f"could not build {model} from its config row: {type(e).__name__}: {e}")
    try:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            return RUNNERS[peer](rec, job, mm)
    except Exception as e:  # noqa: BLE001 - a peer's failure is a result too
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return Answer(error=f"{type(e).__name__}: {str(e)[:300]} (at {Path(tb.filename).name}:{tb.lineno})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--all", action="store_true", help="every record with a model, not only the scored ones")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of peers to run")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # llm-analysis and DeepSpeed log every step at INFO/WARNING
    warnings.filterwarnings("ignore")

    records = load_jsonl(VALIDATION / "measured.jsonl")
    records = [r for r in records if args.all or is_scored(r)]
    peers = [p for p in args.peers.split(",") if p]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    counts = {p: [0, 0, 0] for p in peers}
    with open(args.out, "w", encoding="utf-8") as f:
        for rec in records:
            for peer in peers:
                a = run_peer(peer, rec)
                counts[peer][0 if a.estimate_bytes is not None else 1 if a.cannot_express else 2] += 1
                row = {"record_id": rec["id"], "peer": peer, "peer_version": peer_version(peer),
                       "metric": rec["expected"]["metric"], "scored": is_scored(rec),
                       "estimate_bytes": a.estimate_bytes, "cannot_express": a.cannot_express,
                       "error": a.error, "note": a.note}
                f.write(json.dumps(row) + "\n")
    print(f"wrote {len(records) * len(peers)} rows for {len(records)} records to {args.out}")
    for peer, (ok, no, err) in counts.items():
        print(f"  {peer:20s} {peer_version(peer) or 'missing':10s} expressed {ok:3d}  cannot express {no:3d}  errors {err:3d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
