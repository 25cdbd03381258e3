"""plan: the layouts that run a job on the fewest GPUs of a kind, each checked by the estimator.

A layout is a data-parallel strategy (DDP, ZeRO-1/2/3, FSDP, HSDP) times tensor, pipeline, context and expert
parallel degrees, plus the memory savers a job can switch on. The search is pruned, never a rescan:
  * structural layouts (strategy, tp, pp, cp, ep) are visited by their model-parallel size tp·pp·cp, smallest
    first, and skipped once ten plans need fewer GPUs than the layout's minimum;
  * for each, the most memory-saving rung of the ladder (full recomputation, micro-batch 1 with accumulation,
    offload) is tried on the most data-parallel ranks allowed — a layout that does not fit then never fits;
  * per-GPU memory never grows with the data-parallel degree, so a binary search finds the fewest ranks;
  * at that count the ladder is walked from the cheapest rung, so a plan switches on only what it needs.
Degrees obey the real divisibility rules (parallel.layout_problem): heads and KV heads by tp, layers by pp, experts
by ep, sequence by 2·cp; tp stays inside a node; more than one node means whole nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelmem.errors import InvalidJobError
from modelmem.planner._evaluate import Evaluator
from modelmem.result import Estimate, GPUInfo, PerGPU
from modelmem.spec import ModelSpec

DEFAULT_GPUS_PER_NODE = 8
MAX_GPUS = 1024
TOP = 10
# ZeRO-3 is modelled exactly as FSDP (full shard): searched only when asked for, and FSDP plans say so.
TRAINING_STRATEGIES = ("fsdp", "zero2", "zero1", "hsdp", "ddp")
# DeepSpeed's own estimate of the CPU memory ZeRO-Offload needs with zero.Init (deepspeed/runtime/zero/stage3.py,
# estimate_zero3_model_states_mem_needs): 16 bytes per parameter for the offloaded optimizer (fp32 master, Adam's
# two states, fp32 gradient), 18 with the 16-bit parameters too, spread over the nodes, times a 1.5 buffer factor.
OFFLOAD_OPTIMIZER_BYTES_PER_PARAM = 16
OFFLOAD_PARAMS_BYTES_PER_PARAM = 18
OFFLOAD_BUFFER_FACTOR = 1.5


@dataclass(frozen=True)
class Plan:
    fields: Mapping[str, Any]  # the job keyword arguments that reproduce this plan with modelmem.estimate
    estimate: Estimate
    nodes: int
    cpu_ram_per_node: int  # bytes of host memory each node needs for offloaded states (0 without offload)

    @property
    def job(self):
        return self.estimate.job

    @property
    def num_gpus(self) -> int:
        return self.estimate.num_gpus

    @property
    def per_gpu(self) -> PerGPU:
        return self.estimate.per_gpu

    @property
    def gpu(self) -> GPUInfo:
        return self.estimate.gpu

    @property
    def headroom_bytes(self) -> int:
        return self.estimate.headroom_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job.to_dict(), "num_gpus": int(self.num_gpus), "nodes": int(self.nodes),
                "per_gpu": self.per_gpu.to_dict(), "cpu_ram_per_node": int(self.cpu_ram_per_node),
                "gpu": self.gpu.name, "headroom_bytes": int(self.headroom_bytes), "fields": dict(self.fields)}


def fewest_gpus_key(plan: Plan) -> tuple:
    """The default ranking: fewest GPUs, then fewest nodes, then the most headroom. A ranking by step time or
    price (modelmem.speed) plugs in here as another key function."""
    return (plan.num_gpus, plan.nodes, -plan.headroom_bytes)


@dataclass(frozen=True)
class _Structure:
    strategy: str
    tp: int
    pp: int
    cp: int
    ep: int
    shard_group: int = 0  # HSDP: FSDP sharded within this many ranks (a node), replicated across

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    def change(self, training: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "hsdp":
            out = {"strategy": "fsdp", "shard_group": self.shard_group}
        for name in ("tp", "pp", "cp", "ep"):
            if getattr(self, name) > 1:
                out[name] = getattr(self, name)
        if self.tp > 1 and training:
            out["sequence_parallel"] = True  # SP only ever lowers memory (Korthikanti et al. 2022 §4.2.2)
        return out


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _structures(spec: ModelSpec, job: Any, given: Mapping[str, Any], gpus_per_node: int, max_gpus: int) -> list[_Structure]:
    training = job.training
    if "strategy" in given:
        strategies: Sequence[str] = (str(given["strategy"]).lower(),)
    else:
        strategies = TRAINING_STRATEGIES if training else ("none",)
    fixed = {k: int(given[k]) for k in ("tp", "pp", "cp", "ep") if k in given}
    # tp: divides the heads; the KV heads divide by it or it is a multiple of them (vLLM replicates KV heads);
    # inside one node (Narayanan et al. 2021 §3.3: tensor parallelism across nodes is slow).
    tps = [t for t in _divisors(spec.num_heads, gpus_per_node)
           if spec.num_kv_heads % t == 0 or t % spec.num_kv_heads == 0]
    pps = _divisors(spec.num_layers, max_gpus)  # Megatron needs the layers to divide evenly over the stages
    cps = [1]
    if job.seq_len >= 8192:  # context parallelism is for long sequences (Megatron: seq_len divisible by 2·cp)
        cps = [c for c in (1, 2, 4, 8, 16) if job.seq_len % (2 * c) == 0 or c == 1]
    eps = [1]
    if spec.moe is not None and training:
        eps = [e for e in _divisors(spec.moe.num_experts, 64)]
    out = []
    for s in strategies:
        for tp in [fixed["tp"]] if "tp" in fixed else tps:
            for pp in [fixed["pp"]] if "pp" in fixed else pps:
                for cp in [fixed["cp"]] if "cp" in fixed else cps:
                    for ep in [fixed["ep"]] if "ep" in fixed else eps:
                        if tp * pp * cp <= max_gpus:
                            out.append(_Structure(s, tp, pp, cp, ep, gpus_per_node if s == "hsdp" else 0))
    out.sort(key=lambda st: (st.model_parallel, st.ep, TRAINING_STRATEGIES.index(st.strategy)
                             if st.strategy in TRAINING_STRATEGIES else len(TRAINING_STRATEGIES)))
    return out


def _ladder(job: Any, given: Mapping[str, Any], strategy: str) -> list[dict[str, Any]]:
    """Memory savers, cheapest first; fields the user set are kept as they are."""
    if not job.training:
        return [{}]
    rungs: list[dict[str, Any]] = [{}]
    if "grad_checkpointing" not in given:
        rungs += [{"grad_checkpointing": "selective"}, {"grad_checkpointing": "full"}]
    last = dict(rungs[-1])
    if job.batch_size > 1 and "grad_accum" not in given:
        # Micro-batch 1 with accumulation keeps the global batch (the sequences each optimizer step sees).
        last = {**last, "batch_size": 1, "grad_accum": job.batch_size}
        rungs.append(last)
    if "offload" not in given and strategy in ("zero1", "zero2", "zero3", "fsdp", "hsdp"):
        rungs.append({**last, "offload": "optimizer"})
        if strategy in ("zero3", "fsdp", "hsdp"):
            rungs.append({**last, "offload": "params"})
    return rungs


def _whole_nodes(n: int, gpus_per_node: int) -> bool:
    return n <= gpus_per_node or n % gpus_per_node == 0


def search(spec: ModelSpec, given: Mapping[str, Any], gpus: Sequence[str] | str = ("h100-80gb",),
           gpus_per_node: int = DEFAULT_GPUS_PER_NODE, max_gpus: int = MAX_GPUS, top: int = TOP,
           key: Callable[[Plan], tuple] = fewest_gpus_key) -> tuple[Plan, ...]:
    """The `top` best layouts of the job `given` (JOBS.md keyword arguments) over the GPU kinds `gpus` (names, or
    "any" for every catalog GPU), ranked by `key`."""
    from modelmem.catalog.gpus import gpus as catalog, lookup_gpu

    if gpus_per_node < 1:
        raise InvalidJobError("gpus_per_node", gpus_per_node, "an integer ≥ 1")
    if max_gpus < 1:
        raise InvalidJobError("max_gpus", max_gpus, "an integer ≥ 1")
    names = [g.name for g in catalog()] if gpus == "any" or list(gpus) == ["any"] else [lookup_gpu(g).name for g in gpus]
    given = {k: v for k, v in given.items() if v is not None and k not in ("num_gpus", "gpu")}
    plans: list[Plan] = []
    for name in names:
        plans += _search_one(spec, {**given, "gpu": name}, gpus_per_node, max_gpus, top, key)
    plans.sort(key=key)
    return tuple(plans[:top])


def _search_one(spec: ModelSpec, given: dict[str, Any], gpn: int, max_gpus: int, top: int,
                key: Callable[[Plan], tuple]) -> list[Plan]:
    ev = Evaluator(spec, given)
    probe = ev.job({"num_gpus": 1})
    if probe is None:
        from modelmem.job import make_job

        make_job(**ev.fields({"num_gpus": 1}))  # raises the user's own error
        return []
    found: list[Plan] = []
    seen: set[tuple] = set()
    worst = math.inf  # GPUs of the top-th plan so far: layouts that need more are skipped

    def fits(change: dict[str, Any], n: int) -> Estimate | None:
        e = ev.estimate({**change, "num_gpus": n})
        return e if e is not None and e.fits else None

    for st in _structures(spec, probe, given, gpn, max_gpus):
        mp = st.model_parallel
        if mp > worst:
            break  # sorted by model-parallel size: every later layout needs more GPUs too
        base = st.change(probe.training)
        if probe.training and st.pp > 1:
            # 1F1B keeps up to pp micro-batches in flight; a pipeline is run with at least pp of them.
            base["grad_accum"] = max(int(given.get("grad_accum", 1) or 1), st.pp)
        replicate_only = st.strategy in ("ddp", "none")
        dps = [d for d in range(1, max_gpus // mp + 1)
               if _whole_nodes(d * mp, gpn) and (d * st.cp) % st.ep == 0 and d * mp <= worst]
        if replicate_only or not probe.training:
            dps = dps[:1] if dps and dps[0] == 1 else []  # replicas add no memory relief: one replica or none
        if st.strategy == "hsdp":
            dps = [d for d in dps if d * st.cp > gpn]  # within one node HSDP is FSDP
        if not dps:
            continue
        ladder = _ladder(probe, given, st.strategy)
        strongest = {**base, **ladder[-1]}
        if ev.job({**strongest, "num_gpus": dps[-1] * mp}) is None:
            continue  # the combination is not a valid job (e.g. offload with this strategy)
        if fits(strongest, dps[-1] * mp) is None:
            continue
        first = _fewest(lambda d: fits(strongest, d * mp) is not None, dps)
        # The Pareto front of this layout: the cheapest rung on its fewest GPUs, then each stronger rung only where
        # it needs fewer GPUs still (a saver that does not save GPUs is not worth its slowdown).
        bound = len(dps)
        for rung in ladder:
            change = {**base, **rung}
            window = dps[first:bound]
            if not window or fits(change, window[-1] * mp) is None:
                continue
            i = first + _fewest(lambda d: fits(change, d * mp) is not None, window)
            e = fits(change, dps[i] * mp)
            assert e is not None
            plan = _plan(ev, change, e, gpn)
            same = _same_plan_key(plan)
            if same not in seen:  # with one data-parallel rank every ZeRO stage is the same plan: keep the first
                seen.add(same)
                found.append(plan)
            bound = i
            if bound == first:
                break
        if len(found) >= top:
            found.sort(key=key)
            del found[top:]
            worst = found[-1].num_gpus
    found.sort(key=key)
    return found[:top]


def _same_plan_key(plan: Plan) -> tuple:
    from modelmem.parallel import layout_of

    job = plan.job
    lay = layout_of(job, plan.num_gpus)
    strategy = job.strategy if lay.dp * lay.cp > 1 else "-"
    return (plan.num_gpus, strategy, lay.tp, lay.pp, lay.cp, lay.ep, lay.shard_group, job.grad_checkpointing,
            job.batch_size, lay.micro_batches, job.offload, job.gpu if isinstance(job.gpu, str) else job.gpu.name)


def _fewest(ok: Callable[[int], bool], values: Sequence[int]) -> int:
    """Index of the first value where ok holds, given ok is false up to some index and true from it on, and true at
    the last value (per-GPU memory never grows with the data-parallel degree)."""
    lo, hi = 0, len(values) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _plan(ev: Evaluator, change: dict[str, Any], est: Estimate, gpn: int) -> Plan:
    n = est.num_gpus
    nodes = math.ceil(n / gpn)
    return Plan(fields=ev.fields({**change, "num_gpus": n}), estimate=est, nodes=nodes,
                cpu_ram_per_node=cpu_ram_per_node(est, nodes))


def cpu_ram_per_node(est: Estimate, nodes: int) -> int:
    """Host memory per node for ZeRO-Offload / FSDP CPU offload, by DeepSpeed's estimate (see the constants)."""
    job = est.job
    if job.offload == "none":
        return 0
    per_param = OFFLOAD_PARAMS_BYTES_PER_PARAM if job.offload == "params" else OFFLOAD_OPTIMIZER_BYTES_PER_PARAM
    params = est.model.trainable_params
    total = params * per_param
    if job.offload == "params" and est.model.params > params:
        total += (est.model.params - params) * 2  # frozen 16-bit weights (LoRA base) held in CPU memory too
    return int(total * OFFLOAD_BUFFER_FACTOR / max(1, nodes))


def parse_gpus(value: str | Iterable[str]) -> list[str] | str:
    """`--gpu h100,a100-80gb` or `any` → names (each checked against the catalog; unknown names are exit-2 errors)."""
    from modelmem.catalog.gpus import lookup_gpu

    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if items == ["any"]:
        return "any"
    if not items:
        raise InvalidJobError("gpu", value, "a GPU name, a comma list of them, or any")
    return [lookup_gpu(v).name for v in items]
