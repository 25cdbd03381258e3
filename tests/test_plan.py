"""The estimator: seed parity, the JSON contract, first-principles components and monotonic properties."""

import importlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modelmem
from modelmem.errors import InvalidJobError, UnknownGPUError, UnknownModelError

GIB = 2**30


# --- the seed's rules, exactly -------------------------------------------------------------------------------

def test_seed_bytes_per_param_by_dtype():
    # 1B params = 4 / 2 / 1 / 0.5 GB for fp32 / bf16 / int8 / int4 (inference × 1.25)
    for dtype, quant, gb in (("fp32", "none", 4), ("bf16", "none", 2), ("bf16", "int8", 1), ("bf16", "int4", 0.5)):
        est = modelmem.estimate("1B", method="seed", dtype=dtype, quant=quant)
        assert est.per_gpu.components["weights"] == pytest.approx(gb * 1e9)
        assert est.total_bytes == pytest.approx(gb * 1e9 * 1.25)


def test_seed_7b_training_on_a100_80gb_needs_two_gpus():
    est = modelmem.estimate("7B", method="seed", mode="train", gpu="a100-80gb")
    assert est.total_bytes == round(7e9 * 18 * 1.25)  # 157.5 GB
    assert est.num_gpus == 2  # ceil(157.5 / 80)
    assert set(est.per_gpu.components) == {"weights", "gradients", "optimizer_states", "allowance"}


def test_seed_inference_and_lora_formulas():
    est = modelmem.estimate("70B", method="seed", gpu="a100-80gb")
    assert est.num_gpus == math.ceil(70 * 2 * 1.25 / 80)
    lora = modelmem.estimate("meta-llama/Llama-2-7b-hf", method="seed", mode="lora", lora_rank=8,
                             lora_targets="q_proj,v_proj", gpu="a100-40gb")
    p, t = 6_738_415_616, 4_194_304  # official count; PEFT r=8 q,v: 32 layers × 2 × 8 × (4096 + 4096)
    assert lora.total_bytes == round(p * 2 * 1.25 + t * 18 * 1.25)
    assert lora.num_gpus == math.ceil((p * 2 * 1.25 + t * 18 * 1.25) / 40e9)


def test_seed_optimizer_ratio_sgd_is_half_of_adamw():
    adam = modelmem.estimate("1B", method="seed", mode="train", optimizer="adamw").per_gpu.components
    sgd = modelmem.estimate("1B", method="seed", mode="train", optimizer="sgd-momentum").per_gpu.components
    assert adam["optimizer_states"] == 2 * sgd["optimizer_states"]


# --- the JSON contract ----------------------------------------------------------------------------------------

def test_json_shape_is_exact_and_integer(llama3_config_path):
    d = modelmem.estimate(str(llama3_config_path), mode="lora", gpu="rtx-4090").to_dict()
    assert set(d) == {"model", "job", "method", "per_gpu", "total_bytes", "gpu", "num_gpus", "fits", "speed", "suggestions",
                      "serving", "cpu_ram", "cpu_components"}
    assert set(d["model"]) == {"name", "params", "trainable_params", "active_params", "stored_as"}
    assert d["serving"] is None and d["cpu_ram"] is None  # serving engines and llama.cpp only
    assert set(d["per_gpu"]) == {"components", "allocated_peak", "reserved_peak", "device_total"}
    assert {"name", "label", "memory_bytes", "usable_bytes", "nominal_gb", "bandwidth_bytes_per_s", "bf16_flops", "sources"} <= set(d["gpu"])
    assert {"step_seconds", "tokens_per_s", "assumptions"} <= set(d["speed"])
    assert all(isinstance(v, int) for v in d["per_gpu"]["components"].values())
    assert sum(d["per_gpu"]["components"].values()) == d["per_gpu"]["allocated_peak"]
    assert d["per_gpu"]["allocated_peak"] <= d["per_gpu"]["reserved_peak"] <= d["per_gpu"]["device_total"]
    assert isinstance(d["fits"], bool) and isinstance(d["num_gpus"], int)
    assert d["job"]["lora_targets"] == "q_proj,v_proj"  # PEFT's default for llama, resolved
    assert d["total_bytes"] == d["per_gpu"]["device_total"] * d["num_gpus"]


# --- first principles ------------------------------------------------------------------------------------------

def test_inference_weights_and_kv_cache_from_first_principles(llama3_config_path):
    est = modelmem.estimate(str(llama3_config_path), batch_size=2, seq_len=24, new_tokens=1000, num_gpus=1)
    c = est.per_gpu.components
    assert c["weights"] == 8_030_261_248 * 2
    # K and V: 2 × 32 layers × 8 kv heads × 128 dims × 1024 tokens × 2 sequences × 2 bytes
    assert c["kv_cache"] == 2 * 32 * 8 * 128 * 1024 * 2 * 2


def test_full_training_pure_bf16_matches_the_traced_optimizer_step(llama3_config_path):
    # TRACING.md: Llama-3-8B pure bf16, AdamW foreach: params 14.96 + grads 14.96 + states 29.92 + temp 14.96 GiB
    est = modelmem.estimate(str(llama3_config_path), mode="train", precision="pure", num_gpus=1, seq_len=2048)
    assert est.per_gpu.allocated_peak / GIB == pytest.approx(74.79, abs=0.05)


def test_kv_cache_fp8_is_half_of_bf16(llama3_config_path):
    a = modelmem.estimate(str(llama3_config_path), seq_len=4096, num_gpus=1).per_gpu.components["kv_cache"]
    b = modelmem.estimate(str(llama3_config_path), seq_len=4096, kv_dtype="fp8", num_gpus=1).per_gpu.components["kv_cache"]
    assert b * 2 == a


def test_sliding_window_caps_the_cache_after_the_prefill():
    # Mistral-7B-v0.1: window 4096 on all 32 layers, 8 KV heads of 128, bf16. transformers 5 keeps the whole
    # prompt's K/V alive through the prefill (the window is a view of it), then holds the window while decoding:
    # a long prompt peaks at prefill with every token cached; a long generation after a short prompt holds 4096.
    per_token = 32 * 2 * 8 * 128 * 2
    prefill = modelmem.estimate("mistralai/Mistral-7B-v0.1", seq_len=16384, new_tokens=1, num_gpus=1)
    assert prefill.per_gpu.components["kv_cache"] == per_token * 16384
    decode = modelmem.estimate("mistralai/Mistral-7B-v0.1", seq_len=16, new_tokens=16368, num_gpus=1)
    assert decode.per_gpu.components["kv_cache"] == per_token * 4096


def test_auto_finds_the_fewest_gpus_that_fit():
    est = modelmem.estimate("meta-llama/Llama-3.1-70B", mode="inference", gpu="a100-80gb", seq_len=1024)
    assert est.fits
    assert est.num_gpus >= 2  # 141 GB of bf16 weights cannot fit one 80 GB card
    fewer = modelmem.estimate("meta-llama/Llama-3.1-70B", mode="inference", gpu="a100-80gb", seq_len=1024,
                              num_gpus=est.num_gpus // 2 if est.num_gpus > 2 else 1)
    assert not fewer.fits


def test_errors_name_the_input():
    with pytest.raises(UnknownModelError, match=r"model: 'lama-3.1-8b' .*did you mean"):
        modelmem.estimate("lama-3.1-8b")
    with pytest.raises(UnknownGPUError, match=r"gpu: 'h1000'"):
        modelmem.estimate("7B", gpu="h1000")
    with pytest.raises(InvalidJobError, match=r"method: 'magic'"):
        modelmem.estimate("7B", method="magic")
    with pytest.raises(InvalidJobError, match=r"num_gpus: 3 .*divides the 32 attention heads"):
        modelmem.estimate("meta-llama/Llama-3.1-8B", num_gpus=3, strategy="tp")


# --- properties -------------------------------------------------------------------------------------------------

MODES = st.sampled_from(["inference", "train", "lora", "qlora"])


@settings(max_examples=60, deadline=None)
@given(mode=MODES, batch=st.integers(1, 8), seq=st.integers(1, 8192), extra=st.integers(1, 4096),
       ckpt=st.sampled_from(["none", "full"]), attention=st.sampled_from(["sdpa", "eager"]))
def test_more_tokens_or_batch_never_means_less_memory(mode, batch, seq, extra, ckpt, attention):
    kw = dict(mode=mode, num_gpus=1, attention=attention)
    if mode != "inference":
        kw["grad_checkpointing"] = ckpt
    base = modelmem.estimate("meta-llama/Llama-3.1-8B", batch_size=batch, seq_len=seq, **kw).per_gpu.allocated_peak
    longer = modelmem.estimate("meta-llama/Llama-3.1-8B", batch_size=batch, seq_len=seq + extra, **kw).per_gpu.allocated_peak
    bigger = modelmem.estimate("meta-llama/Llama-3.1-8B", batch_size=batch + 1, seq_len=seq, **kw).per_gpu.allocated_peak
    assert longer >= base and bigger >= base


@settings(max_examples=30, deadline=None)
@given(rank=st.integers(1, 256), extra=st.integers(1, 256), mode=st.sampled_from(["lora", "qlora"]))
def test_higher_lora_rank_never_means_less_memory(rank, extra, mode):
    kw = dict(mode=mode, num_gpus=1, lora_targets="all-linear", seq_len=512)
    a = modelmem.estimate("meta-llama/Llama-3.1-8B", lora_rank=rank, **kw)
    b = modelmem.estimate("meta-llama/Llama-3.1-8B", lora_rank=rank + extra, **kw)
    assert b.model.trainable_params > a.model.trainable_params
    assert b.per_gpu.allocated_peak >= a.per_gpu.allocated_peak


_TRAINING_STRATEGIES = ["zero1", "zero2", "zero3", "fsdp", "tp", "pp", "layer-split"]


@pytest.mark.parametrize(
    "mode, strategy",
    [(m, s) for m in ("train", "lora") for s in _TRAINING_STRATEGIES] + [("inference", s) for s in ("tp", "pp", "layer-split")],
)
def test_more_gpus_never_means_more_per_gpu(mode, strategy):
    per = [modelmem.estimate("meta-llama/Llama-3.1-70B", mode=mode, strategy=strategy, num_gpus=n, seq_len=1024)
           .per_gpu.allocated_peak for n in (2, 4, 8)]
    assert per[0] >= per[1] >= per[2]


def test_params_api_matches_peft_counting():
    tp = modelmem.params("meta-llama/Llama-2-7b-hf", mode="lora", lora_rank=8, lora_targets="q_proj,v_proj")
    # 32 layers × 2 modules × r 8 × (4096 in + 4096 out) = 4,194,304; PEFT's "all params" includes the adapters.
    assert (tp.trainable, tp.total) == (4_194_304, 6_738_415_616 + 4_194_304)
    assert tp.line() == "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
    importlib.import_module("modelmem.counts")  # importing the counting module must not shadow the API function

    assert callable(modelmem.params)


JOB_SPACE = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["inference", "train", "lora", "qlora"]),
        "dtype": st.sampled_from(["fp16", "bf16"]),
        "batch_size": st.integers(1, 16),
        "seq_len": st.integers(1, 32768),
        "attention": st.sampled_from(["eager", "sdpa", "flash"]),
        "runtime": st.sampled_from(["hf", "torchtune", "litgpt", "torchao"]),
        "num_gpus": st.sampled_from([1, 2, 4, 8, "auto"]),
        "gpu": st.sampled_from(["h100-80gb", "a100-40gb", "rtx-4090", "t4", "mi300x"]),
    }
)
MODELS = st.sampled_from(["meta-llama/Llama-3.1-8B", "mistralai/Mixtral-8x7B-v0.1", "google/gemma-2-9b", "openai-community/gpt2",
                          "deepseek-ai/DeepSeek-V2-Lite", "openai/gpt-oss-20b", "Qwen/Qwen3-30B-A3B", "tiiuae/falcon-7b",
                          "microsoft/phi-2", "bigscience/bloom-560m", "facebook/opt-1.3b", "7B"])


@settings(max_examples=150, deadline=None)
@given(model=MODELS, job=JOB_SPACE, extra=st.data())
def test_any_valid_job_gives_non_negative_components_and_consistent_totals(model, job, extra):
    if job["mode"] != "inference" and job["runtime"] == "torchao":
        job["runtime"] = "hf"  # torchao's record is gpt-fast's generate.py: inference only
    if job["runtime"] in ("torchtune", "torchao") and modelmem.resolve_model(model).mla is not None:
        job["runtime"] = "hf"  # neither has multi-head latent attention: an MLA model is refused
    if job["mode"] != "inference":
        job["grad_checkpointing"] = extra.draw(st.sampled_from(["none", "full", "selective"]))
        job["optimizer"] = extra.draw(st.sampled_from(["adamw", "adamw-8bit", "paged-adamw", "sgd", "lion", "adafactor"]))
        if job["num_gpus"] != 1:
            job["strategy"] = extra.draw(st.sampled_from(["ddp", "zero1", "zero2", "zero3", "fsdp", "pp", "layer-split"]))
    else:
        job["new_tokens"] = extra.draw(st.integers(0, 4096))
        job["kv_dtype"] = extra.draw(st.sampled_from(["bf16", "fp8", "int8", "int4"]))
        if job["num_gpus"] != 1:
            job["strategy"] = extra.draw(st.sampled_from(["layer-split", "pp"]))  # tp may not divide every model's heads
    est = modelmem.estimate(model, **job)
    pg = est.per_gpu
    assert all(v >= 0 for v in pg.components.values()), pg.components
    assert pg.allocated_peak <= pg.reserved_peak <= pg.device_total
    assert est.num_gpus >= 1 and est.to_dict()["per_gpu"]["allocated_peak"] == pg.allocated_peak


@pytest.mark.parametrize("model, job", [
    ("meta-llama/Llama-3.1-70B", dict(mode="train", gpu="a100-80gb", strategy="fsdp", grad_checkpointing="full")),
    ("meta-llama/Llama-3.1-70B", dict(gpu="rtx-4090", strategy="tp", seq_len=8192)),  # only divisors of the heads
    ("meta-llama/Llama-3.1-8B", dict(mode="lora", gpu="rtx-4090", strategy="zero3")),
    ("mistralai/Mixtral-8x7B-v0.1", dict(mode="train", gpu="h100-80gb", strategy="pp", grad_checkpointing="full")),
])
def test_auto_gpu_count_is_the_fewest_that_fit(model, job):
    # The search for the count bisects (plan._fewest_gpus); a plain walk over the counts must agree.
    from modelmem.errors import InvalidJobError

    auto = modelmem.estimate(model, **job)
    assert auto.fits and auto.num_gpus > 1
    for n in range(1, auto.num_gpus + 1):
        try:
            fixed = modelmem.estimate(model, num_gpus=n, **job)
        except InvalidJobError:
            continue  # a count the layout cannot use
        assert fixed.fits == (n == auto.num_gpus), n
