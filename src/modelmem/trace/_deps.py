"""The trace extra's imports, checked against the versions the trace engine was tested with."""

from __future__ import annotations

from typing import Any

from modelmem.errors import MissingExtraError, ModelmemError

# Tested together (pyproject's `trace` extra pins the same): torch's CPU wheel, transformers, peft.
PINS = {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"}


class UntestedVersionError(ModelmemError):
    """torch/transformers/peft are installed in versions the tracer was not tested with."""

    def __init__(self, found: dict[str, str]) -> None:
        have = ", ".join(f"{k} {v}" for k, v in found.items())
        want = ", ".join(f"{k}=={v}" for k, v in PINS.items())
        super().__init__(f"trace: installed {have}; the tracer is tested with {want} (pip install 'modelmem[trace]')")


def _matches(found: str, pinned: str) -> bool:
    # torch reports local builds as 2.13.0+cpu / +cu128: the local part does not change the Python code.
    return found.split("+")[0] == pinned


def require(strict: bool = True) -> tuple[Any, Any, Any]:
    """Import torch, transformers and peft, or raise a one-line ModelmemError.

    strict=False (measure): any installed versions do; a GPU image ships its own CUDA torch, and what the run
    measures is the truth for those versions, which the caller records."""
    try:
        import torch
        import transformers
        import peft
    except ImportError as e:
        raise MissingExtraError("tracing", "trace") from e
    found = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    if strict and not all(_matches(found[k], v) for k, v in PINS.items()):
        raise UntestedVersionError(found)
    return torch, transformers, peft


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries a measurement depends on (None: not installed); imports nothing."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "vllm", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
