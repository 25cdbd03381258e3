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
