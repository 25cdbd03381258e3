"""Activation offloading against fake-tensor traces of torchtune's own OffloadActivations.

benchmarks/results/torchtune_offload_traces.jsonl holds torchtune's `llama3_2` / `lora_llama3_2` at a tiny size run
through the single-device recipes' step with activation checkpointing and `get_act_offloading_ctx_manager`, at git
1814feb17 (the commit of the README table whose activation-offloading row is in measured.jsonl), traced by
benchmarks/results/make_torchtune_offload_traces.py, each job with offloading on and off. What the rows say, and
what the estimate must reproduce: OffloadActivations keeps the GPU copies of the last five packed ids, so how many
layer inputs are still on the GPU when the loss runs depends on what the final norm packs after them (RMSNorm in
full fine-tuning: none; RMSNorm with a frozen weight: one; LayerNorm: none, or three when its mean and rstd are too
small to offload; no final norm: every one, up to five); in backward one layer input is back on the GPU at the peak.
No tracing happens here.
"""

from __future__ import annotations

import dataclasses

import pytest

from modelmem import estimate
from modelmem.dtypes import DTYPE_BYTES
from modelmem.sources.config import spec_from_config

from _rows import result_rows

ROWS = result_rows("torchtune_offload_traces.jsonl")
OFFLOADED = [r for r in ROWS if r["fields"]["activation_offload"]]
BLOCK = 512


def _id(row: dict) -> str:
    f = row["fields"]
    return f"{f['mode']}-{f['dtype']}-{row['final_norm']}-{f['batch_size']}x{f['seq_len']}-V{row['config']['vocab_size']}"


def _spec(row: dict):
    spec = spec_from_config(row["config"], "tiny")
    if row["final_norm"] == "none":
        return dataclasses.replace(spec, final_norm=False)
    if row["final_norm"] == "layernorm":
        return dataclasses.replace(spec, norm="layernorm")
    return spec


def _layer_input(row: dict) -> int:
    """One checkpointed layer's input as the allocator holds it: tokens × hidden × dtype, in 512-byte blocks."""
    n = row["tokens"] * row["config"]["hidden_size"] * DTYPE_BYTES[row["fields"]["dtype"]]
    return -(-n // BLOCK) * BLOCK


def _activations(row: dict):
    from modelmem.job import make_job
    from modelmem.memory.activations import training_activations
    from modelmem.model import prepare
    from modelmem.parallel import shares

    m, j = prepare(_spec(row), make_job(num_gpus=1, gpu="h100", **row["fields"]))
    return training_activations(m, j, shares(m.spec, j, 1, m.counts), [])


def _pair(row: dict) -> dict:
    return next(r for r in ROWS if r is not row and r["config"] == row["config"] and r["final_norm"] == row["final_norm"]
                and {k: v for k, v in r["fields"].items() if k != "activation_offload"}
                == {k: v for k, v in row["fields"].items() if k != "activation_offload"})


def test_the_rows_cover_both_sides_of_every_rule():
    at_loss = {(_id(r), r["layer_inputs_live"]["loss"] // _layer_input(r)) for r in OFFLOADED}
    assert {n for _, n in at_loss} >= {0, 1, 3, 4}
    assert {r["peak_phase"] for r in OFFLOADED} >= {"loss", "backward"}
    assert {r["fields"]["mode"] for r in IN_LAYER_BACKWARD} == {"train", "lora"}
    # every traced step packed one tensor per checkpointed layer: its input
    assert {r["layer_inputs_packed"] for r in OFFLOADED} == {r["layers"] for r in OFFLOADED}


@pytest.mark.parametrize("row", OFFLOADED, ids=_id)
def test_layer_inputs_still_on_the_gpu_at_the_loss(row):
    from modelmem.memory.activations import offloaded_layer_inputs_at_loss
    from modelmem.job import make_job

    kept = offloaded_layer_inputs_at_loss(_spec(row), make_job(**row["fields"]), row["layers"])
    assert kept * _layer_input(row) == row["layer_inputs_live"]["loss"]
    # the estimate's activations beside the loss are those inputs and nothing else of the layers
    a = _activations(row)
    assert a.saved == kept * _layer_input(row)


# a 256-entry vocabulary: the step peaks inside a layer's backward (with a large one, at the loss's backward)
IN_LAYER_BACKWARD = [r for r in OFFLOADED if r["peak_phase"] == "backward" and r["config"]["vocab_size"] <= 256]


@pytest.mark.parametrize("row", IN_LAYER_BACKWARD, ids=_id)
def test_one_layer_input_back_on_the_gpu_at_the_backward_peak(row):
    assert row["layer_inputs_live"]["backward"] == _layer_input(row)
    assert _activations(row).saved_in_backward == _layer_input(row)


@pytest.mark.parametrize("row", [r for r in OFFLOADED if r["peak_phase"] == "loss" and r["final_norm"] == "rmsnorm"],
                         ids=_id)
def test_what_offloading_saves_at_the_loss(row):
    """The estimate's peak with offloading on and off differs by what the traces' peaks differ by (the layer inputs
    released from the stash), and with offloading on it is the traced peak within the RoPE cache and the labels."""
    off = _pair(row)
    assert off["peak_phase"] == "loss"

    def peak(r: dict) -> int:
        return estimate(_spec(r), num_gpus=1, gpu="h100", **r["fields"]).per_gpu.allocated_peak

    assert peak(off) - peak(row) == off["allocated_peak"] - row["allocated_peak"]
    assert abs(peak(row) / row["allocated_peak"] - 1) < 0.01


@pytest.mark.parametrize("row", IN_LAYER_BACKWARD, ids=_id)
def test_the_backward_peak_with_and_without_offloading(row):
    # the first layer backward reaches (LoRA) or the last (full fine-tuning): the layer's rebuilt activations, its
    # MLP's gradients and the layer inputs still on the GPU (one with offloading)
    for r in (row, _pair(row)):
        pg = estimate(_spec(r), num_gpus=1, gpu="h100", **r["fields"]).per_gpu
        assert abs(pg.allocated_peak / r["allocated_peak"] - 1) < 0.01


@pytest.mark.parametrize("row", [r for r in ROWS if r["final_norm"] == "rmsnorm"], ids=_id)
def test_weights_are_the_parameters_and_one_rope_table(row):
    # llama3_2's builder makes one RotaryPositionalEmbeddings for every layer: its fp32 cos/sin table
    # (max_seq_len × head_dim/2 × 2) and theta sit beside the bf16 parameters
    pg = estimate(_spec(row), num_gpus=1, gpu="h100", **row["fields"]).per_gpu
    assert pg.components["weights"] == row["phases"]["loss"]["by"]["weights"]
