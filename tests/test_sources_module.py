"""Live modules by duck typing: PEFT's counting rules and line, exact stored bytes, no torch needed."""

from __future__ import annotations

import pytest

from modelmem.errors import SourceError
from modelmem.sources.module import (
    from_module,
    module_params,
    print_trainable_parameters,
    trainable_line,
)


class FakeParam:
    def __init__(self, shape, dtype="torch.bfloat16", requires_grad=True, element=2):
        self.shape, self.dtype, self.requires_grad, self._element = shape, dtype, requires_grad, element

    def element_size(self):
        return self._element


class Params4bit(FakeParam):
    """Stands in for bitsandbytes.nn.Params4bit: uint8 storage holding two 4-bit weights per byte."""

    quant_type = "nf4"


class FakeModel:
    def __init__(self, params, config=None):
        self._params = params
        if config is not None:
            self.config = config

    def named_parameters(self):
        return iter(self._params)


class FakeConfig:
    def __init__(self, d):
        self._d = d

    def to_dict(self):
        return dict(self._d)


LLAMA = {
    "_name_or_path": "tiny/llama", "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256,
    "torch_dtype": "bfloat16",
}


def lora_model():
    # A frozen 64x64 bf16 base weight plus rank-8 LoRA A (8x64) and B (64x8) in fp32, trainable.
    return FakeModel([
        ("base.weight", FakeParam((64, 64), requires_grad=False)),
        ("lora_A.weight", FakeParam((8, 64), "torch.float32", element=4)),
        ("lora_B.weight", FakeParam((64, 8), "torch.float32", element=4)),
    ])


def test_the_seed_line_format():
    assert trainable_line(4_194_304, 6_742_609_920) == (
        "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
    )


def test_counts_and_bytes():
    counts = module_params(lora_model())
    assert counts.total == 4096 + 512 + 512
    assert counts.trainable == 1024
    assert counts.stored_bytes == 4096 * 2 + 1024 * 4
    assert counts.trainable_bytes == 1024 * 4
    assert counts.bytes_by_dtype() == {"bf16": 8192, "fp32": 4096}


def test_print_trainable_parameters(capsys):
    print_trainable_parameters(lora_model())
    # 1024 / 5120 = 20%
    assert capsys.readouterr().out == "trainable params: 1,024 || all params: 5,120 || trainable%: 20.0000\n"


def test_params4bit_counts_two_weights_per_storage_byte():
    # A 64x64 linear in NF4 is stored as 2048 uint8 values ([2048, 1]); PEFT counts 2048 x 2 x 1 = 4096.
    counts = module_params(FakeModel([("q.weight", Params4bit((2048, 1), "torch.uint8", False, element=1))]))
    assert counts.total == 4096
    assert counts.stored_bytes == 2048
    assert counts.bytes_by_dtype() == {"nf4": 2048}


def test_params4bit_with_bf16_quant_storage():
    # FSDP-QLoRA stores the packed weight in bf16: 1024 elements x 2 bytes x 2 per byte = 4096 weights.
    counts = module_params(FakeModel([("q.weight", Params4bit((1024, 1), "torch.bfloat16", False, element=2))]))
    assert counts.total == 4096


def test_deepspeed_zero3_placeholder_counts_ds_numel():
    p = FakeParam((0,))
    p.ds_numel = 1000
    assert module_params(FakeModel([("w", p)])).total == 1000


def test_shape_is_enough():
    class Bare:
        shape, dtype, requires_grad = (3, 5), "torch.float16", True

    assert module_params(FakeModel([("w", Bare())])).total == 15


def test_not_a_model():
    with pytest.raises(SourceError, match="named_parameters"):
        module_params(object())


def test_transformers_config_gives_the_architecture():
    model = FakeModel([("model.embed_tokens.weight", FakeParam((256, 64)))], FakeConfig(LLAMA))
    spec = from_module(model)
    assert spec.name == "tiny/llama"
    assert (spec.hidden_size, spec.num_layers, spec.num_kv_heads) == (64, 2, 2)
    assert spec.stored.total_bytes == 256 * 64 * 2
    assert spec.stored.num_params == 256 * 64
    assert spec.dtype == "bf16"


def test_module_without_config_still_has_exact_weights():
    spec = from_module(lora_model())
    assert spec.model_type == "module"
    assert spec.extra_params == 5120
    assert spec.stored.total_bytes == 12288
    assert "1,024 trainable" in spec.stored.source


def test_real_torch_module_on_meta_device():
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Embedding(100, 64))
    model.to(torch.bfloat16)
    model[1].weight.requires_grad_(False)
    counts = module_params(model)
    # Linear: 64*32 weights + 32 bias; Embedding: 100*64. torch.nn.Module's own sum for cross-checking:
    assert counts.total == 64 * 32 + 32 + 100 * 64 == sum(p.numel() for p in model.parameters())
    assert counts.trainable == 64 * 32 + 32
    assert counts.stored_bytes == (64 * 32 + 32 + 100 * 64) * 2


def test_tied_parameters_count_once():
    torch = pytest.importorskip("torch")
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert module_params(model).total == 40  # named_parameters() drops the duplicate, as PEFT sees it


def test_matches_peft_on_a_real_lora_model(capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256,
    )
    with torch.device("meta"):
        base = transformers.LlamaForCausalLM(config)
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.print_trainable_parameters()
    print_trainable_parameters(model)
    peft_line, our_line = capsys.readouterr().out.splitlines()
    assert our_line == peft_line
    spec = from_module(model)
    assert (spec.hidden_size, spec.num_layers, spec.num_kv_heads, spec.vocab_size) == (64, 2, 2, 256)
    # Base: embeddings 256*64 + lm_head 256*64 + per layer (q,o 64*64; k,v 32*64; MLP 3*64*128; 2 norms of 64)
    # + final norm 64; LoRA r=8 on q (8*64 + 64*8) and v (8*64 + 32*8) in each of 2 layers.
    base_params = 2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64) + 64
    lora = 2 * ((8 * 64 + 64 * 8) + (8 * 64 + 8 * 32))
    assert spec.stored.num_params == base_params + lora
    assert module_params(model).trainable == lora
