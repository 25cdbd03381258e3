"""Hugging Face config.json → ModelSpec.

One pure parser (`spec_from_config`) serves the catalog, local folders, the Hub reader and tests; `load_config_file`
only reads a file and hands its dict over. Per-`model_type` knowledge mirrors what transformers' modeling code
builds from each config (which projections carry biases, how many norms a block holds, which layers slide).
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelmem import limits
from modelmem.errors import ConfigError
from modelmem.spec import ExtraLinear, MLASpec, ModelSpec, MoESpec

__all__ = ["spec_from_config", "load_config_file", "MAX_CONFIG_BYTES"]

MAX_CONFIG_BYTES = limits.CONFIG_BYTES.maximum  # real config.json files are a few KiB; anything this large is not one

_DTYPES = {
    "float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32",
    "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
}

# Encoder-only and encoder-decoder families: modelmem plans decoder LMs only.
_NOT_DECODERS = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "modernbert",
    "t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "led", "longt5", "switch_transformers",
    "encoder-decoder", "whisper", "blenderbot", "prophetnet", "fsmt", "nllb-moe", "m2m_100",
})

# Legacy / family-specific spellings of the same facts, first match wins (GPT-2: n_embd…, BLOOM: n_embed…).
_HIDDEN = ("hidden_size", "n_embd", "n_embed", "d_model", "dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "n_head_kv", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
_INTER = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "inner_hidden_size")
_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")

# The first key of each group names the limit its integers meet (modelmem.limits); others meet CONFIG_INT.
_LIMITS = {
    _HIDDEN[0]: limits.HIDDEN, _LAYERS[0]: limits.LAYERS, _HEADS[0]: limits.HEADS, _KV_HEADS[0]: limits.HEADS,
    _INTER[0]: limits.INTERMEDIATE, _POSITIONS[0]: limits.POSITIONS, "vocab_size": limits.VOCAB,
    "head_dim": limits.HEAD_DIM, "sliding_window": limits.POSITIONS, "num_local_experts": limits.EXPERTS,
    "num_experts": limits.EXPERTS, "n_routed_experts": limits.EXPERTS, "num_experts_per_tok": limits.EXPERTS,
    "n_shared_experts": limits.EXPERTS, "moe_intermediate_size": limits.INTERMEDIATE,
    "first_k_dense_replace": limits.LAYERS, "moe_layer_freq": limits.LAYERS, "decoder_sparse_step": limits.LAYERS,
    "max_window_layers": limits.LAYERS, "sliding_window_pattern": limits.LAYERS, "num_global_layers": limits.LAYERS,
    "kv_lora_rank": limits.HIDDEN, "q_lora_rank": limits.HIDDEN, "qk_rope_head_dim": limits.HEAD_DIM,
    "qk_nope_head_dim": limits.HEAD_DIM, "v_head_dim": limits.HEAD_DIM, "patch_size": limits.HIDDEN,
    "image_size": limits.POSITIONS, "max_num_tiles": limits.EXPERTS, "num_channels": limits.HIDDEN,
    "vision_output_dim": limits.HIDDEN,
}

_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding", "full": "full", "sliding": "sliding"}


class _Reader:
    """Typed access to a config dict; every failure is a ConfigError naming the key."""

    def __init__(self, config: Mapping[str, Any], source: str) -> None:
        self.c = config
        self.source = source

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.source, message)

    def raw(self, *keys: str) -> Any:
        for key in keys:
            value = self.c.get(key)
            if value is not None:
                return value
        return None

    def int(self, *keys: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.raw(*keys)
        if value is None:
            if default is None:
                raise self.error(f"missing {keys[0]}")
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{self._key(keys)} must be an integer, got {value!r}")
        if value < minimum:
            raise self.error(f"{self._key(keys)} must be >= {minimum}, got {value}")
        bound = _LIMITS.get(keys[0], limits.CONFIG_INT)
        if bound.problem(value):
            raise self.error(f"{self._key(keys)} {value:,d} exceeds modelmem's limit of {bound.maximum:,d} "
                             f"(largest real {bound.field}: {bound.largest_real})")
        return value

    def opt_int(self, *keys: str, minimum: int = 1) -> int | None:
        return None if self.raw(*keys) is None else self.int(*keys, minimum=minimum)

    def bool(self, *keys: str, default: bool) -> bool:
        value = self.raw(*keys)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"{self._key(keys)} must be true or false, got {value!r}")
        return value

    def float(self, *keys: str, default: float) -> float:
        value = self.raw(*keys)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"{self._key(keys)} must be a number, got {value!r}")
        if abs(value) > 1e300:  # an integer float() cannot hold, or one no formula should meet
            raise self.error(f"{self._key(keys)} {str(value)[:40]} is out of range")
        return float(value)

    def _key(self, keys: tuple[str, ...]) -> str:
        return next((k for k in keys if self.c.get(k) is not None), keys[0])


def spec_from_config(config: Mapping, name: str, source: str = "") -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config.json dict (decoder LMs only)."""
    where = source or name
    if not isinstance(config, Mapping):
        raise ConfigError(where, f"expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(where, f"model_type must be a string, got {model_type!r}")
    model_type = model_type or ""
    if model_type in _NOT_DECODERS or config.get("is_encoder_decoder") is True:
        raise ConfigError(where, f"model_type {model_type!r} is an encoder or encoder-decoder; "
                                 "only decoder LMs are supported")

    builder = _BUILDERS.get(model_type, _generic)
    fields = builder(_Reader(config, where))
    fields.setdefault("model_type", model_type or "llama")
    fields.update(_common_facts({**_CONFIG_DEFAULTS.get(model_type, {}), **config}))
    dtype = config.get("torch_dtype") or config.get("dtype")
    if dtype is None and isinstance(config.get("text_config"), Mapping):
        dtype = config["text_config"].get("torch_dtype") or config["text_config"].get("dtype")
    if dtype is not None:
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ConfigError(where, f"torch_dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        fields["dtype"] = _DTYPES[dtype]
    quant = config.get("quantization_config")
    if quant is not None and not isinstance(quant, Mapping):
        raise ConfigError(where, f"quantization_config must be an object, got {quant!r}")
    spec = ModelSpec(name=name, quantization=quant, config=config, source=source, **fields)
    limits.check_spec(spec, lambda m: ConfigError(where, m))
    return spec


def _positive(config: Mapping[str, Any], *keys: str) -> float:
    """The largest positive number among the keys (0.0 when none): families spell one probability many ways."""
    values = [float(config[k]) for k in keys if isinstance(config.get(k), (int, float)) and config[k] > 0]
    return max(values, default=0.0)


# Dropout probabilities a config.json may leave out, as transformers' config classes default them (GPT2Config,
# GPTBigCodeConfig: resid/embd/attn_pdrop 0.1; OPTConfig: dropout 0.1): the model applies them when training.
_CONFIG_DEFAULTS: dict[str, dict[str, float]] = {
    "gpt2": {"resid_pdrop": 0.1, "attn_pdrop": 0.1},
    "gpt_bigcode": {"resid_pdrop": 0.1, "attn_pdrop": 0.1},
    "opt": {"dropout": 0.1},
}


def _common_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    """Facts every family spells the same way (or in a few known spellings), read from the top-level config."""
    facts: dict[str, Any] = {
        # LlamaConfig hidden_act, GPT-2 activation_function, Gemma hidden_activation.
        "activation": str(config.get("hidden_act") or config.get("activation_function")
                          or config.get("hidden_activation") or "silu"),
        "attention_dropout": _positive(config, "attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"),
        "residual_dropout": _positive(config, "resid_pdrop", "hidden_dropout", "dropout", "hidden_dropout_prob"),
        "partial_rotary": _positive(config, "partial_rotary_factor", "rotary_pct") or 1.0,
    }
    for key, field in (("attn_logit_softcapping", "attn_logit_softcap"), ("final_logit_softcapping", "final_logit_softcap")):
        if isinstance(config.get(key), (int, float)) and config[key]:
            facts[field] = float(config[key])
    return facts


def load_config_file(path: str | Path) -> ModelSpec:
    """Read a config.json (or a folder holding one) into a ModelSpec named after its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    where = str(path)
    return spec_from_config(read_config_json(path, where), name=path.parent.name or where, source=where)


def read_config_json(path: str | Path, where: str, prefix: str = "") -> dict[str, Any]:
    """The JSON object in a config.json, read with a size cap; errors name `where` (a path or a Hub id) and start
    with `prefix` (the Hub reader says "config.json is …", since its `where` is not a file name)."""
    limits.regular_file_size(path, lambda m: ConfigError(where, f"{prefix}{m}"))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(where, f"{prefix}cannot read: {e.strerror or e}") from e
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(where, f"{prefix}larger than {MAX_CONFIG_BYTES} bytes; not a config.json")
    config = limits.loads_json(data, lambda m: ConfigError(where, f"{prefix}{m}"))
    if not isinstance(config, dict):
        raise ConfigError(where, f"{prefix}expected a JSON object, got {type(config).__name__}")
    return config


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces


def _core(r: _Reader, *, intermediate_default: int | None = None) -> dict[str, Any]:
    h = r.int(*_HIDDEN)
    n_heads = r.int(*_HEADS)
    head_dim = r.opt_int("head_dim", "kv_channels")
    if head_dim is None:
        if h % n_heads:
            raise r.error(f"hidden_size {h} is not divisible by num_attention_heads {n_heads}; set head_dim")
        head_dim = h // n_heads
    n_kv = r.int(*_KV_HEADS, default=n_heads)
    if n_heads % n_kv:
        raise r.error(f"num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}")
    inter = r.opt_int(*_INTER)
    if inter is None:
        if intermediate_default is None:
            raise r.error(f"missing {_INTER[0]}")
        inter = intermediate_default
    return dict(
        hidden_size=h,
        num_layers=r.int(*_LAYERS),
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=r.int("vocab_size", "padded_vocab_size"),
        max_position_embeddings=r.opt_int(*_POSITIONS),
    )


def _layer_types(r: _Reader, num_layers: int, default: tuple[str, ...]) -> tuple[str, ...]:
    """An explicit `layer_types` list wins over every family default (transformers ≥4.54 writes one)."""
    explicit = r.raw("layer_types")
    if explicit is None:
        return default
    if not isinstance(explicit, list) or len(explicit) != num_layers:
        raise r.error(f"layer_types must be a list of {num_layers} entries, got {explicit!r}")
    kinds = []
    for kind in explicit:
        if kind not in _LAYER_TYPES:
            raise r.error(f"layer_types entry {kind!r} is not full_attention or sliding_attention")
        kinds.append(_LAYER_TYPES[kind])
    return tuple(kinds)


def _windowed(r: _Reader, fields: dict[str, Any], default: tuple[str, ...]) -> dict[str, Any]:
    kinds = _layer_types(r, fields["num_layers"], default)
    if "sliding" in kinds:
        window = r.int("sliding_window")
        fields.update(sliding_window=window)
    if kinds and all(k == "full" for k in kinds):
        kinds = ()
    fields["layer_types"] = kinds
    return fields


def _tied(r: _Reader, default: bool) -> bool:
    return r.bool("tie_word_embeddings", default=default)


# ---------------------------------------------------------------------------------------------------------------
# Families


def _llama(r: _Reader) -> dict[str, Any]:
    # LlamaAttention: q/k/v/o share `attention_bias`; LlamaMLP: gate/up/down share `mlp_bias`.
    f = _core(r)
    bias = r.bool("attention_bias", default=False)
    f.update(model_type="llama", tie_word_embeddings=_tied(r, False), qkv_bias=bias, o_bias=bias,
             mlp_bias=r.bool("mlp_bias", default=False))
    return _windowed(r, f, ())


def _generic(r: _Reader) -> dict[str, Any]:
    # Unknown model_type: read it as a Llama-style decoder (the shape most new families copy). A multimodal wrapper
    # (llava, mistral3…) nests the decoder in text_config: read that; its vision tower is not counted.
    text = r.c.get("text_config")
    if r.raw(*_HIDDEN) is None and isinstance(text, Mapping):
        inner = _Reader(text, f"{r.source} (text_config)")
        return _BUILDERS.get(text.get("model_type") or "", _generic)(inner)
    # A Llama reading of an unknown MoE or MLA config would miscount silently; refuse it by name instead.
    unknown = [k for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size",
                           "kv_lora_rank") if r.c.get(k)]
    if unknown:
        raise r.error(f"model_type {r.c.get('model_type')!r} has {unknown[0]} (experts or latent attention) and is "
                      "not a supported family yet")
    f = _llama(r)
    f["model_type"] = r.c.get("model_type") or "llama"
    return f


def _mistral(r: _Reader) -> dict[str, Any]:
    # MistralConfig: a non-null sliding_window applies to every layer (v0.1: 4096; v0.2+ null).
    f = _core(r)
    f.update(model_type="mistral", tie_word_embeddings=_tied(r, False))
    return _sliding_everywhere(r, f)


def _mixtral(r: _Reader) -> dict[str, Any]:
    # MixtralSparseMoeBlock: router Linear(h, E, bias=False) and E SwiGLU experts of intermediate_size.
    f = _mistral(r)
    f["model_type"] = "mixtral"
    f["moe"] = MoESpec(
        num_experts=r.int("num_local_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        expert_intermediate_size=f["intermediate_size"],
    )
    return f


def _qwen2(r: _Reader) -> dict[str, Any]:
    # Qwen2Attention: q/k/v always biased, o_proj not; sliding only when use_sliding_window is true, and then
    # only for layers at index >= max_window_layers (Qwen2Config.layer_types).
    f = _core(r)
    f.update(model_type="qwen2", tie_word_embeddings=_tied(r, False), qkv_bias=True)
    n = f["num_layers"]
    default: tuple[str, ...] = ()
    if r.bool("use_sliding_window", default=False):
        start = r.int("max_window_layers", default=28, minimum=0)  # Qwen2Config default
        default = tuple("sliding" if i >= start else "full" for i in range(n))
    return _windowed(r, f, default)


def _qwen3(r: _Reader) -> dict[str, Any]:
    # Qwen3Attention: per-head RMSNorm on q and k (q_norm/k_norm over head_dim); biases follow attention_bias.
    f = _qwen2(r)
    bias = r.bool("attention_bias", default=False)
    f.update(model_type="qwen3", qkv_bias=bias, o_bias=bias, qk_norm="head")
    return f


def _qwen3_moe(r: _Reader) -> dict[str, Any]:
    # Qwen3MoeDecoderLayer: sparse when (i + 1) % decoder_sparse_step == 0 and i not in mlp_only_layers.
    f = _qwen3(r)
    f["model_type"] = "qwen3_moe"
    step = r.int("decoder_sparse_step", default=1)
    only_dense = r.raw("mlp_only_layers") or []
    if only_dense:
        raise r.error(f"mlp_only_layers {only_dense!r} is not supported yet (dense layers amid sparse ones)")
    f["moe"] = MoESpec(
        num_experts=r.int("num_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        expert_intermediate_size=r.int("moe_intermediate_size"),
        first_dense_layers=step - 1,  # (i + 1) % step == 0  ⇔  i >= step - 1 and (i - (step - 1)) % step == 0
        layer_freq=step,
    )
    return f


def _gemma(r: _Reader) -> dict[str, Any]:
    # GemmaForCausalLM: GeGLU MLP, head_dim 256 independent of hidden_size, embeddings always tied.
    f = _core(r)
    bias = r.bool("attention_bias", default=False)
    # GemmaRMSNorm computes `x * (1 + weight)` in fp32 and casts after (modeling_gemma.py).
    f.update(model_type="gemma", tie_word_embeddings=_tied(r, True), qkv_bias=bias, o_bias=bias, fp32_norm_multiply=True)
    return _windowed(r, f, ())


def _gemma2(r: _Reader) -> dict[str, Any]:
    # Gemma2DecoderLayer: input/post_attention/pre_feedforward/post_feedforward norms; even layers slide.
    f = _gemma(r)
    # Gemma2PreTrainedModel._supports_sdpa = False: SDPA has no tanh soft-capping, so "sdpa" runs eager.
    f.update(model_type="gemma2", norms_per_layer=4, has_sdpa=False)
    n = f["num_layers"]
    return _windowed(r, f, tuple("sliding" if (i + 1) % 2 else "full" for i in range(n)))


def _gemma3_text(r: _Reader) -> dict[str, Any]:
    # Gemma3TextConfig: layer i is global when (i + 1) % sliding_window_pattern == 0 (default 6); q/k norms.
    f = _gemma(r)
    f.update(model_type="gemma3_text", norms_per_layer=4, qk_norm="head")
    n = f["num_layers"]
    pattern = r.int("sliding_window_pattern", "_sliding_window_pattern", default=6)
    return _windowed(r, f, tuple("sliding" if (i + 1) % pattern else "full" for i in range(n)))


def _gemma3(r: _Reader) -> dict[str, Any]:
    # Gemma3ForConditionalGeneration: text_config is the decoder; the SigLIP tower and projector are extra.
    text = _nested(r, "text_config", _GEMMA3_TEXT)
    f = _gemma3_text(text)
    f["model_type"] = "gemma3"
    f["tie_word_embeddings"] = r.bool("tie_word_embeddings", default=text.bool("tie_word_embeddings", default=True))
    vision = _nested(r, "vision_config", _GEMMA3_VISION)
    f["extra_params"] = f["image_only_params"] = _siglip_params(vision, f["hidden_size"])  # idle without images
    d, inter, layers = vision.int("hidden_size"), vision.int("intermediate_size"), vision.int("num_hidden_layers")
    # SiglipAttention q/k/v/out_proj and SiglipMLP fc1/fc2, all biased; the projector is a bare Parameter.
    f["extra_linears"] = (
        *(ExtraLinear(n, d, d, layers, True) for n in ("q_proj", "k_proj", "v_proj", "out_proj")),
        ExtraLinear("fc1", d, inter, layers, True), ExtraLinear("fc2", inter, d, layers, True),
    )
    return f


def _siglip_params(v: _Reader, text_hidden: int) -> int:
    # SiglipVisionTransformer (vision_use_head false) + Gemma3MultiModalProjector (projection matrix + RMSNorm).
    d = v.int("hidden_size")
    inter = v.int("intermediate_size")
    layers = v.int("num_hidden_layers")
    patch = v.int("patch_size")
    image = v.int("image_size")
    channels = v.int("num_channels", default=3)
    if v.bool("vision_use_head", default=False):
        raise v.error("vision_use_head true is not supported (Gemma 3 checkpoints set it false)")
    embeddings = channels * patch * patch * d + d + (image // patch) ** 2 * d  # conv patch embedding + positions
    layer = 4 * (d * d + d) + (d * inter + inter) + (inter * d + d) + 2 * 2 * d  # q,k,v,out + fc1,fc2 + 2 LN
    tower = embeddings + layers * layer + 2 * d  # + post_layernorm
    return tower + d * text_hidden + d  # mm_input_projection_weight + mm_soft_emb_norm


def _phi(r: _Reader) -> dict[str, Any]:
    # PhiDecoderLayer: one LayerNorm feeding parallel attention (q/k/v/dense, biased) and MLP (fc1/fc2, biased);
    # biased lm_head. Legacy phi-msft configs spell the sizes n_embd/n_layer/n_head/n_inner/n_positions.
    h = r.int(*_HIDDEN)
    f = _core(r, intermediate_default=4 * h)
    qk_ln = r.bool("qk_layernorm", default=False)
    if qk_ln:
        raise r.error("qk_layernorm true is not supported yet")
    f.update(model_type="phi", tie_word_embeddings=_tied(r, False), gated_mlp=False, qkv_bias=True, o_bias=True,
             mlp_bias=True, lm_head_bias=True, norm="layernorm", norm_bias=True, norms_per_layer=1,
             parallel_residual=True)
    return f


def _phi3(r: _Reader) -> dict[str, Any]:
    # Phi3: fused qkv_proj and gate_up_proj, no biases; sliding_window set but transformers applies it to every layer.
    f = _core(r)
    f.update(model_type="phi3", tie_word_embeddings=_tied(r, False), fused_qkv=True, fused_gate_up=True)
    return _sliding_everywhere(r, f)


def _sliding_everywhere(r: _Reader, f: dict[str, Any]) -> dict[str, Any]:
    """A non-null sliding_window applies to every layer (Mistral, Phi-3); null means full attention."""
    return _windowed(r, f, ("sliding",) * f["num_layers"] if r.raw("sliding_window") is not None else ())


def _deepseek(r: _Reader) -> dict[str, Any]:
    # DeepseekV2/V3: MLA attention (§2.1 of the V2 paper), first_k_dense_replace dense layers, then MoE layers with
    # n_shared_experts always-on experts of moe_intermediate_size each.
    f = _core(r)
    model_type = r.c.get("model_type")
    bias = r.bool("attention_bias", default=False)
    f.update(model_type=model_type, tie_word_embeddings=_tied(r, False), qkv_bias=bias, o_bias=bias)
    qk_rope = r.int("qk_rope_head_dim")
    qk_nope = r.int("qk_nope_head_dim")
    f["mla"] = MLASpec(
        kv_lora_rank=r.int("kv_lora_rank"),
        qk_nope_head_dim=qk_nope,
        qk_rope_head_dim=qk_rope,
        v_head_dim=r.int("v_head_dim"),
        q_lora_rank=r.opt_int("q_lora_rank"),
    )
    f["head_dim"] = qk_nope + qk_rope
    experts = r.opt_int("n_routed_experts")
    if experts:
        freq = r.int("moe_layer_freq", default=1)
        if freq != 1:
            raise r.error(f"moe_layer_freq {freq} is not supported yet (every released DeepSeek uses 1)")
        moe_inter = r.int("moe_intermediate_size")
        f["moe"] = MoESpec(
            num_experts=experts,
            experts_per_token=r.int("num_experts_per_tok"),
            expert_intermediate_size=moe_inter,
            num_shared_experts=r.int("n_shared_experts", default=0, minimum=0),
            shared_intermediate_size=moe_inter,
            first_dense_layers=r.int("first_k_dense_replace", default=0, minimum=0),
            # DeepseekV3TopkRouter (topk_method noaux_tc): a learned e_score_correction_bias of n_routed_experts.
            router_score_bias=r.raw("topk_method") == "noaux_tc",
        )
    return f


def _gpt_oss(r: _Reader) -> dict[str, Any]:
    # GptOss: biased q/k/v/o, per-head attention sinks, router with bias, experts with biases (gate_up + down),
    # layers alternate sliding/full starting with sliding.
    f = _core(r)
    n = f["num_layers"]
    # Attention sinks: no SDPA path, eager in transformers 5.24.
    f.update(model_type="gpt_oss", tie_word_embeddings=_tied(r, False), qkv_bias=True, o_bias=True,
             attention_sinks=True, has_sdpa=False, clamped_glu=True)
    f["moe"] = MoESpec(
        num_experts=r.int("num_local_experts"),
        experts_per_token=r.int("num_experts_per_tok", "experts_per_token"),
        expert_intermediate_size=f["intermediate_size"],
        router_bias=True,
        expert_bias=True,
    )
    return _windowed(r, f, tuple("sliding" if i % 2 == 0 else "full" for i in range(n)))


def _olmo2(r: _Reader) -> dict[str, Any]:
    # Olmo2: norms after attention and after the MLP (no input norm), RMSNorm over the whole q and k projections.
    f = _core(r)
    bias = r.bool("attention_bias", default=False)
    # Olmo2RMSNorm multiplies by its weight in fp32 and casts after: `(w * x).to(dtype)`.
    f.update(model_type="olmo2", tie_word_embeddings=_tied(r, False), qkv_bias=bias, o_bias=bias, qk_norm="full",
             fp32_norm_multiply=True)
    return f


def _gpt2(r: _Reader) -> dict[str, Any]:
    # GPT2: learned positions (n_positions), Conv1D c_attn/c_proj/c_fc all biased, LayerNorm ln_1/ln_2/ln_f, tied.
    h = r.int(*_HIDDEN)
    f = _core(r, intermediate_default=4 * h)
    f.update(model_type="gpt2", tie_word_embeddings=_tied(r, True), gated_mlp=False, qkv_bias=True, o_bias=True,
             mlp_bias=True, norm="layernorm", norm_bias=True, learned_positions=f["max_position_embeddings"] or 0,
             fused_qkv=True, low_precision_softmax=True)  # GPT2Attention: softmax in the compute dtype
    if not f["learned_positions"]:
        raise r.error("missing n_positions")
    return f


def _gpt_bigcode(r: _Reader) -> dict[str, Any]:
    # GPTBigCode: GPT-2 layout with multi_query (one K/V head) by default.
    f = _gpt2(r)
    multi_query = r.bool("multi_query", default=True)
    f.update(model_type="gpt_bigcode", num_kv_heads=1 if multi_query else f["num_heads"], low_precision_softmax=False)
    return f


def _gpt_neox(r: _Reader) -> dict[str, Any]:
    # GPTNeoX: fused query_key_value, dense, dense_h_to_4h/dense_4h_to_h, all biased; untied embed_out.
    f = _core(r)
    bias = r.bool("attention_bias", default=True)
    f.update(model_type="gpt_neox", tie_word_embeddings=_tied(r, False), gated_mlp=False, qkv_bias=bias, o_bias=bias,
             mlp_bias=True, norm="layernorm", norm_bias=True, fused_qkv=True,
             parallel_residual=r.bool("use_parallel_residual", default=True))
    return f


def _bloom(r: _Reader) -> dict[str, Any]:
    # Bloom: ALiBi (no position table), word_embeddings_layernorm, 4h MLP, all biased, tied head.
    h = r.int(*_HIDDEN)
    f = _core(r, intermediate_default=4 * h)
    f.update(model_type="bloom", tie_word_embeddings=_tied(r, True), gated_mlp=False, qkv_bias=True, o_bias=True,
             mlp_bias=True, norm="layernorm", norm_bias=True, embedding_norm=True, intermediate_size=4 * h,
             fused_qkv=True, alibi=True, has_sdpa=False,  # ALiBi: eager in transformers 5.24
             # BloomAttention keeps `attention_scores` (baddbmm) beside the masked `attn_weights` and returns its
             # probabilities, which BloomModel's loop holds in `outputs` until the next block returns (traced)
             eager_extra_scores=2)
    return f


def _opt(r: _Reader) -> dict[str, Any]:
    # OPT: learned positions with a 2-row offset, optional word_embed_proj_dim projections, final LayerNorm only
    # when do_layer_norm_before and not _remove_final_layer_norm (OPTDecoder).
    f = _core(r)
    h = f["hidden_size"]
    bias = r.bool("enable_bias", default=True)
    before = r.bool("do_layer_norm_before", default=True)
    final = before and not r.bool("_remove_final_layer_norm", default=False)
    affine = r.bool("layer_norm_elementwise_affine", default=True)
    if not affine:
        raise r.error("layer_norm_elementwise_affine false is not supported yet")
    proj = r.int("word_embed_proj_dim", default=h)
    f.update(model_type="opt", tie_word_embeddings=_tied(r, True), gated_mlp=False, qkv_bias=bias, o_bias=bias,
             mlp_bias=bias, norm="layernorm", norm_bias=True, final_norm=final,
             learned_positions=(f["max_position_embeddings"] or 0) + 2,
             word_embed_proj_dim=proj if proj != h else None)
    if f["max_position_embeddings"] is None:
        raise r.error("missing max_position_embeddings")
    return f


def _falcon(r: _Reader) -> dict[str, Any]:
    # Falcon (and legacy RefinedWeb/RefinedWebModel): fused query_key_value; new_decoder_architecture uses
    # num_kv_heads groups and two LayerNorms (ln_attn, ln_mlp); else multi_query gives one K/V head and one
    # input_layernorm feeds parallel attention+MLP (parallel_attn).
    h = r.int(*_HIDDEN)
    f = _core(r, intermediate_default=4 * h)
    heads = f["num_heads"]
    new_arch = r.bool("new_decoder_architecture", default=False) or r.c.get("model_type") == "RefinedWeb"
    if new_arch:
        kv = r.int("num_kv_heads", "n_head_kv", "num_key_value_heads", default=heads)
        norms = r.int("num_ln_in_parallel_attn", default=2)
    else:
        kv = 1 if r.bool("multi_query", default=True) else heads
        norms = 1 if r.bool("parallel_attn", default=True) else 2
    bias = r.bool("bias", default=False)
    f.update(model_type="falcon", num_kv_heads=kv, tie_word_embeddings=_tied(r, True), gated_mlp=False,
             qkv_bias=bias, o_bias=bias, mlp_bias=bias, norm="layernorm", norm_bias=True, norms_per_layer=norms, fused_qkv=True,
             parallel_residual=new_arch or r.bool("parallel_attn", default=True),
             intermediate_size=r.int("ffn_hidden_size", default=4 * h),
             # FalconAttention reshapes the broadcast K/V to num_heads before layer_past.update (modeling_falcon.py:
             # `num_kv_heads = self.num_heads if self.new_decoder_architecture`): the cache holds every head
             caches_expanded_kv=new_arch and kv != heads,
             # FalconAttention._split_heads: `key = qkv[..., [-2], :]`, `value = qkv[..., [-1], :]` (index: copies);
             # FalconModel builds a 4-D mask for SDPA whatever the inputs (traced: a c·s mask per token per layer)
             fused_qkv_split_copies=True, sdpa_always_masked=True)
    if r.bool("alibi", default=False):
        raise r.error("alibi true is not supported yet (Falcon-RW checkpoints)")
    return f


def _gptj(r: _Reader) -> dict[str, Any]:
    # GPTJ: unbiased q/k/v/out_proj, biased fc_in/fc_out, one ln_1 feeding parallel attention+MLP, biased lm_head.
    h = r.int(*_HIDDEN)
    f = _core(r, intermediate_default=4 * h)
    f.update(model_type="gptj", tie_word_embeddings=_tied(r, False), gated_mlp=False, mlp_bias=True, lm_head_bias=True,
             norm="layernorm", norm_bias=True, norms_per_layer=1, parallel_residual=True)
    return f


def _mllama(r: _Reader) -> dict[str, Any]:
    # MllamaForConditionalGeneration: text_config is the text model (below); the vision tower and projector are
    # counted as extras, idle in a text-only step like the cross-attention layers.
    text = _nested(r, "text_config", _MLLAMA_TEXT)
    f = _mllama_text(text)
    h = f["hidden_size"]
    vision = _nested(r, "vision_config", _MLLAMA_VISION)
    tower = _mllama_vision_params(vision, h)
    f.update(model_type="mllama", extra_params=f["extra_params"] + tower,
             image_only_params=f["image_only_params"] + tower)
    d, inter = vision.int("hidden_size"), vision.int("intermediate_size")
    layers = vision.int("num_hidden_layers") + vision.int("num_global_layers")
    # MllamaVisionAttention q/k/v/o_proj (no bias), MllamaVisionMLP fc1/fc2 (biased), the projector Linear.
    f["extra_linears"] = (
        *(ExtraLinear(n, d, d, layers) for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
        ExtraLinear("fc1", d, inter, layers, True), ExtraLinear("fc2", inter, d, layers, True),
        ExtraLinear("multi_modal_projector", vision.int("vision_output_dim"), h, 1, True),
    )
    return f


def _mllama_cross_layers(f: dict[str, Any], cross: list[Any]) -> dict[str, Any]:
    """The cross-attention layers (MllamaCrossAttentionDecoderLayer: q/k/v/o as a self-attention layer's, q/k norms,
    two tanh gates, the MLP and two RMSNorms): what a text-only step leaves idle."""
    layers = tuple(sorted({int(i) for i in cross if isinstance(i, int) and 0 <= i < f["num_layers"]}))
    h, i, q = f["hidden_size"], f["intermediate_size"], f["num_heads"] * f["head_dim"]
    kv = f["num_kv_heads"] * f["head_dim"]
    per_layer = 2 * h * q + 2 * h * kv + 3 * h * i + 2 * h + 2 * f["head_dim"] + 2
    return {"image_only_layers": layers, "image_only_params": len(layers) * per_layer}


def _mllama_text(r: _Reader) -> dict[str, Any]:
    # MllamaTextModel (a text_config; `modelmem trace` builds a multimodal checkpoint's language model alone): a Llama
    # decoder whose cross_attention_layers add q/k norms and two tanh gates each, with 8 extra embedding rows.
    f = _core(r)
    f.update(model_type="mllama_text_model", tie_word_embeddings=r.bool("tie_word_embeddings", default=False))
    cross = r.raw("cross_attention_layers") or []
    if not isinstance(cross, list):
        raise r.error(f"cross_attention_layers must be a list, got {cross!r}")
    f["extra_params"] = 8 * f["hidden_size"] + len(cross) * (2 * f["head_dim"] + 2)  # embed_tokens: vocab + 8 rows
    f.update(_mllama_cross_layers(f, cross))
    return f


def _mllama_vision_params(v: _Reader, text_hidden: int) -> int:
    # MllamaVisionModel: patch conv (no bias), class embedding, gated position + tile embeddings, pre/post tile
    # aspect-ratio embeddings, pre/post LayerNorms, a local and a gated global encoder; + the projector Linear.
    d = v.int("hidden_size")
    inter = v.int("intermediate_size")
    patch = v.int("patch_size")
    image = v.int("image_size")
    channels = v.int("num_channels", default=3)
    tiles = v.int("max_num_tiles")
    ratios = v.raw("supported_aspect_ratios")
    if not isinstance(ratios, list) or not ratios:
        raise v.error("missing supported_aspect_ratios")
    out_dim = v.int("vision_output_dim")
    patches = (image // patch) ** 2 + 1
    ratio_ids = len(ratios) + 1
    embeddings = channels * patch * patch * d + d  # patch_embedding + class_embedding
    embeddings += 1 + patches * d + ratio_ids * tiles * patches * d  # gated_positional_embedding
    embeddings += 2 * (ratio_ids * tiles * d + 1)  # pre/post tile positional embeddings (gated)
    layer = 4 * d * d + (d * inter + inter) + (inter * d + d) + 2 * 2 * d
    encoders = v.int("num_hidden_layers") * layer + v.int("num_global_layers") * (layer + 2)  # global: 2 gates
    return embeddings + 2 * 2 * d + encoders + out_dim * text_hidden + text_hidden


def _nested(r: _Reader, key: str, defaults: Mapping[str, Any]) -> _Reader:
    """A sub-config read with its transformers config class defaults, which Hub files rely on (Gemma 3's
    text_config omits num_attention_heads, head_dim and vocab_size)."""
    sub = r.c.get(key)
    if sub is None:
        sub = {}
    if not isinstance(sub, Mapping):
        raise r.error(f"{key} must be an object, got {sub!r}")
    return _Reader(ChainMap(dict(sub), dict(defaults)), f"{r.source} ({key})")


# Config-class defaults for nested sub-configs (transformers' Gemma3TextConfig, SiglipVisionConfig as Gemma3Config
# builds it, MllamaTextConfig, MllamaVisionConfig).
_GEMMA3_TEXT = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131072,
    "sliding_window": 4096, "sliding_window_pattern": 6, "tie_word_embeddings": True,
}
_GEMMA3_VISION = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "image_size": 896, "patch_size": 14, "num_channels": 3, "vision_use_head": False,
}
_MLLAMA_TEXT = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 40,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38], "tie_word_embeddings": False,
}
_MLLAMA_VISION = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_global_layers": 8,
    "attention_heads": 16, "num_channels": 3, "image_size": 448, "patch_size": 14, "max_num_tiles": 4,
    "vision_output_dim": 7680,
    "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
}


_BUILDERS = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3_text,
    "gemma3": _gemma3,
    "phi": _phi,
    "phi-msft": _phi,
    "phi3": _phi3,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "gpt_oss": _gpt_oss,
    "olmo2": _olmo2,
    "gpt2": _gpt2,
    "gpt_bigcode": _gpt_bigcode,
    "gpt_neox": _gpt_neox,
    "bloom": _bloom,
    "opt": _opt,
    "falcon": _falcon,
    "RefinedWeb": _falcon,
    "RefinedWebModel": _falcon,
    "gptj": _gptj,
    "mllama": _mllama,
    "mllama_text_model": _mllama_text,
}
