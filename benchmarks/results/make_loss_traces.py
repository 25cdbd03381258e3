"""Trace the output layer and loss on fake tensors; one JSON line per job → loss_traces.jsonl.

    pip download litgpt==0.5.13 torchtune==0.6.1 --no-deps -d /tmp/wheels
    .venv/bin/python benchmarks/results/make_loss_traces.py /tmp/wheels/litgpt-0.5.13-py3-none-any.whl \
        /tmp/wheels/torchtune-0.6.1-py3-none-any.whl      # ≈ 30 s; rewrites the file

transformers rows: tiny models (two layers of width 64) and a large vocabulary run by modelmem's own tracer, so
the loss's buffers are most of what the step holds. LitGPT and torchtune rows (chunked losses): their output layer
and loss only, hidden state → LM head → loss → backward, with the references the recipe keeps; the library's own
functions are read from the wheels (ast, then exec with torch: their packages import lightning and friends, which
the trace does not need). Every row pins memory/logits.py (tests/test_trace_pin_loss.py) per token per vocabulary
entry, whatever the model's size.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import sys
import typing
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
OUT = HERE / "loss_traces.jsonl"
TORCH_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}
VOCAB = 32000


def tiny(model_type: str, dtype: str) -> dict:
    cfg = {"model_type": model_type, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "vocab_size": VOCAB,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
           "torch_dtype": TORCH_DTYPE[dtype]}
    if model_type == "llama":
        cfg["architectures"] = ["LlamaForCausalLM"]
    if model_type == "gemma2":  # final-logit soft-capping (tanh) before the loss
        cfg.update(architectures=["Gemma2ForCausalLM"], final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=16, sliding_window=4096, hidden_activation="gelu_pytorch_tanh")
    return cfg


JOBS = [  # (model_type, job fields)
    ("llama", dict(mode="train", dtype="fp32", precision="pure", optimizer="sgd", batch_size=1, seq_len=256)),
    ("llama", dict(mode="train", dtype="bf16", precision="pure", optimizer="sgd", batch_size=1, seq_len=256)),
    ("llama", dict(mode="train", dtype="bf16", precision="pure", optimizer="sgd", batch_size=2, seq_len=128)),
    ("gemma2", dict(mode="train", dtype="bf16", precision="pure", optimizer="sgd", batch_size=1, seq_len=256, attention="eager")),
]


HIDDEN = 64  # the width of the hidden state entering the LM head (as the tiny models above)
# LitGPT: finetune/lora.py, bf16-true (every weight in bf16); (batch, seq_len): a multiple of 128, one that is not,
# one shorter than a chunk, and two sequences (the shifted last chunk is then not contiguous; at 129 it is empty)
LITGPT_JOBS = [(1, 256), (1, 300), (1, 100), (2, 256), (2, 129)]
# torchtune: recipes/*_single_device.py with CEWithChunkedOutputLoss (8 chunks), bf16 weights, compile off
TORCHTUNE_JOBS = [(1, 256), (1, 300), (2, 256)]
# torchtune full fine-tuning: the output layer trains, untied (nn.Linear) or tied (TiedLinear, as Llama 3.2); two
# widths so that the weight gradient's V·h bytes separate from the loss's T·V ones (per token per entry, 2h/T)
TRAINABLE_HEADS = [(kind, hidden) for hidden in (64, 256) for kind in ("untied", "tied")]


def from_wheel(wheel: str, member: str, names: list[str], namespace: dict) -> dict:
    """Define `names` (functions or classes, or `Class.method` for a method alone) from one file of a wheel."""
    tree = ast.parse(zipfile.ZipFile(wheel).read(member).decode())
    found = []
    for name in names:
        outer, _, method = name.partition(".")
        node = next(n for n in tree.body if getattr(n, "name", None) == outer)
        if method:
            node = next(n for n in node.body if getattr(n, "name", None) == method)
        found.append(node)
    exec(compile(ast.Module(body=found, type_ignores=[]), f"{wheel}/{member}", "exec"), namespace)
    return namespace


def _namespace() -> dict:
    import torch
    import torch.nn.functional as F

    return {"torch": torch, "F": F, "nn": torch.nn, **{k: getattr(typing, k) for k in ("Any", "Dict", "List", "Optional")}}


def _loss_figures(tracker) -> dict:
    """The loss's bytes (everything allocated from the LM head on) at their most in the loss forward and in the
    loss backward, as modelmem's tracer files them (trace._engine._phase_peaks, category "logits")."""
    from modelmem.trace._engine import _phase_peaks

    pp = _phase_peaks(tracker.log, True)
    return {"logits_end_of_forward": pp["logits"]["category_max"].get("logits", 0),
            "logits_loss_backward": pp["loss_backward"]["category_max"].get("logits", 0),
            "ops": {k: pp[k]["op"] for k in ("logits", "loss_backward")}}


def _hidden(torch, tracker, batch: int, seq_len: int, vocab_dtype, trainable_head: bool, hidden: int = HIDDEN,
            tied_linear=None):
    """The LM head and the final norm's output entering it (needing a gradient): frozen (LoRA), trainable (full
    fine-tuning), or trainable and tied to the token embedding (torchtune's TiedLinear, as Llama 3.2), whose
    output then feeds the hidden state so that the weight's gradient also comes from the embedding's backward."""
    tracker.phase = "build"
    head = torch.nn.Linear(hidden, VOCAB, bias=False, dtype=vocab_dtype)
    head.weight.requires_grad_(trainable_head)
    tracker.phase = "inputs"
    ids = torch.randint(0, VOCAB, (batch, seq_len))
    if tied_linear is None:
        x = torch.randn(batch, seq_len, hidden, dtype=vocab_dtype, requires_grad=True)
    else:
        x = torch.nn.functional.embedding(ids, head.weight)  # the decoder's tok_embeddings, the same weight
        head = tied_linear(head)
    # the loss backward ends when the gradient reaches the hidden state (as trace._workload's head hook)
    x.register_hook(lambda g: setattr(tracker, "phase", "backward"))
    return head, x, ids


def trace_litgpt(wheel: str, batch: int, seq_len: int) -> dict:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from modelmem.trace._tracker import StorageTracker

    chunked_cross_entropy = from_wheel(wheel, "litgpt/utils.py", ["chunked_cross_entropy"], _namespace())[
        "chunked_cross_entropy"]
    tracker = StorageTracker()
    with FakeTensorMode(allow_non_fake_inputs=True), tracker:
        head, x, targets = _hidden(torch, tracker, batch, seq_len, torch.bfloat16, trainable_head=False)
        tracker.phase = "logits"
        # litgpt/model.py GPT.forward with lm_head_chunk_size=128 (finetune/lora.py): one LM head call per chunk
        logits = [head(x_i) for x_i in x.split(128, dim=1)]
        # finetune/lora.py fit(): the three lines of the training step; `logits` stays bound through backward
        logits[-1] = logits[-1][..., :-1, :]
        loss = chunked_cross_entropy(logits, targets[..., 1:])
        tracker.phase = "loss_backward"
        loss.backward()
        del logits, loss
    return _loss_figures(tracker)


def _torchtune_loss(wheel: str) -> tuple[dict, type, object]:
    """torchtune's own loss path from the wheel: CEWithChunkedOutputLoss, TransformerDecoder.chunked_output, the
    full fine-tune recipe's _loss_step and TiedLinear, in one namespace; (namespace, TiedLinear, a loss instance)."""
    ns = _namespace()
    src = zipfile.ZipFile(wheel).read("torchtune/modules/loss/ce_chunked_output_loss.py").decode()
    exec(compile(src, f"{wheel}/torchtune/modules/loss/ce_chunked_output_loss.py", "exec"), ns)
    from_wheel(wheel, "torchtune/modules/transformer.py", ["TransformerDecoder.chunked_output"], ns)
    from_wheel(wheel, "recipes/full_finetune_single_device.py", ["FullFinetuneRecipeSingleDevice._loss_step"], ns)
    tied = from_wheel(wheel, "torchtune/modules/tied_linear.py", ["Linear", "TiedLinear"], ns)["TiedLinear"]
    return ns, tied, ns["CEWithChunkedOutputLoss"]()


def trace_torchtune(wheel: str, batch: int, seq_len: int, head_kind: str = "frozen", hidden: int = HIDDEN) -> dict:
    """head_kind: "frozen" (LoRA), "untied" (full fine-tuning, nn.Linear output) or "tied" (TiedLinear)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from modelmem.trace._tracker import StorageTracker

    ns, tied, loss_fn = _torchtune_loss(wheel)
    tracker = StorageTracker()
    with FakeTensorMode(allow_non_fake_inputs=True), tracker:
        head, x, tokens = _hidden(torch, tracker, batch, seq_len, torch.bfloat16, trainable_head=head_kind != "frozen",
                                  hidden=hidden, tied_linear=tied if head_kind == "tied" else None)
        decoder = SimpleNamespace(output=head, num_output_chunks=loss_fn.num_output_chunks)

        def model(tokens, labels=None):  # TransformerDecoder.forward's end: h = self.norm(h); self.chunked_output(h)
            tracker.phase = "logits"
            return ns["chunked_output"](decoder, x)

        recipe = SimpleNamespace(_model=model, _loss_fn=loss_fn, activations_handling_ctx=contextlib.nullcontext(),
                                 ignore_labels_cache=torch.full((batch, 1), loss_fn.ignore_index))
        loss = ns["_loss_step"](recipe, {"tokens": tokens, "labels": tokens})  # deletes the logits (`del logits`)
        tracker.phase = "loss_backward"
        loss.backward()
        del loss
    figures = _loss_figures(tracker)
    if head_kind != "frozen":
        weight = head.tied_module.weight if head_kind == "tied" else head.weight
        figures["head_grad_bytes"] = weight.grad.nbytes  # the output weight's gradient after backward (V·h·c)
    return figures


def _profiled_loss_figures(prof) -> dict:
    """The allocator's own record (torch.profiler, profile_memory) of a real CPU run, read like _loss_figures: the
    most allocated since the LM head began, in the loss forward and in the loss backward. Inductor's compiled
    kernels allocate below the dispatcher, where the fake-tensor tracker cannot see them; the allocator sees all.
    A CPU bf16 matmul stages fp32 copies inside the op (oneDNN), which cuBLAS does not: each matmul counts for
    its net allocation, at its end."""
    events = sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns())
    phases = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name() in ("logits", "loss_backward")}
    start = phases["logits"][0]
    matmuls = [(e.start_ns(), e.end_ns()) for e in events
               if e.name() in ("aten::mm", "aten::bmm", "aten::addmm") and e.start_ns() >= start]
    net: dict[int, int] = {}
    deltas = []
    for e in events:
        if e.name() != "[memory]" or e.start_ns() < start:
            continue
        inside = next((end for begin, end in matmuls if begin <= e.start_ns() <= end), None)
        if inside is None:
            deltas.append((e.start_ns(), e.nbytes()))
        else:
            net[inside] = net.get(inside, 0) + e.nbytes()
    cur, most = 0, dict.fromkeys(phases, 0)
    for ts, nbytes in sorted(deltas + list(net.items())):
        cur += nbytes
        for name, (begin, end) in phases.items():
            if begin <= ts <= end:
                most[name] = max(most[name], cur)
    return {"logits_end_of_forward": most["logits"], "logits_loss_backward": most["loss_backward"],
            "ops": {"logits": "compiled compute_cross_entropy", "loss_backward": "compiled backward"},
            "measured_with": "torch.profiler profile_memory, real CPU tensors, Inductor CPU backend"}


def trace_torchtune_compiled(wheel: str, batch: int, seq_len: int, head_kind: str = "frozen", hidden: int = HIDDEN,
                             compiled: bool = True) -> dict:
    """As trace_torchtune, with the loss's `compute_cross_entropy` compiled as training.compile_loss does it;
    real tensors (Inductor does not run on fake ones), the allocator's record read by _profiled_loss_figures.
    compiled=False runs the same on real tensors eagerly: real tensors, unlike fake ones, let autograd sum a
    gradient's contributions in place (InputBuffer::accumulate refuses tensor subclasses)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    ns, tied, loss_fn = _torchtune_loss(wheel)
    if compiled:  # torchtune/training/_compile.py compile_loss, for CEWithChunkedOutputLoss
        torch._dynamo.reset()  # a fresh graph per shape (else dynamo's recompile limit falls back to eager)
        loss_fn.compute_cross_entropy = torch.compile(loss_fn.compute_cross_entropy, backend="inductor")
    linear = torch.nn.Linear(hidden, VOCAB, bias=False, dtype=torch.bfloat16).requires_grad_(head_kind != "frozen")
    tokens = torch.randint(0, VOCAB, (batch, seq_len))
    x0 = torch.randn(batch, seq_len, hidden, dtype=torch.bfloat16, requires_grad=head_kind != "tied")
    head = tied(linear) if head_kind == "tied" else linear
    decoder = SimpleNamespace(output=head, num_output_chunks=loss_fn.num_output_chunks)

    def embed():  # the tied weight also embeds the tokens (the decoder's tok_embeddings), before the record
        return torch.nn.functional.embedding(tokens, linear.weight) if head_kind == "tied" else x0

    x = embed()
    recipe_model = lambda tokens, labels=None: ns["chunked_output"](decoder, x)  # noqa: E731

    recipe = SimpleNamespace(_model=recipe_model, _loss_fn=loss_fn, activations_handling_ctx=contextlib.nullcontext(),
                             ignore_labels_cache=torch.full((batch, 1), loss_fn.ignore_index))
    ns["_loss_step"](recipe, {"tokens": tokens, "labels": tokens}).backward()  # compiles
    x0.grad = linear.weight.grad = None
    x = embed()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("logits"):
            loss = ns["_loss_step"](recipe, {"tokens": tokens, "labels": tokens})
        with record_function("loss_backward"):
            loss.backward()
        del loss
    figures = _profiled_loss_figures(prof)
    if not compiled:
        figures["ops"] = {"logits": "eager compute_cross_entropy", "loss_backward": "eager backward"}
    if head_kind != "frozen":
        figures["head_grad_bytes"] = linear.weight.grad.nbytes  # the output weight's gradient after backward (V·h·c)
    return figures


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    litgpt_wheel, torchtune_wheel = sys.argv[1:]
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    import transformers

    from modelmem.job import Job
    from modelmem.trace._engine import run_trace

    lines = []
    for mt, fields in JOBS:
        cfg = tiny(mt, fields["dtype"])
        r = run_trace(cfg, Job(num_gpus=1, **fields), phase_detail=True)
        pp = r.phase_peaks
        rec = {"model_type": mt, "config": cfg, "fields": fields,
               "tokens": fields["batch_size"] * fields["seq_len"], "vocab_size": VOCAB,
               # the loss's buffers at the end of the forward (during nll_loss) and at the loss-backward peak
               "logits_end_of_forward": pp["logits"]["category_max"].get("logits", 0),
               "logits_loss_backward": pp["loss_backward"]["category_max"].get("logits", 0),
               "ops": {k: pp[k]["op"] for k in ("logits", "loss_backward")},
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
        lines.append(json.dumps(rec))
        print(mt, fields["dtype"], rec["logits_end_of_forward"] / (rec["tokens"] * VOCAB),
              rec["logits_loss_backward"] / (rec["tokens"] * VOCAB), file=sys.stderr)
    libraries = [("litgpt", "0.5.13", litgpt_wheel, LITGPT_JOBS, trace_litgpt),
                 ("torchtune", "0.6.1", torchtune_wheel, TORCHTUNE_JOBS, trace_torchtune),
                 ("torchtune", "0.6.1", torchtune_wheel, TORCHTUNE_JOBS, trace_torchtune_compiled)]
    for runtime, version, wheel, jobs, trace in libraries:
        compiled = trace is trace_torchtune_compiled
        if version not in Path(wheel).name:
            raise SystemExit(f"{wheel}: expected {runtime} {version}")
        for batch, seq_len in jobs:
            fields = dict(mode="lora", dtype="bf16", precision="pure", optimizer="adamw", batch_size=batch,
                          seq_len=seq_len, runtime=runtime, loss="chunked", compile=compiled)
            rec = {"model_type": runtime, "config": tiny("llama", "bf16"), "fields": fields,
                   "tokens": batch * seq_len, "vocab_size": VOCAB, **trace(wheel, batch, seq_len),
                   "versions": {"torch": torch.__version__, runtime: version}}
            lines.append(json.dumps(rec))
            print(runtime, batch, seq_len, compiled, rec["logits_end_of_forward"] / (rec["tokens"] * VOCAB),
                  rec["logits_loss_backward"] / (rec["tokens"] * VOCAB), file=sys.stderr)
    for head_kind, hidden in TRAINABLE_HEADS:
        for trace in (trace_torchtune, trace_torchtune_compiled):
            compiled = trace is trace_torchtune_compiled
            for batch, seq_len in TORCHTUNE_JOBS:
                fields = dict(mode="train", dtype="bf16", precision="pure", optimizer="adamw", batch_size=batch,
                              seq_len=seq_len, runtime="torchtune", loss="chunked", compile=compiled)
                config = {**tiny("llama", "bf16"), "hidden_size": hidden, "tie_word_embeddings": head_kind == "tied"}
                rec = {"model_type": "torchtune", "config": config, "fields": fields, "tokens": batch * seq_len,
                       "vocab_size": VOCAB, "head": head_kind,
                       **trace(torchtune_wheel, batch, seq_len, head_kind=head_kind, hidden=hidden),
                       "versions": {"torch": torch.__version__, "torchtune": "0.6.1"}}
                lines.append(json.dumps(rec))
                print("torchtune", head_kind, hidden, batch, seq_len, compiled,
                      rec["logits_end_of_forward"] / (rec["tokens"] * VOCAB),
                      rec["logits_loss_backward"] / (rec["tokens"] * VOCAB), file=sys.stderr)
    OUT.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
