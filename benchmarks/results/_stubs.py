"""Empty stand-ins for third-party packages a library imports at module level but a traced step never calls, so
the library's own modules can run from a wheel or a source tree without installing their dependencies."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any


class Anything(types.ModuleType):
    """A stand-in module: every attribute is another stand-in (a class, so `isinstance`/subclassing work)."""

    __path__: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of `packages` (and their submodules) with Anything modules; `attrs` are set on each."""

    def __init__(self, packages: Iterable[str], attrs: dict[str, Callable[..., Any]] | None = None) -> None:
        self.packages = frozenset(packages)
        self.attrs = dict(attrs or {})

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return Anything(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        for name, value in self.attrs.items():
            setattr(module, name, value)


def stub(packages: Iterable[str], **attrs: Callable[..., Any]) -> None:
    """Stub `packages` for every later import in this process."""
    sys.meta_path.insert(0, StubFinder(packages, attrs))
