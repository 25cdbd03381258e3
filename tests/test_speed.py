"""Time estimates against worked examples written out by hand from the published formulas (see modelmem.speed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import modelmem
from modelmem import speed

# Llama-3.1-8B (config.json): 32 layers, hidden 4096, 32 query / 8 KV heads of 128, vocab 128256, untied head.
N = 8_030_261_248            # parameters (HF reports 8,030,261,248)
EMBED = 128_256 * 4_096      # 525,336,576: the input embedding table, read one row per token
L, D_ATTN, KV_PER_TOKEN = 32, 32 * 128, 32 * 2 * 8 * 128 * 2  # KV bytes per token in bf16: 131,072
H100_BW, H100_BF16 = 3.35e12, 989.5e12  # H100 SXM datasheet (bf16 1,979 TFLOPS with sparsity → 989.5 dense)


def test_decode_roofline_8b_bf16_on_h100_batch_1():
    # Issue 11's example: 3.35e12 / 16.06e9 ≈ 209 tok/s reads every weight. A decode step does not read the untied
    # embedding table, only one row of it, so the bytes per step are (N − EMBED) × 2 plus the cache: 1 prompt token +
    # half of 1 new token → 2 cached tokens.
    step_bytes = (N - EMBED) * 2 + 2 * KV_PER_TOKEN  # 15,009,849,344 + 262,144
    est = modelmem.estimate("llama-3.1-8b", gpu="h100-sxm", seq_len=1, new_tokens=1)
    s = est.speed
    assert s.decode_bytes_per_step == step_bytes
    assert s.decode_bound_tokens_per_s == pytest.approx(H100_BW / step_bytes, rel=1e-9)  # ≈ 223.2 tok/s
    assert H100_BW / (2 * N) < s.decode_bound_tokens_per_s < H100_BW / ((N - EMBED) * 2)
    assert s.decode_tokens_per_s == pytest.approx(speed.DEFAULT_MBU * H100_BW / step_bytes, rel=1e-9)
    assert s.decode_bound == "memory" and s.decode_tokens_per_s_aggregate == s.decode_tokens_per_s


def test_decode_reads_the_kv_cache_of_the_whole_batch():
    # Batch 8, prompt 4096, 1024 new: the middle of the generation holds 4096 + 512 tokens per sequence.
    ctx = 4096 + 512
    step_bytes = (N - EMBED) * 2 + 8 * ctx * KV_PER_TOKEN  # 15.01e9 + 4.83e9
    s = modelmem.estimate("llama-3.1-8b", gpu="h100-sxm", batch_size=8, seq_len=4096, new_tokens=1024).speed
    assert s.decode_bytes_per_step == step_bytes
    per_seq = speed.DEFAULT_MBU * H100_BW / step_bytes
    assert s.decode_tokens_per_s == pytest.approx(per_seq, rel=1e-9)
    assert s.decode_tokens_per_s_aggregate == pytest.approx(8 * per_seq, rel=1e-9)


def test_moe_decode_reads_only_the_touched_experts():
    # Mixtral-8x7B routes each token to 2 of 8 experts: one token touches 1/4 of them; 8 tokens 1 − (3/4)^8 ≈ 90 %.
    spec = modelmem.resolve_model("mixtral-8x7b-v0.1")
    assert speed._touched_expert_fraction(spec, 1) == pytest.approx(0.25)
    assert speed._touched_expert_fraction(spec, 8) == pytest.approx(1 - 0.75**8)
    one = modelmem.estimate("mixtral-8x7b-v0.1", gpu="h200", seq_len=1, new_tokens=1).speed
    dense_read = modelmem.estimate("mixtral-8x7b-v0.1", gpu="h200", seq_len=1, new_tokens=1).per_gpu.components["weights"]
    assert one.decode_bytes_per_step < 0.4 * dense_read  # experts are ~96 % of Mixtral's weights


def test_decode_becomes_compute_bound_at_large_batch():
    s = modelmem.estimate("llama-3.1-8b", gpu="h100-sxm", batch_size=512, seq_len=16, new_tokens=16).speed
    assert s.decode_bound == "compute"


def test_prefill_flops_worked_example():
    # Kaplan et al. 2020 Table 1: 2N + 2 · n_layer · n_ctx · d_attn per token; 2048 tokens at MFU 0.5 on an H100.
    flops = 2048 * (2 * N + 2 * L * 2048 * D_ATTN)
    s = modelmem.estimate("llama-3.1-8b", gpu="h100-sxm", seq_len=2048, new_tokens=1, mfu=0.5).speed
    assert s.prefill_seconds == pytest.approx(flops / (H100_BF16 * 0.5), rel=1e-9)  # ≈ 70.4 ms


@pytest.mark.parametrize(("job", "weight_factor", "attention_factor"), [
    (dict(mode="train"), 6, 3),                                  # 2 forward + 4 backward
    (dict(mode="train", grad_checkpointing="full"), 8, 4),       # + one recomputed forward
    (dict(mode="lora"), 4, 3),                                   # frozen weights: no weight-gradient matmuls
    (dict(mode="lora", grad_checkpointing="full"), 6, 4),
])
def test_training_flops_per_token(job, weight_factor, attention_factor):
    per_token = weight_factor * N + attention_factor * 2 * L * 2048 * D_ATTN
    s = modelmem.estimate("llama-3.1-8b", gpu="h100-sxm", num_gpus=1, seq_len=2048, **job).speed
    assert s.flops_per_token == per_token


def test_training_step_worked_example():
    # Full fine-tune of Llama-3.1-8B, 1 × 2048 tokens per GPU, 6N + attention at MFU 0.5:
    # 2048 × (6 × 8.03e9 + 3 × 2 × 32 × 2048 × 4096) = 1.0197e14 FLOP → 0.2061 s on one H100.
    flops = 2048 * (6 * N + 3 * 2 * L * 2048 * D_ATTN)
    s = modelmem.estimate("llama-3.1-8b", mode="train", gpu="h100-sxm", num_gpus=1, seq_len=2048, mfu=0.5).speed
    assert s.compute_seconds == pytest.approx(flops / (H100_BF16 * 0.5), rel=1e-9)
    assert s.communication_seconds == 0 and s.tokens_per_s == pytest.approx(2048 / s.step_seconds)


def test_ddp_all_reduce_over_nvlink():
    # 8 H100 SXM, DDP: ring all-reduce of the fp32 gradients (HF mixed precision keeps fp32 masters and grads),
    # 2 · 7/8 · 4N bytes over NVLink 4 at 900 GB/s both ways = 450 GB/s each way: 0.1249 s.
    s = modelmem.estimate("llama-3.1-8b", mode="train", gpu="h100-sxm", num_gpus=8, strategy="ddp", seq_len=2048).speed
    assert s.communication_seconds == pytest.approx(2 * 7 / 8 * 4 * N / 450e9, rel=1e-9)
    assert s.tokens_per_s == pytest.approx(8 * 2048 / s.step_seconds)
    over_pcie = modelmem.estimate("llama-3.1-8b", mode="train", gpu="h100-sxm", num_gpus=8, strategy="ddp",
                                  seq_len=2048, interconnect="pcie").speed
    assert over_pcie.communication_seconds == pytest.approx(2 * 7 / 8 * 4 * N / 32e9, rel=1e-9)  # PCIe 4.0 x16


def test_fsdp_moves_one_and_a_half_times_ddp_volume():
    # ZeRO-3/FSDP: bf16 parameters gathered twice and fp32 gradients reduce-scattered, each (n − 1)/n over the link.
    s = modelmem.estimate("llama-3.1-8b", mode="train", gpu="h100-sxm", num_gpus=8, strategy="fsdp", seq_len=2048).speed
    assert s.communication_seconds == pytest.approx(7 / 8 * (2 * 2 * N + 4 * N) / 450e9, rel=1e-9)


def test_more_than_a_node_crosses_infiniband():
    s = modelmem.estimate("llama-3.1-8b", mode="train", gpu="h100-sxm", num_gpus=16, strategy="ddp").speed
    assert s.communication_seconds == pytest.approx(2 * 15 / 16 * 4 * N / 50e9, rel=1e-9)  # NDR 400 Gb/s each way


def test_mfu_and_batch_move_time_the_right_way():
    slow = modelmem.estimate("llama-3.1-8b", mode="lora", gpu="rtx-4090", num_gpus=1, mfu=0.2).speed
    fast = modelmem.estimate("llama-3.1-8b", mode="lora", gpu="rtx-4090", num_gpus=1, mfu=0.6).speed
    assert fast.step_seconds == pytest.approx(slow.step_seconds / 3)
    prev = None
    for b in (1, 4, 16, 64):
        s = modelmem.estimate("llama-3.1-8b", gpu="h100-sxm", batch_size=b, seq_len=512, new_tokens=128).speed
        if prev is not None:
            assert s.decode_tokens_per_s <= prev.decode_tokens_per_s
            assert s.decode_tokens_per_s_aggregate >= prev.decode_tokens_per_s_aggregate
        prev = s


def test_fp16_only_devices_use_their_fp16_rate():
    s = modelmem.estimate("7B", mode="lora", gpu="t4", dtype="fp16").speed
    assert s is not None and "65 TFLOP/s dense fp16" in " ".join(s.assumptions)


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2", "fast"])
def test_bad_mfu_names_the_field(bad):
    r = subprocess.run([sys.executable, "-m", "modelmem", "estimate", "7B", "--mfu", bad], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("modelmem: error: mfu:") and r.stderr.count("\n") == 1


def test_json_and_text_carry_speed_labelled_as_estimate():
    run = [sys.executable, "-m", "modelmem", "estimate", "llama-3.1-8b", "--gpu", "h100", "--new-tokens", "128"]
    d = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True).stdout)["speed"]
    assert d["estimate"] is True and d["decode_tokens_per_s"] > 0 and d["prefill_seconds"] > 0 and d["assumptions"]
    text = subprocess.run(run, capture_output=True, text=True).stdout
    assert "speed (estimate): prefill" in text and "  - MFU 0.40" in text
    t = json.loads(subprocess.run([*run[:-2], "--mode", "train", "--json"], capture_output=True, text=True).stdout)["speed"]
    assert t["step_seconds"] > 0 and t["tokens_per_s"] > 0


# --- ranking plans by time and cost ------------------------------------------------------------------------------

def test_throughput_and_cost_worked_example():
    # Training: tokens/s is the speed's own figure; at $2.50 per H100-hour on 8 GPUs a million tokens cost
    # 2.50 × 8 / 3600 / tokens_per_s × 1e6 dollars.
    est = modelmem.estimate("llama-3.1-8b", mode="train", gpu="h100", num_gpus=8, strategy="fsdp")
    rate = speed.throughput_tokens_per_s(est)
    assert rate == est.speed.tokens_per_s
    prices = speed.parse_prices(["h100=2.5"])  # an alias resolves to the catalog name
    assert prices == {"h100-80gb": 2.5}
    assert speed.usd_per_million_tokens(est, prices) == pytest.approx(2.5 * 8 / 3600 / rate * 1e6)
    assert speed.usd_per_million_tokens(est, {"a100-80gb": 1.0}) is None  # no price for this GPU: no cost
    # Inference: batch 4 × 256 new tokens, the prefill counted in.
    inf = modelmem.estimate("llama-3.1-8b", gpu="h100", batch_size=4, seq_len=1024, new_tokens=256)
    s = inf.speed
    assert speed.throughput_tokens_per_s(inf) == pytest.approx(4 * 256 / (s.prefill_seconds + 256 / s.decode_tokens_per_s))


@pytest.mark.parametrize("bad", ["h100", "h100=", "h100=-1", "h100=free", "=2"])
def test_bad_price_names_the_field(bad):
    with pytest.raises(modelmem.ModelmemError, match="^price: "):
        speed.parse_prices([bad])


def test_degrees_from_layout_fields_or_strategy():
    from types import SimpleNamespace

    assert speed.Degrees.of(SimpleNamespace(tp=2, pp=2, cp=1, strategy="fsdp"), 16) == speed.Degrees(2, 2, 1, 4)
    assert speed.Degrees.of(SimpleNamespace(strategy="tp"), 8) == speed.Degrees(8, 1, 1, 1)
    assert speed.Degrees.of(SimpleNamespace(strategy="fsdp"), 8) == speed.Degrees(1, 1, 1, 8)


def test_tensor_parallel_training_worked_example():
    # Llama-3.1-70B (80 layers, hidden 8192), tp8 on H100 SXM: 4 all-reduces per layer of 2048 × 8192 bf16
    # activations, each 2 · 7/8 of the buffer over 450 GB/s; compute is one replica's tokens shared by 8 GPUs.
    spec = modelmem.resolve_model("llama-3.1-70b")
    est = modelmem.estimate(spec, mode="train", gpu="h100-sxm", num_gpus=8, strategy="tp", seq_len=2048, mfu=0.5)
    s = est.speed
    assert s.communication_seconds == pytest.approx(4 * 80 * 2 * 7 / 8 * 2048 * 8192 * 2 / 450e9, rel=1e-9)
    assert s.compute_seconds == pytest.approx(2048 * s.flops_per_token / 8 / (H100_BF16 * 0.5), rel=1e-9)
    assert s.tokens_per_s == pytest.approx(2048 / s.step_seconds)  # one replica: no data parallelism


def test_plan_ranking_by_time_and_cost():
    from types import SimpleNamespace

    spec = modelmem.resolve_model("llama-3.1-8b")
    plans = [SimpleNamespace(estimate=modelmem.estimate(spec, mode="train", gpu=g, num_gpus=n, strategy=s), num_gpus=n)
             for g, n, s in (("a100-80gb", 8, "fsdp"), ("h100", 8, "fsdp"), ("h100", 2, "fsdp"))]
    by_time = sorted(plans, key=speed.plan_ranking("time", spec))
    assert [(p.estimate.gpu.name, p.num_gpus) for p in by_time] == [("h100-80gb", 8), ("a100-80gb", 8), ("h100-80gb", 2)]
    # At $4/h an H100 against $1/h an A100, the A100s make a million tokens cheaper:
    # 8 × 1 / 3600 / tok_s(a100) vs 8 × 4 / 3600 / tok_s(h100), with tok_s(h100) < 4 × tok_s(a100).
    prices = speed.parse_prices(["h100=4", "a100-80gb=1"])
    by_cost = sorted(plans, key=speed.plan_ranking("cost", spec, prices))
    assert by_cost[0].estimate.gpu.name == "a100-80gb"
    only_h100 = sorted(plans, key=speed.plan_ranking("cost", spec, {"h100-80gb": 4.0}))
    assert only_h100[-1].estimate.gpu.name == "a100-80gb"  # no price: ranked last
    with pytest.raises(modelmem.ModelmemError, match="^price: .*no built-in prices"):
        speed.plan_ranking("cost", spec, {})
    with pytest.raises(modelmem.ModelmemError, match="^rank: "):
        speed.plan_ranking("speed", spec)
