import pytest

from modelmem.errors import InvalidJobError
from modelmem.job import FIELDS, make_job


def test_defaults_resolve_by_mode_and_runtime():
    assert make_job(mode="train").precision == "mixed"  # HF Trainer keeps fp32 masters
    assert make_job(mode="train", runtime="torchtune").precision == "pure"  # torchtune trains in pure bf16
    assert make_job(mode="qlora").quant == "nf4"
    assert make_job(mode="train", num_gpus=4).strategy == "fsdp"
    assert make_job(mode="inference", num_gpus=4).strategy == "tp"
    assert make_job(mode="inference", num_gpus=1).strategy == "none"
    assert make_job(dtype="fp16").kv_dtype == "fp16"


def test_every_jobs_md_field_is_a_job_field():
    jobs_md = (__import__("conftest").VALIDATION / "JOBS.md").read_text()
    vocabulary = jobs_md.split("An estimate reports")[0]
    for line in vocabulary.splitlines():
        if line.startswith("| `") and not line.startswith("| `model`"):
            for name in line.split("|")[1].replace("`", "").split(","):
                assert name.strip() in FIELDS, name


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"mode": "pretrain"}, r"mode: 'pretrain' is not allowed; expected inference, train, lora, qlora"),
        ({"dtype": "fp64"}, r"dtype: .*fp32, fp16, bf16"),
        ({"batch_size": 0}, r"batch_size: 0 .*integer ≥ 1"),
        ({"seq_len": -5}, r"seq_len: -5 .*integer ≥ 1"),
        ({"batch_size": 1.5}, r"batch_size"),
        ({"mode": "inference", "lora_rank": 8}, r"lora_rank: 8 .*nothing in inference mode"),
        ({"mode": "train", "lora_rank": 8}, r"lora_rank: .*nothing in train mode"),
        ({"mode": "lora", "quant": "nf4"}, r"quant: 'nf4' .*use mode qlora"),
        ({"quant": "q4"}, r"quant: 'q4' .*gguf:<TYPE>"),
        ({"mode": "inference", "strategy": "fsdp", "num_gpus": 2}, r"strategy: 'fsdp' .*for inference"),
        ({"compile": "maybe"}, r"compile: 'maybe' .*true or false"),
        ({"gpu_memory_utilization": 0.9}, r"gpu_memory_utilization: .*unless runtime is vllm"),
        ({"colour": "red"}, r"colour: 'red' .*a job field"),
        ({"mode": "train", "dtype": "fp32", "precision": "mixed"}, r"precision: 'mixed' .*pure when dtype is fp32"),
    ],
)
def test_bad_fields_name_the_field_and_the_allowed_values(fields, match):
    with pytest.raises(InvalidJobError, match=match):
        make_job(**fields)


def test_gguf_quant_is_normalized():
    assert make_job(quant="gguf:q4_k_m").quant == "gguf:Q4_K_M"


def test_every_field_declares_its_checks_help_and_flag():
    from modelmem.cli import build_parser
    from modelmem.job import FIELD_SPECS, cli_flag

    parser = build_parser()
    est = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("estimate"))
    flags = {s for a in est._actions for s in a.option_strings}
    for name, spec in FIELD_SPECS.items():
        assert spec.help, name
        assert cli_flag(name) in flags, name


def test_a_field_given_outside_its_modes_or_runtimes_is_refused():
    with pytest.raises(InvalidJobError, match=r"new_tokens: 5 .*nothing in train mode \(it applies to inference\)"):
        make_job(mode="train", new_tokens=5)
    with pytest.raises(InvalidJobError, match=r"gpu_layers: 3 .*unless runtime is llamacpp"):
        make_job(gpu_layers=3)
    assert make_job(runtime="llamacpp", gpu_layers=3).gpu_layers == 3


def test_runtime_version_defaults_to_the_profile_and_unknown_versions_are_refused():
    assert make_job(runtime="litgpt").runtime_version == "0.4"
    assert make_job(runtime="litgpt", runtime_version="0.5.9").runtime_version == "0.5.9"
    with pytest.raises(InvalidJobError, match=r"runtime_version: '0.1' .*litgpt version ≥ 0.4"):
        make_job(runtime="litgpt", runtime_version="0.1")
    with pytest.raises(InvalidJobError, match=r"runtime: 'vllm' .*hf, torchtune, litgpt for training"):
        make_job(mode="train", runtime="vllm")
