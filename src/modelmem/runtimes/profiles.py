"""What each runtime does differently, as data: one frozen record per runtime (and version where habits differ).

Formulas in memory/ and plan.py read these flags; nothing outside this package compares runtime names. Each record
names the versions and the source files its habits were read from. To add a runtime, or a version whose habits
differ, add a record to PROFILES; `profile_for(job)` picks it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from modelmem.errors import InvalidJobError

if TYPE_CHECKING:
    from modelmem.job import Job

__all__ = ["RuntimeProfile", "PROFILES", "RUNTIMES", "profile_for", "lookup_profile", "training_runtimes"]


@dataclass(frozen=True, kw_only=True)
class RuntimeProfile:
    name: str  # the job's `runtime`
    version: str  # the version (of the package named in `package`) these habits were read from; a job names it
    package: str  # what `version` is a version of
    sources: tuple[str, ...]  # files and issues the flags below were read from
    default: bool = True  # the record a job gets when it names no runtime_version
    # --- training
    trains: bool = True  # the runtime has a training path modelmem models
    default_precision: str = "pure"  # "mixed": fp32 masters under autocast (HF Trainer); "pure": weights in dtype
    precisions: tuple[str, ...] = ("pure", "mixed")  # the precisions its training recipes offer
    fused_adamw: bool = False  # AdamW(fused=True): no foreach temporary at the step
    lora_dropout: float = 0.0  # the recipe's default LoRA dropout (p > 0 saves an output and a mask per adapter)
    lora_fused_qkv: bool = False  # one adapted q/k/v linear (one dropout on its input) instead of one per module
    # Flags without a default: each record states them, so none holds a value no source chose.
    lora_casts_adapter_input: bool  # PEFT: fp32 adapters cast their input, so each keeps its own copy
    falls_back_to_eager: bool  # models without an SDPA path in its modeling code (spec.has_sdpa) run eager attention
    adafactor: str  # the Adafactor its optimizer name builds: "transformers", "torch" (torch.optim), "" (no training)
    gpu_layer_split: bool  # --n-gpu-layers: only the last N blocks (and the output layer) live on the GPU
    # MLA caches the compressed latent plus the rope key (True), per-head K and V (False), or the runtime has no
    # multi-head latent attention at all (None: an MLA model is refused)
    caches_mla_latent: bool | None
    runs_transformers_models: bool  # the model is transformers' modeling code (its cache and attention layout)
    sliding_cache_keeps_prompt: bool  # after prefill a sliding layer's window is a view of the whole prompt
    fp32_logits: bool = False  # the model returns `logits.float()`, which the loss step keeps
    loss_in_compute_dtype: bool = False  # cross-entropy on low-precision logits, no fp32 upcast
    fp32_rmsnorm: bool = False  # RMSNorm stays in fp32 through the weight multiply for every model
    compiles_blocks_only: bool = False  # `compile` wraps each decoder block; the final norm and output layer run eager
    expands_kv_heads: bool = False  # K and V are expanded to every query head before attention (GQA without enable_gqa)
    rope_cache_buffer: bool = False  # a rotary cos/sin table for the longest sequence sits beside the weights (fp32)
    applies_config_dropout: bool = False  # the modeling code honours the config's dropout probabilities
    python_tanh_gelu: bool = False  # the tanh GELU is written out in Python (more saved intermediates)
    fsdp_lora_unsharded_block_grads: bool = False  # FSDP1 flat params: frozen block weights get grads under no_sync
    bitsandbytes: str = ""  # the bitsandbytes version its 4-bit path runs on ("" when it does not use it)
    keeps_previous_step_graph: bool = False  # the loop keeps the last step's output bound into the next step
    dequantizes_4bit_via_fp16: bool = False  # 4-bit weights were quantized from fp16: dequant to fp16, then cast
    # --- weights
    unties_head: bool = False  # a tied embedding gets its own lm_head copy
    quantizes_lm_head: bool = False  # its quantizer converts every nn.Linear, the output layer included
    experts_unquantized: tuple[str, ...] = ()  # quant formats whose quantizer leaves the routed experts in dtype
    # --- inference
    preallocates_kv: bool = False  # the cache is allocated for the full length before the prompt runs
    prefill_logits_all_positions: bool = False  # prefill projects every prompt position, not only the last
    kv_block_pool: bool = False  # after weights and a profile run, all memory up to a utilization goes to KV blocks
    kv_dtypes: tuple[str, ...] = ()  # the KV-cache types it offers (empty: any job kv_dtype)
    default_kv_dtype: str = ""  # its default cache type ("": the compute dtype)
    ollama_defaults: bool = False  # context, slots, KV type and flash attention come from Ollama's settings
    # --- devices
    platforms: tuple[str, ...] = ("cuda", "rocm", "metal", "hpu")  # GPUInfo.platform values it has a GPU backend for
    platform_note: str = ""  # one line on where it runs, for the refusal elsewhere

    def __post_init__(self) -> None:
        # A runtime without a training path has no training habits: a record that says otherwise is a typo.
        if not self.trains and (self.lora_casts_adapter_input or self.adafactor):
            raise ValueError(f"runtime profile {self.name} {self.version}: training habits on a runtime that does not train")
        if self.trains and self.adafactor not in ("transformers", "torch"):
            raise ValueError(f"runtime profile {self.name} {self.version}: adafactor {self.adafactor!r} is not "
                             "'transformers' or 'torch'")

    @property
    def saves_4bit_inputs(self) -> bool:
        """bitsandbytes < 0.43.2: MatMul4Bit keeps its input in ctx.tensors whenever it needs a grad, for every
        quantized linear, and backward never frees it (bitsandbytes PR #1270 removed it)."""
        return bool(self.bitsandbytes) and _version_tuple(self.bitsandbytes) < (0, 43, 2)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# Where the serving engines run (one record per version, the same devices): vLLM's backends per docs.vllm.ai
# getting_started/installation (GPU: CUDA, ROCm; Gaudi; TPU; CPU); llama.cpp's per its README "Supported backends"
# (Metal, CUDA, HIP, Vulkan, SYCL…), which Ollama runs as its server.
_VLLM_DEVICES: dict[str, Any] = dict(
    platforms=("cuda", "rocm", "hpu"),
    platform_note="vLLM's GPU backends are CUDA, ROCm, TPU and Gaudi; on a Mac it runs only on the CPU (use runtime llamacpp)",
)
_LLAMACPP_DEVICES: dict[str, Any] = dict(platforms=("cuda", "rocm", "metal"), platform_note="llama.cpp has no Gaudi backend")

# The serving engines' habits, stated once per engine (Ollama runs llama.cpp's server). Neither trains, so neither
# has training habits (RuntimeProfile.__post_init__ holds them to that). vLLM's attention backends (FlashAttention,
# FlashInfer) run every model it serves, soft-capping included, and it keeps every layer on the GPU; llama.cpp builds
# attention in its own ggml graph and places the last --n-gpu-layers blocks on the GPU (llama-model.cpp load_tensors).
_VLLM_HABITS: dict[str, Any] = dict(lora_casts_adapter_input=False, falls_back_to_eager=False, adafactor="",
                                    gpu_layer_split=False, runs_transformers_models=False,
                                    sliding_cache_keeps_prompt=False)
_LLAMACPP_HABITS: dict[str, Any] = dict(lora_casts_adapter_input=False, falls_back_to_eager=False, adafactor="",
                                        gpu_layer_split=True, caches_mla_latent=False, runs_transformers_models=False,
                                        sliding_cache_keeps_prompt=False)

_HF = RuntimeProfile(
    name="hf", version="5.24", package="transformers (with peft 0.21, accelerate, torch 2.9)",
    sources=("transformers/trainer.py (autocast, fp32 masters)", "transformers/activations.py NewGELUActivation",
             "transformers/models/gemma2/modeling_gemma2.py (_supports_sdpa = False)",
             "peft/tuners/lora/layer.py LoraLayer._cast_input_dtype",
             "transformers/trainer_optimizer.py _get_adafactor (optimization.Adafactor, beta1 None)",
             "benchmarks/results/trace_grid.jsonl (fake-tensor traces of transformers 5.24)"),
    default_precision="mixed", lora_casts_adapter_input=True, applies_config_dropout=True,
    python_tanh_gelu=True, falls_back_to_eager=True, adafactor="transformers", gpu_layer_split=False,
    bitsandbytes="0.48", runs_transformers_models=True,
    # cache_utils.py DynamicSlidingWindowLayer.update: `self.keys = full_key_states[:, :, -window + 1:]` is a
    # view, so the prompt's full K/V storage stays alive until the first decode step (traced: Gemma 3 prefill)
    sliding_cache_keeps_prompt=True,
    # models/deepseek_v2|v3 modeling: `cache.update(k_nope, k_pe)` "while the latent KV is still compressed"
    # (kv_lora_rank + qk_rope_head_dim per token; traced: DeepSeek-V2-Lite prefill 576 elements per layer)
    caches_mla_latent=True,
    # transformers 5 stores routed experts as fused 3-D Parameters, which the nn.Linear replacements skip
    # (integrations/bitsandbytes.py replace_with_bnb_linear, awq.py replace_with_awq_linear; bitsandbytes
    # #1849 open; our trace shows 85.9 GiB for Mixtral-8x7B QLoRA): they stay in dtype. Only fine-grained
    # fp8 (integrations/finegrained_fp8.py FP8Experts) and mxfp4 (mxfp4.py Mxfp4GptOssExperts) replace
    # the `.experts` module itself.
    experts_unquantized=("int8", "int8-wo", "nf4", "fp4", "nf4-dq", "int4", "awq", "gptq"),
)

_LITGPT = RuntimeProfile(
    name="litgpt", version="0.4", package="litgpt (bitsandbytes 0.42.0 pinned, lightning 2.3)",
    sources=("litgpt 0.4.5 finetune/lora.py (lora_dropout 0.05, FSDP auto-wrap of Block, no_backward_sync)",
             "litgpt/model.py RMSNorm (fp32 through the weight multiply); litgpt/lora.py LoRAQKVLinear",
             "litgpt/scripts/convert_hf_checkpoint.py (lm_head copied from the embedding)",
             "lightning/fabric/plugins/precision/bitsandbytes.py (every nn.Linear, quantized from fp16)",
             "bitsandbytes 0.42 autograd/_functions.py MatMul4Bit; pytorch/pytorch#91167; Lightning-AI/litgpt#676",
             "litgpt/generate/base.py (KV cache sized for max_returned_tokens; logits for every prompt position)",
             "litgpt/lora.py LoRALinear.forward (no input cast); litgpt/model.py CausalSelfAttention."
             "scaled_dot_product_attention (\"with softcapping we cannot use SDPA\")",
             "litgpt/utils.py instantiate_torch_optimizer (torch.optim by name: torch.optim.Adafactor)"),
    lora_dropout=0.05, lora_fused_qkv=True, loss_in_compute_dtype=True, fp32_rmsnorm=True,
    fsdp_lora_unsharded_block_grads=True, bitsandbytes="0.42.0", keeps_previous_step_graph=True,
    dequantizes_4bit_via_fp16=True, unties_head=True, quantizes_lm_head=True, preallocates_kv=True,
    prefill_logits_all_positions=True,
    # litgpt/lora.py LoRAQKVLinear.forward: `F.linear(self.lora_dropout(x), self.lora_A)`, no input cast; autocast's
    # bf16 cast of the dropout output is the one input copy per fused adapter (q alone or q+v), the frozen base
    # keeps none (traced, litgpt 0.5.13: benchmarks/results/litgpt_lora_traces.jsonl)
    lora_casts_adapter_input=False, falls_back_to_eager=True, adafactor="torch",
    gpu_layer_split=False,
    # litgpt/model.py: its own attention (n_query_groups K/V in KVCache, preallocated);
    # MultiheadLatentAttention.build_kv_cache holds per-head K and V
    caches_mla_latent=False, runs_transformers_models=False,
    sliding_cache_keeps_prompt=False,  # unread: its KV cache is preallocated (preallocates_kv)
)

PROFILES: tuple[RuntimeProfile, ...] = (
    _HF,
    # transformers 4.x: experts are nn.Linear modules, which replace_with_bnb_linear quantizes; MLA caches per head.
    replace(_HF, version="4.46", package="transformers 4.x (experts as nn.Linear modules)", default=False,
            sources=("transformers 4.x models/mixtral/modeling_mixtral.py MixtralBlockSparseTop2MLP (nn.Linear w1/w2/w3), "
                     "which replace_with_bnb_linear quantizes like every other nn.Linear",
                     "otherwise as transformers 5.24 (its record's sources)"),
            bitsandbytes="0.44.1", experts_unquantized=(),
            # DeepSeek-V2/V3 remote code decompressed the latent and cached per-head keys and values
            caches_mla_latent=False),
    RuntimeProfile(
        name="torchtune", version="0.6", package="torchtune",
        sources=("torchtune/modules/transformer.py TransformerDecoder.forward (`output.float()`)",
                 "torchtune recipes/full_finetune_single_device.py (optimizer fused=True)",
                 "torchtune/modules/loss CEWithChunkedOutputLoss (8 chunks)",
                 "torchtune/modules/peft/lora.py LoRALinear.forward (adapters in the model dtype, no input cast)",
                 "torchtune/models/gemma2/_attention.py Gemma2Attention.forward (matmul, softcap, softmax: no SDPA)",
                 "recipes build `optimizer._component_`: torch.optim.Adafactor"),
        # recipes train in one dtype (training.get_dtype: bf16 or fp32) and never enter torch.autocast
        precisions=("pure",),
        # training/_compile.py compile_model: `m.compile()` on every TransformerSelfAttentionLayer ("per-layer compile")
        compiles_blocks_only=True,
        # modules/attention.py MultiHeadAttention.forward: `k.unsqueeze(2).expand(...).flatten(1, 2)` (and v) before
        # the SDPA call, a copy per query head that the kernel saves
        expands_kv_heads=True,
        # modules/position_embeddings.py RotaryPositionalEmbeddings: `cache` buffer [max_seq_len, head_dim // 2, 2]
        rope_cache_buffer=True,
        fused_adamw=True, fp32_logits=True, bitsandbytes="", lora_casts_adapter_input=False, falls_back_to_eager=True,
        adafactor="torch", gpu_layer_split=False,
        # its own model code (torchtune/modules/attention.py MultiHeadAttention; no MLA model in torchtune 0.6.1);
        # recipes/generate.py setup_caches: a KVCache sized for the whole length before the prompt runs
        caches_mla_latent=None, runs_transformers_models=False, preallocates_kv=True,
        sliding_cache_keeps_prompt=False,  # unread: its KV cache is preallocated (preallocates_kv)
    ),
    _LITGPT,
    # LitGPT 0.5 differs in one habit: its bitsandbytes frees MatMul4Bit's input.
    replace(_LITGPT, version="0.5", package="litgpt (bitsandbytes ≥ 0.43.2)", default=False,
            sources=("as litgpt 0.4, with a bitsandbytes that frees MatMul4Bit's input (bitsandbytes PR #1270)",),
            bitsandbytes="0.44.1"),
    RuntimeProfile(
        name="torchao", version="0.8", package="torchao (gpt-fast generate.py)",
        sources=("torchao/quantization/quant_api.py quantize_ (filter: every nn.Linear)",
                 "torchao/_models/llama/generate.py (setup_caches for max_seq_length; prefill logits for all positions)",
                 "torchao/_models/llama/model.py (no adapters; F.scaled_dot_product_attention for every model)"),
        # what modelmem models of torchao is gpt-fast's generate.py (its sources above): inference, no training path
        trains=False, quantizes_lm_head=True, preallocates_kv=True, prefill_logits_all_positions=True,
        lora_casts_adapter_input=False, falls_back_to_eager=False, adafactor="", gpu_layer_split=False,
        # gpt-fast's Transformer: KVCache of n_local_heads (the K/V heads), preallocated; no MLA model
        caches_mla_latent=None, runs_transformers_models=False,
        sliding_cache_keeps_prompt=False,  # unread: its KV cache is preallocated (preallocates_kv)
        platforms=("cuda", "rocm"),
        platform_note="torchao's quantized kernels are CUDA (and partly ROCm); on a Mac use runtime hf (PyTorch MPS) or llamacpp",
    ),
    RuntimeProfile(
        name="vllm", version="0.8", package="vllm (V1 engine; read from v0.10)",
        sources=("vllm/v1/worker/gpu_worker.py determine_available_memory; vllm/utils memory_profiling",
                 "vllm/v1/core/kv_cache_utils.py (blocks, concurrency, check_enough_kv_cache_memory)",
                 "vllm/engine/arg_utils.py _set_default_args_v1; vllm/v1/sample/ops/topk_topp_sampler.py",
                 "vllm/v1/attention/backends/mla (kv_lora_rank + qk_rope_head_dim per token)",
                 "modelmem.runtimes.vllm (the arithmetic)"),
        trains=False, kv_block_pool=True, caches_mla_latent=True, kv_dtypes=("bf16", "fp16", "fp32", "fp8"),
        **_VLLM_DEVICES, **_VLLM_HABITS,
    ),
    RuntimeProfile(
        name="vllm", version="0.2", package="vllm (V0 engine, 0.2 to 0.7; read from v0.6.5)", default=False,
        sources=("vllm/worker/worker.py determine_num_available_blocks", "vllm/model_executor/layers/sampler.py",
                 "vllm PR #10511 profiling logs"),
        trains=False, kv_block_pool=True, caches_mla_latent=True, kv_dtypes=("bf16", "fp16", "fp32", "fp8"),
        **_VLLM_DEVICES, **_VLLM_HABITS,
    ),
    RuntimeProfile(
        name="llamacpp", version="b6000", package="llama.cpp (llama-server)",
        sources=("llama.cpp src/llama-model.cpp load_tensors (n_gpu_layers: the last blocks and the output layer)",
                 "src/llama-kv-cache.cpp, src/llama-context.cpp (output buffer, worst-case graph)",
                 "common/common.h (-c 4096, -ub 512, --fit-target 1024 MiB); common/arg.cpp (cache types)",
                 "modelmem.runtimes.llamacpp (the arithmetic)"),
        trains=False, kv_dtypes=("f16", "fp16", "bf16", "fp32", "q8_0", "q4_0", "int8", "int4"), **_LLAMACPP_HABITS,
        default_kv_dtype="f16",
        **_LLAMACPP_DEVICES,
    ),
    RuntimeProfile(
        name="ollama", version="0.30", package="ollama (llama-server subprocess; ollama/ollama@fb30760)",
        sources=("server/routes.go (VRAM-tier default context)", "server/sched.go (effective context × parallel)",
                 "envconfig/config.go (OLLAMA_NUM_PARALLEL, OLLAMA_KV_CACHE_TYPE, OLLAMA_GPU_OVERHEAD)",
                 "llm/llama_server.go (-c, -np, --cache-type-k/v, --flash-attn, no -ngl)", "ml/device.go MinimumMemory",
                 "modelmem.runtimes.ollama (the defaults, each with its file)"),
        trains=False, kv_dtypes=("f16", "fp16", "q8_0", "q4_0"), default_kv_dtype="f16", **_LLAMACPP_HABITS,
        ollama_defaults=True,
        **_LLAMACPP_DEVICES,
    ),
)

# Runtime names in first-listed order; a new runtime (deepspeed, ollama) is one more record above.
RUNTIMES: tuple[str, ...] = tuple(dict.fromkeys(p.name for p in PROFILES))


def training_runtimes() -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.name for p in PROFILES if p.trains))


_LOOKED_UP: dict[tuple[str, str | None], RuntimeProfile] = {}


def lookup_profile(runtime: str, version: str | None = None) -> RuntimeProfile:
    """The record for a runtime and, optionally, a version: exact match, else the newest listed version not above
    it (a version between two records has the habits of the older one)."""
    found = _LOOKED_UP.get((runtime, version))
    if found is None:
        found = _lookup(runtime, version)
        if len(_LOOKED_UP) < 256:  # versions are free text: keep the memo bounded
            _LOOKED_UP[(runtime, version)] = found
    return found


def _lookup(runtime: str, version: str | None) -> RuntimeProfile:
    records = [p for p in PROFILES if p.name == runtime]
    if not records:
        raise InvalidJobError("runtime", runtime, ", ".join(RUNTIMES))
    if version is None:
        return next(p for p in records if p.default)
    for p in records:
        if p.version == version:
            return p
    wanted = _version_tuple(version)
    older = [p for p in records if _version_tuple(p.version) <= wanted]
    if not older:
        raise InvalidJobError("runtime_version", version,
                              f"a {runtime} version ≥ {min(records, key=lambda p: _version_tuple(p.version)).version} "
                              f"(profiles: {', '.join(p.version for p in records)})")
    return max(older, key=lambda p: _version_tuple(p.version))


def profile_for(job: Job) -> RuntimeProfile:
    """The habits of the runtime (and version) the job names."""
    return lookup_profile(job.runtime, job.runtime_version)
