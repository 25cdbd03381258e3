"""The page's form: one input per job field (JOBS.md), grouped, each labelled after its field, defaults shown.

Rendering data only — values are checked by `modelmem.job.make_job` when the job is estimated, never here. A job
field this table does not describe still gets a plain text input (in "More"), so every knob stays reachable.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass

from modelmem import job as jobs

BASIC = "Basic"


@dataclass(frozen=True)
class Field:
    name: str  # the job field (query-string key, keyword argument)
    label: str  # the accessible label, named after the field
    group: str
    kind: str  # "select", "number", "text", "bool"
    choices: tuple[str, ...] = ()
    default: str = ""  # what an empty input means
    help: str = ""


def _d(name: str) -> str:
    value = getattr(jobs.Job(), name)
    return "auto" if value == "auto" else str(value).lower() if isinstance(value, bool) else str(value)


_TABLE: tuple[Field, ...] = (
    Field("mode", "Mode", BASIC, "select", jobs.MODES, _d("mode"), "full training is train"),
    Field("gpu", "GPU", BASIC, "gpu", (), _d("gpu"), "a catalog GPU (a link may also name a size: gpu=24GiB)"),
    Field("num_gpus", "Number of GPUs", BASIC, "text", (), "auto", "an integer, or auto: the fewest that fit"),
    Field("batch_size", "Batch size", BASIC, "number", (), _d("batch_size"), "sequences per step (per GPU for data parallel)"),
    Field("seq_len", "Sequence length", BASIC, "number", (), _d("seq_len"), "training: tokens per sequence; inference: prompt tokens"),
    Field("dtype", "Dtype", BASIC, "select", jobs.DTYPES, _d("dtype"), "dtype of unquantized weights and compute"),
    Field("quant", "Quantization", BASIC, "text", (*jobs.QUANTS, "gguf:Q4_K_M", "gguf:Q8_0"), "none (nf4 for qlora)",
          "weight quantization; for qlora the frozen base; gguf:<TYPE> for llama.cpp"),
    Field("optimizer", "Optimizer", "Training", "select", jobs.OPTIMIZERS, _d("optimizer")),
    Field("precision", "Precision", "Training", "select", jobs.PRECISIONS, "mixed for hf, pure otherwise",
          "pure: weights and grads in dtype; mixed: fp32 master weights"),
    Field("grad_checkpointing", "Gradient checkpointing", "Training", "select", jobs.CHECKPOINTING, _d("grad_checkpointing"),
          "full recomputes each layer in backward: far fewer saved activations"),
    Field("lora_rank", "LoRA rank", "Training", "number", (), _d("lora_rank")),
    Field("lora_alpha", "LoRA alpha", "Training", "number", (), _d("lora_alpha")),
    Field("lora_targets", "LoRA targets", "Training", "text", ("all-linear", "q_proj,v_proj"), "PEFT's default for the model",
          "all-linear or a comma list of module names"),
    Field("optimizer_in_backward", "Optimizer in backward", "Training", "bool", (), _d("optimizer_in_backward"),
          "step each parameter as its gradient arrives"),
    Field("activation_offload", "Activation offload", "Training", "bool", (), _d("activation_offload"),
          "saved activations moved to CPU during forward"),
    Field("loss", "Loss", "Training", "select", jobs.LOSSES, _d("loss"), "chunked never materializes all fp32 logits"),
    Field("new_tokens", "New tokens", "Inference", "number", (), _d("new_tokens"), "generated tokens"),
    Field("kv_dtype", "KV dtype", "Inference", "select", jobs.KV_DTYPES, "the dtype", "KV-cache dtype"),
    Field("attention", "Attention", "Kernels", "select", jobs.ATTENTIONS, _d("attention"), "eager stores the s×s scores"),
    Field("compile", "Compile", "Kernels", "bool", (), _d("compile"), "torch.compile"),
    Field("strategy", "Strategy", "Parallelism", "select", jobs.STRATEGIES, "none on 1 GPU; fsdp (training) or tp (inference)",
          "how the GPUs share the work"),
    Field("offload", "Offload", "Parallelism", "select", jobs.OFFLOADS, _d("offload"), "CPU offload (ZeRO-Offload / FSDP)"),
    Field("runtime", "Runtime", "Runtime", "select", jobs.RUNTIMES, _d("runtime"), "the program whose memory habits apply"),
    Field("quant_group_size", "Quant group size", "Runtime", "number", (), _d("quant_group_size"), "int4, gptq, awq"),
    Field("gpu_memory_utilization", "GPU memory utilization", "Runtime", "text", (), _d("gpu_memory_utilization"), "vLLM only"),
    Field("max_model_len", "Max model len", "Runtime", "number", (), "the model's", "vLLM only"),
    Field("max_num_seqs", "Max num seqs", "Runtime", "number", (), _d("max_num_seqs"), "vLLM only"),
    Field("block_size", "Block size", "Runtime", "number", (), _d("block_size"), "vLLM only"),
    Field("gpu_layers", "GPU layers", "Runtime", "number", (), "all", "llama.cpp only: layers offloaded to the GPU"),
    Field("mfu", "MFU", "Speed", "text", (), "0.40", "model-FLOPs utilisation for the time estimates, in (0, 1]"),
    Field("interconnect", "Interconnect", "Speed", "select", getattr(jobs, "INTERCONNECTS", ()), "auto",
          "the link the time estimates move collectives over"),
)


def fields() -> tuple[Field, ...]:
    """Every job field, described ones first in table order, then any the table does not know yet."""
    known = {f.name for f in _TABLE}
    present = set(jobs.FIELDS)
    extra = tuple(Field(name, name.replace("_", " ").capitalize(), "More", "text", (), "", "")
                  for name in jobs.FIELDS if name not in known)
    return tuple(f for f in _TABLE if f.name in present) + extra


def _input(f: Field, gpus: list) -> str:
    e = html.escape
    attrs = f'id="f-{e(f.name)}" name="{e(f.name)}" data-field="{e(f.name)}" title="{e(f.help)}"'
    if f.kind in ("select", "bool", "gpu"):
        options = [f'<option value="">default ({e(f.default)})</option>']
        if f.kind == "gpu":
            options += [f'<option value="{e(g.name)}">{e(g.name)} · {e(g.label)} · {g.memory_bytes / 1024**3:.1f} GiB</option>' for g in gpus]
        else:
            options += [f'<option value="{e(c)}">{e(c)}</option>' for c in (f.choices or ("true", "false"))]
        return f"<select {attrs}>{''.join(options)}</select>"
    listing = ""
    if f.choices:
        listing = f'<datalist id="l-{e(f.name)}">' + "".join(f'<option value="{e(c)}">' for c in f.choices) + "</datalist>"
        attrs += f' list="l-{e(f.name)}"'
    kind = "number" if f.kind == "number" else "text"
    extra = ' min="0" step="1"' if kind == "number" else ""
    return f'<input type="{kind}" {attrs}{extra} placeholder="default: {e(f.default)}" autocomplete="off">{listing}'


def render_fields(gpus: list) -> str:
    """The form's inputs as HTML: basic fields open, every other group folded in a <details>."""
    e = html.escape
    groups: dict[str, list[Field]] = {}
    for f in fields():
        groups.setdefault(f.group, []).append(f)
    out = []
    for group, items in groups.items():
        rows = "".join(
            f'<div class="row"><label for="f-{e(f.name)}">{e(f.label)}</label>{_input(f, gpus)}'
            f'<small>{e(f.help)}</small></div>' for f in items)
        if group == BASIC:
            out.append(f'<fieldset class="basic"><legend>Job</legend>{rows}</fieldset>')
        else:
            out.append(f'<details class="group"><summary>{e(group)}</summary>{rows}</details>')
    return "\n".join(out)


def describe() -> list[dict]:
    return [dataclasses.asdict(f) for f in fields()]
