"""The loss's buffers (memory/logits.py) against fake-tensor traces of the real transformers code.

benchmarks/results/loss_traces.jsonl holds tiny models (two layers of width 64, a 32,000-entry vocabulary) traced
by benchmarks/results/make_loss_traces.py: at that shape the loss's buffers are nearly all of the step, so they
are read per token per vocabulary entry with no other term to hide behind. No tracing happens here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelmem.job import Job
from modelmem.memory.logits import training_logits_bytes
from modelmem.sources.config import spec_from_config

ROWS = [json.loads(line) for line in
        (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "loss_traces.jsonl").read_text().splitlines()
        if line.strip()]
# what the trace also files under "logits" (the labels and the scalar loss): under 0.001 B per token per entry
SLACK = 0.001


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['model_type']}-{r['fields']['dtype']}-{r['tokens']}")
def test_training_loss_buffers_match_the_trace(row):
    spec = spec_from_config(row["config"], "tiny")
    held, extra = training_logits_bytes(spec, Job(num_gpus=1, **row["fields"]), row["tokens"])
    unit = row["tokens"] * row["vocab_size"]
    assert held / unit == pytest.approx(row["logits_end_of_forward"] / unit, abs=SLACK)
    assert (held + extra) / unit == pytest.approx(row["logits_loss_backward"] / unit, abs=SLACK)


def test_the_traces_cover_fp32_bf16_and_soft_capping():
    kinds = {(r["model_type"], r["fields"]["dtype"]) for r in ROWS}
    assert {("llama", "fp32"), ("llama", "bf16"), ("gemma2", "bf16")} <= kinds
