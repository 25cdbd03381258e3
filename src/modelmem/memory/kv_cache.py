"""KV cache: per layer, keys and values for every cached token (GQA, MLA, sliding windows, kv_dtype)."""

from __future__ import annotations

from modelmem.dtypes import KV_BYTES
from modelmem.job import Job
from modelmem.runtimes.profiles import profile_for
from modelmem.spec import ModelSpec


def kv_elements_per_token(spec: ModelSpec, job: Job, layer_kind: str) -> int:
    """Elements one layer caches per token."""
    if spec.mla is not None:
        m = spec.mla
        if profile_for(job).caches_mla_latent:
            # vLLM caches MLA's compressed latent plus the shared rope key (DeepSeek-V2 §2.1.2, "cache c_KV and k_R").
            return m.kv_lora_rank + m.qk_rope_head_dim
        # transformers' DeepseekV2/V3 attention caches the decompressed per-head keys and values.
        return spec.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
    return 2 * spec.num_kv_heads * spec.head_dim


def kv_cache_bytes(spec: ModelSpec, job: Job, tokens: int, batch: int) -> int:
    """Bytes of the cache holding `tokens` per sequence; sliding layers keep at most their window."""
    per = KV_BYTES[job.kv_dtype]
    total = 0.0
    for kind in spec.layer_kinds:
        held = min(tokens, spec.sliding_window) if kind == "sliding" and spec.sliding_window else tokens
        total += kv_elements_per_token(spec, job, kind) * held
    if job.kv_dtype in ("int8", "int4"):
        # Quantized caches keep a bf16 scale and zero point per group of 64 (transformers QuantizedCache, HQQ/quanto).
        total *= 1 + 4 / 64 / per  # 4 bytes: the two bf16 numbers per group
    return int(total * per * batch)


def kv_pool_bytes(gpu_bytes: int, job: Job, weights: int, transient: int, context: int) -> int:
    """vLLM pre-allocates every byte up to gpu_memory_utilization for KV blocks after the weights, a profile run's
    activations and the CUDA context (vllm/worker/worker.py determine_num_available_blocks)."""
    return max(0, int(gpu_bytes * job.gpu_memory_utilization) - weights - transient - context)
