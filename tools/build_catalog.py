"""Build src/modelmem/catalog/models.json from the shared validation records.

    python tools/build_catalog.py [--validation ../shared/validation] [--check]

Each decoder record becomes an entry holding a config.json as the Hugging Face repository writes it (real key names,
family-specific spellings such as GPT-2's n_embd or Falcon's legacy RefinedWeb keys). The records' structural fields
(qkv_bias, norms_per_layer, …) are not copied into the config: they are used to check that modelmem's reading of the
config agrees with them. Encoder-only and encoder-decoder records (BERT, T0, mt0) are skipped: modelmem plans decoder
LMs only. Sibling repositories with the same architecture (-Instruct, -chat, -it, deduped Pythia…) become aliases,
each with the basis for treating it as the same architecture.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from modelmem.sources.config import spec_from_config  # noqa: E402

OUT = ROOT / "src" / "modelmem" / "catalog" / "models.json"
DEFAULT_VALIDATION = ROOT.parent / "shared" / "validation"

_SAME = "Hub config.json of this repository holds the same architecture fields as the base (a fine-tune of it)"

# sibling id → (base id, basis). Only repositories whose config.json matches the base's architecture.
SIBLINGS: dict[str, tuple[str, str]] = {
    "meta-llama/Llama-2-7b-chat-hf": ("meta-llama/Llama-2-7b-hf", _SAME),
    "meta-llama/Llama-2-13b-chat-hf": ("meta-llama/Llama-2-13b-hf", _SAME),
    "meta-llama/Llama-2-70b-chat-hf": ("meta-llama/Llama-2-70b-hf", _SAME),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("meta-llama/Meta-Llama-3-8B", _SAME),
    "meta-llama/Meta-Llama-3-70B-Instruct": ("meta-llama/Meta-Llama-3-70B", _SAME),
    "meta-llama/Llama-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B", _SAME),
    "meta-llama/Meta-Llama-3.1-8B": ("meta-llama/Llama-3.1-8B", "former name of the same repository"),
    "meta-llama/Meta-Llama-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B", "former name of Llama-3.1-8B-Instruct"),
    "meta-llama/Llama-3.1-70B-Instruct": ("meta-llama/Llama-3.1-70B", _SAME),
    "meta-llama/Meta-Llama-3.1-70B-Instruct": ("meta-llama/Llama-3.1-70B", "former name of Llama-3.1-70B-Instruct"),
    "meta-llama/Llama-3.1-405B-Instruct": ("meta-llama/Llama-3.1-405B", _SAME),
    "meta-llama/Meta-Llama-3.1-405B-Instruct": ("meta-llama/Llama-3.1-405B", "former name of Llama-3.1-405B-Instruct"),
    "meta-llama/Llama-3.2-1B-Instruct": ("meta-llama/Llama-3.2-1B", _SAME),
    "meta-llama/Llama-3.2-3B-Instruct": ("meta-llama/Llama-3.2-3B", _SAME),
    "meta-llama/Llama-3.2-11B-Vision-Instruct": ("meta-llama/Llama-3.2-11B-Vision", _SAME),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", _SAME),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M", _SAME),
    "HuggingFaceTB/SmolLM2-360M-Instruct": ("HuggingFaceTB/SmolLM2-360M", _SAME),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": ("HuggingFaceTB/SmolLM2-1.7B", _SAME),
    "mistralai/Mistral-7B-Instruct-v0.1": ("mistralai/Mistral-7B-v0.1", _SAME),
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistralai/Mistral-7B-v0.3", _SAME),
    "mistralai/Mistral-Nemo-Instruct-2407": ("mistralai/Mistral-Nemo-Base-2407", _SAME),
    "mistralai/Mistral-Small-24B-Instruct-2501": ("mistralai/Mistral-Small-24B-Base-2501", _SAME),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mistralai/Mixtral-8x7B-v0.1", _SAME),
    "Qwen/Qwen2.5-0.5B-Instruct": ("Qwen/Qwen2.5-0.5B", _SAME),
    "Qwen/Qwen2.5-1.5B-Instruct": ("Qwen/Qwen2.5-1.5B", _SAME),
    "Qwen/Qwen2.5-3B-Instruct": ("Qwen/Qwen2.5-3B", _SAME),
    "Qwen/Qwen2.5-7B-Instruct": ("Qwen/Qwen2.5-7B", _SAME),
    "Qwen/Qwen2.5-14B-Instruct": ("Qwen/Qwen2.5-14B", _SAME),
    "Qwen/Qwen2.5-32B-Instruct": ("Qwen/Qwen2.5-32B", _SAME),
    "Qwen/Qwen2.5-72B-Instruct": ("Qwen/Qwen2.5-72B", _SAME),
    "google/gemma-2b-it": ("google/gemma-2b", _SAME),
    "google/gemma-7b-it": ("google/gemma-7b", _SAME),
    "google/gemma-2-2b-it": ("google/gemma-2-2b", _SAME),
    "google/gemma-2-9b-it": ("google/gemma-2-9b", _SAME),
    "google/gemma-2-27b-it": ("google/gemma-2-27b", _SAME),
    "google/gemma-3-1b-it": ("google/gemma-3-1b-pt", _SAME),
    "google/gemma-3-4b-it": ("google/gemma-3-4b-pt", _SAME),
    "google/gemma-3-12b-it": ("google/gemma-3-12b-pt", _SAME),
    "google/gemma-3-27b-it": ("google/gemma-3-27b-pt", _SAME),
    "deepseek-ai/DeepSeek-V2-Lite-Chat": ("deepseek-ai/DeepSeek-V2-Lite", _SAME),
    "allenai/OLMo-2-1124-7B-Instruct": ("allenai/OLMo-2-1124-7B", _SAME),
    "allenai/OLMo-2-1124-13B-Instruct": ("allenai/OLMo-2-1124-13B", _SAME),
    "gpt2": ("openai-community/gpt2", "legacy id of the same repository"),
    "gpt2-xl": ("openai-community/gpt2-xl", "legacy id of the same repository"),
    "EleutherAI/pythia-1b-deduped": ("EleutherAI/pythia-1b", "same config; trained on the deduplicated Pile"),
    "EleutherAI/pythia-1.4b-deduped": ("EleutherAI/pythia-1.4b", "same config; trained on the deduplicated Pile"),
    "EleutherAI/pythia-2.8b-deduped": ("EleutherAI/pythia-2.8b", "same config; trained on the deduplicated Pile"),
    "EleutherAI/pythia-6.9b-deduped": ("EleutherAI/pythia-6.9b", "same config; trained on the deduplicated Pile"),
    "EleutherAI/pythia-12b-deduped": ("EleutherAI/pythia-12b", "same config; trained on the deduplicated Pile"),
    "tiiuae/falcon-7b-instruct": ("tiiuae/falcon-7b", _SAME),
    "tiiuae/falcon-40b-instruct": ("tiiuae/falcon-40b", _SAME),
    "bigcode/starcoder": ("bigcode/octocoder", "OctoCoder is an instruction tune of StarCoder (record notes)"),
    "codellama/CodeLlama-34b-Instruct-hf": ("codellama/CodeLlama-34b-hf", _SAME),
}

_DTYPES = {"float16", "bfloat16", "float32"}


def short_alias(hf_id: str) -> str:
    """`meta-llama/Llama-3.1-8B` → `llama-3.1-8b`: the repository name, lower-cased, without `-hf` or `Meta-`."""
    name = hf_id.rsplit("/", 1)[-1].lower()
    name = re.sub(r"-hf$", "", name)
    return re.sub(r"^meta-", "", name)


def _clean_dtype(value: str | None) -> str | None:
    if not value:
        return None
    token = value.split()[0]
    return token if token in _DTYPES else None


def _clean_act(value: str | None) -> str | None:
    if not value:
        return None
    token = value.split()[0]
    return token if re.fullmatch(r"[a-z_]+", token) else None


def _put(config: dict[str, Any], row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if row.get(key) is not None:
            config[key] = row[key]


def _llama_like(row: dict[str, Any], model_type: str) -> dict[str, Any]:
    c: dict[str, Any] = {"architectures": row["architectures"], "model_type": model_type}
    _put(c, row, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "tie_word_embeddings")
    if _clean_act(row.get("hidden_act")):
        key = "hidden_activation" if model_type.startswith("gemma") and model_type != "gemma" else "hidden_act"
        c[key] = _clean_act(row["hidden_act"])
    _put(c, row, "rope_theta", "rope_scaling", "rms_norm_eps")
    if _clean_dtype(row.get("torch_dtype")):
        c["torch_dtype"] = _clean_dtype(row["torch_dtype"])
    return c


def hf_config(row: dict[str, Any]) -> dict[str, Any]:
    """The config.json the record describes, with the Hub's key names for its family."""
    model_type = row["model_type"].split()[0]
    moe, mla = row.get("moe") or {}, row.get("mla") or {}
    if model_type == "llama":
        c = _llama_like(row, model_type)
        c.update(attention_bias=row["attention_bias"], mlp_bias=row["mlp_bias"])
    elif model_type in ("mistral", "mixtral"):
        c = _llama_like(row, model_type)
        c["sliding_window"] = row.get("sliding_window")
        if model_type == "mixtral":
            c.update(num_local_experts=moe["num_local_experts"], num_experts_per_tok=moe["num_experts_per_tok"])
    elif model_type in ("qwen2", "qwen3", "qwen3_moe"):
        c = _llama_like(row, model_type)
        if model_type != "qwen2":
            c["attention_bias"] = row["attention_bias"]
        c.update(use_sliding_window=bool(row.get("use_sliding_window")), sliding_window=row.get("sliding_window"))
        if model_type == "qwen3_moe":
            c.update(num_experts=moe["num_experts"], num_experts_per_tok=moe["num_experts_per_tok"],
                     moe_intermediate_size=moe["moe_intermediate_size"], norm_topk_prob=moe["norm_topk_prob"],
                     decoder_sparse_step=moe["decoder_sparse_step"], mlp_only_layers=moe["mlp_only_layers"])
    elif model_type in ("gemma", "gemma2", "gemma3_text"):
        c = _llama_like(row, model_type)
        c["attention_bias"] = row["attention_bias"]
        _put(c, row, "sliding_window", "sliding_window_pattern", "query_pre_attn_scalar", "attn_logit_softcapping",
             "final_logit_softcapping", "rope_local_base_freq")
    elif model_type == "gemma3":
        text = _llama_like(row, "gemma3_text")
        text.pop("architectures")
        text.pop("torch_dtype", None)
        _put(text, row, "sliding_window", "sliding_window_pattern", "query_pre_attn_scalar", "rope_local_base_freq")
        c = {"architectures": row["architectures"], "model_type": "gemma3", "text_config": text,
             "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                               "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 896,
                               "patch_size": 14, "vision_use_head": False},
             "mm_tokens_per_image": 256, "torch_dtype": "bfloat16"}
    elif model_type == "phi":
        c = _llama_like(row, "phi")
        rotary = re.search(r"rotary_dim (\d+) of head_dim (\d+)", row["positional"])
        c.update(partial_rotary_factor=int(rotary[1]) / int(rotary[2]), qk_layernorm=False, layer_norm_eps=1e-05)
    elif model_type == "phi3":
        c = _llama_like(row, "phi3")
        _put(c, row, "sliding_window")
    elif model_type in ("deepseek_v2", "deepseek_v3"):
        c = _llama_like(row, model_type)
        c["attention_bias"] = row["attention_bias"]
        c.update({k: mla[k] for k in ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
                                      "v_head_dim")})
        c.update({k: v for k, v in moe.items() if k in (
            "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
            "first_k_dense_replace", "moe_layer_freq", "n_group", "topk_group", "topk_method", "scoring_func",
            "norm_topk_prob", "routed_scaling_factor", "num_nextn_predict_layers") and v is not None})
    elif model_type == "gpt_oss":
        c = _llama_like(row, "gpt_oss")
        n = row["num_hidden_layers"]
        c.update(attention_bias=True, num_local_experts=moe["num_local_experts"],
                 num_experts_per_tok=moe["num_experts_per_tok"], experts_per_token=moe["experts_per_token"],
                 sliding_window=row["sliding_window"],
                 layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
                 quantization_config=row["quantization_config"])
    elif model_type == "olmo2":
        c = _llama_like(row, "olmo2")
        c["attention_bias"] = row["attention_bias"]
    elif model_type in ("gpt2", "gpt_bigcode", "gptj"):
        c = {"architectures": row["architectures"], "model_type": model_type, "n_embd": row["hidden_size"],
             "n_layer": row["num_hidden_layers"], "n_head": row["num_attention_heads"],
             "n_positions": row["max_position_embeddings"], "vocab_size": row["vocab_size"]}
        c["n_inner"] = None if row["intermediate_size"] == 4 * row["hidden_size"] else row["intermediate_size"]
        if model_type == "gpt_bigcode":
            c["multi_query"] = row["num_key_value_heads"] == 1
        if model_type == "gptj":
            c.update(rotary_dim=int(re.search(r"rotary_dim (\d+)", row["positional"])[1]), tie_word_embeddings=False)
        if _clean_act(row.get("hidden_act")):
            c["activation_function"] = _clean_act(row["hidden_act"])
        if _clean_dtype(row.get("torch_dtype")):
            c["torch_dtype"] = _clean_dtype(row["torch_dtype"])
    elif model_type == "gpt_neox":
        c = _llama_like(row, "gpt_neox")
        c.update(rotary_pct=0.25, use_parallel_residual=row["parallel_residual"])
    elif model_type == "bloom":
        c = {"architectures": row["architectures"], "model_type": "bloom", "hidden_size": row["hidden_size"],
             "n_head": row["num_attention_heads"], "n_layer": row["num_hidden_layers"],
             "vocab_size": row["vocab_size"]}
        if _clean_dtype(row.get("torch_dtype")):
            c["torch_dtype"] = _clean_dtype(row["torch_dtype"])
    elif model_type == "opt":
        narrow = row["hf_id"] == "facebook/opt-350m"  # the one OPT with word_embed_proj_dim != hidden (record notes)
        c = {"architectures": row["architectures"], "model_type": "opt", "hidden_size": row["hidden_size"],
             "ffn_dim": row["intermediate_size"], "num_hidden_layers": row["num_hidden_layers"],
             "num_attention_heads": row["num_attention_heads"],
             "max_position_embeddings": row["max_position_embeddings"], "vocab_size": row["vocab_size"],
             "word_embed_proj_dim": 512 if narrow else row["hidden_size"], "do_layer_norm_before": not narrow,
             "enable_bias": True, "layer_norm_elementwise_affine": True, "activation_function": "relu",
             "_remove_final_layer_norm": False}
    elif model_type == "falcon":
        # Legacy RefinedWebModel (7B: multi_query, one shared LayerNorm) / RefinedWeb (40B: grouped K/V, two norms).
        legacy = "RefinedWebModel" if "RefinedWebModel" in row["model_type"] else "RefinedWeb"
        c = {"architectures": ["RWForCausalLM"], "model_type": legacy, "hidden_size": row["hidden_size"],
             "n_head": row["num_attention_heads"], "n_layer": row["num_hidden_layers"],
             "vocab_size": row["vocab_size"], "parallel_attn": True, "bias": False, "alibi": False}
        if legacy == "RefinedWebModel":
            c["multi_query"] = row["num_key_value_heads"] == 1
        else:
            c["n_head_kv"] = row["num_key_value_heads"]
        if _clean_dtype(row.get("torch_dtype")):
            c["torch_dtype"] = _clean_dtype(row["torch_dtype"])
    elif model_type == "mllama":
        text = {"model_type": "mllama_text_model", "hidden_size": row["hidden_size"], "intermediate_size": 14336,
                "num_hidden_layers": row["num_hidden_layers"], "num_attention_heads": row["num_attention_heads"],
                "num_key_value_heads": row["num_key_value_heads"], "vocab_size": row["vocab_size"],
                "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38], "max_position_embeddings": 131072,
                "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
                "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
        v = row["vision_config"]
        vision = {"model_type": "mllama_vision_model", "hidden_size": v["hidden_size"], "image_size": v["image_size"],
                  "patch_size": v["patch_size"], "num_hidden_layers": v["num_hidden_layers"],
                  "num_global_layers": v["num_global_layers"], "attention_heads": 16, "intermediate_size": 5120,
                  "max_num_tiles": 4, "num_channels": 3, "vision_output_dim": 7680,
                  "intermediate_layers_indices": [3, 7, 15, 23, 30],
                  "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]}
        c = {"architectures": row["architectures"], "model_type": "mllama", "text_config": text,
             "vision_config": vision, "torch_dtype": "bfloat16"}
    else:
        raise SystemExit(f"{row['hf_id']}: no config template for model_type {model_type!r}")
    if row.get("quantization_config") and model_type != "gpt_oss":
        c["quantization_config"] = {k: v for k, v in row["quantization_config"].items()
                                    if k in ("quant_method", "bits", "group_size")}
    return c


def _check(row: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Disagreements between modelmem's reading of the config and the record's structural fields."""
    spec = spec_from_config(config, row["hf_id"])
    expect = {
        "hidden_size": spec.hidden_size, "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
        "vocab_size": spec.vocab_size, "tie_word_embeddings": spec.tie_word_embeddings,
        "qkv_bias": spec.qkv_bias, "o_proj_bias": spec.o_bias, "lm_head_bias": spec.lm_head_bias,
        "norm_has_bias": spec.norm_bias, "parallel_residual": spec.parallel_residual,
        "norms_per_layer": spec.norms_per_layer,
    }
    if spec.mla is None:
        expect["head_dim"] = spec.head_dim
    if spec.moe is None and row["model_type"].split()[0] != "mllama":
        expect["intermediate_size"] = spec.intermediate_size
    if not (spec.moe and spec.moe.expert_bias):
        expect["mlp_bias"] = spec.mlp_bias
    return [f"{k}: record {row[k]!r}, spec {v!r}" for k, v in expect.items()
            if row.get(k) is not None and row[k] != v]


def build(validation: Path) -> list[dict[str, Any]]:
    rows = []
    for name in ("models.jsonl", "extra_models.jsonl"):
        with (validation / name).open() as f:
            rows += [json.loads(line) for line in f if line.strip()]
    entries, problems = [], []
    for row in rows:
        if row.get("encoder_only") or row.get("encoder_decoder"):
            continue
        config = hf_config(row)
        problems += [f"{row['hf_id']}: {p}" for p in _check(row, config)]
        kind = row.get("param_count_kind") or "withheld"
        count = row.get("param_count") if not kind.startswith("withheld") else None
        siblings = [{"id": s, "source": basis} for s, (base, basis) in SIBLINGS.items() if base == row["hf_id"]]
        own = short_alias(row["hf_id"])  # first: the name listings show
        extra = {short_alias(s["id"]) for s in siblings}
        bare = re.sub(r"-(instruct|it|chat)$", "", own)  # an instruct-only release also answers to its bare name
        if bare != own and not any(short_alias(r["hf_id"]) == bare for r in rows):
            extra.add(bare)
        aliases = [own, *sorted(extra - {own})]
        entries.append({
            "id": row["hf_id"],
            "family": row["family"],
            "aliases": aliases,
            "siblings": siblings,
            "param_count": count,
            "param_count_kind": kind,
            "active_param_count": row.get("active_param_count"),
            "source": {"config": row.get("config_sources") or [], "count": row.get("count_sources") or []},
            "config": config,
        })
    names: dict[str, str] = {}
    for e in entries:
        for n in [e["id"], *e["aliases"], *(s["id"] for s in e["siblings"])]:
            if names.setdefault(n.lower(), e["id"]) != e["id"]:
                problems.append(f"name {n!r} used by {names[n.lower()]} and {e['id']}")
    unknown = set(s for s, (base, _) in SIBLINGS.items()) - {s["id"] for e in entries for s in e["siblings"]}
    problems += [f"sibling {s} has no base entry" for s in sorted(unknown)]
    if problems:
        raise SystemExit("catalog problems:\n  " + "\n  ".join(problems))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", type=Path, default=DEFAULT_VALIDATION)
    parser.add_argument("--check", action="store_true", help="fail if models.json is not what this would write")
    args = parser.parse_args()
    text = json.dumps({"models": build(args.validation)}, indent=1, ensure_ascii=False) + "\n"
    if args.check:
        if OUT.read_text() != text:
            raise SystemExit(f"{OUT} is stale; run python tools/build_catalog.py")
        return
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
