"""The job: what is run on the model, in the vocabulary of shared/validation/JOBS.md.

`make_job(**fields)` checks every field and returns a frozen `Job`; fields left out take defaults, some of
which depend on the runtime (torchtune and LitGPT train in pure bf16, HF Trainer in mixed precision) or on the
mode. `Job.to_dict()` is the resolved job as the JSON output shows it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from modelmem import limits
from modelmem.dtypes import GGUF_FILE_TYPES
from modelmem.errors import InvalidJobError

MODES = ("inference", "train", "lora", "qlora")
DTYPES = ("fp32", "fp16", "bf16")
PRECISIONS = ("pure", "mixed")
QUANTS = ("none", "int8", "int8-wo", "nf4", "fp4", "nf4-dq", "int4", "fp8", "awq", "gptq")  # plus gguf:<TYPE>
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit", "paged-adamw", "sgd", "sgd-momentum", "adafactor", "lion")
KV_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
CHECKPOINTING = ("none", "full", "selective")
ATTENTIONS = ("eager", "sdpa", "flash")
STRATEGIES = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp", "tp", "pp", "layer-split")
OFFLOADS = ("none", "optimizer", "params")
RUNTIMES = ("hf", "torchtune", "litgpt", "torchao", "vllm", "llamacpp")
LOSSES = ("full", "chunked")
METHODS = ("detailed", "seed")
INTERCONNECTS = ("auto", "nvlink", "pcie", "infiniband")  # auto: the device's own link within 8 GPUs, InfiniBand beyond

TRAINING_MODES = ("train", "lora", "qlora")
DEFAULT_GPU = "h100-80gb"


@dataclass(frozen=True)
class Job:
    mode: str = "inference"
    dtype: str = "bf16"
    precision: str = "mixed"
    quant: str = "none"
    optimizer: str = "adamw"
    batch_size: int = 1
    seq_len: int = 2048
    new_tokens: int = 0
    kv_dtype: str = "bf16"
    grad_checkpointing: str = "none"
    attention: str = "sdpa"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: str = "default"  # PEFT's per-architecture default (q and v projections) until resolved
    num_gpus: int | str = "auto"  # the fewest GPUs that fit
    strategy: str = "none"
    offload: str = "none"
    gpu: Any = DEFAULT_GPU  # a catalog name, a size ("24GiB", "metal:36GB") or a GPUInfo description
    runtime: str = "hf"
    compile: bool = False
    optimizer_in_backward: bool = False
    activation_offload: bool = False
    loss: str = "full"
    quant_group_size: int = 128
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_seqs: int = 256
    block_size: int = 16
    gpu_layers: int | None = None  # llama.cpp --n-gpu-layers; None = all layers on the GPU
    mfu: float | None = None  # model-FLOPs utilisation for the time estimates; None = modelmem.speed's stated default
    interconnect: str = "auto"  # the link the time estimates move collectives over

    @property
    def training(self) -> bool:
        return self.mode in TRAINING_MODES

    @property
    def uses_lora(self) -> bool:
        return self.mode in ("lora", "qlora")

    @property
    def tokens(self) -> int:
        """Tokens per sequence the step holds: training seq_len; inference prompt + generated."""
        return self.seq_len + (0 if self.training else self.new_tokens)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(self.gpu, str):
            d["gpu"] = self.gpu.to_dict()
        return d


FIELDS = tuple(f.name for f in dataclasses.fields(Job))

_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": MODES,
    "dtype": DTYPES,
    "precision": PRECISIONS,
    "optimizer": OPTIMIZERS,
    "kv_dtype": KV_DTYPES,
    "grad_checkpointing": CHECKPOINTING,
    "attention": ATTENTIONS,
    "strategy": STRATEGIES,
    "offload": OFFLOADS,
    "runtime": RUNTIMES,
    "loss": LOSSES,
    "interconnect": INTERCONNECTS,
}
_POSITIVE_INTS = ("batch_size", "seq_len", "lora_rank", "lora_alpha", "quant_group_size", "max_num_seqs", "block_size")
_NON_NEGATIVE_INTS = ("new_tokens", "gpu_layers")
_BOOLS = ("compile", "optimizer_in_backward", "activation_offload")
# Fields that only make sense for some modes: giving them explicitly elsewhere is an impossible combination.
_TRAINING_ONLY = ("precision", "optimizer", "grad_checkpointing", "optimizer_in_backward", "activation_offload", "loss", "offload")
_LORA_ONLY = ("lora_rank", "lora_alpha", "lora_targets")
_INFERENCE_ONLY = ("new_tokens", "kv_dtype", "gpu_memory_utilization", "max_model_len", "max_num_seqs", "block_size", "gpu_layers")


# Each integer field's upper bound (modelmem.limits), so that no accepted job takes unbounded time or memory.
_INT_LIMITS = {
    "batch_size": limits.BATCH, "seq_len": limits.SEQ_LEN, "new_tokens": limits.NEW_TOKENS,
    "lora_rank": limits.LORA_RANK, "lora_alpha": limits.LORA_ALPHA, "quant_group_size": limits.GROUP_SIZE,
    "max_num_seqs": limits.NUM_SEQS, "block_size": limits.BLOCK_SIZE, "gpu_layers": limits.GPU_LAYERS,
    "num_gpus": limits.GPUS, "max_model_len": limits.SEQ_LEN,
}


def _as_int(field: str, value: Any, minimum: int) -> int:
    bound = _INT_LIMITS[field].maximum
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


def make_job(**fields: Any) -> Job:
    """Validate job fields (JOBS.md names) and fill defaults. Raises InvalidJobError naming the field."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InvalidJobError(unknown[0], fields[unknown[0]], "a job field: " + ", ".join(FIELDS))
    given = {k: v for k, v in fields.items() if v is not None}
    clean: dict[str, Any] = {}
    for name, value in given.items():
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128 and name not in _INT_LIMITS \
                and name != "gpu_memory_utilization":
            raise InvalidJobError(name, value, "a value within modelmem's limits (modelmem.limits)")
        if name in _CHOICES:
            text = str(value).strip().lower()
            if text not in _CHOICES[name]:
                raise InvalidJobError(name, value, ", ".join(_CHOICES[name]))
            clean[name] = text
        elif name == "quant":
            clean[name] = check_quant(str(value).strip())
        elif name in _POSITIVE_INTS:
            clean[name] = _as_int(name, value, 1)
        elif name in _NON_NEGATIVE_INTS:
            clean[name] = _as_int(name, value, 0)
        elif name in _BOOLS:
            clean[name] = _as_bool(name, value)
        elif name == "num_gpus":
            clean[name] = "auto" if str(value).strip().lower() == "auto" else _as_int(name, value, 1)
        elif name == "gpu_memory_utilization":
            try:
                frac = float(value)
            except (TypeError, ValueError, OverflowError):  # float(10**400) overflows
                raise InvalidJobError(name, str(value)[:40], "a fraction in (0, 1]") from None
            if not 0 < frac <= 1:
                raise InvalidJobError(name, value, "a fraction in (0, 1]")
            clean[name] = frac
        elif name == "max_model_len":
            clean[name] = _as_int(name, value, 1)
        elif name == "lora_targets":
            clean[name] = _check_targets(value)
        elif name == "gpu":
            from modelmem.catalog.gpus import check_gpu

            clean[name] = check_gpu(value)
        elif name == "mfu":
            try:
                frac = float(value)
            except (TypeError, ValueError):
                raise InvalidJobError(name, value, "a fraction in (0, 1], e.g. 0.4") from None
            if not 0 < frac <= 1:
                raise InvalidJobError(name, value, "a fraction in (0, 1], e.g. 0.4")
            clean[name] = frac
    return _resolve_defaults(clean)


def _check_targets(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).strip()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(not n.replace("_", "").replace(".", "").replace("-", "").isalnum() for n in names):
        raise InvalidJobError("lora_targets", value, "all-linear or a comma list of module names such as q_proj,v_proj")
    return ",".join(names)


def _resolve_defaults(clean: dict[str, Any]) -> Job:
    mode = clean.get("mode", "inference")
    runtime = clean.get("runtime", "hf")
    training = mode in TRAINING_MODES
    if not training:
        bad = [f for f in _TRAINING_ONLY + _LORA_ONLY if f in clean]
        if bad:
            raise InvalidJobError(bad[0], clean[bad[0]], f"nothing in inference mode (it applies to {', '.join(TRAINING_MODES)})")
    elif mode == "train":
        bad = [f for f in _LORA_ONLY if f in clean]
        if bad:
            raise InvalidJobError(bad[0], clean[bad[0]], "nothing in train mode (it applies to lora and qlora)")
    if training:
        bad = [f for f in _INFERENCE_ONLY if f in clean and f not in ("gpu_layers",)]
        if bad:
            raise InvalidJobError(bad[0], clean[bad[0]], "nothing in training modes (it applies to inference)")
    if runtime != "vllm":
        bad = [f for f in ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "block_size") if f in clean]
        if bad:
            raise InvalidJobError(bad[0], clean[bad[0]], "nothing unless runtime is vllm")
    if "gpu_layers" in clean and runtime != "llamacpp":
        raise InvalidJobError("gpu_layers", clean["gpu_layers"], "nothing unless runtime is llamacpp")

    dtype = clean.setdefault("dtype", "bf16")
    # torchtune and LitGPT train in pure bf16 by default; HF Trainer keeps fp32 master weights (mixed).
    clean.setdefault("precision", "mixed" if runtime == "hf" and dtype != "fp32" else "pure")
    if dtype == "fp32" and clean["precision"] == "mixed":
        raise InvalidJobError("precision", "mixed", "pure when dtype is fp32 (mixed keeps fp32 masters of fp16/bf16 weights)")
    if mode == "qlora":
        quant = clean.setdefault("quant", "nf4")
        if quant not in ("nf4", "fp4", "nf4-dq", "int8", "int4", "gptq", "awq"):
            raise InvalidJobError("quant", quant, "nf4, fp4, nf4-dq, int8, int4, gptq or awq for a qlora base")
    elif mode in ("train", "lora") and clean.get("quant", "none") != "none":
        raise InvalidJobError("quant", clean["quant"], "none in train and lora modes (use mode qlora to train adapters on a quantized base)")
    clean.setdefault("kv_dtype", dtype if dtype != "fp32" else "fp32")
    num_gpus = clean.setdefault("num_gpus", "auto")
    if "strategy" not in clean:
        # Defaults: FSDP (full shard) for training, tensor parallel for inference; nothing to share on one GPU.
        clean["strategy"] = "none" if num_gpus == 1 else ("fsdp" if training else "tp")
    if clean["strategy"] in ("ddp", "zero1", "zero2", "zero3", "fsdp") and not training:
        raise InvalidJobError("strategy", clean["strategy"], "none, tp, pp or layer-split for inference")
    if clean.get("offload", "none") != "none" and clean["strategy"] not in ("zero1", "zero2", "zero3", "fsdp"):
        raise InvalidJobError("offload", clean["offload"], "none unless strategy is zero1, zero2, zero3 or fsdp")
    if training and clean.get("optimizer_in_backward") and clean["strategy"] not in ("none", "fsdp", "ddp"):
        raise InvalidJobError("optimizer_in_backward", True, "false with ZeRO, tp or pp strategies")
    if runtime == "vllm" and training:
        raise InvalidJobError("runtime", "vllm", "hf, torchtune, litgpt or torchao for training")
    return Job(**clean)
