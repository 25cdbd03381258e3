"""vLLM serving as its startup log reports it, per tensor-parallel rank.

    Model loading took W GiB                      weights as loaded (quantized checkpoints as stored)
    … PyTorch activation peak memory A GiB        the profile run: max_num_batched_tokens through the model,
                                                  then the dummy sampler over max_num_seqs × vocabulary
    … non_torch_memory N GiB                      cuBLAS workspaces, NCCL and custom all-reduce buffers
    Available KV cache memory: K GiB              K = total × gpu_memory_utilization − W − A − N
    GPU KV cache size: T tokens                   blocks of block_size tokens in every layer
    Maximum concurrency for L tokens per request: C x
    Graph capturing finished …, took G GiB        CUDA graphs, captured after the KV cache is allocated

Modelled version: vLLM 0.10 (V1 engine, `vllm serve`); 0.6 (V0 engine) is kept for jobs that name it. Read from
vllm-project/vllm: vllm/v1/worker/gpu_worker.py `determine_available_memory`, vllm/utils `memory_profiling`
(the baseline is taken after the CUDA context exists, so the context lies outside the budget),
vllm/v1/core/kv_cache_utils.py (`get_num_blocks`, `check_enough_kv_cache_memory`, `estimate_max_model_len`,
`get_max_concurrency_for_kv_cache_config`), vllm/v1/kv_cache_interface.py (page sizes),
vllm/engine/arg_utils.py (`_set_default_args_v1`: batch defaults by device), vllm/v1/sample/ops/topk_topp_sampler.py
and vllm/model_executor/layers/sampler.py (the sampler tensors the profile run allocates),
vllm/model_executor/layers/quantization/mxfp4.py (MXFP4 expert padding per kernel backend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

from modelmem.dtypes import DTYPE_BYTES
from modelmem.errors import InvalidJobError
from modelmem.result import PerGPU, Serving
from modelmem.runtimes.profiles import profile_for
from modelmem.spec import ModelSpec
from modelmem.units import BYTES_IN_GIB

if TYPE_CHECKING:
    from modelmem.counts import LinearModule, ParamCounts
    from modelmem.job import Job
    from modelmem.result import GPUInfo

__all__ = [
    "ENGINES", "VLLMEngine", "VLLMSettings", "VLLMMemory", "engine_for", "default_batch_limits",
    "default_max_model_len", "kv_heads_per_rank", "page_bytes", "max_memory_usage_bytes", "num_blocks",
    "kv_cache_tokens", "max_concurrency", "estimate_max_model_len", "not_enough_kv_message", "activation_peak",
    "mxfp4_expert_bytes", "capacity", "KV_DTYPE_BYTES", "STORED_QUANTS", "quant_method", "weights_per_rank",
    "settings_for", "per_gpu", "memory_for_job", "max_model_len_for_job",
]

# vLLM's --kv-cache-dtype: auto (the model dtype), fp8 (e4m3/e5m2). It has no int8/int4 KV cache.
KV_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}


@dataclass(frozen=True)
class VLLMEngine:
    """The version-dependent parts of vLLM's memory accounting."""

    version: str
    engine: str  # "V1" | "V0"
    chunked_prefill: bool  # V1 always schedules chunked prefill; V0 only for long contexts
    non_torch_bytes: int  # the profile's non-torch increase on one rank
    non_torch_tp_bytes: int  # added when tensor parallel (NCCL / custom all-reduce buffers counted by the profiler)
    sampler_bytes_per_logit: int  # the dummy sampler's tensors per (sequence, vocabulary entry)
    cuda_graph_bytes: int  # graph pool captured after the KV cache (outside gpu_memory_utilization)
    sources: tuple[str, ...]


ENGINES: dict[str, VLLMEngine] = {
    "0.10": VLLMEngine(
        version="0.10", engine="V1", chunked_prefill=True,
        # PR #12126 log (Llama-3.2-11B, 1×H100): "non_torch_memory takes 0.16GiB"; PR #14447 log (TP on 24 GiB GPUs):
        # "non_torch_memory takes 0.20GiB" on every rank: the V1 profiler's baseline already holds NCCL's buffers.
        non_torch_bytes=int(0.2 * BYTES_IN_GIB), non_torch_tp_bytes=0,
        # topk_topp_sampler.apply_top_k_top_p over [max_num_seqs, vocab]: bf16 logits (2) → fp32 (4), sort values
        # (4) + int64 indices (8), softmax probs (4; cumsum in place), top-p mask (1), scatter back (4) = 27 bytes.
        sampler_bytes_per_logit=27,
        # V1 captures piecewise CUDA graphs after allocating the KV cache ("Graph capturing finished in 5 secs,
        # took 0.53 GiB" is typical for 8B models on H100); it is not subtracted from the KV budget.
        cuda_graph_bytes=int(0.5 * BYTES_IN_GIB),
        sources=("vllm/v1/worker/gpu_worker.py determine_available_memory (v0.10)",
                 "vllm/v1/core/kv_cache_utils.py", "vllm/engine/arg_utils.py _set_default_args_v1",
                 "vllm/v1/sample/ops/topk_topp_sampler.py", "vllm PRs #12126, #14447 (profiling logs)"),
    ),
    "0.6": VLLMEngine(
        version="0.6", engine="V0", chunked_prefill=False,
        # PR #10511 logs (Meta-Llama-3-8B on H100): "non_torch_memory 1.79GiB" at TP 1 and "3.58GiB" at TP 2.
        non_torch_bytes=int(1.79 * BYTES_IN_GIB), non_torch_tp_bytes=int(1.79 * BYTES_IN_GIB),
        # model_executor/layers/sampler.py _apply_top_k_top_p: fp32 logits (4), sort values (4) + int64 indices
        # (8), softmax (4), cumsum (4), top-p mask (1), inverse int64 index (8), gathered logits (4) = 37 bytes.
        sampler_bytes_per_logit=37,
        cuda_graph_bytes=int(0.5 * BYTES_IN_GIB),
        sources=("vllm/worker/worker.py determine_num_available_blocks (v0.6.5)",
                 "vllm/model_executor/layers/sampler.py", "vllm PR #10511 (profiling logs)"),
    ),
}
DEFAULT_ENGINE = "0.10"


def engine_for(version: str | None) -> VLLMEngine:
    """The engine record for a vLLM version ("0.10.1" → 0.10; anything below 0.8 ran the V0 engine by default)."""
    if version is None:
        return ENGINES[DEFAULT_ENGINE]
    parts = version.lstrip("v").split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise InvalidJobError("runtime_version", version, "a vLLM version such as 0.10.1 or 0.6.5") from None
    return ENGINES["0.6"] if (major, minor) < (0, 8) else ENGINES["0.10"]


@dataclass(frozen=True)
class VLLMSettings:
    """Engine arguments, resolved as vLLM resolves them."""

    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    caches_mla_latent: bool  # the runtime profile's flag: MLA models cache the latent, not per-head K and V
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_dtype: str = "bf16"
    tensor_parallel: int = 1


def default_batch_limits(engine: VLLMEngine, gpu_memory_bytes: int, gpu_name: str, max_model_len: int) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that `vllm serve` picks when none is given."""
    if engine.engine == "V1":
        # arg_utils._set_default_args_v1, OPENAI_API_SERVER context: ≥ 70 GiB and not an A100 → 8192 and 1024.
        if gpu_memory_bytes >= 70 * BYTES_IN_GIB and "a100" not in gpu_name.lower():
            return 8192, 1024
        return 2048, 256
    # V0 SchedulerConfig without chunked prefill: max(max_model_len, 2048) tokens; chunked prefill (on by default
    # for contexts ≥ 32K in the API server) schedules 2048 per step.
    if max_model_len >= 32768:
        return 2048, 256
    return max(max_model_len, 2048), 256


def default_max_model_len(spec: ModelSpec) -> int:
    """The model's own limit (config max_position_embeddings), as vLLM's _get_and_verify_max_len derives it."""
    return spec.max_position_embeddings or 2048


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    """vLLM ModelConfig.get_num_kv_heads: heads split over ranks; with more ranks than heads, one replicated head."""
    return max(1, num_kv_heads // tp)


def page_bytes(spec: ModelSpec, settings: VLLMSettings) -> int:
    """Bytes of one block of one layer on one rank (kv_cache_interface.py page_size_bytes)."""
    per = KV_DTYPE_BYTES[settings.kv_dtype]
    if spec.mla is not None and settings.caches_mla_latent:
        # MLAAttentionSpec: the compressed latent plus the shared rope key, one copy on every rank (DeepSeek-V2 §2.1.2).
        return settings.block_size * (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * per
    if spec.mla is not None:
        # Without the latent (VLLM_MLA_DISABLE): models/deepseek_v2.py DeepseekV2Attention caches per-head K and V of
        # head size qk_nope + qk_rope, V zero-padded to it.
        heads = kv_heads_per_rank(spec.num_heads, settings.tensor_parallel)
        return 2 * settings.block_size * heads * (spec.mla.qk_nope_head_dim + spec.mla.qk_rope_head_dim) * per
    # FullAttentionSpec: K and V for the rank's KV heads.
    return 2 * settings.block_size * kv_heads_per_rank(spec.num_kv_heads, settings.tensor_parallel) * spec.head_dim * per


def _layer_counts(spec: ModelSpec) -> tuple[int, int]:
    kinds = spec.layer_kinds
    sliding = sum(1 for k in kinds if k == "sliding") if spec.sliding_window else 0
    return len(kinds) - sliding, sliding


def _blocks_per_request(spec: ModelSpec, settings: VLLMSettings, max_model_len: int, kind: str) -> int:
    bs = settings.block_size
    if kind == "sliding" and spec.sliding_window:
        # SlidingWindowSpec.max_memory_usage_bytes: the window plus one scheduled chunk, one extra block.
        tokens = min(spec.sliding_window - 1 + settings.max_num_batched_tokens, max_model_len)
        return math.ceil(tokens / bs) + 1
    return math.ceil(max_model_len / bs)  # FullAttentionSpec: cdiv(max_model_len, block_size) blocks


def max_memory_usage_bytes(spec: ModelSpec, settings: VLLMSettings, max_model_len: int | None = None) -> int:
    """KV bytes one request of max_model_len tokens needs on one rank, summed over layers."""
    length = settings.max_model_len if max_model_len is None else max_model_len
    full, sliding = _layer_counts(spec)
    page = page_bytes(spec, settings)
    return page * (full * _blocks_per_request(spec, settings, length, "full")
                   + sliding * _blocks_per_request(spec, settings, length, "sliding"))


def _groups(spec: ModelSpec) -> tuple[int, int]:
    """(layers per KV-cache group, number of groups): the hybrid allocator groups layers of one kind into groups of
    the smaller kind's count, and every group shares the same block pool (kv_cache_utils
    _get_kv_cache_config_uniform_page_size)."""
    full, sliding = _layer_counts(spec)
    if not sliding or not full:
        return full + sliding, 1
    size = min(full, sliding)
    return size, math.ceil(full / size) + math.ceil(sliding / size)


def num_blocks(spec: ModelSpec, settings: VLLMSettings, available: int) -> int:
    """kv_cache_utils.get_num_blocks: available // page_size // layers per tensor, never negative."""
    per_group, _ = _groups(spec)
    return max(0, available // page_bytes(spec, settings) // max(1, per_group))


def kv_cache_tokens(spec: ModelSpec, settings: VLLMSettings, blocks: int) -> int:
    """"GPU KV cache size: N tokens": blocks // number of groups × block_size."""
    _, groups = _groups(spec)
    return blocks // groups * settings.block_size


def max_concurrency(spec: ModelSpec, settings: VLLMSettings, blocks: int) -> float:
    """get_max_concurrency_for_kv_cache_config: blocks / blocks one max_model_len request takes in every group."""
    per_group, groups = _groups(spec)
    full, sliding = _layer_counts(spec)
    if groups == 1:
        kind = "sliding" if sliding else "full"
        per_request = _blocks_per_request(spec, settings, settings.max_model_len, kind)
    else:
        per_request = (math.ceil(full / per_group) * _blocks_per_request(spec, settings, settings.max_model_len, "full")
                       + math.ceil(sliding / per_group) * _blocks_per_request(spec, settings, settings.max_model_len, "sliding"))
    return blocks / max(1, per_request)


def estimate_max_model_len(spec: ModelSpec, settings: VLLMSettings, available: int) -> int:
    """kv_cache_utils.estimate_max_model_len: binary search for the longest request the memory holds (0: none)."""
    lo, hi, best = 1, settings.max_model_len, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if max_memory_usage_bytes(spec, settings, mid) <= available:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def not_enough_kv_message(spec: ModelSpec, settings: VLLMSettings, available: int) -> str | None:
    """check_enough_kv_cache_memory's ValueError, word for word, or None when one request fits."""
    if available <= 0:
        return "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
    needed = max_memory_usage_bytes(spec, settings)
    if needed <= available:
        return None
    estimated = estimate_max_model_len(spec, settings, available)
    estimated_msg = f"Based on the available memory, the estimated maximum model length is {estimated}." if estimated > 0 else ""
    return (f"To serve at least one request with the models's max seq len ({settings.max_model_len}), "
            f"({needed / BYTES_IN_GIB:.2f} GiB KV cache is needed, which is larger than the available KV cache memory "
            f"({available / BYTES_IN_GIB:.2f} GiB). {estimated_msg} Try increasing `gpu_memory_utilization` or "
            f"decreasing `max_model_len` when initializing the engine.")


def activation_peak(spec: ModelSpec, engine: VLLMEngine, settings: VLLMSettings, dtype_bytes: int) -> int:
    """The profile run's torch peak on one rank: the larger of the forward over max_num_batched_tokens tokens and
    the dummy sampler over max_num_seqs sequences (with the forward's final hidden states still alive).

    Forward, per layer at its widest moment (vllm/model_executor/layers/activation.py SiluAndMul, fused_moe):
    the fused gate_up output (2·i/tp), its activated half (i/tp), and the residual and hidden streams (2·h).
    Sampler: the all-gathered logits over the full vocabulary and the top-k/top-p tensors (VLLMEngine).
    """
    t, tp, h, c = settings.max_num_batched_tokens, settings.tensor_parallel, spec.hidden_size, dtype_bytes
    if spec.moe is not None:
        # fused_moe intermediate caches: (T, top-k, 2·ie/tp), (T·top-k, ie/tp), (T, top-k, h).
        k, ie = spec.moe.experts_per_token, spec.moe.expert_intermediate_size
        mlp = t * k * (3 * ie // tp + h) * c
    else:
        mlp = t * 3 * spec.intermediate_size // tp * c
    forward = mlp + 2 * t * h * c
    seqs = min(settings.max_num_seqs, t)
    sampler = seqs * spec.vocab_size * engine.sampler_bytes_per_logit + t * h * c
    return max(forward, sampler)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# GPUs without native FP4 tensor cores that vLLM 0.10 serves MXFP4 through the Marlin MoE kernel (Ampere, Ada).
_MARLIN_GPUS = ("a100", "a10", "a30", "a40", "a6000", "rtx-a", "rtx-3", "rtx-4", "rtx-6000-ada", "l4", "l40", "t4", "v100")


def mxfp4_expert_bytes(spec: ModelSpec, tp: int, gpu_name: str) -> int:
    """Routed-expert bytes on one rank of an MXFP4 checkpoint (gpt-oss): 4-bit E2M1 values plus one E8M0 scale per 32
    (4.25 bits), padded as vLLM's Mxfp4MoEMethod.create_weights pads for the kernel it picks: Marlin (no native FP4)
    rounds the per-rank intermediate size to 128 and the hidden size to 256; the Hopper/Blackwell kernels round the
    intermediate size to 64. Expert biases stay bf16."""
    moe = spec.moe
    if moe is None:
        return 0
    h, inter = spec.hidden_size, math.ceil(moe.expert_intermediate_size / tp)
    if any(gpu_name.lower().startswith(p) for p in _MARLIN_GPUS):
        inter, h = _round_up(inter, 128), _round_up(h, 256)
    else:
        inter = _round_up(inter, 64)
    gate = 2 if moe.gated_experts else 1
    weights = moe.num_experts * (gate * inter * h + h * inter)  # w13 [E, 2I, h] and w2 [E, h, I]
    biases = moe.num_experts * (gate * inter + h) * 2 if moe.expert_bias else 0
    layers = sum(1 for i in range(spec.num_layers) if moe.is_moe_layer(i))
    return layers * (weights * 17 // 32 + biases)  # 17 bytes per 32 weights: 16 of E2M1 codes + 1 E8M0 scale


@dataclass(frozen=True)
class VLLMMemory:
    """One rank's memory as vLLM's startup log reports it."""

    engine: VLLMEngine
    settings: VLLMSettings
    gpu_memory_bytes: int
    weights: int
    activation_peak: int
    non_torch: int
    cuda_graphs: int
    blocks: int
    block_bytes: int  # one block in every layer of a KV-cache group (the tensors the pool spans)
    kv_tokens: int
    max_concurrency: float
    reason: str | None  # vLLM's own error when it refuses to start

    @property
    def requested(self) -> int:
        """total_gpu_memory × gpu_memory_utilization: what the instance may use."""
        return int(self.gpu_memory_bytes * self.settings.gpu_memory_utilization)

    @property
    def available_kv(self) -> int:
        """Available KV cache memory (negative when the rest already exceeds the share)."""
        return self.requested - self.weights - self.activation_peak - self.non_torch

    @property
    def kv_cache(self) -> int:
        """Bytes of the KV-cache tensors vLLM allocates: whole blocks in every layer."""
        return self.blocks * self.block_bytes

    @property
    def fits(self) -> bool:
        return self.reason is None

    @property
    def concurrent_requests(self) -> int:
        """Requests of max_model_len tokens served at once: the KV capacity, bounded by max_num_seqs."""
        return min(self.settings.max_num_seqs, int(self.max_concurrency))


def capacity(
    spec: ModelSpec, *, weights: int, gpu_memory_bytes: int, settings: VLLMSettings, dtype_bytes: int = 2,
    engine: VLLMEngine | None = None,
) -> VLLMMemory:
    """One rank's budget, KV blocks, tokens and concurrency for `weights` bytes loaded on that rank."""
    engine = engine or ENGINES[DEFAULT_ENGINE]
    if settings.kv_dtype not in KV_DTYPE_BYTES:
        raise InvalidJobError("kv_dtype", settings.kv_dtype, "bf16, fp16, fp32 or fp8 for runtime vllm")
    peak = activation_peak(spec, engine, settings, dtype_bytes)
    non_torch = engine.non_torch_bytes + (engine.non_torch_tp_bytes if settings.tensor_parallel > 1 else 0)
    requested = int(gpu_memory_bytes * settings.gpu_memory_utilization)
    available = requested - weights - peak - non_torch
    reason = not_enough_kv_message(spec, settings, available)
    blocks = num_blocks(spec, settings, available) if available > 0 else 0
    per_group, _ = _groups(spec)
    return VLLMMemory(
        engine=engine, settings=settings, gpu_memory_bytes=gpu_memory_bytes, weights=weights, activation_peak=peak,
        non_torch=non_torch, cuda_graphs=engine.cuda_graph_bytes, blocks=blocks,
        block_bytes=page_bytes(spec, settings) * per_group, kv_tokens=kv_cache_tokens(spec, settings, blocks), max_concurrency=max_concurrency(spec, settings, blocks),
        reason=reason,
    )


# Checkpoint quantization methods vLLM loads as stored (quantization_config.quant_method), and --quantization values.
STORED_QUANTS = ("mxfp4", "fp8", "awq", "gptq", "compressed-tensors")


def quant_method(spec: ModelSpec, job_quant: str) -> str:
    """The format the weights are held in: the checkpoint's own quantization_config, else the job's --quant."""
    method = str((spec.quantization or {}).get("quant_method", "")).lower()
    if method in STORED_QUANTS:
        return method
    return job_quant


def weights_per_rank(spec: ModelSpec, *, total_params: int, expert_params: int, linear_params: int, tp: int,
                     dtype_bytes: int, quant: str, gpu_name: str, group_size: int = 128) -> int:
    """"Model loading took X GiB": the bytes one tensor-parallel rank holds. Column/row-parallel linears, the
    vocabulary-parallel embedding and head split over the ranks (Megatron §3; vllm/model_executor/layers/linear.py);
    norms and routers are a rounding error and are split too. Quantized checkpoints are sized as stored:
      mxfp4 — routed experts in MXFP4 (mxfp4_expert_bytes), everything else in dtype (gpt-oss);
      fp8   — every linear but the head in 1 byte (per-tensor scales), the rest in dtype;
      awq / gptq / compressed-tensors (w4a16) — 4-bit linears with an fp16 scale and packed zero per group.
    `linear_params` counts the quantizable linears (no head), experts included."""
    if quant == "mxfp4":
        experts = mxfp4_expert_bytes(spec, tp, gpu_name)
        return experts + (total_params - expert_params) * dtype_bytes // tp
    if quant == "fp8":
        return (linear_params + (total_params - linear_params) * dtype_bytes) // tp
    if quant in ("awq", "gptq", "compressed-tensors", "int4"):
        packed = linear_params * (0.5 + 2.5 / group_size)  # int32-packed 4-bit + fp16 scale + packed zero per group
        return int(packed + (total_params - linear_params) * dtype_bytes) // tp
    return total_params * dtype_bytes // tp


def settings_for(spec: ModelSpec, job: Job, tp: int, gpu: GPUInfo, engine: VLLMEngine) -> VLLMSettings:
    """The job's vLLM engine arguments, each left out resolved as vLLM resolves it."""
    if job.strategy not in ("none", "tp"):
        raise InvalidJobError("strategy", job.strategy, "tp or none for runtime vllm (its pipeline parallel is not modelled)")
    limit = default_max_model_len(spec)
    max_model_len = job.max_model_len or limit
    if max_model_len > limit:
        # ModelConfig._get_and_verify_max_len refuses a length above the model's own (without an override flag).
        raise InvalidJobError("max_model_len", max_model_len, f"at most {limit} (the model's max_position_embeddings)")
    tokens, seqs = default_batch_limits(engine, gpu.memory_bytes, gpu.name, max_model_len)
    return VLLMSettings(
        max_model_len=max_model_len, max_num_seqs=job.max_num_seqs or seqs,
        max_num_batched_tokens=job.max_num_batched_tokens or tokens, block_size=job.block_size,
        caches_mla_latent=profile_for(job).caches_mla_latent,
        gpu_memory_utilization=job.gpu_memory_utilization, kv_dtype=job.kv_dtype, tensor_parallel=tp,
    )


def memory_for_job(spec: ModelSpec, job: Job, n: int, gpu: GPUInfo, counts: ParamCounts,
                   linears: tuple[LinearModule, ...]) -> VLLMMemory:
    """One rank of a vLLM server for a job: weights as loaded, the profile peak, the KV blocks and capacity."""
    engine = engine_for(job.runtime_version)
    tp = n if job.strategy == "tp" else 1
    settings = settings_for(spec, job, tp, gpu, engine)
    quant = quant_method(spec, job.quant)
    linear = sum(m.in_features * m.out_features * m.count for m in linears if m.name != "lm_head")
    weights = weights_per_rank(spec, total_params=counts.total, expert_params=counts.experts, linear_params=linear,
                               tp=tp, dtype_bytes=DTYPE_BYTES[job.dtype], quant=quant, gpu_name=gpu.name,
                               group_size=job.quant_group_size)
    return capacity(spec, weights=weights, gpu_memory_bytes=gpu.memory_bytes, settings=settings,
                    dtype_bytes=DTYPE_BYTES[job.dtype], engine=engine)


def max_model_len_for_job(spec: ModelSpec, job: Job, n: int, gpu: GPUInfo, counts: ParamCounts,
                          linears: tuple[LinearModule, ...]) -> int:
    """The longest --max-model-len vLLM starts with for this job (0: none), up to the model's own limit: the
    estimate_max_model_len search over the KV memory left at that limit."""
    import dataclasses

    job = dataclasses.replace(job, max_model_len=None)
    mem = memory_for_job(spec, job, n, gpu, counts, linears)
    return estimate_max_model_len(spec, mem.settings, mem.available_kv) if mem.available_kv > 0 else 0


def per_gpu(spec: ModelSpec, job: Job, n: int, gpu: GPUInfo, counts: ParamCounts,
            linears: tuple[LinearModule, ...]) -> PerGPU:
    """One rank of a vLLM server: the components its startup log names, and its capacity."""
    from modelmem.memory.overhead import CONTEXT_BYTES

    mem = memory_for_job(spec, job, n, gpu, counts, linears)
    engine, settings, weights = mem.engine, mem.settings, mem.weights
    quant = quant_method(spec, job.quant)
    gib = BYTES_IN_GIB
    notes = [
        f"vLLM {engine.version} ({engine.engine} engine) per rank: model loading {weights / gib:.2f} GiB; profile run "
        f"({settings.max_num_batched_tokens} batched tokens, {settings.max_num_seqs} sequences) peak "
        f"{mem.activation_peak / gib:.2f} GiB; non-torch {mem.non_torch / gib:.2f} GiB; available KV cache memory "
        f"{mem.available_kv / gib:.2f} GiB of {settings.gpu_memory_utilization:g} × {gpu.memory_bytes / gib:.2f} GiB",
        f"{mem.concurrent_requests} requests of {settings.max_model_len:,} tokens run at once (bounded by the KV cache, "
        f"{mem.max_concurrency:.2f}x, and max_num_seqs {settings.max_num_seqs}); blocks of {settings.block_size} tokens",
        f"CUDA graphs ({mem.cuda_graphs / gib:.2f} GiB) are captured after the KV cache, outside gpu_memory_utilization",
    ]
    if quant != job.quant and quant != "none":
        notes.append(f"weights sized as stored: the checkpoint is {quant}-quantized (quantization_config)")
    if mem.reason is not None:
        notes.append(f"vLLM refuses to start: {mem.reason}")
    serving = Serving(kv_cache_tokens=mem.kv_tokens, kv_cache_blocks=mem.blocks, max_concurrency=mem.max_concurrency,
                      max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs, refusal=mem.reason)
    components = {"weights": weights, "activations": mem.activation_peak, "kv_cache": mem.kv_cache,
                  "cuda_graphs": mem.cuda_graphs}
    # vLLM empties the cache after profiling and allocates the KV pool as one tensor: no allocator slack modelled.
    return PerGPU(components=components, allocator_overhead=0,
                  cuda_context=CONTEXT_BYTES[gpu.platform] + mem.non_torch, notes=tuple(notes), serving=serving,
                  refusal=mem.reason)
