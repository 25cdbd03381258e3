"""Exact parameter counts from a ModelSpec, per component, and LoRA trainable counts with PEFT's semantics.

Counts are unique parameters: a tied embedding is counted once, buffers (rotary inv_freq, causal masks) are not
parameters; DeepSeek-V3's e_score_correction_bias is (an nn.Parameter of MoEGate, stored in the checkpoint). They never depend on a parallel plan (STYLE rule 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelmem.errors import InvalidJobError
from modelmem.spec import ModelSpec

__all__ = [
    "ParamCounts",
    "LinearModule",
    "count_params",
    "linear_modules",
    "default_lora_targets",
    "lora_trainable_params",
]


@dataclass(frozen=True)
class ParamCounts:
    embeddings: int  # token embedding table
    position_embeddings: int  # learned absolute positions (GPT-2, OPT, BigCode); RoPE/ALiBi have none
    attention: int  # q/k/v/o projections (or fused / MLA equivalents) with their biases
    mlp: int  # dense MLPs, including DeepSeek's always-on shared experts
    experts: int  # routed experts of every MoE layer
    router: int  # MoE gates
    norms: int  # every LayerNorm/RMSNorm weight and bias, q/k norms included
    lm_head: int  # 0 when tied to the embeddings
    other: int  # extra_params (vision tower, projector), attention sinks, OPT project_in/out
    active_experts: int = 0  # routed-expert parameters one token uses (top-k of E per MoE layer); not added to total

    @property
    def total(self) -> int:
        return (self.embeddings + self.position_embeddings + self.attention + self.mlp + self.experts + self.router
                + self.norms + self.lm_head + self.other)

    @property
    def active(self) -> int:
        """Parameters used per token: everything but the routed experts a token is not sent to."""
        return self.total - self.experts + self.active_experts


@dataclass(frozen=True)
class LinearModule:
    """One kind of nn.Linear (or GPT-2 Conv1D) in the model, under its transformers leaf name."""

    name: str
    in_features: int
    out_features: int
    count: int  # how many modules of this name and shape the whole model holds
    bias: bool = False
    expert: bool = False  # routed-expert weights transformers 5 stores as fused 3-D Parameters, not nn.Linear

    @property
    def params(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


# ---------------------------------------------------------------------------------------------------------------
# Component formulas


def _norm_size(spec: ModelSpec, width: int) -> int:
    # LayerNorm holds weight and bias of `width`; RMSNorm only a weight (Zhang & Sennrich 2019).
    return width * (2 if spec.norm_bias else 1)


def _attention_per_layer(spec: ModelSpec) -> int:
    h = spec.hidden_size
    if spec.mla is not None:
        # DeepSeek-V2 §2.1.2: q (direct, or down to q_lora_rank and up), joint KV down-projection plus the
        # decoupled RoPE key (kv_a_proj_with_mqa), KV up-projection (kv_b_proj), output projection.
        m = spec.mla
        qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            q = h * m.q_lora_rank + m.q_lora_rank * spec.num_heads * qk_head + (m.q_lora_rank if spec.qkv_bias else 0)
        else:
            q = h * spec.num_heads * qk_head
        kv_a_out = m.kv_lora_rank + m.qk_rope_head_dim
        kv_a = h * kv_a_out + (kv_a_out if spec.qkv_bias else 0)
        kv_b = m.kv_lora_rank * spec.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
        o = spec.num_heads * m.v_head_dim * h + (h if spec.o_bias else 0)
        return q + kv_a + kv_b + o
    # Vaswani et al. 2017 §3.2.2 with grouped K/V heads (Ainslie et al. 2023, GQA): W_Q, W_K, W_V, W_O.
    qkv = h * (spec.q_dim + 2 * spec.kv_dim) + ((spec.q_dim + 2 * spec.kv_dim) if spec.qkv_bias else 0)
    return qkv + spec.q_dim * h + (h if spec.o_bias else 0)


def _attention_norms_per_layer(spec: ModelSpec) -> int:
    if spec.mla is not None:
        # DeepSeek-V2: RMSNorm on the compressed latents (q_a_layernorm, kv_a_layernorm).
        return (spec.mla.q_lora_rank or 0) + spec.mla.kv_lora_rank
    if spec.qk_norm == "head":  # Qwen3/Gemma 3: RMSNorm(head_dim) shared by all heads, on q and on k
        return 2 * _norm_size(spec, spec.head_dim)
    if spec.qk_norm == "full":  # OLMo-2: RMSNorm over the whole q projection and the whole k projection
        return _norm_size(spec, spec.q_dim) + _norm_size(spec, spec.kv_dim)
    return 0


def _mlp(spec: ModelSpec, hidden: int, inner: int, gated: bool, bias: bool) -> int:
    # Gated (Shazeer 2020, GLU variants): gate, up, down; plain (Vaswani et al. 2017 FFN): up, down.
    weights = (3 if gated else 2) * hidden * inner
    biases = ((2 * inner if gated else inner) + hidden) if bias else 0
    return weights + biases


def count_params(spec: ModelSpec) -> ParamCounts:
    """Exact parameters of the model a spec describes, per component (a stored count is never substituted)."""
    h = spec.hidden_size
    embed_width = spec.word_embed_proj_dim or h
    attention = mlp = experts = active_experts = router = 0
    norms = spec.num_layers * spec.norms_per_layer * _norm_size(spec, h)  # pre/post-norms of every block
    moe = spec.moe
    for i in range(spec.num_layers):
        attention += _attention_per_layer(spec)
        norms += _attention_norms_per_layer(spec)
        if moe is not None and moe.is_moe_layer(i):
            # Fedus et al. 2021 / Mixtral: router Linear(h, E); E experts; DeepSeekMoE shared experts always on.
            router += moe.num_experts * h + (moe.num_experts if moe.router_bias else 0)
            # DeepSeek-V3 MoEGate (topk_method noaux_tc): e_score_correction_bias = nn.Parameter(n_routed_experts)
            # (deepseek-ai/DeepSeek-V3 modeling_deepseek.py).
            router += moe.num_experts if moe.router_score_bias else 0
            one = _mlp(spec, h, moe.expert_intermediate_size, moe.gated_experts, moe.expert_bias)
            experts += moe.num_experts * one
            active_experts += moe.experts_per_token * one
            if moe.num_shared_experts:
                mlp += _mlp(spec, h, moe.num_shared_experts * moe.shared_intermediate_size, True, False)
        else:
            mlp += _mlp(spec, h, spec.intermediate_size, spec.gated_mlp, spec.mlp_bias)
    if spec.final_norm:
        norms += _norm_size(spec, h)
    if spec.embedding_norm:  # BLOOM's word_embeddings_layernorm
        norms += _norm_size(spec, h)
    other = spec.extra_params
    if spec.attention_sinks:  # gpt-oss: one learned sink logit per head per layer
        other += spec.num_layers * spec.num_heads
    if spec.word_embed_proj_dim:  # OPT project_in / project_out, bias-free
        other += 2 * h * spec.word_embed_proj_dim
    # Press & Wolf 2017: a tied output projection reuses the V × d embedding table, so it adds nothing.
    lm_head = 0
    if not spec.tie_word_embeddings:
        lm_head = spec.vocab_size * embed_width + (spec.vocab_size if spec.lm_head_bias else 0)
    return ParamCounts(
        embeddings=spec.vocab_size * embed_width,  # one row per token id (V × d)
        position_embeddings=spec.learned_positions * h,  # GPT-2 wpe / OPT's table (with its 2-row offset)
        attention=attention,
        mlp=mlp,
        experts=experts,
        router=router,
        norms=norms,
        lm_head=lm_head,
        other=other,
        active_experts=active_experts,
    )


# ---------------------------------------------------------------------------------------------------------------
# Linear modules under transformers' names

# transformers' leaf names where they are not Llama's (q_proj…, o_proj, gate_proj/up_proj/down_proj).
_FUSED_QKV_NAME = {"gpt_neox": "query_key_value", "bloom": "query_key_value", "falcon": "query_key_value",
                   "gpt2": "c_attn", "gpt_bigcode": "c_attn", "phi3": "qkv_proj"}
_OUT_PROJ = {"gpt_neox": "dense", "bloom": "dense", "falcon": "dense", "phi": "dense", "gpt2": "c_proj",
             "gpt_bigcode": "c_proj", "opt": "out_proj", "gptj": "out_proj"}
_PLAIN_MLP = {"gpt_neox": ("dense_h_to_4h", "dense_4h_to_h"), "bloom": ("dense_h_to_4h", "dense_4h_to_h"),
              "falcon": ("dense_h_to_4h", "dense_4h_to_h"), "gpt2": ("c_fc", "c_proj"),
              "gpt_bigcode": ("c_fc", "c_proj"), "opt": ("fc1", "fc2"), "phi": ("fc1", "fc2"),
              "gptj": ("fc_in", "fc_out")}


def linear_modules(spec: ModelSpec) -> tuple[LinearModule, ...]:
    """Every nn.Linear (GPT-2/BigCode: Conv1D) of the model as transformers 5 builds it, lm_head included.

    Routed experts are listed with expert=True: transformers 5 holds them as fused 3-D Parameters
    (`experts.gate_up_proj`, `experts.down_proj`), not nn.Linear. MoE routers are bare Parameters there too
    (MixtralTopKRouter, Qwen2MoeTopKRouter, DeepseekV2TopkRouter, GptOssTopKRouter) and are not listed. Vision-tower
    and projector linears come from spec.extra_linears (Gemma 3, Mllama). Checked against transformers 5.24 models
    built on the meta device for every catalog entry.
    """
    h, L, mt = spec.hidden_size, spec.num_layers, spec.model_type
    out: list[LinearModule] = []
    if spec.mla is not None:
        m = spec.mla
        qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            out += [LinearModule("q_a_proj", h, m.q_lora_rank, L, spec.qkv_bias),
                    LinearModule("q_b_proj", m.q_lora_rank, spec.num_heads * qk_head, L)]
        else:
            out.append(LinearModule("q_proj", h, spec.num_heads * qk_head, L))
        out += [LinearModule("kv_a_proj_with_mqa", h, m.kv_lora_rank + m.qk_rope_head_dim, L, spec.qkv_bias),
                LinearModule("kv_b_proj", m.kv_lora_rank, spec.num_heads * (m.qk_nope_head_dim + m.v_head_dim), L),
                LinearModule("o_proj", spec.num_heads * m.v_head_dim, h, L, spec.o_bias)]
    elif spec.fused_qkv:
        out.append(LinearModule(_FUSED_QKV_NAME.get(mt, "qkv_proj"), h, spec.q_dim + 2 * spec.kv_dim, L, spec.qkv_bias))
        out.append(LinearModule(_OUT_PROJ.get(mt, "o_proj"), spec.q_dim, h, L, spec.o_bias))
    else:
        out += [LinearModule("q_proj", h, spec.q_dim, L, spec.qkv_bias),
                LinearModule("k_proj", h, spec.kv_dim, L, spec.qkv_bias),
                LinearModule("v_proj", h, spec.kv_dim, L, spec.qkv_bias),
                LinearModule(_OUT_PROJ.get(mt, "o_proj"), spec.q_dim, h, L, spec.o_bias)]

    moe = spec.moe
    moe_layers = sum(1 for i in range(L) if moe is not None and moe.is_moe_layer(i))
    dense_layers = L - moe_layers
    inter, bias = spec.intermediate_size, spec.mlp_bias
    if dense_layers:
        if mt in _PLAIN_MLP or not spec.gated_mlp:
            up, down = _PLAIN_MLP.get(mt, ("up_proj", "down_proj"))
            out += [LinearModule(up, h, inter, dense_layers, bias), LinearModule(down, inter, h, dense_layers, bias)]
        elif spec.fused_gate_up:
            out += [LinearModule("gate_up_proj", h, 2 * inter, dense_layers, bias),
                    LinearModule("down_proj", inter, h, dense_layers, bias)]
        else:
            out += [LinearModule("gate_proj", h, inter, dense_layers, bias),
                    LinearModule("up_proj", h, inter, dense_layers, bias),
                    LinearModule("down_proj", inter, h, dense_layers, bias)]
    if moe is not None and moe_layers:
        if moe.num_shared_experts:  # DeepseekV2MLP shared_experts: ordinary nn.Linear layers
            shared = moe.num_shared_experts * moe.shared_intermediate_size
            out += [LinearModule("gate_proj", h, shared, moe_layers), LinearModule("up_proj", h, shared, moe_layers),
                    LinearModule("down_proj", shared, h, moe_layers)]
        n, ie = moe.num_experts * moe_layers, moe.expert_intermediate_size
        out += [LinearModule("gate_up_proj", h, (2 if moe.gated_experts else 1) * ie, n, moe.expert_bias, expert=True),
                LinearModule("down_proj", ie, h, n, moe.expert_bias, expert=True)]
    if spec.word_embed_proj_dim:
        out += [LinearModule("project_in", spec.word_embed_proj_dim, h, 1),
                LinearModule("project_out", h, spec.word_embed_proj_dim, 1)]
    out += [LinearModule(x.name, x.in_features, x.out_features, x.count, x.bias) for x in spec.extra_linears]
    out.append(LinearModule("lm_head", spec.word_embed_proj_dim or h, spec.vocab_size, 1, spec.lm_head_bias))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# LoRA

# PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (peft/utils/constants.py), keyed by config model_type.
_PEFT_DEFAULT_TARGETS = {
    "gpt2": ("c_attn",), "bloom": ("query_key_value",), "opt": ("q_proj", "v_proj"), "gptj": ("q_proj", "v_proj"),
    "gpt_neox": ("query_key_value",), "llama": ("q_proj", "v_proj"), "gpt_bigcode": ("c_attn",),
    "falcon": ("query_key_value",), "RefinedWeb": ("query_key_value",), "RefinedWebModel": ("query_key_value",),
    "mistral": ("q_proj", "v_proj"), "mixtral": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
}


def default_lora_targets(spec: ModelSpec) -> tuple[str, ...]:
    """PEFT's default target_modules for the model_type.

    PEFT 0.21 with transformers 5 has no usable default for phi3, qwen3_moe, deepseek, gpt_oss, olmo2, gemma3 or
    mllama (it asks for target_modules; for mixtral its MoE conversion finds no target). modelmem then uses
    q_proj,v_proj when the model has both (else its fused qkv module), the choice PEFT makes for Llama-style models.
    """
    if spec.model_type in _PEFT_DEFAULT_TARGETS:
        return _PEFT_DEFAULT_TARGETS[spec.model_type]
    names = {m.name for m in linear_modules(spec) if not m.expert}
    if {"q_proj", "v_proj"} <= names:
        return ("q_proj", "v_proj")
    return tuple(n for n in ("qkv_proj", "query_key_value", "c_attn", "q_proj", "q_a_proj") if n in names)[:1]


# PEFT ≥0.18 under transformers 5 remaps the v4 names of MoE experts and routers onto the fused Parameters
# (peft/utils/transformers_weight_conversion.py: _MOE_TARGET_MODULE_MAPPING, _MOE_FUSED_TARGETS), keyed by
# transformers' conversion pattern of the model_type. Names so remapped no longer target any nn.Linear (so on
# DeepSeek, gate_proj/up_proj/down_proj reach only the routed experts, not the dense or shared MLPs).
_MOE_PATTERN = {"mixtral": "mixtral", "qwen3_moe": "qwen2_moe", "deepseek_v2": "qwen2_moe", "deepseek_v3": "qwen2_moe"}
_MOE_V4_NAMES = {  # v4 name → router | gate | up | down
    "mixtral": {"gate": "router", "w1": "gate", "w3": "up", "w2": "down"},
    "qwen2_moe": {"gate": "router", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"},
}


def _moe_lora(spec: ModelSpec, rank: int, roles: dict[str, str]) -> int:
    """LoRA on fused experts and routers (PEFT ParamWrapper): a [E, out, in] Parameter gets lora_A (r·E, in) and
    lora_B (out, r·E); gate and up are fused into gate_up_proj, so targeting both doubles its rank; a router weight
    [E, h] gets r × (h + E)."""
    moe = spec.moe
    if moe is None:
        return 0
    present = set(roles.values())
    if ("gate" in present) != ("up" in present):
        have, need = ("gate", "up") if "gate" in present else ("up", "gate")
        names = {v: k for k, v in roles.items()}
        raise InvalidJobError("lora_targets", names[have],
                              f"{names[have]} together with its fused partner (gate_up_proj); add the {need} name")
    layers = sum(1 for i in range(spec.num_layers) if moe.is_moe_layer(i))
    h, e, ie = spec.hidden_size, moe.num_experts, moe.expert_intermediate_size
    total = 0
    if "router" in present:
        total += rank * (h + e)
    if "gate" in present:
        total += 2 * rank * e * (h + 2 * ie)
    if "down" in present:
        total += rank * e * (ie + h)
    return layers * total


def lora_expert_params(spec: ModelSpec, targets: str) -> int:
    """Routed-expert parameters whose fused 3-D tensors PEFT wraps for `targets` (all layers together).

    PEFT's ParamWrapper parametrizes the whole Parameter, so every forward materializes W + ΔW for all experts.
    """
    moe = spec.moe
    v4 = _MOE_V4_NAMES.get(_MOE_PATTERN.get(spec.model_type, ""), {})
    if moe is None or not v4:
        return 0
    names = tuple(v4) if targets.strip() == "all-linear" else tuple(n.strip() for n in targets.split(","))
    roles = {v4[n] for n in names if n in v4}
    layers = sum(1 for i in range(spec.num_layers) if moe.is_moe_layer(i))
    h, e, ie = spec.hidden_size, moe.num_experts, moe.expert_intermediate_size
    per_layer = (e * h * 2 * ie if {"gate", "up"} & roles else 0) + (e * ie * h if "down" in roles else 0)
    return layers * per_layer


def lora_trainable_params(spec: ModelSpec, rank: int, targets: str) -> int:
    """Trainable LoRA parameters: r × (in + out) per targeted linear (Hu et al. 2021 §4.1; PEFT adds no biases).

    `targets`: "all-linear" (PEFT: every linear but the output layer), "default" (PEFT's per-model default) or a
    comma-separated list of leaf module names (lm_head allowed when named). MoE experts follow PEFT 0.21 with
    transformers 5 (see _MOE_V4_NAMES); checked against PEFT 0.21.2 on the catalog's models.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidJobError("lora_rank", rank, "a positive integer")
    modules = [m for m in linear_modules(spec) if not m.expert]
    v4 = _MOE_V4_NAMES.get(_MOE_PATTERN.get(spec.model_type, ""), {})
    spec_targets = (targets or "").strip()
    if spec_targets == "all-linear":
        names = tuple(dict.fromkeys(m.name for m in modules if m.name != "lm_head")) + tuple(v4)
    elif spec_targets == "default":
        names = default_lora_targets(spec)
    else:
        names = tuple(n.strip() for n in spec_targets.split(",") if n.strip())
    if not names:
        raise InvalidJobError("lora_targets", targets, "all-linear, default or a comma list of module names")
    available = sorted({m.name for m in modules} | set(v4))
    total = 0
    roles: dict[str, str] = {}
    for name in dict.fromkeys(names):
        if name in v4:
            roles[name] = v4[name]
            continue
        matched = [m for m in modules if m.name == name]
        if not matched:
            raise InvalidJobError("lora_targets", name, f"one of {', '.join(available)} (or all-linear, default)")
        total += sum(rank * (m.in_features + m.out_features) * m.count for m in matched)
    return total + _moe_lora(spec, rank, roles)
