"""The page's form: one input per job field, built from the fields' own declarations (modelmem.job.FIELD_SPECS:
kind, choices, help, the modes and runtimes it applies to) — this module adds only the label, the group and how an
empty input's default reads. Values are checked by `make_job` when the job is estimated, never here.

A field this table does not name still gets an input (in "More"), so every job knob stays reachable.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from modelmem import job as jobs

BASIC = "Basic"

# field: (label, group, how its default reads when the input is left empty — None: the declared default)
_LAYOUT: dict[str, tuple[str, str, str | None]] = {
    "mode": ("Mode", BASIC, None),
    "gpu": ("GPU", BASIC, None),
    "num_gpus": ("Number of GPUs", BASIC, "auto: the fewest that fit"),
    "batch_size": ("Batch size", BASIC, None),
    "seq_len": ("Sequence length", BASIC, None),
    "dtype": ("Dtype", BASIC, None),
    "quant": ("Quantization", BASIC, "none; nf4 for qlora"),
    "optimizer": ("Optimizer", "Training", None),
    "precision": ("Precision", "Training", "the runtime's habit: mixed for hf"),
    "grad_checkpointing": ("Gradient checkpointing", "Training", None),
    "lora_rank": ("LoRA rank", "Training", None),
    "lora_alpha": ("LoRA alpha", "Training", None),
    "lora_targets": ("LoRA targets", "Training", "PEFT's default for the model"),
    "optimizer_in_backward": ("Optimizer in backward", "Training", None),
    "activation_offload": ("Activation offload", "Training", None),
    "loss": ("Loss", "Training", None),
    "new_tokens": ("New tokens", "Inference", None),
    "kv_dtype": ("KV dtype", "Inference", "the dtype"),
    "attention": ("Attention", "Kernels", None),
    "compile": ("Compile", "Kernels", None),
    "strategy": ("Strategy", "Parallelism", "none on 1 GPU; fsdp training, tp inference"),
    "offload": ("Offload", "Parallelism", None),
    "tp": ("Tensor parallel", "Parallelism", None),
    "pp": ("Pipeline stages", "Parallelism", None),
    "cp": ("Context parallel", "Parallelism", None),
    "ep": ("Expert parallel", "Parallelism", None),
    "sequence_parallel": ("Sequence parallel", "Parallelism", None),
    "grad_accum": ("Gradient accumulation", "Parallelism", None),
    "pp_schedule": ("Pipeline schedule", "Parallelism", None),
    "pp_virtual": ("Virtual stages", "Parallelism", None),
    "shard_group": ("Shard group (HSDP)", "Parallelism", "0: all ranks"),
    "gpus_per_node": ("GPUs per node", "Parallelism", None),
    "runtime": ("Runtime", "Runtime", None),
    "runtime_version": ("Runtime version", "Runtime", "the version its profile was read from"),
    "quant_group_size": ("Quant group size", "Runtime", None),
    "gpu_memory_utilization": ("GPU memory utilization", "Runtime", None),
    "max_model_len": ("Max model len", "Runtime", "the model's"),
    "max_num_seqs": ("Max num seqs", "Runtime", None),
    "block_size": ("Block size", "Runtime", None),
    "gpu_layers": ("GPU layers", "Runtime", "all"),
    "mfu": ("MFU", "Speed", "0.40"),
    "interconnect": ("Interconnect", "Speed", None),
}
_QUANT_EXAMPLES = ("gguf:Q4_K_M", "gguf:Q8_0")


@dataclass(frozen=True)
class Field:
    name: str  # the job field (query-string key, keyword argument)
    label: str  # the accessible label, named after the field
    group: str
    kind: str  # the declaration's kind: choice, int, float, bool, quant, targets, gpus, gpu, version, …
    choices: tuple[str, ...]
    default: str  # what an empty input means
    help: str  # the declaration's help, plus where it applies


def _spec(name: str) -> object | None:
    return getattr(jobs, "FIELD_SPECS", {}).get(name)


def _default(name: str) -> str:
    value = getattr(jobs.Job(), name)
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)


def _applies(spec: object) -> str:
    modes = tuple(getattr(spec, "modes", ()) or ())
    runtimes = tuple(getattr(spec, "runtimes", ()) or ())
    parts = []
    if modes and set(modes) != set(jobs.MODES):
        parts.append("/".join(modes))
    if runtimes:
        parts.append("runtime " + "/".join(runtimes))
    return f" ({' · '.join(parts)} only)" if parts else ""


def fields() -> tuple[Field, ...]:
    """Every job field: those laid out here in this order, then any other, in "More"."""
    names = [n for n in _LAYOUT if n in jobs.FIELDS] + [n for n in jobs.FIELDS if n not in _LAYOUT]
    out = []
    for name in names:
        label, group, default = _LAYOUT.get(name, (name.replace("_", " ").capitalize(), "More", None))
        spec = _spec(name)
        kind = getattr(spec, "kind", "text")
        choices = tuple(getattr(spec, "choices", ()) or ())
        if kind == "quant":
            choices = (*jobs.QUANTS, *_QUANT_EXAMPLES)
        help_text = getattr(spec, "help", "") + (_applies(spec) if spec is not None else "")
        out.append(Field(name, label, group, kind, choices, default if default is not None else _default(name), help_text))
    return tuple(out)


def _input(f: Field, gpus: list) -> str:
    e = html.escape
    attrs = f'id="f-{e(f.name)}" name="{e(f.name)}" data-field="{e(f.name)}" title="{e(f.help)}"'
    if f.kind in ("choice", "bool", "gpu"):
        options = [f'<option value="">default ({e(f.default)})</option>']
        if f.kind == "gpu":
            options += [f'<option value="{e(g.name)}">{e(g.name)} · {e(g.label)} · {g.memory_bytes / 1024**3:.1f} GiB</option>'
                        for g in gpus]
        else:
            options += [f'<option value="{e(c)}">{e(c)}</option>' for c in (f.choices if f.kind == "choice" else ("true", "false"))]
        return f"<select {attrs}>{''.join(options)}</select>"
    listing = ""
    if f.choices:
        listing = f'<datalist id="l-{e(f.name)}">' + "".join(f'<option value="{e(c)}">' for c in f.choices) + "</datalist>"
        attrs += f' list="l-{e(f.name)}"'
    kind = "number" if f.kind == "int" else "text"
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
