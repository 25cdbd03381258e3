"""Logits and the loss's fp32 buffers."""

from __future__ import annotations

from modelmem.dtypes import DTYPE_BYTES
from modelmem.job import Job
from modelmem.units import FP32_BYTES
from modelmem.runtimes.profiles import profile_for
from modelmem.spec import ModelSpec

# torchtune's CEWithChunkedOutputLoss(num_output_chunks=8) and TransformerDecoder.chunked_output split the sequence
# into 8 chunks with torch.chunk (torchtune 0.6.1 modules/loss/ce_chunked_output_loss.py, modules/transformer.py).
_LOSS_CHUNKS = 8
# LitGPT's LoRA/adapter recipes call `model(input_ids, lm_head_chunk_size=128)` (litgpt 0.5.13 finetune/lora.py).
_LITGPT_CHUNK_TOKENS = 128


def _torch_chunk(n: int, chunks: int) -> tuple[int, int]:
    """(size of the full chunks, size of the last) when torch.chunk splits n rows into `chunks`: ceil(n / chunks)
    rows each, the last one what remains."""
    size = -(-n // chunks)
    return size, n - size * (-(-n // size) - 1)


def _chunked_loss_bytes(spec: ModelSpec, job: Job, tokens: int) -> tuple[int, int]:
    """(most during the loss forward, most during the loss backward) for a chunked loss, per the traces in
    benchmarks/results/loss_traces.jsonl (rows litgpt-* and torchtune-*, made by make_loss_traces.py)."""
    v = spec.vocab_size
    c = DTYPE_BYTES[job.dtype]
    seq = max(1, job.seq_len)
    batch = max(1, tokens // seq)
    if profile_for(job).loss_in_compute_dtype:
        # LitGPT (finetune/lora.py): the LM head runs on 128-token chunks, `logits[-1] = logits[-1][..., :-1, :]`
        # drops each sequence's last position, and `logits` stays bound through backward. utils.py
        # chunked_cross_entropy saves every chunk's log-softmax in the logits' dtype (no fp32 copy): c·T + c·(T − 1).
        logits, saved = tokens * v * c, batch * (seq - 1) * v * c
        # with two or more sequences the shifted last chunk is not contiguous: its reshape copies it (trace litgpt-2x256)
        last = seq - _LITGPT_CHUNK_TOKENS * ((seq - 1) // _LITGPT_CHUNK_TOKENS) - 1
        copy = batch * last * v * c if batch > 1 else 0
        # backward: nll_loss's and log-softmax's gradients of one chunk on top (traces litgpt-1x256/1x300/1x100)
        grads = 2 * batch * min(_LITGPT_CHUNK_TOKENS, seq - 1) * v * c
        return logits + saved + copy, logits + saved + grads
    size, last = _torch_chunk(seq, _LOSS_CHUNKS)
    forward, backward = _torchtune_chunked_loss_bytes(v, c, job.compile, batch, tokens, size, last)
    if job.mode != "train":
        return forward, backward
    # the output layer trains (full fine-tuning): traces torchtune-*-untied/-tied (make_loss_traces.py)
    h = spec.hidden_size
    # with two or more sequences a chunk of the hidden state is not contiguous: F.linear's reshape copies it, and
    # the copy is saved for the weight gradient until that chunk's backward
    copies = tokens * h * c if batch > 1 else 0
    # the 8 losses were recorded after the 8 head matmuls, so autograd runs every loss backward first, leaving each
    # chunk's logits gradient (c); the head's backward then starts from the last chunk, and at the second chunk
    # autograd sums the weight gradients out of place: the running sum, this chunk's and their sum (3·V·h·c), the
    # unprocessed chunks' logits gradients and the two processed chunks' hidden-state gradients
    rest = batch * max(0, seq - size - last)
    head = 3 * v * h * c + rest * v * c + (tokens * h * c if batch > 1 else batch * (size + last) * h * c)
    return forward + copies, max(backward + copies, head)


def _torchtune_chunked_loss_bytes(v: int, c: int, compiled: bool, batch: int, tokens: int, size: int,
                                  last: int) -> tuple[int, int]:
    """torchtune's CEWithChunkedOutputLoss with the output layer frozen (LoRA), eager or compiled."""
    if compiled:
        # torchtune training.compile_loss compiles compute_cross_entropy: the graph saves each bf16 chunk (and two
        # fp32 numbers per row), with the fp32 upcast fused away; its backward writes one chunk's gradient in the
        # logits' dtype (torch.profiler record of the Inductor CPU run, traces torchtune-*-compiled)
        logits = tokens * v * c
        return logits, logits + batch * size * v * c
    # eager CEWithChunkedOutputLoss: the recipe's `del logits` comes after the loss, so during it the chunks (c),
    # every chunk's saved fp32 log-softmax (4) and the chunk being upcast (4; none when already fp32) are alive —
    # most at the last chunk, or at the one before it when the last is much the smaller (traces torchtune-*-eager)
    upcast = FP32_BYTES if c < FP32_BYTES else 0
    saved = tokens * v * FP32_BYTES
    forward = tokens * v * c + saved + batch * v * max(upcast * last, upcast * size - FP32_BYTES * last)
    # backward runs the last chunk first (autograd's highest sequence number): its nll and log-softmax gradients
    # (fp32) on the saved log-softmax; each later chunk finds its predecessors' fp32 buffers traded for c-byte
    # gradients (traces torchtune-*-eager)
    backward = saved + batch * v * max(2 * FP32_BYTES * last, 2 * FP32_BYTES * size - (FP32_BYTES - c) * last)
    return forward, backward


def training_logits_bytes(spec: ModelSpec, job: Job, tokens: int) -> tuple[int, int]:
    """(the most the output layer and loss hold during the loss forward, what the loss backward holds beyond it).

    Full loss (transformers ForCausalLMLoss): low-precision logits, their fp32 upcast and the fp32 log-softmax
    that cross_entropy saves; backward's log-softmax gradient replaces some of them as it is made.
    Chunked loss: see _chunked_loss_bytes.
    """
    v = spec.vocab_size
    c = DTYPE_BYTES[job.dtype]
    rt = profile_for(job)
    if job.loss == "chunked":
        forward, backward = _chunked_loss_bytes(spec, job, tokens)
        # both moments come with every activation saved: the start of backward stands for the larger
        return forward, max(0, backward - forward)
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
