"""Trace vs analytic estimate on every row of the committed trace grid (issue 8, item 5), per family.

    .venv/bin/python benchmarks/trace_agreement.py              # every grid row: error of the allocated peak
    .venv/bin/python benchmarks/trace_agreement.py --families   # + the per-family table (README, docs/ACCURACY.md)
    .venv/bin/python benchmarks/trace_agreement.py --live       # the first 52 jobs traced again, by component

The grid (benchmarks/results/trace_grid.jsonl, made by results/make_trace_grid.py) stores the config each job
ran; the estimate is computed from the same config (`spec_from_config`), so both sides see one model. Rows that
failed to trace are listed with their reason.
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


GRID = ROOT / "benchmarks" / "results" / "trace_grid.jsonl"
TOLERANCE = 0.03  # issue 8: the estimate within 3 % of the trace on every row


def grid_rows(path: Path = GRID) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fields_of(row: dict[str, Any]) -> dict[str, Any]:
    """The job fields a row was run with (older failed rows keep them only in their key)."""
    return row.get("fields") or json.loads(row["key"].split(" ", 1)[1])


def family_of(row: dict[str, Any]) -> str:
    """The config's model_type (the text model's for multimodal checkpoints), as the grid recorded it."""
    if row.get("model_type"):
        return str(row["model_type"])
    from modelmem.catalog.models import lookup  # older failed rows: the catalog's model_type of the model

    return str(row.get("config", {}).get("model_type") or lookup(row["model"]).model_type)


def estimate_row(row: dict[str, Any]) -> Any:
    """`modelmem.estimate` for a grid row: the config the trace ran, the job fields it was given."""
    from modelmem import estimate
    from modelmem.sources.config import spec_from_config

    config = row["config"]
    if isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict):
        # the trace builds a multimodal checkpoint's language model only (trace/_workload.text_model_config):
        # estimate that model, not the vision tower too
        config = {**{k: v for k, v in config.items() if k in ("torch_dtype", "dtype")}, **config["text_config"]}
    spec = spec_from_config(config, row["model"])
    return estimate(spec, **fields_of(row))


def agreement(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float | None, str]]:
    """(row, relative error of the estimate's allocated peak vs the trace's, note) for every row."""
    out: list[tuple[dict[str, Any], float | None, str]] = []
    for row in rows:
        if "error" in row:
            out.append((row, None, "not traced: " + row["error"]))
            continue
        try:
            est = estimate_row(row)
        except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
            out.append((row, None, f"estimate failed: {type(e).__name__}: {e}"))
            continue
        out.append((row, (est.per_gpu.allocated_peak - row["allocated_peak"]) / row["allocated_peak"], ""))
    return out


def family_table(results: list[tuple[dict[str, Any], float | None, str]]) -> str:
    """A markdown table: per model_type, rows, rows within 3 %, median and worst error."""
    by: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    for row, err, _ in results:
        fam = family_of(row)
        if err is None:
            failed[fam] = failed.get(fam, 0) + 1
        else:
            by.setdefault(fam, []).append(err)
    lines = ["| model_type | rows | within 3 % | median error | worst error | not traced |", "|---|---|---|---|---|---|"]
    for fam in sorted(set(by) | set(failed)):
        errs = sorted(by.get(fam, []), key=abs)
        if errs:
            med = sorted(errs)[len(errs) // 2]
            worst = max(errs, key=abs)
            within = sum(abs(e) <= TOLERANCE for e in errs)
            lines.append(f"| {fam} | {len(errs)} | {within} | {med:+.1%} | {worst:+.1%} | {failed.get(fam, 0)} |")
        else:
            lines.append(f"| {fam} | 0 | 0 | – | – | {failed.get(fam, 0)} |")
    all_errs = [e for v in by.values() for e in v]
    lines.append(f"| **all** | {len(all_errs)} | {sum(abs(e) <= TOLERANCE for e in all_errs)} | "
                 f"{sorted(all_errs)[len(all_errs) // 2]:+.1%} | {max(all_errs, key=abs):+.1%} | {sum(failed.values())} |")
    return "\n".join(lines)


SECTION = "## Trace agreement, per family"
README_START, README_END = "<!-- trace-agreement:start -->", "<!-- trace-agreement:end -->"


def family_section(results: list[tuple[dict[str, Any], float | None, str]]) -> str:
    """The per-family table with the words around it (README and docs/ACCURACY.md)."""
    errs = [e for _, e, _ in results if e is not None]
    within = sum(abs(e) <= TOLERANCE for e in errs)
    outside = [(r, e) for r, e, _ in results if e is not None and abs(e) > TOLERANCE]
    failed = [(r, n) for r, e, n in results if e is None]
    lines = [
        f"`python benchmarks/trace_agreement.py --families`: `modelmem estimate` against `modelmem trace` (the real "
        f"transformers/PEFT code on fake tensors; `benchmarks/results/trace_grid.jsonl`) on every grid row, by "
        f"config `model_type`. {within} of {len(errs)} rows within 3 % of the traced allocated peak. "
        f"`tests/test_trace_grid.py` pins every row (rows still outside 3 % are listed, with the mechanism the "
        f"estimate lacks, in `tests/trace_grid_known_outside.json`).",
        "",
        family_table(results),
    ]
    if outside:
        lines += ["", f"Rows outside 3 % ({len(outside)}): " + "; ".join(
            sorted({f"{family_of(r)} {fields_of(r)['mode']}" for r, _ in outside})) + "."]
    if failed:
        lines += ["", "Rows not traced: " + "; ".join(sorted({f"{family_of(r)}: {n[:120]}" for r, n in failed})) + "."]
        why = sorted({text for _, n in failed for key, text in NOT_TRACED_WHY.items() if key in n})
        lines += ["", *why] if why else []
    lines += ["", COVERAGE]
    return "\n".join(lines)


# Why a row could not be traced, by a piece of its error (the rows are kept, with the error, in the grid).
NOT_TRACED_WHY = {
    "Expected inputs of BF16 type": (
        "The Mixtral rows not traced are full training in mixed precision: fp32 master weights reach transformers "
        "5.24's grouped_mm experts in fp32, which autocast does not cast and the kernel refuses, on the fake-CUDA "
        "route as on the CPU one, so the job fails as written on a GPU too (the estimate says so in a note)."),
}
COVERAGE = (
    "The grid covers every catalog `model_type` with full training with and without checkpointing, LoRA q,v without "
    "checkpointing, LoRA all-linear with checkpointing, inference prefill + decode, QLoRA on eight families, eager "
    "attention where a family has no SDPA path, and the largest catalog model of each family "
    "(`benchmarks/results/make_trace_grid.py --set families|large`; `tests/test_trace_grid.py` checks the shapes "
    "are there). The CPU route applies CUDA autocast's fp32 op list (layer_norm, softmax, pow…), byte-equal to the "
    "fake-CUDA route (`tests/test_trace_fake_cuda.py`); before 2 Dec 2026 it did not, and mixed-precision rows of "
    "LayerNorm families were traced 4–30 % low (re-traced: `make_trace_grid.py --set autocast`).")


def write_docs(results: list[tuple[dict[str, Any], float | None, str]]) -> None:
    """Replace the trace-agreement section of docs/ACCURACY.md (everything from its heading on) and of README.md
    (between its markers)."""
    body = family_section(results)
    acc = ROOT / "docs" / "ACCURACY.md"
    text = acc.read_text()
    head = text.split("\n" + SECTION)[0].rstrip("\n")
    acc.write_text(f"{head}\n\n{SECTION}\n\n{body}\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START in text:
        pre, rest = text.split(README_START, 1)
        post = rest.split(README_END, 1)[1]
        readme.write_text(f"{pre}{README_START}\n{body}\n{README_END}{post}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live", action="store_true", help="trace the 52 agreement jobs again, by component")
    ap.add_argument("--quick", action="store_true", help="--live: only the first 8 jobs")
    ap.add_argument("--families", action="store_true", help="also print the per-family table")
    ap.add_argument("--write-docs", action="store_true", help="write the per-family table into README.md and docs/ACCURACY.md")
    args = ap.parse_args(argv)
    if not args.live:
        results = agreement(grid_rows())
        for row, err, note in results:
            label = " ".join(f"{k}={v}" for k, v in fields_of(row).items() if k != "num_gpus")
            head = f"{family_of(row):14s} {row['model']:44s} {label}"
            if err is None:
                print(f"{head}   {note[:160]}")
            else:
                print(f"{head}   trace {row['allocated_peak'] / GIB:8.2f} GiB   error {err:+6.1%}" + ("" if abs(err) <= TOLERANCE else "   OUTSIDE 3 %"))
        errs = [e for _, e, _ in results if e is not None]
        print(f"{sum(abs(e) <= TOLERANCE for e in errs)}/{len(errs)} rows within 3 %; {len(results) - len(errs)} not traced or not estimated")
        if args.families:
            print()
            print(family_table(results))
        if args.write_docs:
            write_docs(results)
        return 0
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
