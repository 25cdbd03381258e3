"""What the page asks the server: catalog search, uploads, and one job's result. Only public calls compute —
`modelmem.estimate`, `modelmem.compare.compare`, `modelmem.sweep.sweep` (and the planner where installed) — so the
page can never disagree with the CLI; this module only gathers their answers into JSON for the page to draw.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from modelmem.errors import InvalidJobError, ModelmemError
from modelmem.job import FIELDS
from modelmem.units import gib

MAX_UPLOAD_CONFIG_BYTES = 4 * 1024 * 1024  # config.json: real ones are a few KiB (sources.config caps at the same)
MAX_UPLOAD_GGUF_BYTES = 64 * 1024 * 1024  # the page sends only a GGUF's first 64 MiB: the header (vocab included)
MAX_UPLOADS_KEPT = 64  # uploads live in memory, newest kept; a link naming an evicted one asks to upload again
_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*(/[A-Za-z0-9][\w.+-]*)?$")  # catalog names, sizes, Hub ids: never a path
SEQ_POINTS = tuple(2**k for k in range(8, 18))  # 256 … 131072 tokens
BATCH_POINTS = tuple(2**k for k in range(0, 8))  # 1 … 128 sequences


class _Uploads:
    def __init__(self) -> None:
        self._specs: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, spec: Any) -> None:
        with self._lock:
            self._specs[key] = spec
            self._specs.move_to_end(key)
            while len(self._specs) > MAX_UPLOADS_KEPT:
                self._specs.popitem(last=False)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._specs.get(key)


UPLOADS = _Uploads()


def upload(filename: str, data: bytes) -> dict[str, str]:
    """Parse an uploaded config.json or GGUF header into a spec kept in memory; the page then names it
    `upload:<digest>` (a link to it works while this server holds the upload)."""
    import json

    name = os.path.basename(filename or "upload").strip() or "upload"
    if data[:4] == b"GGUF":
        if len(data) > MAX_UPLOAD_GGUF_BYTES:
            raise InvalidJobError("model", name, f"a GGUF header of at most {MAX_UPLOAD_GGUF_BYTES} bytes")
        from modelmem.sources.gguf import parse_gguf_header, spec_from_metadata

        header = parse_gguf_header(data, name)
        title = header.metadata.get("general.name")
        spec = spec_from_metadata(dict(header.metadata), header.tensors,
                                  name=title if isinstance(title, str) else name.rsplit(".", 1)[0], source=f"uploaded {name}")
    else:
        if len(data) > MAX_UPLOAD_CONFIG_BYTES:
            raise InvalidJobError("model", name, f"a config.json of at most {MAX_UPLOAD_CONFIG_BYTES} bytes, or a GGUF file")
        from modelmem.errors import ConfigError
        from modelmem.sources.config import spec_from_config

        try:
            config = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(name, f"not valid JSON ({e}); upload a config.json or a .gguf") from None
        spec = spec_from_config(config, name=name.removesuffix(".json"), source=f"uploaded {name}")
    key = "upload:" + hashlib.sha256(data).hexdigest()[:16]
    UPLOADS.put(key, spec)
    return {"model": key, "name": spec.name}


def resolve(model: str) -> Any:
    """A spec for the page's model text: an upload, or a catalog name, size or Hub id — never a server path."""
    import modelmem

    text = model.strip()
    if not text:
        raise InvalidJobError("model", text, "a catalog name, a Hugging Face id, a size such as 7B, or an uploaded file")
    if text.startswith("upload:"):
        spec = UPLOADS.get(text)
        if spec is None:
            raise InvalidJobError("model", text, "an upload this server still holds; upload the file again")
        return spec
    if not _NAME.match(text) or ".." in text or os.path.exists(text):
        raise InvalidJobError("model", text, "a catalog name, a Hugging Face id (owner/name) or a size; "
                                             "the page reads no server paths: upload a config.json or GGUF instead")
    return modelmem.resolve_model(text)


def search_models(query: str, limit: int = 25) -> list[dict[str, Any]]:
    from modelmem.catalog.models import entries

    q = query.strip().lower()
    rows = [e for e in entries() if not q or q in (e.id + " " + " ".join(e.aliases)).lower()]
    return [{"id": e.id, "alias": e.aliases[0] if e.aliases else "", "params": e.param_count} for e in rows[:limit]]


def job_from_query(params: Mapping[str, str]) -> dict[str, str]:
    """The job fields a query string sets (empty means default); anything else is refused by name."""
    unknown = sorted(set(params) - set(FIELDS) - {"model"})
    if unknown:
        raise InvalidJobError(unknown[0], params[unknown[0]], "a job field: " + ", ".join(FIELDS))
    return {k: v.strip() for k, v in params.items() if k in FIELDS and v.strip()}


def _verdict(est: Any) -> str:
    pg, gpu = est.per_gpu, est.gpu
    strategy = "" if est.num_gpus == 1 else f" ({est.job.strategy})"
    free = f" ({gib(gpu.usable_bytes - pg.device_total):.1f} GiB free)" if est.fits else ""
    return (f"{'fits' if est.fits else 'does not fit'} {est.num_gpus}× {gpu.label or gpu.name}{strategy}: "
            f"{gib(pg.device_total):.1f} of {gib(gpu.usable_bytes):.1f} GiB per GPU{free}")


def _bar(est: Any) -> list[dict[str, Any]]:
    pg = est.per_gpu
    parts = [{"name": k, "bytes": int(v)} for k, v in pg.components.items() if v]
    if pg.allocator_overhead:
        parts.append({"name": "allocator (reserved − allocated)", "bytes": int(pg.allocator_overhead)})
    if pg.cuda_context:
        parts.append({"name": "CUDA context and buffers", "bytes": int(pg.cuda_context)})
    return parts


def _curve(spec: Any, job: dict[str, Any], field: str, xs: tuple[int, ...]) -> dict[str, Any]:
    """Per-GPU device total over one field, with and without checkpointing where the mode trains; the largest
    value whose estimate fits marks the boundary."""
    from modelmem.sweep import Axis, sweep

    variants = ("none", "full") if job.get("mode") in ("train", "lora", "qlora") else (None,)
    series = []
    for ckpt in variants:
        base = dict(job) | ({"grad_checkpointing": ckpt} if ckpt else {})
        base.pop(field, None)
        ys: list[int | None] = []
        fitting: list[int] = []
        for x in xs:  # one point at a time: a value the job refuses (too long for the model) leaves a gap
            try:
                est = sweep(spec, [Axis(field, (x,))], **base)[0].estimate
            except ModelmemError:
                ys.append(None)
                continue
            ys.append(int(est.per_gpu.device_total))
            if est.fits:
                fitting.append(x)
        series.append({"label": f"checkpointing {ckpt}" if ckpt else "per-GPU total", "checkpointing": ckpt,
                       "y": ys, "largest_fitting": max(fitting) if fitting else None})
    return {"field": field, "x": list(xs), "series": series}


_FITS = (("batch-size", "batch_size", "Largest batch size"), ("seq-len", "seq_len", "Longest sequence (context)"))


def _planner(spec: Any, job: dict[str, Any], est: Any) -> dict[str, Any] | None:
    """The planner's answers, where `modelmem.fit` exists: the largest batch and context on the estimate's GPUs,
    the estimate's own suggestions, and layouts where the planner offers them."""
    import modelmem

    if not hasattr(modelmem, "fit"):
        return None
    fixed = {**job, "num_gpus": est.num_gpus, "strategy": est.job.strategy}
    answers = []
    for name, field, label in _FITS:
        try:
            r = modelmem.fit(spec, name, **fixed)
        except ModelmemError as e:
            answers.append({"field": field, "label": label, "max": None, "value": _one_line(e)})
            continue
        value = f"{r.max:,d}" if r.max is not None else "none fits"
        reason = getattr(r, "reason", "")
        answers.append({"field": field, "label": label, "max": r.max, "value": value + (f" ({reason})" if reason else "")})
    suggestions = []
    for sug in getattr(est, "suggestions", ()) or ():
        d = sug.to_dict()
        suggestions.append({"change": {k: _plain(v) for k, v in d["change"].items()}, "num_gpus": d["num_gpus"],
                            "device_total": d["device_total"], "fits": d["fits"], "note": d.get("note", "")})
    from modelmem.cli import _layout_label, _savers_label
    from modelmem.planner.layouts import search
    from modelmem.units import gib

    try:  # the planner's layout search on the chosen GPU kind, as `modelmem plan --max-gpus 64 --top 5` answers
        found = search(spec, {k: v for k, v in job.items() if k != "num_gpus"}, gpus=[est.gpu.name],
                       max_gpus=PLAN_MAX_GPUS, top=5)
        plans = [f"{p.num_gpus}× {p.gpu.label or p.gpu.name} · {_layout_label(p.job)} · {_savers_label(p.job)} · "
                 f"{gib(p.per_gpu.device_total):.1f} GiB per GPU" for p in found]
        if not found:
            plans = [f"no layout fits on up to {PLAN_MAX_GPUS} GPUs"]
    except ModelmemError as e:
        plans = [_one_line(e)]
    return {"answers": answers, "suggestions": suggestions, "plans": plans}


PLAN_MAX_GPUS = 64  # the page's layout search bound (the CLI's `plan` searches up to 1,024)


def _plain(v: Any) -> Any:
    """JSON-safe: dicts, lists and scalars as they are; anything else as text."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _speed(est: Any) -> dict[str, Any] | None:
    """The estimate's own time estimate (modelmem.speed), as its one line and assumptions."""
    speed = getattr(est, "speed", None)
    if speed is None:
        return None
    return {"line": speed.line(), "assumptions": list(getattr(speed, "assumptions", ()))}


def _lead(spec: Any, job: dict[str, str]) -> tuple[dict[str, Any], Any]:
    """The job the page shows. As the CLI's text does, a GPU count left to `auto` that needs more than one GPU is
    shown on one GPU (what someone who picked a GPU most likely has), with auto's own answer beside it."""
    import modelmem

    if "num_gpus" in job:
        return job, None
    auto = modelmem.estimate(spec, **job)
    if auto.num_gpus == 1:
        return job, None
    return {**job, "num_gpus": 1}, auto


def _auto_line(auto: Any) -> str | None:
    if auto is None:
        return None
    if auto.fits:
        return f"with Number of GPUs left to auto, the fewest that fit: {_verdict(auto)}"
    return f"with Number of GPUs left to auto: no count up to {auto.num_gpus} fits with strategy {auto.job.strategy}"


def compute(params: Mapping[str, str]) -> dict[str, Any]:
    """Everything the page shows for one job but the curves: verdict, components, totals, seed beside detailed,
    the planner's answers. The page then asks `curves` with the GPU count and strategy this answer resolved."""
    from modelmem.compare import compare

    job = job_from_query(params)
    spec = resolve(params.get("model", ""))
    shown, auto = _lead(spec, job)
    c = compare(spec, **shown)
    d = c.detailed
    return {
        "model": {"name": d.model.name, "params": d.model.params, "trainable_params": d.model.trainable_params},
        "job": d.job.to_dict(),
        "fits": d.fits,
        "verdict": _verdict(d),
        "auto": _auto_line(auto),
        "gpu": {"name": d.gpu.name, "label": d.gpu.label, "memory_bytes": d.gpu.memory_bytes,
                "usable_bytes": d.gpu.usable_bytes, "nominal_gb": d.gpu.nominal_gb},
        "speed": _speed(d),
        "num_gpus": d.num_gpus,
        "bar": _bar(d),
        "totals": {"allocated_peak": d.per_gpu.allocated_peak, "reserved_peak": d.per_gpu.reserved_peak,
                   "device_total": d.per_gpu.device_total},
        "notes": list(d.explanation),
        "comparison": {
            "rows": [{"component": r.component, "detailed": r.detailed, "seed": r.seed, "why": r.why} for r in c.rows],
            "formula": c.formula,
            "seed_total_bytes": c.seed.total_bytes,
            "seed_per_gpu_bytes": c.seed.total_bytes // c.seed.num_gpus,
            "seed_fits": c.seed_fits,
            "seed_gpus_needed": c.seed_gpus_needed,
        },
        "planner": _planner(spec, shown, d),
        "estimate": d.to_dict(),
        "seed": c.seed.to_dict(),
    }


def curves(params: Mapping[str, str]) -> dict[str, Any]:
    """Per-GPU memory against sequence length and batch size for the job in `params`, whose num_gpus (and
    strategy) the page fills from `compute`'s answer, so every point has the same layout."""
    job = job_from_query(params)
    if "num_gpus" not in job:
        raise InvalidJobError("num_gpus", "", "a GPU count (the page passes the one its estimate resolved)")
    spec = resolve(params.get("model", ""))
    return {"curves": [_curve(spec, job, "seq_len", SEQ_POINTS), _curve(spec, job, "batch_size", BATCH_POINTS)]}
