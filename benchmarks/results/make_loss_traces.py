"""Trace the output layer and loss of tiny models on fake tensors; one JSON line per job → loss_traces.jsonl.

    .venv/bin/python benchmarks/results/make_loss_traces.py      # ≈ 30 s; rewrites the file

Tiny layers and a large vocabulary, so the loss's buffers are most of what the step holds: the rows pin
memory/logits.py (tests/test_loss_traces.py) per token per vocabulary entry, whatever the model's size.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "loss_traces.jsonl"
TORCH_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}
VOCAB = 32000


def tiny(model_type: str, dtype: str) -> dict:
    cfg = {"model_type": model_type, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "vocab_size": VOCAB,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
           "torch_dtype": TORCH_DTYPE[dtype]}
    if model_type == "llama":
        cfg["architectures"] = ["LlamaForCausalLM"]
    if model_type == "gemma2":  # final-logit soft-capping (tanh) before the loss
        cfg.update(architectures=["Gemma2ForCausalLM"], final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=16, sliding_window=4096, hidden_activation="gelu_pytorch_tanh")
    return cfg


JOBS = [  # (model_type, job fields)
    ("llama", dict(mode="train", dtype="fp32", precision="pure", optimizer="sgd", batch_size=1, seq_len=256)),
    ("llama", dict(mode="train", dtype="bf16", precision="pure", optimizer="sgd", batch_size=1, seq_len=256)),
    ("llama", dict(mode="train", dtype="bf16", precision="pure", optimizer="sgd", batch_size=2, seq_len=128)),
    ("gemma2", dict(mode="train", dtype="bf16", precision="pure", optimizer="sgd", batch_size=1, seq_len=256, attention="eager")),
]


def main() -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    import transformers

    from modelmem.job import Job
    from modelmem.trace._engine import run_trace

    lines = []
    for mt, fields in JOBS:
        cfg = tiny(mt, fields["dtype"])
        r = run_trace(cfg, Job(num_gpus=1, **fields), phase_detail=True)
        pp = r.phase_peaks
        rec = {"model_type": mt, "config": cfg, "fields": fields,
               "tokens": fields["batch_size"] * fields["seq_len"], "vocab_size": VOCAB,
               # the loss's buffers at the end of the forward (during nll_loss) and at the loss-backward peak
               "logits_end_of_forward": pp["logits"]["category_max"].get("logits", 0),
               "logits_loss_backward": pp["loss_backward"]["category_max"].get("logits", 0),
               "ops": {k: pp[k]["op"] for k in ("logits", "loss_backward")},
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
        lines.append(json.dumps(rec))
        print(mt, fields["dtype"], rec["logits_end_of_forward"] / (rec["tokens"] * VOCAB),
              rec["logits_loss_backward"] / (rec["tokens"] * VOCAB), file=sys.stderr)
    OUT.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
