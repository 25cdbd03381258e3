"""Trace vs analytic estimate, per component and total, on ≥ 24 jobs (issue 3, item 5).

    .venv/bin/python benchmarks/trace_agreement.py            # all jobs
    .venv/bin/python benchmarks/trace_agreement.py --quick    # the first 8

Model configs come from shared/validation/models.jsonl (HF field names plus modelmem's structural notes),
converted to Hugging Face config.json dicts by `hf_config_from_row`. The analytic side is `modelmem.estimate`
when it exists; until then the trace is printed alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS_JSONL = ROOT.parent / "shared" / "validation" / "models.jsonl"
GIB = 1 << 30

# config.json keys copied as they are from a models.jsonl row
_HF_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "rope_theta", "rope_scaling",
    "attention_bias", "mlp_bias", "sliding_window", "rms_norm_eps", "use_sliding_window", "query_pre_attn_scalar",
    "attn_logit_softcapping", "final_logit_softcapping", "layer_types",
)


def load_rows(path: Path = MODELS_JSONL) -> dict[str, dict[str, Any]]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["hf_id"]] = row
    return rows


def hf_config_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face config.json dict from a models.jsonl row (which adds notes to some HF fields)."""
    cfg = {k: row[k] for k in _HF_KEYS if row.get(k) is not None}
    cfg["model_type"] = str(row["model_type"]).split()[0]
    act = str(row.get("hidden_act") or "silu").split()[0]
    mt = cfg["model_type"]
    if mt == "gpt2":
        return {
            "model_type": "gpt2", "n_embd": row["hidden_size"], "n_layer": row["num_hidden_layers"],
            "n_head": row["num_attention_heads"], "n_inner": row["intermediate_size"],
            "n_positions": row["max_position_embeddings"], "vocab_size": row["vocab_size"], "activation_function": act,
            "tie_word_embeddings": True,
        }
    if mt == "gemma2":
        cfg["hidden_activation"] = act
    else:
        cfg["hidden_act"] = act
    if mt == "qwen2":
        cfg.pop("attention_bias", None)  # Qwen2 always has q/k/v biases
    moe = row.get("moe")
    if moe:
        cfg["num_local_experts"] = moe["num_local_experts"]
        cfg["num_experts_per_tok"] = moe["num_experts_per_tok"]
    if mt == "mistral" and row.get("sliding_window") is None:
        cfg["sliding_window"] = None
    return cfg


def spec_for(name: str, rows: dict[str, dict[str, Any]] | None = None) -> Any:
    """The catalog's ModelSpec for `name` (its config.json is what the trace builds), else one from models.jsonl."""
    from modelmem import resolve_model
    from modelmem.errors import ModelmemError

    try:
        return resolve_model(name)
    except ModelmemError:
        from modelmem.sources.config import spec_from_config

        return spec_from_config(hf_config_from_row((rows or load_rows())[name]), name)


def job(**fields: Any) -> Any:
    from modelmem.job import make_job

    return make_job(**fields)


def agreement_jobs() -> list[tuple[str, dict[str, Any]]]:
    L8, Q7, MX, G9, P3, G2, L70 = (
        "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "mistralai/Mixtral-8x7B-v0.1", "google/gemma-2-9b",
        "microsoft/Phi-3-mini-4k-instruct", "openai-community/gpt2", "meta-llama/Llama-3.1-70B",
    )
    jobs: list[tuple[str, dict[str, Any]]] = []
    for model in (L8, Q7, G9, P3, G2, MX):
        for b, s in ((1, 1024), (2, 2048)):
            jobs.append((model, dict(mode="train", precision="pure", batch_size=b, seq_len=s, attention="sdpa")))
        jobs.append((model, dict(mode="train", precision="pure", batch_size=1, seq_len=1024, attention="eager")))
        jobs.append((model, dict(mode="train", precision="pure", batch_size=2, seq_len=2048, grad_checkpointing="full")))
        jobs.append((model, dict(mode="lora", batch_size=1, seq_len=1024, lora_targets="all-linear")))
        jobs.append((model, dict(mode="qlora", batch_size=2, seq_len=2048, grad_checkpointing="full", lora_targets="all-linear")))
        jobs.append((model, dict(mode="inference", batch_size=1, seq_len=2048, new_tokens=16)))
        jobs.append((model, dict(mode="inference", batch_size=4, seq_len=1024, new_tokens=16, attention="eager")))
    for model in (L8, L70):
        for n in (2, 8):
            jobs.append((model, dict(mode="train", precision="pure", batch_size=1, seq_len=2048, num_gpus=n, strategy="fsdp")))
    return jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the first 8 jobs")
    args = ap.parse_args(argv)
    from modelmem.trace._engine import run_trace

    try:
        from modelmem import estimate  # type: ignore[attr-defined]
    except ImportError:
        estimate = None
    rows = load_rows()
    jobs = agreement_jobs()[: 8 if args.quick else None]
    totals: list[tuple[str, float]] = []
    worst = 0.0
    for model, fields in jobs:
        fields = {"num_gpus": 1, **fields}  # both sides on the same GPU count (the default, auto, lets estimate pick)
        spec = spec_for(model, rows)
        j = job(**fields)
        r = run_trace(spec.config, j)
        est = None
        if estimate is not None:
            try:
                est = estimate(spec, **fields)
            except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"  estimate failed: {e}", file=sys.stderr)
        label = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"{model}  {label}   trace {r.seconds:.1f}s, peak in {r.peak_op} ({r.peak_phase})")
        comps = dict(r.components)
        ecomps = dict(est.per_gpu.components) if est is not None else {}
        for name in sorted(set(comps) | set(ecomps)):
            t, e = comps.get(name, 0), ecomps.get(name)
            if t or e:
                print(f"    {name:18s} trace {t / GIB:8.3f} GiB" + (f"   estimate {e / GIB:8.3f} GiB" if e is not None else ""))
        line = f"    {'allocated_peak':18s} trace {r.allocated_peak / GIB:8.3f} GiB"
        if est is not None:
            ea = est.per_gpu.allocated_peak
            err = (ea - r.allocated_peak) / r.allocated_peak
            worst = max(worst, abs(err))
            totals.append((f"{model} {label}", err))
            line += f"   estimate {ea / GIB:8.3f} GiB   error {err:+.1%}"
        print(line)
        print(f"    {'reserved_peak':18s} trace {r.reserved_peak / GIB:8.3f} GiB (allocator replay)")
    if estimate is not None and totals:
        within = sum(abs(e) <= 0.03 for _, e in totals)
        print(f"{within}/{len(totals)} totals within 3 %; worst {worst:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
