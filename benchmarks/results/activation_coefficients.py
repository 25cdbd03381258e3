"""Activation and logits coefficients by finite differences of traces of small Llama-style models.

    .venv/bin/python benchmarks/results/activation_coefficients.py > benchmarks/results/activation_coefficients.txt

Activations = bytes alive at the end of forward that were allocated in forward (saved for backward), as traced.
Each job kind is traced at a base shape (L=4 layers, h=1024, i=3072, 16 heads of 64, 4 KV heads, V=1000, one
sequence of s=1024) and with one dimension changed at a time; the differences give bytes per token per layer for
each unit of h (hidden), i (intermediate), kv (= kv_heads × head_dim) and per attention head, and what lies outside
the decoder layers (embedding output, final norm, per token). Logits: bytes per token per vocab entry at the end of
forward and at the start of backward.
"""

from __future__ import annotations

import logging
import warnings

BASE = dict(L=4, h=1024, i=3072, heads=16, hd=64, kv=4, V=1000)
T = 1024

KINDS = [
    ("train pure bf16, sdpa", dict(mode="train", precision="pure")),
    ("train pure bf16, eager", dict(mode="train", precision="pure", attention="eager")),
    ("train pure bf16, sdpa, full ckpt", dict(mode="train", precision="pure", grad_checkpointing="full")),
    ("train mixed (fp32 + autocast bf16), sdpa", dict(mode="train", precision="mixed")),
    ("train mixed, sdpa, full ckpt", dict(mode="train", precision="mixed", grad_checkpointing="full")),
    ("lora r8 q_proj,v_proj, mixed, sdpa", dict(mode="lora", lora_targets="q_proj,v_proj")),
    ("lora r8 all-linear, mixed, sdpa", dict(mode="lora", lora_targets="all-linear")),
    ("lora r8 all-linear, pure bf16, sdpa", dict(mode="lora", precision="pure", lora_targets="all-linear")),
    ("lora r8 all-linear, mixed, sdpa, full ckpt", dict(mode="lora", lora_targets="all-linear", grad_checkpointing="full")),
    ("qlora nf4 r8 all-linear, mixed, sdpa", dict(mode="qlora", lora_targets="all-linear")),
    ("qlora nf4 r8 all-linear, mixed, sdpa, full ckpt", dict(mode="qlora", lora_targets="all-linear", grad_checkpointing="full")),
]


def trace(kind: dict, **change: int) -> tuple[float, float, float]:
    from modelmem.job import make_job
    from modelmem.trace._engine import run_trace

    d = {**BASE, **change}
    cfg = dict(model_type="llama", hidden_size=d["h"], intermediate_size=d["i"], num_hidden_layers=d["L"],
               num_attention_heads=d["heads"], num_key_value_heads=d["kv"], head_dim=d["hd"], vocab_size=d["V"])
    r = run_trace(cfg, make_job(num_gpus=1, batch_size=1, seq_len=T, **kind), phase_detail=True)
    pp = r.phase_peaks
    return (pp["logits"]["components"]["activations"] / T, pp["logits"]["components"]["logits"] / T,
            pp["loss_backward"]["components"]["logits"] / T)


def main() -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print(__doc__.split("\n\n")[1])
    print(f"{'job kind':48s} {'per h':>6s} {'per i':>6s} {'per kv':>6s} {'per head':>8s} {'rest':>6s} {'outside/h':>9s} {'logitsF/V':>9s} {'logitsB/V':>9s}")
    for name, kind in KINDS:
        a0, lf0, lb0 = trace(kind)
        a_l8 = trace(kind, L=8)[0]
        per_layer = (a_l8 - a0) / 4
        outside = a0 - BASE["L"] * per_layer
        n = 8  # layers in the differenced traces
        a_i = (trace(kind, L=n, i=4096)[0] - a_l8) / n / 1024
        a_kv = (trace(kind, L=n, kv=8)[0] - a_l8) / n / 256
        a_heads = (trace(kind, L=n, heads=32, hd=32, kv=8)[0] - a_l8) / n / 16  # same h and kv width, twice the heads
        # doubling h (and the heads, head_dim fixed) also changes what lies outside the layers (∝ h)
        a_h = (trace(kind, L=n, h=2048, heads=32)[0] - a_l8 - outside) / n
        a_h = (a_h - 16 * a_heads) / 1024
        rest = per_layer - a_h * BASE["h"] - a_i * BASE["i"] - a_kv * BASE["kv"] * BASE["hd"] - a_heads * BASE["heads"]
        lf2, lb2 = trace(kind, V=2000)[1:]
        print(f"{name:48s} {a_h:6.2f} {a_i:6.2f} {a_kv:6.2f} {a_heads:8.1f} {rest:6.0f} {outside / BASE['h']:9.2f} "
              f"{(lf2 - lf0) / 1000:9.2f} {(lb2 - lb0) / 1000:9.2f}", flush=True)
    print(f"(per head at s = {T}; for eager it grows with s: divide by s for bytes per head per key)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
