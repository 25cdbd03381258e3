"""trace(): the workload on fake CPU tensors under the storage tracker. measure(): the same workload on a GPU."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelmem.errors import ModelmemError
from modelmem.job import Job
from modelmem.result import Estimate, GPUInfo, ModelInfo, PerGPU
from modelmem.spec import ModelSpec

# The components a trace reports, in this order, always all of them (zero where a job has none).
COMPONENTS = (
    "weights", "weight_copies", "unsharded_params", "gradients", "optimizer_states", "activations", "logits", "kv_cache",
    "temporaries",
)


class NoCudaError(ModelmemError):
    """`measure` needs a CUDA GPU."""

    def __init__(self) -> None:
        super().__init__("measure: no CUDA GPU is available (torch.cuda.is_available() is False); use `modelmem trace` instead")


@dataclass(frozen=True)
class TraceReport:
    """Everything a trace found; `trace()` turns it into an Estimate, the benchmarks read it whole."""

    components: dict[str, int]  # live bytes at the peak, by category (rounded to 512 B)
    allocated_peak: int
    reserved_peak: int  # caching-allocator replay
    peak_op: str
    peak_phase: str
    params: int
    trainable_params: int
    notes: tuple[str, ...]
    seconds: float
    events: int
    phase_peaks: dict[str, dict[str, Any]]  # per phase: highest total reached in it, with its breakdown
    final_components: dict[str, int]  # live at the end of the workload (after the last step), by category


def _category(tag: str | None, phase: str, training: bool) -> str:
    if tag:
        return tag
    if phase == "build":
        return "weights"  # buffers
    if phase in ("logits", "loss_backward"):
        return "logits"  # logits, their fp32 copy, log-softmax, and their gradients at the start of backward
    if training and phase in ("forward", "recompute"):
        return "activations"  # allocated in forward (or recomputed) and still alive: saved for backward
    return "temporaries"


def _breakdown(log: Any, live: Mapping[int, int], training: bool) -> dict[str, int]:
    out = dict.fromkeys(COMPONENTS, 0)
    for sid, nbytes in live.items():
        cat = _category(log.tags.get(sid), log.phases.get(sid, ""), training)
        out[cat if cat in out else "temporaries"] += nbytes
    return out


def _phase_peaks(log: Any, training: bool) -> dict[str, dict[str, Any]]:
    """The highest live total inside each phase (forward, backward, optimizer, prefill, decode…), with its breakdown."""
    from modelmem.trace._tracker import round_block

    best: dict[str, tuple[int, int]] = {}
    cur = 0
    sizes: dict[int, int] = {}
    for i, ev in enumerate(log.events):
        if ev.sid > 0:
            if log.tags.get(ev.sid) == "host":
                continue
            b = round_block(ev.nbytes)
            sizes[ev.sid] = b
            cur += b
            if cur > best.get(ev.phase, (-1, 0))[0]:
                best[ev.phase] = (cur, i)
        else:
            cur -= sizes.pop(-ev.sid, 0)
    # the most each category held at any moment of each phase (e.g. logits at the start of backward, which the
    # phase's own peak can miss when the LM head's weight gradient outweighs them)
    cat_now: dict[str, int] = {}
    cat_max: dict[str, dict[str, int]] = {}
    sizes2: dict[int, tuple[int, str]] = {}
    for ev in log.events:
        if ev.sid > 0:
            if log.tags.get(ev.sid) == "host":
                continue
            cat = _category(log.tags.get(ev.sid), log.phases.get(ev.sid, ""), training)
            b = round_block(ev.nbytes)
            sizes2[ev.sid] = (b, cat)
            cat_now[cat] = cat_now.get(cat, 0) + b
            m = cat_max.setdefault(ev.phase, {})
            if cat_now[cat] > m.get(cat, 0):
                m[cat] = cat_now[cat]
        else:
            b, cat = sizes2.pop(-ev.sid, (0, ""))
            if cat:
                cat_now[cat] -= b
    result: dict[str, dict[str, Any]] = {}
    for phase, (total, idx) in best.items():
        live = _live_at(log, idx + 1)
        result[phase] = {"allocated": total, "op": log.events[idx].op, "components": _breakdown(log, live, training),
                         "category_max": cat_max.get(phase, {})}
    return result


def _live_at(log: Any, end: int) -> dict[int, int]:
    from modelmem.trace._tracker import round_block

    live: dict[int, int] = {}
    for ev in log.events[:end]:
        if ev.sid > 0:
            if log.tags.get(ev.sid) != "host":
                live[ev.sid] = round_block(ev.nbytes)
        else:
            live.pop(-ev.sid, None)
    return live


def _count_params(model: Any) -> tuple[int, int]:
    from modelmem.trace._qlora import Linear4bitShim

    total = trainable = 0
    seen: set[int] = set()
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            # packed 4-bit weights (the shim, or bitsandbytes' Linear4bit when measuring) count as in × out parameters
            packed = isinstance(m, Linear4bitShim) or type(m).__name__ == "Linear4bit"
            n = m.in_features * m.out_features if (packed and name == "weight") else p.numel()
            total += n
            trainable += n if p.requires_grad else 0
    return total, trainable


def run_trace(config: Mapping[str, Any], job: Job, *, phase_detail: bool = False, fast_decode: bool = True,
              device: str = "cpu", progress: Callable[[str], None] | None = None) -> TraceReport:
    """Trace `job` on fake tensors. device "cpu" (the default, `modelmem trace`) or "cuda" (fake CUDA tensors
    through a small native shim, `_fake_cuda`: the reference the CPU route is checked against). `progress` is
    told when each long stage begins ("building", "warm step", "traced step", "prefill", "decode", "replay")."""
    torch, _, _ = _require()
    from torch._subclasses.fake_tensor import FakeTensorMode

    from modelmem.trace._allocator import replay
    from modelmem.trace._routing import gpu_kernels
    from modelmem.trace._tracker import StorageTracker, find_peak, settle_build
    from modelmem.trace._workload import Hooks, build, real_tensor_semantics, run_inference, run_training

    stage = progress or (lambda name: None)
    context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if device == "cuda":
        from modelmem.trace import _fake_cuda

        _fake_cuda.enable()
        context = _fake_cuda.python_side()
    start = time.perf_counter()
    tracker = StorageTracker()
    hooks = Hooks(set_phase=lambda p: setattr(tracker, "phase", p), get_phase=lambda: tracker.phase, tag=tracker.tag,
                  stage=stage)
    notes: list[str] = []
    sharded = job.training and job.strategy in ("fsdp", "zero3") and _gpus(job) > 1
    if sharded:
        from modelmem.trace._sharded import device_mesh, shard

        mesh = device_mesh(_gpus(job))
    stage("building")
    with context, FakeTensorMode(allow_non_fake_inputs=True), tracker, tracker.watching_resizes(), \
            real_tensor_semantics(), gpu_kernels():
        w = build(config, job, torch.device(device), hooks)
        notes += w.notes
        if sharded:
            notes += shard(w, mesh, hooks)
        params, trainable = _count_params(w.model)
        kept = run_training(w, hooks) if job.training else run_inference(w, hooks, fast_decode)
        if fast_decode and not job.training and job.new_tokens > 2:
            notes.append(f"decode: steps 1 and {job.new_tokens} run, the cache grown in between (the last step is the decode peak)")
        end = len(tracker.log.events)
        del w, kept
    stage("replay")
    final = _breakdown(tracker.log, _live_at(tracker.log, end), job.training)
    log = settle_build(tracker.log)
    peak = find_peak(log)
    components = _breakdown(log, peak.live, job.training)
    rep = replay((ev.sid, ev.nbytes) for ev in log.events if log.tags.get(abs(ev.sid)) != "host")
    notes.append(f"fake {device.upper()} tensors with GPU defaults: AdamW foreach, 512-byte rounding, attention and "
                 "dropout through the kernels torch's CUDA selector picks (flash, memory-efficient or math; bool dropout masks)")
    notes.append("reserved: replay through a model of PyTorch's CUDA caching allocator (defaults, one stream)")
    report = TraceReport(
        components=components,
        allocated_peak=peak.allocated,
        reserved_peak=max(rep.reserved_peak, peak.allocated),
        peak_op=peak.op,
        peak_phase=peak.phase,
        params=params,
        trainable_params=trainable,
        notes=tuple(notes),
        seconds=time.perf_counter() - start,
        events=len(log.events),
        phase_peaks=_phase_peaks(log, job.training) if phase_detail else {},
        final_components=final,
    )
    stage("")
    return report


def _gpus(job: Job) -> int:
    return job.num_gpus if isinstance(job.num_gpus, int) else 1


def _require(strict: bool = True) -> tuple[Any, Any, Any]:
    from modelmem.trace._deps import require

    return require(strict)


def _gpu_info(job: Job) -> GPUInfo:
    try:
        from modelmem.catalog.gpus import lookup_gpu

        return lookup_gpu(job.gpu)
    except ModelmemError:
        raise
    except Exception:  # catalog not importable: report the name only
        return GPUInfo(job.gpu, 0, 0.0)


def trace(spec: ModelSpec, job: Job, progress: Callable[[str], None] | None = None) -> Estimate:
    """Run `job` on `spec`'s model on fake tensors and report the exact allocated peak, by component."""
    r = run_trace(spec.config, job, progress=progress)
    overhead = r.reserved_peak - r.allocated_peak
    auto = () if isinstance(job.num_gpus, int) else ("num_gpus auto: one GPU traced",)
    notes = r.notes + auto + (
        f"peak in {r.peak_op} during {r.peak_phase}",
        "cuda_context 0: the CUDA context, cuBLAS and flash-attention workspaces and NCCL buffers are invisible to a trace",
    )
    per_gpu = PerGPU(components=r.components, allocator_overhead=overhead, cuda_context=0, notes=notes)
    model = ModelInfo(spec.name, r.params, r.trainable_params, r.params)
    return Estimate(model=model, job=job, method="trace", per_gpu=per_gpu, gpu=_gpu_info(job), num_gpus=_gpus(job), explanation=notes)


@dataclass(frozen=True)
class MeasureReport:
    """What one run on a CUDA GPU measured (bytes); `measure()` turns it into an Estimate, benchmarks read it whole."""

    allocated_peak: int  # torch.cuda.max_memory_allocated over the workload (the build's transients excluded)
    reserved_peak: int  # torch.cuda.max_memory_reserved over the same span
    weights_allocated: int  # torch.cuda.memory_allocated once the model, adapters and optimizer are built
    device_used_at_init: int  # total − free right after CUDA initialised: the bare context (plus other processes)
    device_used: int  # total − free after the run: context, cached segments, paged (managed) pages, other processes
    cuda_context: int  # device_used − memory_reserved at the end: what torch's counters do not see
    device_total_memory: int  # cudaMemGetInfo's total
    device_name: str
    sdpa_backend: str  # "default" (torch chooses) or the backend the run was restricted to
    params: int
    trainable_params: int
    seconds: float
    notes: tuple[str, ...]


# torch.nn.attention.SDPBackend members a measurement may be restricted to
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def _sdpa_restriction(torch: Any, job: Job, sdpa_backend: str | None) -> tuple[Any, str]:
    """Restrict SDPA to one kernel: the one asked for, or flash for attention "flash" (the workload runs it as sdpa)."""
    import contextlib

    from modelmem.trace._workload import UnsupportedJobError

    name = sdpa_backend or ("flash" if job.attention == "flash" else None)
    if name is None:
        return contextlib.nullcontext(), "default"
    if name not in SDPA_BACKENDS:
        raise UnsupportedJobError("sdpa_backend", name, ", ".join(SDPA_BACKENDS))
    if job.attention == "eager":
        raise UnsupportedJobError("sdpa_backend", name, "no backend with attention eager (eager runs no SDPA)")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])]), name


def measure_run(config: Mapping[str, Any], job: Job, *, sdpa_backend: str | None = None) -> MeasureReport:
    """Run `job` once on this process's CUDA GPU and read the allocator's and the driver's counters."""
    torch, _, _ = _require(strict=False)
    if not torch.cuda.is_available():
        raise NoCudaError()
    if _gpus(job) > 1 and job.strategy != "none":
        from modelmem.trace._workload import UnsupportedJobError

        raise UnsupportedJobError("num_gpus", job.num_gpus, "1 (measure runs one process on one GPU)")
    from modelmem.trace._workload import Hooks, build, run_inference, run_training

    start = time.perf_counter()
    torch.cuda.init()
    free0, total = torch.cuda.mem_get_info()
    restriction, backend = _sdpa_restriction(torch, job, sdpa_backend)
    device = torch.device("cuda")
    hooks = Hooks()
    w = build(config, job, device, hooks)
    params, trainable = _count_params(w.model)
    # Forget what the build allocated and freed (random init; the bf16 weights a 4-bit base replaced): loading a
    # checkpoint allocates the final weights directly. The trace drops the same allocations.
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    weights = torch.cuda.memory_allocated()
    with restriction:
        if job.training:
            run_training(w, hooks)
        else:
            kept = run_inference(w, hooks, fast_decode=False)
            del kept
    torch.cuda.synchronize()
    allocated = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    free1, _ = torch.cuda.mem_get_info()
    used = total - free1  # the whole device as the driver sees it (includes other processes)
    context = max(0, used - torch.cuda.memory_reserved())
    notes = tuple(w.notes)
    del w
    return MeasureReport(
        allocated_peak=allocated, reserved_peak=reserved, weights_allocated=weights, device_used_at_init=total - free0,
        device_used=used, cuda_context=context, device_total_memory=total, device_name=torch.cuda.get_device_name(),
        sdpa_backend=backend, params=params, trainable_params=trainable, seconds=time.perf_counter() - start, notes=notes,
    )


def measure(spec: ModelSpec, job: Job) -> Estimate:
    """Run `job` on a real CUDA GPU: torch.cuda.max_memory_allocated / max_memory_reserved and the device's used memory."""
    r = measure_run(spec.config, job)
    notes = r.notes + (
        f"measured on {r.device_name}: max_memory_allocated {r.allocated_peak}, max_memory_reserved {r.reserved_peak}",
        "cuda_context: device memory in use after the run minus memory_reserved (CUDA context, cuBLAS workspace)",
    )
    per_gpu = PerGPU(components={"measured_allocated": r.allocated_peak}, allocator_overhead=r.reserved_peak - r.allocated_peak,
                     cuda_context=r.cuda_context, notes=notes)
    model = ModelInfo(spec.name, r.params, r.trainable_params, r.params)
    return Estimate(model=model, job=job, method="measure", per_gpu=per_gpu, gpu=_gpu_info(job), num_gpus=1, explanation=notes)
