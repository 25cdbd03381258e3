"""The GPU catalog (gpus.json) and every other way to name a device: a bare size ("24GiB", "metal:36GB") or a
description (a `GPUInfo`, or a dict of its fields).

Each catalog entry gives the memory the device reports, the nominal GB on the box, memory bandwidth, dense
bf16/fp16/fp8 throughput and its GPU-to-GPU link, and names the source of every figure. Loaded on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from modelmem.errors import ConfigError, InvalidJobError, UnknownGPUError, closest
from modelmem.result import PLATFORMS, GPUInfo
from modelmem.units import BYTES_IN_GB, BYTES_IN_GIB

# Figures a row must carry a source for whenever it gives them.
SOURCED = ("memory_bytes", "nominal_gb", "bandwidth_bytes_per_s", "bf16_flops", "fp16_flops", "fp8_flops",
           "interconnect_bytes_per_s")
_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^(?:(?P<platform>[a-z]+):)?\s*(?P<number>[-+]?[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(?P<unit>[a-z]*)$")
SIZE_HINT = "a catalog GPU (see `modelmem gpus`), a size such as 24GiB or 80GB (optionally metal:36GB, rocm:24GiB), or a GPU description"
MAX_DEVICE_BYTES = 16 * 2**40  # 16 TiB: above any single device (the largest, MI355X/B300, hold 288 GB)


def _row_to_gpu(row: Mapping[str, Any]) -> GPUInfo:
    name = row["name"]
    sources = row.get("sources", {})
    for key in SOURCED:
        if row.get(key) is not None and not sources.get(key):
            raise ConfigError("gpus.json", f"{name}: {key} has no source")
    if row["memory_bytes"] <= 0 or row["nominal_gb"] <= 0:
        raise ConfigError("gpus.json", f"{name}: memory must be positive")
    if row["platform"] not in PLATFORMS:
        raise ConfigError("gpus.json", f"{name}: platform {row['platform']!r} is not one of {', '.join(PLATFORMS)}")
    return GPUInfo(
        name=name, memory_bytes=int(row["memory_bytes"]), nominal_gb=float(row["nominal_gb"]), label=row["label"],
        vendor=row["vendor"], platform=row["platform"], bandwidth_bytes_per_s=row["bandwidth_bytes_per_s"],
        bf16_flops=row["bf16_flops"], fp16_flops=row["fp16_flops"], fp8_flops=row["fp8_flops"],
        interconnect=row["interconnect"], interconnect_bytes_per_s=row["interconnect_bytes_per_s"],
        unified_memory=bool(row["unified_memory"]), sources=tuple(sorted(sources.items())),
    )


@functools.cache
def _load() -> tuple[dict[str, GPUInfo], tuple[str, ...]]:
    data = json.loads(resources.files("modelmem.catalog").joinpath("gpus.json").read_text())
    table: dict[str, GPUInfo] = {}
    for row in data["gpus"]:
        info = _row_to_gpu(row)
        for key in [row["name"], *row["aliases"]]:
            if key.lower() in table:
                raise ConfigError("gpus.json", f"{key!r} names two GPUs")
            table[key.lower()] = info
    return table, tuple(data.get("calibration", ()))


def gpus() -> list[GPUInfo]:
    """Every catalog GPU once, largest memory first."""
    unique = {g.name: g for g in _load()[0].values()}
    return sorted(unique.values(), key=lambda g: (-g.memory_bytes, g.name))


def aliases(gpu: GPUInfo) -> list[str]:
    return sorted(k for k, v in _load()[0].items() if v is gpu and k != gpu.name)


def lookup_gpu(name: str | GPUInfo) -> GPUInfo:
    """A catalog GPU by name or alias; a size ("24GiB"); unknown names suggest the closest entries."""
    if isinstance(name, GPUInfo):
        return name
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    table = _load()[0]
    if key in table:
        return table[key]
    if _looks_like_size(name.strip().lower()):
        return gpu_of_size(name)
    raise UnknownGPUError(name, closest(key, list(table)))


def parse_size(text: str, field: str = "gpu") -> tuple[int, str]:
    """'24GiB' → (25769803776, 'cuda'); 'metal:36GB' → (36e9, 'metal'). GB is 10⁹ bytes, GiB 2³⁰."""
    m = _SIZE.match(text.strip().lower().replace(" ", ""))
    if m is None or not m.group("unit"):
        raise InvalidJobError(field, text, SIZE_HINT)
    unit = m.group("unit")
    if unit not in _UNITS:
        raise InvalidJobError(field, text, "a size in GB, GiB, MB, MiB, TB or TiB (e.g. 24GiB; GB is 10^9 bytes, GiB 2^30)")
    platform = m.group("platform") or "cuda"
    if platform not in PLATFORMS:
        raise InvalidJobError(field, text, f"a platform prefix of {', '.join(PLATFORMS)} (e.g. metal:36GB)")
    n_bytes = float(m.group("number")) * _UNITS[unit]
    if not math.isfinite(n_bytes) or n_bytes < BYTES_IN_GIB // 4 or n_bytes > MAX_DEVICE_BYTES:
        raise InvalidJobError(field, text, "a device size between 256MiB and 16TiB")
    return int(n_bytes), platform


def gpu_of_size(text: str) -> GPUInfo:
    """A device known only by its memory: the size is taken as what the device reports."""
    n_bytes, platform = parse_size(text)
    label = text.strip()
    return GPUInfo(name=label, memory_bytes=n_bytes, nominal_gb=round(n_bytes / BYTES_IN_GB, 2),
                   label=f"custom {platform} device with {label.split(':')[-1]}", platform=platform,
                   unified_memory=platform == "metal", sources=(("memory_bytes", "given by the user"),))


_FIELDS = {f.name: f for f in dataclasses.fields(GPUInfo)}
_INT_FIELDS = ("memory_bytes", "bandwidth_bytes_per_s", "bf16_flops", "fp16_flops", "fp8_flops", "interconnect_bytes_per_s")


def gpu_from_mapping(data: Mapping[str, Any]) -> GPUInfo:
    """A GPU description from a dict (GPUInfo's field names); memory_bytes is required, the rest optional."""
    unknown = sorted(set(data) - set(_FIELDS) - {"usable_bytes", "aliases"})
    if unknown:
        raise InvalidJobError(f"gpu.{unknown[0]}", data[unknown[0]], "a GPUInfo field: " + ", ".join(_FIELDS))
    if "memory_bytes" not in data:
        raise InvalidJobError("gpu.memory_bytes", None, "the device's memory in bytes (a positive integer)")
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("usable_bytes", "aliases"):
            continue  # computed, or catalog-only: accepted so that a GPU's own JSON round-trips
        if key in _INT_FIELDS:
            if value is None and key != "memory_bytes":
                clean[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidJobError(f"gpu.{key}", value, "a positive number")
            clean[key] = int(value)
        elif key == "nominal_gb":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidJobError("gpu.nominal_gb", value, "a positive number of GB")
            clean[key] = float(value)
        elif key == "platform":
            if value not in PLATFORMS:
                raise InvalidJobError("gpu.platform", value, ", ".join(PLATFORMS))
            clean[key] = value
        elif key == "unified_memory":
            clean[key] = bool(value)
        elif key == "sources":
            items = value.items() if isinstance(value, Mapping) else value
            clean[key] = tuple(sorted((str(k), str(v)) for k, v in items))
        else:
            clean[key] = str(value)
    if clean["memory_bytes"] > MAX_DEVICE_BYTES:
        raise InvalidJobError("gpu.memory_bytes", clean["memory_bytes"], "at most 16 TiB")
    clean.setdefault("name", f"custom-{clean['memory_bytes']}")
    clean.setdefault("nominal_gb", round(clean["memory_bytes"] / BYTES_IN_GB, 2))
    if clean.get("platform") == "metal":
        clean.setdefault("unified_memory", True)
    return GPUInfo(**clean)


def check_gpu(value: Any) -> str | GPUInfo:
    """The job's gpu field: a catalog name (kept as given), a size (validated now), or a description."""
    if isinstance(value, GPUInfo):
        return value
    if isinstance(value, Mapping):
        return gpu_from_mapping(value)
    text = str(value).strip()
    if not text:
        raise InvalidJobError("gpu", value, SIZE_HINT)
    if _looks_like_size(text.lower()) and text.lower().replace("_", "-") not in _load()[0]:
        parse_size(text)  # raises naming the field
        return text
    return text.lower()


def _looks_like_size(text: str) -> bool:
    """Sizes start with a number, a sign or a platform prefix; names like '4090' are aliases, looked up first."""
    return bool(text) and (text[0].isdigit() or text[0] in "+-." or ":" in text)


resolve_gpu = lookup_gpu


def calibration_sources() -> tuple[str, ...]:
    """Published benchmarks the default utilisations in speed.py were checked against."""
    return _load()[1]


# Quantization formats that need kernels a platform lacks: (platform, what, reason). Runtimes say where they run in
# their own profile (runtimes/profiles.py: platforms, platform_note). Checked before estimating.
_BITSANDBYTES = ("int8", "nf4", "fp4", "nf4-dq")
_UNSUPPORTED: tuple[tuple[str, str, str], ...] = (
    ("metal", "quant:bitsandbytes", "bitsandbytes 4-bit and 8-bit kernels (QLoRA, LLM.int8) need CUDA or ROCm; on a Mac use "
     "llama.cpp/Ollama GGUF quantization (quant gguf:Q4_K_M, runtime llamacpp) or MLX"),
    ("metal", "quant:gptq-awq", "GPTQ and AWQ kernels need CUDA or ROCm; on a Mac use a GGUF quantization with llama.cpp"),
    ("metal", "quant:fp8", "fp8 matmuls need CUDA (sm_89+) or ROCm (MI300+); Apple GPUs have no fp8 support"),
    ("hpu", "quant:bitsandbytes", "bitsandbytes has no Gaudi backend; Gaudi quantizes with fp8 through Intel Neural Compressor"),
)


def check_runtime(gpu: GPUInfo, job: Any) -> None:
    """Refuse, in one line, a job whose runtime or quantization cannot run on the device's platform."""
    from modelmem.runtimes.profiles import profile_for

    profile = profile_for(job)
    if gpu.platform not in profile.platforms:
        raise InvalidJobError("runtime", job.runtime, f"a runtime that runs on {gpu.label or gpu.name} ({profile.platform_note})")
    wants = {f"quant:{job.quant}"}
    if job.quant in _BITSANDBYTES:
        wants.add("quant:bitsandbytes")
    if job.quant in ("gptq", "awq", "int4"):
        wants.add("quant:gptq-awq")
    for platform, what, reason in _UNSUPPORTED:
        if gpu.platform == platform and what in wants:
            field, value = what.split(":")
            shown = job.quant if field == "quant" else value
            raise InvalidJobError(field, shown, f"something that runs on {gpu.label or gpu.name} ({reason})")
    if gpu.platform == "metal" and job.num_gpus not in ("auto", 1):
        raise InvalidJobError("num_gpus", job.num_gpus, f"1 on {gpu.label or gpu.name} (a Mac has one GPU)")
