"""Suggestions: every estimate that does not fit (or that auto spread over several GPUs) says what to change, and
each suggestion's figures are the estimator's own for the changed job."""

import json
import subprocess
import sys

import pytest

import modelmem


def run(*args):
    return subprocess.run([sys.executable, "-m", "modelmem", *args], capture_output=True, text=True, timeout=120)


def _replay(model, given, s):
    """The estimate of the user's job with the suggestion's change, on the suggestion's GPU count."""
    return modelmem.estimate(model, **{**given, **s.change, "num_gpus": s.num_gpus})


def test_readme_case_one_4090_lora_8b():
    given = dict(mode="lora", gpu="rtx-4090")
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", **given)
    assert est.num_gpus > 1  # auto spreads it; so it carries suggestions for the one-GPU user
    assert est.suggestions
    best = est.suggestions[0]
    assert best.fits and best.num_gpus == 1
    changes = [s.change for s in est.suggestions if s.fits and s.num_gpus == 1]
    assert {"grad_checkpointing": "full"} in changes
    for s in est.suggestions:
        again = _replay("meta-llama/Llama-3.1-8B", given, s)
        assert again.per_gpu.device_total == s.device_total and again.fits == s.fits


def test_ranked_fits_first_then_fewer_gpus():
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="lora", gpu="rtx-4090", num_gpus=1)
    assert not est.fits
    keys = [(not s.fits, s.num_gpus) for s in est.suggestions]
    assert keys == sorted(keys)


def test_fitting_single_gpu_job_has_none():
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="qlora", gpu="h100")
    assert est.fits and est.num_gpus == 1 and est.suggestions == ()
    assert est.to_dict()["suggestions"] == []


def test_70b_full_finetune_on_8_h100s_points_at_checkpointing():
    est = modelmem.estimate("meta-llama/Llama-3.1-70B", mode="train", gpu="h100", num_gpus=8)
    assert not est.fits
    fixes = [s for s in est.suggestions if s.fits]
    assert fixes and all(s.num_gpus == 8 for s in fixes[:1])
    assert any("grad_checkpointing" in s.change for s in fixes)


def test_inference_suggests_quantization_or_fp8_kv():
    est = modelmem.estimate("meta-llama/Llama-3.1-70B", mode="inference", gpu="h100", num_gpus=1, batch_size=4, seq_len=8192)
    assert not est.fits
    kinds = {k for s in est.suggestions for k in s.change}
    assert "quant" in kinds and "kv_dtype" in kinds


def test_cli_leads_with_the_one_gpu_verdict():
    r = run("estimate", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--gpu", "rtx-4090")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    verdict = next(line for line in lines if "fit" in line)
    assert verdict.startswith("does not fit 1× ") and "RTX 4090" in verdict
    assert "--grad-checkpointing full" in r.stdout
    assert not any(line.startswith("fits 3×") for line in lines)


def test_cli_json_carries_suggestions():
    r = run("estimate", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--gpu", "rtx-4090", "--num-gpus", "1", "--json")
    d = json.loads(r.stdout)
    assert d["fits"] is False and d["suggestions"]
    for s in d["suggestions"]:
        assert isinstance(s["change"], dict) and s["num_gpus"] >= 1 and s["device_total"] > 0 and isinstance(s["fits"], bool)


def test_suggestions_are_worked_out_only_when_read(monkeypatch):
    # modelmem.estimate costs one estimate; the 20–45 estimates behind the suggestions run when something reads them.
    import modelmem
    from modelmem.planner import suggest as sg

    calls = []
    real = sg.suggest
    monkeypatch.setattr(sg, "suggest", lambda ev, est, *a, **k: calls.append(1) or real(ev, est, *a, **k))
    e = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="train", gpu="rtx-4090", num_gpus=1)
    assert not e.fits and calls == []
    assert len(e.suggestions) > 0 and calls == [1]
    assert e.to_dict()["suggestions"] and calls == [1]  # computed once
