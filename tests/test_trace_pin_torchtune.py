"""The torchtune LoRA step against fake-tensor traces of torchtune's own code.

benchmarks/results/torchtune_traces.jsonl holds torchtune's `lora_llama2` at a tiny size (width 256, a 8,192-entry
vocabulary) run through the body of recipes/lora_finetune_single_device.py's train loop at git 0217d44c (the commit
of the README memory table), with activation checkpointing on every decoder layer, traced by
benchmarks/results/make_torchtune_traces.py. The peak is at the start of backward (`_log_softmax_backward_data`),
and what is live there is read by where it was allocated. No tracing happens here.
"""

from __future__ import annotations


import pytest

from modelmem import estimate
from modelmem.sources.config import spec_from_config

from _rows import result_rows

ROWS = result_rows("torchtune_traces.jsonl")
BLOCK = 512


def _id(row: dict) -> str:
    f = row["fields"]
    return f"L{row['config']['num_hidden_layers']}-{f['batch_size']}x{f['seq_len']}"


def _estimate(row: dict):
    return estimate(spec_from_config(row["config"], "tiny"), num_gpus=1, gpu="h100", **row["fields"]).per_gpu


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_saved_activations_match_the_trace(row):
    # each checkpointed layer's bf16 input, plus the final RMSNorm's fp32 input and rstd (outside every block)
    assert _estimate(row).components["activations"] == row["saved_forward"]


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_loss_buffers_match_the_trace_up_to_the_shift(row):
    # the recipe shifts the logits (`logits[..., :-1, :]`); the estimate sizes the loss for every position
    f, vocab = row["fields"], row["config"]["vocab_size"]
    held = _estimate(row).components["logits"]
    assert 0 <= held - row["loss_buffers"] <= 16 * f["batch_size"] * vocab + BLOCK


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_weights_differ_by_the_per_layer_rope_caches_only(row):
    # torchtune 0.1 builds TransformerDecoder with _get_clones (deepcopy of one layer): each layer holds its own
    # RotaryPositionalEmbeddings cache (max_seq_len × head_dim/2 × [cos, sin], fp32) and theta. torchtune 0.6
    # shares one rope module, which the estimate (profile torchtune 0.6) counts once beside the parameters.
    cfg = row["config"]
    half = cfg["hidden_size"] // cfg["num_attention_heads"] // 2
    per_layer = cfg["max_position_embeddings"] * half * 2 * 4 + -(-half * 4 // BLOCK) * BLOCK
    est = _estimate(row).components["weights"]
    assert row["weights"] - est == (cfg["num_hidden_layers"] - 1) * per_layer


def test_the_traces_peak_at_the_loss_backward():
    assert {r["peak_op"] for r in ROWS} == {"_log_softmax_backward_data"}
    assert len({(r["config"]["num_hidden_layers"], r["tokens"]) for r in ROWS}) == len(ROWS) >= 2
