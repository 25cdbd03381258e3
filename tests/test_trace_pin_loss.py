"""The loss's buffers (memory/logits.py) against fake-tensor traces of the real transformers code.

benchmarks/results/loss_traces.jsonl holds tiny models (two layers of width 64, a 32,000-entry vocabulary) traced
by benchmarks/results/make_loss_traces.py: at that shape the loss's buffers are nearly all of the step, so they
are read per token per vocabulary entry with no other term to hide behind. Its litgpt and torchtune rows trace
those libraries' own chunked losses (LitGPT 0.5.13 chunked_cross_entropy over 128-token LM-head chunks;
torchtune 0.6.1 CEWithChunkedOutputLoss over 8 output chunks, eager and compiled, with the output layer frozen as
in LoRA or trained as in full fine-tuning, untied or tied to the embedding). No tracing happens here.
"""

from __future__ import annotations


import pytest

from modelmem.job import Job
from modelmem.memory.logits import _chunked_loss_bytes, training_logits_bytes
from modelmem.sources.config import spec_from_config

from _rows import result_rows

ROWS = result_rows("loss_traces.jsonl")
# what the trace also files under "logits" (the labels and the scalar loss): under 0.001 B per token per entry
SLACK = 0.001


def _id(row: dict) -> str:
    f = row["fields"]
    compiled = "-compiled" if f.get("compile") else "-eager" if f.get("loss") == "chunked" else ""
    head = f"-{row['head']}-h{row['config']['hidden_size']}" if "head" in row else ""
    return f"{row['model_type']}-{f['dtype']}-{f['batch_size']}x{f['seq_len']}{compiled}{head}"


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_training_loss_buffers_match_the_trace(row):
    spec = spec_from_config(row["config"], "tiny")
    held, extra = training_logits_bytes(spec, Job(num_gpus=1, **row["fields"]), row["tokens"])
    unit = row["tokens"] * row["vocab_size"]
    assert held / unit == pytest.approx(row["logits_end_of_forward"] / unit, abs=SLACK)
    # the plan's start of backward carries the larger of the two (eager torchtune's loss forward is the larger)
    most = max(row["logits_end_of_forward"], row["logits_loss_backward"])
    assert (held + extra) / unit == pytest.approx(most / unit, abs=SLACK)


def test_the_traces_cover_fp32_bf16_and_soft_capping():
    kinds = {(r["model_type"], r["fields"]["dtype"]) for r in ROWS}
    assert {("llama", "fp32"), ("llama", "bf16"), ("gemma2", "bf16")} <= kinds


@pytest.mark.parametrize("row", [r for r in ROWS if r["fields"].get("loss") == "chunked"], ids=_id)
def test_chunked_loss_backward_matches_the_trace_even_below_the_forward(row):
    # eager torchtune's loss backward (5 B) sits under its forward (6.5 B): read it on its own
    spec = spec_from_config(row["config"], "tiny")
    _, backward = _chunked_loss_bytes(spec, Job(num_gpus=1, **row["fields"]), row["tokens"])
    unit = row["tokens"] * row["vocab_size"]
    assert backward / unit == pytest.approx(row["logits_loss_backward"] / unit, abs=SLACK)


def test_the_traces_cover_both_chunked_losses_and_awkward_lengths():
    chunked = [r["fields"] for r in ROWS if r["fields"].get("loss") == "chunked"]
    litgpt = [f for f in chunked if f["runtime"] == "litgpt"]
    torchtune = [f for f in chunked if f["runtime"] == "torchtune"]
    # a multiple of LitGPT's 128-token chunk, one that is not, one shorter than a chunk, and two sequences
    assert {f["seq_len"] % 128 == 0 for f in litgpt} == {True, False}
    assert min(f["seq_len"] for f in litgpt) < 128 and max(f["batch_size"] for f in litgpt) > 1
    # torchtune compiled and eager, with a length torch.chunk cannot split into 8 equal chunks
    assert {f["compile"] for f in torchtune} == {True, False}
    assert any(f["seq_len"] % 8 for f in torchtune)


def test_the_traces_train_the_output_layer_tied_and_untied_at_two_widths():
    # the weight gradient's V·h·c bytes are h/T per token per entry: two widths at one length separate them from T·V
    heads = {(r["head"], r["config"]["hidden_size"], r["fields"]["compile"]) for r in ROWS if "head" in r}
    assert {(k, h, comp) for k in ("untied", "tied") for h in (64, 256) for comp in (False, True)} <= heads
    assert all(r["fields"]["mode"] == "train" and r["head_grad_bytes"] == r["vocab_size"] * r["config"]["hidden_size"] * 2
               for r in ROWS if "head" in r)
