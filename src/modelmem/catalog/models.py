"""The model catalog (models.json, built by tools/build_catalog.py): Hub configs of popular decoders, with sources.

Loaded on first use and validated then; importing this module reads nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from modelmem.errors import ConfigError, UnknownModelError, closest
from modelmem.sources.config import spec_from_config
from modelmem.spec import ModelSpec

__all__ = ["CatalogEntry", "entries", "lookup"]

_FILE = "models.json"


@dataclass(frozen=True)
class CatalogEntry:
    id: str  # Hugging Face repository id
    aliases: tuple[str, ...]  # short names and same-architecture sibling repositories
    param_count: int | None  # the record's count; None where it was withheld
    param_count_kind: str  # "official-safetensors", "derived", "withheld", …
    active_param_count: int | None  # MoE: parameters used per token, where published
    source: tuple[str, ...]  # where the config and the count were read
    family: str
    siblings: tuple[tuple[str, str], ...] = ()  # (sibling repository id, why it shares this architecture)


@dataclass(frozen=True)
class _Catalog:
    entries: tuple[CatalogEntry, ...]
    specs: dict[str, ModelSpec]  # entry id → spec
    names: dict[str, tuple[str, str]]  # lower-cased id/alias → (entry id, name the spec takes)


def _need(entry: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(where, f"{key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _count(entry: dict[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(where, f"{key} must be a positive integer or null, got {value!r}")
    return value


@functools.cache
def _load() -> _Catalog:
    data = json.loads(resources.files("modelmem.catalog").joinpath(_FILE).read_text(encoding="utf-8"))
    rows = data.get("models") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(_FILE, "expected {\"models\": [...]}")
    found: list[CatalogEntry] = []
    specs: dict[str, ModelSpec] = {}
    names: dict[str, tuple[str, str]] = {}
    for row in rows:
        where = f"{_FILE} entry {row.get('id') if isinstance(row, dict) else row!r}"
        if not isinstance(row, dict):
            raise ConfigError(where, "expected an object")
        hf_id = _need(row, "id", str, where)
        aliases = _need(row, "aliases", list, where)
        siblings = _need(row, "siblings", list, where)
        source = _need(row, "source", dict, where)
        sources = tuple(str(s) for s in [*source.get("config", []), *source.get("count", [])])
        entry = CatalogEntry(
            id=hf_id,
            aliases=tuple(dict.fromkeys([*(str(a) for a in aliases), *(str(s["id"]) for s in siblings)])),
            param_count=_count(row, "param_count", where),
            param_count_kind=_need(row, "param_count_kind", str, where),
            active_param_count=_count(row, "active_param_count", where),
            source=sources,
            family=_need(row, "family", str, where),
            siblings=tuple((str(s["id"]), str(s["source"])) for s in siblings),
        )
        spec = spec_from_config(_need(row, "config", dict, where), name=hf_id, source=sources[0] if sources else where)
        specs[hf_id] = spec
        found.append(entry)
        sibling_ids = {s for s, _ in entry.siblings}
        for name in (hf_id, *entry.aliases):
            key = name.lower()
            if key in names and names[key][0] != hf_id:
                raise ConfigError(where, f"name {name!r} is also used by {names[key][0]}")
            names[key] = (hf_id, name if name in sibling_ids else hf_id)
    return _Catalog(entries=tuple(found), specs=specs, names=names)


def entries() -> tuple[CatalogEntry, ...]:
    """Every catalog model, in catalog order."""
    return _load().entries


def lookup(name: str) -> ModelSpec:
    """The spec of a catalog model by Hub id, sibling id or short alias (case-insensitive).

    A sibling id (e.g. meta-llama/Llama-3.1-8B-Instruct) gives its base's architecture under the sibling's name.
    """
    catalog = _load()
    key = name.strip().lower()
    if key not in catalog.names:
        raise UnknownModelError(name, closest(key, catalog.names))
    entry_id, spec_name = catalog.names[key]
    spec = catalog.specs[entry_id]
    return spec if spec_name == spec.name else dataclasses.replace(spec, name=spec_name)
