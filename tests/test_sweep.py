"""Sweeps and pictures: `--over` grammar, one estimate per point in order, table/JSON/CSV, plots, progress."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

import modelmem
from modelmem._progress import Counter, Ticker
from modelmem.cli import main
from modelmem.errors import InvalidJobError
from modelmem.sweep import Axis, parse_over, sweep


def run(*args):
    return subprocess.run([sys.executable, "-m", "modelmem", *args], capture_output=True, text=True, timeout=120)


def _need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("matplotlib is missing in CI (pip install -e '.[all,test]' installs it)")
        pytest.skip("matplotlib not installed")


@pytest.mark.parametrize("spec, values", [
    ("seq_len=512:32768:x2", (512, 1024, 2048, 4096, 8192, 16384, 32768)),
    ("seq_len=512:5000:x2", (512, 1024, 2048, 4096)),  # stop is a bound, not a member
    ("batch_size=1,2,4,8", ("1", "2", "4", "8")),
    ("batch_size=1:4", (1, 2, 3, 4)),
    ("batch-size=2:8:+3", (2, 5, 8)),
    ("optimizer=adamw,adamw-8bit,adafactor,sgd", ("adamw", "adamw-8bit", "adafactor", "sgd")),
    ("quant=gguf:Q4_K_M,gguf:Q8_0", ("gguf:Q4_K_M", "gguf:Q8_0")),
])
def test_over_grammar(spec, values):
    base = {"mode": "train"} if spec.startswith("optimizer") else {}
    axis = parse_over(spec, base)
    assert axis.values == values


@pytest.mark.parametrize("spec, field", [
    ("seq_len", "over"), ("=1,2", "over"), ("colour=red", "over"), ("seq_len=", "seq_len"),
    ("seq_len=1:x:x2", "seq_len"), ("seq_len=8:1", "seq_len"), ("seq_len=1:8:x1", "seq_len"),
    ("seq_len=0:8:x2", "seq_len"), ("batch_size=1,0", "batch_size"), ("dtype=bf16,fp12", "dtype"),
    ("seq_len=1:100000000", "seq_len"),
])
def test_bad_over_names_the_field(spec, field):
    with pytest.raises(InvalidJobError, match=f"^{field}: "):
        parse_over(spec)


def test_optimizer_in_inference_mode_is_refused_up_front():
    with pytest.raises(InvalidJobError, match="^optimizer: .*inference"):
        parse_over("optimizer=adamw,sgd")


def test_points_are_the_public_estimates_in_order():
    axes = [Axis("batch_size", (1, 2)), Axis("grad_checkpointing", ("none", "full"))]
    seen = []
    points = sweep("llama-3.1-8b", axes, mode="lora", gpu="rtx-4090", num_gpus=1, progress=lambda i, n: seen.append((i, n)))
    assert [tuple(p.values.values()) for p in points] == [(1, "none"), (1, "full"), (2, "none"), (2, "full")]
    for p in points:
        assert p.estimate == modelmem.estimate("llama-3.1-8b", mode="lora", gpu="rtx-4090", num_gpus=1, **p.values)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_grid_size_is_capped():
    with pytest.raises(InvalidJobError, match="^over: .*at most"):
        sweep("1B", [Axis("batch_size", tuple(range(1, 101))), Axis("seq_len", tuple(range(1, 12)))])


def test_cli_json_is_one_estimate_per_point(capsys):
    assert main(["sweep", "mistralai/Mistral-7B-v0.1", "--mode", "train", "--num-gpus", "1",
                 "--over", "optimizer=adamw,adamw-8bit,adafactor,sgd", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["job"]["optimizer"] for d in out] == ["adamw", "adamw-8bit", "adafactor", "sgd"]
    for d in out:
        assert d == modelmem.estimate("mistralai/Mistral-7B-v0.1", mode="train", num_gpus=1, optimizer=d["job"]["optimizer"]).to_dict()
    states = [d["per_gpu"]["components"]["optimizer_states"] for d in out]
    # AdamW keeps two fp32 states, 8-bit AdamW two 1-byte ones (plus block scales), SGD none (Loshchilov & Hutter; bnb)
    assert states[0] > states[1] > states[2] > states[3] == 0


def test_cli_table_and_csv(capsys):
    assert main(["sweep", "llama-3.1-8b", "--mode", "lora", "--gpu", "rtx-4090", "--num-gpus", "1",
                 "--over", "seq_len=512:4096:x2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:5] == ["seq_len", "gpus", "fits", "allocated_peak", "reserved_peak"]
    assert [row.split()[0] for row in table[3:]] == ["512", "1024", "2048", "4096"]
    assert main(["sweep", "llama-3.1-8b", "--mode", "lora", "--num-gpus", "1", "--over", "batch_size=1,2",
                 "--over", "grad_checkpointing=none,full", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["batch_size"], r["grad_checkpointing"]) for r in rows] == [("1", "none"), ("1", "full"), ("2", "none"), ("2", "full")]
    est = modelmem.estimate("llama-3.1-8b", mode="lora", num_gpus=1, batch_size=2, grad_checkpointing="full")
    assert int(rows[3]["allocated_peak"]) == est.per_gpu.allocated_peak
    assert int(rows[3]["activations"]) == est.per_gpu.components["activations"]


def test_cli_bad_over_is_one_line_exit_2():
    r = run("sweep", "llama-3.1-8b", "--over", "seq_len=512:abc:x2")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("modelmem: error: seq_len: ") and len(r.stderr.strip().splitlines()) == 1
    r = run("sweep", "llama-3.1-8b", "--over", "flavour=1,2")
    assert r.returncode == 2 and r.stderr.startswith("modelmem: error: over: 'flavour'")
    r = run("sweep", "llama-3.1-8b", "--over", "seq_len=512,1024", "--plot", "out.pdf")
    assert r.returncode == 2 and "plot: 'out.pdf'" in r.stderr


def test_plots_are_written(tmp_path):
    _need_matplotlib()
    svg, png = tmp_path / "sweep.svg", tmp_path / "est.png"
    assert main(["sweep", "llama-3.1-8b", "--mode", "lora", "--gpu", "rtx-4090", "--num-gpus", "1",
                 "--over", "seq_len=512:8192:x2", "--plot", str(svg)]) == 0
    text = svg.read_text()
    assert text.startswith("<?xml") and "NVIDIA GeForce RTX 4090" in text  # the GPU line's label
    assert main(["estimate", "llama-3.1-8b", "--mode", "lora", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two = tmp_path / "grid.png"
    assert main(["sweep", "llama-3.1-8b", "--mode", "train", "--num-gpus", "1", "--over", "optimizer=adamw,sgd",
                 "--over", "grad_checkpointing=none,full", "--plot", str(two)]) == 0
    assert two.stat().st_size > 1000


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_and_in_logs():
    tty = _Tty()
    c = Counter(tty, "sweep")
    for i in range(1, 4):
        c(i, 3)
    assert tty.getvalue() == "\rmodelmem: sweep 1/3\rmodelmem: sweep 2/3\rmodelmem: sweep 3/3\n"
    log = io.StringIO()
    c = Counter(log, "sweep")
    for i in range(1, 4):
        c(i, 3)
    assert log.getvalue() == ""  # a quick sweep writes nothing into a log
    log = io.StringIO()
    import time

    with Ticker(log, "tracing", interval_s=0.05):
        time.sleep(0.2)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("modelmem: tracing … ") and lines[-1].startswith("modelmem: tracing done in ")


def test_cli_sweep_reports_progress_on_stderr(capsys, monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(["sweep", "1B", "--over", "batch_size=1,2"]) == 0
    assert "modelmem: sweep 2/2" in tty.getvalue()

