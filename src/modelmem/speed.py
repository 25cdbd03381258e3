"""How fast: estimated prefill time and decode tokens/s (inference), step time and tokens/s (training).

Estimates, not measurements. Each result carries the assumptions it was computed under (peak figures from the GPU
catalog, the utilisations used, the link collectives cross), and the CLI prints them beside the numbers.

  decode    memory-bandwidth roofline: each step reads the weights actually used (the touched experts of an MoE, not
            the embedding table's unread rows) plus every cached key and value, once per step for the whole batch;
            a compute bound of 2 × active params FLOPs per token (Kaplan et al. 2020, Table 1) applies at large batch.
  prefill   2 × N_active + 2 × n_layer × n_ctx × d_attn FLOPs per token (Kaplan et al. 2020, Table 1) at the MFU.
  training  6 × N_active FLOPs per token (2 forward, 4 backward: Kaplan et al. 2020 §2.1; Narayanan et al. 2021 §5.1),
            8 × with full activation checkpointing (one more forward), 4 × for LoRA/QLoRA (frozen weights need
            no weight-gradient matmuls, only the input gradient), plus the attention term; at the MFU; plus the
            strategy's collectives over the link, not overlapped with compute (an upper bound on the time).

Pure standard library; computed from a finished Estimate, its spec and its job.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from modelmem.counts import count_params
from modelmem.dtypes import DTYPE_BYTES
from modelmem.job import Job
from modelmem.memory import kv_cache as kv
from modelmem.memory import optimizer as opt
from modelmem.parallel import shares
from modelmem.result import Estimate, GPUInfo
from modelmem.spec import ModelSpec

# Model-FLOPs utilisation when the job sets none: Llama 3 trained at 38–43 % BF16 MFU on 8K–16K H100s (Dubey et al.
# 2024, "The Llama 3 Herd of Models", Table 4); PaLM at 46.2 % (Chowdhery et al. 2022, Table 3); Megatron-LM at 52 %
# of A100 peak for its 1T model (Narayanan et al. 2021, §5.1). 0.40 sits at the low end: single-node fine-tuning
# with HF/torchtune rarely does better than the largest tuned pre-training runs.
DEFAULT_MFU = 0.40
# Memory-bandwidth utilisation of decode: llama.cpp's tg128 reaches 57–86 % of the vendor bandwidth on Apple GPUs
# (gpus.json "calibration": M1 Max 57 %, M5 71 %, M4 86 %). 0.70 is their middle.
DEFAULT_MBU = 0.70
# InfiniBand NDR, one 400 Gb/s adapter per GPU as in DGX H100 (NVIDIA ConnectX-7): 50 GB/s each way.
INFINIBAND_BYTES_PER_S = 100 * 10**9  # both directions together, like the catalog's link figures
# PCIe 4.0 x16 (PCI-SIG): 64 GB/s both directions together; used when a device names no faster link.
PCIE4_BYTES_PER_S = 64 * 10**9
GPUS_PER_NODE = 8  # HGX/DGX and MI300X platforms: the device's own link reaches 8 GPUs; beyond that, the network
_DATA_PARALLEL = ("ddp", "zero1", "zero2", "zero3", "fsdp")


class SpeedUnavailable(Exception):
    """Internal: a figure the estimate needs is missing (the reason becomes a note, not an error)."""


@dataclass(frozen=True)
class Link:
    name: str
    bytes_per_s: int  # both directions together

    @property
    def one_way(self) -> float:
        return self.bytes_per_s / 2


@dataclass(frozen=True)
class InferenceSpeed:
    """Estimated inference speed per replica (the GPUs of one estimate), at the job's batch (its concurrency)."""

    prefill_seconds: float | None  # the whole batch's prompts, at the MFU; None where the device publishes no FLOPs
    decode_tokens_per_s: float  # per sequence, at the bandwidth utilisation (MBU) and MFU
    decode_tokens_per_s_aggregate: float  # all sequences of the batch together
    decode_bound_tokens_per_s: float  # per sequence, the roofline itself (100 % of peak bandwidth and FLOPs)
    decode_bytes_per_step: int  # read from memory per decode step on the busiest GPU (weights + KV cache)
    decode_bound: str  # "memory" or "compute": which roofline limits a decode step
    assumptions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": True, **dataclasses.asdict(self), "assumptions": list(self.assumptions)}

    def line(self) -> str:
        prefill = "n/a (no published FLOPs)" if self.prefill_seconds is None else _secs(self.prefill_seconds)
        return (f"speed (estimate): prefill {prefill} · decode {self.decode_tokens_per_s:,.1f} tok/s per sequence, "
                f"{self.decode_tokens_per_s_aggregate:,.1f} tok/s aggregate ({self.decode_bound}-bound; roofline "
                f"{self.decode_bound_tokens_per_s:,.1f})")


@dataclass(frozen=True)
class TrainingSpeed:
    """Estimated optimizer-step time across all GPUs of the estimate."""

    step_seconds: float  # compute + communication
    tokens_per_s: float  # tokens of every GPU's batch per step / step time
    compute_seconds: float
    communication_seconds: float
    flops_per_token: float  # model FLOPs per trained token (6N / 8N / 4N + attention)
    assumptions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": True, **dataclasses.asdict(self), "assumptions": list(self.assumptions)}

    def line(self) -> str:
        return (f"speed (estimate): step {_secs(self.step_seconds)} ({_secs(self.compute_seconds)} compute + "
                f"{_secs(self.communication_seconds)} communication) · {self.tokens_per_s:,.0f} tokens/s")


def _secs(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


# ---------------------------------------------------------------------------------------------------------- rates


def peak_flops(gpu: GPUInfo, job: Job) -> tuple[int, str]:
    """The dense matmul rate the job's compute runs at, and which figure that is."""
    if job.quant == "fp8" and gpu.fp8_flops:
        return gpu.fp8_flops, "fp8"
    if job.dtype == "fp32":
        raise SpeedUnavailable("fp32 compute: the catalog holds no fp32/TF32 throughput")
    # Weight-only quantizations (int4, nf4, GPTQ, AWQ, GGUF) dequantize and multiply in the compute dtype.
    if job.dtype == "bf16" and gpu.bf16_flops:
        return gpu.bf16_flops, "bf16"
    if gpu.fp16_flops:
        return gpu.fp16_flops, "fp16" + (" (the device has no bf16 rate)" if job.dtype == "bf16" else "")
    raise SpeedUnavailable(f"{gpu.label or gpu.name} has no published {job.dtype} throughput (describe the GPU with bf16_flops)")


def bandwidth(gpu: GPUInfo) -> int:
    if not gpu.bandwidth_bytes_per_s:
        raise SpeedUnavailable(f"{gpu.label or gpu.name} has no memory bandwidth (describe the GPU with bandwidth_bytes_per_s)")
    return gpu.bandwidth_bytes_per_s


def link(gpu: GPUInfo, job: Job, n: int) -> Link:
    """The link collectives cross: the device's own within a node, InfiniBand between nodes, or what the job names."""
    choice = job.interconnect
    if choice == "auto":
        choice = "nvlink" if n <= GPUS_PER_NODE else "infiniband"
    if choice == "infiniband":
        return Link("InfiniBand NDR 400 Gb/s per GPU", INFINIBAND_BYTES_PER_S)
    own = gpu.interconnect_bytes_per_s
    if choice == "pcie":
        if own and gpu.interconnect.startswith("pcie"):
            return Link(gpu.interconnect, own)
        return Link("pcie4 (x16)", PCIE4_BYTES_PER_S)
    if own:  # "nvlink": the device's GPU-to-GPU link, whatever its vendor calls it
        return Link(gpu.interconnect, own)
    return Link("pcie4 (x16; the device names no link)", PCIE4_BYTES_PER_S)


def _ring_all_reduce(size: float, n: int, ln: Link) -> float:
    """Ring all-reduce: each GPU sends and receives 2 (n − 1) / n of the buffer (Patarasuk & Yuan 2009)."""
    return 2 * (n - 1) / n * size / ln.one_way


def _ring_gather(size: float, n: int, ln: Link) -> float:
    """All-gather or reduce-scatter of a buffer of `size` in total: (n − 1) / n of it crosses each GPU's link."""
    return (n - 1) / n * size / ln.one_way


# --------------------------------------------------------------------------------------------------------- shapes


def _d_attn(spec: ModelSpec) -> int:
    return spec.num_heads * spec.head_dim


def _attention_flops_per_token(spec: ModelSpec, context: float) -> float:
    """Kaplan et al. 2020, Table 1: 2 · n_layer · n_ctx · d_attn forward FLOPs per token for the score and value matmuls."""
    return 2 * spec.num_layers * context * _d_attn(spec)


def _touched_expert_fraction(spec: ModelSpec, tokens: int) -> float:
    """Share of an MoE layer's routed experts that `tokens` tokens reach, routing uniform: 1 − (1 − k/E)^tokens."""
    moe = spec.moe
    if moe is None:
        return 1.0
    return 1 - (1 - moe.experts_per_token / moe.num_experts) ** tokens


# ------------------------------------------------------------------------------------------------------ inference


def inference_speed(est: Estimate, spec: ModelSpec, mbu: float = DEFAULT_MBU) -> InferenceSpeed:
    job, gpu, n = est.job, est.gpu, est.num_gpus
    mfu = job.mfu or DEFAULT_MFU
    bw = bandwidth(gpu)
    try:
        flops, flops_kind = peak_flops(gpu, job)
    except SpeedUnavailable as e:  # decode is bandwidth-bound: still worth estimating without a compute figure
        flops, flops_kind, no_flops = 0, "", str(e)
    else:
        no_flops = ""
    counts = count_params(spec)
    sh = shares(spec, job, n)
    b, prompt = job.batch_size, job.seq_len
    c = DTYPE_BYTES[job.dtype]
    deg = Degrees.of(job, n)
    tp, stages = deg.tp, deg.pp

    # Weights read per step on the busiest GPU: its resident weights at their stored bytes per parameter, less the
    # experts no token in the batch is routed to and the rows of an untied embedding table nobody looks up.
    resident = est.per_gpu.components.get("weights", 0)
    per_param = resident / counts.total if counts.total else 0.0
    unread = counts.experts * (1 - _touched_expert_fraction(spec, b))
    if not spec.tie_word_embeddings:
        unread += counts.embeddings
    weights_read = per_param * (counts.total - unread)
    # Keys and values of every cached token, at the middle of the generation (prompt + half the new tokens).
    context = prompt + max(1, job.new_tokens) / 2
    kv_read = kv.kv_cache_bytes(spec, job, math.ceil(context), b) * sh.kv
    step_bytes = weights_read + kv_read
    step_flops = b * (2 * counts.active + _attention_flops_per_token(spec, context)) / tp
    comm = 0.0
    ln = link(gpu, job, n) if n > 1 else None
    if ln is not None and tp > 1:
        # Megatron tensor parallel: two all-reduces of the hidden state per layer (Shoeybi et al. 2019, §3).
        comm = 2 * spec.num_layers * _ring_all_reduce(b * spec.hidden_size * c, tp, ln)
    # Pipeline stages run one after another for a token: each GPU reads its share, the token waits for all of them.
    t_mem = stages * step_bytes / (bw * mbu)
    t_flop = stages * step_flops / (flops * mfu) if flops else 0.0
    t_step = max(t_mem, t_flop) + comm
    bound = max(stages * step_bytes / bw, stages * step_flops / flops if flops else 0.0) + comm

    t_prefill: float | None = None
    if flops:
        prefill_flops = b * prompt * (2 * counts.active + _attention_flops_per_token(spec, prompt))
        t_prefill = max(prefill_flops / (flops * mfu * tp), stages * weights_read / bw)
        if ln is not None and tp > 1:
            t_prefill += 2 * spec.num_layers * _ring_all_reduce(b * prompt * spec.hidden_size * c, tp, ln)

    peak = f"peak {flops / 1e12:,.0f} TFLOP/s dense {flops_kind} and " if flops else ""
    assumptions = [
        f"{peak}{bw / 1e9:,.0f} GB/s per GPU ({gpu.label or gpu.name})",
        (f"MFU {mfu:.2f} for prefill{'' if job.mfu else ' (default: Llama 3 / PaLM / Megatron-LM training MFU, see modelmem.speed)'}; "
         if flops else "") + f"decode reads memory at {mbu:.0%} of peak (llama.cpp tg128 on Apple GPUs reaches 57–86 %)",
        f"decode at the middle of the generation: {math.ceil(context):,} cached tokens per sequence, batch {b}",
    ]
    if no_flops:
        assumptions.append(f"no prefill time and no compute bound on decode: {no_flops}")
    if spec.moe is not None:
        assumptions.append(f"MoE: a step of {b} token(s) reads {_touched_expert_fraction(spec, b):.0%} of the routed experts "
                           "(uniform routing)")
    if ln is not None:
        assumptions.append(f"{n} GPUs ({job.strategy}) over {ln.name}, {ln.bytes_per_s / 1e9:,.0f} GB/s both ways; "
                           "collective latency not modelled")
    from modelmem.runtimes.profiles import profile_for

    if profile_for(job).gpu_layer_split and job.gpu_layers is not None:
        assumptions.append("layers left on the CPU are not timed (llama.cpp --gpu-layers)")
    return InferenceSpeed(
        prefill_seconds=t_prefill,
        decode_tokens_per_s=1 / t_step,
        decode_tokens_per_s_aggregate=b / t_step,
        decode_bound_tokens_per_s=1 / bound,
        decode_bytes_per_step=int(step_bytes),
        decode_bound="memory" if t_mem >= t_flop else "compute",
        assumptions=tuple(assumptions),
    )


# ------------------------------------------------------------------------------------------------------- training


def training_flops_per_token(spec: ModelSpec, job: Job, active_params: int) -> tuple[float, str]:
    """Model FLOPs per trained token and the rule used (see the module docstring for sources)."""
    full_ckpt = job.grad_checkpointing == "full"
    if job.uses_lora:
        weight_factor = 6 if full_ckpt else 4  # forward 2 + input gradient 2 (+ the recomputed forward)
        rule = "4 × active params (LoRA: no weight gradients for frozen weights)" + (" + 2 × recomputation" if full_ckpt else "")
    else:
        weight_factor = 8 if full_ckpt else 6
        rule = "6 × active params" + (" + 2 × recomputation (full checkpointing)" if full_ckpt else "")
    attention_factor = 4 if full_ckpt else 3  # forward, and twice that backward (scores and values need both gradients)
    return weight_factor * active_params + attention_factor * _attention_flops_per_token(spec, job.seq_len), rule


@dataclass(frozen=True)
class Degrees:
    """How the estimate's GPUs divide the work: tensor, pipeline and context parallel inside one replica of the model,
    data parallel across replicas. Read from the job's layout fields where it has them (tp, pp, cp), else from its
    single strategy."""

    tp: int
    pp: int
    cp: int
    dp: int

    @classmethod
    def of(cls, job: Job, n: int) -> Degrees:
        tp, pp, cp = (max(1, int(getattr(job, f, 1) or 1)) for f in ("tp", "pp", "cp"))
        if n > 1 and tp == pp == cp == 1:
            if job.strategy == "tp":
                tp = n
            elif job.strategy in ("pp", "layer-split"):
                pp = n
        return cls(tp, pp, cp, max(1, n // (tp * pp * cp)))


def training_speed(est: Estimate, spec: ModelSpec) -> TrainingSpeed:
    job, gpu, n = est.job, est.gpu, est.num_gpus
    mfu = job.mfu or DEFAULT_MFU
    flops, flops_kind = peak_flops(gpu, job)
    counts = count_params(spec)
    per_token, rule = training_flops_per_token(spec, job, counts.active)
    deg = Degrees.of(job, n)
    accum = max(1, int(getattr(job, "grad_accum", 1) or 1))
    micro_tokens = job.batch_size * job.seq_len  # one micro-batch of one data-parallel replica (batch_size is per GPU)
    # A replica's tp × pp × cp GPUs share its micro-batches' FLOPs.
    compute = accum * micro_tokens * per_token / (deg.tp * deg.pp * deg.cp) / (flops * mfu)
    bubble = 0.0
    if deg.pp > 1:
        # GPipe/1F1B: (p − 1) / m of the step is pipeline bubble, m micro-batches (Huang et al. 2019, §2.2;
        # Narayanan et al. 2021, §2.2). Without gradient accumulation each sequence is a micro-batch.
        m = accum if accum > 1 else job.batch_size
        bubble = compute * (deg.pp - 1) / m
    c = DTYPE_BYTES[job.dtype]
    shard = deg.tp * deg.pp  # each data-parallel group moves the gradients and parameters of one model shard
    grads = opt.gradient_bytes(job, est.model.trainable_params) / shard
    params = counts.total * c / shard
    comm = 0.0
    links: list[str] = []
    if deg.dp > 1 and job.strategy in _DATA_PARALLEL:
        ln = link(gpu, job, n)
        links.append(f"{deg.dp}-way {job.strategy} over {ln.name}")
        if job.strategy == "ddp":
            comm += _ring_all_reduce(grads, deg.dp, ln)
        elif job.strategy in ("zero1", "zero2"):
            comm += _ring_gather(grads, deg.dp, ln) + _ring_gather(params, deg.dp, ln)  # reduce-scatter grads, gather params
        else:
            # zero3/fsdp: parameters gathered for forward and again for backward, gradients reduce-scattered: 1.5 ×
            # DDP's volume for full training (Rajbhandari et al. 2020, §7.2.2).
            comm += 2 * _ring_gather(params, deg.dp, ln) + _ring_gather(grads, deg.dp, ln)
    if deg.tp > 1:
        ln = link(gpu, job, deg.tp)
        links.append(f"tp{deg.tp} over {ln.name}")
        # Two all-reduces forward and two backward per layer of the stage (Shoeybi et al. 2019, §3), per micro-batch.
        layers = math.ceil(spec.num_layers / deg.pp)
        comm += accum * 4 * layers * _ring_all_reduce(micro_tokens / deg.cp * spec.hidden_size * c, deg.tp, ln)
    if deg.pp > 1:
        ln = link(gpu, job, n)
        links.append(f"pp{deg.pp} over {ln.name}")
        comm += accum * 2 * micro_tokens / deg.cp * spec.hidden_size * c / ln.one_way  # activations on, gradients back
    step = compute + bubble + comm
    global_tokens = accum * micro_tokens * deg.dp
    assumptions = [
        f"{rule}, plus attention: {per_token / 1e9:,.1f} GFLOP per token",
        f"peak {flops / 1e12:,.0f} TFLOP/s dense {flops_kind} per GPU ({gpu.label or gpu.name}) at MFU {mfu:.2f}"
        + ("" if job.mfu else " (default: Llama 3 reached 38–43 %, PaLM 46 %, Megatron-LM 52 %; set --mfu)"),
    ]
    if links:
        assumptions.append(f"{n} GPUs: " + "; ".join(links) + "; communication not overlapped with compute (upper bound)")
    if bubble:
        assumptions.append(f"pipeline bubble {bubble / (compute + bubble):.0%} of compute (GPipe/1F1B)")
    if job.offload != "none":
        assumptions.append("CPU offload transfers and the CPU optimizer step are not timed")
    return TrainingSpeed(step_seconds=step, tokens_per_s=global_tokens / step, compute_seconds=compute + bubble,
                         communication_seconds=comm, flops_per_token=per_token, assumptions=tuple(assumptions))


def attach(est: Estimate, spec: ModelSpec) -> Estimate:
    """The estimate with its speed attached, or with a note saying why no speed could be estimated."""
    if est.method != "detailed" or est.speed is not None:
        return est
    try:
        speed = training_speed(est, spec) if est.job.training else inference_speed(est, spec)
    except SpeedUnavailable as e:
        return dataclasses.replace(est, explanation=est.explanation + (f"no speed estimate: {e}",))
    return dataclasses.replace(est, speed=speed)


# --------------------------------------------------------------------------------------------------- ranking plans


def throughput_tokens_per_s(est: Estimate) -> float | None:
    """Tokens the job turns out per second, comparable across plans of one job: trained tokens (training), or
    generated tokens of the whole batch with the prefill counted in (inference; prompt tokens when nothing is
    generated). None without a speed estimate."""
    s = est.speed
    if isinstance(s, TrainingSpeed):
        return s.tokens_per_s
    if isinstance(s, InferenceSpeed):
        j = est.job
        prefill = s.prefill_seconds or 0.0
        if j.new_tokens == 0:
            return j.batch_size * j.seq_len / prefill if prefill else None
        return j.batch_size * j.new_tokens / (prefill + j.new_tokens / s.decode_tokens_per_s)
    return None


def usd_per_million_tokens(est: Estimate, prices: dict[str, float]) -> float | None:
    """What a million of those tokens costs at the user's hourly price per GPU (no built-in prices: they change
    weekly). None when the plan's GPU has no price or no speed estimate."""
    price = prices.get(est.gpu.name)
    rate = throughput_tokens_per_s(est)
    if price is None or not rate:
        return None
    return price * est.num_gpus / 3600 / rate * 1e6


def parse_prices(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """['h100=2.49', '24GiB=0.4'] → {catalog name: USD per GPU-hour}; names resolve like --gpu (aliases included)."""
    from modelmem.catalog.gpus import lookup_gpu
    from modelmem.errors import InvalidJobError

    prices: dict[str, float] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        try:
            usd = float(value)
        except ValueError:
            usd = math.nan
        if not sep or not name.strip() or not math.isfinite(usd) or usd <= 0:
            raise InvalidJobError("price", item, "NAME=USD_PER_HOUR with a GPU name or size and a positive price, e.g. h100=2.49")
        prices[lookup_gpu(name.strip()).name] = usd
    return prices


RANKINGS = ("fewest", "time", "cost")


def plan_ranking(rank: str, spec: ModelSpec, prices: dict[str, float] | None = None) -> Any:
    """A sort key for candidate plans (anything with an `estimate` and `num_gpus`): "fewest" GPUs (the caller's own
    order: None is returned), "time" (most tokens per second first) or "cost" (fewest dollars per million tokens at
    the user's prices; plans on unpriced GPUs last). Ties go to fewer GPUs."""
    from modelmem.errors import InvalidJobError

    if rank not in RANKINGS:
        raise InvalidJobError("rank", rank, ", ".join(RANKINGS))
    if rank == "fewest":
        return None
    if rank == "cost" and not prices:
        raise InvalidJobError("price", "(none given)", "at least one --price NAME=USD_PER_HOUR to rank by cost (modelmem has no "
                                             "built-in prices: they change weekly)")

    def key(plan: Any) -> tuple:
        est = attach(plan.estimate, spec)
        if rank == "time":
            rate = throughput_tokens_per_s(est)
            return (rate is None, -(rate or 0.0), plan.num_gpus)
        usd = usd_per_million_tokens(est, prices or {})
        return (usd is None, usd if usd is not None else math.inf, plan.num_gpus)

    return key
