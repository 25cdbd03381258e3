"""The job: what is run on the model, in the vocabulary of shared/validation/JOBS.md.

`make_job(**fields)` checks every field and returns a frozen `Job`; fields left out take defaults, some of
which depend on the runtime (torchtune and LitGPT train in pure bf16, HF Trainer in mixed precision) or on the
mode. `Job.to_dict()` is the resolved job as the JSON output shows it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelmem import limits
from modelmem.dtypes import GGUF_FILE_TYPES
from modelmem.errors import InvalidJobError
from modelmem.runtimes.profiles import RUNTIMES, lookup_profile, training_runtimes

MODES = ("inference", "train", "lora", "qlora")
DTYPES = ("fp32", "fp16", "bf16")
PRECISIONS = ("pure", "mixed")
QUANTS = ("none", "int8", "int8-wo", "nf4", "fp4", "nf4-dq", "int4", "fp8", "awq", "gptq", "mxfp4")  # plus gguf:<TYPE>
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit", "paged-adamw", "sgd", "sgd-momentum", "adafactor", "lion")
KV_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "f16", "q8_0", "q4_0")  # the last three: llama.cpp -ctk/-ctv
CHECKPOINTING = ("none", "full", "selective")
ATTENTIONS = ("eager", "sdpa", "flash")
STRATEGIES = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp", "tp", "pp", "layer-split")
OFFLOADS = ("none", "optimizer", "params")
LOSSES = ("full", "chunked")
PP_SCHEDULES = ("1f1b", "interleaved", "gpipe")
METHODS = ("detailed", "seed")
INTERCONNECTS = ("auto", "nvlink", "pcie", "infiniband")  # auto: the device's own link within 8 GPUs, InfiniBand beyond

TRAINING_MODES = ("train", "lora", "qlora")
LORA_MODES = ("lora", "qlora")
INFERENCE_MODES = ("inference",)
DEFAULT_GPU = "h100-80gb"


@dataclass(frozen=True)
class FieldSpec:
    """How one job field is checked, defaulted, offered on the command line and documented."""

    kind: str  # choice | int | float | bool | quant | targets | gpus | name | version
    help: str
    choices: tuple[str, ...] = ()
    minimum: float = 0  # int: value ≥ minimum; float: minimum < value ≤ maximum
    maximum: float = 0
    modes: tuple[str, ...] = MODES  # the modes it applies to: giving it in another mode is an error
    runtimes: tuple[str, ...] = ()  # the runtimes it applies to (empty: all)
    default_rule: Callable[[Mapping[str, Any]], Any] | None = None  # default from the other fields' values
    # Integer fields: the upper bound (modelmem.limits), so that no accepted job takes unbounded time or memory.
    limit: Any = None

    def allowed(self) -> str:
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "int":
            return f"an integer ≥ {int(self.minimum)}" + (f" and ≤ {self.limit.maximum:,d}" if self.limit else "")
        if self.kind == "float":
            return "a fraction in (0, 1]" if (self.minimum, self.maximum) == (0, 1) else f"a number in ({self.minimum:g}, {self.maximum:g}]"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "gpus":
            return "an integer ≥ 1 or auto"
        return self.help


def _field(default: Any, kind: str, help: str, **meta: Any) -> Any:
    """One job field: its default and its FieldSpec, declared together."""
    return dataclasses.field(default=default, metadata={"job": FieldSpec(kind, help, **meta)})


def _default_precision(f: Mapping[str, Any]) -> str:
    # torchtune and LitGPT train in pure bf16 by default; HF Trainer keeps fp32 master weights (mixed).
    return "pure" if f["dtype"] == "fp32" else lookup_profile(f["runtime"], f["runtime_version"]).default_precision


def _default_kv_dtype(f: Mapping[str, Any]) -> str:
    # The compute dtype, unless the runtime has its own default cache type (llama.cpp and Ollama: f16).
    return lookup_profile(f["runtime"], f["runtime_version"]).default_kv_dtype or f["dtype"]


def _default_strategy(f: Mapping[str, Any]) -> str:
    # FSDP (full shard) for training; for inference the runtime's own (tensor parallel; llama.cpp splits layers).
    if f["num_gpus"] == 1:
        return "none"
    if f["mode"] in TRAINING_MODES:
        return "fsdp"
    return "layer-split" if lookup_profile(f["runtime"], f["runtime_version"]).gpu_layer_split else "tp"


@dataclass(frozen=True)
class Job:
    """A job in the vocabulary of shared/validation/JOBS.md. Each field declares its checks, defaults, the modes
    and runtimes it applies to and its help; make_job, the CLI flags and the JSON are all built from them."""

    mode: str = _field("inference", "choice", "what runs: inference, full training, LoRA or QLoRA", choices=MODES)
    dtype: str = _field("bf16", "choice", "compute dtype of weights and activations", choices=DTYPES)
    precision: str = _field("mixed", "choice", "pure: weights and grads in dtype; mixed: fp32 masters under autocast "
                            "(default: the runtime's habit)", choices=PRECISIONS, modes=TRAINING_MODES,
                            default_rule=_default_precision)
    quant: str = _field("none", "quant", f"{', '.join(QUANTS)}, gguf:<TYPE> (qlora default nf4)",
                        default_rule=lambda f: "nf4" if f["mode"] == "qlora" else "none")
    optimizer: str = _field("adamw", "choice", "the optimizer whose states are kept", choices=OPTIMIZERS,
                            modes=TRAINING_MODES)
    batch_size: int = _field(1, "int", "sequences per step (per GPU)", minimum=1, limit=limits.BATCH)
    seq_len: int = _field(2048, "int", "training: tokens per sequence; inference: prompt tokens", minimum=1, limit=limits.SEQ_LEN)
    new_tokens: int = _field(0, "int", "inference: generated tokens", minimum=0, modes=INFERENCE_MODES, limit=limits.NEW_TOKENS)
    kv_dtype: str = _field("bf16", "choice", "KV-cache dtype (default: dtype)", choices=KV_DTYPES,
                           modes=INFERENCE_MODES, default_rule=_default_kv_dtype)
    grad_checkpointing: str = _field("none", "choice", "activation checkpointing (full reduces activation memory)",
                                     choices=CHECKPOINTING, modes=TRAINING_MODES)
    attention: str = _field("sdpa", "choice", "attention kernel (eager stores the s×s scores)", choices=ATTENTIONS)
    lora_rank: int = _field(8, "int", "LoRA rank r", minimum=1, modes=LORA_MODES, limit=limits.LORA_RANK)
    lora_alpha: int = _field(16, "int", "LoRA alpha", minimum=1, modes=LORA_MODES, limit=limits.LORA_ALPHA)
    # PEFT's per-architecture default (q and v projections) until resolved.
    lora_targets: str = _field("default", "targets", "all-linear or a comma list such as q_proj,v_proj "
                               "(default: PEFT's per-model default)", modes=LORA_MODES)
    num_gpus: int | str = _field("auto", "gpus", "GPUs sharing the job; auto: the fewest that fit", limit=limits.GPUS)
    strategy: str = _field("none", "choice", "how GPUs share the job (default: fsdp for training, tp for inference)",
                           choices=STRATEGIES, default_rule=_default_strategy)
    offload: str = _field("none", "choice", "ZeRO-Offload to CPU memory", choices=OFFLOADS, modes=TRAINING_MODES)
    # a catalog name, a size ("24GiB", "metal:36GB") or a GPUInfo description
    gpu: Any = _field(DEFAULT_GPU, "gpu", f"a GPU name (see `modelmem gpus`; default {DEFAULT_GPU}) or any device by "
                      "size: 24GiB, 80GB, metal:36GB (Apple), rocm:24GiB (AMD)")
    runtime: str = _field("hf", "choice", "the software whose habits apply (runtimes/profiles.py)", choices=RUNTIMES)
    runtime_version: str | None = _field(None, "version", "the runtime's version where habits differ by version "
                                         "(default: the version its profile was read from)",
                                         default_rule=lambda f: lookup_profile(f["runtime"], None).version)
    compile: bool = _field(False, "bool", "torch.compile")
    optimizer_in_backward: bool = _field(False, "bool", "step each parameter as its gradient is ready",
                                         modes=TRAINING_MODES)
    activation_offload: bool = _field(False, "bool", "saved activations streamed to CPU", modes=TRAINING_MODES)
    loss: str = _field("full", "choice", "chunked never materializes all fp32 logits", choices=LOSSES,
                       modes=TRAINING_MODES)
    quant_group_size: int = _field(128, "int", "group size for int4, gptq, awq", minimum=1, limit=limits.GROUP_SIZE)
    gpu_memory_utilization: float = _field(0.9, "float", "share of GPU memory vLLM may fill", minimum=0, maximum=1,
                                           modes=INFERENCE_MODES, runtimes=("vllm",))
    max_model_len: int | None = _field(None, "int", "vLLM's longest request (default: the model's own limit)", minimum=1,
                                       modes=INFERENCE_MODES, runtimes=("vllm",), limit=limits.SEQ_LEN)
    # None = vLLM's default for the device (V1: 1024 on ≥ 70 GiB GPUs other than A100, else 256)
    max_num_seqs: int | None = _field(None, "int", "vLLM's most concurrent requests (default: vLLM's for the GPU)",
                                      minimum=1, modes=INFERENCE_MODES, runtimes=("vllm",), limit=limits.NUM_SEQS)
    max_num_batched_tokens: int | None = _field(None, "int", "vLLM's tokens per scheduler step, which sizes its profile "
                                                "run (default: vLLM's for the GPU)", minimum=1, modes=INFERENCE_MODES,
                                                runtimes=("vllm",), limit=limits.SEQ_LEN)
    block_size: int = _field(16, "int", "vLLM's tokens per KV block", minimum=1, modes=INFERENCE_MODES,
                             runtimes=("vllm",), limit=limits.BLOCK_SIZE)
    # llama.cpp --n-gpu-layers; None = as many as fit (llama.cpp --fit, which Ollama relies on)
    gpu_layers: int | None = _field(None, "int", "llama.cpp -ngl: blocks and output layer on the GPU (default: as many as "
                                    "fit)", minimum=0, modes=INFERENCE_MODES, runtimes=("llamacpp", "ollama"),
                                    limit=limits.GPU_LAYERS)
    # None = llama.cpp's -c 4096 (at least the job's tokens); Ollama's VRAM-tier default
    n_ctx: int | None = _field(None, "int", "llama.cpp -c / Ollama num_ctx: KV-cache cells (default: 4096; Ollama: by "
                               "VRAM)", minimum=1, modes=INFERENCE_MODES, runtimes=("llamacpp", "ollama"),
                               limit=limits.SEQ_LEN)
    parallel: int | None = _field(None, "int", "llama.cpp -np / OLLAMA_NUM_PARALLEL: request slots (Ollama multiplies "
                                  "the context by it; default 1)", minimum=1, modes=INFERENCE_MODES,
                                  runtimes=("llamacpp", "ollama"), limit=limits.NUM_SEQS)
    flash_attention: bool = _field(True, "bool", "llama.cpp -fa (auto turns it on on CUDA); off keeps the score matrix "
                                   "and needs an f16 V cache", modes=INFERENCE_MODES, runtimes=("llamacpp", "ollama"))
    # None = modelmem.speed's stated default
    mfu: float | None = _field(None, "float", "model-FLOPs utilisation for the time estimates (default 0.40: published "
                               "Llama 3 / PaLM / Megatron-LM training MFU)", minimum=0, maximum=1)
    interconnect: str = _field("auto", "choice", "the link the time estimates move collectives over (auto: the GPU's "
                               "own link up to 8 GPUs, InfiniBand beyond)", choices=INTERCONNECTS)
    # The parallel layout (modelmem.parallel): n = dp × tp × pp × cp GPUs, experts over ep of the data-parallel ranks.
    tp: int = _field(1, "int", "tensor-parallel degree (Megatron: heads and MLP columns split; keep it within a node)",
                     minimum=1, limit=limits.GPUS)
    pp: int = _field(1, "int", "pipeline-parallel stages (the first holds the embedding, the last the LM head)", minimum=1, limit=limits.GPUS)
    cp: int = _field(1, "int", "context-parallel degree: the sequence split over GPUs", minimum=1, modes=TRAINING_MODES, limit=limits.GPUS)
    ep: int = _field(1, "int", "expert-parallel degree for MoE: experts split over data-parallel ranks", minimum=1, limit=limits.GPUS)
    sequence_parallel: bool = _field(False, "bool", "Megatron sequence parallelism with tp (splits the norms' and "
                                     "dropouts' activations too; true lowers memory)", modes=TRAINING_MODES)
    grad_accum: int = _field(1, "int", "gradient-accumulation steps: the pipeline's micro-batches per step",
                             minimum=1, modes=TRAINING_MODES, limit=limits.BATCH)
    pp_schedule: str = _field("1f1b", "choice", "pipeline schedule (gpipe keeps every micro-batch's activations; "
                              "interleaved adds (1 + (pp−1)/(pp·v)))", choices=PP_SCHEDULES, modes=TRAINING_MODES)
    pp_virtual: int = _field(1, "int", "model chunks per pipeline stage (interleaved schedule: ≥ 2)", minimum=1,
                             modes=TRAINING_MODES, limit=limits.LAYERS)
    shard_group: int = _field(0, "int", "hybrid sharding (HSDP): ranks one FSDP/ZeRO-3 shard spans, replicated "
                              "across groups (0: all ranks)", minimum=0, modes=TRAINING_MODES, limit=limits.GPUS)
    gpus_per_node: int = _field(8, "int", "GPUs in one node (plan rounds to whole nodes)", minimum=1, limit=limits.GPUS)

    @property
    def training(self) -> bool:
        return self.mode in TRAINING_MODES

    @property
    def uses_lora(self) -> bool:
        return self.mode in LORA_MODES

    @property
    def tokens(self) -> int:
        """Tokens per sequence the step holds: training seq_len; inference prompt + generated."""
        return self.seq_len + (0 if self.training else self.new_tokens)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(self.gpu, str):
            d["gpu"] = self.gpu.to_dict()
        return d


FIELD_SPECS: dict[str, FieldSpec] = {f.name: f.metadata["job"] for f in dataclasses.fields(Job)}
FIELDS = tuple(FIELD_SPECS)
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Job)}  # before default rules


def cli_flag(name: str) -> str:
    """The command-line flag of a job field: --batch-size for batch_size."""
    return "--" + name.replace("_", "-")


def _as_int(field: str, value: Any, minimum: int) -> int:
    bound = FIELD_SPECS[field].limit.maximum
    allowed = f"an integer ≥ {minimum} and ≤ {bound:,d}"
    shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "…"
    if isinstance(value, bool):
        raise InvalidJobError(field, value, allowed)
    try:
        if isinstance(value, float):
            if not value.is_integer():  # nan, inf and 2.5 alike
                raise ValueError(value)
            number = int(value)
        elif isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            if len(text) > limits.DIGITS.maximum:  # before int(): Python refuses 4,300+ digits with its own error
                raise ValueError(text)
            number = int(text)
    except (TypeError, ValueError, OverflowError):
        raise InvalidJobError(field, shown, allowed) from None
    if not minimum <= number <= bound:
        raise InvalidJobError(field, shown, allowed)
    return number


def _as_bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise InvalidJobError(field, value, "true or false")


def check_quant(value: str) -> str:
    if value in QUANTS:
        return value
    if value.lower().startswith("gguf:"):
        file_type = value[5:].strip().upper()
        if file_type in GGUF_FILE_TYPES:
            return "gguf:" + file_type
        raise InvalidJobError("quant", value[:60], "gguf:<TYPE> with TYPE one of " + ", ".join(GGUF_FILE_TYPES))
    raise InvalidJobError("quant", value[:60], ", ".join(QUANTS) + " or gguf:<TYPE> (e.g. gguf:Q4_K_M)")


def _check_value(name: str, spec: FieldSpec, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128 \
            and spec.kind not in ("int", "gpus", "float"):
        # str() of a 4,300-digit int raises Python's own ValueError; no field takes numbers this large anyway.
        raise InvalidJobError(name, value, "a value within modelmem's limits (modelmem.limits)")
    if spec.kind == "choice":
        text = str(value).strip().lower()
        if text not in spec.choices:
            raise InvalidJobError(name, value, spec.allowed())
        return text
    if spec.kind == "int":
        return _as_int(name, value, int(spec.minimum))
    if spec.kind == "bool":
        return _as_bool(name, value)
    if spec.kind == "float":
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # float(10**400) overflows
            raise InvalidJobError(name, value, spec.allowed()) from None
        if isinstance(value, bool) or not spec.minimum < number <= spec.maximum:
            raise InvalidJobError(name, value, spec.allowed())
        return number
    if spec.kind == "gpus":
        return "auto" if str(value).strip().lower() == "auto" else _as_int(name, value, 1)
    if spec.kind == "quant":
        return check_quant(str(value).strip())
    if spec.kind == "targets":
        return _check_targets(value)
    if spec.kind == "version":
        text = str(value).strip()
        if not text or not all(part.isalnum() for part in text.replace(".", " ").split()):
            raise InvalidJobError(name, value, "a version such as 0.4 or 5.24")
        return text
    if spec.kind == "gpu":
        from modelmem.catalog.gpus import check_gpu

        return check_gpu(value)
    return str(value).strip().lower()


def make_job(**fields: Any) -> Job:
    """Validate job fields (JOBS.md names) and fill defaults. Raises InvalidJobError naming the field."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InvalidJobError(unknown[0], fields[unknown[0]], "a job field: " + ", ".join(FIELDS))
    clean = {name: _check_value(name, FIELD_SPECS[name], value) for name, value in fields.items() if value is not None}
    mode = clean.get("mode", DEFAULTS["mode"])
    runtime = clean.get("runtime", DEFAULTS["runtime"])
    for name, value in clean.items():
        spec = FIELD_SPECS[name]
        if mode not in spec.modes:
            raise InvalidJobError(name, value, f"nothing in {mode} mode (it applies to {', '.join(spec.modes)})")
        if spec.runtimes and runtime not in spec.runtimes:
            raise InvalidJobError(name, value, f"nothing unless runtime is {' or '.join(spec.runtimes)}")
    resolved = {**DEFAULTS, **clean}
    if "runtime_version" in clean:
        lookup_profile(runtime, clean["runtime_version"])  # an unknown version is an error naming the field
    for name, spec in FIELD_SPECS.items():
        if spec.default_rule is not None and name not in clean:
            resolved[name] = spec.default_rule(resolved)
    return Job(**_check_combinations(resolved, clean))


def _check_targets(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).strip()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(not n.replace("_", "").replace(".", "").replace("-", "").isalnum() for n in names):
        raise InvalidJobError("lora_targets", value, "all-linear or a comma list of module names such as q_proj,v_proj")
    return ",".join(names)


def _check_combinations(job: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Rules between fields that no single field's declaration can state."""
    mode, training = job["mode"], job["mode"] in TRAINING_MODES
    if job["dtype"] == "fp32" and job["precision"] == "mixed" and training:
        raise InvalidJobError("precision", "mixed", "pure when dtype is fp32 (mixed keeps fp32 masters of fp16/bf16 weights)")
    if mode == "qlora":
        if job["quant"] not in ("nf4", "fp4", "nf4-dq", "int8", "int4", "gptq", "awq"):
            raise InvalidJobError("quant", job["quant"], "nf4, fp4, nf4-dq, int8, int4, gptq or awq for a qlora base")
    elif mode in ("train", "lora") and job["quant"] != "none":
        raise InvalidJobError("quant", job["quant"], "none in train and lora modes (use mode qlora to train adapters on a quantized base)")
    if job["strategy"] in ("ddp", "zero1", "zero2", "zero3", "fsdp") and not training:
        raise InvalidJobError("strategy", job["strategy"], "none, tp, pp or layer-split for inference")
    if job["offload"] != "none" and job["strategy"] not in ("zero1", "zero2", "zero3", "fsdp"):
        raise InvalidJobError("offload", job["offload"], "none unless strategy is zero1, zero2, zero3 or fsdp")
    if training and job["optimizer_in_backward"] and job["strategy"] not in ("none", "fsdp", "ddp"):
        raise InvalidJobError("optimizer_in_backward", True, "false with ZeRO, tp or pp strategies")
    profile = lookup_profile(job["runtime"], job["runtime_version"])
    if profile.gpu_layer_split and job["strategy"] not in ("none", "layer-split"):
        raise InvalidJobError("strategy", job["strategy"], f"layer-split or none for runtime {job['runtime']} "
                              "(llama.cpp splits layers over GPUs; it has no tensor parallel)")
    if profile.kv_dtypes and job["kv_dtype"] not in profile.kv_dtypes:
        raise InvalidJobError("kv_dtype", job["kv_dtype"], f"{', '.join(profile.kv_dtypes)} for runtime {job['runtime']}")
    if training and not profile.trains:
        raise InvalidJobError("runtime", job["runtime"], f"{', '.join(training_runtimes())} for training")
    if training and job["precision"] not in profile.precisions:
        raise InvalidJobError("precision", job["precision"], f"{' or '.join(profile.precisions)} for runtime "
                              f"{job['runtime']} (its recipes have no autocast)")
    _check_layout(job)
    return job


def _check_layout(job: Mapping[str, Any]) -> None:
    """Rules of the parallel-layout fields (Megatron-LM's argument checks); divisibility by the model's heads, layers
    and experts is checked against the spec (modelmem.parallel.layout_problem)."""
    if job["pp_schedule"] == "interleaved" and job["pp_virtual"] < 2:
        raise InvalidJobError("pp_virtual", job["pp_virtual"], "an integer ≥ 2 with pp_schedule interleaved")
    if job["pp_virtual"] > 1 and job["pp_schedule"] != "interleaved":
        raise InvalidJobError("pp_virtual", job["pp_virtual"], "1 unless pp_schedule is interleaved")
    if job["sequence_parallel"] and job["tp"] == 1 and job["strategy"] != "tp":
        raise InvalidJobError("sequence_parallel", True, "false without tensor parallelism (tp > 1)")
    if job["shard_group"] and job["strategy"] not in ("zero3", "fsdp"):
        raise InvalidJobError("shard_group", job["shard_group"], "0 unless strategy is fsdp or zero3 (hybrid sharding)")
    if job["strategy"] in ("tp", "pp", "layer-split") and (job["tp"] > 1 or job["pp"] > 1):
        raise InvalidJobError("strategy", job["strategy"], "none, ddp, zero1, zero2, zero3 or fsdp with tp or pp degrees")
