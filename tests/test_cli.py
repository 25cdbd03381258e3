"""The CLI: commands, --json, one-line errors with exit code 2, nothing written."""

import json
import os
import subprocess
import sys

import pytest

from modelmem.cli import build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "modelmem", *args], capture_output=True, text=True, timeout=60)


def test_estimate_table_has_components_totals_and_verdict():
    r = run("estimate", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--gpu", "rtx-4090", "--grad-checkpointing", "full")
    assert r.returncode == 0, r.stderr
    for word in ("weights", "activations", "allocated_peak", "reserved_peak", "device_total"):
        assert word in r.stdout
    assert "fits 1× NVIDIA GeForce RTX 4090" in r.stdout or "does not fit" in r.stdout


def test_estimate_json_matches_the_api():
    r = run("estimate", "llama-3.1-8b", "--mode", "qlora", "--batch-size", "2", "--json", "--num-gpus", "1")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["job"]["batch_size"] == 2 and d["job"]["quant"] == "nf4" and d["method"] == "detailed"
    import modelmem

    assert d == modelmem.estimate("llama-3.1-8b", mode="qlora", batch_size=2, num_gpus=1).to_dict()


def test_params_prints_the_seed_line():
    r = run("params", "meta-llama/Llama-2-7b-hf", "--mode", "lora", "--lora-rank", "8", "--lora-targets", "q_proj,v_proj")
    assert r.returncode == 0, r.stderr
    # 4,194,304 = 32 layers × 2 modules × 8 × (4096 + 4096); all = 6,738,415,616 + 4,194,304
    assert r.stdout.splitlines()[0] == "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"


def test_models_and_gpus_list():
    assert "meta-llama/Llama-3.1-8B" in run("models").stdout
    assert "rtx-4090" in run("gpus").stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["estimate", "no-such-model-xyz"], "model: 'no-such-model-xyz'"),
        (["estimate", "7B", "--gpu", "gtx-9999"], "gpu: 'gtx-9999'"),
        (["estimate", "7B", "--dtype", "fp64"], "dtype: 'fp64'"),
        (["estimate", "7B", "--batch-size", "0"], "batch_size: '0'"),
        (["estimate", "7B", "--mode", "inference", "--lora-rank", "8"], "lora_rank"),
        (["estimate", "7B", "--method", "guess"], "method: 'guess'"),
        (["estimate"], "arguments are required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(args, fragment):
    r = run(*args)
    assert r.returncode == 2
    assert fragment in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_malformed_config_is_one_line_and_untouched(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama", "hidden_size": 4096')
    before = cfg.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    r = run("estimate", str(cfg))
    assert r.returncode == 2 and "config" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert cfg.read_bytes() == before and sorted(os.listdir(tmp_path)) == listing


def test_incomplete_config_names_the_missing_field(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama", "num_hidden_layers": 2}')
    r = run("estimate", str(cfg))
    assert r.returncode == 2 and "hidden_size" in r.stderr


def test_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            if action.dest not in ("help",):
                assert action.help, f"{name} --{action.dest}"


def test_main_returns_2_on_library_errors(capsys):
    assert main(["estimate", "7B", "--quant", "q4"]) == 2
    assert "quant: 'q4'" in capsys.readouterr().err
