"""Weights, fp32 master weights and autocast copies, per quantization format and runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelmem.dtypes import DTYPE_BYTES, gguf_bits, gguf_file_type, gguf_more_bits, quant_format
from modelmem.job import Job
from modelmem.trace._allocator import round_size  # pure Python: the caching allocator's 512-byte blocks
from modelmem.units import FP32_BYTES

if TYPE_CHECKING:
    from modelmem.model import PreparedModel
    from modelmem.parallel import Shares
from modelmem.runtimes.profiles import profile_for
from modelmem.counts import LinearModule, ParamCounts
from modelmem.spec import ModelSpec



@dataclass(frozen=True)
class WeightBytes:
    frozen: int  # weights that take no gradient (all of them in inference; the base model in LoRA)
    trainable: int  # trainable weights as stored (compute dtype in pure precision, fp32 in mixed)
    compute_copies: int  # mixed precision: autocast's low-precision copies of trainable weights, alive in fwd/bwd
    dequant_buffer: int  # one dequantized linear, alive while a quantized matmul runs


def _linear_weight_params(linears: tuple[LinearModule, ...], include_lm_head: bool) -> int:
    return sum(m.in_features * m.out_features * m.count for m in linears if include_lm_head or m.name != "lm_head")


def untied_head_params(spec: ModelSpec, job: Job) -> int:
    """LitGPT never ties: convert_hf_checkpoint copies the embedding into a separate lm_head (Gemma, SmolLM…)."""
    return spec.vocab_size * spec.hidden_size if spec.tie_word_embeddings and profile_for(job).unties_head else 0


def experts_stay_in_dtype(spec: ModelSpec, job: Job) -> bool:
    """A MoE model whose routed experts the runtime's quantizer for this format does not reach."""
    return spec.moe is not None and job.quant in profile_for(job).experts_unquantized


def experts_note(spec: ModelSpec, job: Job) -> str | None:
    """One line for the output when quantization leaves the experts (most of a MoE's weights) in dtype."""
    if not experts_stay_in_dtype(spec, job):
        return None
    return (f"{job.quant} leaves the routed experts in {job.dtype}: {job.runtime} {profile_for(job).version} stores them "
            "as fused 3-D tensors its quantizer skips (bitsandbytes#1849); runtime_version 4.46, vllm, litgpt or "
            "llamacpp quantize them, and fp8 does")


def quantized_linear_bytes(spec: ModelSpec, job: Job, linears: tuple[LinearModule, ...]) -> tuple[int, int]:
    """(bytes of the quantized linears, how many parameters they hold). gguf: per tensor role."""
    # Lightning's BitsandbytesPrecision and torchao's quantize_ convert every nn.Linear (profile.quantizes_lm_head);
    # transformers and torchtune keep lm_head in dtype.
    with_head = profile_for(job).quantizes_lm_head or job.quant.startswith("gguf:")
    if job.quant.startswith("gguf:"):
        file_type = gguf_file_type(job.quant)
        total_bits = 0.0
        params = 0
        per_layer = max(1, spec.num_layers)
        for m in linears:
            if m.name == "lm_head" and spec.tie_word_embeddings:
                continue  # llama.cpp reuses token_embd (counted with the embeddings)
            n = m.in_features * m.out_features * m.count
            params += n
            if m.name == "lm_head":
                total_bits += n * gguf_bits(file_type, "output", False)
                continue
            role = "attn_v" if m.name in ("v_proj", "value") else "ffn_down" if m.name in ("down_proj", "w2", "fc2", "c_proj_mlp", "dense_4h_to_h") else "other"
            if role == "other":
                total_bits += n * gguf_bits(file_type, role, False)
            else:
                # Spread over layers: llama.cpp gives more bits to a fixed subset of layers (use_more_bits).
                share = n / per_layer
                total_bits += sum(share * gguf_bits(file_type, role, gguf_more_bits(i, per_layer)) for i in range(per_layer))
        return int(total_bits / 8), params
    fmt = quant_format(job.quant, job.quant_group_size)
    total = 0.0
    params = 0
    for m in linears:
        if m.name == "lm_head" and (not with_head or (spec.tie_word_embeddings and not untied_head_params(spec, job))):
            continue  # a tied head is the embedding table, which stays in dtype
        if m.expert and experts_stay_in_dtype(spec, job):
            continue  # routed experts the runtime's quantizer does not reach stay in dtype (runtimes/profiles.py)
        n = m.in_features * m.out_features * m.count
        params += n
        total += n * fmt.bytes_per_weight(m.in_features)
    return int(total), params


def rope_cache_bytes(spec: ModelSpec, job: Job) -> int:
    """A runtime that builds its rotary table once for the longest sequence holds it beside the weights: torchtune's
    RotaryPositionalEmbeddings.build_rope_cache, [max_seq_len, head_dim / 2, (cos, sin)] in fp32, plus theta, one
    module shared by every layer (models/*/_component_builders.py pass one `rope` to each attention; traced:
    torchtune_offload_traces.jsonl, weights = parameters + this table)."""
    if not profile_for(job).rope_cache_buffer or spec.alibi or spec.learned_positions or not spec.max_position_embeddings:
        return 0
    half = spec.head_dim // 2
    return round_size(spec.max_position_embeddings * half * 2 * FP32_BYTES) + round_size(half * FP32_BYTES)


def weight_bytes(spec: ModelSpec, job: Job, counts: ParamCounts, linears: tuple[LinearModule, ...], trainable: int) -> WeightBytes:
    w = _weight_bytes(spec, job, counts, linears, trainable)
    buffers = rope_cache_bytes(spec, job)
    return WeightBytes(w.frozen + buffers, w.trainable, w.compute_copies, w.dequant_buffer) if buffers else w


def _weight_bytes(spec: ModelSpec, job: Job, counts: ParamCounts, linears: tuple[LinearModule, ...], trainable: int) -> WeightBytes:
    c = DTYPE_BYTES[job.dtype]
    total = counts.total + untied_head_params(spec, job)
    dequant = 0
    if job.quant != "none":
        q_bytes, q_params = quantized_linear_bytes(spec, job, linears)
        rest = total - q_params
        if job.quant.startswith("gguf:"):
            # token_embd is quantized with the file's base type in llama.cpp; norms stay F32.
            base_bits = gguf_bits(gguf_file_type(job.quant), "token_embd", False)
            embed = counts.embeddings
            other = rest - embed
            frozen = q_bytes + int(embed * base_bits / 8) + other * FP32_BYTES
        else:
            frozen = q_bytes + rest * c
            # A quantized matmul dequantizes one weight to the compute dtype (bitsandbytes dequantize_4bit; torchao's
            # int8 weight-only mm casts the whole int8 weight first: w_vals_int8_t.to(input.dtype) in
            # _linear_fp_act_int8_weight_impl). torchao's int4 tinygemm kernel reads the packed weight directly.
            with_head = profile_for(job).quantizes_lm_head
            largest = max((m.in_features * m.out_features for m in linears
                           if not m.expert and (with_head or m.name != "lm_head")), default=0)
            dequant = largest * c if job.quant in ("nf4", "fp4", "nf4-dq", "int8", "int8-wo") else 0
            if profile_for(job).dequantizes_4bit_via_fp16 and job.quant in ("nf4", "fp4", "nf4-dq"):
                # Lightning quantizes from fp16, so dequantize_4bit returns fp16 and MatMul4Bit adds a bf16 copy
                # (lightning plugins/precision/bitsandbytes.py; bitsandbytes 0.42 autograd/_functions.py).
                dequant = largest * (2 + c)
        if job.mode == "qlora":
            return WeightBytes(frozen, _trainable_bytes(job, trainable), _copies(job, trainable), dequant)
        return WeightBytes(frozen, 0, 0, dequant)
    if not job.training:
        return WeightBytes(total * c, 0, 0, 0)
    # LoRA freezes the whole base model; the adapters are extra trainable parameters (Hu et al. 2021 §4.1).
    frozen_params = total if job.uses_lora else 0
    if job.mode == "train":
        # autocast casts only what its ops see: every matmul weight (lm_head included, tied or not), not the
        # embedding lookup or norms (traced: 13.98 GiB of copies for Llama-3.1-8B's 7.5B linear parameters).
        linear = sum(m.in_features * m.out_features * m.count for m in linears if not m.expert)
        if job.grad_checkpointing == "full":
            # a checkpointed layer's graph, which alone keeps its weights' casts past the forward, is dropped: only
            # the output layer's cast stays (traced: GPT-2 mixed with checkpointing, V·h·c and no layer's)
            linear = sum(m.in_features * m.out_features * m.count for m in linears if m.name == "lm_head")
        copies = min(trainable, linear) * c if job.precision == "mixed" else 0
        # parts a text-only step never runs (spec.image_only_params) stay loaded, as the model's dtype has them
        idle = max(0, counts.total - trainable)
        return WeightBytes(_trainable_bytes(job, idle), _trainable_bytes(job, trainable), copies, 0)
    return WeightBytes(frozen_params * c, _trainable_bytes(job, trainable), _copies(job, trainable), 0)


def _trainable_bytes(job: Job, trainable: int) -> int:
    # Mixed precision keeps trainable weights in fp32 (Micikevicius et al. 2018, "fp32 master copy").
    return trainable * (FP32_BYTES if job.precision == "mixed" else DTYPE_BYTES[job.dtype])


def _copies(job: Job, trainable: int) -> int:
    # torch.autocast caches the low-precision cast of each leaf weight for the forward; backward keeps them saved.
    return trainable * DTYPE_BYTES[job.dtype] if job.precision == "mixed" else 0


@dataclass(frozen=True)
class ResidentWeights:
    """Weights one GPU holds during a training step, after sharding and offload."""

    weights: int  # frozen weights, and trainable ones in pure precision
    masters: int  # mixed precision: fp32 trainable weights
    compute_copies: int  # autocast's low-precision copies, alive through forward and backward
    dequant_buffer: int


def training_weights(m: PreparedModel, job: Job, sh: Shares) -> ResidentWeights:
    w = weight_bytes(m.spec, job, m.counts, m.linears, m.trainable)
    mixed = job.precision == "mixed"
    weights = int((w.frozen + (0 if mixed else w.trainable)) * sh.weights)
    masters = int(w.trainable * sh.weights) if mixed else 0
    if job.offload in ("optimizer", "params"):
        masters = 0  # ZeRO-Offload keeps the fp32 masters in CPU memory
    if job.offload == "params":
        weights = 0
    # ZeRO-3 parameter offload keeps the 16-bit parameters in CPU memory too; only the gathered unit (a collective
    # buffer) comes to the GPU (Ren et al. 2021, ZeRO-Offload; DeepSpeed offload_param).
    copies = 0 if job.offload == "params" else int(w.compute_copies * sh.weights)
    return ResidentWeights(weights, masters, copies, w.dequant_buffer)
