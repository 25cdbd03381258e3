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
        # transformers 4.x's DeepseekV2/V3 attention cached the decompressed per-head keys and values.
        return spec.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
    if spec.caches_expanded_kv and profile_for(job).runs_transformers_models:
        return 2 * spec.num_heads * spec.head_dim  # transformers' Falcon caches K/V already expanded to every head
    return 2 * spec.num_kv_heads * spec.head_dim


def kv_cache_bytes(spec: ModelSpec, job: Job, tokens: int, batch: int, after_prefill: bool = False) -> int:
    """Bytes of the cache holding `tokens` per sequence; sliding layers keep at most their window (except right
    after a prefill, in runtimes whose window is a view of the prompt's K/V)."""
    per = KV_BYTES[job.kv_dtype]
    total = 0.0
    windowed = not (after_prefill and profile_for(job).sliding_cache_keeps_prompt)
    for n, kind in enumerate(spec.layer_kinds):
        if n in spec.image_only_layers:
            continue  # text only: Mllama's cross-attention layers are skipped and cache nothing
        held = min(tokens, spec.sliding_window) if kind == "sliding" and spec.sliding_window and windowed else tokens
        total += kv_elements_per_token(spec, job, kind) * held
    if job.kv_dtype in ("int8", "int4"):
        # Quantized caches keep a bf16 scale and zero point per group of 64 (transformers QuantizedCache, HQQ/quanto).
        total *= 1 + 4 / 64 / per  # 4 bytes: the two bf16 numbers per group
    return int(total * per * batch)

