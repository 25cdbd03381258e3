"""Parameter counts against published figures, component checks from first principles, PEFT LoRA counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelmem.errors import ConfigError, InvalidJobError, UnknownModelError
from modelmem.counts import count_params, default_lora_targets, linear_modules, lora_trainable_params
from modelmem.sources.config import spec_from_config

VALIDATION = Path(__file__).parents[2] / "shared" / "validation"

LLAMA2_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
}
LLAMA3_8B = {**LLAMA2_7B, "intermediate_size": 14336, "num_key_value_heads": 8, "vocab_size": 128256}


def test_llama2_7b_components():
    p = count_params(spec_from_config(LLAMA2_7B, "llama-2-7b"))
    assert p.embeddings == 32000 * 4096
    assert p.lm_head == 32000 * 4096  # untied
    assert p.attention == 32 * 4 * 4096 * 4096  # q, k, v, o are all 4096x4096 (MHA)
    assert p.mlp == 32 * 3 * 4096 * 11008
    assert p.norms == (2 * 32 + 1) * 4096  # two RMSNorms per layer + final
    assert p.total == p.active == 6_738_415_616  # Meta's published 6.74B; HF total minus 2048 inv_freq buffers


def test_tied_embeddings_counted_once():
    tied = count_params(spec_from_config({**LLAMA2_7B, "tie_word_embeddings": True}, "t"))
    assert tied.lm_head == 0 and tied.total == 6_738_415_616 - 32000 * 4096


def test_gpt2_small_first_principles():
    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024,
              "vocab_size": 50257}
    p = count_params(spec_from_config(config, "gpt2"))
    assert p.position_embeddings == 1024 * 768
    # per block: c_attn 768x2304+2304, c_proj 768x768+768, c_fc 768x3072+3072, c_proj 3072x768+768, 2 LayerNorms
    block = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 2 * 768
    assert p.total == 50257 * 768 + 1024 * 768 + 12 * block + 2 * 768 == 124_439_808  # GPT-2 small, tied head


def test_lora_peft_counts():
    l2 = spec_from_config(LLAMA2_7B, "llama-2-7b")
    # r=8 on q_proj and v_proj: 32 layers x 2 modules x 8 x (4096 + 4096) = 4,194,304 (PEFT's print for Llama-2-7B)
    assert lora_trainable_params(l2, 8, "q_proj,v_proj") == 32 * 2 * 8 * 8192 == 4_194_304
    assert lora_trainable_params(l2, 8, "default") == 4_194_304
    l3 = spec_from_config(LLAMA3_8B, "llama-3-8b")
    # r=16 all-linear: per layer q 4096+4096, k 4096+1024, v 4096+1024, o 4096+4096,
    # gate/up 2x(4096+14336), down 14336+4096 → 8192+5120+5120+8192+36864+18432 = 81,920; x16 x32 = 41,943,040
    assert lora_trainable_params(l3, 16, "all-linear") == 81_920 * 16 * 32 == 41_943_040
    # lm_head only when named: 16 x (4096 + 128256)
    assert lora_trainable_params(l3, 16, "lm_head") == 16 * (4096 + 128256)


def test_lora_errors_name_the_modules():
    spec = spec_from_config(LLAMA2_7B, "llama-2-7b")
    with pytest.raises(InvalidJobError, match=r"lora_targets: 'query_key_value'.*q_proj"):
        lora_trainable_params(spec, 8, "q_proj,query_key_value")
    with pytest.raises(InvalidJobError, match="lora_rank"):
        lora_trainable_params(spec, 0, "all-linear")


def test_default_targets_per_family():
    neox = {"model_type": "gpt_neox", "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6,
            "num_attention_heads": 8, "vocab_size": 50304}
    spec = spec_from_config(neox, "pythia-70m")
    assert default_lora_targets(spec) == ("query_key_value",)
    # r=8 query_key_value: 6 x 8 x (512 + 1536)
    assert lora_trainable_params(spec, 8, "default") == 6 * 8 * 2048
    assert {m.name for m in linear_modules(spec)} == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h",
                                                      "lm_head"}


def test_linear_modules_sum_to_linear_params():
    spec = spec_from_config(LLAMA3_8B, "llama-3-8b")
    p = count_params(spec)
    assert sum(m.params for m in linear_modules(spec)) == p.attention + p.mlp + p.lm_head


def test_moe_components_and_fused_expert_lora():
    mixtral = {**LLAMA3_8B, "model_type": "mixtral", "vocab_size": 32000, "num_local_experts": 8,
               "num_experts_per_tok": 2}
    spec = spec_from_config(mixtral, "mixtral-8x7b")
    p = count_params(spec)
    assert p.experts == 32 * 8 * 3 * 4096 * 14336 and p.router == 32 * 8 * 4096
    assert p.active == p.total - p.experts + p.experts // 4  # 2 of 8 experts
    assert all(m.expert for m in linear_modules(spec) if m.name in ("gate_up_proj",))
    # PEFT 0.21.2 + transformers 5.24, r=8 all-linear (measured: 179,832,832). Per layer: attention
    # 8×(8192+5120+5120+8192) = 212,992; router gate.weight 8×(4096+8) = 32,832; experts.gate_up_proj
    # [8, 28672, 4096] with w1+w3 fused at rank 16: 16×8×(4096+28672) = 4,194,304; experts.down_proj
    # [8, 4096, 14336]: 8×8×(14336+4096) = 1,179,648 → 5,619,776 × 32 layers.
    assert lora_trainable_params(spec, 8, "all-linear") == 32 * (212_992 + 32_832 + 4_194_304 + 1_179_648)
    assert lora_trainable_params(spec, 8, "all-linear") == 179_832_832
    assert lora_trainable_params(spec, 8, "w2") == 32 * 1_179_648
    with pytest.raises(InvalidJobError, match="w1 together with its fused partner"):
        lora_trainable_params(spec, 8, "w1")  # PEFT: cannot convert w1 without also targeting w3


# ---------------------------------------------------------------------------------------------------------------
# Every validation record with a count: the catalog spec reproduces it exactly.


def _records() -> list[dict]:
    rows = []
    for name in ("models.jsonl", "extra_models.jsonl"):
        with (VALIDATION / name).open() as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


RECORDS = _records() if VALIDATION.is_dir() else []
COUNTED = [r for r in RECORDS if isinstance(r.get("param_count"), int)]


def test_validation_records_found():
    assert len(COUNTED) >= 60, f"expected the shared validation records under {VALIDATION}"


@pytest.mark.parametrize("row", COUNTED, ids=[r["hf_id"] for r in COUNTED])
def test_count_matches_record(row):
    from modelmem.catalog.models import lookup

    if row.get("encoder_only") or row.get("encoder_decoder"):
        # BERT is encoder-only: not in the decoder catalog, and its config is refused by name.
        with pytest.raises(ConfigError, match="only decoder LMs"):
            spec_from_config({"model_type": row["model_type"], "hidden_size": row["hidden_size"]}, row["hf_id"])
        return
    spec = lookup(row["hf_id"])
    counts = count_params(spec)
    if row["model_type"].startswith("gemma3 ("):
        # Multimodal Gemma 3: the record's param_count is the text stack; the checkpoint total (vision tower +
        # projector included, per the record's safetensors_total_note) is what the model loads.
        assert counts.total == row["safetensors_total"]
        assert counts.total - spec.extra_params == row["param_count"]
    else:
        assert counts.total == row["param_count"]
    if row.get("active_param_count") is not None:
        assert counts.active == row["active_param_count"]


@pytest.mark.parametrize("row", [r for r in RECORDS if not isinstance(r.get("param_count"), int)],
                         ids=[r["hf_id"] for r in RECORDS if not isinstance(r.get("param_count"), int)])
def test_uncounted_records_still_parse(row):
    from modelmem.catalog.models import lookup

    if row.get("encoder_only") or row.get("encoder_decoder"):
        with pytest.raises(UnknownModelError):
            lookup(row["hf_id"])
        return
    assert count_params(lookup(row["hf_id"])).total > 0


def test_deepseek_v2_lite_components():
    from modelmem.catalog.models import lookup

    p = count_params(lookup("deepseek-ai/DeepSeek-V2-Lite"))
    h, L, heads = 2048, 27, 16
    # MLA per layer: q_proj h→16·(128+64), kv_a h→512+64, kv_b 512→16·(128+128), o 16·128→h
    mla = h * heads * 192 + h * 576 + 512 * heads * 256 + heads * 128 * h
    assert p.attention == L * mla
    assert p.router == 26 * 64 * h and p.experts == 26 * 64 * 3 * h * 1408
    assert p.mlp == 3 * h * 10944 + 26 * 3 * h * 2 * 1408  # first dense layer + two shared experts per MoE layer


def test_linear_modules_cover_every_catalog_model():
    # The listed linears (biases included) are exactly the projection parameters count_params reports:
    # attention + MLPs + routed experts + an untied head (+ OPT's project_in/out). Norms, routers, sinks,
    # embeddings are not nn.Linear; vision-tower linears come from spec.extra_linears.
    from modelmem.catalog.models import entries, lookup

    for entry in entries():
        spec = lookup(entry.id)
        p = count_params(spec)
        listed = sum(m.params for m in linear_modules(spec) if not (m.name == "lm_head" and spec.tie_word_embeddings))
        projections = 2 * spec.hidden_size * spec.word_embed_proj_dim if spec.word_embed_proj_dim else 0
        vision = sum(x.count * (x.in_features * x.out_features + (x.out_features if x.bias else 0))
                     for x in spec.extra_linears)
        assert listed == p.attention + p.mlp + p.experts + p.lm_head + projections + vision, entry.id


@pytest.mark.parametrize(("model", "rank", "targets", "expected"), [
    # GPT-2 small, PEFT default c_attn (Conv1D 768→2304): 12 × 8 × (768 + 2304) = 294,912
    ("gpt2", 8, "default", 12 * 8 * (768 + 2304)),
    # Falcon-7B query_key_value 4544→4672 (71 q heads + 1 k + 1 v, ×64): 32 × 16 × (4544 + 4672) = 4,718,592
    ("falcon-7b", 16, "default", 4_718_592),
    # Mistral-7B q,k,v,o: 32 × 8 × ((4096+4096) + 2×(4096+1024) + (4096+4096)) = 6,815,744
    ("mistral-7b-v0.1", 8, "q_proj,k_proj,v_proj,o_proj", 6_815_744),
    # Phi-2 PEFT default q_proj,v_proj,fc1,fc2: 32 × 8 × (2×5120 + 2×12800) = 9,175,040
    ("phi-2", 8, "default", 9_175_040),
])
def test_lora_known_counts(model, rank, targets, expected):
    from modelmem.catalog.models import lookup

    assert lora_trainable_params(lookup(model), rank, targets) == expected


@pytest.mark.parametrize(("model", "targets", "expected"), [
    # Measured with PEFT 0.21.2 + transformers 5.24 (models built on the meta device), r=8.
    # Qwen3-30B-A3B: attention 48×8×(2048+4096 + 2×(2048+512) + 4096+2048) = 6,684,672; per MoE layer router
    # 8×(2048+128) = 17,408, gate_up 16×128×(2048+1536) = 7,340,032, down 8×128×(768+2048) = 2,883,584.
    ("Qwen/Qwen3-30B-A3B", "all-linear", 6_684_672 + 48 * (17_408 + 7_340_032 + 2_883_584)),
    # DeepSeek-V2-Lite: gate_proj/up_proj/down_proj are remapped onto the routed experts only, so the dense first
    # layer and the shared experts get no LoRA: attention 3,552,768 + 26 × (16,896 + 4,980,736 + 1,769,472).
    ("deepseek-ai/DeepSeek-V2-Lite", "all-linear", 179_497_472),
    # gpt-oss: experts and router are Parameters PEFT does not convert; attention only.
    ("openai/gpt-oss-20b", "all-linear", 3_981_312),
    # Gemma 3 4B: text 14,901,248 + SigLIP 27 × 8 × (4×2304 + 2×5456) = 4,347,648.
    ("google/gemma-3-4b-pt", "all-linear", 14_901_248 + 4_347_648),
    # Llama 3.2 Vision: text 26,214,400 + vision 40 × 8 × (4×2560 + 2×6400) + projector 8×(7680+4096).
    ("meta-llama/Llama-3.2-11B-Vision", "all-linear", 26_214_400 + 40 * 8 * 23_040 + 8 * 11_776),
])
def test_lora_moe_and_multimodal_match_peft(model, targets, expected):
    from modelmem.catalog.models import lookup

    assert lora_trainable_params(lookup(model), 8, targets) == expected


# ---------------------------------------------------------------------------------------------------------------
# Cross-check against the libraries themselves, when the `trace` extra is installed: transformers builds each catalog
# model on the meta device (no memory) and PyTorch reports its parameters; PEFT wraps it for LoRA.

_CATALOG_IDS = [e["id"] for e in json.loads(
    (Path(__file__).parents[1] / "src" / "modelmem" / "catalog" / "models.json").read_text())["models"]]


def _hf_model(hf_id: str):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from modelmem.catalog.models import lookup

    config = dict(lookup(hf_id).config)
    model_type = config.pop("model_type")
    if model_type in ("RefinedWeb", "RefinedWebModel"):
        # transformers 5 dropped the legacy RW classes; FalconConfig spells the same facts with new keys.
        config = {"hidden_size": config["hidden_size"], "num_attention_heads": config["n_head"],
                  "num_hidden_layers": config["n_layer"], "vocab_size": config["vocab_size"],
                  "new_decoder_architecture": model_type == "RefinedWeb", "num_kv_heads": config.get("n_head_kv"),
                  "multi_query": config.get("multi_query", True), "parallel_attn": True, "bias": False}
        model_type = "falcon"
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    auto = transformers.AutoModelForImageTextToText if model_type in ("gemma3", "mllama") else \
        transformers.AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(hf_config)


@pytest.mark.parametrize("hf_id", _CATALOG_IDS)
def test_counts_and_linears_match_transformers(hf_id):
    import collections

    from modelmem.catalog.models import lookup

    model = _hf_model(hf_id)
    torch = pytest.importorskip("torch")
    from transformers.pytorch_utils import Conv1D

    spec = lookup(hf_id)
    # transformers registers DeepSeek-V3's e_score_correction_bias as a buffer; the checkpoint and DeepSeek's own
    # modeling_deepseek.py (MoEGate) hold it as a parameter, which modelmem counts.
    score_bias = sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    assert count_params(spec).total == sum(p.numel() for p in model.parameters()) + score_bias
    theirs = collections.Counter()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            theirs[name.rsplit(".", 1)[-1], module.in_features, module.out_features, module.bias is not None] += 1
        elif isinstance(module, Conv1D):  # GPT-2 family: weight is (in, out)
            theirs[name.rsplit(".", 1)[-1], *module.weight.shape, module.bias is not None] += 1
    ours = collections.Counter()
    for m in linear_modules(spec):
        if not m.expert:
            ours[m.name, m.in_features, m.out_features, m.bias] += m.count
    assert ours == theirs


@pytest.mark.parametrize("hf_id", [
    "meta-llama/Llama-2-7b-hf", "openai-community/gpt2", "tiiuae/falcon-7b", "EleutherAI/pythia-70m",
    "microsoft/phi-2", "microsoft/Phi-3-mini-4k-instruct", "facebook/opt-350m", "bigcode/octocoder",
    "mistralai/Mixtral-8x7B-v0.1", "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V2-Lite", "openai/gpt-oss-20b",
    "google/gemma-3-4b-pt", "meta-llama/Llama-3.2-11B-Vision",
])
def test_lora_all_linear_matches_peft(hf_id):
    peft = pytest.importorskip("peft")
    from modelmem.catalog.models import lookup

    wrapped = peft.get_peft_model(_hf_model(hf_id), peft.LoraConfig(r=8, target_modules="all-linear"))
    measured = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert lora_trainable_params(lookup(hf_id), 8, "all-linear") == measured
