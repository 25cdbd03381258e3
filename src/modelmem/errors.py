"""Every error modelmem raises. One base class; messages name the input and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModelmemError(Exception):
    """Base class: the CLI turns any of these into one line and exit code 2."""


class InvalidJobError(ModelmemError, ValueError):
    """A job field has a value outside what JOBS.md allows."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {shown(value)} is not allowed; expected {allowed}")


def shown(value: object, width: int = 60) -> str:
    """repr() cut to one short line; an integer too long to print (Python refuses 4,300+ digits) by its size."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,d} digits"
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


class _UnknownNameError(ModelmemError, KeyError):
    """A name looked up in a catalog; the message suggests the closest entries and the listing command."""

    field = ""
    what = ""
    listing = ""

    def __init__(self, name: str, suggestions: Iterable[str] = ()) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"{self.field}: {name!r} is not {self.what}{hint} (see `{self.listing}`)")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class UnknownModelError(_UnknownNameError):
    """A model name is not in the catalog and is not a path, size or Hub id."""

    field, what, listing = "model", "a catalog model, config.json, model folder or size", "modelmem models"


class UnknownGPUError(_UnknownNameError):
    field, what, listing = "gpu", "a known GPU", "modelmem gpus"


class ConfigError(ModelmemError, ValueError):
    """A config.json (or catalog entry) is malformed or lacks a field the estimate needs."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"config {source}: {message}")


class SourceError(ModelmemError):
    """A model source (file, header, Hub response) could not be read."""


class MissingExtraError(ModelmemError, ImportError):
    """An optional engine was asked for but its extra is not installed."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs the optional extra: pip install 'modelmem[{extra}]'")


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The few catalog names nearest to a mistyped one."""
    return difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=n, cutoff=0.5)
