"""Runtime profiles: habits are data, looked up by runtime and version; nothing else compares runtime names."""

import re
from pathlib import Path

import pytest

from modelmem.errors import InvalidJobError
from modelmem.job import make_job
from modelmem.runtimes.profiles import PROFILES, RUNTIMES, lookup_profile, profile_for

SRC = Path(__file__).resolve().parents[1] / "src" / "modelmem"


def test_every_runtime_has_one_default_record_with_sources():
    for name in RUNTIMES:
        records = [p for p in PROFILES if p.name == name]
        assert sum(p.default for p in records) == 1, name
        assert all(p.sources and p.version and p.package for p in records), name
    assert {"hf", "torchtune", "litgpt", "torchao", "vllm", "llamacpp"} <= set(RUNTIMES)


def test_litgpt_versions_differ_in_bitsandbytes_input_saving():
    # bitsandbytes < 0.43.2 keeps MatMul4Bit inputs (PR #1270); LitGPT 0.3–0.4 pin 0.42.0.
    assert lookup_profile("litgpt").saves_4bit_inputs
    assert not lookup_profile("litgpt", "0.5").saves_4bit_inputs
    assert lookup_profile("litgpt", "0.4.5").version == "0.4"  # between records: the older one's habits
    assert not lookup_profile("hf").saves_4bit_inputs


def test_profile_for_reads_the_job():
    assert profile_for(make_job(mode="train", runtime="torchtune")).fused_adamw
    assert profile_for(make_job()).default_precision == "mixed"
    with pytest.raises(InvalidJobError, match="runtime_version"):
        lookup_profile("vllm", "0.1")


def test_a_newer_litgpt_qlora_frees_the_4bit_inputs():
    old = __import__("modelmem").estimate("llama-2-7b", mode="qlora", runtime="litgpt", num_gpus=1)
    new = __import__("modelmem").estimate("llama-2-7b", mode="qlora", runtime="litgpt", runtime_version="0.5", num_gpus=1)
    assert new.per_gpu.allocated_peak < old.per_gpu.allocated_peak


def test_no_runtime_name_comparisons_outside_runtimes():
    pattern = re.compile(r"runtime\s*(==|!=|in\s*\(|not in\s*\()")
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("runtimes/", "trace/")):  # trace/ builds the runtime's real code path
            continue
        offenders += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
