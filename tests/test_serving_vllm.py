"""vLLM's memory accounting (runtimes/vllm.py) against vLLM's own logs and source arithmetic."""

import dataclasses

import pytest

from modelmem.counts import count_params, linear_modules
from modelmem.errors import InvalidJobError
from modelmem.model import resolve_model
from modelmem.runtimes import vllm

GIB = 1 << 30


def _settings(**kw):
    base = dict(max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=8192, caches_mla_latent=True)
    return vllm.VLLMSettings(**(base | kw))


def test_page_size_is_k_and_v_of_the_ranks_heads():
    spec = resolve_model("meta-llama/Meta-Llama-3-8B")  # 8 KV heads × 128
    # FullAttentionSpec.page_size_bytes = 2 (K, V) × block_size × heads × head_size × dtype bytes.
    assert vllm.page_bytes(spec, _settings()) == 2 * 16 * 8 * 128 * 2
    # 32 layers: 128 KiB per token, the figure behind "GPU KV cache size: 158,656 tokens" = 19.37 GiB (PR #17122).
    assert vllm.page_bytes(spec, _settings()) * 32 // 16 == 128 * 1024
    assert vllm.page_bytes(spec, _settings(kv_dtype="fp8")) == 2 * 16 * 8 * 128  # fp8 halves it
    assert vllm.page_bytes(spec, _settings(tensor_parallel=2)) == 2 * 16 * 4 * 128 * 2  # TP divides the heads
    # More ranks than KV heads: each rank keeps one replicated head (ModelConfig.get_num_kv_heads).
    assert vllm.page_bytes(spec, _settings(tensor_parallel=16)) == 2 * 16 * 1 * 128 * 2


def test_mla_caches_the_latent_on_every_rank():
    spec = resolve_model("deepseek-ai/DeepSeek-V3")  # kv_lora_rank 512, qk_rope_head_dim 64
    # MLAAttentionSpec: block_size × (512 + 64) × 2 bytes, not divided by tensor parallel.
    assert vllm.page_bytes(spec, _settings()) == 16 * (512 + 64) * 2
    assert vllm.page_bytes(spec, _settings(tensor_parallel=8)) == 16 * (512 + 64) * 2


def test_blocks_tokens_and_concurrency_as_logged():
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    s = _settings(max_model_len=32768, max_num_batched_tokens=2048)
    # PR #17122 log: "GPU KV cache size: 158,656 tokens" (9,916 blocks of 16) and
    # "Maximum concurrency for 32,768 tokens per request: 4.84x" = 9916 / cdiv(32768, 16).
    available = 9916 * 2 * 16 * 8 * 128 * 2 * 32 + 12345  # a remainder smaller than one block is dropped
    blocks = vllm.num_blocks(spec, s, available)
    assert blocks == 9916
    assert vllm.kv_cache_tokens(spec, s, blocks) == 158656
    assert round(vllm.max_concurrency(spec, s, blocks), 2) == 4.84


def test_v0_profile_matches_the_pr_10511_log():
    # vllm serve meta-llama/Meta-Llama-3-8B (V0, H100): total_gpu_memory 79.22GiB, utilization 0.90,
    # model weights take 14.96GiB, non_torch_memory 1.79GiB, PyTorch activation peak memory 1.26GiB,
    # available_kv_cache_memory 53.29GiB. Defaults: max_model_len 8192 → max_num_batched_tokens 8192, 256 seqs.
    spec = resolve_model("meta-llama/Meta-Llama-3-8B")
    engine = vllm.engine_for("0.6.5")
    tokens, seqs = vllm.default_batch_limits(engine, int(79.22 * GIB), "h100-80gb", 8192)
    assert (tokens, seqs) == (8192, 256)
    weights = count_params(spec).total * 2
    assert weights / GIB == pytest.approx(14.96, abs=0.01)
    m = vllm.capacity(spec, weights=weights, gpu_memory_bytes=int(79.22 * GIB),
                      settings=_settings(max_num_batched_tokens=tokens, max_num_seqs=seqs), engine=engine)
    assert m.activation_peak / GIB == pytest.approx(1.26, rel=0.06)
    assert m.available_kv / GIB == pytest.approx(53.29, rel=0.005)
    assert m.fits


def test_v0_blocks_of_llama2_7b_on_a100():
    # vLLM PR #2031: "Llama2-7B with TP=1 and 1xA100-80GB … This PR: # GPU blocks: 7351" (fp16, 4096 tokens).
    spec = resolve_model("meta-llama/Llama-2-7b-hf")
    engine = vllm.engine_for("0.2.7")
    tokens, seqs = vllm.default_batch_limits(engine, 84987084800, "a100-80gb", 4096)
    m = vllm.capacity(spec, weights=count_params(spec).total * 2, gpu_memory_bytes=84987084800,
                      settings=_settings(max_model_len=4096, max_num_batched_tokens=tokens, max_num_seqs=seqs, kv_dtype="fp16"),
                      engine=engine)
    assert m.blocks == pytest.approx(7351, rel=0.02)


def test_v1_defaults_by_device():
    v1 = vllm.engine_for(None)
    assert v1.engine == "V1"
    # arg_utils: ≥ 70 GiB and not an A100 → 8192 tokens, 1024 sequences; otherwise 2048 and 256.
    assert vllm.default_batch_limits(v1, 84944093184, "h100-80gb", 131072) == (8192, 1024)
    assert vllm.default_batch_limits(v1, 84987084800, "a100-80gb", 131072) == (2048, 256)
    assert vllm.default_batch_limits(v1, 47663022080, "l40s", 131072) == (2048, 256)


def test_sampler_peak_grows_with_max_num_seqs():
    spec = resolve_model("meta-llama/Llama-3.1-8B")
    v1 = vllm.engine_for(None)
    small = vllm.activation_peak(spec, v1, _settings(max_num_seqs=256, max_num_batched_tokens=8192), 2)
    big = vllm.activation_peak(spec, v1, _settings(max_num_seqs=1024, max_num_batched_tokens=8192), 2)
    # 768 more sequences × 128256 vocabulary × 27 bytes of sampler tensors.
    assert big - small == 768 * 128256 * 27


def test_does_not_fit_with_vllms_own_reason():
    # Qwen2.5-72B on 2 H100s at 32k (--max-num-seqs 256): vLLM refuses to start (issue 14).
    spec = resolve_model("Qwen/Qwen2.5-72B-Instruct")
    counts = count_params(spec)
    s = _settings(max_model_len=32768, max_num_batched_tokens=8192, max_num_seqs=256, tensor_parallel=2)
    m = vllm.capacity(spec, weights=counts.total * 2 // 2, gpu_memory_bytes=84944093184, settings=s)
    assert not m.fits
    # One 32k request: 80 layers × 2048 blocks × (2 × 16 × 4 heads × 128 × 2 bytes) = 5.00 GiB.
    assert m.reason.startswith("To serve at least one request with the models's max seq len (32768), (5.00 GiB KV cache "
                               "is needed, which is larger than the available KV cache memory (")
    assert "estimated maximum model length is" in m.reason
    estimated = vllm.estimate_max_model_len(spec, s, m.available_kv)
    assert vllm.max_memory_usage_bytes(spec, s, estimated) <= m.available_kv < vllm.max_memory_usage_bytes(spec, s, estimated + 16)


def test_no_memory_left_message():
    spec = resolve_model("meta-llama/Meta-Llama-3-8B")
    m = vllm.capacity(spec, weights=80 * GIB, gpu_memory_bytes=84944093184, settings=_settings())
    assert m.reason == ("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
                        "initializing the engine.")
    assert m.blocks == 0 and m.kv_tokens == 0


def test_fp8_kv_doubles_the_tokens():
    spec = resolve_model("meta-llama/Llama-3.1-8B")
    bf16 = vllm.capacity(spec, weights=16 * GIB, gpu_memory_bytes=84944093184, settings=_settings())
    fp8 = vllm.capacity(spec, weights=16 * GIB, gpu_memory_bytes=84944093184, settings=_settings(kv_dtype="fp8"))
    assert fp8.kv_tokens == pytest.approx(2 * bf16.kv_tokens, abs=16)


def test_max_num_seqs_bounds_concurrent_requests():
    spec = resolve_model("meta-llama/Llama-3.1-8B")
    m = vllm.capacity(spec, weights=16 * GIB, gpu_memory_bytes=84944093184,
                      settings=_settings(max_model_len=1024, max_num_seqs=8))
    assert m.max_concurrency > 8 and m.concurrent_requests == 8


def test_sliding_window_groups_gpt_oss():
    spec = resolve_model("openai/gpt-oss-120b")  # 18 sliding (128) + 18 full layers
    s = _settings(max_model_len=131072, max_num_batched_tokens=8192)
    page = vllm.page_bytes(spec, s)
    # Two groups of 18 layers share one pool: blocks = available // page // 18; tokens = blocks // 2 × 16.
    blocks = vllm.num_blocks(spec, s, page * 18 * 1000)
    assert blocks == 1000 and vllm.kv_cache_tokens(spec, s, blocks) == 500 * 16
    # A request needs cdiv(131072, 16) full blocks plus cdiv(min(128 − 1 + 8192, 131072), 16) + 1 sliding blocks.
    assert vllm.max_concurrency(spec, s, 1000) == 1000 / (8192 + 520 + 1)


def test_gpt_oss_120b_mxfp4_weights_per_a100_rank():
    # vLLM, gpt-oss-120b, TP 4 on A100s (Marlin MXFP4 MoE): "Model loading took 17.2 GiB" per GPU (issue 14).
    spec = resolve_model("openai/gpt-oss-120b")
    assert vllm.quant_method(spec, "none") == "mxfp4"  # the catalog entry carries the checkpoint's quantization_config
    counts = count_params(spec)
    linear = sum(m.in_features * m.out_features * m.count for m in linear_modules(spec) if m.name != "lm_head")
    w = vllm.weights_per_rank(spec, total_params=counts.total, expert_params=counts.experts, linear_params=linear,
                              tp=4, dtype_bytes=2, quant="mxfp4", gpu_name="a100-80gb")
    # Experts: 36 layers × 128 × (2·768 + 768) × 3072 weights (720 → 768, 2880 → 3072 for Marlin) × 17/32 bytes
    # = 16.14 GiB; the rest (attention, embeddings, head) in bf16, split 4 ways ≈ 1.0 GiB.
    assert 36 * 128 * 3 * 768 * 3072 * 17 // 32 / GIB == pytest.approx(16.14, abs=0.01)
    assert w / GIB == pytest.approx(17.2, rel=0.01)
    bf16 = vllm.weights_per_rank(spec, total_params=counts.total, expert_params=counts.experts, linear_params=linear,
                                 tp=4, dtype_bytes=2, quant="none", gpu_name="a100-80gb")
    assert bf16 / GIB == pytest.approx(54.4, abs=0.1)  # what modelmem said before: the experts in bf16


def test_engine_versions():
    assert vllm.engine_for("0.6.5").engine == "V0"
    assert vllm.engine_for("0.10.1").engine == "V1"
    with pytest.raises(InvalidJobError, match="runtime_version"):
        vllm.engine_for("latest")


def test_vllm_has_no_int8_kv():
    spec = resolve_model("meta-llama/Llama-3.1-8B")
    with pytest.raises(InvalidJobError, match="kv_dtype"):
        vllm.capacity(spec, weights=GIB, gpu_memory_bytes=84944093184, settings=_settings(kv_dtype="int8"))


@pytest.mark.parametrize("util", [0.5, 0.7, 0.9, 0.95])
def test_more_utilization_never_means_fewer_blocks(util):
    spec = resolve_model("meta-llama/Llama-3.1-8B")
    lo = vllm.capacity(spec, weights=16 * GIB, gpu_memory_bytes=84944093184, settings=_settings(gpu_memory_utilization=util))
    hi = vllm.capacity(spec, weights=16 * GIB, gpu_memory_bytes=84944093184,
                       settings=dataclasses.replace(lo.settings, gpu_memory_utilization=min(1.0, util + 0.04)))
    assert hi.blocks >= lo.blocks


def test_longest_max_model_len_for_a_job():
    from modelmem.catalog.gpus import resolve_gpu
    from modelmem.job import make_job

    spec = resolve_model("Qwen/Qwen2.5-72B-Instruct")
    job = make_job(runtime="vllm", num_gpus=2, strategy="tp", max_num_seqs=256)
    gpu = resolve_gpu(job.gpu)
    longest = vllm.max_model_len_for_job(spec, job, 2, gpu, count_params(spec), linear_modules(spec))
    # The same number vLLM's error names ("the estimated maximum model length is 14288", README).
    assert longest == 14288
    m = vllm.memory_for_job(spec, make_job(runtime="vllm", num_gpus=2, strategy="tp", max_num_seqs=256,
                                           max_model_len=longest), 2, gpu, count_params(spec), linear_modules(spec))
    assert m.fits
