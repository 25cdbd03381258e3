"""Memory components from first principles: weights per format, optimizer states, KV cache layouts, sharding."""

import pytest

import modelmem
from modelmem.dtypes import gguf_bits, gguf_more_bits, quant_format
from modelmem.job import make_job
from modelmem.memory.kv_cache import kv_cache_bytes
from modelmem.memory.optimizer import TrainableShapes, gradient_bytes, optimizer_state_bytes, optimizer_step_temporary_bytes

P = 1_000_000
SHAPES = TrainableShapes(params=P, matrices=0, factored=0, largest=0)  # AdamW and friends read only the count


@pytest.mark.parametrize(
    "quant, bytes_per_weight",
    [
        ("nf4", 0.5 + 4 / 64),  # 4-bit codes + fp32 absmax per 64
        ("nf4-dq", 0.5 + 1 / 64 + 4 / (64 * 256)),  # QLoRA §3: 8-bit absmax, fp32 scale per 256 absmax
        ("int4", 0.5 + 4 / 128),  # bf16 scale + bf16 zero per group of 128
        ("gptq", 0.5 + 2.5 / 128),  # fp16 scale + 4-bit zero per group
    ],
)
def test_grouped_formats(quant, bytes_per_weight):
    assert quant_format(quant, 128).bytes_per_weight(4096) == pytest.approx(bytes_per_weight)


def test_per_channel_formats_amortize_over_the_row():
    assert quant_format("int8").bytes_per_weight(4096) == pytest.approx(1 + 4 / 4096)
    assert quant_format("int8-wo").bytes_per_weight(4096) == pytest.approx(1 + (2 + 8) / 4096)  # bf16 scale, int64 zero


def test_gguf_block_sizes():
    assert gguf_bits("Q8_0", "other", False) == 8.5  # 34 bytes per 32 weights
    assert gguf_bits("Q4_K_M", "other", False) == 4.5  # Q4_K: 144 bytes per 256
    assert gguf_bits("Q4_K_M", "attn_v", True) == 6.5625  # Q6_K: 210 bytes per 256
    assert gguf_bits("Q4_K_M", "output", False) == 6.5625
    # llama.cpp's use_more_bits over 32 layers: first 4, last 4, and every third in between.
    assert [i for i in range(32) if gguf_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


@pytest.mark.parametrize(
    "optimizer, precision, states",
    [
        ("adamw", "pure", 2 * 2 * P),  # two bf16 states (torch keeps them in the parameter's dtype)
        ("adamw", "mixed", 2 * 4 * P),  # two fp32 states on fp32 masters
        ("sgd", "pure", 0),
        ("sgd-momentum", "pure", 2 * P),
        ("lion", "mixed", 4 * P),
        ("adamw-8bit", "pure", int(2 * (1 + 4 / 256) * P)),
        ("paged-adamw", "pure", 0),  # unified memory: invisible to torch's allocator
    ],
)
def test_optimizer_states(optimizer, precision, states):
    job = make_job(mode="train", optimizer=optimizer, precision=precision)
    assert optimizer_state_bytes(job, SHAPES) == states


def test_gradients_and_foreach_temporary_follow_the_master_dtype():
    mixed, pure = make_job(mode="train", precision="mixed"), make_job(mode="train", precision="pure")
    assert gradient_bytes(mixed, P) == 4 * P and gradient_bytes(pure, P) == 2 * P
    assert optimizer_step_temporary_bytes(pure, SHAPES) == 2 * P  # _foreach_sqrt of exp_avg_sq
    assert optimizer_step_temporary_bytes(make_job(mode="train", runtime="torchtune"), SHAPES) == 0  # fused AdamW


def test_kv_cache_gqa_sliding_and_mla():
    gemma2 = modelmem.resolve_model("google/gemma-2-9b")  # 42 layers alternating sliding (4096) / global
    job = make_job()
    per_token = 2 * gemma2.num_kv_heads * gemma2.head_dim * 2  # K and V, bf16
    assert kv_cache_bytes(gemma2, job, 8192, 1) == per_token * (21 * 4096 + 21 * 8192)
    ds = modelmem.resolve_model("deepseek-ai/DeepSeek-V2-Lite")
    # transformers 4.x cached decompressed K (nope + rope) and V per head; transformers 5 and vLLM cache the
    # 512 + 64 latent.
    assert kv_cache_bytes(ds, make_job(runtime_version="4.46"), 1000, 1) == 27 * 16 * (128 + 64 + 128) * 1000 * 2
    assert kv_cache_bytes(ds, job, 1000, 1) == 27 * (512 + 64) * 1000 * 2
    assert kv_cache_bytes(ds, make_job(runtime="vllm"), 1000, 1) == 27 * (512 + 64) * 1000 * 2
    # Right after a prefill, transformers 5's sliding layers still hold the whole prompt (the window is a view of
    # it, cache_utils.py DynamicSlidingWindowLayer.update); the next decode step's cat frees it.
    assert kv_cache_bytes(gemma2, job, 8192, 1, after_prefill=True) == per_token * 42 * 8192
    assert kv_cache_bytes(gemma2, make_job(runtime="vllm"), 8192, 1, after_prefill=True) == per_token * (21 * 4096 + 21 * 8192)


def test_zero_stages_shard_states_then_grads_then_weights():
    def comps(strategy):
        return modelmem.estimate("meta-llama/Llama-3.1-8B", mode="train", precision="pure", seq_len=512,
                                 num_gpus=8, strategy=strategy).per_gpu.components
    z1, z2, z3 = comps("zero1"), comps("zero2"), comps("zero3")
    full_states = 2 * 2 * 8_030_261_248
    assert z1["optimizer_states"] == full_states // 8
    assert z2["optimizer_states"] == z1["optimizer_states"]
    assert z3["weights"] == 8_030_261_248 * 2 // 8


def test_optimizer_offload_moves_states_off_the_gpu():
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="train", num_gpus=2, strategy="zero3", offload="optimizer")
    assert est.per_gpu.components["optimizer_states"] == 0
    assert est.per_gpu.components["master_weights"] == 0


def test_tensor_parallel_splits_kv_heads_but_never_below_one():
    one = modelmem.estimate("meta-llama/Llama-3.1-8B", seq_len=4096, num_gpus=1).per_gpu.components["kv_cache"]
    tp8 = modelmem.estimate("meta-llama/Llama-3.1-8B", seq_len=4096, num_gpus=8, strategy="tp").per_gpu.components["kv_cache"]
    tp16 = modelmem.estimate("meta-llama/Llama-3.1-70B", seq_len=4096, num_gpus=16, strategy="tp").per_gpu.components["kv_cache"]
    tp8_70 = modelmem.estimate("meta-llama/Llama-3.1-70B", seq_len=4096, num_gpus=8, strategy="tp").per_gpu.components["kv_cache"]
    assert tp8 == one // 8  # 8 KV heads over 8 ranks
    assert tp16 == tp8_70  # 8 KV heads over 16 ranks: each rank still holds one head


def test_mixed_precision_keeps_fp32_masters_and_autocast_copies():
    c = modelmem.estimate("meta-llama/Llama-3.2-1B", mode="train", precision="mixed", num_gpus=1, seq_len=2048,
                          batch_size=8).per_gpu.components
    n = 1_235_814_400
    assert c["master_weights"] == 4 * n
    # autocast's bf16 copies of every matmul weight: 16 layers × (q 2048² + k, v 2048·512 + o 2048² + 3 · 2048·8192)
    # plus the (tied) LM head 128256 × 2048 — not the embedding lookup or the norms.
    linear = 16 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192) + 128256 * 2048
    assert c["weights"] == 2 * linear


def test_qlora_base_is_quantized_except_embeddings_and_head():
    c = modelmem.estimate("meta-llama/Llama-2-7b-hf", mode="qlora", quant="nf4", num_gpus=1, seq_len=16).per_gpu.components
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    other = 6_738_415_616 - linear
    adapters = 32 * 2 * 8 * (4096 + 4096)  # PEFT's default q_proj, v_proj at r=8
    # HF mixed precision: fp32 adapter masters, plus autocast's bf16 copies of them alive in forward/backward.
    assert c["weights"] == int(linear * (0.5 + 4 / 64)) + other * 2 + adapters * 2
    assert c["master_weights"] == adapters * 4
