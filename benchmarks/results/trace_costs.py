"""What a trace costs: wall seconds and peak RSS of one fresh process per job (issue 3, item 8).

    .venv/bin/python benchmarks/results/trace_costs.py
Imports (torch, transformers, peft: ~5-10 s cold) are reported apart from the trace itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

JOBS = [
    ("meta-llama/Llama-3.1-8B", dict(mode="train", precision="pure", batch_size=1, seq_len=2048, num_gpus=1)),
    ("meta-llama/Llama-3.1-70B", dict(mode="train", precision="pure", batch_size=1, seq_len=2048, num_gpus=1)),
    ("meta-llama/Llama-3.1-8B", dict(mode="lora", batch_size=1, seq_len=2048, num_gpus=1, lora_targets="all-linear")),
    ("meta-llama/Llama-3.1-8B", dict(mode="inference", batch_size=1, seq_len=2048, new_tokens=16, num_gpus=1)),
    ("meta-llama/Llama-3.1-8B", dict(mode="train", precision="pure", batch_size=1, seq_len=2048, num_gpus=8, strategy="fsdp")),
    ("meta-llama/Llama-3.1-70B", dict(mode="train", precision="pure", batch_size=1, seq_len=2048, num_gpus=8, strategy="fsdp")),
]

CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import torch, transformers, peft
from modelmem import resolve_model
from modelmem.job import make_job
from modelmem.trace._engine import run_trace
t1 = time.perf_counter()
model, fields = json.loads(sys.argv[1])
spec = resolve_model(model)
r = run_trace(spec.config, make_job(**fields))
print(json.dumps({"model": model, "job": fields, "import_s": round(t1 - t0, 2), "trace_s": round(r.seconds, 2),
                  "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                  "allocated_peak": r.allocated_peak, "events": r.events}))
"""


def main() -> int:
    for model, fields in JOBS:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([model, fields])], capture_output=True, text=True)
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else json.dumps({"model": model, "error": out.stderr[-300:]})
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
