"""Trace torchtune's own LoRA recipe step on fake tensors; one JSON line per job → torchtune_traces.jsonl.

    git -C <torchtune clone> archive 0217d44c torchtune | tar -x -C /tmp/tt0217     # the commit the README
    .venv/bin/python benchmarks/results/make_torchtune_traces.py /tmp/tt0217            # table was measured at

The model is torchtune's `lora_llama2` component builder at a tiny size, built in bf16 as
recipes/lora_finetune_single_device.py `_setup_model` builds it (set_default_dtype, adapters trainable, activation
checkpointing through torchtune.utils.set_activation_checkpointing on every TransformerDecoderLayer). The step is
the recipe's `train` loop body, line for line: model(input_ids) (whose output is `self.output(h).float()`), the
shifted `.contiguous()` logits, transpose, nn.CrossEntropyLoss, `loss / GA`, `running_loss += loss`, backward,
AdamW step, zero_grad(set_to_none=True). Allocations are recorded by modelmem's StorageTracker (the tracer the
`modelmem trace` command uses); no modelmem formula is involved.

Stubs: only the third-party packages torchtune imports at module level and the step never calls (omegaconf,
sentencepiece, tiktoken, blobfile, datasets, torchao — torchao only for LoRALinear's NF4 branch, which a bf16
base never takes) are empty stand-ins; every torchtune module runs as written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stubs import stub  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "torchtune_traces.jsonl"
STUBBED = ("omegaconf", "sentencepiece", "tiktoken", "blobfile", "datasets", "torchao", "wandb", "tensorboard")


def trace_lora(tt, *, layers: int, dim: int, heads: int, hidden: int, vocab: int, batch: int, seq: int,
               rank: int, targets: list[str], ac: bool) -> dict:
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    from modelmem.trace._routing import gpu_kernels
    from modelmem.trace._tracker import StorageTracker, find_peak, round_block, settle_build

    from torchtune import modules, utils
    from torchtune.models.llama2 import lora_llama2
    from torchtune.modules.peft.peft_utils import get_adapter_params, set_trainable_params

    tracker = StorageTracker()
    with FakeTensorMode(allow_non_fake_inputs=True), tracker, gpu_kernels():
        # recipes/lora_finetune_single_device.py _setup_model
        with utils.set_default_dtype(torch.bfloat16):
            model = lora_llama2(lora_attn_modules=targets, apply_lora_to_mlp=False, apply_lora_to_output=False,
                                vocab_size=vocab, num_layers=layers, num_heads=heads, num_kv_heads=heads,
                                embed_dim=dim, max_seq_len=4096, intermediate_dim=hidden, lora_rank=rank,
                                lora_alpha=2 * rank)
        adapter_params = get_adapter_params(model)
        set_trainable_params(model, adapter_params)
        def mark(module, args):
            if tracker.phase.startswith("backward") or tracker.phase.startswith("recompute"):
                tracker.phase = f"recompute{module.layer_index}"
        for i, layer in enumerate(model.layers):
            layer.layer_index = i
            layer.register_forward_pre_hook(mark)
        model.output.register_full_backward_pre_hook(lambda m, g: setattr(tracker, "phase", "backward_head"))
        if ac:
            utils.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerDecoderLayer})
        for p in model.parameters():
            tracker.tag(p, "weights")
        for b in model.buffers():
            tracker.tag(b, "weights")
        # _setup_optimizer: config.instantiate(cfg_optimizer, self._model.parameters()) (AdamW; frozen params get
        # no state); CUDA's default is foreach
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4,
                                      weight_decay=0.01, foreach=True)
        loss_fn = nn.CrossEntropyLoss()
        tracker.phase = "inputs"
        for step in range(2):
            running_loss = 0
            input_ids = torch.randint(0, vocab, (batch, seq))
            labels = torch.randint(0, vocab, (batch, seq))
            tracker.tag(input_ids, "inputs")
            tracker.tag(labels, "inputs")
            tracker.phase = "forward"
            logits = model(input_ids)
            tracker.tag(logits, "logits")  # `self.output(h).float()`: the loss's, not a saved activation
            tracker.phase = "loss"
            # Shift so that tokens < n predict n
            logits = logits[..., :-1, :].contiguous()
            labels = labels[..., 1:].contiguous()
            logits = logits.transpose(1, 2)
            loss = loss_fn(logits, labels)
            loss = loss / 1
            running_loss += loss
            tracker.phase = "backward"
            loss.backward()
            for p in model.parameters():
                if p.grad is not None:
                    tracker.tag(p.grad, "gradients")
            tracker.phase = "optimizer"
            optimizer.step()
            for state in optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        tracker.tag(value, "host" if key == "step" else "optimizer_states")
            optimizer.zero_grad(set_to_none=True)
            tracker.phase = "end_of_step"
            del logits, labels, loss, running_loss, input_ids
    log = settle_build(tracker.log)
    peak = find_peak(log)
    phase_peaks = _phase_peaks(log, round_block)
    by: dict[str, int] = {}
    for sid, nbytes in peak.live.items():
        key = log.tags.get(sid) or f"{log.phases.get(sid, '')}"
        by[key] = by.get(key, 0) + nbytes
    return {"phase_peaks": phase_peaks, "allocated_peak": peak.allocated, "peak_op": peak.op, "peak_phase": peak.phase, "live_by": by,
            "live": sorted(((log.phases.get(s, ''), log.tags.get(s, ''), n) for s, n in peak.live.items()),
                           key=lambda t: -t[2])[:40]}


def _phase_peaks(log, round_block) -> dict:
    """Per phase of the last step: the highest live total in it, and what was live then by (phase allocated, tag)."""
    cur, sizes, best = 0, {}, {}
    last_inputs = max(i for i, ev in enumerate(log.events) if ev.sid > 0 and ev.phase == "inputs")
    for i, ev in enumerate(log.events):
        if ev.sid > 0:
            if log.tags.get(ev.sid) == "host":
                continue
            sizes[ev.sid] = round_block(ev.nbytes)
            cur += sizes[ev.sid]
            if i > last_inputs and cur > best.get(ev.phase, (-1, 0))[0]:
                best[ev.phase] = (cur, i)
        else:
            cur -= sizes.pop(-ev.sid, 0)
    out = {}
    from modelmem.trace._engine import _live_at

    for phase, (total, idx) in best.items():
        live = _live_at(log, idx + 1)
        by = {}
        for sid, n in live.items():
            key = log.tags.get(sid) or log.phases.get(sid, "")
            by[key] = by.get(key, 0) + n
        out[phase] = {"allocated": total, "op": log.events[idx].op, "by": by}
    return out


JOBS = (  # (layers, batch, seq): two sizes, so the pin reads per token per layer, not one fitted total
    (4, 2, 256),
    (2, 1, 512),
)
DIM, HEADS, HIDDEN, VOCAB, RANK = 256, 4, 512, 8192, 8


def main() -> None:
    src = Path(sys.argv[1])
    # torchao.dtypes.nf4tensor.implements is a decorator at import
    stub(STUBBED, implements=lambda ops: (lambda f: f))
    sys.path.insert(0, str(src))
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    import torchtune

    rows = []
    for layers, batch, seq in JOBS:
        r = trace_lora(torchtune, layers=layers, dim=DIM, heads=HEADS, hidden=HIDDEN, vocab=VOCAB, batch=batch,
                       seq=seq, rank=RANK, targets=["q_proj", "v_proj"], ac=True)
        at = r["phase_peaks"][r["peak_phase"]]["by"]
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": DIM,
                  "intermediate_size": HIDDEN, "num_hidden_layers": layers, "num_attention_heads": HEADS,
                  "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 4096,
                  "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
        fields = dict(mode="lora", dtype="bf16", precision="pure", optimizer="adamw", batch_size=batch, seq_len=seq,
                      grad_checkpointing="full", attention="sdpa", lora_rank=RANK, lora_alpha=2 * RANK,
                      lora_targets="q_proj,v_proj", strategy="none", runtime="torchtune", compile=False, loss="full")
        rows.append({"config": config, "fields": fields, "tokens": batch * seq,
                     "allocated_peak": r["allocated_peak"], "peak_op": r["peak_op"], "peak_phase": r["peak_phase"],
                     # live at the peak, by where it was allocated: weights (parameters and buffers, RoPE caches
                     # included), the forward's saved tensors, the loss's and backward's buffers
                     "weights": at.get("weights", 0), "optimizer_states": at.get("optimizer_states", 0),
                     "saved_forward": at.get("forward", 0), "loss_buffers": at.get("logits", 0) + at.get("loss", 0) + at.get("backward", 0),
                     "inputs": at.get("inputs", 0), "phase_peaks": r["phase_peaks"],
                     "versions": {"torch": torch.__version__, "torchtune": "git 0217d44c (0.1.x, May 2024)"}})
        print(layers, batch, seq, r["allocated_peak"], r["peak_op"], {k: v for k, v in at.items()})
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
