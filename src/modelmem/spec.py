"""ModelSpec: the architecture facts a config gives, independent of any job or parallel plan.

A spec is built by `modelmem.sources.config.spec_from_config` from a Hugging Face config.json (catalog entries
are stored as such configs too), by the safetensors/GGUF readers, or by `from_module`. Parameter counts are
derived from it in `modelmem.counts`; memory components in `modelmem.memory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts block (Mixtral, Qwen3-MoE, gpt-oss, DeepSeek-V2/V3)."""

    num_experts: int  # routed experts per MoE layer
    experts_per_token: int  # top-k
    expert_intermediate_size: int
    num_shared_experts: int = 0  # DeepSeek's always-on experts
    shared_intermediate_size: int = 0  # per shared expert (DeepSeek: moe_intermediate_size)
    first_dense_layers: int = 0  # DeepSeek first_k_dense_replace: leading layers with a dense MLP
    layer_freq: int = 1  # an MoE layer every `layer_freq` layers after the dense ones
    router_bias: bool = False
    router_score_bias: bool = False  # DeepSeek-V3 noaux_tc: a learned e_score_correction_bias of E per router
    expert_bias: bool = False  # gpt-oss: biases on expert projections
    gated_experts: bool = True

    def is_moe_layer(self, index: int) -> bool:
        return index >= self.first_dense_layers and (index - self.first_dense_layers) % self.layer_freq == 0


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2 §2.1): K/V compressed to a latent of kv_lora_rank."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None  # None: a direct q_proj


@dataclass(frozen=True)
class ExtraLinear:
    """An nn.Linear outside the text decoder (vision tower, projector), already counted in extra_params."""

    name: str  # transformers leaf module name (q_proj, fc1, multi_modal_projector…)
    in_features: int
    out_features: int
    count: int
    bias: bool = False


@dataclass(frozen=True)
class StoredWeights:
    """What a checkpoint actually stores (safetensors headers, GGUF tensors): exact bytes, as stored."""

    total_bytes: int
    num_params: int  # logical parameters (unpacked), when known; else stored elements
    bytes_by_dtype: Mapping[str, int] = field(default_factory=dict)
    per_layer_bytes: tuple[int, ...] = ()  # bytes of each decoder block, when the format says (GGUF blk.N.*)
    source: str = ""


@dataclass(frozen=True)
class LiveLoRA:
    """LoRA adapters found on a live PEFT model (from_module): what an estimate of it trains by default."""

    rank: int  # the adapters' r (the most common one when PEFT's rank_pattern varies it)
    targets: tuple[str, ...]  # leaf module names carrying lora_A / lora_B
    alpha: int | None = None  # LoraConfig.lora_alpha, when the model exposes peft_config


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    gated_mlp: bool = True  # SwiGLU/GeGLU: gate, up, down; False: up, down (GPT-2, NeoX, OPT…)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    norm_bias: bool = False
    norms_per_layer: int = 2
    final_norm: bool = True
    qk_norm: str = "none"  # "none" | "head" (RMSNorm(head_dim), Qwen3/Gemma3) | "full" (OLMo-2: over the projection)
    parallel_residual: bool = False
    learned_positions: int = 0  # rows of a learned absolute position table (GPT-2, OPT, BigCode)
    embedding_norm: bool = False  # BLOOM's word_embeddings_layernorm
    attention_sinks: bool = False  # gpt-oss: one learned logit per head per layer
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # per layer: "full" | "sliding"; empty means all "full"
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    dtype: str = "bf16"  # dtype the checkpoint is stored in
    quantization: Mapping[str, Any] | None = None  # the checkpoint's quantization_config, if pre-quantized
    extra_params: int = 0  # parameters outside the text decoder (vision tower, projector), counted in the total
    stored: StoredWeights | None = None  # exact stored bytes when read from a checkpoint
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the config.json it came from
    source: str = ""  # where the config came from (catalog source URL, path, Hub id)
    word_embed_proj_dim: int | None = None  # OPT-350m: embeddings (and tied head) this wide, projected to hidden
    extra_linears: tuple[ExtraLinear, ...] = ()  # the nn.Linear layers inside extra_params (PEFT all-linear wraps them)
    # Family facts the memory model reads, set once by the config builders (sources/config.py); memory/ never reads
    # model_type or raw config keys.
    fused_qkv: bool = False  # one linear projects q, k and v (qkv_proj, c_attn, query_key_value)
    fused_gate_up: bool = False  # one linear projects the gated MLP's gate and up (Phi-3 gate_up_proj)
    alibi: bool = False  # ALiBi position biases (BLOOM): no rotary, no position table
    partial_rotary: float = 1.0  # share of each head's dims that rotary embeddings rotate (Phi-2 0.4, NeoX 0.25)
    attn_logit_softcap: float | None = None  # tanh soft-capping of attention scores (Gemma-2)
    final_logit_softcap: float | None = None  # tanh soft-capping of the output logits (Gemma-2)
    activation: str = "silu"  # the MLP's activation as the config names it (silu, gelu_new, gelu_pytorch_tanh, relu…)
    attention_dropout: float = 0.0  # dropout on attention probabilities, as configured
    residual_dropout: float = 0.0  # dropout after attention and MLP outputs, as configured
    has_sdpa: bool = True  # transformers' modeling code has an SDPA path (Gemma-2: no, soft-capping)
    fp32_norm_multiply: bool = False  # RMSNorm multiplies by its weight in fp32 (Gemma's `x * (1 + w)`)
    low_precision_softmax: bool = False  # eager attention takes the softmax in the compute dtype (GPT-2)
    # transformers' eager attention keeps more score-sized tensors than the masked scores at the softmax: BLOOM keeps
    # its unmasked baddbmm scores, and the layer loop keeps the previous layer's returned probabilities (2)
    eager_extra_scores: int = 0
    # transformers expands K and V to every query head before the cache (Falcon's new decoder architecture)
    caches_expanded_kv: bool = False
    # transformers takes K and V out of the fused projection by indexing (copies, Falcon), so nothing keeps the
    # fused output alive; elsewhere v is a view of it that the attention saves
    fused_qkv_split_copies: bool = False
    # transformers always hands SDPA an additive mask (Falcon): the memory-efficient kernel saves it
    sdpa_always_masked: bool = False
    # Parts a text-only step never runs (every job modelmem describes is text): Mllama skips its cross-attention
    # layers without image states (MllamaTextModel.forward: "For text-only path we should skip cross attention
    # layers"); the vision tower and projector see no input. They hold weights, but no activations, no KV cache,
    # no gradients and no optimizer states.
    image_only_layers: tuple[int, ...] = ()
    image_only_params: int = 0
    clamped_glu: bool = False  # gpt-oss: clamp(gate), clamp(up), gate·σ(α·gate)·(up + 1) instead of SwiGLU
    live_lora: LiveLoRA | None = None  # adapters of the live PEFT model this spec was read from

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        return self.layer_types or ("full",) * self.num_layers

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim
