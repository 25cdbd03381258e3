"""Activation memory: what autograd saves for backward, per token per layer, and what inference holds briefly.

The per-layer inventory follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", §4.1: every tensor a layer saves for backward), rewritten for the modules of current decoders (RMSNorm's
fp32 upcast, SwiGLU, GQA, flash/memory-efficient attention that saves q, k, v, output and logsumexp instead of
the s×s scores) and checked against fake-tensor traces of the transformers code (benchmarks/results/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelmem.dtypes import DTYPE_BYTES
from modelmem.job import Job
from modelmem.counts import lora_expert_params
from modelmem.units import BOOL_BYTES, FP32_BYTES

if TYPE_CHECKING:
    from collections.abc import Callable

    from modelmem.model import PreparedModel
    from modelmem.parallel import Shares
from modelmem.runtimes.profiles import profile_for
from modelmem.spec import ModelSpec

# Modules whose input is the attention block's normed hidden state / the o_proj input / the MLP's normed input /
# the down projection's input, by the names transformers gives them across families.
_ATTN_IN = {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv", "q_a_proj", "kv_a_proj_with_mqa", "query", "key", "value"}
_ATTN_OUT = {"o_proj", "dense", "c_proj", "out_proj"}
# GPT-2 and BigCode name both the attention's and the MLP's output Conv1D `c_proj` (PEFT adapts both), so the name
# is in both sets; GPT-J's MLP is fc_in/fc_out (counts.py linear_modules).
_MLP_IN = {"gate_proj", "up_proj", "gate_up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "w3", "fc_in"}
_MLP_OUT = {"down_proj", "fc2", "dense_4h_to_h", "w2", "c_proj", "fc_out"}


@dataclass(frozen=True)
class Shapes:
    h: int  # hidden size
    q: int  # query width (heads × head_dim; MLA: heads × (nope + rope))
    kv: int  # key width as attention sees it (GQA: kv_heads × head_dim; MLA: decompressed per-head keys)
    v: int  # value width
    i: int  # MLP width a token passes through (MoE: top-k experts + shared experts)
    heads: int
    gated: bool


def shapes(spec: ModelSpec) -> Shapes:
    if spec.mla is not None:
        m = spec.mla
        q = spec.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim)
        kv, v = q, spec.num_heads * m.v_head_dim
    else:
        q, kv, v = spec.q_dim, spec.kv_dim, spec.kv_dim
    i = spec.intermediate_size
    if spec.moe is not None:
        moe = spec.moe
        moe_i = moe.experts_per_token * moe.expert_intermediate_size + moe.num_shared_experts * (moe.shared_intermediate_size or moe.expert_intermediate_size)
        moe_layers = sum(1 for n in range(spec.num_layers) if moe.is_moe_layer(n))
        # Average over layers: dense layers (DeepSeek's first_k_dense) keep the dense width.
        i = (moe_i * moe_layers + spec.intermediate_size * (spec.num_layers - moe_layers)) // max(1, spec.num_layers)
    return Shapes(spec.hidden_size, q, kv, v, i, spec.num_heads, spec.gated_mlp)


_PYTHON_GELUS = ("gelu_new", "gelu_fast", "gelu_python")


def effective_attention(spec: ModelSpec, job: Job) -> str:
    """transformers models without an SDPA path fall back to eager; flash-attention 2 supports soft-capping."""
    if job.attention == "sdpa" and not spec.has_sdpa and profile_for(job).falls_back_to_eager:
        return "eager"
    return job.attention


def _copies_inputs(job: Job) -> bool:
    """PEFT's adapters are fp32 (get_peft_model autocast_adapter_dtype) and each casts its input to that dtype
    (peft LoraLayer._cast_input_dtype), so every adapter saves a copy of its own and the frozen base linear saves
    nothing: under autocast, which casts it back for the matmul, a low-precision copy; without autocast, on a 16-bit
    model, the fp32 cast itself. An fp32 model without autocast casts nothing."""
    return job.uses_lora and profile_for(job).lora_casts_adapter_input and (
        job.precision == "mixed" or DTYPE_BYTES[job.dtype] < FP32_BYTES)


def _adapter_copy_bytes(job: Job, c: int) -> int:
    """Bytes per element of an adapter's saved input copy (see _copies_inputs): the fp32 cast without autocast (traced:
    Llama shapes, pure bf16 LoRA q,v, 4 − 2 layers: two 4h copies and no bf16 normed input per layer)."""
    return c if job.precision == "mixed" else FP32_BYTES


def _targets(job: Job, target_names: frozenset[str]) -> tuple[bool, bool, bool, bool]:
    """Which linear inputs must be saved: all in full training; only LoRA-targeted ones with a frozen base (and
    none when each adapter saves a copy of its own)."""
    if job.mode == "train":
        return True, True, True, True
    if job.mode == "qlora" and profile_for(job).saves_4bit_inputs and job.quant in ("nf4", "fp4", "nf4-dq"):
        # bitsandbytes < 0.43.2 (LitGPT 0.3–0.4 pin 0.42) MatMul4Bit saves its input whenever it needs a grad,
        # for every quantized linear (bitsandbytes PR #1270 removed it: "the bug that caused a lot of memory
        # issues with QLoRA").
        return True, True, True, True
    if _copies_inputs(job):
        return False, False, False, False
    t = target_names
    return bool(t & _ATTN_IN), bool(t & _ATTN_OUT), bool(t & _MLP_IN), bool(t & _MLP_OUT)


def _adapter_input_copies(spec: ModelSpec, job: Job, target_names: frozenset[str], c: int) -> int:
    """Bytes per token per layer of the adapters' own input copies (traced: Llama-3.1-8B LoRA q,v +4h)."""
    if not _copies_inputs(job):
        return 0
    s = shapes(spec)
    t = target_names
    return c * (len(t & _ATTN_IN) * s.h + len(t & _ATTN_OUT) * s.q + len(t & _MLP_IN) * s.h + len(t & _MLP_OUT) * s.i)


def mlp_saved_bytes_per_token(spec: ModelSpec, job: Job, save_mlp_out: bool, c: int, autocast: bool) -> float:
    """What one dense (or top-k expert) MLP saves for backward, per token."""
    s = shapes(spec)
    mlp = 0.0
    # MLP. SwiGLU saves gate (activation input), activation output and up (for the product), and the product
    # (down's input); a plain MLP saves fc1's output (activation input) and the activation output (fc2 input).
    if spec.clamped_glu:
        # gpt-oss GptOssExperts._apply_gate: gate_up (2i, which both clamps save as their inputs), the clamped gate,
        # σ's output, the GLU and `up + 1` (the products' operands), then the product (traced: gpt-oss-20b LoRA 6·c·i)
        mlp += 6 * c * s.i + (c * s.i if save_mlp_out else 0)
    elif s.gated:
        mlp += 3 * c * s.i + (c * s.i if save_mlp_out else 0)
    elif spec.activation == "relu":
        mlp += c * s.i  # ReLU saves its output, which is fc2's input too (traced: OPT-125m, 7h less than GELU's)
    else:
        mlp += c * s.i + (c * s.i if save_mlp_out else 0)
    if profile_for(job).python_tanh_gelu and spec.activation in _PYTHON_GELUS:
        # transformers' NewGELUActivation is written out in Python (0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))):
        # pow, tanh and the final product save three more intermediate-sized tensors (traced: GPT-2).
        mlp += 3 * c * s.i
        if autocast:
            # under CUDA autocast pow runs in fp32: it saves an fp32 copy of x (instead of x) and the chain
            # through tanh and 1 + tanh is fp32; only 0.5·x stays in the compute dtype (traced, fake-CUDA route:
            # GPT-2 LoRA 14·i bytes per token where bf16 saves 4·c·i)
            mlp += (FP32_BYTES - c) * s.i * 3
    return mlp


def _saved_dtype(job: Job) -> tuple[int, bool]:
    """(bytes per element of what a layer saves, whether it runs under CUDA autocast). HF Trainer's mixed precision
    is CUDA autocast (torch.autocast "cuda"): its fp32 ops change what is saved."""
    c = DTYPE_BYTES[job.dtype] if job.precision == "pure" or job.mode != "train" else 2
    if job.dtype == "fp32":
        c = FP32_BYTES
    return c, job.training and job.precision == "mixed" and c < FP32_BYTES


def layer_bytes_per_token(spec: ModelSpec, job: Job, target_names: frozenset[str], seq_len: int) -> float:
    """Bytes one decoder layer saves for backward per token (no checkpointing)."""
    s = shapes(spec)
    c, autocast = _saved_dtype(job)
    save_attn_in, save_attn_out, save_mlp_in, save_mlp_out = _targets(job, target_names)
    trainable_norms = job.mode == "train"
    # Norms. HF RMSNorm upcasts to fp32 and saves that for pow and mul (4h) and rsqrt's fp32 result (4 bytes a
    # token); `weight * normed` saves the low-precision `normed` when the weight trains, and its output (a new
    # tensor) is saved by the next linear when that linear's weight or adapter trains. LayerNorm (native_layer_norm)
    # saves its input plus fp32 mean and rstd. Traced: Llama-3.1-8B saves 8h per RMSNorm in full training
    # (trace_grid.jsonl); 4 − 2 layer traces of Llama shapes at widths 1024–4096 hold the inventory + 8.5 bytes per
    # token per layer (the two rstd, 512-byte rounding).
    if spec.norm == "rmsnorm" and (spec.fp32_norm_multiply or profile_for(job).fp32_rmsnorm):
        # Gemma's RMSNorm (and LitGPT's for every model) stays in fp32 through the weight multiply: both the
        # fp32 input and the fp32 normed tensor are saved.
        norm_fixed = FP32_BYTES * s.h + FP32_BYTES + (FP32_BYTES * s.h if trainable_norms else 0)
    elif spec.norm == "rmsnorm":
        norm_fixed = (FP32_BYTES * s.h if c < FP32_BYTES else c * s.h) + FP32_BYTES + (c * s.h if trainable_norms else 0)
    elif autocast:
        # CUDA autocast runs layer_norm in fp32 (its fp32 op list): native_layer_norm saves an fp32 copy of its
        # input (traced, fake-CUDA route: GPT-2 LoRA 4h per LayerNorm), and its fp32 output is cast again by
        # each linear that keeps its input
        norm_fixed = FP32_BYTES * s.h + 8
    else:
        norm_fixed = c * s.h + 8
    norm_out_saved = [trainable_norms or save_attn_in, trainable_norms or save_mlp_in]
    n_norms = spec.norms_per_layer
    total = n_norms * norm_fixed
    total += sum(c * s.h for saved in norm_out_saved[: max(1, min(2, n_norms))] if saved)
    total += qk_norm_bytes_per_token(spec, job, c)
    attention = effective_attention(spec, job)
    total += attention_core_bytes_per_token(spec, job, seq_len, c)
    split_copies = spec.fused_qkv_split_copies and profile_for(job).runs_transformers_models
    # eager attention's matmul copies the non-contiguous v view before saving it (traced: Phi-3 eager, a c·v clone
    # and no fused storage), so only SDPA keeps the fused output alive
    if spec.fused_qkv and not spec.learned_positions and not split_copies and attention != "eager":
        # A fused q/k/v projection's output is one storage; v (or k) is a view of it that the attention kernel
        # saves, so the q and k parts stay allocated beside the rotated (or reshaped) q and k (traced: Phi-3-mini
        # +12 KiB per token per layer). With learned positions (GPT-2, BigCode) nothing rewrites q and k: the
        # attention saves three views of that one storage (traced: GPT-2 c_attn's 6h, nothing more).
        total += c * (s.q + s.kv)
    if save_attn_out and attention == "eager":
        # o_proj's input: eager's output made contiguous after the head transpose. Flash and memory-efficient
        # kernels write (b, s, heads, d) and return a transposed view, so the input is the saved output itself.
        total += c * s.q
    total += mlp_saved_bytes_per_token(spec, job, save_mlp_out, c, autocast)
    total += moe_dispatch_bytes_per_token(spec, job, c)
    if job.training and profile_for(job).applies_config_dropout and spec.residual_dropout > 0:
        total += 2 * s.h * BOOL_BYTES  # residual dropouts after attention and MLP keep masks
    if spec.moe is not None:
        # fp32 router logits, and 8 bytes per chosen expert (the top-k weights and indices)
        total += FP32_BYTES * spec.moe.num_experts + 8 * spec.moe.experts_per_token
    if job.mode == "train" and job.precision == "mixed" and job.dtype != "fp32" and spec.norm == "rmsnorm":
        # fp32 weights under autocast keep the residual stream and RMSNorms in fp32 (memory/fitted.py, fitted on
        # Llama); a LayerNorm's fp32 input under autocast is counted with the norm above (traced: GPT-2).
        total += _autocast_norm_bytes_per_token(spec, c)
    total += _adapter_input_copies(spec, job, target_names, _adapter_copy_bytes(job, c))
    if job.uses_lora:
        # each adapter's lora_B saves its input, lora_A's rank-r output, in the adapter's dtype (traced: LoRA q,v,
        # 4 − 2 layers, 2·r·c under autocast, 2·r·4 with fp32 adapters without it)
        adapter_c = _adapter_copy_bytes(job, c) if _copies_inputs(job) else c
        total += len(target_names & (_ATTN_IN | _ATTN_OUT | _MLP_IN | _MLP_OUT)) * job.lora_rank * adapter_c
    # LoRA dropout p > 0 (LitGPT's default 0.05; PEFT and torchtune default to 0.0, nn.Identity) saves more.
    if job.uses_lora and profile_for(job).lora_dropout > 0:
        total += lora_dropout_bytes_per_token(spec, job, target_names)
    return total


def _autocast_norm_bytes_per_token(spec: ModelSpec, c: int) -> int:
    """fp32 weights under autocast, what the RMSNorms save beyond pure precision: each norm's normed tensor, which its
    weight's gradient needs, is fp32 (4h for c·h), and each linear reading a norm's fp32 output casts it to the compute
    dtype itself and saves that copy, where pure precision's linears share one output (traced, layer_inventory_traces:
    Llama's q, k, v and gate, up make 2·(4 − c)·h + 3·c·h = 10h at widths 1024–4096)."""
    # the linears reading the attention norm's output: one fused projection, MLA's q_proj and kv_a_proj_with_mqa
    # (modeling_deepseek_v2 DeepseekV2Attention), or q, k and v; the MLP norm's: gate and up, or one
    attn_readers = 1 if spec.fused_qkv else (2 if spec.mla is not None else 3)
    mlp_readers = 2 if spec.gated_mlp and not spec.fused_gate_up else 1
    casts = (attn_readers - 1 + mlp_readers - 1) * c * spec.hidden_size
    if spec.fp32_norm_multiply:
        return casts  # Gemma's RMSNorm keeps its normed tensor in fp32 in pure precision too
    return spec.norms_per_layer * (FP32_BYTES - c) * spec.hidden_size + casts


def lora_dropout_bytes_per_token(spec: ModelSpec, job: Job, target_names: frozenset[str]) -> float:
    """Per layer: each adapter's dropout output (compute dtype) and its bool mask (native_dropout saves it).

    LitGPT fuses q, k and v into one adapted linear (one dropout on its input); PEFT adapts each module apart.
    """
    s = shapes(spec)
    c = DTYPE_BYTES[job.dtype]
    t = target_names
    attn_in = len(t & _ATTN_IN)
    if profile_for(job).lora_fused_qkv:
        attn_in = min(attn_in, 1)
    inputs = attn_in * s.h + len(t & _ATTN_OUT) * s.q + len(t & _MLP_IN) * s.h + len(t & _MLP_OUT) * s.i
    return inputs * (c + BOOL_BYTES)


def layer_transient_bytes_per_token(spec: ModelSpec, job: Job) -> float:
    """Inference: the largest set of tensors alive at once inside one layer (prefill), per token."""
    s = shapes(spec)
    c = DTYPE_BYTES[job.dtype]
    if s.gated:
        mlp = 3 * c * s.i  # activation output, up and their product alive together at SwiGLU's mul
    else:
        mlp = 2 * c * s.i
    if profile_for(job).python_tanh_gelu and spec.activation in _PYTHON_GELUS:
        mlp += 2 * c * s.i + c * s.h  # the Python GELU's chain of temporaries (traced: GPT-2 prefill 4·c·i + c·h)
    # Plus the residual stream, the attention output, the normed input and the norm's fp32 leftovers: the traced
    # prefill of Llama-3.1-8B peaks at SwiGLU's mul with 3·c·i + 8h bytes per token (trace_grid.jsonl).
    return max(mlp, attention_transient_bytes_per_token(spec, job)) + (2 * c + FP32_BYTES) * s.h


def attention_transient_bytes_per_token(spec: ModelSpec, job: Job) -> float:
    """Inference: q, k, v and the attention output alive together, per token (the scores come on top in eager)."""
    s = shapes(spec)
    c = DTYPE_BYTES[job.dtype]
    return c * (s.q + s.kv + s.v) + 2 * c * s.q


def attention_core_bytes_per_token(spec: ModelSpec, job: Job, seq_len: int, c: int) -> float:
    """What the attention core (q·kᵀ, softmax, ·v) saves per token: the part selective checkpointing recomputes
    (Korthikanti et al. 2022 §4.2), so selective never keeps more than no checkpointing (issue 9: eager's s × s
    scores at 131k tokens stayed in "selective", which then held a layer more than "none")."""
    s = shapes(spec)
    if effective_attention(spec, job) == "eager":
        # transformers' eager attention computes every score and masks those outside a sliding window (traced:
        # gpt-oss, window 128, keeps s × s probabilities on every layer)
        window = seq_len
        # Eager: the two matmuls save q, the (repeat_kv-expanded) k and v, the fp32 softmax output and its
        # low-precision copy (heads × s each); tanh soft-capping (Gemma-2) saves its output too.
        total = c * 3 * max(s.q, s.kv)
        # softmax(dtype=float32) saves its fp32 output and ·v saves the low-precision copy; a compute-dtype softmax
        # (GPT-2; gpt-oss over the scores and one sink logit) saves one output that ·v reads too.
        # Under autocast softmax is an fp32 op (torch autocast's fp32 list), so GPT-2's softmax is fp32 there too.
        low = spec.attention_sinks or (spec.low_precision_softmax and job.precision != "mixed")
        per_score = c if low else FP32_BYTES + c
        if spec.attn_logit_softcap:
            per_score += c
        if job.training and profile_for(job).applies_config_dropout and spec.attention_dropout > 0:
            # dropout keeps its bool mask, and ·v saves the dropout's output (instead of the fp32 softmax's
            # copy, which nothing keeps then); traced: GPT-2 eager training 2c + 1 bytes per score
            per_score += BOOL_BYTES + (c if low else 0)
        return total + s.heads * window * per_score
    # Flash / memory-efficient kernels save q, k, v, the output and an fp32 logsumexp per head (attention
    # dropout is regenerated from the saved RNG state, not stored).
    kv, v = s.kv, s.v
    if (spec.caches_expanded_kv and profile_for(job).runs_transformers_models
            or profile_for(job).expands_kv_heads and not job.compile):
        # K and V broadcast to every query head (copies) before the kernel: Falcon's new decoder architecture in
        # transformers; torchtune's MultiHeadAttention for any GQA model (traced, 4 − 2 layers: +2·c·(q − kv)),
        # except under compile, whose min-cut partitioner saves the unexpanded K and V and redoes the copy
        kv = v = s.q
    total = c * (s.q + kv + v) + c * s.q + FP32_BYTES * s.heads + sliding_mask_bytes_per_token(spec, seq_len, c)
    if spec.sdpa_always_masked and profile_for(job).runs_transformers_models:
        total += c * seq_len  # the additive mask (batch × 1 × s × s) the memory-efficient kernel saves (traced: Falcon)
    return total


def eager_scores_bytes(spec: ModelSpec, job: Job, batch: int, q_len: int, kv_len: int) -> int:
    """Eager attention's score matrices alive at once in one layer's prefill (no grad).

    At `.to(query.dtype)` the masked scores, the fp32 softmax and its low-precision copy coexist: 2c + 4 bytes per
    score (traced: Llama-3.1-8B 2×2048 eager prefill); a compute-dtype softmax keeps its input and output, 2c.
    """
    if effective_attention(spec, job) != "eager":
        return 0
    c = DTYPE_BYTES[job.dtype]
    # GPT-2's eager attention takes the softmax in the compute dtype; the others call
    # softmax(..., dtype=torch.float32).to(query.dtype).
    if spec.attention_sinks:
        # gpt-oss eager_attention_forward: the masked scores, their copy with the sink column and its max-shifted
        # copy (then the compute-dtype softmax in its place): 3c (traced: gpt-oss-20b 4×2048 prefill, at `sub`)
        per_score = 3 * c
    elif spec.low_precision_softmax:
        per_score = 2 * c
    else:
        # ATen's softmax(input, dim, dtype) fuses the upcast only for fp16 on CUDA (`half_to_float`); a bf16 input
        # is first copied to fp32 (aten/src/ATen/native/SoftMax.cpp softmax): at _softmax the masked scores, that
        # copy and the fp32 output coexist, c + 8 (traced: SmolLM2-135M 4×2048 eager prefill)
        upcast = FP32_BYTES if job.dtype == "bf16" else 0
        per_score = max(c + upcast + FP32_BYTES, 2 * c + FP32_BYTES)
    per_score += spec.eager_extra_scores * c
    return batch * spec.num_heads * q_len * kv_len * per_score


@dataclass(frozen=True)
class TrainingActivations:
    """Activation memory of a training step on one GPU."""

    saved: int  # everything saved for backward when backward starts (checkpointing and offload applied)
    recompute: int  # checkpointing: one layer's activations rebuilt during backward
    stale: int  # the previous step's tensors a runtime keeps alive through this one
    final_norm: int = 0  # the final norm's saved input: alive beside the loss, freed before any layer recomputes
    # what `saved` is while a layer is rebuilt, where that differs from the moment of the loss (activation offload)
    saved_beside_recompute: int | None = None
    # the first decoder layer's own activations while its backward runs, the last layer backward visits: its input
    # and rebuilt activations (checkpointing) or what it saved in forward
    last_layer: int = 0

    @property
    def saved_in_backward(self) -> int:
        return self.saved if self.saved_beside_recompute is None else self.saved_beside_recompute


# torchtune training/_activation_offloading.py OffloadActivations (TRL's activation offloading is a copy of it): every
# tensor autograd saves outside a checkpointed block is packed; one of at least min_offload_size = 1024 bytes that is
# not a parameter is copied to the host, and its GPU copy waits in a stash until the pack of an offloaded tensor
# max_fwd_stash_size = 5 or more ids later releases it.
OFFLOAD_MIN_BYTES = 1024
OFFLOAD_FWD_STASH = 5


def offloaded_layer_inputs_at_loss(spec: ModelSpec, job: Job, layers: int) -> int:
    """How many checkpointed layers' inputs OffloadActivations still holds on the GPU when the loss runs.

    Each checkpointed layer packs one tensor, its input; then the final norm packs what it saves, and the output
    layer packs nothing (get_act_offloading_ctx_manager puts it under a NoOpManager). The last offloaded pack
    releases every stashed copy five or more ids before it, so the layer inputs within the last five ids stay.
    Traced (benchmarks/results/torchtune_offload_traces.jsonl): RMSNorm packs its fp32 input (pow), rsqrt's result,
    then both again for the product, then for the weight multiply the weight (a parameter: not offloaded) and, when
    the weight trains, the normed tensor — 6 ids to the last offloaded pack in full fine-tuning, 4 in LoRA (one
    layer input stays); no final norm, 0 (every input stays, up to five)."""
    if not spec.final_norm:
        after = 0
    elif spec.norm == "rmsnorm":
        after = 4
        if job.mode == "train":
            after += 2  # the weight, then the normed tensor its gradient needs
        elif spec.fp32_norm_multiply:
            after += 1  # Gemma's `x * (1 + w.float())`: the fp32 copy of a frozen weight is not a parameter
    else:
        # native_layer_norm saves the weight, the input, the bias, then mean and rstd (fp32 on CUDA: 4 bytes a
        # token, offloaded once they reach OFFLOAD_MIN_BYTES); traced with an nn.LayerNorm as the final norm
        after = 5 if FP32_BYTES * job.batch_size * job.seq_len >= OFFLOAD_MIN_BYTES else 2
    return min(layers, max(0, OFFLOAD_FWD_STASH - after))


def saved_bytes_per_token(m: PreparedModel, job: Job) -> float:
    """layer_bytes_per_token for the prepared model, computed once per job whatever the GPU count (the search for
    the fewest GPUs asks again for each count it tries)."""
    return _per_job(m, job, "saved_bytes_per_token", lambda: layer_bytes_per_token(m.spec, job, m.targets, job.seq_len))


def _per_job(m: PreparedModel, job: Job, name: str, compute: Callable[[], float]) -> float:
    """`compute()` once per job and prepared model, whatever the GPU count."""
    key = (name, _job_key(job))
    hit = m.memo.get(key)
    if hit is None:
        hit = m.memo[key] = compute()
    return hit


_NUM_GPUS_AT = list(Job.__dataclass_fields__).index("num_gpus")


def _job_key(job: Job) -> tuple:
    """The job's field values but its GPU count (cheap: one pass over the instance dict)."""
    values = list(job.__dict__.values())
    values[_NUM_GPUS_AT] = None
    return tuple(values)


def training_activations(m: PreparedModel, job: Job, sh: Shares, notes: list[str]) -> TrainingActivations:
    spec = m.spec
    c = DTYPE_BYTES[job.dtype]
    tokens = job.batch_size * job.seq_len
    per_layer = saved_bytes_per_token(m, job)
    if job.compile:
        # Inductor's min-cut partitioner recomputes pointwise ops in backward instead of saving them: RMSNorm's
        # fp32 upcast and SwiGLU's product are not stored (torch._functorch.partitioners.min_cut_rematerialization).
        per_layer -= (FP32_BYTES * spec.hidden_size * spec.norms_per_layer if spec.norm == "rmsnorm" else 0)
        per_layer -= c * shapes(spec).i if spec.gated_mlp else 0
    # layers a text-only step skips (Mllama's cross-attention layers) save nothing
    layers_here = math.ceil((spec.num_layers - len(spec.image_only_layers)) * sh.layers)
    one_layer = int(per_layer * tokens * sh.activations)
    # LoRA on fused MoE experts (PEFT ParamWrapper): each forward builds W + ΔW for every expert of the layer, and
    # grouped_mm saves that merged weight for backward (traced: Mixtral-8x7B all-linear +84 GiB without checkpointing).
    merged = lora_expert_params(spec, job.lora_targets) * c if job.uses_lora else 0
    one_layer += merged // max(1, spec.num_layers)
    if merged and spec.moe is not None:
        # …and, the experts' weights now requiring grad, grouped_mm saves its inputs: each token's top-k copies of
        # the hidden state (gate_up) and of the expert activation (down).
        k, ie = spec.moe.experts_per_token, spec.moe.expert_intermediate_size
        one_layer += int(k * c * (spec.hidden_size + ie) * tokens * sh.activations)
    if job.grad_checkpointing == "none" and sh.layers >= 1:
        # LoRA with a parallel block and no MLP adapter: layer 0's MLP reads the norm of the frozen embeddings,
        # which needs no gradient, so it saves nothing (traced: Phi-1.5 LoRA q,v keeps 23 of 24 GELU chains)
        saved_l0 = _idle_first_mlp_bytes_per_token(m, job)
    else:
        saved_l0 = 0.0
    layer_input = 0  # one checkpointed layer's saved input
    if job.grad_checkpointing == "full":
        # Each layer's input (HF/torchtune checkpoint the block); fp32 when fp32 weights run under autocast.
        stream = FP32_BYTES if (job.mode == "train" and job.precision == "mixed") else c
        if job.precision == "mixed" and spec.embedding_norm and spec.norm == "layernorm":
            # BLOOM's residual stream starts at word_embeddings_layernorm, which CUDA autocast runs in fp32: every
            # layer input is fp32 (traced: bloomz-7b1 LoRA with checkpointing, 4h per token per layer)
            stream = FP32_BYTES
        one_input = tokens * stream * spec.hidden_size
        layer_input = int(one_input * sh.in_flight)
        saved = layers_here * one_input
    elif job.grad_checkpointing == "selective":
        core = attention_core_bytes_per_token(spec, job, job.seq_len, c)  # recomputed (Korthikanti et al. §4.2)
        saved = int(layers_here * (per_layer - core) * tokens * sh.activations)
    else:
        saved = layers_here * one_layer - int(saved_l0 * tokens * sh.activations)
    # Pipeline schedules keep several micro-batches' activations alive on the first stage (parallel.py).
    saved = int(saved * sh.in_flight)
    in_backward = None
    if job.activation_offload:
        notes.append("activations offloaded to CPU during forward")
        if job.grad_checkpointing == "full":
            saved = layer_input * offloaded_layer_inputs_at_loss(spec, job, layers_here)
            # In backward a layer's input comes back for its recomputation; the one before it is released once the
            # node that triggered this recomputation has run (unpack_tensor_with_streams: prev_node_ids), before the
            # layer's own backward peaks (traced: one layer input at every backward peak)
            in_backward = layer_input
        else:
            # without checkpointed blocks every saved tensor is packed on its own, and the final norm's packs (counted
            # in final_norm) are the last: nothing of the layers is left beside the loss; backward brings back the
            # tensors of one node at a time
            saved = 0
    recompute = one_layer if job.grad_checkpointing != "none" else 0
    stale = 0
    rt = profile_for(job)
    if job.mode == "qlora" and rt.saves_4bit_inputs and rt.keeps_previous_step_graph and job.quant in ("nf4", "fp4", "nf4-dq"):
        # bitsandbytes 0.42's MatMul4Bit keeps its inputs in ctx.tensors, a plain attribute that backward does not
        # free (only saved_variables are released); LitGPT's loop keeps the last `logits` bound, so one step's
        # worth of 4-bit-linear inputs stays alive through the next step (litgpt 0.4.5 finetune/lora.py).
        s = shapes(spec)
        stale = int(layers_here * tokens * c * (2 * s.h + s.q + s.i) + tokens * c * s.h)
        notes.append("LitGPT QLoRA (bitsandbytes 0.42): the previous step's 4-bit-linear inputs stay alive")
    final_norm = int(final_norm_bytes_per_token(spec, job) * tokens * sh.activations) if sh.holds_embeddings else 0
    if job.grad_checkpointing == "full":
        last_layer = layer_input + recompute
    elif job.activation_offload:
        last_layer = 0  # its tensors come back one node at a time
    else:
        last_layer = one_layer - int(saved_l0 * tokens * sh.activations)
    return TrainingActivations(saved, recompute, stale, final_norm, in_backward, last_layer)


def layer_backward_transient_bytes(m: PreparedModel, job: Job, sh: Shares) -> int:
    """The gradients a layer's backward holds at its MLP on top of what the layer saved, for the whole micro-batch:
    the gradient of the layer's output (c·h, the residual stream's), and at the MLP's last product of two tensors
    that both need gradients — SwiGLU's act(gate)·up, the Python tanh GELU's 0.5·x·(1 + tanh(…)) — the incoming
    gradient and the two it makes (3·c·i); after a native activation, the incoming and the outgoing one (2·c·i).
    The down projection's saved input (a trained weight's or an adapter's) has been released by then. Traced
    (benchmarks/results/layer_backward_traces.jsonl: transformers 5.24 Llama and GPT-2 peak at that mul in backward
    with 3·c·i + c·h of backward tensors; torchtune_offload_traces.jsonl likewise)."""
    per_token = _per_job(m, job, "layer_backward_transient", lambda: _layer_backward_transient_per_token(m, job))
    return int(per_token * job.batch_size * job.seq_len * sh.activations)


def _layer_backward_transient_per_token(m: PreparedModel, job: Job) -> int:
    spec, s = m.spec, shapes(m.spec)
    c, autocast = _saved_dtype(job)
    python_gelu = profile_for(job).python_tanh_gelu and spec.activation in _PYTHON_GELUS
    # under CUDA autocast the Python GELU's chain is fp32 (pow is an fp32 op), and so are its gradients (traced:
    # GPT-2 LoRA, mixed precision, 3·4·i + c·h)
    g = FP32_BYTES if python_gelu and autocast else c
    grads = (3 if s.gated or python_gelu else 2) * g * s.i + c * s.h
    if _targets(job, m.targets)[3]:
        grads -= c * s.i
    elif _copies_inputs(job) and m.targets & _MLP_OUT:
        grads -= _adapter_copy_bytes(job, c) * s.i  # the adapter's own copy
    return grads


def final_norm_bytes_per_token(spec: ModelSpec, job: Job) -> int:
    """What the norm before the output layer saves per token: outside every checkpointed block, it holds its input
    until the output layer's backward has run. RMSNorm upcasts and saves the fp32 input and its rstd (torchtune
    modules/rms_norm.py `x.float()`, HF LlamaRMSNorm `.to(torch.float32)`; traced: torchtune 0217d44c LoRA,
    benchmarks/results/torchtune_traces.jsonl, 4h + 4 per token)."""
    if not (spec.final_norm and job.training):
        return 0
    c = FP32_BYTES if job.dtype == "fp32" or job.precision == "mixed" else DTYPE_BYTES[job.dtype]
    # a trained norm weight also saves the normed tensor for its own gradient (as each layer's norm, above)
    trained = c * spec.hidden_size if job.mode == "train" else 0
    if spec.norm != "rmsnorm":
        return c * spec.hidden_size + 2 * FP32_BYTES + trained  # native_layer_norm: input, fp32 mean and rstd
    if job.compile and not profile_for(job).compiles_blocks_only:
        return trained  # Inductor recomputes the upcast from the last layer's output (as for the layers' norms above)
    return FP32_BYTES * spec.hidden_size + FP32_BYTES + trained


def _idle_first_mlp_bytes_per_token(m: PreparedModel, job: Job) -> float:
    spec = m.spec
    if not (job.uses_lora and spec.parallel_residual) or m.targets & (_MLP_IN | _MLP_OUT):
        return 0.0
    save_mlp_out = _targets(job, m.targets)[3]
    if save_mlp_out:
        return 0.0  # a runtime that saves every frozen linear's input (bitsandbytes 0.42) is not this case
    c, autocast = _saved_dtype(job)  # as layer_bytes_per_token counted it
    return mlp_saved_bytes_per_token(spec, job, False, c, autocast)


def prefill_transient_bytes(spec: ModelSpec, job: Job, batch: int, prompt: int, share: float) -> int:
    """Inference prefill: the layer's largest moment — the MLP at work, or eager attention holding its scores."""
    per_token = layer_transient_bytes_per_token(spec, job)
    scores = eager_scores_bytes(spec, job, batch, prompt, prompt)
    c = DTYPE_BYTES[job.dtype]
    eager_moment = scores + (attention_transient_bytes_per_token(spec, job) + (2 * c + FP32_BYTES) * spec.hidden_size) * batch * prompt
    return int(max(per_token * batch * prompt, eager_moment if scores else 0) * share)


def qk_norm_bytes_per_token(spec: ModelSpec, job: Job, c: int) -> int:
    """q/k RMSNorms (Qwen3, Qwen3-MoE, Gemma 3: over each head; OLMo-2: over the whole projection) save what a layer
    norm saves, on q's and k's widths: the fp32 input, and when their weights train the normed tensor (fp32 where
    the weight multiply runs in fp32). Traced (trace_grid.jsonl, families): Qwen3-0.6B +18h, OLMo-2-7B +16h per
    token per layer in full training; Qwen3-4B/Gemma-3 LoRA (frozen norms) the fp32 inputs alone."""
    if spec.qk_norm == "none" or spec.mla is not None:
        return 0
    s = shapes(spec)
    normed = (FP32_BYTES if spec.fp32_norm_multiply else c) if job.mode == "train" else 0
    return (FP32_BYTES + normed) * (s.q + s.kv)


def sliding_mask_bytes_per_token(spec: ModelSpec, kv_len: int, c: int) -> float:
    """SDPA on a sliding-window layer whose window is shorter than the keys: transformers passes a mask, so torch's
    CUDA selector takes the memory-efficient kernel, which saves the mask as an additive bias in the compute dtype
    (kv_len per token), and transformers repeats K and V to every head first (no enable_gqa with a mask:
    integrations/sdpa_attention.py use_gqa_in_sdpa). Averaged over the layers (traced: Gemma-3-1B/4B)."""
    if not spec.sliding_window or spec.sliding_window >= kv_len:
        return 0.0
    kinds = spec.layer_kinds
    share = sum(1 for k in kinds if "sliding" in k) / max(1, len(kinds))
    s = shapes(spec)
    return share * (c * kv_len + 2 * c * max(0, s.q - s.kv))


def moe_dispatch_bytes_per_token(spec: ModelSpec, job: Job, c: int) -> float:
    """transformers' grouped_mm experts (integrations/moe.py, grouped_mm_experts_forward) copy each token's hidden
    state to its top-k expert slots, which the gate/up GEMM saves (its backward computes input and weight grads in
    one formula, so it keeps the input even for frozen experts), and multiply each slot's down-projection output by
    its routing weight, which saves that output when the router trains. Per MoE layer: 2·k·h in full training,
    k·h with frozen experts (LoRA; with adapted experts training_activations' merged-weight term already counts
    the copies). Traced: Qwen3-30B-A3B, DeepSeek-V2-Lite."""
    moe = spec.moe
    if moe is None:
        return 0.0
    if job.mode == "train":
        copies = 2
    elif job.uses_lora and not lora_expert_params(spec, job.lora_targets):
        copies = 1
    else:
        return 0.0
    layers = sum(1 for n in range(spec.num_layers) if moe.is_moe_layer(n))
    return copies * c * moe.experts_per_token * spec.hidden_size * layers / max(1, spec.num_layers)
