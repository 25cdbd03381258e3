"""The planner: questions answered by searching the estimator — the largest value that fits (fit), what to change
when a job does not fit (suggest), the layouts that need the fewest GPUs (layouts), and launch settings (emit).

Every figure comes from `modelmem.plan.estimate_spec` through `_evaluate.Evaluator`; nothing here models memory.
"""

from __future__ import annotations

__all__ = ["fit", "suggest"]


def __getattr__(name: str):  # keep `import modelmem.planner` free of the submodules until used
    if name in __all__:
        import importlib

        return importlib.import_module(f"modelmem.planner.{name}")
    raise AttributeError(name)
