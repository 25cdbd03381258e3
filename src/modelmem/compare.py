"""The seed's rule next to the detailed estimate (`modelmem estimate --method both`).

Both are computed by the public `estimate`, on the same number of GPUs and compared against the same GPU size (the
memory the device reports); the seed's terms are mapped onto the detailed components (its 6-byte "weights" split
into the 16-bit copy and the fp32 masters). This module adds no formula of its own: only the mapping and, per
component, why the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelmem.result import Estimate

__all__ = ["Comparison", "ComparisonRow", "compare"]

# Components the seed has no term for, and what they grow with (the detailed method's modules say how).
_IGNORED = {
    "activations": "the seed ignores activations (they grow with batch × sequence length; checkpointing cuts them)",
    "logits": "the seed ignores the logits and the loss's fp32 buffers (batch × sequence × vocabulary)",
    "kv_cache": "the seed ignores the KV cache (batch × (prompt + new tokens) × layers × KV heads)",
    "temporaries": "the seed ignores communication buckets and the optimizer step's temporaries",
    "dequant_buffers": "the seed ignores the buffers that quantized layers dequantize into",
}


@dataclass(frozen=True)
class ComparisonRow:
    component: str
    detailed: int  # bytes per GPU (0 where the detailed method has no such term at the peak)
    seed: int  # bytes per GPU (0 where the seed has no such term)
    why: str


@dataclass(frozen=True)
class Comparison:
    detailed: Estimate
    seed: Estimate  # on the detailed estimate's number of GPUs, so per-GPU bytes line up
    seed_gpus_needed: int  # the seed's own answer: ceil(total GB / the GPU's nominal GB)
    formula: str  # the seed's total as the seed computes it
    rows: tuple[ComparisonRow, ...]

    @property
    def seed_fits(self) -> bool:
        """The seed's per-GPU total against the same GPU size as the detailed one (what one process may use)."""
        return self.seed.total_bytes / self.seed.num_gpus <= self.detailed.gpu.usable_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"detailed": self.detailed.to_dict(), "seed": self.seed.to_dict()}


def _why(name: str, d: Estimate, seed_bytes: int, detailed_bytes: int) -> str:
    j = d.job
    close = abs(seed_bytes - detailed_bytes) <= 0.01 * max(seed_bytes, detailed_bytes, 1)
    sharded = d.num_gpus > 1 and j.strategy in ("zero3", "fsdp", "tp", "pp", "layer-split")
    if name in _IGNORED:
        return _IGNORED[name]
    if name == "weights":
        if close:
            return "same rule: every parameter at the dtype's (or quantization's) bytes"
        reasons = []
        if j.quant != "none":
            reasons.append("quantized layers carry scales and zero points, embeddings and norms stay 16-bit")
        if j.mode == "train" and j.precision == "pure":
            reasons.append(f"pure {j.dtype}: the weights are the trained copy, no fp32 masters beside them")
        if j.mode == "train" and j.precision == "mixed":
            reasons.append("mixed precision stores the weights once, as fp32 masters (next row); autocast's 16-bit "
                           "copies live only while the matmuls run" + ("" if detailed_bytes else ", not at this peak"))
        if j.dtype == "fp32" and j.quant == "none":
            reasons.append("fp32 weights are 4 bytes each; the seed's training rule assumes 16-bit")
        if sharded:
            reasons.append(f"{j.strategy} shards the weights over {d.num_gpus} GPUs")
        return "; ".join(reasons) or "the detailed method sizes each tensor at its stored width"
    if name == "master_weights":
        if j.training and j.precision == "pure":
            return f"the seed always counts 4-byte fp32 masters; precision pure trains in {j.dtype} without them"
        if not j.training:
            return "inference: neither keeps masters"
        return "same rule: 4 bytes per trainable parameter" if close else "fp32 masters of the trainable parameters, sharded as the strategy says"
    if name == "gradients":
        if close:
            return "same rule: 4 bytes per trainable parameter"
        if d.per_gpu.components.get("gradients", 0) == 0 and any("backward start" in n for n in d.per_gpu.notes):
            return "the peak is at the start of backward, before any gradient exists"
        return "gradients in the training dtype (fp32 only with mixed precision), alive only from backward to the step"
    if name == "optimizer_states":
        if close:
            return f"same rule for {j.optimizer}: two fp32 states" if "adam" in j.optimizer else "same rule"
        return {
            "adamw-8bit": "8-bit AdamW keeps two 1-byte states (plus block scales), not 8 bytes",
            "paged-adamw-8bit": "paged 8-bit states live in unified memory, outside torch's allocated count",
            "paged-adamw": "paged states live in unified memory, outside torch's allocated count",
            "sgd": "plain SGD keeps no state; the seed counts 4 bytes",
            "adafactor": "Adafactor keeps factored row and column statistics, far smaller than 4 bytes",
            "lion": "Lion keeps one momentum in the weights' dtype",
        }.get(j.optimizer, "optimizer states sharded or offloaded as the strategy says")
    if name == "allowance":
        return "the seed's flat 25 % for everything else; the detailed method sizes each part (above and below)"
    return ""


def compare(model: Any, *, revision: str | None = None, **job: Any) -> Comparison:
    """Detailed and seed estimates of one job, side by side per GPU."""
    import modelmem
    from modelmem.seed import seed_formula, seed_terms

    spec = modelmem.resolve_model(model, revision=revision)
    detailed = modelmem.estimate(spec, **job)
    own = modelmem.estimate(spec, method="seed", **{**job, "num_gpus": "auto"})  # the seed's own GPU count
    auto = str(job.get("num_gpus", "auto")).lower() == "auto"
    seed = own if auto and own.num_gpus == detailed.num_gpus else modelmem.estimate(
        spec, method="seed", **{**job, "num_gpus": detailed.num_gpus})
    n = detailed.num_gpus
    trainable = seed.model.trainable_params
    # seed_terms names the same parts the seed's components hold (its "weights" split in two), all GPUs together
    mapped = {k: round(v / n) for k, v in seed_terms(seed.model.params, trainable, seed.job).items()}
    mapped["allowance"] = seed.per_gpu.components.get("allowance", 0)
    comps = detailed.per_gpu.components
    names = list(dict.fromkeys([*comps, *mapped]))
    rows = [ComparisonRow(k, int(comps.get(k, 0)), int(mapped.get(k, 0)), _why(k, detailed, mapped.get(k, 0), comps.get(k, 0)))
            for k in names if comps.get(k, 0) or mapped.get(k, 0)]
    return Comparison(detailed, seed, own.num_gpus, seed_formula(seed.model.params, trainable, seed.job), tuple(rows))
