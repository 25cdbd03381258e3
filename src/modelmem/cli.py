"""The command line: parse arguments, call the public API with keyword arguments, render. The only place that prints."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from modelmem.errors import ModelmemError
from modelmem.job import DEFAULTS, FIELD_SPECS, FIELDS, METHODS, MODES, cli_flag
from modelmem.units import BYTES_IN_GB, fmt_count, gib

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--gpu-memory 36GiB` must not be read as --gpu-memory-utilization (issue 9).
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        message = message.replace("\n", " ")  # a value with a newline in it must not break the one-line error
        sys.stderr.write(f"modelmem: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def _job_flags(p: argparse.ArgumentParser) -> None:
    """Every job field as a flag, built from its declaration on modelmem.job.Job; make_job checks the values."""
    g = p.add_argument_group("job (shared/validation/JOBS.md; omitted fields take defaults)")
    for name, spec in FIELD_SPECS.items():
        where = []
        if spec.modes != MODES:
            where.append("/".join(spec.modes))
        if spec.runtimes:
            where.append(" or ".join(spec.runtimes) + " only")
        allowed = spec.allowed()
        text = spec.help if allowed == spec.help else f"{allowed}: {spec.help}"
        if spec.default_rule is None and DEFAULTS[name] is not None and "default" not in text:
            text += f" (default {str(DEFAULTS[name]).lower()})"
        g.add_argument(cli_flag(name), dest=name, help=(f"[{'; '.join(where)}] " if where else "") + text)


def _job_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modelmem", description="GPU memory for an LLM job, per GPU and in bytes.")
    parser.add_argument("--version", action="version", version="modelmem 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    est = sub.add_parser("estimate", help="memory per GPU, GPUs needed, whether it fits",
                         description="Estimate per-GPU memory by component, the three totals and the GPU count.")
    est.add_argument("model", help="catalog name or alias, Hugging Face id, config.json, model folder, .gguf, or a size like 7B")
    est.add_argument("--method", default="detailed", help=f"{', '.join(METHODS)} or both (seed: the article's rules of thumb; both: side by side)")
    est.add_argument("--revision", help="Hub revision (commit, branch or tag)")
    est.add_argument("--json", action="store_true", help="print the JSON result")
    est.add_argument("--emit", metavar="RUNTIME", help="print launch settings instead: accelerate, deepspeed, torchtune, vllm, llamacpp")
    _job_flags(est)
    _add_estimate_plot(est)

    par = sub.add_parser("params", help="trainable and total parameters (print_trainable_parameters)",
                         description="Print `trainable params: X || all params: Y || trainable%: Z` and the breakdown.")
    par.add_argument("model", help="as for estimate")
    par.add_argument("--revision", help="Hub revision (commit, branch or tag)")
    par.add_argument("--json", action="store_true", help="print JSON")
    _job_flags(par)

    mod = sub.add_parser("models", help="list the built-in model catalog", description="List catalog models and aliases.")
    mod.add_argument("filter", nargs="?", help="substring to filter by")
    mod.add_argument("--json", action="store_true", help="print JSON")

    gp = sub.add_parser("gpus", help="list the GPU catalog",
                        description="List GPUs: device-reported memory, nominal GB, bandwidth, dense bf16 throughput "
                                    "(--json adds fp16, fp8, link and the source of every figure).")
    gp.add_argument("filter", nargs="?", help="substring to filter by (e.g. apple, mi3, rtx)")
    gp.add_argument("--json", action="store_true", help="print JSON")

    for name, helptext in (("trace", "exact peak by running the real model code on fake tensors (needs modelmem[trace])"),
                           ("measure", "run the job on a real CUDA GPU and read torch's counters (needs a GPU)")):
        t = sub.add_parser(name, help=helptext, description=helptext)
        t.add_argument("model", help="as for estimate")
        t.add_argument("--revision", help="Hub revision (commit, branch or tag)")
        t.add_argument("--json", action="store_true", help="print JSON")
        _job_flags(t)
    _add_fit_parser(sub)
    _add_plan_parser(sub)
    _add_sweep_parser(sub)
    _add_serve_parser(sub)
    return parser


def _render_estimate(est: Any) -> str:
    m, j, pg = est.model, est.job, est.per_gpu
    tokens = f"batch {j.batch_size} × {j.seq_len} tokens" + (f" + {j.new_tokens} new" if not j.training and j.new_tokens else "")
    lines = [
        f"{m.name} · {j.mode} · {m.stored_as or j.dtype}{'' if j.quant == 'none' else ' ' + j.quant} · {tokens} · "
        f"{est.method} method",
        f"params {fmt_count(m.params)} · trainable {fmt_count(m.trainable_params)} · active {fmt_count(m.active_params)}",
        "",
        f"{'per GPU':<22}{'GiB':>10}",
    ]
    for name, value in pg.components.items():
        if value:
            lines.append(f"  {name:<20}{gib(value):>10.2f}")
    lines.append(f"{'allocated_peak':<22}{gib(pg.allocated_peak):>10.2f}")
    lines.append(f"{'reserved_peak':<22}{gib(pg.reserved_peak):>10.2f}")
    lines.append(f"{'device_total':<22}{gib(pg.device_total):>10.2f}")
    lines.append("")
    shown = pg.device_total if est.method != "seed" else est.total_bytes / est.num_gpus
    cap = est.gpu.usable_bytes if est.method != "seed" else est.gpu.nominal_gb * BYTES_IN_GB
    verdict = "fits" if est.fits else "does not fit"
    strategy = "" if est.num_gpus == 1 else f" ({j.strategy})"
    size = f"{gib(cap):.1f} GiB" + (f" ({est.gpu.nominal_gb:g} GB nominal, the seed's GPU size)" if est.method == "seed" else "")
    lines.append(f"{verdict} {est.num_gpus}× {est.gpu.label or est.gpu.name}{strategy}: {gib(shown):.1f} of {size} per GPU"
                 + (f" ({gib(cap - shown):.1f} GiB free)" if est.fits else ""))
    if est.gpu.usable_bytes < est.gpu.memory_bytes:
        lines.append(f"· Metal lets the GPU use {gib(est.gpu.usable_bytes):.1f} of {gib(est.gpu.memory_bytes):.1f} GiB of unified "
                     "memory (recommendedMaxWorkingSetSize); the OS and other apps need the rest")
    if pg.serving is not None:
        sv = pg.serving
        lines.append(f"serving: GPU KV cache size: {sv.kv_cache_tokens:,} tokens ({sv.kv_cache_blocks:,} blocks) · "
                     f"Maximum concurrency for {sv.max_model_len:,} tokens per request: {sv.max_concurrency:.2f}x")
    if pg.cpu_ram is not None:
        lines.append(f"CPU RAM: {gib(pg.cpu_ram):.2f} GiB for what stays on the CPU")
    for note in est.explanation:
        lines.append(f"· {note}")
    if est.speed is not None:
        lines.append(est.speed.line())
        lines += [f"  - {a}" for a in est.speed.assumptions]
    return "\n".join(lines)


def _render_suggestions(suggestions: Sequence[Any], best: int = 3) -> list[str]:
    """The few best fixes, each as the flags to add and what the estimator says they give."""
    shown = [s for s in suggestions if s.fits][:best] or list(suggestions)[:best]
    if not shown:
        return []
    width = max(len(s.flags()) for s in shown)
    lines = ["best fixes:" if shown[0].fits else "closest fixes (none fits alone):"]
    for s in shown:
        verdict = "fits" if s.fits else "does not fit"
        where = f"{s.num_gpus}× {s.gpu}" if s.gpu else f"{s.num_gpus}×"
        note = f" ({s.note})" if s.note else ""
        lines.append(f"  {s.flags():<{width}}  {verdict} {where}: {gib(s.device_total):.1f} GiB per GPU{note}")
    return lines


def _verdict_first(est: Any) -> str:
    """The estimate led by its verdict on the user's GPUs and the best fixes when it does not fit."""
    body = _render_estimate(est)
    if est.fits or est.method != "detailed":
        return body
    title, params, rest = body.split("\n", 2)
    verdict = (f"does not fit {est.num_gpus}× {est.gpu.label or est.gpu.name}: {gib(est.per_gpu.device_total):.1f} GiB "
               f"of {gib(est.gpu.usable_bytes):.1f} per GPU")
    return "\n".join([title, params, "", verdict, *_render_suggestions(est.suggestions), rest])


def _cmd_estimate(args: argparse.Namespace) -> str:
    import modelmem

    if args.method == "both":
        return _cmd_estimate_both(args)
    kwargs = _job_kwargs(args)
    est = modelmem.estimate(args.model, method=args.method, revision=args.revision, **kwargs)
    if args.plot:
        from modelmem.plot import plot_estimate

        plot_estimate(est, args.plot)
    if getattr(args, "emit", None):
        from modelmem.planner.emit import emit

        return emit(est, args.emit)
    if args.json:
        return json.dumps(est.to_dict(), indent=2)
    if "num_gpus" not in kwargs and est.num_gpus > 1 and est.method == "detailed":
        # The count was left to `auto`, which found more than one GPU: lead with the verdict on one GPU (what a
        # user who named a GPU most likely has); the multi-GPU answer is one of the fixes.
        est = modelmem.estimate(args.model, method=args.method, revision=args.revision, **kwargs, num_gpus=1)
    return _verdict_first(est)


def _add_fit_parser(sub: Any) -> None:
    from modelmem.planner.fit import FIT_FIELDS

    f = sub.add_parser("fit", help="the largest batch, sequence, rank, GPU layers… that fits",
                       description="The largest value of one job field that fits on the job's GPUs (--num-gpus "
                                   "defaults to 1): the value fits and value + 1 does not.")
    f.add_argument("model", help="as for estimate")
    f.add_argument("--max", required=True, metavar="FIELD", help=", ".join(FIT_FIELDS))
    f.add_argument("--revision", help="Hub revision (commit, branch or tag)")
    f.add_argument("--json", action="store_true", help="print JSON: field, max, the estimate at the max")
    _job_flags(f)


def _add_plan_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="the layouts that need the fewest GPUs (strategy, tp/pp/cp/ep, savers)",
                       description="Search data-parallel strategies, tensor/pipeline/context/expert degrees, "
                                   "checkpointing, micro-batching and offload for the ten layouts that need the "
                                   "fewest GPUs (then nodes, then most headroom). Job flags you give are kept fixed.")
    p.add_argument("model", help="as for estimate")
    p.add_argument("--max-gpus", dest="max_gpus", type=int, default=1024, help="largest GPU count searched (default 1024)")
    p.add_argument("--top", type=int, default=10, help="plans shown (default 10)")
    p.add_argument("--revision", help="Hub revision (commit, branch or tag)")
    p.add_argument("--json", action="store_true", help="print JSON: {\"plans\": [...]}")
    p.add_argument("--emit", metavar="RUNTIME", help="print the best plan's launch settings: accelerate, deepspeed, torchtune, vllm, llamacpp")
    p.add_argument("--rank", default="fewest", help="fewest (GPUs, then nodes, then headroom; default), time (most "
                   "estimated tokens/s) or cost (fewest USD per million tokens at your --price): the candidate "
                   "layouts, each on its fewest GPUs, re-ordered")
    p.add_argument("--price", action="append", default=[], metavar="NAME=USD_PER_HOUR",
                   help="your price per GPU-hour for a GPU (repeatable; modelmem has no built-in prices)")
    _job_flags(p)


def _layout_label(job: Any) -> str:
    parts = [] if job.strategy == "none" else ["fsdp (hsdp)" if getattr(job, "shard_group", 0) else job.strategy]
    for name in ("tp", "pp", "cp", "ep"):
        if int(getattr(job, name, 1) or 1) > 1:
            parts.append(f"{name}{getattr(job, name)}")
    if getattr(job, "sequence_parallel", False):
        parts.append("sp")
    return " ".join(parts) or "1 GPU"


def _savers_label(job: Any) -> str:
    parts = []
    if job.training:
        if job.grad_checkpointing != "none":
            parts.append(f"ckpt {job.grad_checkpointing}")
        accum = int(getattr(job, "grad_accum", 1) or 1)
        parts.append(f"mb {job.batch_size}×{accum}")
        if job.offload != "none":
            parts.append(f"offload {job.offload}")
    return ", ".join(parts) or "-"


_RANKED_CANDIDATES = 200  # plans gathered before re-ordering by time or cost


def _cmd_plan(args: argparse.Namespace) -> str:
    import modelmem
    from modelmem.planner.layouts import parse_gpus, search

    kwargs = _job_kwargs(args)
    gpus = parse_gpus(kwargs.pop("gpu", "h100-80gb"))
    gpn = int(kwargs.get("gpus_per_node", 8) or 8)
    if args.max_gpus < 1:
        from modelmem.errors import InvalidJobError

        raise InvalidJobError("max_gpus", args.max_gpus, "an integer ≥ 1")
    from modelmem.speed import attach, parse_prices, plan_ranking, throughput_tokens_per_s, usd_per_million_tokens

    prices = parse_prices(args.price)
    spec = modelmem.resolve_model(args.model, revision=args.revision)
    ranking = plan_ranking(args.rank, spec, prices)
    top = max(1, args.top)
    # The search prunes by GPU count; to rank by time or cost it keeps every layout's fewest-GPU plans, then re-orders.
    plans = search(spec, kwargs, gpus=gpus, gpus_per_node=gpn, max_gpus=args.max_gpus,
                   top=top if ranking is None else max(top, _RANKED_CANDIDATES))
    if ranking is not None:
        plans = tuple(sorted(plans, key=ranking)[:top])
    if args.emit:
        from modelmem.errors import InvalidJobError
        from modelmem.planner.emit import emit

        if not plans:
            raise InvalidJobError("max_gpus", args.max_gpus, "a bound under which some layout fits (none does)")
        first_error = None
        for p in plans:  # the best plan the runtime can express (DeepSpeed's JSON has no pipelines, for one)
            try:
                return emit(p.estimate, args.emit, gpn)
            except InvalidJobError as e:
                first_error = first_error or e
        raise first_error
    # Each ranked plan's tokens/s and USD per million tokens, from its estimate with speed attached.
    rates = {id(p): (throughput_tokens_per_s(t := attach(p.estimate, spec)), usd_per_million_tokens(t, prices))
             for p in plans} if ranking is not None else {}
    if args.json:
        rows = []
        for p in plans:
            row = p.to_dict()
            if ranking is not None:
                row["tokens_per_s"], row["usd_per_million_tokens"] = rates[id(p)]
            rows.append(row)
        return json.dumps({"rank": args.rank, "plans": rows}, indent=2)
    if not plans:
        return f"no layout fits on up to {args.max_gpus} GPUs of {'any kind' if gpus == 'any' else ', '.join(gpus)}"
    j = plans[0].job
    lines = [f"{plans[0].estimate.model.name} · {j.mode} · {j.dtype} · batch {j.batch_size} × {j.seq_len} tokens · "
             f"{gpn} GPUs per node · GiB per GPU", ""]
    header = f"{'#':>2}  {'GPUs':>4} {'nodes':>5}  {'gpu':<12} {'layout':<22} {'savers':<38} {'per GPU':>8} {'free':>6} {'CPU/node':>9}"
    if ranking is not None:
        header += f" {'tok/s':>9} {'$/Mtok':>8}"
    lines.append(header)
    for i, p in enumerate(plans, 1):
        cpu = f"{gib(p.cpu_ram_per_node):.0f} GiB" if p.cpu_ram_per_node else "-"
        line = (f"{i:>2}  {p.num_gpus:>4} {p.nodes:>5}  {p.gpu.name:<12} {_layout_label(p.job):<22} {_savers_label(p.job):<38} "
                f"{gib(p.per_gpu.device_total):>8.1f} {gib(p.headroom_bytes):>6.1f} {cpu:>9}")
        if ranking is not None:
            rate, usd = rates[id(p)]
            line += f" {rate:>9,.0f}" if rate else f" {'-':>9}"
            line += f" {usd:>8.2f}" if usd is not None else f" {'-':>8}"
        lines.append(line)
    if ranking is not None:
        lines += ["", f"ranked by {args.rank}: estimated tokens/s at the job's MFU (see `estimate` for the assumptions)"
                      + ("; USD from your --price" if prices else "")]
    return "\n".join(lines)


def _cmd_fit(args: argparse.Namespace) -> str:
    import modelmem

    r = modelmem.fit(args.model, args.max, revision=args.revision, **_job_kwargs(args))
    if args.json:
        return json.dumps(r.to_dict(), indent=2)
    est = r.estimate
    gpus = f"{est.num_gpus}× {est.gpu.label or est.gpu.name}"
    if r.max is None:
        lines = [f"no {r.field} fits {gpus}: {r.reason}", *_render_suggestions(r.suggestions)]
        return "\n".join(lines)
    head = f"largest {r.field} on {gpus}: {r.max} ({gib(est.per_gpu.device_total):.1f} of {gib(est.gpu.usable_bytes):.1f} GiB per GPU"
    if r.over is not None:
        head += f"; {r.max + 1} needs {gib(r.over.per_gpu.device_total):.1f} GiB"
    head += ")"
    if r.reason:
        head += f"\n· {r.reason}"
    return head + "\n\n" + _render_estimate(est)


def _cmd_params(args: argparse.Namespace) -> str:
    import modelmem
    from modelmem.job import make_job
    from modelmem.counts import count_params
    from modelmem.trainable import trainable_params

    kwargs = _job_kwargs(args)
    kwargs.setdefault("mode", "train")
    job = make_job(**kwargs)
    spec = modelmem.resolve_model(args.model, revision=args.revision)
    tp = trainable_params(spec, job)
    counts = count_params(spec)
    breakdown = {k: getattr(counts, k) for k in ("embeddings", "position_embeddings", "attention", "mlp", "experts", "router", "norms", "lm_head", "other")}
    if args.json:
        return json.dumps({**tp.to_dict(), "active_params": counts.active, "components": breakdown}, indent=2)
    lines = [tp.line(), ""]
    lines += [f"  {k:<20}{v:>18,d}" for k, v in breakdown.items() if v]
    lines.append(f"  {'total':<20}{counts.total:>18,d}")
    if counts.active != counts.total:
        lines.append(f"  {'active per token':<20}{counts.active:>18,d}")
    if tp.lora_targets:
        lines.append(f"LoRA targets: {tp.lora_targets}")
    return "\n".join(lines)


def _cmd_models(args: argparse.Namespace) -> str:
    from modelmem.catalog.models import entries

    rows = [e for e in entries() if not args.filter or args.filter.lower() in (e.id + " " + " ".join(e.aliases)).lower()]
    if args.json:
        return json.dumps([{"id": e.id, "aliases": list(e.aliases), "params": e.param_count, "source": e.source} for e in rows], indent=2)
    return "\n".join(f"{e.id:<60} {(e.aliases[0] if e.aliases else ''):<28} {fmt_count(e.param_count) if e.param_count else '-':>8}" for e in rows)


def _cmd_gpus(args: argparse.Namespace) -> str:
    from modelmem.catalog.gpus import aliases, gpus

    want = (args.filter or "").lower()
    rows = [g for g in gpus() if want in f"{g.name} {g.label} {g.vendor} {g.platform}".lower()]
    if args.json:
        return json.dumps([{**g.to_dict(), "aliases": aliases(g)} for g in rows], indent=2)

    def tflops(x: int | None) -> str:
        return f"{x / 1e12:,.0f}" if x else "-"

    head = f"{'name':<20} {'label':<48} {'GiB':>8} {'usable':>8} {'GB/s':>7} {'bf16 TF':>8} {'fp8 TF':>7}"
    return "\n".join([head] + [
        f"{g.name:<20} {g.label:<48} {gib(g.memory_bytes):>8.2f} {gib(g.usable_bytes):>8.2f} "
        f"{(g.bandwidth_bytes_per_s or 0) / 1e9:>7,.0f} {tflops(g.bf16_flops or g.fp16_flops):>8} {tflops(g.fp8_flops):>7}"
        for g in rows])


def _cmd_trace(args: argparse.Namespace, measure: bool = False) -> str:
    import modelmem
    from modelmem.job import make_job

    job = make_job(**_job_kwargs(args))
    spec = modelmem.resolve_model(args.model, revision=args.revision)
    import modelmem.trace as tr

    from modelmem._progress import Ticker

    with Ticker(sys.stderr, "measuring on the GPU" if measure else "tracing on fake tensors") as ticker:
        est = tr.measure(spec, job) if measure else tr.trace(spec, job, progress=ticker.stage)
    return json.dumps(est.to_dict(), indent=2) if args.json else _render_estimate(est)


COMMANDS = {
    "estimate": _cmd_estimate,
    "params": _cmd_params,
    "models": _cmd_models,
    "gpus": _cmd_gpus,
    "fit": _cmd_fit,
    "plan": lambda a: _cmd_plan(a),
    "trace": _cmd_trace,
    "measure": lambda a: _cmd_trace(a, measure=True),
    "sweep": lambda a: _cmd_sweep(a),
    "serve": lambda a: _cmd_serve(a),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = COMMANDS[args.command](args)
        for w in caught:
            if issubclass(w.category, UserWarning) and w.category.__module__.startswith("modelmem"):
                sys.stderr.write(f"modelmem: note: {w.message}\n")
    except ModelmemError as e:
        sys.stderr.write(f"modelmem: error: {str(e).replace(chr(10), ' ')}\n")  # always one line
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    sys.stdout.write(out + "\n")
    return 0


# --- estimate --plot and --method both ------------------------------------------------------------------------

def _add_estimate_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plot", metavar="FILE", help="also draw the per-GPU components as a stacked bar against the GPU "
                                                   "(FILE.png or FILE.svg; needs modelmem[plot])")


def _render_comparison(c: Any) -> str:
    d, s = c.detailed, c.seed
    j = d.job
    gpu = f"{d.num_gpus}× {d.gpu.label or d.gpu.name}" + ("" if d.num_gpus == 1 else f" ({j.strategy})")
    width = max(22, *(len(r.component) + 2 for r in c.rows))
    lines = [
        f"{d.model.name} · {j.mode} · {j.dtype}{'' if j.quant == 'none' else ' ' + j.quant} · batch {j.batch_size} × {j.seq_len} tokens",
        f"per GPU on {gpu}, {gib(d.gpu.usable_bytes):.2f} GiB each ("
        + ("as the device reports it" if d.gpu.usable_bytes == d.gpu.memory_bytes else "what Metal lets the GPU use")
        + "), both columns in GiB",
        "",
        f"{'component':<{width}}{'detailed':>10}{'seed':>10}  why they differ",
    ]
    for r in c.rows:
        cell = lambda v: f"{gib(v):>10.2f}" if v else f"{'-':>10}"  # noqa: E731
        lines.append(f"  {r.component:<{width - 2}}{cell(r.detailed)}{cell(r.seed)}  {r.why}")
    pg = d.per_gpu
    seed_total = s.total_bytes / s.num_gpus
    lines += [
        f"{'allocated_peak':<{width}}{gib(pg.allocated_peak):>10.2f}{'':>10}",
        f"{'reserved_peak':<{width}}{gib(pg.reserved_peak):>10.2f}{'':>10}  allocator slack, which the seed's allowance stands for",
        f"{'device_total':<{width}}{gib(pg.device_total):>10.2f}{gib(seed_total):>10.2f}  what the GPU must hold; the seed's total includes its 25 %",
        f"{'verdict':<{width}}{'fits' if d.fits else 'no fit':>10}{'fits' if c.seed_fits else 'no fit':>10}  against {gib(d.gpu.usable_bytes):.2f} GiB per GPU",
        "",
        f"seed formula: {c.formula} bytes = {s.total_bytes / BYTES_IN_GB:.2f} GB = {gib(s.total_bytes):.2f} GiB for all GPUs",
        f"seed's own GPU count: ceil({s.total_bytes / BYTES_IN_GB:.2f} GB / {d.gpu.nominal_gb:g} GB nominal) = {c.seed_gpus_needed}"
        f"; detailed: {d.num_gpus}",
    ]
    return "\n".join(lines)


def _cmd_estimate_both(args: argparse.Namespace) -> str:
    from modelmem.compare import compare

    c = compare(args.model, revision=args.revision, **_job_kwargs(args))
    if args.plot:
        from modelmem.plot import plot_estimate

        plot_estimate(c.detailed, args.plot)
    return json.dumps(c.to_dict(), indent=2) if args.json else _render_comparison(c)


# --- sweep ----------------------------------------------------------------------------------------------------

def _add_sweep_parser(sub: Any) -> None:
    sw = sub.add_parser(
        "sweep", help="estimate over a grid of job values (table, --json, --csv, --plot)",
        description="Estimate the job at every value of one or two job fields. VALUES: a comma list "
                    "(optimizer=adamw,adamw-8bit,adafactor,sgd), a range start:stop[:+step] (batch_size=1:8) or a "
                    "geometric range start:stop:xFACTOR (seq_len=512:32768:x2).")
    sw.add_argument("model", help="as for estimate")
    sw.add_argument("--over", action="append", required=True, metavar="FIELD=VALUES",
                    help="a job field and its values; give twice for a grid (the first varies slowest)")
    sw.add_argument("--method", default="detailed", help=", ".join(METHODS))
    sw.add_argument("--revision", help="Hub revision (commit, branch or tag)")
    out = sw.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a list with one estimate JSON per point, in order")
    out.add_argument("--csv", action="store_true", help="print CSV: the swept values, totals and components in bytes")
    sw.add_argument("--plot", metavar="FILE", help="draw the sweep with the GPU line (FILE.png or FILE.svg; needs modelmem[plot])")
    _job_flags(sw)


def _cmd_sweep(args: argparse.Namespace) -> str:
    from modelmem._progress import Counter
    from modelmem.sweep import parse_over, sweep

    job = _job_kwargs(args)
    axes = [parse_over(spec, job) for spec in args.over]
    if args.plot:
        from modelmem.plot import _check_path

        _check_path(args.plot)  # a bad file name fails before the sweep runs
    points = sweep(args.model, axes, method=args.method, revision=args.revision,
                   progress=Counter(sys.stderr, "sweep"), **job)
    if args.plot:
        from modelmem.plot import plot_sweep

        plot_sweep(points, args.plot)
    fields = [a.field for a in axes]
    names = list(dict.fromkeys(k for pt in points for k in pt.estimate.per_gpu.components))
    totals = ("allocated_peak", "reserved_peak", "device_total")
    if args.json:
        return json.dumps([pt.estimate.to_dict() for pt in points], indent=2)
    if args.csv:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*fields, "num_gpus", "fits", *totals, *names])
        for pt in points:
            pg = pt.estimate.per_gpu
            w.writerow([*(pt.values[f] for f in fields), pt.estimate.num_gpus, pt.estimate.fits,
                        *(getattr(pg, t) for t in totals), *(pg.components.get(n, 0) for n in names)])
        return buf.getvalue().rstrip("\n")
    first = points[0].estimate
    head = [f"{first.model.name} · {first.job.mode} · {first.gpu.label or first.gpu.name} "
            f"({gib(first.gpu.memory_bytes):.1f} GiB) · GiB per GPU", ""]
    names = [n for n in names if any(pt.estimate.per_gpu.components.get(n) for pt in points)]  # all-zero: not shown
    cols = [*fields, "gpus", "fits", *totals, *names]
    rows = [[*(str(pt.values[f]) for f in fields), str(pt.estimate.num_gpus), "yes" if pt.estimate.fits else "no",
             *(f"{gib(getattr(pt.estimate.per_gpu, t)):.2f}" for t in totals),
             *(f"{gib(pt.estimate.per_gpu.components.get(n, 0)):.2f}" for n in names)] for pt in points]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    table = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    table += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(head + table)


# --- serve ----------------------------------------------------------------------------------------------------

def _add_serve_parser(sub: Any) -> None:
    sv = sub.add_parser("serve", help="serve the web page (a form, the result, curves) on a local port",
                        description="Serve modelmem's page: pick a model and a job, see the per-GPU memory, the seed "
                                    "beside the detailed estimate, and curves over sequence length and batch size.")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for a Space)")
    sv.add_argument("--port", default=7860, type=int, help="port (default 7860; 0 picks a free one)")


def _cmd_serve(args: argparse.Namespace) -> str:
    from modelmem.errors import InvalidJobError
    from modelmem.web import serve

    if not 0 <= args.port <= 65535:
        raise InvalidJobError("port", args.port, "0 (a free port) to 65535")
    try:
        serve(host=args.host, port=args.port, announce=lambda url: (sys.stderr.write(f"modelmem: serving on {url}\n"), sys.stderr.flush()))
    except OSError as e:  # the address is taken or cannot be bound
        raise InvalidJobError("port", f"{args.host}:{args.port}", f"an address this machine can listen on ({e.strerror or e})") from e
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
