"""config.json → ModelSpec: family knowledge, legacy keys, and named errors for bad input."""

from __future__ import annotations

import json

import pytest

from modelmem.errors import ConfigError
from modelmem.sources.config import MAX_CONFIG_BYTES, load_config_file, spec_from_config

LLAMA = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "torch_dtype": "float16",
}


def test_llama_defaults_and_dtype():
    spec = spec_from_config(LLAMA, "llama-2-7b", source="x/config.json")
    assert (spec.num_kv_heads, spec.head_dim, spec.dtype) == (32, 128, "fp16")  # kv heads default to heads
    assert spec.layer_kinds == ("full",) * 32
    assert spec.config is LLAMA and spec.source == "x/config.json"


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                                   "intermediate_size"])
def test_missing_field_is_named(field):
    config = {k: v for k, v in LLAMA.items() if k != field}
    with pytest.raises(ConfigError, match=rf"config x/config.json: missing {field}"):
        spec_from_config(config, "m", source="x/config.json")


@pytest.mark.parametrize(("field", "value"), [("hidden_size", "4096"), ("num_hidden_layers", 0),
                                              ("num_attention_heads", True), ("vocab_size", -1)])
def test_bad_values_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        spec_from_config({**LLAMA, field: value}, "m", source="x")


def test_bad_dtype_kv_heads_and_quantization():
    with pytest.raises(ConfigError, match="torch_dtype"):
        spec_from_config({**LLAMA, "torch_dtype": "float13"}, "m")
    with pytest.raises(ConfigError, match="torch_dtype"):
        spec_from_config({**LLAMA, "torch_dtype": ["bfloat16"]}, "m")
    assert spec_from_config({**LLAMA, "torch_dtype": None, "dtype": "bfloat16"}, "m").dtype == "bf16"  # v5 key
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        spec_from_config({**LLAMA, "num_key_value_heads": 5}, "m")
    with pytest.raises(ConfigError, match="quantization_config"):
        spec_from_config({**LLAMA, "quantization_config": "awq"}, "m")
    with pytest.raises(ConfigError, match="JSON object"):
        spec_from_config([1, 2], "m")  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [{"model_type": "bert", "hidden_size": 1024},
                                    {"model_type": "t5", "d_model": 512},
                                    {"model_type": "custom", "is_encoder_decoder": True}])
def test_non_decoders_rejected(config):
    with pytest.raises(ConfigError, match="only decoder LMs are supported"):
        spec_from_config(config, "m")


def test_gpt2_legacy_keys():
    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024,
              "n_ctx": 1024, "n_inner": None, "vocab_size": 50257}
    spec = spec_from_config(config, "gpt2")
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.intermediate_size) == (768, 12, 12, 3072)
    assert spec.learned_positions == 1024 and spec.tie_word_embeddings and not spec.gated_mlp


def test_phi_msft_legacy_keys():
    config = {"model_type": "phi-msft", "n_embd": 2560, "n_layer": 32, "n_head": 32, "n_positions": 2048,
              "rotary_dim": 32, "n_inner": None, "vocab_size": 51200}
    spec = spec_from_config(config, "phi-2")
    assert (spec.model_type, spec.intermediate_size, spec.head_dim, spec.norms_per_layer) == ("phi", 10240, 80, 1)
    assert spec.lm_head_bias and spec.parallel_residual


def test_falcon_legacy_refinedweb():
    rw7 = {"model_type": "RefinedWebModel", "hidden_size": 4544, "n_head": 71, "n_layer": 32, "multi_query": True,
           "parallel_attn": True, "bias": False, "alibi": False, "vocab_size": 65024}
    spec = spec_from_config(rw7, "falcon-7b")
    assert (spec.model_type, spec.num_kv_heads, spec.norms_per_layer, spec.intermediate_size) == ("falcon", 1, 1, 18176)
    rw40 = {"model_type": "RefinedWeb", "hidden_size": 8192, "n_head": 128, "n_head_kv": 8, "n_layer": 60,
            "parallel_attn": True, "bias": False, "alibi": False, "vocab_size": 65024}
    spec = spec_from_config(rw40, "falcon-40b")
    assert (spec.num_kv_heads, spec.norms_per_layer) == (8, 2)
    new = {"model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128, "num_kv_heads": 8,
           "num_hidden_layers": 60, "new_decoder_architecture": True, "vocab_size": 65024}
    assert spec_from_config(new, "falcon-40b").num_kv_heads == 8


def test_sliding_patterns():
    gemma2 = {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
              "sliding_window": 4096}
    spec = spec_from_config(gemma2, "g2")
    assert spec.layer_kinds[:4] == ("sliding", "full", "sliding", "full") and spec.sliding_window == 4096
    gemma3 = {**gemma2, "model_type": "gemma3_text", "sliding_window": 512, "sliding_window_pattern": 6}
    kinds = spec_from_config(gemma3, "g3").layer_kinds
    assert [i for i, k in enumerate(kinds) if k == "full"] == [5, 11, 17, 23]
    mistral = {**LLAMA, "model_type": "mistral", "sliding_window": 4096}
    assert set(spec_from_config(mistral, "m").layer_kinds) == {"sliding"}
    assert spec_from_config({**mistral, "sliding_window": None}, "m").layer_types == ()
    qwen2 = {**LLAMA, "model_type": "qwen2", "use_sliding_window": False, "sliding_window": 131072}
    assert spec_from_config(qwen2, "q").layer_types == ()
    explicit = {**LLAMA, "num_hidden_layers": 2, "sliding_window": 128,
                "layer_types": ["sliding_attention", "full_attention"]}
    assert spec_from_config(explicit, "x").layer_kinds == ("sliding", "full")
    with pytest.raises(ConfigError, match="layer_types"):
        spec_from_config({**explicit, "layer_types": ["full_attention"]}, "x")
    with pytest.raises(ConfigError, match="missing sliding_window"):
        spec_from_config({**gemma2, "sliding_window": None}, "x")


def test_gemma3_nested_text_config_uses_config_class_defaults():
    # The Hub's gemma-3-4b config.json leaves heads, head_dim and vocab to Gemma3TextConfig defaults.
    config = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "hidden_size": 2560,
                                                      "intermediate_size": 10240, "num_hidden_layers": 34,
                                                      "sliding_window": 1024},
              "vision_config": {"model_type": "siglip_vision_model"}, "torch_dtype": "bfloat16"}
    spec = spec_from_config(config, "gemma-3-4b")
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.vocab_size) == (8, 4, 256, 262208)
    assert spec.extra_params == 416866032 + 1152 * 2560 + 1152  # SigLIP tower + projector (validation notes)
    with pytest.raises(ConfigError, match=r"\(text_config\): hidden_size must be"):
        spec_from_config({**config, "text_config": {"hidden_size": "big"}}, "g")


def test_deepseek_and_gpt_oss():
    ds = {"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432, "num_hidden_layers": 61,
          "num_attention_heads": 128, "num_key_value_heads": 128, "vocab_size": 129280, "q_lora_rank": 1536,
          "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
          "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
          "first_k_dense_replace": 3, "moe_layer_freq": 1}
    spec = spec_from_config(ds, "dsv3")
    assert spec.mla.q_lora_rank == 1536 and spec.moe.first_dense_layers == 3
    assert not spec.moe.is_moe_layer(2) and spec.moe.is_moe_layer(3)
    with pytest.raises(ConfigError, match="missing kv_lora_rank"):
        spec_from_config({k: v for k, v in ds.items() if k != "kv_lora_rank"}, "dsv3")
    oss = {"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
           "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088,
           "num_local_experts": 32, "experts_per_token": 4, "sliding_window": 128}
    spec = spec_from_config(oss, "gpt-oss-20b")
    assert spec.layer_kinds[:2] == ("sliding", "full") and spec.attention_sinks and spec.moe.expert_bias


def test_load_config_file(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    spec = load_config_file(folder)
    assert spec.name == "my-model" and spec.source.endswith("config.json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON"):
        load_config_file(folder)
    (folder / "config.json").write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config_file(folder / "config.json")
    (folder / "config.json").write_bytes(b" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config_file(folder)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing")


def test_unknown_wrapper_reads_its_text_config():
    wrapper = {"model_type": "llava", "text_config": {**LLAMA, "model_type": "llama"}, "vision_config": {}}
    spec = spec_from_config(wrapper, "llava")
    assert (spec.model_type, spec.num_layers, spec.extra_params) == ("llama", 32, 0)
    with pytest.raises(ConfigError, match=r"\(text_config\): missing hidden_size"):
        spec_from_config({"model_type": "llava", "text_config": {"model_type": "mistral"}}, "x")


@pytest.mark.parametrize(("config", "expect"), [
    # BLOOM's original configs spell hidden size n_embed and count heads in n_head / layers in n_layer.
    ({"model_type": "bloom", "n_embed": 1024, "n_head": 16, "n_layer": 24, "vocab_size": 250880},
     {"hidden_size": 1024, "intermediate_size": 4096, "embedding_norm": True, "tie_word_embeddings": True}),
    # GPT-J: n_embd/n_layer/n_head/n_positions/rotary_dim, n_inner null → 4·n_embd, biased untied head.
    ({"model_type": "gptj", "n_embd": 4096, "n_layer": 28, "n_head": 16, "n_positions": 2048, "rotary_dim": 64,
      "n_inner": None, "vocab_size": 50400},
     {"intermediate_size": 16384, "head_dim": 256, "lm_head_bias": True, "norms_per_layer": 1}),
    # StarCoder: multi_query → one K/V head; explicit n_inner.
    ({"model_type": "gpt_bigcode", "n_embd": 6144, "n_layer": 40, "n_head": 48, "n_positions": 8192,
      "n_inner": 24576, "multi_query": True, "vocab_size": 49152},
     {"num_kv_heads": 1, "intermediate_size": 24576, "learned_positions": 8192}),
    # OPT-350m: narrow embeddings and post-LayerNorm blocks without a final LayerNorm.
    ({"model_type": "opt", "hidden_size": 1024, "ffn_dim": 4096, "num_hidden_layers": 24,
      "num_attention_heads": 16, "max_position_embeddings": 2048, "vocab_size": 50272, "word_embed_proj_dim": 512,
      "do_layer_norm_before": False},
     {"word_embed_proj_dim": 512, "final_norm": False, "learned_positions": 2050}),
])
def test_family_keys(config, expect):
    spec = spec_from_config(config, "m")
    assert {k: getattr(spec, k) for k in expect} == expect


def test_unknown_moe_family_is_refused_not_miscounted():
    config = {**LLAMA, "model_type": "qwen2_moe", "num_experts": 60, "moe_intermediate_size": 1408}
    with pytest.raises(ConfigError, match="'qwen2_moe' has num_experts"):
        spec_from_config(config, "m")
    assert spec_from_config({**LLAMA, "model_type": "stablelm"}, "m").model_type == "stablelm"
