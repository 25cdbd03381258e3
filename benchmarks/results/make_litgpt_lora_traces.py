"""Trace LitGPT's own LoRA model under mixed precision on fake tensors → litgpt_lora_traces.jsonl.

    mkdir -p /tmp/lg/x && cd /tmp/lg/x && unzip -q litgpt-0.5.13-py3-none-any.whl
    .venv/bin/python benchmarks/results/make_litgpt_lora_traces.py /tmp/lg/x

The question it answers: does a LitGPT LoRA adapter keep its own low-precision copy of its input under autocast,
as PEFT's `_cast_input_dtype` makes it (RuntimeProfile.lora_casts_adapter_input)? The model is litgpt.lora.GPT
(LoRAQKVLinear on the fused qkv, lora_dropout 0.05 as finetune/lora.py defaults) at a tiny Llama-style size, in fp32
weights, base frozen by litgpt.lora.mark_only_lora_as_trainable, one forward + backward under
torch.autocast(bf16) plus modelmem's CUDA-autocast fp32 policy (the route `modelmem trace` takes on the CPU).
Allocations are recorded by modelmem's StorageTracker; what autograd saves is also listed through
torch.autograd.graph.saved_tensors_hooks (shape, dtype, op that made it). No modelmem formula is involved.

Stubs: `litgpt/__init__.py` is not run (it imports litgpt.api → lightning); an empty package module stands for it.
lightning, lightning_utilities and jsonargparse (imported by litgpt.utils and litgpt.scripts.convert_hf_checkpoint
at module level, never called by the model's forward) are empty stand-ins. litgpt.config, litgpt.model and
litgpt.lora run as written.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stubs import stub  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "litgpt_lora_traces.jsonl"
STUBBED = ("lightning", "lightning_utilities", "jsonargparse")
BLOCK = 512


def _import_litgpt(root: str):
    stub(STUBBED)
    pkg = types.ModuleType("litgpt")
    pkg.__path__ = [str(Path(root) / "litgpt")]
    sys.modules["litgpt"] = pkg
    import litgpt.config  # noqa: F401
    import litgpt.model  # noqa: F401
    import litgpt.lora
    return litgpt.lora


CONFIG = dict(n_embd=256, n_head=8, n_query_groups=8, intermediate_size=688, vocab_size=512, block_size=512)


def hf_config(layers: int) -> dict:
    """The same model as an HF Llama config (what modelmem.estimate reads)."""
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": CONFIG["n_embd"],
            "num_attention_heads": CONFIG["n_head"], "num_key_value_heads": CONFIG["n_query_groups"],
            "intermediate_size": CONFIG["intermediate_size"], "vocab_size": CONFIG["vocab_size"],
            "num_hidden_layers": layers, "max_position_embeddings": CONFIG["block_size"], "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32"}


def trace(lora, *, layers: int, batch: int, seq: int, query: bool, value: bool, rank: int = 8) -> dict:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from modelmem.trace._routing import gpu_kernels
    from modelmem.trace._tracker import StorageTracker, round_block
    from modelmem.trace._workload import _CudaAutocastFp32

    cfg = lora.Config(name="tiny-llama", n_layer=layers, padded_vocab_size=CONFIG["vocab_size"],
                      vocab_size=CONFIG["vocab_size"], block_size=CONFIG["block_size"], n_embd=CONFIG["n_embd"],
                      n_head=CONFIG["n_head"], n_query_groups=CONFIG["n_query_groups"], rotary_percentage=1.0,
                      parallel_residual=False, bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP",
                      intermediate_size=CONFIG["intermediate_size"], lora_r=rank, lora_alpha=16, lora_dropout=0.05,
                      lora_query=query, lora_key=False, lora_value=value, lora_projection=False, lora_mlp=False,
                      lora_head=False)
    tracker = StorageTracker()
    saved: list[tuple] = []
    with FakeTensorMode(allow_non_fake_inputs=True), tracker, gpu_kernels():
        model = lora.GPT(cfg)  # fp32 weights (mixed precision: fp32 masters under autocast)
        lora.mark_only_lora_as_trainable(model)
        for p in model.parameters():
            tracker.tag(p, "weights")
        for b in model.buffers():
            tracker.tag(b, "weights")
        idx = torch.randint(0, CONFIG["vocab_size"], (batch, seq))
        tracker.tag(idx, "inputs")

        def pack(t):
            sid = tracker.sid_of(t)
            if tracker.phase == "forward" and tracker.log.tags.get(sid) != "weights":
                saved.append((sid, tuple(t.shape), str(t.dtype).replace("torch.", "")))
            return t

        tracker.phase = "forward"
        with torch.autocast("cpu", dtype=torch.bfloat16), _CudaAutocastFp32(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(idx)
        tracker.tag(logits, "logits")
        # saved for backward: allocated in forward, still alive at its end, other than the logits
        live = {sid: n for sid, n in tracker._live.values() if sid}
        fwd = {sid: round_block(n) for sid, n in live.items()
               if tracker.log.phases.get(sid) == "forward" and tracker.log.tags.get(sid) is None}
        tracker.phase = "backward"
        logits.float().sum().backward()
    # saved tensors, deduplicated by storage, with their op
    op_of = {ev.sid: ev.op for ev in tracker.log.events if ev.sid > 0}
    seen: dict[int, tuple] = {}
    for sid, shape, dtype in saved:
        if sid in fwd and sid not in seen:
            seen[sid] = (op_of.get(sid, ""), list(shape), dtype, fwd[sid])
    return {"layers": layers, "batch": batch, "seq": seq, "tokens": batch * seq, "lora_r": rank,
            "lora_query": query, "lora_value": value, "saved_forward": sum(fwd.values()),
            "saved_tensors": sorted(seen.values(), key=lambda r: (r[0], r[2], r[1]))}


JOBS = [dict(layers=L, batch=b, seq=s, query=q, value=v)
        for (q, v) in ((True, True), (True, False))
        for L in (2, 3) for (b, s) in ((1, 64), (2, 128))]


def main(root: str) -> None:
    lora = _import_litgpt(root)
    with OUT.open("w") as f:
        for job in JOBS:
            row = trace(lora, **job)
            row["config"] = hf_config(job["layers"])
            row["litgpt"] = "0.5.13"
            f.write(json.dumps(row) + "\n")
            print(job, row["saved_forward"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lg/x")
