"""Pictures of estimates and sweeps (optional extra `plot`: matplotlib, imported only when a picture is drawn).

Both pictures are per GPU, in GiB, with the GPU's memory (as the device reports it) drawn as a line, so what
crosses the line does not fit. Only the CLI calls these; they draw what `estimate` and `sweep` returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelmem.errors import InvalidJobError, MissingExtraError
from modelmem.result import Estimate
from modelmem.sweep import SweepPoint
from modelmem.units import gib

__all__ = ["plot_estimate", "plot_sweep", "FORMATS"]

FORMATS = (".png", ".svg")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtraError("--plot", "plot") from e
    return plt


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise InvalidJobError("plot", str(path), "a file name ending in .png or .svg")
    return p


def _components(est: Estimate) -> dict[str, int]:
    """Allocated components, then the allocator's slack and the CUDA context: together the device total."""
    pg = est.per_gpu
    parts = {k: v for k, v in pg.components.items() if v}
    if pg.allocator_overhead:
        parts["allocator (reserved − allocated)"] = pg.allocator_overhead
    if pg.cuda_context:
        parts["CUDA context and buffers"] = pg.cuda_context
    return parts


def _gpu_line(ax: Any, est: Estimate) -> None:
    ax.axhline(gib(est.gpu.usable_bytes), color="black", linestyle="--", linewidth=1.2,
               label=f"{est.gpu.label or est.gpu.name}: {gib(est.gpu.usable_bytes):.1f} GiB")


def plot_estimate(est: Estimate, path: str | Path) -> Path:
    """One stacked bar of the per-GPU components against the GPU's memory."""
    p = _check_path(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    bottom = 0.0
    for name, value in _components(est).items():
        ax.bar([0], [gib(value)], bottom=[bottom], label=f"{name} {gib(value):.2f}", width=0.5)
        bottom += gib(value)
    _gpu_line(ax, est)
    ax.set_xticks([0], [f"{est.num_gpus}× {est.gpu.name}, per GPU"])
    ax.set_xlim(-0.8, 1.6)
    ax.set_ylabel("GiB per GPU")
    j = est.job
    ax.set_title(f"{est.model.name}\n{j.mode} · batch {j.batch_size} × {j.seq_len} · {'fits' if est.fits else 'does not fit'}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int) for v in values)


def plot_sweep(points: list[SweepPoint], path: str | Path) -> Path:
    """One axis: stacked components (numbers on the x axis) or stacked bars (names); two axes: one device-total
    line per value of the second. The GPU line is drawn in both."""
    p = _check_path(path)
    if not points:
        raise InvalidJobError("over", "", "at least one point")
    plt = _pyplot()
    fields = list(points[0].values)
    first = fields[0]
    xs = list(dict.fromkeys(pt.values[first] for pt in points))
    numeric = _numeric(xs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(fields) == 1:
        names = list(dict.fromkeys(k for pt in points for k in _components(pt.estimate)))
        series = [[gib(_components(pt.estimate).get(n, 0)) for pt in points] for n in names]
        if numeric:
            ax.stackplot(xs, series, labels=names, alpha=0.85)
            ax.plot(xs, [gib(pt.estimate.per_gpu.device_total) for pt in points], color="black", linewidth=1)
        else:
            bottom = [0.0] * len(xs)
            for name, ys in zip(names, series):
                ax.bar(range(len(xs)), ys, bottom=bottom, label=name, width=0.6)
                bottom = [b + y for b, y in zip(bottom, ys)]
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    else:
        second = fields[1]
        for v in dict.fromkeys(pt.values[second] for pt in points):
            row = [pt for pt in points if pt.values[second] == v]
            xpos = [pt.values[first] for pt in row] if numeric else list(range(len(row)))
            ax.plot(xpos, [gib(pt.estimate.per_gpu.device_total) for pt in row], marker="o", label=f"{second}={v}")
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    if numeric and len(xs) > 2 and xs[0] > 0 and xs[-1] / xs[0] >= 16:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
    _gpu_line(ax, points[0].estimate)
    ax.set_xlabel(first)
    ax.set_ylabel("GiB per GPU (device total)" if len(fields) > 1 else "GiB per GPU")
    est = points[0].estimate
    ax.set_title(f"{est.model.name} · {est.job.mode} · {est.num_gpus}× {est.gpu.name}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p
