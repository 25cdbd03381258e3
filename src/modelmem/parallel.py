"""How each memory component divides over GPUs under a parallel layout.

A layout arranges n GPUs as n = dp × tp × pp × cp (Megatron-LM's rank order; Narayanan et al. 2021, "Efficient
Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", §2–3), with routed experts split over ep
ranks taken from the data-parallel ranks (Megatron's expert-model-parallel group). Over the data-parallel ranks,
ZeRO stage 1/2/3 (Rajbhandari et al. 2020, Fig. 1) or FSDP (= stage 3; HSDP shards within a group of ranks and
replicates across groups) partition the states, gradients and parameters.

The model's facts never depend on the layout (STYLE rule 2): parameter counts come in whole, and the functions here
only say which fraction of them, and of a layer's activations, the busiest GPU holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelmem.counts import ParamCounts
from modelmem.job import Job
from modelmem.spec import ModelSpec

_ZERO_STAGE = {"none": 0, "ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}


# --- the papers' formulas, in the papers' symbols ------------------------------------------------------------------
# s sequence length, b micro-batch size, h hidden size, a attention heads, t tensor-parallel size, p pipeline stages,
# L layers, v vocabulary, m micro-batches per step; 16-bit activations (2 bytes) as in the papers.

def korthikanti_layer_activation_bytes(s: int, b: int, h: int, a: int, t: int = 1, sequence_parallel: bool = False,
                                       recompute: str = "none") -> float:
    """Activation bytes one transformer layer stores (Korthikanti et al. 2022, "Reducing Activation Recomputation
    in Large Transformer Models", Table 2; the per-block inventory of §4.1: attention 11sbh + 5as²b, MLP 19sbh,
    two layer norms 4sbh)."""
    if recompute == "full":
        return 2 * s * b * h  # only the layer's input is kept (Table 2, "full activation recomputation")
    attention_core = 5 * a * s / h  # the s×s scores, softmax output and dropout mask (§4.1), in units of sbh
    if recompute == "selective":
        attention_core = 0.0  # §5: the attention core is recomputed
    if sequence_parallel:
        return s * b * h / t * (34 + attention_core)  # Table 2: tensor + sequence parallel
    # Table 2, tensor parallel only: the layer norms and dropouts (10sbh) stay replicated on every rank.
    return s * b * h * (10 + 24 / t + attention_core / t)


def interleaved_memory_factor(p: int, v: int) -> float:
    """Extra activation memory of the interleaved 1F1B schedule with v model chunks per stage (Narayanan et al. 2021
    §2.2.1; Korthikanti et al. 2022 §4.2.3: (1 + (p − 1)/(p·v)) × the 1F1B amount; Megatron-LM's
    theoretical_memory_usage.py applies the same penalty)."""
    return 1 + (p - 1) / (p * v) if p > 1 else 1.0


def in_flight_microbatches(p: int, m: int, schedule: str = "1f1b") -> int:
    """Micro-batches whose activations the first stage holds at once (Narayanan et al. 2021 §2.2: GPipe keeps all m;
    1F1B warms up with p forward passes, so at most p; with fewer micro-batches than stages, m)."""
    if p <= 1:
        return 1
    return m if schedule == "gpipe" else min(p, m)


def first_stage_activation_bytes(s: int, b: int, h: int, a: int, L: int, v: int, t: int, p: int, m: int,
                                 sequence_parallel: bool, recompute: str = "none", schedule: str = "1f1b",
                                 virtual: int = 1) -> float:
    """Activation bytes of the first pipeline stage for a whole step (Korthikanti et al. 2022 §4.2.3 and eq. (5)
    with Megatron-LM's theoretical_memory_usage.py): L/p layers for each of the in-flight micro-batches, the
    embedding's dropout mask (sbh·p in flight) and, with a single stage, the output layer's inputs and the loss
    (4sbh(1 + v/h)), all divided by t under sequence parallelism."""
    per_layer = korthikanti_layer_activation_bytes(s, b, h, a, t, sequence_parallel, recompute)
    inflight = in_flight_microbatches(p, m, schedule) if schedule != "interleaved" else p
    total = per_layer * L / p * inflight
    total += s * b * h * inflight / (t if sequence_parallel else 1)  # embedding dropout mask, one per micro-batch
    if schedule == "interleaved":
        total *= interleaved_memory_factor(p, virtual)
    if p == 1:
        total += 4 * s * b * h * (1 + v / h) / t  # output layer's input and the fp32 loss (§4.2.3)
    return total


# --- the estimator's side: which fraction of each full-model quantity the busiest GPU holds -------------------------

@dataclass(frozen=True)
class Layout:
    """n = dp × tp × pp × cp GPUs; routed experts over ep of the data-parallel ranks; ZeRO stage over dp."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    zero: int = 0  # 0 replicate (DDP), 1 optimizer states, 2 + gradients, 3 + parameters (FSDP full shard)
    shard_group: int = 0  # HSDP: data-parallel ranks one shard spans (0: all of them)
    sequence_parallel: bool = False
    micro_batches: int = 1  # gradient-accumulation steps = the pipeline's micro-batches per step
    schedule: str = "1f1b"
    virtual_stages: int = 1
    layer_split: bool = False  # accelerate device_map="auto": stages run one at a time, no micro-batches in flight

    @property
    def num_gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def zero_group(self) -> int:
        """Ranks a ZeRO/FSDP shard spans: the data- and context-parallel ranks (Megatron's distributed optimizer
        shards over DP × CP), or the HSDP shard group."""
        group = self.dp * self.cp
        return min(group, self.shard_group) if self.shard_group else group


@dataclass(frozen=True)
class Shares:
    """Fraction of each full-model quantity that one pipeline stage's GPU holds."""

    weights: float
    grads: float
    states: float
    activations: float  # of one layer's activations per micro-batch (tensor / sequence / context parallel)
    kv: float
    layers: float  # fraction of decoder layers this GPU runs (pipeline / layer split)
    holds_embeddings: bool = True  # the GPU holds the output layer and computes the loss (last stage)
    in_flight: float = 1.0  # micro-batches of activations alive at once (1F1B first stage: up to pp)
    stage: str = "only"  # "only", "first" or "last"


def layout_of(job: Job, n: int) -> Layout:
    """The layout a job describes on n GPUs. Explicit degrees (tp, pp, cp, ep) take their GPUs first; the rest are
    data parallel under the job's strategy. Strategy "tp" or "pp" alone puts all n GPUs in that dimension."""
    s = job.strategy
    tp = int(getattr(job, "tp", 1) or 1)
    pp = int(getattr(job, "pp", 1) or 1)
    cp = int(getattr(job, "cp", 1) or 1)
    ep = int(getattr(job, "ep", 1) or 1)
    if s == "tp" and tp == 1 and pp == 1:
        tp = n
    elif s in ("pp", "layer-split") and pp == 1 and tp == 1:
        pp = n
    dp = max(1, n // (tp * pp * cp))
    return Layout(
        dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, zero=_ZERO_STAGE.get(s, 0),
        shard_group=int(getattr(job, "shard_group", 0) or 0),
        sequence_parallel=bool(getattr(job, "sequence_parallel", False)),
        micro_batches=int(getattr(job, "grad_accum", 1) or 1),
        schedule=str(getattr(job, "pp_schedule", "1f1b") or "1f1b"),
        virtual_stages=int(getattr(job, "pp_virtual", 1) or 1),
        layer_split=s == "layer-split",
    )


def _kv_share(spec: ModelSpec, tp: int) -> float:
    # KV heads split across TP ranks; with more ranks than KV heads each rank keeps a replica of one head (vLLM,
    # Megatron). MLA's latent is replicated in Megatron but vLLM splits heads after decompression: 1/t.
    if tp == 1:
        return 1.0
    return max(1, math.ceil(spec.num_kv_heads / tp)) / spec.num_kv_heads if spec.mla is None else 1 / tp


def _layer_fraction(spec: ModelSpec, pp: int) -> float:
    return math.ceil(spec.num_layers / pp) / spec.num_layers


def stage_shares(spec: ModelSpec, job: Job, n: int, counts: ParamCounts | None = None,
                 replicated_activation_fraction: float = 0.0) -> tuple[Shares, ...]:
    """Shares for each distinct pipeline stage (the first holds the embeddings and up to pp micro-batches of
    activations, the last the output layer and the loss); one entry without pipeline parallelism.

    `replicated_activation_fraction` is the part of a layer's activations that tensor parallelism without sequence
    parallelism leaves whole on every rank (Korthikanti et al. 2022 §4.2.1: the layer norms' and dropouts' 10sbh)."""
    lay = layout_of(job, n)
    if n == 1:
        return (Shares(1, 1, 1, 1, 1, 1),)
    if lay.tp == 1 and lay.pp == 1 and lay.cp == 1 and lay.ep == 1:
        # Pure data parallel: ZeRO / FSDP shards over every rank (Rajbhandari et al. 2020, Fig. 1).
        g = lay.zero_group
        return (Shares(1 / g if lay.zero >= 3 else 1, 1 / g if lay.zero >= 2 else 1, 1 / g if lay.zero >= 1 else 1,
                       1, 1, 1),)
    tp, pp, cp = lay.tp, lay.pp, lay.cp
    if lay.sequence_parallel or tp == 1:
        act = 1 / (tp * cp)
    else:
        r = replicated_activation_fraction
        act = (r + (1 - r) / tp) / cp
    frac_layers = _layer_fraction(spec, pp)
    kv = _kv_share(spec, tp) * frac_layers / cp
    stages = ("only",) if pp == 1 else ("first", "last")
    out = []
    for stage in stages:
        w, g, st = _param_fractions(spec, counts, lay, stage)
        in_flight = 1.0
        if pp > 1 and not lay.layer_split and stage == "first":
            if lay.schedule == "interleaved":
                in_flight = pp * interleaved_memory_factor(pp, lay.virtual_stages)
            else:
                in_flight = in_flight_microbatches(pp, lay.micro_batches, lay.schedule)
        out.append(Shares(w, g, st, act, kv, frac_layers, holds_embeddings=stage in ("only", "last"),
                          in_flight=in_flight, stage=stage))
    return tuple(out)


def _param_fractions(spec: ModelSpec, counts: ParamCounts | None, lay: Layout, stage: str) -> tuple[float, float, float]:
    """(weights, gradients, states) fractions of the full model on one GPU of the stage.

    Megatron-LM's split (theoretical_memory_usage.py mirrors it): attention and dense MLPs by t; routed experts by
    ep (and t, its default expert-tensor-parallel size); norms and routers replicated; each stage its L/p layers;
    the word embedding on the first stage, the output layer on the last (a tied head is a second copy there)."""
    tp, pp = lay.tp, lay.pp
    frac_layers = _layer_fraction(spec, pp) if pp > 1 else 1.0
    if counts is None or counts.total == 0:
        model = frac_layers / tp
        dense_part, expert_part = model, 0.0
    else:
        c = counts
        body_tp = (c.attention + c.mlp) * frac_layers / tp
        body_rep = (c.norms + c.router) * frac_layers
        experts = c.experts * frac_layers / (tp * lay.ep)
        embed = (c.embeddings + c.position_embeddings) / tp
        # A tied head on its own last stage is a second copy of the embedding (Megatron syncs their gradients).
        head = (c.lm_head if c.lm_head else (c.embeddings if pp > 1 else 0)) / tp
        other = c.other / tp
        first = stage in ("only", "first")
        last = stage in ("only", "last")
        dense_params = body_tp + body_rep + (embed + other if first else 0) + (head if last else 0)
        dense_part, expert_part = dense_params / c.total, experts / c.total
    g = lay.zero_group
    # Experts' data-parallel group is smaller by ep (Megatron expert_data_parallel_size = world / (etp·ep·pp)).
    g_exp = max(1, g // lay.ep)

    def sharded(stage_min: int) -> float:
        if lay.zero < stage_min:
            return dense_part + expert_part
        return dense_part / g + expert_part / g_exp

    return sharded(3), sharded(2), sharded(1)


def shares(spec: ModelSpec, job: Job, n: int, counts: ParamCounts | None = None) -> Shares:
    """The busiest stage's shares (the first pipeline stage, which holds the most activations), for callers that
    evaluate one stage."""
    return stage_shares(spec, job, n, counts)[0]


def valid_degree(spec: ModelSpec, job: Job, n: int) -> bool:
    """Whether n GPUs can hold the job's layout (see `layout_problem`)."""
    return layout_problem(spec, job, n) is None


def layout_problem(spec: ModelSpec, job: Job, n: int) -> str | None:
    """Why n GPUs cannot run the job's layout, or None. Megatron and vLLM need the attention heads and the KV heads
    to divide by t (vLLM replicates KV heads when t exceeds them, so t must be a multiple then), at most one stage
    per layer, experts divisible by ep, and n a multiple of tp × pp × cp."""
    lay = layout_of(job, n)
    prod = lay.tp * lay.pp * lay.cp
    if n % prod:
        return f"a multiple of tp × pp × cp = {prod} GPUs"
    if lay.tp > 1:
        if spec.num_heads % lay.tp:
            return f"a tensor-parallel degree that divides the {spec.num_heads} attention heads"
        kv = spec.num_kv_heads
        if kv % lay.tp and lay.tp % kv:
            return f"a tensor-parallel degree that divides the {kv} KV heads or is a multiple of them"
    if lay.pp > spec.num_layers:
        return f"at most {spec.num_layers} pipeline stages (one layer per stage)"
    if lay.ep > 1:
        experts = spec.moe.num_experts if spec.moe is not None else 1
        if experts % lay.ep:
            return f"an expert-parallel degree that divides the {experts} experts"
        if (lay.dp * lay.cp) % lay.ep:
            return "an expert-parallel degree that divides the data-parallel ranks"
    return None


def tp_replicated_bytes_per_token(spec: ModelSpec, dtype_bytes: int) -> float:
    """Activation bytes per token per layer that tensor parallelism without sequence parallelism keeps whole on
    every rank: Korthikanti et al. 2022 §4.2.1, the layer norms' inputs and outputs and the dropout masks, 10sbh at
    2 bytes (5 activations of h values per token)."""
    return 5 * dtype_bytes * spec.hidden_size
