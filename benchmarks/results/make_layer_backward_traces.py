"""Trace training steps that peak inside a decoder layer's backward; one JSON line per job → layer_backward_traces.jsonl.

    .venv/bin/python benchmarks/results/make_layer_backward_traces.py      # ≈ 1 min; rewrites the file

`modelmem trace` (transformers 5.24 / peft 0.21 on fake tensors, the tracer of trace_grid.jsonl) on tiny decoders
whose vocabulary is small (256 entries), width 1024 with a 4 × MLP, at 2 × 2048 tokens: the loss's buffers
are then smaller than what a layer's backward holds, so the step peaks inside a layer's backward — at the first
layer backward reaches (all saved activations, checkpointed or not) or at the last one (every other gradient alive)
— which the catalog-model grid, whose vocabularies are large, never shows. A gated MLP (Llama: SwiGLU) and an ungated
one (GPT-2: its Python tanh GELU, and torch's GELU), full fine-tuning and LoRA, with and without checkpointing. No modelmem formula is
involved; tests/test_trace_pin_layer_backward.py pins the estimate to these rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "layer_backward_traces.jsonl"

CONFIGS = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
              "intermediate_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
              "head_dim": 128, "vocab_size": 256, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "gpt2": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 1024, "n_inner": 4096,
             "n_layer": 4, "n_head": 8, "vocab_size": 256, "n_positions": 4096, "activation_function": "gelu_new",
             "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
             "bos_token_id": 0, "eos_token_id": 0,
             "torch_dtype": "bfloat16"},
}
# GPT-2's block with torch's own GELU (transformers GELUActivation → F.gelu): an activation without a product
CONFIGS["gpt2-gelu"] = {**CONFIGS["gpt2"], "activation_function": "gelu"}
TARGETS = {"llama": "q_proj,v_proj", "gpt2": "c_attn", "gpt2-gelu": "c_attn"}


def jobs() -> list[tuple[str, dict]]:
    out = []
    for family in CONFIGS:
        for mode in ("train", "lora"):
            for ck in ("full", "none"):
                f = dict(mode=mode, dtype="bf16", precision="pure", optimizer="adamw", batch_size=2, seq_len=2048,
                         grad_checkpointing=ck, attention="sdpa", num_gpus=1, gpu="h100")
                if mode == "lora":
                    # LoRA as the grid runs it: the runtime's default precision (transformers: autocast over
                    # PEFT's fp32 adapters)
                    f.update(precision="mixed", lora_rank=8, lora_alpha=16, lora_targets=TARGETS[family])
                out.append((family, f))
    return out


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    import torch
    import transformers

    from modelmem.job import make_job
    from modelmem.sources.config import spec_from_config
    from modelmem.trace import trace

    rows = []
    for family, fields in jobs():
        config = CONFIGS[family]
        t = trace(spec_from_config(config, f"tiny-{family}"), make_job(**fields))
        pg = t.per_gpu
        rows.append({"family": family, "config": config, "fields": fields, "allocated_peak": pg.allocated_peak,
                     "components": pg.components, "notes": list(pg.notes),
                     "versions": {"torch": torch.__version__, "transformers": transformers.__version__}})
        print(family, fields["mode"], fields["grad_checkpointing"], pg.allocated_peak,
              [n for n in pg.notes if "peak" in n], flush=True)
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
