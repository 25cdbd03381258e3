"""One decoder layer's saved tensors against traces differenced over depth (4 layers − 2 layers).

benchmarks/results/layer_inventory_traces.jsonl (make_layer_inventory_traces.py) holds, per row, the activations a
traced step keeps beside the loss with 4 layers minus those with 2, per layer per token: nothing outside the layers
survives the difference and nothing is fitted. transformers 5.24 / peft 0.21 on Llama shapes of widths 1024–4096
(full fine-tuning, LoRA q,v with and without autocast) and torchtune's own llama3_2 / lora_llama3_2 (GQA: K and V
expanded to every query head). memory/activations.py layer_bytes_per_token must be each row to the byte (the
trace's extra half byte is 512-byte rounding of the small per-token tensors). No tracing happens here.
"""

from __future__ import annotations


import pytest

from modelmem.job import make_job
from modelmem.memory.activations import layer_bytes_per_token
from modelmem.model import prepare
from modelmem.sources.config import spec_from_config

from _rows import result_rows

ROWS = result_rows("layer_inventory_traces.jsonl")


def _id(row: dict) -> str:
    f = row["fields"]
    return f"{row['runtime']}-{row['config']['hidden_size']}-{f['mode']}-{f['precision']}"


def test_the_rows_cover_three_widths_and_both_runtimes():
    assert {r["config"]["hidden_size"] for r in ROWS if r["runtime"] == "hf"} == {1024, 2048, 4096}
    assert {(r["runtime"], r["fields"]["mode"]) for r in ROWS} >= {("hf", "train"), ("hf", "lora"), ("torchtune", "train"),
                                                                  ("torchtune", "lora")}


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_one_layers_saved_bytes_per_token(row):
    m, j = prepare(spec_from_config(row["config"], "traced"), make_job(**{"num_gpus": 1, **row["fields"]}))
    listed = layer_bytes_per_token(m.spec, j, m.targets, j.seq_len)
    assert 0 <= row["bytes_per_token_per_layer"] - listed <= 1
