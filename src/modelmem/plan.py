"""estimate(): spec + job → per-GPU components at the step's true peak, the three totals, and the GPU count.

Training is modelled in three phases of a steady-state step (step ≥ 2, optimizer states present) and the peak
is the largest of them, with the components alive in that phase (a trace of the real code shows the same:
benchmarks/results/trace_grid.jsonl):
  backward start — weights, states, every saved activation, the loss's fp32 buffers and their gradients;
  backward end   — weights, states, every gradient (activations freed as backward walks down the layers);
  optimizer step — weights, states, gradients and the step's own temporaries.
Inference holds weights and the KV cache and peaks either in the prefill (one layer's temporaries for the whole
prompt) or at the last decode step (the full cache).
"""

from __future__ import annotations

import dataclasses

from modelmem.catalog.gpus import check_runtime, resolve_gpu
from modelmem.errors import InvalidJobError
from modelmem.job import Job
from modelmem.memory import activations as act
from modelmem.memory import kv_cache as kv
from modelmem.memory import logits as lg
from modelmem.memory import optimizer as opt
from modelmem.memory import overhead as ov
from modelmem.memory.communication import collective_buffer_bytes
from modelmem.memory.weights import experts_note, training_weights, weight_bytes
from modelmem.model import PreparedModel, prepare
from modelmem.dtypes import DTYPE_BYTES, quant_format
from modelmem.parallel import Shares, layout_problem, stage_shares, tp_replicated_bytes_per_token
from modelmem.result import Estimate, GPUInfo, InferenceComponents, ModelInfo, PerGPU, Phase, TrainingComponents, peak_phase
from modelmem.runtimes import llamacpp, ollama, vllm
from modelmem.runtimes.profiles import profile_for
from modelmem.spec import ModelSpec

MAX_GPUS = 1024


def _training(m: PreparedModel, job: Job, n: int, sh: Shares) -> PerGPU:
    notes: list[str] = [n for n in (experts_note(m.spec, job),) if n]
    if m.spec.moe is not None and job.mode == "train" and job.precision == "mixed" and job.dtype != "fp32" \
            and profile_for(job).runs_transformers_models:
        # traced on both routes: autocast does not cast torch._grouped_mm, which refuses fp32 operands
        notes.append("transformers' grouped_mm experts need bf16 operands: with fp32 master weights this step fails "
                     "unless the model is loaded with experts_implementation='eager' (not modelled: sized as grouped_mm)")
    w = training_weights(m, job, sh)
    states, step_temp = opt.resident_state_bytes(m, job, sh, notes)
    grads, accumulated = opt.training_gradient_bytes(m, job, n, sh, notes)
    comm = collective_buffer_bytes(m, job, n, sh)
    a = act.training_activations(m, job, sh, notes)
    # The loss lives on the GPU holding the output layer (the last pipeline stage).
    held, bwd_extra = lg.training_logits_bytes(m.spec, job, job.batch_size * job.seq_len) if sh.holds_embeddings else (0, 0)
    # At backward's start the larger of the loss's buffers and the first layer's backward (rebuilt, with the
    # gradients its MLP makes) is the transient.
    transient = act.layer_backward_transient_bytes(m, job, sh)
    loss_first = a.saved_in_backward + a.recompute + transient <= a.saved + held + bwd_extra + a.final_norm
    beside = a.saved + a.final_norm if loss_first else a.saved_in_backward + a.recompute
    phases = (
        Phase("backward start", TrainingComponents(
            weights=w.weights + w.compute_copies, master_weights=w.masters, optimizer_states=states,
            activations=beside + a.stale, logits=held + bwd_extra if loss_first else 0,
            # a quantized linear's dequantized weight lives during that linear's own pass: beside the first
            # recomputed layer, and beside the loss only where the output layer is quantized too (LitGPT; traced:
            # Phi-3 QLoRA under transformers holds none at the loss)
            gradients=accumulated, temporaries=comm + (0 if loss_first else transient),
            dequant_buffers=w.dequant_buffer if not loss_first or profile_for(job).quantizes_lm_head else 0)),
        # The last layer backward visits (the first decoder layer) holds its own activations and MLP gradients while
        # every gradient but its own and the embeddings' exists (traced: torchtune_offload_traces.jsonl, full
        # fine-tuning with a 256-entry vocabulary peaks there)
        Phase("first layer's backward", TrainingComponents(
            weights=w.weights + w.compute_copies, master_weights=w.masters, optimizer_states=states,
            activations=a.last_layer + a.stale, gradients=opt.gradients_before_first_layer(m, job, grads, accumulated),
            temporaries=comm + transient, dequant_buffers=w.dequant_buffer)),
        Phase("backward end", TrainingComponents(
            weights=w.weights + w.compute_copies, master_weights=w.masters, optimizer_states=states,
            activations=a.stale, gradients=grads, temporaries=comm, dequant_buffers=w.dequant_buffer)),
        Phase("optimizer step", TrainingComponents(
            weights=w.weights, master_weights=w.masters, optimizer_states=states, activations=a.stale,
            gradients=0 if job.optimizer_in_backward else grads, temporaries=step_temp)),
    )
    if comm and job.strategy in ("zero2", "zero3", "fsdp"):
        notes.append(f"{job.strategy} communication buffers: {comm} bytes (gathered units or reduce buckets)")
    result = _at_peak(phases, job, n, notes)
    if job.mode == "qlora":
        # QLoRA ≤ LoRA on the same job unless a modelled mechanism says otherwise; the output then says which.
        lora = _training(m, dataclasses.replace(job, mode="lora", quant="none"), n, sh).allocated_peak
        if result.allocated_peak > lora:
            why = _qlora_above_lora(m.spec, job, w.dequant_buffer, a.stale, result.allocated_peak - lora)
            result = dataclasses.replace(result, notes=(*result.notes, why))
    return result


def _qlora_above_lora(spec: ModelSpec, job: Job, dequant: int, stale: int, excess: int) -> str:
    """Why this QLoRA job holds more than LoRA on the same job would, from the mechanisms the estimate models."""
    reasons = []
    if stale:
        reasons.append(f"LitGPT with bitsandbytes 0.42 keeps the previous step's 4-bit-linear inputs ({stale} bytes)")
    c = DTYPE_BYTES[job.dtype]
    if job.quant in ("gptq", "awq", "int4") and quant_format(job.quant, job.quant_group_size).bytes_per_weight(
            spec.hidden_size) >= c:
        reasons.append(f"{job.quant} with group size {job.quant_group_size} stores at least {c} bytes per weight")
    if dequant:
        reasons.append(f"the dequantized copy of one linear ({dequant} bytes) outweighs the 4-bit saving on this "
                       "GPU's share of the weights")
    return f"QLoRA above LoRA here by {excess} bytes: " + "; ".join(reasons or ["the quantized base's own buffers"])


def _at_peak(phases: tuple[Phase, ...], job: Job, n: int, notes: list[str]) -> PerGPU:
    """The phase with the most memory allocated is the step's peak; its components are what the GPU holds."""
    peak = peak_phase(phases)
    return PerGPU(
        components=peak.components,
        allocator_overhead=ov.allocator_overhead(peak.components),
        cuda_context=ov.device_extra(job, n),
        notes=(*notes, f"peak at {peak.name}"),
    )


def _inference(m: PreparedModel, job: Job, n: int, gpu: GPUInfo, sh: Shares) -> PerGPU:
    spec = m.spec
    notes: list[str] = []
    if spec.stored is not None and spec.quantization and job.quant == "none":
        weights = int(spec.stored.total_bytes * sh.weights)  # pre-quantized checkpoint: sized as stored
        dequant = 0
    else:
        w = weight_bytes(spec, job, m.counts, m.linears, 0)
        weights, dequant = int(w.frozen * sh.weights), w.dequant_buffer
        notes += [n for n in (experts_note(spec, job),) if n]
    rt = profile_for(job)
    b, prompt, total_tokens = job.batch_size, job.seq_len, job.seq_len + job.new_tokens
    kv_full = int(kv.kv_cache_bytes(spec, job, total_tokens, b) * sh.kv)
    kv_prompt = kv_full if rt.preallocates_kv else int(kv.kv_cache_bytes(spec, job, prompt, b, after_prefill=True) * sh.kv)
    transient = act.prefill_transient_bytes(spec, job, b, prompt, sh.activations)
    phases = (
        Phase("prefill", InferenceComponents(weights=weights, kv_cache=kv_prompt, activations=transient,
                                             logits=lg.inference_logits_bytes(spec, job, b, prompt), dequant_buffers=dequant)),
        Phase("last decode step", InferenceComponents(
            weights=weights, kv_cache=kv_full, activations=int(act.layer_transient_bytes_per_token(spec, job) * b * sh.activations),
            logits=lg.decode_logits_bytes(spec, job, b))),
    )
    return _at_peak(phases, job, n, notes)


def per_gpu(m: PreparedModel, job: Job, n: int, gpu: GPUInfo) -> PerGPU:
    """One GPU's memory at the step's peak, for a prepared model and a job whose LoRA targets are resolved: every
    distinct pipeline stage (the first holds the activations in flight, the last the loss), the busiest one.
    Serving runtimes place the model themselves: vLLM (weights, profile peak, KV blocks up to
    gpu_memory_utilization) and llama.cpp / Ollama (layers, KV cache and buffers per device, host RAM)."""
    rt = profile_for(job)
    if not job.training and rt.kv_block_pool:
        return vllm.per_gpu(m.spec, job, n, gpu, m.counts, m.linears)
    if not job.training and rt.gpu_layer_split:
        spec = m.spec
        stored = spec.stored.total_bytes if spec.stored is not None and job.quant == "none" else None
        total = stored if stored is not None else weight_bytes(spec, job, m.counts, m.linears, 0).frozen
        settings = (ollama.settings_for_job if rt.ollama_defaults else llamacpp.settings_for_job)(spec, job, gpu, n)
        return llamacpp.per_gpu(spec, job, n, gpu, settings, total, m.counts)
    replicated = 0.0
    if job.training:
        per_layer = act.saved_bytes_per_token(m, job)
        replicated = min(1.0, tp_replicated_bytes_per_token(m.spec, DTYPE_BYTES[job.dtype]) / max(1.0, per_layer))
    results = [(_training(m, job, n, sh) if job.training else _inference(m, job, n, gpu, sh))
               for sh in stage_shares(m.spec, job, n, m.counts, replicated)]
    return max(results, key=lambda pg: pg.device_total)


def estimate_spec(spec: ModelSpec, job: Job, method: str = "detailed") -> Estimate:
    gpu = resolve_gpu(job.gpu)
    check_runtime(gpu, job)
    if spec.mla is not None and profile_for(job).caches_mla_latent is None:
        raise InvalidJobError("runtime", job.runtime, "hf, litgpt, vllm, llamacpp or ollama for an MLA model "
                              "(DeepSeek-V2/V3): its own model code has no multi-head latent attention")
    if method == "seed":
        from modelmem.seed import seed_estimate

        return seed_estimate(spec, job, gpu)
    m, job = prepare(spec, job)  # counts, linears and LoRA targets: once per estimate, whatever the GPU count
    if job.num_gpus == "auto":
        return _fewest_gpus(m, job, gpu, 1 if gpu.platform == "metal" else MAX_GPUS)  # a Mac has one GPU
    n = int(job.num_gpus)
    problem = layout_problem(spec, job, n) if n > 1 else None
    if problem is not None:
        raise InvalidJobError("num_gpus", n, f"{problem} for strategy {job.strategy}")
    return _finish(m, job, gpu, n)


def _stored_as(spec: ModelSpec) -> str | None:
    """How the checkpoint stores its weights when pre-quantized: the GGUF file type (Q4_K_M) or quant_method."""
    q = spec.quantization or {}
    return q.get("file_type") or q.get("quant_method") or None


def _fewest_gpus(m: PreparedModel, job: Job, gpu: GPUInfo, most: int) -> Estimate:
    """The estimate on the fewest GPUs (of the counts the layout allows, up to `most`) that fit.

    Per-GPU memory never grows with the GPU count (tests/test_plan.py::test_more_gpus_never_means_more_per_gpu),
    so the smallest fitting count is found by doubling and then bisecting over the allowed counts: O(log most)
    evaluations of the prepared model instead of one per count.
    """
    spec = m.spec
    allowed: dict[int, bool] = {}
    done: dict[int, Estimate] = {}

    def ok(n: int) -> bool:
        if n not in allowed:
            allowed[n] = n == 1 or layout_problem(spec, job, n) is None
        return allowed[n]

    def at(n: int) -> Estimate:
        if n not in done:
            done[n] = _finish(m, dataclasses.replace(job, num_gpus=n), gpu, n)
        return done[n]

    def first_ok(start: int, stop: int, step: int = 1) -> int | None:
        return next((n for n in range(start, stop, step) if ok(n)), None)

    lo, hi, p = 0, None, 1  # lo: an allowed count that does not fit (0: none yet); hi: one that fits
    while p <= most and hi is None:
        n = first_ok(p, min(2 * p, most + 1))
        if n is not None:
            if at(n).fits:
                hi = n
            else:
                lo = n
        p *= 2
    if hi is None:
        largest = first_ok(most, 0, -1)
        last = at(largest if largest is not None else 1)
        return dataclasses.replace(last, explanation=last.explanation + (f"does not fit on up to {most} GPUs with strategy {job.strategy}",))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        n = first_ok(mid, hi)
        if n is None:
            n = first_ok(mid - 1, lo, -1)
            if n is None:
                break
        if at(n).fits:
            hi = n
        else:
            lo = n
    return at(hi)


def _finish(m: PreparedModel, job: Job, gpu: GPUInfo, n: int) -> Estimate:
    spec = m.spec
    pg = per_gpu(m, job, n, gpu)
    active = m.counts.active
    shape_note: tuple[str, ...] = ()
    if spec.model_type == "size":
        shape_note = (f"a bare size names no architecture: a Llama-style shape was assumed (hidden {spec.hidden_size}, "
                      f"{spec.num_layers} layers, MLP {spec.intermediate_size}, vocab {spec.vocab_size})",)
    return Estimate(
        model=ModelInfo(spec.name, m.counts.total, m.trainable, active, stored_as=_stored_as(spec)),
        job=job,
        method="detailed",
        per_gpu=pg,
        gpu=gpu,
        num_gpus=n,
        explanation=shape_note + pg.notes + (
            "detailed method: components at the step's peak from the architecture (activations, logits, KV cache, "
            "optimizer actually used, sharding); the seed's rule (--method seed) multiplies parameters by 18, 2 or "
            "LoRA's mix and adds 25 %",
        ),
    )
