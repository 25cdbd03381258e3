"""benchmarks/gpu_validation.py without a GPU: the grid, the record schema, the no-GPU exit, the setup script."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelmem
from modelmem.catalog.gpus import lookup_gpu
from modelmem.plan import estimate_spec

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_validation.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gv = _load("gpu_validation", SCRIPT)


def test_grid_size_and_unique_ids():
    ids = [g.id for g in gv.GRID]
    assert 20 <= len(ids) <= 30  # issue 13: "about 20–30 jobs"
    assert len(set(ids)) == len(ids)


def test_every_category_is_covered_and_named():
    covered = {c for g in gv.GRID for c in g.categories}
    assert covered == set(gv.CATEGORIES)
    assert sum(g.kind == "vllm" for g in gv.GRID) == 1  # one engine start


@pytest.mark.parametrize("g", gv.GRID, ids=lambda g: g.id)
def test_every_job_is_valid_small_and_fits_an_h100(g):
    job = gv.make_grid_job(g, "h100-80gb")  # make_job validates every field
    assert job.num_gpus == 1
    spec = modelmem.resolve_model(g.model)
    est = estimate_spec(spec, job)
    assert est.model.params <= gv.MAX_PARAMS  # ≤ 8B: random weights of a small or mid-size model
    # room to spare on the smallest GPU the grid is meant for: an OOM should be news, not the plan
    assert est.per_gpu.device_total <= 0.85 * lookup_gpu("h100-80gb").memory_bytes


def test_forced_kernels_and_eager_are_what_they_say():
    by = gv.grid_by_id()
    flash = [g for g in gv.GRID if "kernel-flash" in g.categories]
    eff = [g for g in gv.GRID if "kernel-efficient" in g.categories]
    assert flash and all(g.sdpa_backend == "flash" for g in flash)
    assert eff and all(g.sdpa_backend == "efficient" and g.job.get("attention", "sdpa") == "sdpa" for g in eff)
    assert all(g.job.get("attention") == "eager" or g.model.startswith("gemma-2") for g in gv.GRID if "kernel-eager" in g.categories)
    # the three forced kernels run the same job otherwise, so their difference is the kernel's alone
    base = {k: v for k, v in by["kernel-flash-smollm1.7b"].job.items() if k != "attention"}
    for other in ("kernel-efficient-smollm1.7b", "kernel-eager-smollm1.7b", "kernel-default-smollm1.7b"):
        assert {k: v for k, v in by[other].job.items() if k != "attention"} == base


def test_measure_jobs_are_ones_the_workload_runs():
    pytest.importorskip("torch")
    from modelmem.trace._workload import _check_supported

    for g in gv.GRID:
        if g.kind == "measure":
            _check_supported(gv.make_grid_job(g))  # raises UnsupportedJobError otherwise


def test_sdpa_backend_is_checked():
    pytest.importorskip("torch")
    import torch
    from modelmem.errors import ModelmemError
    from modelmem.trace._engine import _sdpa_restriction

    job = gv.make_grid_job(gv.grid_by_id()["kernel-default-smollm1.7b"])
    assert _sdpa_restriction(torch, job, None)[1] == "default"
    assert _sdpa_restriction(torch, job, "efficient")[1] == "efficient"
    with pytest.raises(ModelmemError, match="sdpa_backend"):
        _sdpa_restriction(torch, job, "fast")


def _fake_record(status="ok"):
    g = gv.grid_by_id()["lora-qwen3-4b-qv-b4"]
    job = gv.make_grid_job(g, "h100-80gb")
    est = estimate_spec(modelmem.resolve_model(g.model), job)
    measured = {"allocated_peak": 64_462_380_032, "reserved_peak": 66_000_000_000, "weights_allocated": 8_100_000_000,
                "device_used_at_init": 520_000_000, "device_used": 66_900_000_000, "cuda_context": 900_000_000,
                "device_total_memory": 84_929_347_584, "params": 4_022_468_096, "trainable_params": 2_949_120,
                "seconds": 7.5, "sdpa_backend": "default"}
    trace = {"allocated_peak": 61_438_823_424, "reserved_peak": 63_000_000_000, "peak_op": "aten._log_softmax_backward_data",
             "peak_phase": "loss_backward", "versions": {"torch": "2.13.0"}, "seconds": 30}
    env = {"device": "NVIDIA H100 80GB HBM3", "device_memory_bytes": 85_520_809_984, "driver": "580.1", "cuda": "13.0",
           "torch": "2.11.0+cu130", "transformers": "5.24.0", "peft": "0.21.2", "bitsandbytes": "0.50.2", "vllm": None,
           "python": "3.12.3", "modelmem_commit": "abc1234", "alloc_conf": None, "unrelated": 1}
    rec = gv.build_record(g, job, run_id="2026-12-01T00:00:00Z", env=env, status=status,
                          error=None if status == "ok" else "OutOfMemoryError: CUDA out of memory",
                          measured=measured if status == "ok" else None, estimate=est, trace=trace, wall_s=12.345)
    return rec, est, measured, trace


def test_record_schema_round_trip_and_ratios():
    rec, est, measured, trace = _fake_record()
    gv.check_record(rec)
    back = json.loads(json.dumps(rec))
    gv.check_record(back)
    assert back["env"]["device"] == "NVIDIA H100 80GB HBM3" and "unrelated" not in back["env"]
    assert back["measured"]["device_total"] == measured["device_used"]  # the driver's view after the run
    assert back["measured"]["num_gpu_blocks"] is None
    assert back["estimate"]["allocated_peak"] == est.per_gpu.allocated_peak
    assert back["ratios"]["estimate/allocated_peak"] == pytest.approx(est.per_gpu.allocated_peak / 64_462_380_032)
    assert back["ratios"]["trace/allocated_peak"] == pytest.approx(61_438_823_424 / 64_462_380_032)
    assert back["ratios"]["estimate/device_total"] == pytest.approx(est.per_gpu.device_total / 66_900_000_000)
    assert back["wall_s"] == 12.35 and back["job"]["gpu"] == "h100-80gb"


def test_record_schema_rejects_breakage():
    rec, *_ = _fake_record()
    for breakage, field in (
        (lambda r: r.pop("ratios"), "record keys"),
        (lambda r: r["measured"].pop("reserved_peak"), "measured keys"),
        (lambda r: r["measured"].__setitem__("allocated_peak", -1), "measured.allocated_peak"),
        (lambda r: r["estimate"]["components"].__setitem__("weights", 0), "estimate.components"),
        (lambda r: r.__setitem__("status", "fine"), "schema/status"),
        (lambda r: r.__setitem__("measured", None), "measured: required"),
    ):
        broken = json.loads(json.dumps(rec))
        breakage(broken)
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            gv.check_record(broken)


def test_failed_job_record():
    rec, *_ = _fake_record(status="oom")
    gv.check_record(rec)
    assert rec["measured"] is None and rec["ratios"]["estimate/allocated_peak"] is None
    with pytest.raises(ValueError, match="status"):
        _fake_record(status="crashed")


def test_catalog_gpu_from_device_name():
    # nvidia-smi's names and memory.total (MiB) for the two machines the grid is sized for
    assert gv.catalog_gpu("NVIDIA H100 80GB HBM3", 81559 * 2**20) == "h100-80gb"
    assert gv.catalog_gpu("NVIDIA H200", 143771 * 2**20) == "h200"


def test_no_gpu_exits_at_once_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items()}
    env["PATH"] = str(tmp_path)  # no nvidia-smi on it
    env["PYTHONPATH"] = str(REPO / "src")
    start = time.monotonic()
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r.jsonl")], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2
    assert len(p.stdout.strip().splitlines()) == 1 and "no NVIDIA GPU" in p.stdout
    assert p.stderr == ""
    assert not (tmp_path / "r.jsonl").exists()
    assert time.monotonic() - start < 10


def test_unknown_only_is_one_line_error():
    p = subprocess.run([sys.executable, str(SCRIPT), "--only", "nope"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert p.returncode == 2 and "'nope' is not a grid job" in p.stdout


def test_committed_traces_belong_to_the_grid():
    traces = gv.load_traces()
    if not traces:
        pytest.skip("no committed traces (benchmarks/results/gpu_validation_trace.jsonl)")
    grid = gv.grid_by_id()
    for tid, t in traces.items():
        g = grid[tid]
        job = gv.make_grid_job(g)
        assert gv._trace_for(traces, g, job) is not None, f"{tid}: trace of a job the grid no longer runs"
        assert t["reserved_peak"] >= t["allocated_peak"] > 0


def test_setup_script_parses():
    p = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_setup.sh")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_docs_section_without_and_with_a_run(tmp_path):
    lines = gv.render_section(tmp_path / "absent.jsonl")
    assert lines[0] == "## Our own GPU runs" and "No GPU run yet" in lines[-1]
    rec, est, *_ = _fake_record()
    oom, *_ = _fake_record(status="oom")
    path = tmp_path / "gpu_validation.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps(oom) + "\n")
    text = "\n".join(gv.render_section(path))
    assert "NVIDIA H100 80GB HBM3" in text and "No GPU run yet" not in text
    row = next(x for x in text.splitlines() if x.startswith("| lora-qwen3-4b-qv-b4 | lora | ok"))
    assert f"{64_462_380_032 / 2**30:.2f}" in row  # measured allocated, GiB
    assert f"{(est.per_gpu.allocated_peak / 64_462_380_032 - 1) * 100:+.1f} %" in row
    assert f"{(61_438_823_424 / 64_462_380_032 - 1) * 100:+.1f} %" in row  # trace vs measured
    assert "| oom: OutOfMemoryError" in text
