"""Live models: any object with `named_parameters()` (torch module, PEFT model, meta-device model), duck-typed.

Nothing here imports torch: a parameter only needs `shape` (or `numel()`), `dtype` and `requires_grad`. Counts
follow PEFT's `PeftModel.get_nb_trainable_parameters` exactly, so `print_trainable_parameters` prints the same
line PEFT does: DeepSpeed ZeRO-3 placeholders count `ds_numel`, and bitsandbytes `Params4bit` tensors, which pack
two 4-bit values per byte of their storage dtype, count numel × 2 × element size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelmem.errors import SourceError
from modelmem.spec import LiveLoRA, ModelSpec, StoredWeights

# str(torch.dtype) → modelmem dtype name and bytes per element.
TORCH_DTYPES: Mapping[str, tuple[str, int]] = {
    "torch.float64": ("fp64", 8),
    "torch.float32": ("fp32", 4),
    "torch.float16": ("fp16", 2),
    "torch.bfloat16": ("bf16", 2),
    "torch.float8_e4m3fn": ("fp8_e4m3", 1),
    "torch.float8_e4m3fnuz": ("fp8_e4m3", 1),
    "torch.float8_e5m2": ("fp8_e5m2", 1),
    "torch.float8_e5m2fnuz": ("fp8_e5m2", 1),
    "torch.float8_e8m0fnu": ("fp8_e8m0", 1),
    "torch.float4_e2m1fn_x2": ("fp4", 1),  # two FP4 values per element
    "torch.int64": ("int64", 8),
    "torch.int32": ("int32", 4),
    "torch.int16": ("int16", 2),
    "torch.int8": ("int8", 1),
    "torch.uint8": ("uint8", 1),
    "torch.bool": ("bool", 1),
    "torch.complex64": ("complex64", 8),
}


@dataclass(frozen=True)
class Param:
    name: str
    numel: int  # as counted by PEFT (Params4bit unpacked)
    stored_bytes: int  # numel of the storage tensor × its element size
    dtype: str  # modelmem name
    requires_grad: bool


@dataclass(frozen=True)
class ModuleParams:
    """Every parameter of a live model; totals are computed from the parts."""

    params: tuple[Param, ...]

    @property
    def total(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def trainable(self) -> int:
        return sum(p.numel for p in self.params if p.requires_grad)

    @property
    def stored_bytes(self) -> int:
        return sum(p.stored_bytes for p in self.params)

    @property
    def trainable_bytes(self) -> int:
        return sum(p.stored_bytes for p in self.params if p.requires_grad)

    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.params:
            out[p.dtype] = out.get(p.dtype, 0) + p.stored_bytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def module_params(model: Any) -> ModuleParams:
    """Exact per-parameter counts, dtypes and requires_grad of any object with `named_parameters()`."""
    named = getattr(model, "named_parameters", None)
    if not callable(named):
        raise SourceError(f"{type(model).__name__}: has no named_parameters(); pass a torch.nn.Module or PEFT model")
    return ModuleParams(tuple(_param(name, p) for name, p in named()))


def _param(name: str, p: Any) -> Param:
    numel = _numel(p)
    if numel == 0 and hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3 partitioned placeholder
        numel = int(p.ds_numel)
    dtype_name, element = TORCH_DTYPES.get(str(getattr(p, "dtype", "")), (str(getattr(p, "dtype", "?")), 0))
    element_size = getattr(p, "element_size", None)
    if callable(element_size):
        element = int(element_size())
    stored = numel * element
    if type(p).__name__ == "Params4bit":
        # PEFT get_nb_trainable_parameters: element_size(), else quant_storage.itemsize, else 1; × 2 per byte.
        if callable(element_size):
            num_bytes = int(element_size())
        elif not hasattr(p, "quant_storage"):
            num_bytes = 1
        else:
            num_bytes = int(p.quant_storage.itemsize)
        numel = numel * 2 * num_bytes
        dtype_name = str(getattr(p, "quant_type", None) or "nf4")  # bitsandbytes: "nf4" or "fp4"
    return Param(name, numel, stored, dtype_name, bool(getattr(p, "requires_grad", False)))


def _numel(p: Any) -> int:
    numel = getattr(p, "numel", None)
    if callable(numel):
        return int(numel())
    shape = getattr(p, "shape", None)
    if shape is None:
        raise SourceError(f"parameter of type {type(p).__name__} has neither numel() nor shape")
    return math.prod(int(d) for d in shape)


def trainable_line(trainable: int, total: int) -> str:
    """PEFT's print_trainable_parameters line (peft/peft_model.py)."""
    pct = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"


def print_trainable_parameters(model: Any) -> None:
    """Print the line PEFT's `model.print_trainable_parameters()` prints, for any model."""
    counts = module_params(model)
    print(trainable_line(counts.trainable, counts.total))


def from_module(model: Any) -> ModelSpec:
    """The spec of a live model: architecture from `model.config` (transformers), exact stored bytes and counts.

    Without a config (a bare torch module) the architecture fields are zero and every parameter is counted in
    `extra_params`: weights, gradients and optimizer states are exact, activations and KV cache unknown.
    """
    counts = module_params(model)
    config = _config_dict(model)
    name = str(config.get("_name_or_path") or type(model).__name__) if config else type(model).__name__
    stored = StoredWeights(
        total_bytes=counts.stored_bytes,
        num_params=counts.total,
        bytes_by_dtype=counts.bytes_by_dtype(),
        source=f"{type(model).__name__}.named_parameters() ({len(counts.params)} tensors, "
               f"{counts.trainable:,d} trainable)",
    )
    floats = {k: v for k, v in stored.bytes_by_dtype.items() if k in ("fp32", "fp16", "bf16")}
    dtype = max(floats, key=lambda k: floats[k]) if floats else "bf16"
    if config:
        from modelmem.sources.config import spec_from_config

        spec = spec_from_config(config, name=name, source=f"module {type(model).__name__}")
        return dataclasses.replace(spec, stored=stored, dtype=dtype, live_lora=live_lora(model, counts))
    # No architecture to read: every parameter is an "extra" one, so parameter-proportional memory (weights,
    # gradients, optimizer states) is exact and activations/KV cache are unknown (zero).
    return ModelSpec(
        name=name, model_type="module", hidden_size=0, num_layers=0, num_heads=0, num_kv_heads=0, head_dim=0,
        intermediate_size=0, vocab_size=0, final_norm=False, tie_word_embeddings=True, dtype=dtype,
        extra_params=counts.total, stored=stored, source=f"module {type(model).__name__}",
    )


def live_lora(model: Any, counts: ModuleParams) -> LiveLoRA | None:
    """The LoRA adapters of a PEFT model: PEFT names each adapter `<module>.lora_A.<adapter>.weight` with shape
    (r, in_features) (peft/tuners/lora/layer.py LoraLayer.update_layer)."""
    ranks: dict[int, int] = {}
    targets: dict[str, None] = {}
    named = dict(model.named_parameters())
    for p in counts.params:
        head, sep, _ = p.name.partition(".lora_A.")
        if not sep:
            continue
        targets[head.rsplit(".", 1)[-1]] = None
        shape = getattr(named.get(p.name), "shape", None)
        r = int(shape[0]) if shape is not None and len(shape) == 2 else 0
        if r > 0:
            ranks[r] = ranks.get(r, 0) + 1
    if not targets or not ranks:
        return None
    alpha = None
    configs = getattr(model, "peft_config", None)
    if isinstance(configs, Mapping) and configs:
        value = getattr(next(iter(configs.values())), "lora_alpha", None)
        alpha = int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
    return LiveLoRA(rank=max(ranks, key=lambda r: ranks[r]), targets=tuple(targets), alpha=alpha)


def _config_dict(model: Any) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        d = to_dict()
        return d if isinstance(d, dict) else None
    return dict(config) if isinstance(config, Mapping) else None
