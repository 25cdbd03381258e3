"""The fake-CPU trace (what `modelmem trace` runs) agrees with a fake-CUDA trace of the same job.

Fake CUDA tensors on the CPU wheel need a small native shim (trace/_fake_cuda.py: a CUDA device guard and hooks,
compiled with g++). The CUDA run takes everything device-dependent from torch's CUDA code paths: `at::dropout`'s
fused kernel, CUDA autocast's op lists, transformers' `cuda` branches (grouped_mm capability checks). Both runs use
the same attention routing (trace/_routing.py), whose kernel choice is tested against torch's CUDA rules below.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from modelmem.trace._routing import cuda_sdpa_kernel  # noqa: E402

LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512)
QWEN3 = dict(LLAMA, model_type="qwen3", tie_word_embeddings=True)
# MLA: q/k head size 16 + 8 = 24, v head size 16; MoE layers after the first (grouped_mm)
DEEPSEEK = dict(model_type="deepseek_v2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=256, max_position_embeddings=512,
                kv_lora_rank=32, q_lora_rank=None, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
                first_k_dense_replace=1, topk_method="greedy", n_group=1, topk_group=1)
# Falcon-7B's shape: multi-query, parallel block, an attention mask always built
FALCON = dict(model_type="RefinedWebModel", hidden_size=64, n_head=4, n_layer=2, vocab_size=256, multi_query=True,
              parallel_attn=True, bias=False, alibi=False)
# OPT keeps its default dropout 0.1 (masks: bool on CUDA)
OPT = dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
           max_position_embeddings=512, word_embed_proj_dim=64, dropout=0.1)
# GPT-2: LayerNorm and the Python tanh GELU (pow), whose dtypes CUDA autocast sets (fp32) and CPU autocast does not
GPT2 = dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512, vocab_size=256,
            activation_function="gelu_new")

JOBS = [
    (LLAMA, dict(mode="train", precision="pure", batch_size=2, seq_len=64)),
    (LLAMA, dict(mode="lora", batch_size=2, seq_len=64, lora_targets="q_proj,v_proj")),
    (LLAMA, dict(mode="inference", batch_size=2, seq_len=64, new_tokens=4)),
    (QWEN3, dict(mode="lora", batch_size=2, seq_len=64, lora_targets="q_proj,v_proj", precision="pure")),
    (QWEN3, dict(mode="lora", batch_size=2, seq_len=64, lora_targets="q_proj,v_proj")),
    (DEEPSEEK, dict(mode="train", precision="pure", batch_size=2, seq_len=64)),
    (FALCON, dict(mode="train", precision="pure", batch_size=2, seq_len=64)),
    (OPT, dict(mode="train", precision="pure", batch_size=2, seq_len=64, grad_checkpointing="full")),
    (OPT, dict(mode="train", precision="pure", batch_size=2, seq_len=64)),
    # under autocast (the CPU route applies CUDA autocast's fp32 policy; checkpointing recomputes under it too)
    (OPT, dict(mode="lora", batch_size=2, seq_len=64, lora_targets="q_proj,v_proj")),
    (GPT2, dict(mode="train", precision="mixed", batch_size=2, seq_len=64, grad_checkpointing="full")),
    (GPT2, dict(mode="lora", batch_size=2, seq_len=64, lora_targets="all-linear", attention="eager")),
]

_RUN = r"""
import json, sys, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from modelmem.job import make_job
from modelmem.trace._engine import run_trace
device, jobs = json.loads(sys.stdin.read())
out = []
for cfg, fields in jobs:
    r = run_trace(cfg, make_job(num_gpus=1, **fields), device=device)
    out.append({"peak": r.allocated_peak, "components": r.components, "op": r.peak_op})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def both() -> dict:
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the fake-CUDA shim cannot be built")
    out = {}
    # one process per device: the autograd engine sizes its device queues at the first backward, and loading the
    # fake-CUDA shim cannot be undone
    for device in ("cpu", "cuda"):
        done = subprocess.run([sys.executable, "-c", _RUN], input=json.dumps([device, JOBS]), capture_output=True,
                              text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        out[device] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("i", range(len(JOBS)), ids=[f"{c['model_type']}-{f['mode']}-{i}" for i, (c, f) in enumerate(JOBS)])
def test_fake_cpu_trace_equals_fake_cuda_trace(both, i):
    cpu, cuda = both["cpu"][i], both["cuda"][i]
    assert cpu["peak"] == cuda["peak"], (cpu, cuda)
    assert cpu["components"] == cuda["components"]


def test_lora_without_autocast_saves_fp32_adapter_inputs(both):
    # Issue 8's Qwen3-4B discrepancy: PEFT casts each adapted layer's input to the fp32 adapters' dtype; without
    # autocast lora_A saves that fp32 copy (4 B/elem), under autocast the bf16 copy autocast makes (2 B/elem).
    # The same holds for lora_B's input (rank r). Two adapters (q, v): 2 × (4 − 2) × (h + r) bytes per token per
    # layer more in the pure job, layer 0 included (the adapters' weight gradients need their inputs although the
    # frozen embeddings need no gradient).
    pure, mixed = both["cpu"][3], both["cpu"][4]
    h, r, layers, tokens = 64, 8, 2, 2 * 64
    assert pure["components"]["activations"] - mixed["components"]["activations"] == 2 * 2 * (h + r) * layers * tokens


def _t(*shape, dtype=torch.bfloat16):
    return torch.empty(shape, dtype=dtype, device="meta")


def test_cuda_kernel_choice_follows_torchs_rules():
    q = _t(1, 8, 128, 128)
    # flash: half precision, no mask, equal head sizes ≤ 256 (GQA allowed)
    assert cuda_sdpa_kernel(q, _t(1, 2, 128, 128), _t(1, 2, 128, 128), None, True, True) == "flash"
    # MLA: q/k head size 192, v head size 128 → not flash; memory-efficient accepts unequal v
    q192 = _t(1, 8, 128, 192)
    assert cuda_sdpa_kernel(q192, _t(1, 8, 128, 192), _t(1, 8, 128, 128), None, True, False) == "efficient"
    # an explicit mask (Falcon): memory-efficient
    mask = torch.empty(1, 1, 128, 128, dtype=torch.bool, device="meta")
    assert cuda_sdpa_kernel(q, _t(1, 8, 128, 128), _t(1, 8, 128, 128), mask, False, False) == "efficient"
    # fp32: no flash
    q32 = _t(1, 8, 128, 64, dtype=torch.float32)
    assert cuda_sdpa_kernel(q32, q32, q32, None, True, False) == "efficient"
    # head size 512 with grouped KV heads: neither flash (> 256) nor memory-efficient (no GQA) → math
    q512 = _t(1, 8, 128, 512)
    assert cuda_sdpa_kernel(q512, _t(1, 2, 128, 512), _t(1, 2, 128, 512), None, True, True) == "math"
    # causal with fewer queries than keys: flash refuses non-square causal
    assert cuda_sdpa_kernel(_t(1, 8, 1, 128), _t(1, 8, 128, 128), _t(1, 8, 128, 128), None, True, False) == "efficient"
