"""Trace torchtune's activation offloading on fake tensors; one JSON line per job → torchtune_offload_traces.jsonl.

    git -C <torchtune clone> archive 1814feb17 torchtune | tar -x -C /tmp/tt1814     # the commit of the README
    .venv/bin/python benchmarks/results/make_torchtune_offload_traces.py /tmp/tt1814    # flags table; ≈ 1 min

What runs is torchtune's own code: a tiny `llama3_2` (or `lora_llama3_2`) built in bf16 as the single-device recipes'
`_setup_model` builds it — activation checkpointing on every TransformerSelfAttentionLayer, then
`training.get_act_offloading_ctx_manager(model, True)`, whose OffloadActivations (training/_activation_offloading.py,
`use_streams=True`, `max_fwd_stash_size=5`) packs every tensor autograd saves outside a checkpointed block, and whose
NoOpManager leaves the tied output layer alone — and the body of the recipe's train loop (`_loss_step`: the forward
under the offloading context, the shifted labels, CEWithChunkedOutputLoss over 8 chunks, `del logits`; backward;
`scale_grads`; AdamW step; `zero_grad(set_to_none=True)`), two steps, recorded by modelmem's StorageTracker.

Only the CUDA stream calls are stood in for, because a CPU-only torch has no streams: `torch.cuda.Stream`,
`default_stream`, `stream(...)`, events and `record_stream` do nothing, the pinned host copy (`torch.empty_like(...,
pin_memory=True, device="cpu")`) is allocated and tagged "host" (not GPU memory), and a host copy's `.to("cuda")` is a
fresh device tensor. Streams order work on a GPU; what stays allocated is what OffloadActivations keeps referenced
(its fwd_stash, bwd_tensor_stash), and that is what the tracker sees. Every pack is logged (size, parameter or not),
so the rows say how many tensors were packed after the last layer's input.

Rows: full fine-tuning and LoRA (q,v), each with a large vocabulary (the step peaks beside the loss) and a small one
(it peaks in backward, beside a recomputed layer), each traced with offloading on and off; and one decoder whose final
norm is removed (nn.Identity), so nothing is packed after the last layer's input. tests/test_trace_pin_offload.py
pins memory/activations.py to them.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stubs import stub  # noqa: E402
from make_torchtune_traces import _phase_peaks  # noqa: E402  (per phase of the last step: peak and what was live)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "torchtune_offload_traces.jsonl"
STUBBED = ("omegaconf", "sentencepiece", "tiktoken", "blobfile", "datasets", "torchao", "wandb", "tensorboard")


class _Stream:
    """torch.cuda.Stream / Event stand-in: ordering only, no memory."""

    def record_event(self) -> object:
        return object()

    def wait_event(self, event: object) -> None:
        pass

    def wait_stream(self, stream: object) -> None:
        pass


class _HostCopy:
    """The pinned host copy OffloadActivations keeps in its tracker; `.to("cuda")` brings back a new device tensor."""

    def __init__(self, t, tracker) -> None:
        self.t, self.tracker = t, tracker

    def to(self, device, non_blocking=False):
        out = self.t.clone()
        self.tracker.tag(out, "offload_back")
        return out


class _HostTracker(dict):
    def __init__(self, tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __setitem__(self, key, value) -> None:
        t, modified = value
        super().__setitem__(key, (_HostCopy(t, self.tracker) if modified else t, modified))


def _torch_for_offloading(torch, tracker):
    """The `torch` module as training/_activation_offloading.py sees it: streams stood in, host copies tagged."""

    def empty_like(t, *, pin_memory=False, device=None):
        out = torch.empty_like(t)
        tracker.tag(out, "host")
        return out

    stream0 = _Stream()
    cuda = SimpleNamespace(default_stream=lambda: stream0, Stream=_Stream,
                           stream=lambda s: contextlib.nullcontext())

    class Proxy:
        def __getattr__(self, name):
            return getattr(torch, name)

    proxy = Proxy()
    proxy.cuda = cuda
    proxy.empty_like = empty_like
    return proxy


def trace(*, mode: str, layers: int, dim: int, heads: int, kv_heads: int, hidden: int, vocab: int, batch: int,
          seq: int, offload: bool, final_norm: str = "rmsnorm", dtype: str = "bf16", rank: int = 8,
          checkpointing: bool = True) -> dict:
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    from modelmem.trace._routing import gpu_kernels
    from modelmem.trace._tracker import StorageTracker, round_block, settle_build

    import torchtune.training._activation_offloading as offloading
    from torchtune import modules, training
    from torchtune.models.llama3_1._position_embeddings import Llama3ScaledRoPE
    from torchtune.models.llama3_2 import llama3_2, lora_llama3_2
    from torchtune.modules.loss import CEWithChunkedOutputLoss
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    # Llama 3.1's frequency scaling branches on each frequency's value, which fake tensors do not have; it changes
    # the values of `theta`, not its shape, so the unscaled frequencies stand in
    Llama3ScaledRoPE.apply_scaling = lambda self, freqs, *args: freqs
    tracker = StorageTracker()
    packs: list[tuple[int, bool, str]] = []  # (bytes, parameter, what) for every tensor packed, in order
    orig_torch, orig_record_stream = offloading.torch, torch.Tensor.record_stream
    offloading.torch = _torch_for_offloading(torch, tracker)
    torch.Tensor.record_stream = lambda self, stream: None  # type: ignore[method-assign]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), tracker, gpu_kernels():
            shape = dict(vocab_size=vocab, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, embed_dim=dim,
                         max_seq_len=4096, intermediate_dim=hidden)
            # recipes/*_single_device.py _setup_model
            with training.set_default_dtype(torch.bfloat16 if dtype == "bf16" else torch.float32):
                if mode == "lora":
                    model = lora_llama3_2(["q_proj", "v_proj"], lora_rank=rank, lora_alpha=2 * rank, **shape)
                else:
                    model = llama3_2(**shape)
                if final_norm == "none":
                    model.norm = nn.Identity()
                elif final_norm == "layernorm":
                    model.norm = nn.LayerNorm(dim)
            if mode == "lora":
                set_trainable_params(model, get_adapter_params(model))
            if checkpointing:
                training.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
            ctx = training.get_act_offloading_ctx_manager(model, offload)
            if offload:
                ctx.tracker = _HostTracker(tracker)
                pack = ctx.pack_hook

                def logged_pack(t):
                    packs.append((t.element_size() * t.nelement(), isinstance(t, nn.Parameter),
                                  tracker.log.tags.get(tracker.sid_of(t), "")))
                    return pack(t)

                ctx.pack_hook = logged_pack
            for layer in model.layers:  # the checkpointed block's input: the residual stream entering the layer
                layer.register_forward_pre_hook(
                    lambda m, args: tracker.tag(args[0], "layer_input") if tracker.phase == "forward" else None)
            if final_norm != "none":
                model.norm.register_forward_pre_hook(lambda m, a: setattr(tracker, "phase", "final_norm"))
                model.norm.register_forward_hook(lambda m, a, o: setattr(tracker, "phase", "head"))
            for p in model.parameters():
                tracker.tag(p, "weights")
            for b in model.buffers():
                tracker.tag(b, "weights")
            loss_fn = CEWithChunkedOutputLoss()
            model.set_num_output_chunks(loss_fn.num_output_chunks)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5,
                                          foreach=True)
            ignore_labels_cache = torch.full((batch, 1), loss_fn.ignore_index)
            tracker.tag(ignore_labels_cache, "inputs")
            for step in range(2):
                packs.clear()
                tracker.phase = "inputs"
                tokens = torch.randint(0, vocab, (batch, seq))
                labels = torch.randint(0, vocab, (batch, seq))
                tracker.tag(tokens, "inputs")
                tracker.tag(labels, "inputs")
                current_num_tokens = (labels != loss_fn.ignore_index).sum()
                tracker.phase = "forward"
                # _loss_step
                with ctx:
                    logits = model(tokens)
                for chunk in logits:
                    tracker.tag(chunk, "logits")
                tracker.phase = "loss"
                labels = torch.hstack((labels[..., 1:], ignore_labels_cache[: labels.shape[0]]))
                loss = loss_fn(logits, labels)
                del logits
                current_loss = loss * current_num_tokens
                tracker.phase = "backward"
                current_loss.backward()
                for p in model.parameters():
                    if p.grad is not None:
                        tracker.tag(p.grad, "gradients")
                tracker.phase = "optimizer"
                training.scale_grads(model, 1 / current_num_tokens)
                optimizer.step()
                for state in optimizer.state.values():
                    for key, value in state.items():
                        if isinstance(value, torch.Tensor):
                            tracker.tag(value, "host" if key == "step" else "optimizer_states")
                optimizer.zero_grad(set_to_none=True)
                tracker.phase = "end_of_step"
                del loss, current_loss, labels, tokens
    finally:
        offloading.torch = orig_torch
        torch.Tensor.record_stream = orig_record_stream  # type: ignore[method-assign]
    log = settle_build(tracker.log)
    phases = _phase_peaks(log, round_block)
    peak_phase = max(phases, key=lambda k: phases[k]["allocated"])
    large = [i for i, (n, param, _) in enumerate(packs) if n >= 1024 and not param]
    inputs = [i for i, (_, _, what) in enumerate(packs) if what == "layer_input"]
    return {"phases": phases, "allocated_peak": phases[peak_phase]["allocated"], "peak_phase": peak_phase,
            "peak_op": phases[peak_phase]["op"], "packs_per_step": len(packs), "offloaded_per_step": len(large),
            "packs_after_last_layer_input": len(packs) - 1 - inputs[-1] if inputs else None,
            "layer_inputs_packed": len(inputs),
            # the layer inputs whose GPU copy is still referenced when the loss runs, and at the backward's peak
            "layer_inputs_live": {phase: v["by"].get("layer_input", 0) + v["by"].get("offload_back", 0)
                                  for phase, v in phases.items()}}


DIM, HEADS, KV_HEADS, LAYERS = 256, 4, 2, 4
JOBS = (  # (mode, dtype, hidden, vocab, batch, seq, final norm)
    ("train", "bf16", 512, 32768, 2, 512, "rmsnorm"),   # peaks beside the loss
    ("train", "bf16", 2048, 256, 2, 2048, "rmsnorm"),   # peaks in backward
    ("lora", "bf16", 512, 32768, 2, 512, "rmsnorm"),
    ("lora", "bf16", 2048, 256, 2, 2048, "rmsnorm"),
    # the final norm decides how many layer inputs are still stashed at the loss: none, or an nn.LayerNorm
    ("train", "bf16", 512, 32768, 2, 512, "none"),
    ("train", "bf16", 512, 32768, 2, 512, "layernorm"),
    ("lora", "bf16", 512, 32768, 2, 512, "layernorm"),
    # LayerNorm's mean and rstd are offloaded from 1,024 bytes on: 256 fp32 rows are, 255 are not. (In fp32, because
    # a CPU trace keeps a bf16 input's mean and rstd in bf16, where CUDA keeps them in fp32: torch/_refs
    # native_layer_norm; in fp32 both devices agree.)
    ("train", "fp32", 512, 32768, 1, 256, "layernorm"),
    ("train", "fp32", 512, 32768, 1, 255, "layernorm"),
)


def main() -> None:
    src = Path(sys.argv[1])
    stub(STUBBED, implements=lambda ops: (lambda f: f))
    sys.path.insert(0, str(src))
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    rows = []
    for mode, dtype, hidden, vocab, batch, seq, final_norm in JOBS:
        for offload in (True, False):
            r = trace(mode=mode, layers=LAYERS, dim=DIM, heads=HEADS, kv_heads=KV_HEADS, hidden=hidden, vocab=vocab,
                      batch=batch, seq=seq, offload=offload, final_norm=final_norm, dtype=dtype)
            config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": DIM,
                      "intermediate_size": hidden, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                      "num_key_value_heads": KV_HEADS, "vocab_size": vocab, "max_position_embeddings": 4096,
                      "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                      "torch_dtype": "bfloat16" if dtype == "bf16" else "float32"}
            fields = dict(mode=mode, dtype=dtype, precision="pure", optimizer="adamw", batch_size=batch,
                          seq_len=seq, grad_checkpointing="full", attention="sdpa", strategy="none",
                          runtime="torchtune", compile=False, loss="chunked", activation_offload=offload)
            if mode == "lora":
                fields.update(lora_rank=8, lora_alpha=16, lora_targets="q_proj,v_proj")
            row = {"config": config, "final_norm": final_norm, "layers": LAYERS, "fields": fields, "tokens": batch * seq, **r,
                   "versions": {"torch": torch.__version__, "torchtune": "git 1814feb17 (Nov 2024)"}}
            rows.append(row)
            print(mode, dtype, hidden, vocab, batch, seq, final_norm, offload, r["allocated_peak"], r["peak_phase"],
                  r["peak_op"], r["packs_after_last_layer_input"], r["layer_inputs_live"], flush=True)
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
