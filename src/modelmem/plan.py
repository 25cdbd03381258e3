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
import math

from modelmem.catalog.gpus import check_runtime, resolve_gpu
from modelmem.dtypes import DTYPE_BYTES
from modelmem.errors import InvalidJobError
from modelmem.job import Job
from modelmem.runtimes.profiles import profile_for
from modelmem.memory import activations as act
from modelmem.memory import kv_cache as kv
from modelmem.memory import logits as lg
from modelmem.memory import optimizer as opt
from modelmem.memory import overhead as ov
from modelmem.memory.weights import weight_bytes
from modelmem.parallel import Shares, layout_of, layout_problem, stage_shares, tp_replicated_bytes_per_token
from modelmem.counts import (
    LinearModule, ParamCounts, count_params, default_lora_targets, linear_modules, lora_expert_params,
    lora_trainable_params,
)
from modelmem.result import Estimate, GPUInfo, ModelInfo, PerGPU
from modelmem.spec import ModelSpec

MAX_GPUS = 1024


@dataclasses.dataclass(frozen=True)
class _Model:
    spec: ModelSpec
    counts: ParamCounts
    linears: tuple[LinearModule, ...]
    trainable: int
    targets: frozenset[str]


def _prepare(spec: ModelSpec, job: Job) -> tuple[_Model, Job]:
    counts = count_params(spec)
    linears = linear_modules(spec)
    targets: frozenset[str] = frozenset()
    if job.uses_lora:
        names = job.lora_targets
        if names == "default":
            names = ",".join(default_lora_targets(spec))
        trainable = lora_trainable_params(spec, job.lora_rank, names)
        if names == "all-linear":
            targets = frozenset(m.name for m in linears if m.name != "lm_head" and not m.expert)
        else:
            targets = frozenset(names.split(","))
        job = dataclasses.replace(job, lora_targets=names)
    elif job.mode == "train":
        trainable = counts.total
    else:
        trainable = 0
    return _Model(spec, counts, linears, trainable, targets), job


def _largest_unit_params(m: _Model) -> int:
    """Parameters FSDP gathers at once: one decoder layer, or the embedding / LM head if larger."""
    c = m.counts
    per_layer = (c.total - c.embeddings - c.position_embeddings - c.lm_head) // max(1, m.spec.num_layers)
    return max(per_layer, c.embeddings, c.lm_head)


def _training(m: _Model, job: Job, n: int, sh: Shares) -> PerGPU:
    spec = m.spec
    w = weight_bytes(spec, job, m.counts, m.linears, m.trainable)
    notes: list[str] = []
    tokens = job.batch_size * job.seq_len
    sharded_params = job.strategy in ("zero3", "fsdp") and n > 1
    weights = int((w.frozen + (0 if job.precision == "mixed" else w.trainable)) * sh.weights)
    masters = int(w.trainable * sh.weights) if job.precision == "mixed" else 0
    copies = int(w.compute_copies * sh.weights)
    grads = int(opt.gradient_bytes(job, m.trainable) * sh.grads)
    states = int(opt.optimizer_state_bytes(job, m.trainable) * sh.states)
    step_temp = int(opt.optimizer_step_temporary_bytes(job, m.trainable) * sh.states)
    if job.offload in ("optimizer", "params"):
        # ZeRO-Offload: fp32 masters, optimizer states and the partitioned gradients live in CPU memory.
        states, step_temp, grads = 0, 0, 0
        masters = 0
        notes.append("optimizer states, fp32 masters and gradients offloaded to CPU")
    if job.offload == "params":
        weights = 0
    paged = opt.paged_state_bytes(job, m.trainable)
    if paged:
        notes.append(f"paged optimizer: {paged} bytes of states in CUDA unified memory, not in torch's allocated count")

    c = DTYPE_BYTES[job.dtype]
    comm = 0
    if sharded_params or job.offload == "params":
        # FSDP/ZeRO-3 all-gather the current unit and prefetch the next (FSDP2 default), and reduce-scatter the
        # unit's unsharded gradients in backward.
        unit = _largest_unit_params(m)
        comm = 2 * unit * c + (unit * opt.master_dtype_bytes(job) if m.trainable else 0)
        if job.uses_lora:
            comm = 2 * unit * c
    elif job.strategy == "ddp" and n > 1:
        # DDP's gradient buckets copy every gradient this rank holds (bucket views off).
        comm = int(opt.gradient_bytes(job, m.trainable) * sh.grads)
    elif job.strategy == "zero2" and n > 1:
        comm = 2 * _largest_unit_params(m) * opt.master_dtype_bytes(job)  # reduce buckets
    if job.strategy != "ddp":
        comm //= layout_of(job, n).tp  # a tensor-parallel rank gathers and reduces its 1/t of each unit
    accumulated = 0
    rt = profile_for(job)
    if rt.fsdp_lora_unsharded_block_grads and job.strategy == "fsdp" and n > 1 and job.uses_lora:
        # LitGPT wraps each Block with FSDP1 (use_orig_params=True): a FlatParameter holding any adapter requires
        # grad as a whole, so frozen weights get gradients too; its default gradient accumulation runs under
        # no_sync(), which keeps them unsharded until the last micro-batch (lit-gpt finetune/lora.py, Fabric
        # no_backward_sync; pytorch/pytorch#91167; Lightning-AI/litgpt#676). Plus one Block's gradient in flight.
        block_params = (m.counts.total - m.counts.embeddings - m.counts.position_embeddings - m.counts.lm_head)
        block_grads = block_params * opt.master_dtype_bytes(job)
        grads = block_grads + block_grads // max(1, spec.num_layers)
        accumulated = block_grads  # alive from the previous micro-batch while the next one runs forward
        notes.append("LitGPT FSDP LoRA: whole-Block gradients, unsharded under no_sync during gradient accumulation")
    if job.optimizer_in_backward:
        # Each parameter steps as soon as its gradient is ready; at most one layer's gradients exist at once —
        # except a tied embedding, whose gradient lives from the output layer's backward to the very end.
        grads = int(grads / max(1, spec.num_layers))
        if spec.tie_word_embeddings and job.mode == "train":
            grads += int(m.counts.embeddings * opt.master_dtype_bytes(job) * sh.grads)

    per_layer = act.layer_bytes_per_token(spec, job, m.targets, job.seq_len)
    if job.compile:
        # Inductor's min-cut partitioner recomputes pointwise ops in backward instead of saving them: RMSNorm's
        # fp32 upcast and SwiGLU's product are not stored (torch._functorch.partitioners.min_cut_rematerialization).
        per_layer -= (4 * spec.hidden_size * spec.norms_per_layer if spec.norm == "rmsnorm" else 0)
        per_layer -= c * act.shapes(spec).i if spec.gated_mlp else 0
    layers_here = math.ceil(spec.num_layers * sh.layers)
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
    if job.grad_checkpointing == "full":
        # Each layer's input (HF/torchtune checkpoint the block); fp32 when fp32 weights run under autocast.
        stream = 4 if (job.mode == "train" and job.precision == "mixed") else c
        saved = layers_here * tokens * stream * spec.hidden_size
    elif job.grad_checkpointing == "selective":
        s = act.shapes(spec)
        core = c * (2 * s.q + s.kv + s.v) + 4 * s.heads  # attention core recomputed (Korthikanti et al. §4.2)
        saved = int(layers_here * (per_layer - core) * tokens * sh.activations)
    else:
        saved = layers_here * one_layer
    # Pipeline schedules keep several micro-batches' activations alive on the first stage (parallel.py).
    saved = int(saved * sh.in_flight)
    if job.activation_offload:
        # Saved activations stream to CPU as each layer finishes; about two layers' worth stay on the GPU.
        saved = min(saved, 2 * (one_layer if job.grad_checkpointing == "none" else tokens * c * spec.hidden_size))
        notes.append("activations offloaded to CPU during forward")
    held, bwd_extra = lg.training_logits_bytes(spec, job, tokens)
    head_last_stage = sh.holds_embeddings
    if not head_last_stage:
        held, bwd_extra = 0, 0
    recompute = one_layer if job.grad_checkpointing != "none" else 0
    stale = 0
    if job.mode == "qlora" and rt.saves_4bit_inputs and rt.keeps_previous_step_graph and job.quant in ("nf4", "fp4", "nf4-dq"):
        # bitsandbytes 0.42's MatMul4Bit keeps its inputs in ctx.tensors, a plain attribute that backward does not
        # free (only saved_variables are released); LitGPT's loop keeps the last `logits` bound, so one step's
        # worth of 4-bit-linear inputs stays alive through the next step (litgpt 0.4.5 finetune/lora.py).
        s_ = act.shapes(spec)
        stale = int(layers_here * tokens * c * (2 * s_.h + s_.q + s_.i) + tokens * c * s_.h)
        notes.append("LitGPT QLoRA (bitsandbytes 0.42): the previous step's 4-bit-linear inputs stay alive")

    phase_bwd_start = {
        "weights": weights + copies, "master_weights": masters, "optimizer_states": states,
        "activations": saved + stale + (recompute if recompute > held + bwd_extra else 0),
        "logits": held + bwd_extra if recompute <= held + bwd_extra else 0,
        "gradients": accumulated, "temporaries": comm, "dequant_buffers": w.dequant_buffer,
    }
    phase_bwd_end = {
        "weights": weights + copies, "master_weights": masters, "optimizer_states": states,
        "activations": stale, "logits": 0, "gradients": grads, "temporaries": comm, "dequant_buffers": w.dequant_buffer,
    }
    phase_step = {
        "weights": weights, "master_weights": masters, "optimizer_states": states,
        "activations": stale, "logits": 0, "gradients": grads if not job.optimizer_in_backward else 0,
        "temporaries": step_temp, "dequant_buffers": 0,
    }
    phases = {"backward start": phase_bwd_start, "backward end": phase_bwd_end, "optimizer step": phase_step}
    return _at_peak(phases, job, n, notes)


def _at_peak(phases: dict[str, dict[str, int]], job: Job, n: int, notes: list[str]) -> PerGPU:
    """The phase with the most memory allocated is the step's peak; its components are what the GPU holds."""
    name, peak = max(phases.items(), key=lambda item: sum(item[1].values()))
    return PerGPU(
        components=peak,
        allocator_overhead=ov.allocator_overhead(peak),
        cuda_context=ov.device_extra(job, n),
        notes=(*notes, f"peak at {name}"),
    )


def _inference(m: _Model, job: Job, n: int, gpu: GPUInfo, sh: Shares) -> PerGPU:
    spec = m.spec
    notes: list[str] = []
    if spec.stored is not None and spec.quantization and job.quant == "none":
        weights = int(spec.stored.total_bytes * sh.weights)  # pre-quantized checkpoint: sized as stored
        dequant = 0
    else:
        w = weight_bytes(spec, job, m.counts, m.linears, 0)
        weights, dequant = int(w.frozen * sh.weights), w.dequant_buffer
    layer_share = 1.0
    rt = profile_for(job)
    if rt.gpu_layer_split and job.gpu_layers is not None and spec.stored is not None:
        from modelmem.runtimes.llamacpp import gguf_layout, gguf_split

        if gguf_layout(spec) is not None:
            # llama.cpp -ngl: the last N of the n_layer + 1 slots (blocks, then the output layer) go to the GPU.
            split = gguf_split(spec, job.gpu_layers)
            weights, dequant = split.gpu_bytes, 0
            layer_share = split.gpu_layers / max(1, spec.num_layers)
            notes.append(f"llama.cpp --gpu-layers {job.gpu_layers}: {split.gpu_layers} of {spec.num_layers} blocks on the GPU; "
                         f"{split.cpu_bytes} bytes of weights stay in CPU memory")
    b, prompt, total_tokens = job.batch_size, job.seq_len, job.seq_len + job.new_tokens
    preallocated = rt.preallocates_kv  # the cache is allocated for the full length up front
    kv_full = int(kv.kv_cache_bytes(spec, job, total_tokens, b) * sh.kv * layer_share)  # KV follows its block
    kv_prompt = kv_full if preallocated else int(kv.kv_cache_bytes(spec, job, prompt, b) * sh.kv * layer_share)
    # The layer's largest moment: the MLP at work, or eager attention holding its score matrices.
    per_token = act.layer_transient_bytes_per_token(spec, job)
    scores = act.eager_scores_bytes(spec, job, b, prompt, prompt)
    c = DTYPE_BYTES[job.dtype]
    eager_moment = scores + (act.attention_transient_bytes_per_token(spec, job) + (2 * c + 4) * spec.hidden_size) * b * prompt
    transient = int(max(per_token * b * prompt, eager_moment if scores else 0) * sh.activations)
    logits = lg.inference_logits_bytes(spec, job, b, prompt)
    if rt.kv_block_pool:
        # vLLM pre-allocates every byte up to gpu_memory_utilization for KV blocks after weights and a profile run.
        budget = int(gpu.memory_bytes * job.gpu_memory_utilization) - weights - transient - ov.CUDA_CONTEXT_BYTES
        kv_full = kv_prompt = max(0, budget)
        notes.append("vLLM fills the remaining gpu_memory_utilization share with KV-cache blocks")
    prefill = {"weights": weights, "kv_cache": kv_prompt, "activations": transient, "logits": logits, "dequant_buffers": dequant}
    decode = {"weights": weights, "kv_cache": kv_full, "activations": int(act.layer_transient_bytes_per_token(spec, job) * b * sh.activations),
              "logits": b * spec.vocab_size * (DTYPE_BYTES[job.dtype] + 4), "dequant_buffers": 0}
    return _at_peak({"prefill": prefill, "last decode step": decode}, job, n, notes)


def per_gpu(spec: ModelSpec, job: Job, n: int, gpu: GPUInfo) -> tuple[PerGPU, _Model, Job]:
    m, job = _prepare(spec, job)
    replicated = 0.0
    if job.training:
        per_layer = act.layer_bytes_per_token(spec, job, m.targets, job.seq_len)
        replicated = min(1.0, tp_replicated_bytes_per_token(spec, DTYPE_BYTES[job.dtype]) / max(1.0, per_layer))
    # Every distinct pipeline stage (the first holds the activations in flight, the last the loss): the busiest one.
    results = [(_training(m, job, n, sh) if job.training else _inference(m, job, n, gpu, sh))
               for sh in stage_shares(spec, job, n, m.counts, replicated)]
    return max(results, key=lambda pg: pg.device_total), m, job


def estimate_spec(spec: ModelSpec, job: Job, method: str = "detailed") -> Estimate:
    gpu = resolve_gpu(job.gpu)
    check_runtime(gpu, job)
    if method == "seed":
        from modelmem.seed import seed_estimate

        return seed_estimate(spec, job, gpu)
    if job.num_gpus == "auto":
        last = None
        for n in range(1, (1 if gpu.platform == "metal" else MAX_GPUS) + 1):  # a Mac has one GPU
            if n > 1 and layout_problem(spec, job, n) is not None:
                continue
            trial = dataclasses.replace(job, num_gpus=n)
            last = _finish(spec, trial, gpu, n)
            if last.fits:
                return last
        assert last is not None
        most = 1 if gpu.platform == "metal" else MAX_GPUS
        return dataclasses.replace(last, explanation=last.explanation + (f"does not fit on up to {most} GPUs with strategy {job.strategy}",))
    n = int(job.num_gpus)
    problem = layout_problem(spec, job, n) if n > 1 else None
    if problem is not None:
        raise InvalidJobError("num_gpus", n, f"{problem} for strategy {job.strategy}")
    return _finish(spec, job, gpu, n)


def _finish(spec: ModelSpec, job: Job, gpu: GPUInfo, n: int) -> Estimate:
    pg, m, job = per_gpu(spec, job, n, gpu)
    active = m.counts.active
    shape_note: tuple[str, ...] = ()
    if spec.model_type == "size":
        shape_note = (f"a bare size names no architecture: a Llama-style shape was assumed (hidden {spec.hidden_size}, "
                      f"{spec.num_layers} layers, MLP {spec.intermediate_size}, vocab {spec.vocab_size})",)
    return Estimate(
        model=ModelInfo(spec.name, m.counts.total, m.trainable, active),
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
