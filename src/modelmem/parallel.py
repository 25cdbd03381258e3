"""How each memory component divides over GPUs under a strategy (ZeRO paper, Rajbhandari et al. 2020, Fig. 1;
FSDP2 fully_shard; Megatron tensor parallel, Shoeybi et al. 2019 §3; pipeline/layer split)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelmem.job import Job
from modelmem.spec import ModelSpec


@dataclass(frozen=True)
class Shares:
    """Fraction of each full-model quantity that the busiest GPU holds."""

    weights: float
    grads: float
    states: float
    activations: float  # of the per-layer activations (batch is per GPU already)
    kv: float
    layers: float  # fraction of decoder layers this GPU runs (pipeline / layer split)
    holds_embeddings: bool = True  # the GPU also holds the embedding / output layers in full


def shares(spec: ModelSpec, job: Job, n: int) -> Shares:
    s = job.strategy
    if n == 1 or s in ("none", "ddp"):
        return Shares(1, 1, 1, 1, 1, 1)
    if s == "zero1":
        return Shares(1, 1, 1 / n, 1, 1, 1)
    if s == "zero2":
        return Shares(1, 1 / n, 1 / n, 1, 1, 1)
    if s in ("zero3", "fsdp"):
        return Shares(1 / n, 1 / n, 1 / n, 1, 1, 1)
    if s == "tp":
        # KV heads split across ranks; with more ranks than KV heads each rank keeps a replica of one head.
        kv_share = max(1, math.ceil(spec.num_kv_heads / n)) / spec.num_kv_heads if spec.mla is None else 1 / n
        return Shares(1 / n, 1 / n, 1 / n, 1 / n, kv_share, 1)
    # pp and layer-split: contiguous blocks of layers; the busiest stage holds ceil(L / n) of them.
    frac = math.ceil(spec.num_layers / n) / spec.num_layers
    return Shares(frac, frac, frac, frac, frac, frac)


def valid_degree(spec: ModelSpec, job: Job, n: int) -> bool:
    """Tensor parallel needs the attention heads to divide evenly (vLLM, Megatron); pp needs ≤ L stages."""
    if job.strategy == "tp":
        return spec.num_heads % n == 0
    if job.strategy in ("pp", "layer-split"):
        return n <= spec.num_layers
    return True
