"""Cold-process time and peak memory: modelmem's CLI against accelerate's estimator, on Llama-3.1-8B.

Each command runs in a fresh process, several times, in interleaved rounds; the medians are compared. Run it with the peers' venv,
which has accelerate, transformers and torch (benchmarks/setup_peers.sh builds it):

    /work/peers-venv/bin/python benchmarks/speed.py [--repeat 7] [--json]

Three commands, measured in the same run:
  * bare      `python3 -c pass` (the real interpreter, not a shim): start-up, the floor for any Python tool;
  * modelmem  `modelmem estimate meta-llama/Llama-3.1-8B --mode lora --gpu rtx-4090` from the project's venv;
  * accelerate what `accelerate estimate-memory` does once it has the config (its CLI needs the live Hub):
              import its estimate module, AutoConfig from a local config.json, AutoModel built on the meta
              device under init_empty_weights, calculate_maximum_sizes.
Peak RSS is GNU time's %M for each child (see run_once for why not this process's wait4).

Then, in this process, the median time of one estimate once the catalog is loaded (issue 8: ≤ 2 ms for a catalog
model), for a job that fits one GPU and one that does not (num_gpus auto searches the GPU count): the core
(`modelmem.plan.estimate_spec`, what the estimate costs) and the public `modelmem.estimate` (which also resolves the
model and, when the job does not fit one GPU, asks the planner for suggestions).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODEL = "meta-llama/Llama-3.1-8B"

ACCELERATE_PATH = r"""
import sys, torch
from accelerate import init_empty_weights
from accelerate.commands.estimate import estimate_training_usage
from accelerate.utils import calculate_maximum_sizes
from transformers import AutoConfig, AutoModel
config = AutoConfig.from_pretrained(sys.argv[1])
with init_empty_weights():
    model = AutoModel.from_config(config, torch_dtype=torch.float32)
total, largest = calculate_maximum_sizes(model)
print(total, largest[0], max(estimate_training_usage(total, "float32").values()))
"""


def modelmem_command() -> list[str] | None:
    exe = REPO / ".venv" / "bin" / "modelmem"
    if exe.exists():
        return [str(exe)]
    python = REPO / ".venv" / "bin" / "python"
    if python.exists():
        return [str(python), "-m", "modelmem.cli"]
    return None


def accelerate_config_dir() -> Path:
    """Llama-3.1-8B's config.json from the validation rows, written where AutoConfig can read it."""
    sys.path.insert(0, str(BENCH))
    from peers import hf_config, row_for  # stdlib-only at import time

    folder = Path(tempfile.mkdtemp(prefix="modelmem-speed-"))
    (folder / "config.json").write_text(json.dumps(hf_config(row_for(MODEL), "bf16")))
    return folder


GNU_TIME = "/usr/bin/time"


def run_once(argv: list[str]) -> tuple[float, int | None, int, str]:
    """(wall seconds, peak RSS bytes or None, exit code, last line of stderr) of one fresh process.

    Linux carries a forked child's memory high-water mark across exec, so a child of this Python process would
    start its ru_maxrss at this process's size. GNU time (a small C program) is the parent instead, where it
    exists; its own few MiB are the floor of every reading."""
    rss_file = tempfile.NamedTemporaryFile(prefix="modelmem-speed-", delete=False)
    rss_file.close()
    wrapped = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv] if os.path.exists(GNU_TIME) else argv
    start = time.perf_counter()
    proc = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    elapsed = time.perf_counter() - start
    text = Path(rss_file.name).read_text().strip()
    os.unlink(rss_file.name)
    rss = int(text.splitlines()[-1]) * 1024 if text and text.splitlines()[-1].isdigit() else None  # %M is KiB
    last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return elapsed, rss, proc.returncode, last[0]


def summarize(times: list[float], rss: list[int | None]) -> dict:
    peak = int(statistics.median(rss)) if None not in rss else None
    return {"ok": True, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "median_peak_rss_bytes": peak, "runs": len(times)}


def measure_all(commands: dict[str, list[str]], repeat: int) -> dict[str, dict]:
    """Round-robin: each round runs every command once, so a load change on the machine hits all of them alike."""
    for argv in commands.values():
        run_once(argv)  # one untimed run each, so every timed run meets the same warm file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    rss: dict[str, list[int | None]] = {name: [] for name in commands}
    failed: dict[str, str] = {}
    for _ in range(repeat):
        for name, argv in commands.items():
            if name in failed:
                continue
            t, r, rc, last = run_once(argv)
            if rc != 0:
                failed[name] = f"exit {rc}: {last}"
                continue
            times[name].append(t)
            rss[name].append(r)
    return {name: {"ok": False, "error": failed[name]} if name in failed else summarize(times[name], rss[name])
            for name in commands}


IN_PROCESS_JOBS = {
    "fitting": (MODEL, {"mode": "lora"}),  # one H100
    "non-fitting": ("meta-llama/Llama-3.1-70B", {"mode": "train", "gpu": "rtx-4090"}),  # no count up to 1024 fits
}


def in_process(repeat: int = 200) -> dict[str, dict]:
    """Median in-process milliseconds per estimate, for each of IN_PROCESS_JOBS (see the module docstring)."""
    sys.path.insert(0, str(REPO / "src"))
    import modelmem
    from modelmem.job import make_job
    from modelmem.model import resolve_model
    from modelmem.plan import estimate_spec

    def median_ms(f, n: int) -> float:
        f()  # warm: the catalog is read once per process
        times = []
        for _ in range(n):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    out = {}
    for label, (model, fields) in IN_PROCESS_JOBS.items():
        spec, job = resolve_model(model), make_job(**fields)
        est = estimate_spec(spec, job)
        out[label] = {"model": model, "job": fields, "num_gpus": est.num_gpus, "fits": est.fits,
                      "core_median_ms": median_ms(lambda: estimate_spec(spec, job), repeat),
                      "public_median_ms": median_ms(lambda: modelmem.estimate(model, **fields), max(5, repeat // 20))}
    return out


PLANNER_MODEL = "meta-llama/Llama-3.1-405B"


def planner_times(repeat: int) -> dict[str, float]:
    """In-process medians (seconds) of the planner's searches, model resolved once (the spec is what a session
    reuses): `fit --max seq-len` for Llama-3.1-8B LoRA on one RTX 4090, and the full `plan` search for
    Llama-3.1-405B training over every strategy and tp/pp/cp/ep degree up to 1024 H100s."""
    sys.path.insert(0, str(REPO / "src"))
    import modelmem
    from modelmem.planner.fit import fit
    from modelmem.planner.layouts import search

    small = modelmem.resolve_model(MODEL)
    big = modelmem.resolve_model(PLANNER_MODEL)
    jobs = {
        "fit_seq_len_s": lambda: fit(small, "seq-len", {"mode": "lora", "gpu": "rtx-4090", "grad_checkpointing": "full"}),
        "fit_batch_size_s": lambda: fit(small, "batch-size", {"mode": "lora", "gpu": "rtx-4090", "grad_checkpointing": "full",
                                                              "seq_len": 512}),
        "plan_405b_training_s": lambda: search(big, {"mode": "train"}, gpus=["h100-80gb"], max_gpus=1024),
    }
    out = {}
    for name, call in jobs.items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--in-process-only", action="store_true", help="only the in-process estimate times")
    ap.add_argument("--planner-only", action="store_true", help="only the in-process fit and plan timings")
    args = ap.parse_args(argv)
    inproc = in_process()
    if args.in_process_only:
        print(json.dumps(inproc, indent=1) if args.json else "\n".join(
            f"in-process {k:12s} core {v['core_median_ms']:.3f} ms  public {v['public_median_ms']:.1f} ms  "
            f"({v['model']} {v['job']}: {v['num_gpus']} GPU(s), fits {v['fits']})" for k, v in inproc.items()))
        return 0
    planner = planner_times(args.repeat)
    if args.planner_only:
        print(json.dumps(planner, indent=1) if args.json else
              "\n".join(f"in-process {k[:-2]:24s} {v * 1000:8.1f} ms (median of {args.repeat})" for k, v in planner.items()))
        return 0

    commands: dict[str, list[str] | None] = {
        # The interpreter itself, not a version-manager shim (pyenv's is a bash script costing ~0.1 s).
        "bare": [os.path.realpath(getattr(sys, "_base_executable", sys.executable)), "-c", "pass"],
        "modelmem": None,
        "accelerate": None,
    }
    mm = modelmem_command()
    if mm is not None:
        commands["modelmem"] = mm + ["estimate", MODEL, "--mode", "lora", "--gpu", "rtx-4090"]
    # find_spec, not import: a child forked from a parent that had imported torch would start with its pages.
    missing = [m for m in ("accelerate", "transformers", "torch") if importlib.util.find_spec(m) is None]
    not_here = f"{', '.join(missing)} not importable from {sys.executable}; run with the peers' venv"
    if not missing:
        commands["accelerate"] = [sys.executable, "-c", ACCELERATE_PATH, str(accelerate_config_dir())]

    runnable = {name: cmd for name, cmd in commands.items() if cmd is not None}
    measured = measure_all(runnable, args.repeat)
    results = {}
    for name, cmd in commands.items():
        if cmd is None:
            why = "modelmem CLI not found in .venv (not built yet?)" if name == "modelmem" else not_here
            results[name] = {"ok": False, "error": why}
        else:
            results[name] = {"command": " ".join(cmd[:3]) + (" …" if len(cmd) > 3 else ""), **measured[name]}

    def ratio(a: str, b: str, key: str) -> float | None:
        if results[a]["ok"] and results[b]["ok"] and results[a][key] and results[b][key]:
            return results[a][key] / results[b][key]
        return None

    ratios = {
        "modelmem_vs_bare_time": ratio("modelmem", "bare", "median_s"),
        "accelerate_vs_modelmem_time": ratio("accelerate", "modelmem", "median_s"),
        "accelerate_vs_bare_time": ratio("accelerate", "bare", "median_s"),
        "accelerate_vs_modelmem_rss": ratio("accelerate", "modelmem", "median_peak_rss_bytes"),
    }
    if args.json:
        print(json.dumps({"model": MODEL, "results": results, "ratios": ratios, "in_process": inproc,
                          "planner": planner}, indent=1))
        return 0
    for k, v in inproc.items():
        print(f"in-process {k:12s} core {v['core_median_ms']:.3f} ms  public {v['public_median_ms']:.1f} ms  "
              f"({v['model']} {v['job']}: {v['num_gpus']} GPU(s), fits {v['fits']})")
    for k, v in planner.items():
        print(f"in-process {k[:-2]:24s} {v * 1000:8.1f} ms (median of {args.repeat})")
    print(f"cold-process timing, {MODEL}, median of {args.repeat} runs each")
    for name, r in results.items():
        if r["ok"]:
            rss = "n/a (no /usr/bin/time)" if r["median_peak_rss_bytes"] is None \
                else f"{r['median_peak_rss_bytes'] / 2**20:7.1f} MiB"
            print(f"  {name:10s} {r['median_s']:7.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f})   peak RSS {rss}")
        else:
            print(f"  {name:10s} not measured: {r['error']}")
    labels = {"modelmem_vs_bare_time": "modelmem / bare python (time)",
              "accelerate_vs_modelmem_time": "accelerate / modelmem (time)",
              "accelerate_vs_bare_time": "accelerate / bare python (time)",
              "accelerate_vs_modelmem_rss": "accelerate / modelmem (peak RSS)"}
    for key, label in labels.items():
        value = ratios[key]
        print(f"  {label:34s} {'n/a' if value is None else f'{value:6.1f}x'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
