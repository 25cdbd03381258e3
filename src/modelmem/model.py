"""resolve_model(): a catalog name, a path (config.json, model folder, .gguf), a bare size, a Hub id, a live
module or a ModelSpec → ModelSpec. Each source is a small adapter; the heavy ones are imported lazily.

prepare(): a spec and a job → the model as the job trains or runs it (parameter counts, linear modules, trainable
parameters, LoRA targets), computed once per estimate and shared by the detailed method, the seed and `params`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmem.counts import (
    LinearModule, ParamCounts, count_params, default_lora_targets, linear_modules, lora_trainable_params,
)
from modelmem import limits
from modelmem.errors import ConfigError, SourceError, UnknownModelError
from modelmem.spec import ModelSpec

if TYPE_CHECKING:
    from modelmem.job import Job


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    """A spec as one job uses it. Counts never depend on the parallel plan (STYLE rule 2)."""

    spec: ModelSpec
    counts: ParamCounts
    linears: tuple[LinearModule, ...]
    trainable: int  # parameters that take gradients: all (train), the adapters (LoRA), none (inference)
    targets: frozenset[str]  # LoRA-targeted leaf module names (empty without LoRA)
    # GPU-count-independent results memoized while one estimate searches GPU counts (memory/activations.py).
    memo: dict[Any, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def per_layer_params(self) -> int:
        """Parameters of one decoder block on average: the body without embeddings, positions, head, the final norm
        and the parts outside the decoder (vision tower, projector), which FSDP wraps apart."""
        c, s = self.counts, self.spec
        final_norm = s.hidden_size * (2 if s.norm_bias else 1) if s.final_norm else 0
        body = c.total - c.embeddings - c.position_embeddings - c.lm_head - final_norm - s.extra_params
        return max(0, body) // max(1, s.num_layers)


def live_job_defaults(spec: ModelSpec, given: dict[str, Any]) -> dict[str, Any]:
    """Job fields a live PEFT model implies (LoRA mode, its rank, alpha and targets), under the ones given."""
    live = spec.live_lora
    if live is None:
        return given
    out: dict[str, Any] = {"mode": "lora", **{k: v for k, v in given.items() if v is not None}}
    if out["mode"] in ("lora", "qlora"):
        out.setdefault("lora_rank", live.rank)
        out.setdefault("lora_targets", ",".join(live.targets))
        if live.alpha is not None:
            out.setdefault("lora_alpha", live.alpha)
    return out


# Counts and linears by spec identity (the spec is held, so its id cannot be reused): the planner and `fit`
# estimate one spec many times.
_DERIVED: dict[int, tuple[ModelSpec, ParamCounts, tuple[LinearModule, ...]]] = {}


def _derived(spec: ModelSpec) -> tuple[ParamCounts, tuple[LinearModule, ...]]:
    hit = _DERIVED.get(id(spec))
    if hit is None or hit[0] is not spec:
        if len(_DERIVED) >= 16:
            _DERIVED.pop(next(iter(_DERIVED)))
        hit = _DERIVED[id(spec)] = (spec, count_params(spec), linear_modules(spec))
    return hit[1], hit[2]


def prepare(spec: ModelSpec, job: Job) -> tuple[PreparedModel, Job]:
    """The prepared model and the job with its LoRA targets resolved (PEFT's per-model default named)."""
    counts, linears = _derived(spec)
    targets: frozenset[str] = frozenset()
    if job.uses_lora:
        names = job.lora_targets
        if names == "default":
            names = ",".join(default_lora_targets(spec))
        trainable = lora_trainable_params(spec, job.lora_rank, names)
        if names == "all-linear":
            targets = frozenset(m.name for m in linears if m.name != "lm_head" and not m.expert)
        else:
            targets = frozenset(names.split(","))
        job = dataclasses.replace(job, lora_targets=names)
    elif job.mode == "train":
        # parts a text-only step never runs get no gradient, so neither gradients nor optimizer states
        # (torch optimizers skip `p.grad is None`; spec.image_only_params)
        trainable = counts.total - min(counts.total, spec.image_only_params)
    else:
        trainable = 0
    return PreparedModel(spec, counts, linears, trainable, targets), job


# Digits capped (float() of 400 digits is cheap and at most 1e400 = inf); the value is then checked against limits.PARAMS.
_SIZE = re.compile(r"^\s*(\d{1,400}(?:\.\d{1,400})?(?:e\d{1,4})?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def parse_size(text: str) -> int | None:
    """'7B' → 7e9, '1.5e9' → 1.5e9, '350m' → 3.5e8; None if the text is not a size."""
    match = _SIZE.match(text)
    if not match:
        return None
    number, unit = match.groups()
    if not unit and "e" not in number.lower():
        return None  # a bare integer is more likely a typo than a parameter count
    scaled = float(number) * _SCALE[unit.lower()]  # at most 1e9999 × 1e12: inf, never an exception
    if scaled > limits.PARAMS.maximum:
        p = limits.PARAMS
        raise ConfigError(text.strip(), f"{number}{unit} {p.field} exceed modelmem's limit of {p.maximum:.0e} "
                                        f"(largest real: {p.largest_real})")
    value = int(scaled)
    return value if value > 0 else None


def size_spec(params: int, text: str) -> ModelSpec:
    """A Llama-style dense shape with exactly `params` parameters, for formula-level estimates of a bare size.

    Shapes follow the Llama family's proportions (Touvron et al. 2023, Table 2): depth ≈ width / 128, SwiGLU
    width 8h/3 rounded to 256, 32k vocabulary, untied head; the remainder goes to `extra_params`.
    """
    vocab = 32000
    h = max(256, int(round((params * 128 / 12) ** (1 / 3) / 128)) * 128)
    inter = int(round(8 * h / 3 / 256)) * 256 or 256
    per_layer = 4 * h * h + 3 * h * inter + 2 * h
    layers = max(1, (params - 2 * vocab * h - h) // per_layer)
    while layers > 1 and layers * per_layer + 2 * vocab * h + h > params:
        layers -= 1
    body = layers * per_layer + 2 * vocab * h + h
    heads = max(1, h // 128)
    return ModelSpec(
        name=text.strip(), model_type="size", hidden_size=h, num_layers=layers, num_heads=heads, num_kv_heads=heads,
        head_dim=h // heads, intermediate_size=inter, vocab_size=vocab, extra_params=max(0, params - body),
        source="a bare size: Llama-style shape assumed",
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the filesystem is not a path
        return False


def resolve_model(model: Any, revision: str | None = None) -> ModelSpec:
    if isinstance(model, ModelSpec):
        limits.check_spec(model, lambda m: ConfigError(model.source or model.name, m))
        return model
    if not isinstance(model, (str, Path)):
        if hasattr(model, "named_parameters"):
            from modelmem.sources.module import from_module

            return from_module(model)
        raise UnknownModelError(repr(model))
    text = str(model).strip()
    if not text or len(text) > 4096 or "\x00" in text:  # PATH_MAX; a NUL cannot be in a path or an id
        raise UnknownModelError(text[:80])
    path = Path(text).expanduser()
    if _exists(path):
        if not path.is_dir():
            limits.regular_file_size(path, lambda m: SourceError(f"{path}: {m}"))
        if path.is_file() and path.suffix.lower() == ".gguf":
            from modelmem.sources.gguf import spec_from_gguf

            return spec_from_gguf(path)
        if path.is_dir() or path.suffix.lower() in (".safetensors", ".bin", ".pt", ".pth"):
            # A weights file stands for its folder; pickles are sized from their index, never loaded.
            from modelmem.sources.local import spec_from_folder

            return spec_from_folder(path)
        from modelmem.sources.config import load_config_file

        return load_config_file(path)
    size = parse_size(text)
    if size is not None:
        return size_spec(size, text)
    from modelmem.catalog.models import lookup

    try:
        return lookup(text)
    except UnknownModelError:
        if not _HUB_ID.match(text) or text.lower().endswith((".json", ".gguf")):
            raise
    from modelmem.sources.hub import spec_from_hub

    return spec_from_hub(text, revision=revision)
