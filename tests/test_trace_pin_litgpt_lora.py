"""LitGPT LoRA under mixed precision against fake-tensor traces of LitGPT's own code.

benchmarks/results/litgpt_lora_traces.jsonl holds litgpt.lora.GPT 0.5.13 at a tiny Llama-style size (width 256,
fp32 weights, base frozen by mark_only_lora_as_trainable, lora_dropout 0.05), one forward under
torch.autocast(bf16) with CUDA autocast's fp32 policy, traced by benchmarks/results/make_litgpt_lora_traces.py.
LoRAQKVLinear.forward runs `F.linear(self.lora_dropout(x), self.lora_A)`: dropout runs on the fp32 norm output and
autocast's cast of its result is the adapter's one bf16 input copy — one per fused qkv adapter, whether it adapts
q alone or q and v; the frozen base linear's input is not saved. So LitGPT has no PEFT-style per-adapter input cast
(RuntimeProfile.lora_casts_adapter_input False), and that copy is the dropout output that
lora_dropout_bytes_per_token counts. No tracing happens here.
"""

from __future__ import annotations


import pytest

from modelmem import estimate
from modelmem.runtimes import lookup_profile
from modelmem.sources.config import spec_from_config

from _rows import result_rows

ROWS = result_rows("litgpt_lora_traces.jsonl")


def _targets(row: dict) -> str:
    return "q_proj,v_proj" if row["lora_value"] else "q_proj"


def _activations(row: dict, targets: str) -> int:
    return estimate(spec_from_config(row["config"], "tiny"), num_gpus=1, gpu="h100", runtime="litgpt",
                    runtime_version="0.5", mode="lora", precision="mixed", lora_targets=targets,
                    lora_rank=row["lora_r"], batch_size=row["batch"], seq_len=row["seq"]).per_gpu.components["activations"]


def _adapter_input_copies(row: dict) -> list:
    """The bf16 (tokens, hidden) casts autograd saved: the adapters' own input copies."""
    h = row["config"]["hidden_size"]
    return [t for t in row["saved_tensors"] if t[0] == "_to_copy" and t[2] == "bfloat16" and t[1] == [row["tokens"], h]]


def _pairs():
    by = {(r["layers"], r["batch"], r["seq"], r["lora_value"]): r for r in ROWS}
    return [(by[k], by[k[:3] + (False,)]) for k in by if k[3]]


def test_the_traces_cover_two_depths_two_sizes_and_both_target_sets():
    assert {(r["layers"], r["tokens"], r["lora_value"]) for r in ROWS} == {
        (L, t, v) for L in (2, 3) for t in (64, 256) for v in (True, False)}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"L{r['layers']}-{r['tokens']}-{_targets(r)}")
def test_one_adapter_input_copy_per_layer(row):
    # the fused qkv adapter keeps one bf16 copy of its (dropped-out) input per layer, q alone or q and v
    assert len(_adapter_input_copies(row)) == row["layers"]


@pytest.mark.parametrize("pair", _pairs(), ids=lambda p: f"L{p[0]['layers']}-{p[0]['tokens']}")
def test_adding_v_adds_no_adapter_input_bytes(pair):
    qv, q = pair
    traced = sum(t[3] for t in _adapter_input_copies(qv)) - sum(t[3] for t in _adapter_input_copies(q))
    assert traced == 0
    # what v adds is lora_A's output for it: `after_A` (r rows per enabled part, bf16), which the grouped lora_B
    # saves (traced: mm (batch, r·parts, seq)); no input copy (lora_casts_adapter_input True would add one c·h)
    rank_rows = sum(t[3] for t in _rank_outputs(qv)) - sum(t[3] for t in _rank_outputs(q))
    assert rank_rows == qv["layers"] * qv["lora_r"] * qv["tokens"] * 2
    assert _activations(qv, _targets(qv)) - _activations(qv, _targets(q)) == traced + rank_rows


def _rank_outputs(row: dict) -> list:
    """lora_A's outputs autograd saved: (batch, r × enabled parts, seq) from mm."""
    r = row["lora_r"]
    return [t for t in row["saved_tensors"] if t[0] == "mm" and t[1] in ([row["batch"], r, row["seq"]],
                                                                         [row["batch"], 2 * r, row["seq"]])]


def test_litgpt_records_do_not_cast_adapter_inputs():
    assert not lookup_profile("litgpt", "0.4").lora_casts_adapter_input
    assert not lookup_profile("litgpt", "0.5").lora_casts_adapter_input
