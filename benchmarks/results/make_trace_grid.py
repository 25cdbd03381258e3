"""Run the trace over a grid of jobs and append one JSON line per job to trace_grid.jsonl (see README.md here).

    .venv/bin/python benchmarks/results/make_trace_grid.py --shard 0/2   # and 1/2 in a second process
Jobs already in the output file are skipped, so the grid can be extended and resumed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from trace_agreement import hf_config_from_row, job, load_rows, spec_for  # noqa: E402

MODELS = (
    "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "google/gemma-2-9b", "mistralai/Mistral-7B-v0.1",
    "microsoft/Phi-3-mini-4k-instruct", "openai-community/gpt2", "meta-llama/Llama-2-7b-hf", "mistralai/Mixtral-8x7B-v0.1",
)
SHAPES = ((1, 512), (2, 2048), (4, 1024))


def grid() -> list[tuple[str, dict[str, Any]]]:
    """In priority order: what the analytic calibration needs first comes first."""
    tiers: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in range(7)]
    for m in MODELS:
        for b, s in SHAPES:
            for ck in ("none", "full"):
                tiers[0].append((m, dict(mode="train", precision="pure", batch_size=b, seq_len=s, grad_checkpointing=ck)))
            tiers[0].append((m, dict(mode="inference", batch_size=b, seq_len=s, new_tokens=16)))
            for ck in ("none", "full"):
                tiers[1].append((m, dict(mode="lora", batch_size=b, seq_len=s, grad_checkpointing=ck, lora_targets="q_proj,v_proj")))
                tiers[1].append((m, dict(mode="qlora", batch_size=b, seq_len=s, grad_checkpointing=ck, lora_targets="all-linear")))
                tiers[2].append((m, dict(mode="train", precision="mixed", batch_size=b, seq_len=s, grad_checkpointing=ck)))
                tiers[2].append((m, dict(mode="lora", batch_size=b, seq_len=s, grad_checkpointing=ck, lora_targets="all-linear")))
                tiers[3 if ck == "none" else 6].append((m, dict(mode="train", precision="pure", batch_size=b, seq_len=s, grad_checkpointing=ck, attention="eager")))
            tiers[3].append((m, dict(mode="inference", batch_size=b, seq_len=s, new_tokens=16, attention="eager")))
            tiers[4].append((m, dict(mode="lora", batch_size=b, seq_len=s, lora_targets="all-linear", attention="eager")))
            tiers[4].append((m, dict(mode="qlora", batch_size=b, seq_len=s, lora_targets="all-linear", attention="eager")))
    for m in ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B"):
        for n in (2, 8):
            for ck in ("none", "full"):
                tiers[5].append((m, dict(mode="train", precision="pure", batch_size=1, seq_len=2048, num_gpus=n, strategy="fsdp", grad_checkpointing=ck)))
    order = (0, 1, 5, 3, 2, 6, 4)  # sharded jobs early: the analytic sharding model is checked against them
    jobs = [j for i in order for j in tiers[i]]
    # one GPU unless sharded (the default, auto, would leave the GPU count to the estimator)
    jobs = [(m, {"num_gpus": 1, **f}) for m, f in jobs]
    # Phi-3 and GPT-2 fuse q, k and v (qkv_proj, c_attn): their q/v LoRA is PEFT's default for the model type
    fused = {"microsoft/Phi-3-mini-4k-instruct": "qkv_proj", "openai-community/gpt2": "c_attn"}
    return [(m, {**f, "lora_targets": fused[m]}) if m in fused and f.get("lora_targets") == "q_proj,v_proj" else (m, f) for m, f in jobs]


def catalog_families() -> dict[str, list[str]]:
    """Every config `model_type` in the catalog → its models, smallest first (parameters as modelmem counts them)."""
    import json as _json

    import modelmem

    path = HERE.parents[1] / "src" / "modelmem" / "catalog" / "models.json"
    by_type: dict[str, list[tuple[int, str]]] = {}
    for m in _json.loads(path.read_text())["models"]:
        by_type.setdefault(str(m["config"].get("model_type")), []).append((modelmem.params(m["id"]).total, m["id"]))
    return {t: [name for _, name in sorted(v)] for t, v in sorted(by_type.items())}


def qv_targets(model: str) -> str:
    """The q and v projections' module names (the fused qkv module where q and v are not separate), as in the
    issue-8 sweep; explicit names, so trace and estimate adapt the same modules."""
    from modelmem.counts import linear_modules

    spec = spec_for(model)
    names = {m.name for m in linear_modules(spec) if not m.expert}
    if {"q_proj", "v_proj"} <= names:
        return "q_proj,v_proj"
    if "kv_b_proj" in names:
        # MLA: values come out of kv_b_proj (with the non-rotary keys); queries from q_proj or, with a query
        # low-rank (DeepSeek-V3), q_b_proj
        return ("q_proj" if "q_proj" in names else "q_b_proj") + ",kv_b_proj"
    fused = [n for n in ("qkv_proj", "query_key_value", "c_attn", "Wqkv") if n in names]
    if fused:
        return fused[0]
    raise SystemExit(f"{model}: no q/v projections among {sorted(names)}")


# model types whose attention has no SDPA path in transformers 5.24 (ALiBi, attention sinks, soft-capping)
EAGER_ONLY = {"bloom", "gpt_oss", "gemma2"}
MOE = {"mixtral", "qwen3_moe", "gpt_oss", "deepseek_v2", "deepseek_v3"}
QLORA = {"llama", "qwen3", "gemma3_text", "opt", "gpt_neox", "phi3", "mistral", "qwen3_moe"}
SLOW: set[str] = set()  # DeepSeek-V3 (671B, 61 layers of 256 experts) traces in minutes on an idle machine


def family_grid() -> list[tuple[str, dict[str, Any]]]:
    """Issue 8, item 5: every catalog model_type, its smallest model, the five job shapes of the issue's sweep
    (+ QLoRA on several families, eager where there is no SDPA path); one GPU."""
    jobs: list[tuple[int, str, dict[str, Any]]] = []
    for mt, models in catalog_families().items():
        m = models[0]
        first = len(jobs)
        base: dict[str, Any] = {"num_gpus": 1}
        # in priority order (a partial run keeps the first shapes of every family)
        jobs += [
            (m, {**base, "mode": "train", "precision": "pure", "batch_size": 2, "seq_len": 2048, "grad_checkpointing": "none"}),
            (m, {**base, "mode": "lora", "batch_size": 4, "seq_len": 2048, "grad_checkpointing": "none", "lora_targets": qv_targets(m)}),
            (m, {**base, "mode": "inference", "batch_size": 4, "seq_len": 2048, "new_tokens": 16}),
        ]
        if mt in EAGER_ONLY:
            jobs.append((m, {**base, "mode": "inference", "batch_size": 4, "seq_len": 2048, "new_tokens": 16, "attention": "eager"}))
        if mt in QLORA:
            jobs.append((m, {**base, "mode": "qlora", "batch_size": 4, "seq_len": 2048, "grad_checkpointing": "full", "lora_targets": "all-linear"}))
        if mt not in SLOW:
            jobs.append((m, {**base, "mode": "lora", "batch_size": 4, "seq_len": 2048, "grad_checkpointing": "full", "lora_targets": "all-linear"}))
            jobs.append((m, {**base, "mode": "train", "precision": "pure", "batch_size": 2, "seq_len": 2048, "grad_checkpointing": "full"}))
        if mt in EAGER_ONLY:
            jobs.append((m, {**base, "mode": "train", "precision": "pure", "batch_size": 1, "seq_len": 2048, "attention": "eager"}))
        jobs[first:] = [(i, mm, f) for i, (mm, f) in enumerate(jobs[first:])]  # type: ignore[misc]
    # the same job shape over every family first, so that a partial run still covers every family
    return [(m, f) for _, m, f in sorted(jobs, key=lambda t: t[0])]


def large_grid() -> list[tuple[str, dict[str, Any]]]:
    """Issue 8, item 5: the largest catalog model of every model_type that has more than one (a 405B traces in about
    a minute: fake tensors cost per layer, not per parameter): LoRA q,v without checkpointing, inference prefill +
    decode and checkpointed LoRA all-linear, the shapes where activations rather than weights set the peak."""
    jobs: list[tuple[int, str, dict[str, Any]]] = []
    base: dict[str, Any] = {"num_gpus": 1}
    for mt, models in catalog_families().items():
        if len(models) < 2:
            continue
        m = models[-1]
        shapes = [
            {**base, "mode": "lora", "batch_size": 4, "seq_len": 2048, "grad_checkpointing": "none", "lora_targets": qv_targets(m)},
            {**base, "mode": "inference", "batch_size": 4, "seq_len": 2048, "new_tokens": 16},
            {**base, "mode": "lora", "batch_size": 4, "seq_len": 2048, "grad_checkpointing": "full", "lora_targets": "all-linear"},
        ]
        jobs += [(i, m, f) for i, f in enumerate(shapes)]
    return [(m, f) for _, m, f in sorted(jobs, key=lambda t: t[0])]


def stale_grid() -> list[tuple[str, dict[str, Any]]]:
    """Rows of the first grid whose workload changed since: GPT-2 (QLoRA shim now converts Conv1D; dropout masks
    are bool as on CUDA). They are deleted from the jsonl and traced again."""
    return [(m, f) for m, f in grid() if m == "openai-community/gpt2"]


def autocast_rows(path: Path) -> list[dict[str, Any]]:
    """Rows traced under autocast before the CPU route applied CUDA autocast's fp32 policy (layer_norm, softmax,
    pow… in fp32; trace/_workload.py _CudaAutocastFp32) in families where that changes a tensor: LayerNorm or a
    Python GELU. RMSNorm upcasts by hand and eager attention names softmax's dtype, so the others traced the same
    bytes (checked on Gemma-2 eager LoRA, byte for byte against the fake-CUDA route)."""
    from modelmem.job import Job
    from modelmem.sources.config import spec_from_config

    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else None
        if not rec or "error" in rec or rec.get("autocast_policy") == "cuda":
            continue
        j = Job(**rec["fields"])
        if not (j.training and j.precision == "mixed" and j.dtype != "fp32"):
            continue
        cfg = rec["config"]
        if isinstance(cfg.get("text_config"), dict):
            continue
        spec = spec_from_config(cfg, rec["model"])
        if spec.norm == "layernorm" or spec.activation in ("gelu_new", "gelu_fast", "gelu_python"):
            out.append(rec)
    return out


def _key(model: str, fields: dict[str, Any]) -> str:
    return model + " " + json.dumps(fields, sort_keys=True)


def coefficients(r: Any, cfg: dict[str, Any], j: Any) -> dict[str, Any]:
    """Per-token figures the analytic model is calibrated with (see README.md for their definitions)."""
    from modelmem.trace._workload import text_model_config

    cfg = text_model_config(cfg)
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 1
    vocab = cfg.get("vocab_size") or 1
    tokens = j.batch_size * j.seq_len
    out: dict[str, Any] = {}
    pp = r.phase_peaks
    if j.training:
        # end of forward: every saved activation alive, the loss being computed ("logits" phase)
        fwd = pp.get("logits", {}).get("components", {})
        out["activations_end_of_forward"] = fwd.get("activations", 0)
        out["activation_bytes_per_token_per_layer"] = fwd.get("activations", 0) / (tokens * layers)
        out["logits_bytes_end_of_forward"] = fwd.get("logits", 0)
        lb = pp.get("loss_backward", {}).get("category_max", {})  # the most logits held in the loss's backward
        out["logits_bytes_start_of_backward"] = lb.get("logits", 0)
        out["logits_bytes_per_token_per_vocab_forward"] = fwd.get("logits", 0) / (tokens * vocab)
        out["logits_bytes_per_token_per_vocab_backward"] = lb.get("logits", 0) / (tokens * vocab)
        bw = pp.get("backward", {})
        out["backward_peak"] = bw.get("allocated", 0)
        out["backward_peak_components"] = bw.get("components", {})
        rc = pp.get("recompute", {})
        if rc:
            out["recompute_peak"] = rc.get("allocated", 0)
            out["recompute_peak_components"] = rc.get("components", {})
        op = pp.get("optimizer", {})
        out["optimizer_peak"] = op.get("allocated", 0)
        out["optimizer_peak_components"] = op.get("components", {})
    else:
        pre = pp.get("prefill", {}).get("components", {})
        out["prefill_peak"] = pp.get("prefill", {}).get("allocated", 0)
        out["prefill_peak_components"] = pre
        out["prefill_non_kv_temporary_bytes"] = pre.get("temporaries", 0) + pre.get("logits", 0) + pre.get("activations", 0)
        out["prefill_non_kv_temporary_bytes_per_token"] = out["prefill_non_kv_temporary_bytes"] / tokens
        dec = pp.get("decode", {})
        out["decode_peak"] = dec.get("allocated", 0)
        out["decode_peak_components"] = dec.get("components", {})
        out["kv_cache_bytes_at_peak"] = r.components.get("kv_cache", 0)
    out["phase_peaks"] = {k: {"allocated": v["allocated"], "op": v["op"], "category_max": v.get("category_max", {})} for k, v in pp.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--out", default=str(HERE / "trace_grid.jsonl"))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--set", choices=("core", "families", "large", "stale", "autocast"), default="core",
                    help="core: the first grid (models.jsonl configs); families: every catalog model_type (catalog "
                         "configs); large: the largest model of each model_type; stale: the core rows of GPT-2 again; "
                         "autocast: rows traced before CUDA's autocast fp32 policy, again (same config)")
    ap.add_argument("--types", default="", help="families: only these model types (comma list)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import torch
    import transformers
    import peft

    from modelmem.trace._engine import run_trace

    k, n = (int(x) for x in args.shard.split("/"))
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done.add(rec["key"])
    rows = load_rows()
    configs: dict[str, dict[str, Any]] = {}
    if args.set == "autocast":
        stale = autocast_rows(out)
        keys = {r["key"] for r in stale}
        configs = {r["key"]: r["config"] for r in stale}
        kept = [line for line in out.read_text().splitlines() if line.strip() and json.loads(line)["key"] not in keys]
        out.write_text("\n".join(kept) + "\n")
        done -= keys
        chosen = [(r["model"], r["fields"]) for r in stale]
    else:
        chosen = {"core": grid, "families": family_grid, "large": large_grid, "stale": stale_grid}[args.set]()
    if args.types:
        keep = set(args.types.split(","))
        fam = catalog_families()
        names = {fam[t][-1 if args.set == "large" else 0] for t in keep if t in fam}
        chosen = [(m, f) for m, f in chosen if m in names]
    jobs = [jb for i, jb in enumerate(chosen) if i % n == k]
    count = 0
    for model, fields in jobs:
        key = _key(model, fields)
        if key in done:
            continue
        # core rows: models.jsonl configs (as first traced); families/stale rows: the catalog's config.json, which
        # is what `modelmem trace` and `modelmem estimate` read
        if key in configs:
            cfg = configs[key]
        else:
            cfg = hf_config_from_row(rows[model]) if args.set == "core" else dict(spec_for(model).config)
        j = job(**dict(fields))
        t0 = time.perf_counter()
        try:
            r = run_trace(cfg, j, phase_detail=True)
        except Exception as e:  # noqa: BLE001 - record the failure as data
            rec = {"key": key, "model": model, "set": args.set, "model_type": str(cfg.get("model_type")), "fields": fields,
                   "job": j.to_dict(), "error": f"{type(e).__name__}: {e}"[:500]}
        else:
            rec = {
                "key": key, "model": model, "set": args.set, "model_type": str(cfg.get("model_type")),
                "fields": fields, "job": j.to_dict(), "config": cfg, "autocast_policy": "cuda",
                "components_at_peak": r.components, "allocated_peak": r.allocated_peak, "reserved_peak": r.reserved_peak,
                "peak_op": r.peak_op, "peak_phase": r.peak_phase, "params": r.params, "trainable_params": r.trainable_params,
                "notes": list(r.notes), "trace_seconds": round(r.seconds, 2),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
                **coefficients(r, cfg, j),
            }
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{time.perf_counter() - t0:6.1f}s {key} {rec.get('allocated_peak', rec.get('error'))}", flush=True)
        count += 1
        if args.limit and count >= args.limit:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
