"""The GPU catalog (gpus.json): memory as the device reports it, and the nominal GB printed on the box."""

from __future__ import annotations

import functools
import json
from importlib import resources

from modelmem.errors import ConfigError, UnknownGPUError, closest
from modelmem.result import GPUInfo


@functools.cache
def _catalog() -> dict[str, GPUInfo]:
    data = json.loads(resources.files("modelmem.catalog").joinpath("gpus.json").read_text())
    table: dict[str, GPUInfo] = {}
    for row in data["gpus"]:
        if row["memory_bytes"] <= 0 or row["nominal_gb"] <= 0:
            raise ConfigError("gpus.json", f"{row['name']}: memory must be positive")
        info = GPUInfo(name=row["name"], memory_bytes=int(row["memory_bytes"]), nominal_gb=float(row["nominal_gb"]), label=row["label"])
        for key in [row["name"], *row["aliases"]]:
            table[key.lower()] = info
    return table


def gpus() -> list[GPUInfo]:
    """Every GPU once, largest memory first."""
    unique = {g.name: g for g in _catalog().values()}
    return sorted(unique.values(), key=lambda g: (-g.memory_bytes, g.name))


def lookup_gpu(name: str) -> GPUInfo:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    table = _catalog()
    if key in table:
        return table[key]
    raise UnknownGPUError(name, closest(key, [g.name for g in gpus()]))
