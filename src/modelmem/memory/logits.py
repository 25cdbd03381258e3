"""Logits and the loss's fp32 buffers."""

from __future__ import annotations

from modelmem.dtypes import DTYPE_BYTES
from modelmem.job import Job
from modelmem.units import FP32_BYTES
from modelmem.runtimes.profiles import profile_for
from modelmem.spec import ModelSpec

# torchtune's CEWithChunkedOutputLoss splits the output into 8 chunks (torchtune.modules.loss); LitGPT's
# chunked_cross_entropy uses chunks of 128 tokens, which for short sequences is the same order.
_LOSS_CHUNKS = 8


def training_logits_bytes(spec: ModelSpec, job: Job, tokens: int) -> tuple[int, int]:
    """(bytes alive after the forward, extra bytes at the start of backward) for the output layer and loss.

    Full loss (transformers ForCausalLMLoss): low-precision logits, their fp32 upcast and the fp32 log-softmax
    that cross_entropy saves; backward's log-softmax gradient replaces some of them as it is made.
    Chunked loss keeps the low-precision logits and one chunk's fp32 buffers at a time.
    """
    v = spec.vocab_size
    c = DTYPE_BYTES[job.dtype]
    rt = profile_for(job)
    if job.loss == "chunked":
        if rt.loss_in_compute_dtype:
            # LitGPT (bf16-true): the LM head runs in 128-token chunks and the loss reads the bf16 chunks
            # directly; every chunk's logits stay saved until backward (no fp32 copy at all).
            return tokens * v * c, tokens * v * c // max(1, tokens // 128)
        if job.compile:
            # Compiled chunked loss: Inductor fuses each chunk's fp32 upcast into the log-softmax kernel.
            return tokens * v * c, 2 * tokens * v * FP32_BYTES // _LOSS_CHUNKS
        held = tokens * v * c + tokens * v * FP32_BYTES // _LOSS_CHUNKS
        return held, 2 * tokens * v * FP32_BYTES // _LOSS_CHUNKS
    if rt.fp32_logits:
        # torchtune's TransformerDecoder returns `self.output(h).float()`: the recipe keeps the fp32 logits (4)
        # and cross_entropy saves the fp32 log-softmax (4); backward adds the nll and log-softmax gradients (8).
        return tokens * v * 2 * FP32_BYTES, tokens * v * 2 * FP32_BYTES
    if rt.loss_in_compute_dtype:
        # LitGPT bf16-true: bf16 logits and a bf16 log-softmax are saved; backward adds their two gradients.
        return tokens * v * 2 * c, tokens * v * 2 * c
    # Traced (Llama-3.1-8B, transformers 5.24): 10 bytes per token per vocab entry alive after the forward
    # (bf16 logits 2 + fp32 upcast 4 + saved log-softmax 4); an fp32 model has no upcast (8).
    upcast = tokens * v * FP32_BYTES if c < FP32_BYTES else 0
    held = tokens * v * (c + FP32_BYTES) + upcast
    # Traced (tiny Llama, bf16 and fp32, transformers 5.24): the loss-backward peak is three fp32 buffers whatever
    # the logits' dtype — the saved log-softmax, nll_loss's gradient and log-softmax's gradient (12 B/token/vocab);
    # nothing references the logits or their upcast by then.
    backward = 3 * tokens * v * FP32_BYTES
    if spec.final_logit_softcap:
        saved = tokens * v * c  # tanh soft-capping of the logits saves its output (Gemma-2; traced 12 + 2 B/token/vocab)
        held, backward = held + saved, backward + saved
    return held, backward - held


def inference_logits_bytes(spec: ModelSpec, job: Job, batch: int, prompt: int) -> int:
    """Prefill logits: transformers' generate computes only the last position (logits_to_keep=1), upcast to fp32;
    LitGPT and torchao's generate scripts project every prompt position."""
    v = spec.vocab_size
    positions = prompt if profile_for(job).prefill_logits_all_positions else 1
    return batch * positions * v * (DTYPE_BYTES[job.dtype] + FP32_BYTES)


def decode_logits_bytes(spec: ModelSpec, job: Job, batch: int) -> int:
    """A decode step's logits for the one new position, in dtype and upcast to fp32."""
    return batch * spec.vocab_size * (DTYPE_BYTES[job.dtype] + FP32_BYTES)
