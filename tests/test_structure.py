"""Issue 8's structure: family facts are typed spec fields, phases are typed with computed totals, no import cycle."""

import re
from pathlib import Path

import modelmem
from modelmem.result import InferenceComponents, TrainingComponents
from modelmem.sources.config import spec_from_config

SRC = Path(__file__).resolve().parents[1] / "src" / "modelmem"


def test_memory_reads_no_model_type_and_no_raw_config():
    for path in (SRC / "memory").glob("*.py"):
        text = path.read_text()
        assert "model_type" not in text, path.name
        assert not re.search(r"\.config\b", text), path.name


def test_seed_and_trainable_do_not_import_plan():
    for name in ("seed.py", "trainable.py", "model.py"):
        assert "modelmem.plan" not in (SRC / name).read_text(), name


def test_builders_set_family_facts_once():
    gemma2 = spec_from_config({"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "head_dim": 16, "vocab_size": 256, "sliding_window": 32,
                               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                               "hidden_activation": "gelu_pytorch_tanh"}, "g2")
    assert (gemma2.has_sdpa, gemma2.fp32_norm_multiply, gemma2.attn_logit_softcap, gemma2.final_logit_softcap) == \
        (False, True, 50.0, 30.0)
    assert gemma2.activation == "gelu_pytorch_tanh"
    bloom = spec_from_config({"model_type": "bloom", "n_embed": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256,
                              "hidden_dropout": 0.1}, "b")
    assert bloom.alibi and bloom.fused_qkv and bloom.residual_dropout == 0.1
    neox = spec_from_config({"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 256,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256,
                             "rotary_pct": 0.25}, "n")
    assert neox.partial_rotary == 0.25 and neox.fused_qkv and neox.parallel_residual


def test_components_are_typed_and_total_their_parts():
    t = TrainingComponents(weights=3, gradients=4, logits=5)
    assert t.total == 12 and dict(t)["gradients"] == 4 and list(t)[0] == "weights"
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="lora", num_gpus=1)
    assert isinstance(est.per_gpu.components, TrainingComponents)
    assert est.per_gpu.allocated_peak == est.per_gpu.components.total
    assert isinstance(modelmem.estimate("meta-llama/Llama-3.1-8B", num_gpus=1).per_gpu.components, InferenceComponents)
