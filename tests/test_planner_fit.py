"""fit: the largest value that fits is exact (it fits, one more does not), from the same estimator as estimate."""

import json
import subprocess
import sys

import pytest

import modelmem

GPU = "rtx-4090"


def run(*args):
    return subprocess.run([sys.executable, "-m", "modelmem", *args], capture_output=True, text=True, timeout=120)


def fits(model, **job):
    return modelmem.estimate(model, **job).fits


@pytest.mark.parametrize("field, job", [
    ("batch_size", dict(mode="lora", grad_checkpointing="full", seq_len=512)),
    ("seq_len", dict(mode="lora", grad_checkpointing="full")),
    ("seq_len", dict(mode="qlora", batch_size=2)),
    ("lora_rank", dict(mode="lora", grad_checkpointing="full", lora_targets="all-linear", seq_len=1024)),
    ("new_tokens", dict(mode="inference", batch_size=8, seq_len=1024)),
    ("batch_size", dict(mode="inference", seq_len=4096)),
])
def test_max_fits_and_one_more_does_not(field, job):
    r = modelmem.fit("meta-llama/Llama-3.1-8B", field.replace("_", "-"), gpu=GPU, **job)
    assert r.max is not None and r.max >= 1
    assert r.field == field and getattr(r.estimate.job, field) == r.max
    assert r.estimate.num_gpus == 1  # fit defaults to one GPU
    assert fits("meta-llama/Llama-3.1-8B", gpu=GPU, num_gpus=1, **job, **{field: r.max})
    assert not fits("meta-llama/Llama-3.1-8B", gpu=GPU, num_gpus=1, **job, **{field: r.max + 1})


def test_json_contract_and_estimate_at_the_max():
    r = run("fit", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--gpu", GPU, "--grad-checkpointing", "full",
            "--max", "batch-size", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["field"] == "batch_size" and isinstance(d["max"], int)
    same = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="lora", gpu=GPU, grad_checkpointing="full",
                             num_gpus=1, batch_size=d["max"])
    assert d["estimate"] == same.to_dict()


def test_nothing_fits_gives_null_reason_and_suggestions():
    r = run("fit", "meta-llama/Llama-3.1-70B", "--mode", "lora", "--gpu", GPU, "--max", "batch-size", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["max"] is None and "batch_size 1" in d["reason"] and "\n" not in d["reason"]
    assert d["suggestions"] and all(set(s) >= {"change", "num_gpus", "device_total", "fits"} for s in d["suggestions"])
    assert d["estimate"]["job"]["batch_size"] == 1


def test_more_gpus_allow_more():
    one = modelmem.fit("meta-llama/Llama-3.1-8B", "seq-len", mode="train", gpu="h100", grad_checkpointing="full")
    eight = modelmem.fit("meta-llama/Llama-3.1-8B", "seq-len", mode="train", gpu="h100", grad_checkpointing="full",
                         num_gpus=8, strategy="fsdp")
    assert one.max is None or eight.max > one.max


def test_vllm_limits_from_the_kv_pool():
    r = modelmem.fit("meta-llama/Llama-3.1-8B", "max-model-len", runtime="vllm", gpu="l4" if False else "a10g")
    # A10G (22.1 GiB): 15 GiB of weights leave a few GiB of blocks; 128 KiB of KV per token (32 layers × 2 × 8 × 128 × 2).
    assert r.max is not None and r.max % 16 == 0
    pool = r.estimate.per_gpu.components["kv_cache"]
    per_token = 32 * 2 * 8 * 128 * 2
    assert r.max == min(131072, pool // (16 * per_token) * 16)
    s = modelmem.fit("meta-llama/Llama-3.1-8B", "max-num-seqs", runtime="vllm", gpu="h100", max_model_len=8192)
    pool = s.estimate.per_gpu.components["kv_cache"]
    tokens = pool // (16 * per_token) * 16
    assert s.max * 8192 <= tokens < (s.max + 1) * 8192


def test_gpu_layers_with_a_gguf(tmp_path):
    pytest.importorskip("gguf")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_sources_gguf import write_tiny

    path = write_tiny(tmp_path / "tiny.gguf")
    r = modelmem.fit(str(path), "gpu-layers", runtime="llamacpp", seq_len=64)
    assert r.max == r.estimate.job.gpu_layers == 3  # 2 blocks + the output layer: all of them
    assert "every GPU layer" in r.reason


@pytest.mark.parametrize("args, fragment", [
    (["--max", "gpu-layers"], "max: 'gpu-layers'"),  # no GGUF
    (["--max", "max-num-seqs"], "max: 'max-num-seqs'"),  # not vLLM
    (["--max", "lora-rank"], "max: 'lora-rank'"),  # inference
    (["--max", "depth"], "max: 'depth'"),
    (["--max", "batch-size", "--num-gpus", "auto"], "num_gpus: 'auto'"),
    (["--max", "batch-size", "--gpu", "h100,zz-top"], "gpu"),
])
def test_bad_input(args, fragment):
    r = run("fit", "meta-llama/Llama-3.1-8B", *args)
    assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
