"""One prepared GPU run: a fixed grid of jobs measured on a real CUDA GPU, beside `estimate` and `trace`.

    bash benchmarks/gpu_setup.sh [WHEEL_DIR]          # once per fresh machine (≈ 1 min)
    .venv-gpu/bin/python benchmarks/gpu_validation.py  # ≤ 8 min on one H100/H200-class GPU
    python benchmarks/gpu_validation.py --traces       # no GPU: the grid's traces, to commit beside the results
    python benchmarks/gpu_validation.py --list         # the grid

What only a GPU can tell, each job in its own process (an out-of-memory or a hang ends that job, not the run):
allocated vs reserved vs the driver's view (the allocator replay; the CUDA context and workspace constants),
flash vs memory-efficient vs eager attention kernels, LoRA and QLoRA on bitsandbytes' real 4-bit kernels, 8-bit
and paged optimizers, gradient checkpointing, prefill and decode with a real KV cache, a long context, and one vLLM
engine start when vLLM is installed. Models are catalog configs with random weights: nothing is downloaded.

Writes benchmarks/results/gpu_validation.jsonl (one record per job: measured, estimate, trace, versions). Without an
NVIDIA GPU it prints one line and exits with code 2. The results are data to explain in docs/ACCURACY.md ("our own
GPU runs"), never something the estimator is tuned to silently.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "benchmarks" / "results" / "gpu_validation.jsonl"
TRACES = ROOT / "benchmarks" / "results" / "gpu_validation_trace.jsonl"
SCHEMA_VERSION = 1
BUDGET_S = 450  # the whole grid, so that setup + run fit one 10-minute call (issue 13)
MAX_PARAMS = 8.5e9  # "≤ 8B" models (Llama-3.1-8B has 8.03B)

# What the grid must cover (issue 13); every job names the ones it tests.
CATEGORIES = (
    "allocator",  # allocated vs reserved vs device total: the caching-allocator replay
    "context",  # the CUDA context / cuBLAS workspace constant
    "kernel-flash", "kernel-efficient", "kernel-eager",  # SDPA kernels and eager attention
    "lora", "qlora",  # PEFT LoRA; QLoRA on bitsandbytes' real 4-bit kernels
    "optimizer-8bit", "optimizer-paged",  # bitsandbytes optimizers
    "checkpointing",
    "prefill", "decode",  # inference with a real KV cache
    "long-context",
    "vllm",  # one engine start, if vLLM installs
)


@dataclass(frozen=True)
class GridJob:
    """One job of the grid: a catalog model, JOBS.md fields, what it tests, how it runs."""

    id: str
    model: str  # catalog name (config only; random weights)
    job: Mapping[str, Any]  # JOBS.md fields; gpu and num_gpus are set from the device at run time
    categories: tuple[str, ...]
    sdpa_backend: str | None = None  # restrict SDPA to one kernel ("flash", "efficient"); None: torch chooses
    timeout_s: int = 90  # a hung or thrashing job is killed after this
    kind: str = "measure"  # "measure" (modelmem.trace.measure) or "vllm" (an engine start)
    why: str = ""


def _j(**kw: Any) -> dict[str, Any]:
    return kw


# Sizes are chosen so that every job fits an 80 GB H100 by the estimate with room to spare (tested), and runs in
# seconds: two training steps, or a prefill and its decode steps.
GRID: tuple[GridJob, ...] = (
    GridJob("context-smollm-infer", "smollm2-135m", _j(mode="inference", batch_size=1, seq_len=128, new_tokens=8),
            ("context", "prefill", "decode"), why="tiny model: device used is mostly the CUDA context and workspaces"),
    GridJob("alloc-llama1b-train-mixed", "llama-3.2-1b", _j(mode="train", batch_size=4, seq_len=1024),
            ("allocator",), why="HF Trainer mixed precision: fp32 master weights, many mid-size blocks"),
    GridJob("alloc-qwen0.5b-train-pure", "qwen2.5-0.5b", _j(mode="train", precision="pure", batch_size=8, seq_len=1024),
            ("allocator",), why="large vocabulary: logits dominate the reserved/allocated gap"),
    GridJob("kernel-default-smollm1.7b", "smollm2-1.7b", _j(mode="train", precision="pure", batch_size=2, seq_len=2048),
            ("allocator",), why="the kernel torch picks by itself, beside the three forced ones below"),
    GridJob("kernel-flash-smollm1.7b", "smollm2-1.7b", _j(mode="train", precision="pure", batch_size=2, seq_len=2048, attention="flash"),
            ("kernel-flash",), sdpa_backend="flash"),
    GridJob("kernel-efficient-smollm1.7b", "smollm2-1.7b", _j(mode="train", precision="pure", batch_size=2, seq_len=2048),
            ("kernel-efficient",), sdpa_backend="efficient", why="memory-efficient SDPA (no GQA support: hence an MHA model for the kernel jobs)"),
    GridJob("kernel-eager-smollm1.7b", "smollm2-1.7b", _j(mode="train", precision="pure", batch_size=2, seq_len=2048, attention="eager"),
            ("kernel-eager",), why="eager keeps s×s scores and probabilities per layer"),
    GridJob("kernel-eager-gemma2-prefill", "gemma-2-2b", _j(mode="inference", batch_size=1, seq_len=4096, new_tokens=4),
            ("kernel-eager", "prefill"), why="Gemma 2's soft-capping has no SDPA path: eager whatever is asked"),
    GridJob("lora-qwen3-4b-qv-b4", "qwen3-4b", _j(mode="lora", lora_rank=8, lora_alpha=16, lora_targets="q_proj,v_proj", batch_size=4, seq_len=2048),
            ("lora",), why="issue 8: an independent fake-CUDA trace gives 64,462,380,032 B; modelmem trace −4.7 %"),
    GridJob("lora-llama8b-all-ckpt", "llama-3.1-8b", _j(mode="lora", lora_rank=16, lora_alpha=32, lora_targets="all-linear", grad_checkpointing="full", batch_size=1, seq_len=2048),
            ("lora", "checkpointing")),
    GridJob("qlora-llama8b-nf4-ckpt", "llama-3.1-8b", _j(mode="qlora", quant="nf4", lora_rank=16, lora_alpha=32, lora_targets="all-linear", grad_checkpointing="full", batch_size=1, seq_len=2048),
            ("qlora", "checkpointing")),
    GridJob("qlora-qwen3-1.7b-dq", "qwen3-1.7b", _j(mode="qlora", quant="nf4-dq", lora_rank=8, lora_alpha=16, lora_targets="q_proj,v_proj", batch_size=2, seq_len=1024),
            ("qlora",), why="double quantization, no checkpointing: the 4-bit matmul's saved inputs"),
    GridJob("qlora-mistral7b-paged8", "mistral-7b-v0.3", _j(mode="qlora", quant="nf4", optimizer="paged-adamw-8bit", lora_rank=16, lora_alpha=32, lora_targets="all-linear", grad_checkpointing="full", batch_size=1, seq_len=2048),
            ("qlora", "optimizer-paged", "checkpointing")),
    GridJob("optim-8bit-llama1b", "llama-3.2-1b", _j(mode="train", precision="pure", optimizer="adamw-8bit", batch_size=2, seq_len=1024),
            ("optimizer-8bit",)),
    GridJob("optim-paged8-llama1b", "llama-3.2-1b", _j(mode="train", precision="pure", optimizer="paged-adamw-8bit", batch_size=2, seq_len=1024),
            ("optimizer-paged",), why="paged states live in managed memory: outside torch's counters, inside the driver's"),
    GridJob("optim-paged32-qwen0.5b", "qwen2.5-0.5b", _j(mode="train", precision="pure", optimizer="paged-adamw", batch_size=2, seq_len=1024),
            ("optimizer-paged",)),
    GridJob("ckpt-none-qwen3-1.7b", "qwen3-1.7b", _j(mode="train", precision="pure", batch_size=4, seq_len=2048),
            ("checkpointing",)),
    GridJob("ckpt-full-qwen3-1.7b", "qwen3-1.7b", _j(mode="train", precision="pure", grad_checkpointing="full", batch_size=4, seq_len=2048),
            ("checkpointing",)),
    GridJob("full-qwen3-4b-pure-ckpt", "qwen3-4b", _j(mode="train", precision="pure", grad_checkpointing="full", batch_size=2, seq_len=2048),
            ("allocator", "checkpointing"), why="optimizer step peak (AdamW foreach temporaries) of a mid-size model"),
    GridJob("infer-llama8b-b8-decode", "llama-3.1-8b", _j(mode="inference", batch_size=8, seq_len=2048, new_tokens=64),
            ("prefill", "decode")),
    GridJob("infer-qwen2.5-7b-b16", "qwen2.5-7b", _j(mode="inference", batch_size=16, seq_len=1024, new_tokens=32),
            ("prefill", "decode"), why="a large vocabulary at batch 16"),
    GridJob("infer-mistral7b-eager", "mistral-7b-v0.3", _j(mode="inference", batch_size=1, seq_len=4096, new_tokens=16, attention="eager"),
            ("kernel-eager", "prefill", "decode")),
    GridJob("long-llama1b-train-16k", "llama-3.2-1b", _j(mode="train", precision="pure", grad_checkpointing="full", batch_size=1, seq_len=16384),
            ("long-context", "checkpointing"), why="logits (s × V in fp32) dominate"),
    GridJob("long-llama8b-prefill-32k", "llama-3.1-8b", _j(mode="inference", batch_size=1, seq_len=32768, new_tokens=8),
            ("long-context", "prefill", "decode")),
    GridJob("long-qwen3-4b-lora-8k", "qwen3-4b", _j(mode="lora", grad_checkpointing="full", batch_size=1, seq_len=8192),
            ("long-context", "lora", "checkpointing")),
    GridJob("vllm-qwen0.5b-start", "qwen2.5-0.5b", _j(mode="inference", runtime="vllm", gpu_memory_utilization=0.5, max_model_len=4096, seq_len=4096),
            ("vllm",), timeout_s=180, kind="vllm", why="engine start: weights, profiled activations, KV blocks in the budget"),
)


def grid_by_id() -> dict[str, GridJob]:
    return {g.id: g for g in GRID}


def make_grid_job(g: GridJob, gpu: str = "h100-80gb") -> Any:
    """The validated modelmem Job of a grid entry, on one GPU of the given catalog kind."""
    from modelmem.job import make_job

    return make_job(**{**g.job, "gpu": gpu, "num_gpus": 1})


# ---------------------------------------------------------------------------------------------------- the record
MEASURED_KEYS = (
    "allocated_peak", "reserved_peak", "weights_allocated", "device_used_at_init", "device_used", "cuda_context",
    "device_total", "device_total_memory", "params", "trainable_params", "seconds", "sdpa_backend", "num_gpu_blocks",
)
ESTIMATE_KEYS = ("allocated_peak", "reserved_peak", "device_total", "cuda_context", "components")
TRACE_KEYS = ("allocated_peak", "reserved_peak", "peak_op", "peak_phase", "versions")
ENV_KEYS = ("device", "device_memory_bytes", "driver", "cuda", "python", "torch", "transformers", "peft", "bitsandbytes",
            "vllm", "modelmem_commit", "alloc_conf")
RECORD_KEYS = ("schema", "run_id", "id", "model", "categories", "job", "sdpa_backend", "status", "error", "env",
               "measured", "estimate", "trace", "ratios", "wall_s")
STATUSES = ("ok", "oom", "timeout", "error", "skipped")


def build_record(g: GridJob, job: Any, *, run_id: str, env: Mapping[str, Any], status: str, error: str | None,
                 measured: Mapping[str, Any] | None, estimate: Any | None, trace: Mapping[str, Any] | None,
                 wall_s: float) -> dict[str, Any]:
    """One line of gpu_validation.jsonl. `estimate` is a modelmem Estimate (or None when it failed)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: one of {', '.join(STATUSES)}")
    m = {k: (measured or {}).get(k) for k in MEASURED_KEYS} if measured is not None else None
    if m is not None and m["device_total"] is None and m["device_used"] is not None:
        m["device_total"] = m["device_used"]  # the driver's view after the run: cached segments never go back
    e = None
    if estimate is not None:
        pg = estimate.per_gpu
        e = {"allocated_peak": int(pg.allocated_peak), "reserved_peak": int(pg.reserved_peak),
             "device_total": int(pg.device_total), "cuda_context": int(pg.cuda_context),
             "components": {k: int(v) for k, v in pg.components.items()}}
    t = {k: (trace or {}).get(k) for k in TRACE_KEYS} if trace is not None else None
    ratios: dict[str, float | None] = {}
    for key in ("allocated_peak", "reserved_peak", "device_total", "cuda_context"):
        got = m.get(key) if m else None
        ratios[f"estimate/{key}"] = (e[key] / got) if (e and got) else None
    for key in ("allocated_peak", "reserved_peak"):
        got = m.get(key) if m else None
        ratios[f"trace/{key}"] = (t[key] / got) if (t and t.get(key) and got) else None
    return {
        "schema": SCHEMA_VERSION, "run_id": run_id, "id": g.id, "model": g.model, "categories": list(g.categories),
        "job": job.to_dict() if job is not None else dict(g.job), "sdpa_backend": g.sdpa_backend, "status": status,
        "error": error, "env": {k: env.get(k) for k in ENV_KEYS}, "measured": m, "estimate": e, "trace": t,
        "ratios": ratios, "wall_s": round(wall_s, 2),
    }


def check_record(rec: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first key that breaks the schema (the tests and readers rely on it)."""
    if list(rec) != list(RECORD_KEYS):
        raise ValueError(f"record keys {list(rec)}: expected {list(RECORD_KEYS)}")
    if rec["schema"] != SCHEMA_VERSION or rec["status"] not in STATUSES:
        raise ValueError(f"schema/status: {rec['schema']!r}, {rec['status']!r}")
    if list(rec["env"]) != list(ENV_KEYS):
        raise ValueError(f"env keys {list(rec['env'])}")
    if rec["status"] == "ok" and rec["measured"] is None:
        raise ValueError("measured: required when status is ok")
    if rec["status"] != "ok" and not rec["error"]:
        raise ValueError("error: required when status is not ok")
    for name, keys in (("measured", MEASURED_KEYS), ("trace", TRACE_KEYS)):
        if rec[name] is not None and list(rec[name]) != list(keys):
            raise ValueError(f"{name} keys {list(rec[name])}: expected {list(keys)}")
    if rec["estimate"] is not None:
        if list(rec["estimate"]) != list(ESTIMATE_KEYS):
            raise ValueError(f"estimate keys {list(rec['estimate'])}")
        if sum(rec["estimate"]["components"].values()) != rec["estimate"]["allocated_peak"]:
            raise ValueError("estimate.components: must sum to allocated_peak")
    for name in ("measured", "estimate", "trace"):
        for k, v in (rec[name] or {}).items():
            if k in ("allocated_peak", "reserved_peak", "device_total", "device_used", "cuda_context") and v is not None and (not isinstance(v, int) or v < 0):
                raise ValueError(f"{name}.{k}: a non-negative integer of bytes, got {v!r}")


# ---------------------------------------------------------------------------------------------------- the device
def detect_gpu() -> dict[str, Any] | None:
    """The first NVIDIA GPU as nvidia-smi reports it (name, driver, memory), or None. Does not touch CUDA."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, driver, mib = (x.strip() for x in out[0].split(",")[:3])
    return {"device": name, "driver": driver, "device_memory_bytes": int(float(mib)) * 2**20}


def catalog_gpu(device_name: str, memory_bytes: int) -> str:
    """The catalog GPU this device is: the same model word (H100, H200, A100…), the nearest memory size."""
    from modelmem.catalog.gpus import gpus

    # model words such as H100, A100, L40S, 4090 (not sizes such as 80GB)
    words = {w for w in device_name.upper().replace("-", " ").split() if any(c.isdigit() for c in w) and not w.endswith("GB")}
    rows = [g for g in gpus() if words & set(g.label.upper().replace("-", " ").split())] or list(gpus())
    return min(rows, key=lambda g: abs(g.memory_bytes - memory_bytes)).name


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------------------- one job (child)
def _child(job_id: str) -> int:
    """Run one grid job in this process; print one JSON line (measured figures, or the failure)."""
    g = grid_by_id()[job_id]
    out: dict[str, Any] = {"id": job_id}
    try:
        import torch
        from modelmem.trace._deps import versions

        out["env"] = {"cuda": torch.version.cuda, **versions()}
        if g.kind == "vllm":
            out["measured"] = _vllm_start(g)
        else:
            import modelmem
            from modelmem.trace._engine import measure_run

            spec = modelmem.resolve_model(g.model)
            r = measure_run(spec.config, make_grid_job(g), sdpa_backend=g.sdpa_backend)
            out["measured"] = {k: getattr(r, k) for k in MEASURED_KEYS if hasattr(r, k)}
            out["notes"] = list(r.notes)
        out["status"] = "ok"
    except Exception as e:  # one line back to the parent, whatever broke
        oom = type(e).__name__ == "OutOfMemoryError"
        out["status"] = "oom" if oom else "error"
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
        if oom:
            import torch

            out["measured"] = {"allocated_peak": torch.cuda.max_memory_allocated(), "reserved_peak": torch.cuda.max_memory_reserved()}
    print(json.dumps(out), flush=True)
    return 0


def _vllm_start(g: GridJob) -> dict[str, Any]:
    """Start a vLLM engine on the catalog config with dummy weights; read the KV blocks and the device use."""
    import tempfile

    import modelmem
    import torch
    from vllm import LLM  # noqa: F401  (ImportError → "error: vllm not installed")

    spec = modelmem.resolve_model(g.model)
    torch.cuda.init()
    free0, total = torch.cuda.mem_get_info()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        cfg = {k: v for k, v in spec.config.items() if v is not None}
        Path(d, "config.json").write_text(json.dumps(cfg))
        llm = LLM(model=d, load_format="dummy", skip_tokenizer_init=True, enforce_eager=True,
                  gpu_memory_utilization=g.job["gpu_memory_utilization"], max_model_len=g.job["max_model_len"])
        free1, _ = torch.cuda.mem_get_info()
        blocks = None
        for path in ("llm_engine.cache_config.num_gpu_blocks", "llm_engine.vllm_config.cache_config.num_gpu_blocks"):
            obj: Any = llm
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
                blocks = int(obj)
                break
            except (AttributeError, TypeError, ValueError):
                continue
    # vLLM allocates in its own worker process: the driver's view is the measurement
    return {"device_used_at_init": total - free0, "device_used": total - free1, "device_total": total - free1,
            "device_total_memory": total, "num_gpu_blocks": blocks, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------------- the run (parent)
def _estimate(g: GridJob, job: Any) -> tuple[Any | None, str | None]:
    import modelmem
    from modelmem.errors import ModelmemError
    from modelmem.plan import estimate_spec

    try:
        return estimate_spec(modelmem.resolve_model(g.model), job), None
    except ModelmemError as e:
        return None, str(e)


def load_traces(path: Path = TRACES) -> dict[str, dict[str, Any]]:
    """Committed traces of the grid, by job id (made with --traces on a machine with the trace extra's pins)."""
    if not path.exists():
        return {}
    return {r["id"]: r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())}


def _trace_for(traces: Mapping[str, Mapping[str, Any]], g: GridJob, job: Any) -> dict[str, Any] | None:
    t = traces.get(g.id)
    # a trace of another job (the grid changed since) is not this job's trace. The GPU does not matter, and job
    # fields added since the trace was made compare by the ones both know (a new field's default keeps old behaviour).
    if t is None:
        return None
    now = job.to_dict()
    same = all(now[k] == v for k, v in t["job"].items() if k != "gpu" and k in now)
    return dict(t) if same else None


def _run_child(g: GridJob, timeout: float) -> tuple[str, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}  # the allocator's defaults
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", g.id], capture_output=True,
                           text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "timeout", {"error": f"killed after {timeout:.0f} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if not lines:
        tail = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
        return "error", {"error": f"no result (exit {p.returncode}): {tail[:300]}"}
    res = json.loads(lines[-1])
    return res["status"], res


def run(out_path: Path, only: Sequence[str] = (), budget_s: float = BUDGET_S) -> int:
    gpu = detect_gpu()
    if gpu is None:
        print("gpu_validation: no NVIDIA GPU here (nvidia-smi missing or silent); nothing run")
        return 2
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    gpu_name = catalog_gpu(gpu["device"], gpu["device_memory_bytes"])
    env: dict[str, Any] = {**gpu, "python": platform.python_version(), "modelmem_commit": _git_commit(),
                           "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    if env["alloc_conf"]:
        print(f"note: PYTORCH_CUDA_ALLOC_CONF={env['alloc_conf']} is not passed to the jobs (the estimate models the defaults)")
    traces = load_traces()
    jobs = [g for g in GRID if not only or g.id in only]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    counts: dict[str, int] = {}
    with out_path.open("w") as fh:
        for i, g in enumerate(jobs):
            job = make_grid_job(g, gpu_name)
            est, est_err = _estimate(g, job)
            left = budget_s - (time.monotonic() - start)
            t0 = time.monotonic()
            if left < min(g.timeout_s, 30):
                status, res = "skipped", {"error": f"time budget ({budget_s:.0f} s) spent"}
            elif g.kind == "vllm" and importlib.util.find_spec("vllm") is None:
                status, res = "skipped", {"error": "vllm not installed"}
            else:
                status, res = _run_child(g, min(g.timeout_s, left))
            env.update({k: v for k, v in res.get("env", {}).items() if env.get(k) is None})
            wall = time.monotonic() - t0
            error = res.get("error") or (f"estimate: {est_err}" if est_err else None)
            rec = build_record(g, job, run_id=run_id, env=env, status=status, error=error, measured=res.get("measured"),
                               estimate=est, trace=_trace_for(traces, g, job), wall_s=wall)
            check_record(rec)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            counts[status] = counts.get(status, 0) + 1
            m = rec["measured"] or {}
            ratio = rec["ratios"]["estimate/allocated_peak"]
            print(f"[{i + 1:>2}/{len(jobs)}] {g.id:<32} {status:<8} {wall:5.1f}s  allocated "
                  f"{(m.get('allocated_peak') or 0) / 2**30:7.2f} GiB  estimate/measured "
                  f"{'-' if ratio is None else f'{ratio:.3f}'}  {rec['error'] or ''}", flush=True)
    print(f"{out_path}: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))} in {time.monotonic() - start:.0f} s")
    return 0


def make_traces(path: Path = TRACES, only: Sequence[str] = ()) -> int:
    """Trace the grid's measure jobs on fake tensors (CPU, the trace extra's pinned versions), one process each.
    Keeps the traces already there that still match their job (all of them are redone with --only naming them)."""
    old = load_traces(path)
    rows: dict[str, dict[str, Any]] = {}
    for g in GRID:
        if g.kind != "measure":
            continue
        if (only and g.id not in only) or (not only and _trace_for(old, g, make_grid_job(g)) is not None):
            if g.id in old:
                rows[g.id] = old[g.id]
            continue
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--trace-child", g.id], capture_output=True,
                           text=True, env=env, timeout=900)
        lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
        if lines:
            rows[g.id] = json.loads(lines[-1])
            print(f"{g.id:<32} traced in {rows[g.id]['seconds']:.0f} s", flush=True)
        else:
            print(f"{g.id:<32} not traced: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}", flush=True)
        order = [x.id for x in GRID if x.id in rows]  # written after every job: an interrupted run keeps its traces
        path.write_text("".join(json.dumps(rows[i]) + "\n" for i in order))
    return 0


def _trace_child(job_id: str) -> int:
    import modelmem
    from modelmem.trace._deps import versions
    from modelmem.trace._engine import run_trace

    g = grid_by_id()[job_id]
    job = make_grid_job(g)
    r = run_trace(modelmem.resolve_model(g.model).config, job)
    v = versions()
    print(json.dumps({"id": g.id, "job": job.to_dict(), "allocated_peak": r.allocated_peak, "reserved_peak": r.reserved_peak,
                      "peak_op": r.peak_op, "peak_phase": r.peak_phase, "seconds": round(r.seconds, 1),
                      "versions": {k: v[k] for k in ("torch", "transformers", "peft")}}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=RESULTS, help="result file (default benchmarks/results/gpu_validation.jsonl)")
    parser.add_argument("--only", default="", help="comma-separated job ids (default: the whole grid)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop starting jobs after this many seconds")
    parser.add_argument("--list", action="store_true", help="print the grid and exit (no GPU needed)")
    parser.add_argument("--traces", action="store_true", help="trace the grid on fake tensors (no GPU) into " + str(TRACES.relative_to(ROOT)))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--trace-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = [x for x in args.only.split(",") if x]
    unknown = sorted(set(only) - set(grid_by_id()))
    if unknown:
        print(f"gpu_validation: --only {unknown[0]!r} is not a grid job; see --list")
        return 2
    if args.child:
        return _child(args.child)
    if args.trace_child:
        return _trace_child(args.trace_child)
    if args.list:
        for g in GRID:
            print(f"{g.id:<32} {g.model:<18} {','.join(g.categories):<40} {json.dumps(dict(g.job))}")
        return 0
    if args.traces:
        return make_traces(only=only)
    return run(args.out, only, args.budget_s)


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------------------------------- docs/ACCURACY.md
def render_section(path: Path = RESULTS) -> list[str]:
    """The "Our own GPU runs" section of docs/ACCURACY.md (benchmarks/accuracy.py --write-docs calls this)."""
    out = ["## Our own GPU runs", "",
           "Measured by `benchmarks/gpu_validation.py` (benchmarks/README.md): catalog configs with random weights, one",
           "process per job, torch's allocator counters and the driver's used memory. These are data to explain, kept",
           "apart from the published measurements above and never fitted to silently: a constant changed because of",
           "them names the run and the job in its comment. Error = (estimate − measured) / measured.", ""]
    if not path.exists():
        return out + ["No GPU run yet: the grid is ready and tested without a GPU (`python benchmarks/gpu_validation.py --list`)."]
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if not recs:
        return out + ["No GPU run yet (the result file is empty)."]
    env = recs[0]["env"]
    out += [f"Run {recs[0]['run_id']} on {env['device']} (driver {env['driver']}, CUDA {env['cuda']}), torch {env['torch']},",
            f"transformers {env['transformers']}, peft {env['peft']}, bitsandbytes {env['bitsandbytes']}, vllm {env['vllm'] or '-'};",
            f"modelmem {env['modelmem_commit']}. The trace column is `modelmem trace` of the same job (fake CPU tensors).", "",
            "| job | tests | status | allocated GiB | estimate: allocated | reserved | device total | trace: allocated | context GiB |",
            "|---|---|---|---|---|---|---|---|---|"]

    def pct(ratio: float | None) -> str:
        return "-" if ratio is None else f"{(ratio - 1) * 100:+.1f} %"

    for r in recs:
        m = r["measured"] or {}
        alloc = f"{m['allocated_peak'] / 2**30:.2f}" if m.get("allocated_peak") else "-"
        ctx = f"{m['cuda_context'] / 2**30:.2f}" if m.get("cuda_context") else "-"
        q = r["ratios"]
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {(r['error'] or '')[:60]}"
        out.append(f"| {r['id']} | {', '.join(r['categories'])} | {status} | {alloc} | {pct(q['estimate/allocated_peak'])} | "
                   f"{pct(q['estimate/reserved_peak'])} | {pct(q['estimate/device_total'])} | {pct(q['trace/allocated_peak'])} | {ctx} |")
    return out
