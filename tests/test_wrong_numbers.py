"""Issue 8, item 7: numbers that were wrong, each checked against a value worked out by hand from the architecture."""

from __future__ import annotations

import modelmem
from modelmem.counts import count_params
from modelmem.sources.config import spec_from_config
from modelmem.sources.module import from_module

GIB = 2**30


def test_quantization_also_quantizes_moe_experts_where_the_runtime_does():
    # Mixtral-8x7B (32 layers, h 4096, 8 experts of 14336, GQA 8 KV heads, vocab 32000, untied head). bitsandbytes
    # nf4: 4 bits + one fp32 absmax per 64 weights = 0.5625 bytes per weight, for every linear but lm_head.
    attention = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024)
    experts = 32 * 8 * 3 * 4096 * 14336
    rest = 2 * 32000 * 4096 + 32 * 2 * 4096 + 4096 + 32 * 8 * 4096  # embeddings, head, norms, routers in bf16
    expected = int((attention + experts) * (0.5 + 4 / 64)) + rest * 2
    # transformers 4.x (experts are nn.Linear modules) quantizes them.
    est = modelmem.estimate("mistralai/Mixtral-8x7B-v0.1", quant="nf4", runtime_version="4.46", num_gpus=1)
    assert abs(est.per_gpu.components["weights"] - expected) <= 1
    assert 24 * GIB < expected < 25 * GIB
    # transformers 5 fuses experts into 3-D Parameters that bitsandbytes skips (bitsandbytes#1849): they stay bf16.
    v5 = modelmem.estimate("mistralai/Mixtral-8x7B-v0.1", quant="nf4", num_gpus=1)
    assert v5.per_gpu.components["weights"] == int(attention * (0.5 + 4 / 64)) + (rest + experts) * 2
    assert any("leaves the routed experts in bf16" in n for n in v5.per_gpu.notes)  # and the output says so
    # Fine-grained fp8 replaces the `.experts` module itself (transformers integrations/finegrained_fp8.py
    # FP8Experts): one byte per weight plus per-row fp32 scales (under 0.1 % here), experts included.
    fp8 = modelmem.estimate("mistralai/Mixtral-8x7B-v0.1", quant="fp8", mode="inference", num_gpus=1)
    assert abs(fp8.per_gpu.components["weights"] - ((attention + experts) + rest * 2)) < 0.001 * (attention + experts)
    assert not any("routed experts" in n for n in fp8.per_gpu.notes)


def test_offloading_params_moves_the_16bit_weights_too():
    # Llama-2-7B full training, mixed precision, ZeRO-3 on 8 GPUs: offloading the optimizer leaves each GPU its
    # eighth of the bf16 copies of the linear weights; offloading the parameters leaves none.
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 32000 * 4096
    job = dict(mode="train", strategy="zero3", num_gpus=8)
    opt = modelmem.estimate("meta-llama/Llama-2-7b-hf", offload="optimizer", **job).per_gpu.components
    par = modelmem.estimate("meta-llama/Llama-2-7b-hf", offload="params", **job).per_gpu.components
    assert opt["weights"] == linear * 2 // 8
    assert par["weights"] == 0


def test_lora_weights_hold_the_base_and_the_adapters():
    # pythia-410m: 405,334,016 base parameters (Biderman et al. 2023, Table 1 counts); PEFT's default target is
    # query_key_value (1024 → 3072) in each of 24 layers: r × (1024 + 3072) × 24 adapter parameters. Pure bf16.
    for rank in (8, 8192):
        adapters = rank * (1024 + 3072) * 24
        est = modelmem.estimate("EleutherAI/pythia-410m", mode="lora", precision="pure", lora_rank=rank, num_gpus=1)
        assert est.per_gpu.components["weights"] == (405_334_016 + adapters) * 2


class _Param:
    def __init__(self, shape, requires_grad=False):
        self.shape, self.dtype, self.requires_grad = shape, "torch.bfloat16", requires_grad

    def element_size(self):
        return 2


class _Config:
    def to_dict(self):
        return {"_name_or_path": "tiny/llama", "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256}


class _LoraConfig:
    lora_alpha = 32


class _PeftModel:
    """PEFT's parameter names: <module>.lora_A.<adapter>.weight is (r, in), lora_B (out, r)."""

    config = _Config()
    peft_config = {"default": _LoraConfig()}

    def named_parameters(self):
        yield "base_model.model.model.embed_tokens.weight", _Param((256, 64))
        for i in range(2):
            pre = f"base_model.model.model.layers.{i}.self_attn"
            yield f"{pre}.q_proj.base_layer.weight", _Param((64, 64))
            yield f"{pre}.q_proj.lora_A.default.weight", _Param((16, 64), True)
            yield f"{pre}.q_proj.lora_B.default.weight", _Param((64, 16), True)
            yield f"{pre}.v_proj.base_layer.weight", _Param((32, 64))
            yield f"{pre}.v_proj.lora_A.default.weight", _Param((16, 64), True)
            yield f"{pre}.v_proj.lora_B.default.weight", _Param((32, 16), True)


def test_a_live_peft_model_is_estimated_with_its_own_rank_and_targets():
    spec = from_module(_PeftModel())
    est = modelmem.estimate(spec, num_gpus=1)
    assert est.job.mode == "lora" and est.job.lora_rank == 16 and est.job.lora_alpha == 32
    assert set(est.job.lora_targets.split(",")) == {"q_proj", "v_proj"}
    assert est.model.trainable_params == 2 * (16 * (64 + 64) + 16 * (64 + 32))
    assert modelmem.params(spec).trainable == est.model.trainable_params
    # What the caller says still wins.
    assert modelmem.estimate(spec, mode="lora", lora_rank=4, num_gpus=1).job.lora_rank == 4
    assert modelmem.estimate(spec, mode="inference", num_gpus=1).model.trainable_params == 0


def test_deepseek_v3_router_correction_bias_is_counted():
    # DeepSeek-V3's MoEGate holds e_score_correction_bias = nn.Parameter(n_routed_experts) when topk_method is
    # noaux_tc: one per expert per MoE layer (here 4 layers, the first dense: 3 MoE layers × 16 experts).
    config = {"model_type": "deepseek_v3", "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 64,
              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000,
              "kv_lora_rank": 32, "q_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
              "n_routed_experts": 16, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1}
    greedy = count_params(spec_from_config({**config, "topk_method": "greedy"}, "v2-style"))
    noaux = count_params(spec_from_config({**config, "topk_method": "noaux_tc"}, "v3-style"))
    assert noaux.router - greedy.router == 3 * 16
    assert noaux.total - greedy.total == 3 * 16
