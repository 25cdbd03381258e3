"""Print the coefficients trace_grid.jsonl implies, one row per job (see README.md for the definitions).

    .venv/bin/python benchmarks/results/summarize_trace_grid.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 1 << 30


def _dims(cfg: dict) -> tuple[int, int, int, int, int]:
    h = cfg.get("hidden_size") or cfg.get("n_embd")
    i = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * h
    a = cfg.get("num_attention_heads") or cfg.get("n_head")
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    return h, i, a, layers, cfg["vocab_size"]


def main() -> int:
    rows = [json.loads(line) for line in (HERE / "trace_grid.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["model"], r["job"]["mode"], r["job"]["attention"], r["job"]["grad_checkpointing"], r["job"]["precision"], r["job"]["batch_size"] * r["job"]["seq_len"]))
    print(f"{'model':22s} {'mode':9s} {'prec':5s} {'attn':5s} {'ckpt':4s} {'b x s':>8s} {'peak GiB':>8s} {'reserved':>8s} {'act/tok/L':>9s} {'/h':>6s} {'lgF/V':>5s} {'lgB/V':>5s} {'nonKV/tok':>9s}  peak op (phase)")
    for r in rows:
        j = r["job"]
        if "error" in r:
            print(f"{r['model'][:22]:22s} {j['mode']:9s} ERROR {r['error'][:80]}")
            continue
        h, i, a, layers, v = _dims(r["config"])
        act = r.get("activation_bytes_per_token_per_layer", 0)
        print(
            f"{r['model'].split('/')[-1][:22]:22s} {j['mode']:9s} {j['precision'] if j['mode'] != 'inference' else '-':5s} "
            f"{j['attention']:5s} {j['grad_checkpointing'] if j['mode'] != 'inference' else '-':4s} "
            f"{str(j['batch_size']) + 'x' + str(j['seq_len']):>8s} {r['allocated_peak'] / GIB:8.2f} {r['reserved_peak'] / GIB:8.2f} "
            f"{act:9.0f} {act / h:6.1f} {r.get('logits_bytes_per_token_per_vocab_forward', 0):5.2f} "
            f"{r.get('logits_bytes_per_token_per_vocab_backward', 0):5.2f} {r.get('prefill_non_kv_temporary_bytes_per_token', 0):9.0f}  "
            f"{r['peak_op']} ({r['peak_phase']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
