"""The trace engine on tiny configs: expected values from first principles (numel × dtype bytes, Adam's two
states, the KV cache formula), never from running the tracer itself."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from modelmem.errors import MissingExtraError, ModelmemError
from modelmem.job import make_job
from modelmem.trace import _allocator as alloc

MIB = 1 << 20

# A 2-layer Llama: hidden 64, 4 query heads and 2 KV heads of 16, MLP 128, vocab 256.
TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512, tie_word_embeddings=False)
L, H, I, V, KV, HD = 2, 64, 128, 256, 2, 16


def r512(n: int) -> int:
    return -(-n // 512) * 512


def tiny_param_shapes() -> list[int]:
    """numel of every parameter tensor of the tiny Llama (modeling_llama.py: no biases, RMSNorm weights)."""
    per_layer = [H * H, KV * HD * H, KV * HD * H, H * H, I * H, I * H, H * I, H, H]
    return [V * H] + per_layer * L + [H, V * H]


def job(**fields):
    targets = fields.pop("lora_targets", None)
    j = make_job(**fields)
    return dataclasses.replace(j, lora_targets=targets) if targets else j


# -- allocator replay: pure Python, runs without torch ------------------------------------------------------------

def test_small_requests_share_a_2mib_segment():
    r = alloc.replay([(1, 300_000), (2, 300_000), (3, 100)])
    assert r.reserved_peak == 2 * MIB
    assert r.allocated_peak == r512(300_000) * 2 + 512


def test_mid_size_request_gets_a_20mib_segment_that_is_split():
    r = alloc.replay([(1, 5 * MIB), (2, 5 * MIB)])
    assert r.reserved_peak == 20 * MIB and r.segments == 1


def test_large_request_rounds_to_2mib():
    assert alloc.replay([(1, 11 * MIB)]).reserved_peak == 12 * MIB


def test_freed_neighbours_merge_and_are_reused():
    # three 6 MiB blocks in one 20 MiB segment; once all are free, a 15 MiB request fits the merged block
    r = alloc.replay([(1, 6 * MIB), (2, 6 * MIB), (3, 6 * MIB), (-2, 0), (-1, 0), (-3, 0), (4, 15 * MIB)])
    assert r.reserved_peak == 20 * MIB


def test_no_reuse_without_a_large_enough_block():
    r = alloc.replay([(1, 12 * MIB), (-1, 0), (2, 14 * MIB)])
    assert r.reserved_peak == 12 * MIB + 14 * MIB


def test_import_does_not_load_torch():
    code = "import sys, modelmem.trace; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the traced workload --------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
from modelmem.trace._engine import run_trace  # noqa: E402


def test_inference_weights_and_kv_cache_exact():
    b, s, new = 2, 40, 3
    r = run_trace(TINY, job(mode="inference", batch_size=b, seq_len=s, new_tokens=new, dtype="bf16"))
    assert r.final_components["weights"] == sum(r512(n * 2) for n in tiny_param_shapes()) + 2 * r512(HD // 2 * 4)  # + rotary inv_freq and original_inv_freq buffers (fp32)
    # DynamicCache: one K and one V tensor per layer of b × kv_heads × tokens × head_dim (bf16)
    per_tensor = b * KV * (s + new - 1) * HD * 2  # the last generated token is not fed back
    assert r.final_components["kv_cache"] == 2 * L * r512(per_tensor)
    assert r.params == sum(tiny_param_shapes())


def test_training_two_steps_adam_states_and_peak():
    r = run_trace(TINY, job(mode="train", precision="pure", dtype="bf16", batch_size=2, seq_len=32), phase_detail=True)
    params = sum(r512(n * 2) for n in tiny_param_shapes())
    # torch's AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype
    assert r.final_components["optimizer_states"] == 2 * params
    assert r.final_components["gradients"] == 0  # zero_grad(set_to_none=True)
    # the second step's forward runs with the states alive: two steps were traced
    assert r.phase_peaks["forward"]["components"]["optimizer_states"] == 2 * params
    assert r.allocated_peak >= params + params + 2 * params
    assert r.trainable_params == r.params


def test_mixed_precision_keeps_fp32_masters_and_states():
    r = run_trace(TINY, job(mode="train", precision="mixed", dtype="bf16", batch_size=1, seq_len=16))
    params32 = sum(r512(n * 4) for n in tiny_param_shapes())
    assert r.final_components["optimizer_states"] == 2 * params32


def test_activations_grow_with_tokens_and_checkpointing_saves():
    def act(seq: int, ck: str) -> int:
        rr = run_trace(TINY, job(mode="train", precision="pure", batch_size=1, seq_len=seq, grad_checkpointing=ck), phase_detail=True)
        return rr.phase_peaks["logits"]["components"]["activations"]

    assert act(256, "none") > act(128, "none")
    assert act(256, "full") < act(256, "none")


def test_eager_attention_stores_the_score_matrix():
    def act(attn: str) -> int:
        rr = run_trace(TINY, job(mode="train", precision="pure", batch_size=1, seq_len=256, attention=attn), phase_detail=True)
        return rr.phase_peaks["logits"]["components"]["activations"]

    # eager keeps the softmax output: heads × s × s per layer (bf16), at least
    assert act("eager") - act("sdpa") >= L * 4 * 256 * 256 * 2


def test_lora_trains_only_adapters():
    r = run_trace(TINY, job(mode="lora", batch_size=1, seq_len=16, lora_rank=4, lora_targets="q_proj,v_proj"))
    # q_proj: A r×H + B H×r; v_proj: A r×H + B (KV·HD)×r, per layer
    adapters = L * (4 * H + H * 4 + 4 * H + KV * HD * 4)
    assert r.trainable_params == adapters
    # adapters live in fp32 (PEFT autocast_adapter_dtype); two fp32 Adam states each
    assert r.final_components["optimizer_states"] == 2 * L * (r512(4 * H * 4) + r512(H * 4 * 4) + r512(4 * H * 4) + r512(KV * HD * 4 * 4))


def test_qlora_base_is_packed_4bit():
    r = run_trace(TINY, job(mode="qlora", batch_size=1, seq_len=16, lora_targets="all-linear", quant="nf4"))
    linears = [H * H, KV * HD * H, KV * HD * H, H * H, I * H, I * H, H * I] * L
    # bitsandbytes Linear4bit: uint8 weight of n/2 bytes, fp32 absmax per 64 values, 16-entry fp32 code
    packed = sum(r512(n // 2) + r512(n // 64 * 4) + r512(16 * 4) for n in linears)
    others = r512(V * H * 2) * 2 + r512(H * 2) * (2 * L + 1) + 2 * r512(HD // 2 * 4)
    r_ = 8
    shapes = [(H, H), (KV * HD, H), (KV * HD, H), (H, H), (I, H), (I, H), (H, I)] * L
    adapters = sum(r512(r_ * fin * 4) + r512(fout * r_ * 4) for fout, fin in shapes)
    assert r.final_components["weights"] == packed + others + adapters


def test_unsupported_job_is_one_line():
    from modelmem.trace._workload import UnsupportedJobError

    with pytest.raises(UnsupportedJobError, match="grad_checkpointing='selective'"):
        run_trace(TINY, job(mode="train", grad_checkpointing="selective"))


def test_missing_extra(monkeypatch):
    from modelmem.trace import _deps

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtraError, match=r"modelmem\[trace\]"):
        _deps.require()


def test_untested_versions_named(monkeypatch):
    from modelmem.trace import _deps

    monkeypatch.setattr(_deps, "PINS", {**_deps.PINS, "transformers": "0.0.1"})
    with pytest.raises(ModelmemError, match=r"transformers==0\.0\.1") as e:
        _deps.require()
    assert "\n" not in str(e.value)


def test_public_trace_returns_estimate():
    from modelmem.spec import ModelSpec
    from modelmem.trace import trace

    spec = ModelSpec(name="tiny", model_type="llama", hidden_size=H, num_layers=L, num_heads=4, num_kv_heads=KV,
                     head_dim=HD, intermediate_size=I, vocab_size=V, config=TINY)
    est = trace(spec, job(mode="train", precision="pure", batch_size=1, seq_len=16))
    d = est.to_dict()
    assert d["method"] == "trace"
    assert d["per_gpu"]["allocated_peak"] == sum(d["per_gpu"]["components"].values())
    assert d["per_gpu"]["reserved_peak"] >= d["per_gpu"]["allocated_peak"]


def test_measure_needs_cuda():
    from modelmem.spec import ModelSpec
    from modelmem.trace import measure

    spec = ModelSpec(name="tiny", model_type="llama", hidden_size=H, num_layers=L, num_heads=4, num_kv_heads=KV,
                     head_dim=HD, intermediate_size=I, vocab_size=V, config=TINY)
    if torch.cuda.is_available():
        est = measure(spec, job(mode="train", precision="pure", batch_size=1, seq_len=16))
        assert est.per_gpu.allocated_peak > 0
    else:
        with pytest.raises(ModelmemError, match="no CUDA GPU is available"):
            measure(spec, job(mode="train", batch_size=1, seq_len=16))


def test_fsdp_shards_parameters_grads_and_states():
    n = 2
    r = run_trace(TINY, job(mode="train", precision="pure", batch_size=1, seq_len=32, num_gpus=n, strategy="fsdp"), phase_detail=True)
    # FSDP2 keeps dim-0 shards (every dimension of the tiny model divides by 2): half of each tensor per rank
    shards = sum(r512(k * 2 // n) for k in tiny_param_shapes())
    assert r.final_components["weights"] == shards + 2 * r512(HD // 2 * 4)  # buffers are not sharded
    assert r.final_components["optimizer_states"] == 2 * shards
    # gradient shards are views of one reduce-scatter output per unit: fewer 512-byte roundings
    raw = sum(k * 2 // n for k in tiny_param_shapes())
    assert raw <= r.phase_peaks["optimizer"]["components"]["gradients"] <= shards
    # the all-gathered parameters of a unit are visible while it runs
    assert r.phase_peaks["forward"]["components"]["unsharded_params"] > 0


def test_fast_forwarded_decode_matches_every_step():
    j = job(mode="inference", batch_size=2, seq_len=24, new_tokens=7)
    fast, full = run_trace(TINY, j), run_trace(TINY, j, fast_decode=False)
    assert fast.allocated_peak == full.allocated_peak
    assert fast.final_components == full.final_components


def test_sdpa_never_stores_the_score_matrix_even_with_attention_dropout():
    # GPT-2 has attn_pdrop 0.1; a GPU's flash kernel applies it inside, so activations stay linear in the sequence
    gpt2 = dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=256)

    def act(seq: int) -> int:
        rr = run_trace(gpt2, job(mode="train", precision="pure", batch_size=1, seq_len=seq), phase_detail=True)
        return rr.phase_peaks["logits"]["components"]["activations"]

    # exactly affine in tokens (flash keeps a constant RNG seed and offset per layer for its dropout): no stored
    # scores (eager would add 2 layers × 4 heads × s² × 2 bytes) and no s × s mask
    a256, a512, a1024 = act(256), act(512), act(1024)
    assert a1024 - a512 == 2 * (a512 - a256)


def test_training_keeps_is_causal_and_unexpanded_gqa():
    # With unpacked inputs, SDPA runs with is_causal and enable_gqa as on a GPU: K and V are saved once per layer at
    # their own width (no s × s mask, no copies expanded to every head).
    def act(kv_heads: int) -> int:
        cfg = {**TINY, "num_key_value_heads": kv_heads}
        rr = run_trace(cfg, job(mode="train", precision="pure", batch_size=1, seq_len=256), phase_detail=True)
        return rr.phase_peaks["logits"]["components"]["activations"]

    # k_proj and v_proj outputs after RoPE/as passed to SDPA: 2 tensors × tokens × kv_heads × head_dim × 2 bytes
    assert act(4) - act(1) == L * 2 * 256 * (4 - 1) * HD * 2


def test_8bit_adamw_shim_has_bitsandbytes_state_sizes():
    r = run_trace(TINY, job(mode="train", precision="pure", optimizer="adamw-8bit", batch_size=1, seq_len=16))
    expected = 0
    for n in tiny_param_shapes():
        if n < 4096:  # bitsandbytes min_8bit_size: small tensors keep two fp32 states
            expected += 2 * r512(n * 4)
        else:  # two uint8 states and one fp32 absmax per 256-value block for each
            expected += 2 * r512(n) + 2 * r512(-(-n // 256) * 4)
    assert r.final_components["optimizer_states"] == expected


# -- progress (issue 8, item 9) ---------------------------------------------------------------------------------

def test_trace_reports_its_stages_in_order():
    seen: list[str] = []
    run_trace(TINY, job(mode="train", precision="pure", batch_size=1, seq_len=16), progress=seen.append)
    assert seen == ["building", "warm step", "traced step", "replay", ""]
    seen.clear()
    run_trace(TINY, job(mode="inference", batch_size=1, seq_len=16, new_tokens=2), progress=seen.append)
    assert seen == ["building", "prefill", "decode", "replay", ""]


def test_ticker_names_stages_once_a_run_has_lasted_a_second(monkeypatch):
    import io

    from modelmem import _progress

    clock = [100.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with _progress.Ticker(out, "tracing on fake tensors", interval_s=3600) as t:
        t.stage("building")  # at once: quick stages print nothing
        clock[0] += 0.5
        t.stage("warm step")
        clock[0] += 2.0
        t.stage("traced step")  # 2.5 s in: shown
        clock[0] += 1.0
        t.stage("")
    lines = out.getvalue().splitlines()
    assert lines[0] == "modelmem: tracing on fake tensors: traced step … 2 s"
    assert lines[-1] == "modelmem: tracing on fake tensors done in 3.5 s"
    assert not any("building" in ln or "warm step" in ln for ln in lines)


def test_cli_trace_json_stdout_is_only_json(tmp_path, capsys):
    import json

    from modelmem.cli import main

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["trace", str(cfg), "--mode", "train", "--batch-size", "1", "--seq-len", "16", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["method"] == "trace"


def test_mixed_precision_sdpa_takes_the_kernel_autocast_feeds():
    # Under mixed precision the residual stream and RoPE's cos/sin are fp32, so q and k reach SDPA in fp32; CUDA
    # autocast casts SDPA's inputs to bf16 before the kernel is chosen (scaled_dot_product_attention is on its
    # lower-precision list), so a GPU runs flash: activations stay affine in the sequence, with no fp32 s × s scores
    # (the math kernel's would add 2 layers × 4 heads × s² × 4 bytes and more).
    def act(seq: int) -> int:
        rr = run_trace(TINY, job(mode="train", precision="mixed", dtype="bf16", optimizer="sgd", batch_size=1,
                                 seq_len=seq), phase_detail=True)
        return rr.phase_peaks["logits"]["components"]["activations"]

    a256, a512, a1024 = act(256), act(512), act(1024)
    assert a1024 - a512 == 2 * (a512 - a256)
