"""Components from first principles: each expected value is written out from the formula's source, not from the code.

A tiny Llama-shaped decoder (h 256, 8 heads of 32, 2 KV heads, SwiGLU 704, vocabulary 32,000) keeps the arithmetic
readable. Per-layer quantities are isolated by differencing 4 and 2 layers, so whatever sits outside the decoder
layers (embeddings, the final norm) cancels. Sources:
- Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", §4.1 (what a layer saves),
  with the modules of transformers' LlamaDecoderLayer (RMSNorm upcasts to fp32; SwiGLU; SDPA's flash/efficient
  kernels save q, k, v, the output and an fp32 log-sum-exp per head instead of the s × s scores);
- transformers' ForCausalLMLoss (logits upcast to fp32, cross_entropy = log_softmax + nll_loss) and generate
  (logits_to_keep=1, next-token logits copied to fp32);
- the KV cache: keys and values, per layer, per KV head, per token (Pope et al. 2022 §3.1);
- ZeRO (Rajbhandari et al. 2020, Fig. 1) and Megatron tensor/pipeline parallelism for the per-GPU shares.
"""

import json
import math

import pytest

import modelmem
from modelmem.units import BYTES_IN_MIB

H, HEADS, KV_HEADS, HD, I, V = 256, 8, 2, 32, 704, 32000
Q, KV = HEADS * HD, KV_HEADS * HD  # query width 256, key (and value) width 64
BF16, FP32 = 2, 4


def tiny(layers: int, **extra) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H, "intermediate_size": I,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HD,
            "vocab_size": V, "max_position_embeddings": 65536, "tie_word_embeddings": False, "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16", **extra}


@pytest.fixture
def est(tmp_path):
    """estimate(config, **job) for a config dict written as a config.json."""
    count = [0]

    def run(config: dict, **job):
        count[0] += 1
        path = tmp_path / f"m{count[0]}" / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps(config))
        return modelmem.estimate(str(path), gpu="h100-80gb", **{"num_gpus": 1, **job})

    return run


def per_layer(est, component: str, tokens: int, config_extra: dict | None = None, config=None, **job) -> float:
    """Bytes per token of one decoder layer: (4 layers − 2 layers) / (2 × tokens)."""
    make = config or (lambda n: tiny(n, **(config_extra or {})))
    a = est(make(4), **job).per_gpu.components[component]
    b = est(make(2), **job).per_gpu.components[component]
    return (a - b) / (2 * tokens)


# RMSNorm saves rsqrt's fp32 result for backward (RsqrtBackward0 saves its result): 4 bytes a token per norm. (4 − 2
# layer differences of traced Llama shapes hold exactly this inventory + 0.5 byte of 512-byte rounding at widths
# 1024–4096; the ~1 KiB per token per layer once read off trace_grid.jsonl was the final norm and embeddings
# spread over the layers.)
RSTD = FP32

TRAIN = dict(mode="train", batch_size=8, seq_len=1024)


def test_saved_activations_per_layer_pure_bf16(est):
    c = BF16
    # RMSNorm (×2): fp32 upcast saved by pow/mul (4h), bf16 normed saved by `weight *` (c·h), and its output saved
    # by the next linears (c·h: q/k/v share one input, gate/up share one).
    norms = 2 * (FP32 * H + c * H + c * H)
    # SDPA (flash / memory-efficient): q, k, v, the output, and one fp32 log-sum-exp per head.
    attention = c * (Q + KV + KV) + c * Q + FP32 * HEADS
    # SwiGLU: gate (SiLU's input), SiLU's output and up (the product's inputs), the product (down_proj's input).
    mlp = 4 * c * I
    expected = norms + attention + mlp + 2 * RSTD
    assert per_layer(est, "activations", 8 * 1024, precision="pure", **TRAIN) == expected


def test_mixed_precision_keeps_an_fp32_residual_stream(est):
    # fp32 master weights under autocast: the residual stream is fp32. Each RMSNorm saves its fp32 input (4h) and
    # its fp32 normed tensor for `weight *` (4h); each linear saves its own bf16 cast of the input: 3 × c·h for
    # q, k, v, 2 × c·h for gate and up. The rest of the layer runs in bf16 as in pure precision.
    c = BF16
    norms = (FP32 * H + FP32 * H + 3 * c * H) + (FP32 * H + FP32 * H + 2 * c * H)
    attention = c * (Q + KV + KV) + c * Q + FP32 * HEADS
    expected = norms + attention + 4 * c * I + 2 * RSTD
    assert per_layer(est, "activations", 8 * 1024, precision="mixed", **TRAIN) == expected


def test_eager_attention_saves_the_score_matrices(est):
    c, s = BF16, 512
    job = dict(mode="train", precision="pure", batch_size=2, seq_len=s, attention="eager")
    norms = 2 * (FP32 * H + c * H + c * H)
    # eager (transformers eager_attention_forward): the two matmuls save q and the repeat_kv-expanded k and v (each
    # heads × d wide), softmax(dtype=fp32) saves its fp32 output and `.to(bf16)` makes the copy P·V saves
    # (heads × s per token each); o_proj's input is the contiguous transposed output (c·q).
    attention = c * 3 * Q + HEADS * s * (FP32 + c) + c * Q
    expected = norms + attention + 4 * c * I + 2 * RSTD
    assert per_layer(est, "activations", 2 * s, **job) == expected


def opt_gelu(layers: int) -> dict:
    # OPT's layout (pre-LayerNorm, separate q/k/v, biases) with exact GELU instead of ReLU, dropout off
    return {"model_type": "opt", "architectures": ["OPTForCausalLM"], "hidden_size": H, "ffn_dim": 1024,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "max_position_embeddings": 4096, "vocab_size": V,
            "word_embed_proj_dim": H, "do_layer_norm_before": True, "enable_bias": True, "activation_function": "gelu",
            "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "torch_dtype": "bfloat16"}


def test_layernorm_and_plain_gelu_mlp(est):
    c, i = BF16, 1024
    # LayerNorm (native_layer_norm) saves its input and an fp32 mean and rstd per token (4 + 4 bytes); its output
    # is saved by the next linears. MHA: k and v are as wide as q.
    norms = 2 * (c * H + 8) + 2 * c * H
    attention = c * 3 * H + c * H + FP32 * HEADS
    # exact GELU saves its input (fc1's output); fc2 saves GELU's output
    mlp = 2 * c * i
    got = per_layer(est, "activations", 8 * 1024, config=opt_gelu, precision="pure", **TRAIN)
    assert got == norms + attention + mlp  # LayerNorm's mean and rstd are in `norms`


def gpt2(layers: int) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": H, "n_layer": layers, "n_head": HEADS,
            "n_positions": 4096, "vocab_size": V, "n_inner": None, "activation_function": "gelu_new",
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": "bfloat16"}


def test_fused_qkv_and_python_gelu(est):
    c, i = BF16, 4 * H
    norms = 2 * (c * H + 8) + 2 * c * H
    # c_attn writes q, k and v into one storage; with learned positions nothing rewrites q or k, so SDPA saves
    # three views of that one storage (q + k + v once), beside the output and log-sum-exp (traced: GPT-2, c_attn's
    # 6h and no copy).
    attention = c * 3 * H + c * H + FP32 * HEADS
    # NewGELUActivation, 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))): pow saves x, tanh its output, the last product
    # both factors; c_proj saves the result: x, tanh, 0.5x, 1 + tanh, result = 5 intermediate-sized tensors.
    mlp = 5 * c * i
    got = per_layer(est, "activations", 8 * 1024, config=gpt2, precision="pure", **TRAIN)
    assert got == norms + attention + mlp  # LayerNorm's mean and rstd are in `norms`


def test_layernorm_and_python_gelu_under_cuda_autocast(est):
    # HF mixed precision is CUDA autocast, whose fp32 op list holds layer_norm and pow (PyTorch AMP docs, "CUDA ops
    # that can autocast to float32"). GPT-2 LoRA on c_attn (frozen base, fp32 adapters, no dropout):
    c, i = BF16, 4 * H
    # each LayerNorm saves the fp32 copy of its input autocast made, and its fp32 mean and rstd
    norms = 2 * (FP32 * H + 8)
    # c_attn's one q/k/v storage (views saved by SDPA), the attention output and log-sum-exp; the adapter keeps
    # the bf16 copy of its input that autocast casts for lora_A
    attention = c * 3 * H + c * H + FP32 * HEADS + c * H
    # NewGELU: pow saves an fp32 copy of x; tanh's output and 1 + tanh are fp32 (the fp32 pow makes the chain
    # fp32 by type promotion); 0.5·x stays bf16. c_proj is frozen: nothing saves its input.
    mlp = FP32 * i + FP32 * i + FP32 * i + c * i
    got = per_layer(est, "activations", 8 * 1024, config=gpt2, mode="lora", lora_targets="c_attn", batch_size=8,
                    seq_len=1024)
    # LayerNorm's mean and rstd are in `norms`; the c_attn adapter's lora_B saves lora_A's rank-8 output (r·c)
    assert got == norms + attention + mlp + 8 * c


def gemma(layers: int) -> dict:
    return {"model_type": "gemma", "architectures": ["GemmaForCausalLM"], "hidden_size": H, "intermediate_size": I,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HD,
            "vocab_size": V, "max_position_embeddings": 8192, "tie_word_embeddings": True, "hidden_act": "gelu",
            "torch_dtype": "bfloat16"}


def test_gemma_rmsnorm_stays_fp32(est):
    c = BF16
    # GemmaRMSNorm: _norm(x.float()) saves the fp32 input (4h); `* (1 + weight.float())` saves the fp32 normed (4h);
    # type_as gives the bf16 output the next linears save (c·h).
    norms = 2 * (FP32 * H + FP32 * H) + 2 * c * H
    attention = c * (Q + KV + KV) + c * Q + FP32 * HEADS
    got = per_layer(est, "activations", 8 * 1024, config=gemma, precision="pure", **TRAIN)
    assert got == norms + attention + 4 * c * I + 2 * RSTD


LITGPT_VERSIONS = pytest.mark.parametrize("litgpt", ["0.4", "0.5"])  # the two LitGPT profiles share these habits


@LITGPT_VERSIONS
def test_litgpt_rmsnorm_stays_fp32(est, litgpt):
    # LitGPT's RMSNorm multiplies the fp32 normed tensor by weight.float(): 4h saved instead of HF's bf16 2h, per norm.
    hf = per_layer(est, "activations", 8 * 1024, precision="pure", **TRAIN)
    lit = per_layer(est, "activations", 8 * 1024, precision="pure", runtime="litgpt", runtime_version=litgpt, **TRAIN)
    assert lit - hf == 2 * (FP32 - BF16) * H


def gemma2(layers: int) -> dict:
    return {**gemma(layers), "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "hidden_act": None,
            "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 4096, "query_pre_attn_scalar": HD,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}


def test_gemma2_eager_softcapping(est):
    c, s = BF16, 512  # shorter than the sliding window: every layer sees the whole sequence
    # Gemma 2 has no SDPA path (soft-capping): eager attention whatever is asked. Four RMSNorms per layer, Gemma's
    # fp32 kind; only the two pre-norms' outputs feed linears. Eager saves q and the expanded k and v, the fp32
    # softmax and its bf16 copy, and tanh soft-capping's output (heads × s each), and o_proj's contiguous input.
    norms = 4 * (FP32 * H + FP32 * H) + 2 * c * H
    attention = c * 3 * Q + HEADS * s * (FP32 + c) + HEADS * s * c + c * Q
    got = per_layer(est, "activations", 2 * s, config=gemma2, mode="train", precision="pure", batch_size=2, seq_len=s)
    assert got == norms + attention + 4 * c * I + 4 * RSTD


@pytest.mark.parametrize("runtime, version", [("torchtune", None), ("litgpt", "0.4"), ("litgpt", "0.5")])
def test_torchtune_and_litgpt_run_gemma2_attention_eager(est, runtime, version):
    # torchtune's Gemma2Attention.forward computes q @ kᵀ, soft-caps and softmaxes itself, with no SDPA call, and
    # LitGPT's CausalSelfAttention.scaled_dot_product_attention takes its explicit path whenever soft-capping is set
    # ("with softcapping we cannot use SDPA"): asking either for SDPA gives eager attention's saved tensors.
    job = dict(mode="train", precision="pure", batch_size=2, seq_len=512, runtime=runtime, runtime_version=version)
    sdpa = per_layer(est, "activations", 1024, config=gemma2, attention="sdpa", **job)
    assert sdpa == per_layer(est, "activations", 1024, config=gemma2, attention="eager", **job)


def test_gemma2_final_softcapping_keeps_tanh_output(est):
    # logits / cap → tanh (saves its bf16 output, 2·V per token) → × cap, then the usual 12·V of the loss.
    tokens = 8 * 1024
    e = est(gemma2(2), precision="pure", **TRAIN)
    assert e.per_gpu.components["logits"] == (12 + BF16) * V * tokens


def test_full_checkpointing_keeps_each_layer_input(est):
    # torch.utils.checkpoint around each decoder layer keeps only its input hidden state: c·h per token per layer
    # (fp32 under mixed precision). A small vocabulary keeps the loss buffers below one recomputed layer.
    small_v = {"vocab_size": 256}
    for precision, width in (("pure", BF16), ("mixed", FP32)):
        got = per_layer(est, "activations", 8 * 1024, small_v, grad_checkpointing="full", precision=precision, **TRAIN)
        assert got == width * H, precision


@pytest.mark.parametrize("precision", ["pure", "mixed"])
def test_training_loss_buffers(est, precision):
    # ForCausalLMLoss upcasts the bf16 logits to fp32 and cross_entropy saves log_softmax's fp32 output (4·V per
    # token); backward starts with nll_loss's fp32 gradient and log_softmax's fp32 gradient (8·V per token) while
    # that output is still saved: 12·V bytes per token at the peak (shared/TRACING.md measured the same split).
    tokens = 8 * 1024
    e = est(tiny(2), precision=precision, **TRAIN)
    assert e.per_gpu.components["logits"] == 12 * V * tokens


def test_torchtune_keeps_fp32_logits(est):
    # torchtune's TransformerDecoder returns `self.output(h).float()` and the recipe holds it: fp32 logits (4) and
    # the saved fp32 log-softmax (4) after the forward, their two fp32 gradients (8) at the start of backward.
    tokens = 8 * 1024
    e = est(tiny(2), precision="pure", runtime="torchtune", **TRAIN)
    assert e.per_gpu.components["logits"] == 16 * V * tokens


@LITGPT_VERSIONS
def test_litgpt_bf16_true_loss(est, litgpt):
    # LitGPT bf16-true: the bf16 logits and cross_entropy's bf16 log-softmax are saved (2 + 2), and backward adds
    # their two bf16 gradients (2 + 2).
    tokens = 8 * 1024
    e = est(tiny(2), precision="pure", runtime="litgpt", runtime_version=litgpt, **TRAIN)
    assert e.per_gpu.components["logits"] == 8 * V * tokens


@pytest.mark.parametrize("runtime, version, all_positions, preallocated", [
    ("hf", None, False, False),  # generate: logits_to_keep=1; DynamicCache grows with the tokens seen
    ("litgpt", "0.4", True, True), ("litgpt", "0.5", True, True),  # generate/base.py: every prompt position; cache for max_returned_tokens
    ("torchao", None, True, True),  # gpt-fast generate.py: prefill logits for all positions; setup_caches(max_seq_length)
])
def test_inference_prefill_logits_and_cache(est, runtime, version, all_positions, preallocated):
    # The prefill's last-layer logits in bf16 plus their fp32 copy, for the last position or every prompt position;
    # the cache at the prefill holds the prompt, or the whole length when allocated up front.
    b, s, new, layers = 4, 2048, 64, 2
    job = dict(mode="inference", batch_size=b, seq_len=s, new_tokens=new, runtime=runtime)
    if version:
        job["runtime_version"] = version
    e = est(tiny(layers), **job)
    positions = s if all_positions else 1
    assert e.per_gpu.components["logits"] == b * positions * V * (BF16 + FP32)
    cached = s + new if preallocated else s
    assert e.per_gpu.components["kv_cache"] == 2 * layers * KV_HEADS * HD * b * cached * BF16


@pytest.mark.parametrize("kv_dtype, bytes_per_element", [
    ("bf16", 2), ("fp8", 1),
    ("int8", 1 + 4 / 64),  # a bf16 scale and a bf16 zero point per group of 64 (transformers QuantizedCache)
    ("int4", 0.5 + 4 / 64),
])
def test_kv_cache_at_the_last_decode_step(est, kv_dtype, bytes_per_element):
    b, prompt, new = 2, 64, 4096  # a long generation: the last decode step is the peak
    layers = 4
    e = est(tiny(layers), mode="inference", batch_size=b, seq_len=prompt, new_tokens=new, kv_dtype=kv_dtype)
    elements = 2 * layers * KV_HEADS * HD * b * (prompt + new)  # keys and values
    assert e.per_gpu.components["kv_cache"] == int(elements * bytes_per_element)


def test_sliding_window_caps_the_cache(est):
    # Mistral-style sliding window on every layer: each layer keeps at most `window` tokens (a rolling cache).
    window, b, prompt, new = 1024, 2, 64, 4096
    e = est(tiny(4, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=window),
            mode="inference", batch_size=b, seq_len=prompt, new_tokens=new)
    assert e.per_gpu.components["kv_cache"] == 2 * 4 * KV_HEADS * HD * b * window * BF16


def test_prefill_transients_per_layer(est):
    # Inference prefill (no grad) peaks inside one layer at SwiGLU's product: SiLU's output, up and the product
    # alive together (3·c·i), with the residual stream, the normed input and the attention output (2·c·h) and the
    # norm's fp32 leftover (4h) beside them (traced: Llama-3.1-8B prefill, trace_grid.jsonl).
    b, s, c = 4, 2048, BF16
    e = est(tiny(2), mode="inference", batch_size=b, seq_len=s, new_tokens=1)
    assert e.per_gpu.components["activations"] == (3 * c * I + (2 * c + FP32) * H) * b * s


def test_eager_prefill_scores(est):
    # Eager prefill, softmax(scores, dtype=float32).to(query.dtype): ATen's softmax copies a bf16 input to fp32
    # before _softmax (only fp16 on CUDA takes the fused half-to-float kernel; aten/src/ATen/native/SoftMax.cpp),
    # so at _softmax the masked bf16 scores (2), that fp32 copy (4) and the fp32 output (4) coexist: 10 bytes per
    # score (heads × s × s per sequence). In fp16, at `.to` the scores, the fp32 output and the fp16 copy: 2c + 4.
    # Beside them q, k, v, the attention output, the residual stream and the norm's fp32 leftover.
    b, s = 1, 2048
    for dtype, per_score in (("bf16", BF16 + FP32 + FP32), ("fp16", 2 * 2 + FP32)):
        c = 2
        e = est(tiny(2), mode="inference", dtype=dtype, batch_size=b, seq_len=s, new_tokens=1, attention="eager")
        qkv_out = c * (Q + KV + KV) + 2 * c * Q
        assert e.per_gpu.components["activations"] == b * HEADS * s * s * per_score + (qkv_out + (2 * c + FP32) * H) * b * s


# ---------------------------------------------------------------------------------------------- optimizer states
def _trainable(e) -> int:
    return e.model.trainable_params


@pytest.mark.parametrize("optimizer, bytes_per_param", [
    ("adamw", 2 * BF16),  # exp_avg and exp_avg_sq in the parameter's dtype (torch.optim.AdamW)
    ("adamw-8bit", 2 * (1 + 4 / 256)),  # uint8 states + an fp32 absmax per 256 values (bitsandbytes blockwise)
    ("sgd-momentum", BF16), ("lion", BF16),  # one momentum buffer
    ("sgd", 0), ("paged-adamw", 0),  # paged states live in unified memory, outside torch's counters
])
def test_optimizer_states(est, optimizer, bytes_per_param):
    e = est(tiny(2), mode="train", precision="pure", batch_size=1, seq_len=16, optimizer=optimizer)
    assert e.per_gpu.components["optimizer_states"] == int(_trainable(e) * bytes_per_param)


def test_adamw_step_peak_pure_and_mixed(est):
    # A short sequence puts the peak at the optimizer step: weights + grads + two states + foreach AdamW's one
    # state-sized temporary (torch.optim.adamw._multi_tensor_adamw: _foreach_sqrt of exp_avg_sq).
    e = est(tiny(2), mode="train", precision="pure", batch_size=1, seq_len=16)
    n = _trainable(e)
    assert e.per_gpu.allocated_peak == n * BF16 * (1 + 1 + 2 + 1)
    assert e.per_gpu.components["temporaries"] == n * BF16
    # mixed: fp32 masters, fp32 grads and fp32 states (Micikevicius et al. 2018), and the fp32 temporary
    e = est(tiny(2), mode="train", precision="mixed", batch_size=1, seq_len=16)
    assert e.per_gpu.allocated_peak == n * FP32 * (1 + 1 + 2 + 1)
    # torchtune's fused AdamW makes no temporary
    e = est(tiny(2), mode="train", precision="pure", batch_size=1, seq_len=16, runtime="torchtune")
    assert e.per_gpu.components["temporaries"] == 0


def test_adafactor_factored_states_and_the_steps_copies(est):
    # tiny(2)'s trainable tensors (LlamaForCausalLM.named_parameters()): embed_tokens V×H; per layer q_proj Q×H,
    # k_proj and v_proj KV×H, o_proj H×Q, gate_proj and up_proj I×H, down_proj H×I and two RMSNorm weights (H);
    # the final norm (H); lm_head V×H.
    layers = 2
    matrices = [(V, H)] + layers * [(Q, H), (KV, H), (KV, H), (H, Q), (I, H), (I, H), (H, I)] + [(V, H)]
    vectors = (2 * layers + 1) * H
    # Shazeer & Stern 2018 §3: a row and a column statistic per matrix, the full second moment per vector; no first
    # moment (beta1 None in both implementations below).
    statistics = sum(rows + cols for rows, cols in matrices) + vectors
    params = sum(rows * cols for rows, cols in matrices) + vectors
    job = dict(mode="train", batch_size=1, seq_len=16, optimizer="adafactor")

    # transformers/optimization.py Adafactor (HF Trainer's optim="adafactor"): statistics `.to(grad)` after
    # grad.float(), so fp32 whatever the parameter's dtype. step() walks the parameters one at a time: a bf16 one gets
    # fp32 copies of its gradient and of itself, then grad**2 + eps and its replacement (_approx_sq_grad, later
    # -update) coexist: 4 fp32 tensors of the largest parameter (V×H); fp32 masters need no copies: 2. The final
    # norm's update (H elements) is still bound when lm_head's step begins.
    e = est(tiny(layers), precision="pure", **job)
    assert e.model.trainable_params == params
    assert e.per_gpu.components["optimizer_states"] == statistics * FP32
    assert e.per_gpu.components["temporaries"] == pytest.approx(4 * V * H * FP32, abs=H * FP32)
    mixed = est(tiny(layers), precision="mixed", **job).per_gpu.components
    assert mixed["optimizer_states"] == statistics * FP32
    assert mixed["temporaries"] == pytest.approx(2 * V * H * FP32, abs=H * FP32)

    # torch/optim/_adafactor.py (torchtune's and LitGPT's torch.optim.Adafactor): row_var/col_var/variance are
    # grad.new_zeros, the gradient's dtype; the foreach step (CUDA's default) holds a var_estimate for every
    # parameter at once: one parameter-sized copy ("~ sizeof(params) more peak memory", its docstring).
    tt = est(tiny(layers), precision="pure", runtime="torchtune", **job).per_gpu.components
    assert tt["optimizer_states"] == statistics * BF16
    assert tt["temporaries"] == params * BF16


def test_adafactor_lora_states_factor_each_adapter(est):
    # LoRA trains A (r × in) and B (out × r) per targeted module (peft LoraLayer.update_layer): q_proj and v_proj of
    # tiny(2) at r = 8 give per layer A_q 8×H, B_q Q×8, A_v 8×H, B_v KV×8; each is factored into rows + columns.
    r, layers = 8, 2
    matrices = layers * [(r, H), (Q, r), (r, H), (KV, r)]
    e = est(tiny(layers), mode="lora", lora_rank=r, lora_targets="q_proj,v_proj", precision="mixed", batch_size=1,
            seq_len=16, optimizer="adafactor")
    assert e.model.trainable_params == sum(rows * cols for rows, cols in matrices)
    assert e.per_gpu.components["optimizer_states"] == sum(rows + cols for rows, cols in matrices) * FP32


# ---------------------------------------------------------------------------------------------- parallel shares
@pytest.mark.parametrize("strategy, divided", [
    ("zero1", {"optimizer_states"}),  # ZeRO stage 1: optimizer states partitioned
    ("zero2", {"optimizer_states", "gradients"}),  # stage 2: + gradients
    ("zero3", {"optimizer_states", "gradients", "weights"}),  # stage 3: + parameters
    ("fsdp", {"optimizer_states", "gradients", "weights"}),
])
def test_zero_shares_at_the_optimizer_step(est, strategy, divided):
    n = 4
    job = dict(mode="train", precision="pure", batch_size=1, seq_len=16)
    one = est(tiny(4), **job).per_gpu.components
    many = est(tiny(4), num_gpus=n, strategy=strategy, **job).per_gpu.components
    for k in ("optimizer_states", "gradients", "weights"):
        assert many[k] == (int(one[k] / n) if k in divided else one[k]), k


def test_tensor_parallel_divides_weights_and_activations(est):
    n = 2  # divides the 8 heads and the 2 KV heads (Megatron §3: column/row-parallel linears, heads split)
    job = dict(mode="train", precision="pure", batch_size=8, seq_len=1024)
    one = est(tiny(4), **job).per_gpu.components
    tp = est(tiny(4), num_gpus=n, strategy="tp", **job).per_gpu.components
    # Megatron splits the matrices (q, k, v, o, gate, up, down, embedding, LM head) over the ranks and replicates the
    # norms (Megatron-LM theoretical_memory_usage.py: layernorm parameters are "replicated").
    matrices = 4 * (H * Q + 2 * H * KV + Q * H + 3 * H * I) + 2 * V * H
    norms = 4 * 2 * H + H
    assert tp["weights"] == pytest.approx((matrices / n + norms) * BF16, abs=2)
    # Without sequence parallelism the layer norms' and dropouts' 10sbh stay whole on every rank (Korthikanti et al.
    # 2022 Table 2: sbh(10 + 24/t + …)), 5·c·h per token; the rest of the layer's 12,064 B per token splits.
    per_token = 2 * (FP32 * H + 2 * BF16 * H) + BF16 * (Q + 2 * KV) + BF16 * Q + FP32 * HEADS + 4 * BF16 * I + 2 * RSTD
    replicated = 5 * BF16 * H
    assert tp["activations"] == pytest.approx(one["activations"] * (replicated + (per_token - replicated) / n) / per_token, rel=1e-6)


def test_tensor_parallel_kv_heads(est):
    # 4 ranks, 2 KV heads: each rank keeps a replica of one KV head (vLLM), half the cache, not a quarter.
    b, prompt, new = 2, 64, 4096
    e = est(tiny(4), mode="inference", batch_size=b, seq_len=prompt, new_tokens=new, num_gpus=4, strategy="tp")
    assert e.per_gpu.components["kv_cache"] == 2 * 4 * 1 * HD * b * (prompt + new) * BF16


def test_pipeline_stage_holds_its_layers(est):
    # 6 layers over 4 stages: the busiest stage runs ceil(6/4) = 2 layers and holds their weights and activations;
    # the first stage also holds the embedding, the last the LM head (Megatron; Narayanan et al. 2021 §2.2).
    job = dict(mode="train", precision="pure", batch_size=8, seq_len=1024)
    pp = est(tiny(6), num_gpus=4, strategy="pp", **job).per_gpu.components
    layer = H * Q + 2 * H * KV + Q * H + 3 * H * I
    norms = 6 * 2 * H + H  # the final norm counted with the layers' norms
    stage = (6 * layer + norms) * math.ceil(6 / 4) / 6 + V * H
    assert pp["weights"] == pytest.approx(stage * BF16, abs=2)


# ---------------------------------------------------------------------------------------------- what torch cannot see
def test_cuda_context_constant_in_published_range(est):
    # PyTorch's CUDA semantics notes and nvidia-smi readings: 300–600 MiB for the context with lazy module loading
    # plus cuBLAS/cuDNN handles on A100/H100 (shared/validation/README.md: 0.3–1.3 GiB across GPUs and CUDA versions,
    # the top of that range on old CUDA without lazy loading).
    e = est(tiny(2), mode="inference", batch_size=1, seq_len=16)
    ctx = e.per_gpu.device_total - e.per_gpu.reserved_peak
    assert 300 * BYTES_IN_MIB <= ctx <= 600 * BYTES_IN_MIB


# ---------------------------------------------------------------------------------------------- dropout masks
def test_residual_dropout_keeps_bool_masks(est):
    # native_dropout saves a bool mask (1 byte per element) for backward; the dropped-out tensor itself only feeds
    # the residual add. OPT applies `dropout` after attention and after the MLP: 2·h bytes per token per layer.
    def with_dropout(n):
        return {**opt_gelu(n), "dropout": 0.1}

    base = per_layer(est, "activations", 8 * 1024, config=opt_gelu, precision="pure", **TRAIN)
    got = per_layer(est, "activations", 8 * 1024, config=with_dropout, precision="pure", **TRAIN)
    assert got - base == 2 * H


def test_eager_attention_dropout_keeps_a_mask(est):
    # eager attention applies dropout to the probabilities: one bool per score (heads × s per token); SDPA's
    # fused kernels regenerate the mask from the RNG state instead.
    s = 512
    job = dict(mode="train", precision="pure", batch_size=2, seq_len=s, attention="eager")

    def with_attn_dropout(n):
        return {**opt_gelu(n), "attention_dropout": 0.1}

    base = per_layer(est, "activations", 2 * s, config=opt_gelu, **job)
    got = per_layer(est, "activations", 2 * s, config=with_attn_dropout, **job)
    assert got - base == HEADS * s


# ---------------------------------------------------------------------------------------------- weights
def test_gguf_q8_0_weights(est):
    # Q8_0 blocks: 32 int8 weights + one fp16 scale = 34 bytes per 32 weights (8.5 bits), every 2-D tensor; norms
    # stay F32 (llama.cpp llama-quant.cpp). Per layer: the seven linears at 8.5 bits and two RMSNorm weights at 4 bytes.
    linears = H * Q + 2 * H * KV + Q * H + 3 * H * I
    e4 = est(tiny(4), mode="inference", batch_size=1, seq_len=16, quant="gguf:Q8_0").per_gpu.components["weights"]
    e2 = est(tiny(2), mode="inference", batch_size=1, seq_len=16, quant="gguf:Q8_0").per_gpu.components["weights"]
    assert (e4 - e2) / 2 == pytest.approx(linears * 8.5 / 8 + 2 * H * FP32, abs=1)


@LITGPT_VERSIONS
def test_4bit_matmul_dequantizes_one_weight(est, litgpt):
    # bitsandbytes' matmul_4bit dequantizes the weight to the compute dtype for each matmul: the largest quantized
    # linear (gate/up/down, h × i) in bf16 at a time. LitGPT's weights were quantized from fp16: dequantize_4bit
    # returns fp16 (2) and MatMul4Bit adds a bf16 copy (2) (Lightning BitsandbytesPrecision, bitsandbytes 0.42);
    # Lightning replaces every nn.Linear, the output layer (V × h, the largest) included.
    job = dict(mode="qlora", quant="nf4", batch_size=8, seq_len=1024)
    # transformers keeps lm_head in bf16, so at the loss (this job's peak: a 32,000-entry vocabulary on width 256)
    # no dequantized weight is alive (traced: Phi-3 QLoRA); with checkpointing, beside the first recomputed layer
    # of a small-vocabulary model, one is
    hf = est(tiny(2), **job).per_gpu.components["dequant_buffers"]
    assert hf == 0
    small_vocab = est(tiny(2, vocab_size=64), grad_checkpointing="full", **job).per_gpu.components["dequant_buffers"]
    assert small_vocab == H * I * BF16
    lit = est(tiny(2), runtime="litgpt", runtime_version=litgpt, precision="pure", **job).per_gpu.components["dequant_buffers"]
    assert lit == V * H * (2 + BF16)


def test_lora_adapters_are_fp32_under_mixed_precision(est):
    # PEFT upcasts the adapters to fp32 (autocast_adapter_dtype) when the base runs under autocast: 4 bytes each;
    # q and v adapters of rank 8: A (r × h) and B (out × r) per module per layer.
    e = est(tiny(2), mode="lora", lora_rank=8, lora_targets="q_proj,v_proj", precision="mixed", batch_size=1, seq_len=16)
    adapters = 2 * (8 * H + Q * 8) + 2 * (8 * H + KV * 8)
    assert e.model.trainable_params == adapters
    assert e.per_gpu.components["master_weights"] == adapters * FP32


# ---------------------------------------------------------------------------------------------- the caching allocator
def test_allocator_overhead_matches_the_replays():
    # Expected values: reserved bytes from the caching-allocator replay of every single-GPU traced job
    # (benchmarks/results/trace_grid.jsonl). The overhead formula applied to each trace's own components must keep
    # today's fit over every family's rows: median |error| on reserved ≤ 1.8 %, p90 ≤ 8.1 % (today's 1.79 % and
    # 8.08 %, rounded up; memory/fitted.py).
    import statistics
    from pathlib import Path

    from modelmem.memory.overhead import allocator_overhead

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "trace_grid.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    # the trace's categories under the estimate's names: autocast copies are weights; FSDP's gathered parameters
    # are the collective's temporaries
    names = {"weight_copies": "weights", "unsharded_params": "temporaries"}
    errors = []
    for r in rows:
        if "error" in r or not r.get("reserved_peak") or r["job"].get("num_gpus", 1) != 1:
            continue
        comp: dict[str, int] = {}
        for k, v in r["components_at_peak"].items():
            comp[names.get(k, k)] = comp.get(names.get(k, k), 0) + v
        predicted = r["allocated_peak"] + allocator_overhead(comp)
        errors.append(abs(predicted - r["reserved_peak"]) / r["reserved_peak"])
    errors.sort()
    assert len(errors) >= 500
    assert statistics.median(errors) <= 0.018
    assert errors[int(0.9 * (len(errors) - 1))] <= 0.081


def test_metal_working_set_from_llama_cpp_logs():
    # recommendedMaxWorkingSetSize as llama.cpp prints it: 16 GiB Mac → 10922.67 MiB (abetlen/llama-cpp-python#687),
    # 32 GiB → 21845.34 MiB (ggml-org/llama.cpp#2011), 64 GiB → 49152 MiB (#1870), 96 GiB → 73728 MiB (#3213); and
    # a 36 GB M4 Max logs 28991.03 MB = 27648 MiB = 3/4 (llama-cpp-python notes, 2026): the switch lies between 32 and 36.
    from modelmem.memory.overhead import metal_working_set_bytes

    gib = 2**30
    for ram, mib in ((16, 10922.67), (32, 21845.34), (36, 27648), (64, 49152), (96, 73728)):
        assert metal_working_set_bytes(ram * gib) / BYTES_IN_MIB == pytest.approx(mib, abs=0.01)


def test_moe_router_probabilities_per_expert(est):
    # Mixtral's router: softmax(router_logits, dtype=float32) saves its fp32 output, one probability per expert per
    # token (transformers MixtralSparseMoeBlock). Doubling the experts at the same top-k and expert width changes
    # nothing else a layer saves: 4 bytes per token per layer per added expert.
    def mixtral(experts):
        return lambda n: {**tiny(n), "model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                          "num_local_experts": experts, "num_experts_per_tok": 2}

    job = dict(precision="pure", **TRAIN)
    four = per_layer(est, "activations", 8 * 1024, config=mixtral(4), **job)
    eight = per_layer(est, "activations", 8 * 1024, config=mixtral(8), **job)
    assert eight - four == FP32 * (8 - 4)


@pytest.mark.parametrize("optimizer, bytes_per_param", [
    ("paged-adamw", 2 * BF16),  # bitsandbytes PagedAdamW: two states in the parameter's dtype, in unified memory
    ("paged-adamw-8bit", 2 * (1 + 4 / 256)),  # PagedAdamW8bit: uint8 states + fp32 absmax per 256
])
def test_paged_states_are_reported_beside_allocated(est, optimizer, bytes_per_param):
    e = est(tiny(2), mode="train", precision="pure", batch_size=1, seq_len=16, optimizer=optimizer)
    paged = int(_trainable(e) * bytes_per_param)
    assert any(f"{paged} bytes of states in CUDA unified memory" in note for note in e.explanation)


def test_plain_mlp_prefill_transients(est):
    # no grad: fc1's output and GELU's output alive together (2·c·i), the residual stream, normed input and attention
    # output (2·c·h) and the norm's fp32 leftover (4h) beside them
    b, s, c, i = 4, 2048, BF16, 1024
    e = est(opt_gelu(2), mode="inference", batch_size=b, seq_len=s, new_tokens=1)
    assert e.per_gpu.components["activations"] == (2 * c * i + (2 * c + FP32) * H) * b * s


def test_python_gelu_prefill_and_low_precision_softmax(est):
    b, s, c, i = 1, 2048, BF16, 4 * H
    # NewGELUActivation's chain at its widest: x, x³ (then 0.044715·x³), the tanh argument and its tanh, 4·c·i, plus
    # one c·h (traced: GPT-2 prefill peaks at 4·c·i + c·h beyond the residual stream, trace_grid.jsonl)
    e = est(gpt2(2), mode="inference", batch_size=b, seq_len=s, new_tokens=1)
    assert e.per_gpu.components["activations"] == (4 * c * i + c * H + (2 * c + FP32) * H) * b * s
    # GPT-2's eager attention takes the softmax in the compute dtype: the scores and their softmax, 2·c per score
    e = est(gpt2(2), mode="inference", batch_size=b, seq_len=s, new_tokens=1, attention="eager")
    scores = b * HEADS * s * s * 2 * c
    qkv_out = c * 3 * H + 2 * c * H
    assert e.per_gpu.components["activations"] == max(scores + (qkv_out + (2 * c + FP32) * H) * b * s,
                                                     (4 * c * i + c * H + (2 * c + FP32) * H) * b * s)


@LITGPT_VERSIONS
def test_litgpt_lora_dropout_saves_output_and_mask(est, litgpt):
    # LitGPT's LoRA applies dropout (p = 0.05) to each adapted linear's input: the dropout output (c, saved by the A
    # matmul) and its bool mask (1 byte) per input element. Adding o_proj to the targets adds one such input of width q
    # (q, k, v share one fused, adapted linear: one dropout). The adapter's own r-wide product (r·c = 16 B per
    # token) is below this test's resolution.
    job = dict(mode="lora", lora_rank=8, precision="pure", runtime="litgpt", runtime_version=litgpt, batch_size=8, seq_len=1024)
    qv = per_layer(est, "activations", 8 * 1024, lora_targets="q_proj,v_proj", **job)
    qvo = per_layer(est, "activations", 8 * 1024, lora_targets="q_proj,v_proj,o_proj", **job)
    assert qvo - qv == pytest.approx(Q * (BF16 + 1), abs=8 * BF16)
    # LitGPT adapts q, k and v as one fused linear (LoRAQKVLinear) with one dropout on its input: adding k adds none
    qkv = per_layer(est, "activations", 8 * 1024, lora_targets="q_proj,k_proj,v_proj", **job)
    assert qkv == pytest.approx(qv, abs=8 * BF16)


def test_gguf_q8_0_whole_file(est):
    # The whole Q8_0 model: every linear, token_embd and output.weight at 8.5 bits (Q8_0 files keep output at Q8_0),
    # the 2·L + 1 RMSNorm weights at F32 (llama.cpp llama-quant.cpp).
    layers = 2
    linears = layers * (H * Q + 2 * H * KV + Q * H + 3 * H * I)
    e = est(tiny(layers), mode="inference", batch_size=1, seq_len=16, quant="gguf:Q8_0")
    expected = (linears + V * H + V * H) * 8.5 / 8 + (2 * layers + 1) * H * FP32
    assert e.per_gpu.components["weights"] == pytest.approx(expected, abs=2)


def test_collective_buffers_appear_with_a_second_gpu(est):
    # NCCL communicators (and their buffers) exist as soon as two processes talk; one GPU has none.
    job = dict(mode="train", precision="pure", batch_size=1, seq_len=16)
    one = est(tiny(2), **job).per_gpu
    two = est(tiny(2), num_gpus=2, strategy="ddp", **job).per_gpu
    assert two.device_total - two.reserved_peak > one.device_total - one.reserved_peak


@LITGPT_VERSIONS
def test_litgpt_unties_the_head(est, litgpt):
    # LitGPT's convert_hf_checkpoint copies a tied embedding into its own lm_head: V·h more weights; transformers
    # keeps one tensor.
    tied = {**tiny(2), "tie_word_embeddings": True}
    hf = est(tied, mode="inference", batch_size=1, seq_len=16).per_gpu.components["weights"]
    lit = est(tied, mode="inference", batch_size=1, seq_len=16, runtime="litgpt", runtime_version=litgpt).per_gpu.components["weights"]
    assert lit - hf == V * H * BF16


def test_torchtune_ignores_config_dropout_and_python_gelu(est):
    # torchtune's modules take no dropout from a Hugging Face config and compute GELU with the native kernel
    # (one saved input), unlike transformers' NewGELUActivation (five intermediate tensors, see above).
    def with_dropout(n):
        return {**opt_gelu(n), "dropout": 0.1}

    job = dict(precision="pure", runtime="torchtune", **TRAIN)
    assert per_layer(est, "activations", 8 * 1024, config=with_dropout, **job) == per_layer(est, "activations", 8 * 1024, config=opt_gelu, **job)
    hf = per_layer(est, "activations", 8 * 1024, config=gpt2, precision="pure", **TRAIN)
    tt = per_layer(est, "activations", 8 * 1024, config=gpt2, **job)
    assert hf - tt == 3 * BF16 * 4 * H


@pytest.mark.parametrize("runtime", ["vllm", "llamacpp"])
def test_inference_only_runtimes_refuse_training(runtime):
    from modelmem.errors import ModelmemError

    with pytest.raises(ModelmemError, match="runtime"):
        modelmem.estimate("llama-3.2-1b", mode="train", runtime=runtime)


def test_torchtune_fsdp_lora_grads_only_for_adapters(est):
    # torchtune's distributed LoRA recipe shards each layer with FSDP2 (fully_shard): frozen base weights stay plain
    # parameters without requires_grad, so the only gradients ever allocated are the adapters' — at most their
    # unsharded size, whatever the phase.
    for n in (2, 4):
        e = est(tiny(4), mode="lora", runtime="torchtune", num_gpus=n, strategy="fsdp", precision="pure", batch_size=1, seq_len=16)
        assert 0 <= e.per_gpu.components["gradients"] <= e.model.trainable_params * BF16


@pytest.mark.parametrize("precision, copy", [("mixed", BF16), ("pure", FP32)])
def test_peft_lora_saves_each_adapters_own_input_copy(est, precision, copy):
    # HF LoRA, q and v adapters in fp32 over a frozen bf16 base (get_peft_model's autocast_adapter_dtype): each adapter
    # casts its input to fp32 (PEFT LoraLayer._cast_input_dtype) and saves a copy of its own — under autocast the bf16
    # cast autocast makes back for the matmul (c·h per adapter), without autocast the fp32 cast itself (4h; traced:
    # 4 − 2 layer differences of Llama shapes at widths 1024–4096, 6h above a shared bf16 normed input). The frozen
    # base linears save no inputs, and the RMSNorms (frozen weights) save only their fp32 upcast (4h) and rstd. SDPA
    # as above; the frozen SwiGLU keeps SiLU's input, its output and up (down's input is not needed). Each adapter's
    # lora_B saves lora_A's rank-8 output in the same dtype as the copy.
    c = BF16
    job = dict(mode="lora", lora_rank=8, lora_targets="q_proj,v_proj", precision=precision, batch_size=8, seq_len=1024)
    got = per_layer(est, "activations", 8 * 1024, **job)
    expected = 2 * (FP32 * H + RSTD) + c * (Q + 2 * KV) + c * Q + FP32 * HEADS + 3 * c * I + 2 * copy * H + 2 * 8 * copy
    assert got == expected


def deepseek_v2(layers: int) -> dict:
    return {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "hidden_size": H, "intermediate_size": I,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-6,
            "torch_dtype": "bfloat16", "q_lora_rank": None, "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32,
            "v_head_dim": 32, "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
            "first_k_dense_replace": 1, "moe_layer_freq": 1, "topk_method": "greedy", "scoring_func": "softmax"}


def test_mla_cache_in_transformers_holds_the_latent_since_5(est):
    # transformers 5's DeepseekV2Attention calls cache.update(k_nope, k_pe) "while the latent KV is still
    # compressed": kv_lora_rank + qk_rope_head_dim = 64 + 16 elements per token per layer (DeepSeek-V2 §2.1.2,
    # "cache c_KV and k_R"); the 4.x remote code decompressed first and cached per-head keys (nope + rope) and
    # values, heads × (32 + 16 + 32).
    b, prompt, new, layers = 2, 64, 4096, 4
    e = est(deepseek_v2(layers), mode="inference", batch_size=b, seq_len=prompt, new_tokens=new)
    assert e.per_gpu.components["kv_cache"] == layers * (64 + 16) * b * (prompt + new) * BF16
    e = est(deepseek_v2(layers), mode="inference", batch_size=b, seq_len=prompt, new_tokens=new, runtime_version="4.46")
    assert e.per_gpu.components["kv_cache"] == layers * 4 * (32 + 16 + 32) * b * (prompt + new) * BF16


@LITGPT_VERSIONS
def test_litgpt_fsdp_lora_frozen_weights_get_gradients(est, litgpt):
    # LitGPT wraps each Block in FSDP1 with use_orig_params: a FlatParameter that holds any adapter requires grad
    # as a whole, so the frozen block weights get (unsharded, under no_sync) gradients too (pytorch/pytorch#91167,
    # Lightning-AI/litgpt#676): at least every block parameter's worth, far above the adapters' own.
    e = est(tiny(4), mode="lora", runtime="litgpt", runtime_version=litgpt, num_gpus=2, strategy="fsdp", precision="pure",
            batch_size=1, seq_len=16)
    block_params = 4 * (H * Q + 2 * H * KV + Q * H + 3 * H * I + 2 * H)
    assert e.per_gpu.components["gradients"] >= block_params * BF16


def test_vllm_fills_its_share_with_kv_blocks(est):
    # vLLM (worker determine_num_available_blocks): total memory × gpu_memory_utilization, less the profile run's
    # peak (weights and activations) and what torch does not see (the CUDA context), all goes to KV-cache blocks.
    from modelmem.catalog.gpus import lookup_gpu

    e = est(tiny(2), mode="inference", runtime="vllm", gpu_memory_utilization=0.5, seq_len=2048)
    comp = e.per_gpu.components
    # V1 (gpu_worker.determine_available_memory): the CUDA context predates the profile's baseline; the profiler's
    # non-torch increase (0.2 GiB, runtimes/vllm.py) is subtracted instead; the pool is whole blocks.
    budget = int(lookup_gpu("h100-80gb").memory_bytes * 0.5) - comp["weights"] - comp["activations"] - int(0.2 * 2**30)
    assert budget - BYTES_IN_MIB <= comp["kv_cache"] <= budget


def test_torchao_weight_only_quantizes_every_linear_transformers_skips_the_head(est):
    # tiny(2) with an intermediate size of 768: torchao's int4 tinygemm layout packs only linears whose in_features
    # divide by the group size (128); 704 would leave down_proj unquantized, which is not what this test is about.
    layers, inter = 2, 768
    config = tiny(layers, intermediate_size=inter)
    # (in_features, out_features) of every nn.Linear of LlamaForCausalLM
    body = layers * [(H, Q), (H, KV), (H, KV), (Q, H), (H, inter), (H, inter), (inter, H)]
    head = (H, V)
    rest = (V * H + (2 * layers + 1) * H) * BF16  # the embedding and the RMSNorm weights stay bf16

    def int8(i, o):  # quant_api.py apply_int8wo_quant: int8 codes, per output row a bf16 scale and an int64 zero point
        return i * o + o * (BF16 + 8)

    def int4(i, o):  # int4_weight_only(group_size=128): packed 4-bit codes, a bf16 scale and a bf16 zero per group
        return i * o // 2 + o * (i // 128) * (BF16 + BF16)

    job = dict(mode="inference", batch_size=1, seq_len=16)
    # torchao's quantize_ (gpt-fast generate.py) takes its default filter, _is_linear: every nn.Linear, the output
    # layer included.
    for quant, size in (("int8-wo", int8), ("int4", int4)):
        w = est(config, runtime="torchao", quant=quant, **job).per_gpu.components["weights"]
        assert w == pytest.approx(sum(size(i, o) for i, o in body + [head]) + rest, abs=2)
    # transformers' TorchAoHfQuantizer leaves get_keys_to_not_convert alone: the output embedding stays bf16.
    w = est(config, runtime="hf", quant="int8-wo", **job).per_gpu.components["weights"]
    assert w == pytest.approx(sum(int8(i, o) for i, o in body) + V * H * BF16 + rest, abs=2)


@pytest.mark.parametrize("version", ["0.8", "0.2"])  # the V1 and V0 engines' records
def test_vllm_caches_the_mla_latent_per_token(version):
    # DeepSeek-V2-Lite (config.json: 27 layers, kv_lora_rank 512, qk_rope_head_dim 64): vLLM's MLAAttentionSpec
    # caches the compressed latent and the shared rope key, (512 + 64) bf16 elements per token per layer, where
    # per-head keys and values would take 16 heads × (192 + 192).
    per_token = (512 + 64) * BF16 * 27  # 31,104 bytes
    e = modelmem.estimate("deepseek-ai/DeepSeek-V2-Lite", mode="inference", runtime="vllm", runtime_version=version,
                          gpu="h100-80gb", max_model_len=4096)
    pool = e.per_gpu.components["kv_cache"]
    # The pool is whole blocks of 16 tokens in every layer; "GPU KV cache size: N tokens" counts them
    # (kv_cache_utils.get_num_blocks), and a request of 4,096 tokens takes 4,096 of them (max concurrency).
    assert pool % (16 * per_token) == 0
    assert e.per_gpu.serving.kv_cache_tokens == pool // per_token
    assert e.per_gpu.serving.max_concurrency == pytest.approx(pool / per_token / 4096)


# ---------------------------------------------------------------------------------- sliding masks, MoE top-k, buffers
def test_sdpa_sliding_window_saves_the_mask_and_repeated_kv(est):
    # A sliding window shorter than the sequence: transformers passes SDPA a mask, so it cannot use enable_gqa and
    # repeats K and V to every head first (integrations/sdpa_attention.py use_gqa_in_sdpa), and CUDA's selector then
    # takes the memory-efficient kernel, which saves the additive mask as a bias: c per key per token, and the
    # repeated K and V, 2·c·(q − kv) per token, on every sliding layer (traced: Gemma-3-1B/4B).
    c, s = BF16, 1024
    def mistral(window):
        return lambda n: tiny(n, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=window)
    job = dict(mode="train", precision="pure", batch_size=2, seq_len=s)
    wide = per_layer(est, "activations", 2 * s, config=mistral(4096), **job)
    narrow = per_layer(est, "activations", 2 * s, config=mistral(256), **job)
    assert narrow - wide == c * s + 2 * c * (Q - KV)


def test_moe_top_k_slots(est):
    # Mixtral-style experts under transformers 5's grouped_mm, full training: each of a token's k slots saves the
    # expert's gate, activation, up and product (4·c·i, as a dense SwiGLU does), the copy of the hidden state the
    # gate/up GEMM keeps and the down output the routing-weight multiply keeps (2·c·h), and topk's backward keeps
    # its int64 index (8). Doubling k at the same expert count and width adds k more of each.
    def mixtral(k):
        return lambda n: {**tiny(n), "model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                          "num_local_experts": 8, "num_experts_per_tok": k}
    c = BF16
    job = dict(precision="pure", **TRAIN)
    two = per_layer(est, "activations", 8 * 1024, config=mixtral(2), **job)
    four = per_layer(est, "activations", 8 * 1024, config=mixtral(4), **job)
    assert four - two == (4 - 2) * (4 * c * I + 2 * c * H + 8)


def _buffers(config: dict, **job) -> int:
    from modelmem.memory.communication import collective_buffer_bytes
    from modelmem.model import prepare
    from modelmem.parallel import shares
    from modelmem.job import make_job
    from modelmem.sources.config import spec_from_config

    spec = spec_from_config(config, "tiny")
    j = make_job(**job)
    m, j = prepare(spec, j)
    return collective_buffer_bytes(m, j, j.num_gpus, shares(spec, j, j.num_gpus, m.counts))


def test_data_parallel_buffers():
    c = BF16
    layer = H * Q + 2 * H * KV + Q * H + 3 * H * I + 2 * H  # q, k, v, o, gate/up/down, two RMSNorms
    params = 2 * V * H + 2 * layer + H  # embeddings, untied head, two layers, final norm
    job = dict(mode="train", precision="pure", batch_size=1, seq_len=16)
    # DDP (bucket views off) copies every gradient into its buckets, from two ranks on
    assert _buffers(tiny(2), strategy="ddp", num_gpus=2, **job) == params * c
    # ZeRO-2 reduces through buckets the size of the largest unit (here the embedding), double-buffered
    assert _buffers(tiny(2), strategy="zero2", num_gpus=2, **job) == 2 * V * H * c
    # FSDP: the layer being computed and the one prefetched (FSDP2's default), gathered, when they outweigh the
    # root unit (a 64-entry vocabulary), plus that unit's unsharded gradients for the reduce-scatter
    small = tiny(2, vocab_size=64)
    assert _buffers(small, strategy="fsdp", num_gpus=2, **job) == 2 * layer * c + layer * c


def test_adafactor_factors_learned_positions(est):
    # GPT-2's trainable tensors: wte V×H (also the tied head), wpe 4096×H, per layer Conv1D c_attn H×3H, c_proj H×H,
    # c_fc H×4H and the MLP's c_proj 4H×H; vectors: per layer ln_1 and ln_2 (weight and bias, 2H each) and the
    # Conv1D biases (3H + H + 4H + H), then ln_f (2H). transformers' Adafactor keeps a row and a column statistic per
    # matrix and the full second moment per vector, in fp32 (Shazeer & Stern 2018 §3; transformers optimization.py).
    layers = 2
    matrices = [(V, H), (4096, H)] + layers * [(H, 3 * H), (H, H), (H, 4 * H), (4 * H, H)]
    vectors = layers * (2 * H + 2 * H + 3 * H + H + 4 * H + H) + 2 * H
    e = est(gpt2(layers), mode="train", precision="pure", batch_size=1, seq_len=16, optimizer="adafactor")
    assert e.model.trainable_params == sum(r * c for r, c in matrices) + vectors
    assert e.per_gpu.components["optimizer_states"] == (sum(r + c for r, c in matrices) + vectors) * FP32


@pytest.mark.parametrize("runtime, version, mode", [
    ("hf", None, "lora"), ("hf", None, "inference"), ("torchtune", None, "train"), ("litgpt", "0.4", "lora"),
    ("litgpt", "0.5", "inference"), ("torchao", None, "inference"), ("vllm", None, "inference"),
    ("vllm", "0.2", "inference")])
def test_transformers_layout_facts_apply_to_transformers_only(runtime, version, mode):
    # Falcon's new decoder architecture in transformers expands K and V to every query head before attention and
    # cache, takes them out of the fused projection by indexing, and always hands SDPA a mask (modeling_falcon.py).
    # Those are facts of transformers' code: torchtune, LitGPT (n_query_groups K/V), torchao's gpt-fast and vLLM
    # (num_kv_heads pages) run their own, so switching the facts off changes nothing there and something under hf.
    import dataclasses

    from modelmem.sources.config import spec_from_config

    cfg = {"model_type": "falcon", "hidden_size": H, "num_attention_heads": HEADS, "num_kv_heads": KV_HEADS,
           "num_hidden_layers": 2, "vocab_size": 512, "new_decoder_architecture": True, "torch_dtype": "bfloat16"}
    spec = spec_from_config(cfg, "falcon-tiny")
    plain = dataclasses.replace(spec, caches_expanded_kv=False, fused_qkv_split_copies=False, sdpa_always_masked=False)
    job = dict(mode=mode, runtime=runtime, runtime_version=version, batch_size=2, seq_len=256, num_gpus=1,
               gpu="h100-80gb")
    if mode == "inference":
        job["new_tokens"] = 16
    if mode != "inference":
        job["precision"] = "pure"
    a, b = modelmem.estimate(spec, **job), modelmem.estimate(plain, **job)
    same = a.per_gpu.components == b.per_gpu.components and a.to_dict().get("serving") == b.to_dict().get("serving")
    assert same == (runtime != "hf")


@LITGPT_VERSIONS
def test_litgpt_mla_caches_per_head_keys_and_values(est, litgpt):
    # LitGPT's MultiheadLatentAttention.build_kv_cache (litgpt/model.py): K of n_head × qk_head_dim (nope + rope)
    # and V of n_head × v_head_dim, for max_seq_length positions (preallocated): it decompresses before caching.
    b, prompt, new, layers = 2, 64, 512, 4
    e = est(deepseek_v2(layers), mode="inference", batch_size=b, seq_len=prompt, new_tokens=new, runtime="litgpt",
            runtime_version=litgpt)
    assert e.per_gpu.components["kv_cache"] == layers * 4 * ((32 + 16) + 32) * b * (prompt + new) * BF16


def test_torchao_runs_sdpa_for_every_model(est):
    # torchao's gpt-fast Attention.forward calls F.scaled_dot_product_attention whatever the model
    # (torchao/_models/llama/model.py): a Gemma-2 asked for SDPA gets it, with no heads × s × s scores, unlike
    # transformers, whose Gemma-2 has no SDPA path.
    job = dict(mode="inference", batch_size=2, seq_len=1024, new_tokens=1, runtime="torchao")
    sdpa = est(gemma2(2), attention="sdpa", **job).per_gpu.components["activations"]
    eager = est(gemma2(2), attention="eager", **job).per_gpu.components["activations"]
    assert sdpa < eager
    hf = dict(job, runtime="hf")
    assert est(gemma2(2), attention="sdpa", **hf).per_gpu.components["activations"] == \
        est(gemma2(2), attention="eager", **hf).per_gpu.components["activations"]


def test_final_layernorm_saves_its_input_beside_the_loss(est):
    # The norm before the output layer sits outside every layer: native_layer_norm keeps its input and an fp32 mean
    # and rstd per token until the output layer's backward has run (OPT with and without its final LayerNorm,
    # `_remove_final_layer_norm`; LoRA on q and v, so the frozen output layer keeps nothing of its own).
    c, tokens = BF16, 8 * 1024
    job = dict(mode="lora", lora_targets="q_proj,v_proj", precision="pure", batch_size=8, seq_len=1024)
    with_norm = est(opt_gelu(2), **job).per_gpu.components["activations"]
    without = est({**opt_gelu(2), "_remove_final_layer_norm": True}, **job).per_gpu.components["activations"]
    assert with_norm - without == (c * H + 2 * FP32) * tokens


def test_torchtune_preallocates_its_cache_and_has_no_mla(est):
    # torchtune's recipes/generate.py calls model.setup_caches(...) for the whole length before the prompt runs
    # (torchtune/modules/kv_cache.py KVCache of max_seq_len): the prefill (this job's peak, a long prompt) already
    # holds the cache for every position to come.
    b, prompt, new = 2, 4096, 1024
    e = est(tiny(4), mode="inference", batch_size=b, seq_len=prompt, new_tokens=new, runtime="torchtune")
    assert e.per_gpu.notes[-1] == "peak at prefill"
    assert e.per_gpu.components["kv_cache"] == 4 * 2 * KV_HEADS * HD * b * (prompt + new) * BF16
    # neither torchtune 0.6 nor torchao's gpt-fast has multi-head latent attention: an MLA model is refused
    for runtime in ("torchtune", "torchao"):
        with pytest.raises(modelmem.errors.InvalidJobError, match="runtime"):
            est(deepseek_v2(2), mode="inference", batch_size=1, seq_len=16, runtime=runtime)


def test_torchtune_trains_in_one_dtype(est):
    # torchtune's recipes take one dtype (training.get_dtype: bf16 or fp32) and never enter torch.autocast: a mixed
    # precision job is refused with one line, not sized as something torchtune cannot run.
    with pytest.raises(modelmem.errors.InvalidJobError, match="precision"):
        est(tiny(2), mode="lora", precision="mixed", runtime="torchtune")
    assert est(tiny(2), mode="lora", runtime="torchtune").job.precision == "pure"


def test_nccl_buffers_from_the_published_reading(est):
    # PyTorch process groups on 4×A100 NVLink after a 4 MB all-reduce (NVIDIA/nccl#964): 544 MiB of NCCL buffers
    # for a 2-GPU group, 688 MiB for larger ones, on top of each process's CUDA context.
    job = dict(mode="train", precision="pure", batch_size=1, seq_len=16, strategy="fsdp")
    one = est(tiny(4), **{**job, "strategy": "none"}).per_gpu.cuda_context
    assert est(tiny(4), num_gpus=2, **job).per_gpu.cuda_context - one == 544 * BYTES_IN_MIB
    assert est(tiny(4), num_gpus=4, **job).per_gpu.cuda_context - one == 688 * BYTES_IN_MIB


def _final_norm_bytes(**job) -> int:
    from modelmem.job import make_job
    from modelmem.memory.activations import training_activations
    from modelmem.model import prepare
    from modelmem.parallel import shares
    from modelmem.sources.config import spec_from_config

    m, j = prepare(spec_from_config(tiny(2), "tiny"), make_job(num_gpus=1, **job))
    return training_activations(m, j, shares(m.spec, j, 1, m.counts), []).final_norm


def test_what_compile_leaves_of_the_final_norm():
    """The final RMSNorm, outside every checkpointed block, saves its fp32 input (4h), rstd (4) and, when its weight
    trains, the normed tensor (c·h) (torchtune modules/rms_norm.py, HF LlamaRMSNorm). torchtune compiles each decoder
    block only (training/_compile.py compile_model: `m.compile()` per TransformerSelfAttentionLayer), so compile leaves
    its final norm as it is; a whole-model torch.compile (transformers, LitGPT) lets Inductor recompute the upcast
    from the last layer's output, which leaves the normed tensor alone."""
    tokens = 2 * 512
    job = dict(mode="train", dtype="bf16", precision="pure", optimizer="adamw", batch_size=2, seq_len=512,
               grad_checkpointing="full")
    eager = tokens * (FP32 * H + FP32 + BF16 * H)
    for runtime in ("torchtune", "hf"):
        assert _final_norm_bytes(runtime=runtime, compile=False, **job) == eager
    assert _final_norm_bytes(runtime="torchtune", compile=True, **job) == eager
    assert _final_norm_bytes(runtime="hf", compile=True, **job) == tokens * BF16 * H


def test_torchtune_expands_k_and_v_to_every_query_head(est):
    # torchtune's MultiHeadAttention broadcasts K and V to the query heads before SDPA
    # (`k.unsqueeze(2).expand(...).flatten(1, 2)`, modules/attention.py): the kernel saves q-wide copies of both
    # (traced, 4 − 2 layers of torchtune's llama3_2: +2·c·(q − kv) per token per layer over transformers' layer);
    # under compile the partitioner saves the unexpanded K and V and redoes the copy.
    c = BF16
    job = dict(mode="lora", lora_targets="q_proj,v_proj", precision="pure", batch_size=8, seq_len=1024, loss="chunked")
    eager = per_layer(est, "activations", 8 * 1024, runtime="torchtune", **job)
    compiled = per_layer(est, "activations", 8 * 1024, runtime="torchtune", compile=True, **job)
    # torchtune's adapters are in the model dtype: no fp32 input copies; lora_A's rank-8 outputs are bf16
    hf_like = 2 * (FP32 * H + RSTD) + c * H + c * (Q + 2 * KV) + c * Q + FP32 * HEADS + 3 * c * I + 2 * 8 * c
    assert eager == hf_like + 2 * c * (Q - KV)
    # compile also recomputes the RMSNorms' fp32 upcasts and one of SwiGLU's i-wide tensors (the Inductor rule
    # of memory/activations.py training_activations)
    assert eager - compiled == 2 * c * (Q - KV) + 2 * FP32 * H + c * I


def neox(layers: int) -> dict:
    return {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": H, "intermediate_size": 4 * H,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "vocab_size": V, "max_position_embeddings": 4096,
            "rotary_pct": 0.25, "use_parallel_residual": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0, "hidden_dropout": 0.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def test_a_parallel_blocks_first_mlp_is_idle_under_attention_only_lora(est):
    # GPT-NeoX's parallel block feeds the MLP from the layer's own norm of its input; in layer 0 that input is the
    # frozen embeddings' output, which needs no gradient, so with adapters on attention only the first MLP saves
    # nothing — here GELU's input (c·i), the one tensor a frozen native-GELU MLP saves (traced: Phi-1.5 LoRA q,v
    # keeps 23 of 24 GELU chains). Everything else outside the layers is the final LayerNorm: its input and fp32
    # mean and rstd (c·h + 8). With A(L) = L·layer − idle + final: 2·A(2) − A(4) = final − idle.
    c, tokens = BF16, 8 * 1024
    job = dict(mode="lora", lora_targets="query_key_value", precision="pure", batch_size=8, seq_len=1024)
    a2 = est(neox(2), **job).per_gpu.components["activations"]
    a4 = est(neox(4), **job).per_gpu.components["activations"]
    assert 2 * a2 - a4 == tokens * (c * H + 2 * FP32 - c * 4 * H)


def phi3(layers: int) -> dict:
    return {**tiny(layers), "model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}


def test_mixed_precision_with_fused_projections_casts_once_per_norm(est):
    # As test_mixed_precision_keeps_an_fp32_residual_stream, with Phi-3's fused qkv_proj and gate_up_proj: each
    # RMSNorm's normed tensor is fp32 (4h where pure keeps c·h), and its fp32 output is cast by its one reader, as
    # pure precision's one shared c·h output: mixed holds 2 × (4 − c)·h more per layer, no extra casts.
    pure = per_layer(est, "activations", 8 * 1024, config=phi3, precision="pure", **TRAIN)
    mixed = per_layer(est, "activations", 8 * 1024, config=phi3, precision="mixed", **TRAIN)
    assert mixed - pure == 2 * (FP32 - BF16) * H


def test_mixed_precision_mla_casts_the_attention_norm_twice(est):
    # DeepSeek-V2's attention reads its norm's output with two linears, q_proj and kv_a_proj_with_mqa
    # (modeling_deepseek_v2 DeepseekV2Attention, q_lora_rank None); the dense MLP with gate and up: under autocast
    # each norm's normed tensor is fp32 and each reader saves its own bf16 cast, one more per norm than pure's shared
    # output.
    dense = lambda layers: {**deepseek_v2(layers), "first_k_dense_replace": layers}  # noqa: E731
    pure = per_layer(est, "activations", 8 * 1024, config=dense, precision="pure", **TRAIN)
    mixed = per_layer(est, "activations", 8 * 1024, config=dense, precision="mixed", **TRAIN)
    assert mixed - pure == 2 * (FP32 - BF16) * H + (2 - 1) * BF16 * H + (2 - 1) * BF16 * H
