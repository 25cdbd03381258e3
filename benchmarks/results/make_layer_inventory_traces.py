"""What one decoder layer saves, traced by differencing: one JSON line per (runtime, job, width) → layer_inventory_traces.jsonl.

    .venv/bin/python benchmarks/results/make_layer_inventory_traces.py [/tmp/tt1814]    # ≈ 2 min; rewrites the file

Each row traces the same job on the same decoder with 4 and with 2 layers and divides the difference of the
activations alive beside the loss by 2 layers × tokens: whatever sits outside the layers (embeddings, the final norm,
the loss) cancels, and what is left is one layer's saved tensors per token, with nothing fitted. transformers rows
are `modelmem trace` (transformers 5.24 / peft 0.21 on fake tensors) on Llama shapes of widths 1024, 2048 and 4096
(head size 128, a 3.5 × MLP): full fine-tuning and LoRA q,v, each in pure bf16 and under autocast. torchtune
rows (given a torchtune source tree: git 1814feb17, as make_torchtune_offload_traces.py) run its recipe step with
checkpointing off on a width-256 GQA `llama3_2` and `lora_llama3_2`. tests/test_trace_pin_layer_inventory.py pins
memory/activations.py layer_bytes_per_token to every row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "layer_inventory_traces.jsonl"
TOKENS = (1, 2048)  # batch, seq


def llama(width: int, layers: int) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": width,
            "intermediate_size": width * 7 // 2, "num_hidden_layers": layers, "num_attention_heads": width // 128,
            "num_key_value_heads": width // 512, "head_dim": 128, "vocab_size": 32000, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


HF_JOBS = (
    dict(mode="train", precision="pure", optimizer="sgd"),  # SGD: the step peaks beside the loss, not at the optimizer
    dict(mode="train", precision="mixed", optimizer="sgd"),  # fp32 masters under autocast
    dict(mode="lora", precision="pure", lora_targets="q_proj,v_proj"),
    dict(mode="lora", precision="mixed", lora_targets="q_proj,v_proj"),
)


def hf_rows() -> list[dict]:
    import warnings

    warnings.filterwarnings("ignore")
    from modelmem.job import make_job
    from modelmem.sources.config import spec_from_config
    from modelmem.trace import trace

    rows = []
    for width in (1024, 2048, 4096):
        for extra in HF_JOBS:
            fields = dict(dtype="bf16", batch_size=TOKENS[0], seq_len=TOKENS[1], grad_checkpointing="none",
                          attention="sdpa", num_gpus=1, gpu="h100", **extra)
            acts = {}
            for layers in (2, 4):
                t = trace(spec_from_config(llama(width, layers), "llama"), make_job(**fields))
                assert "during loss_backward" in " ".join(t.per_gpu.notes), t.per_gpu.notes
                acts[layers] = t.per_gpu.components["activations"]
            per = (acts[4] - acts[2]) / (2 * TOKENS[0] * TOKENS[1])
            rows.append({"runtime": "hf", "config": llama(width, 4), "fields": fields,
                         "bytes_per_token_per_layer": per})
            print("hf", width, extra, per, flush=True)
    return rows


def torchtune_rows(src: Path) -> list[dict]:
    sys.path.insert(0, str(HERE))
    import make_torchtune_offload_traces as tt
    from _stubs import stub

    stub(tt.STUBBED, implements=lambda ops: (lambda f: f))
    sys.path.insert(0, str(src))
    rows = []
    batch, seq = 2, 512
    for mode in ("train", "lora"):
        saved = {}
        for layers in (2, 4):
            r = tt.trace(mode=mode, layers=layers, dim=256, heads=4, kv_heads=2, hidden=512, vocab=32768, batch=batch,
                         seq=seq, offload=False, checkpointing=False)
            by = r["phases"]["loss"]["by"]
            saved[layers] = by.get("forward", 0) + by.get("layer_input", 0)
        per = (saved[4] - saved[2]) / (2 * batch * seq)
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
                  "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "vocab_size": 32768, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                  "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
        fields = dict(mode=mode, dtype="bf16", precision="pure", batch_size=batch, seq_len=seq,
                      grad_checkpointing="none", attention="sdpa", runtime="torchtune", loss="chunked")
        if mode == "lora":
            fields.update(lora_rank=8, lora_alpha=16, lora_targets="q_proj,v_proj")
        rows.append({"runtime": "torchtune", "config": config, "fields": fields, "bytes_per_token_per_layer": per})
        print("torchtune", mode, per, flush=True)
    return rows


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    rows = hf_rows()
    if len(sys.argv) > 1:
        rows += torchtune_rows(Path(sys.argv[1]))
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
