"""The workload: a transformers model built from a config (random init, nothing downloaded) and the job run on it.

One builder serves both backends: `trace` runs it on fake CPU tensors under the storage tracker, `measure` on a
real CUDA device. The choices that make fake CPU tensors reproduce a GPU's memory are written where they are made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelmem.errors import ModelmemError
from modelmem.job import Job

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class UnsupportedJobError(ModelmemError):
    """The trace/measure workload cannot run this job (a field the workload builder does not model)."""

    def __init__(self, field_name: str, value: object, supported: str) -> None:
        super().__init__(f"trace: {field_name}={value!r} is not supported by the traced workload; use {supported}, or `modelmem estimate`")


# Config keys that are modelmem's own structural notes (shared/validation/models.jsonl), not Hugging Face fields.
_NOT_HF = {
    "hf_id", "family", "architectures", "moe", "mla", "norm_type", "norm_has_bias", "norms_per_layer", "qk_norm",
    "parallel_residual", "positional", "layer_pattern", "param_count", "param_count_kind", "active_param_count",
    "param_count_convention", "formula_param_count", "formula_matches", "safetensors_total", "count_sources",
    "config_sources", "corroboration", "notes", "safetensors_total_note", "qkv_bias", "o_proj_bias", "lm_head_bias",
    "torch_dtype", "dtype", "transformers_version", "auto_map", "quantization_config",
}


def text_model_config(config: Mapping[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """The config.json of the causal language model a job trains or serves.

    - Multimodal checkpoints (Gemma 3, Llama-3.2-Vision) nest the language model's config under `text_config`; a
      text job builds that model (Gemma3ForCausalLM, MllamaForCausalLM), not the vision tower, whose random init
      under fake tensors is value-dependent (`trunc_normal_`). Llama-3.2-Vision's text model keeps its
      cross-attention layers as weights; without images they are skipped, as in transformers.
    - Falcon's original configs name the model type `RefinedWebModel` (7B: multi-query) and `RefinedWeb` (40B: the
      "new decoder architecture" with `n_head_kv` KV groups); transformers' FalconConfig reads them as `falcon`
      (its convert script, configuration_falcon.py's attribute map: n_head, n_layer).
    """
    notes = notes if notes is not None else []
    cfg = dict(config)
    text = cfg.get("text_config")
    if isinstance(text, Mapping) and isinstance(cfg.get("vision_config"), Mapping):
        notes.append(f"{cfg.get('model_type')}: the language model (text_config) traced; the vision tower is not built")
        cfg = {**{k: v for k, v in cfg.items() if k in ("torch_dtype", "dtype")}, **text}
    mt = cfg.get("model_type")
    if mt in ("RefinedWeb", "RefinedWebModel"):
        cfg["model_type"] = "falcon"
        for old, new in (("n_head", "num_attention_heads"), ("n_layer", "num_hidden_layers"), ("n_head_kv", "num_kv_heads")):
            if old in cfg:
                cfg.setdefault(new, cfg.pop(old))
        if mt == "RefinedWeb":
            cfg["new_decoder_architecture"] = True
        notes.append(f"model_type {mt} read as falcon (transformers' FalconConfig)")
    return cfg


def hf_config(config: Mapping[str, Any], job: Job, notes: list[str] | None = None) -> Any:
    """A transformers config object from a config.json dict (None values dropped: transformers fills defaults)."""
    from transformers import AutoConfig

    config = text_model_config(config, notes)
    fields = {k: v for k, v in config.items() if v is not None and k not in _NOT_HF}
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise UnsupportedJobError("model_type", None, "a config.json with model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError) as e:
        raise UnsupportedJobError("model_type", model_type, "a model type this transformers version knows") from e
    cfg.use_cache = not job.training
    return cfg


@dataclass
class Hooks:
    """What the driver tells the tracker (no-ops when measuring on a GPU)."""

    set_phase: Callable[[str], None] = lambda phase: None
    get_phase: Callable[[], str] = lambda: ""
    tag: Callable[[Any, str], None] = lambda tensor, category: None
    stage: Callable[[str], None] = lambda name: None  # progress: a long stage (build, warm step, traced step…) begins


@dataclass
class Workload:
    model: nn.Module
    optimizer: Any
    job: Job
    vocab_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    notes: list[str] = field(default_factory=list)
    base: nn.Module | None = None  # the transformers model under any PEFT wrapper


@contextlib.contextmanager
def real_tensor_semantics() -> Iterator[None]:
    """Where transformers branches on "is this a traced/fake tensor?", take the branch real tensors take.

    `find_packed_sequence_indices` (masking_utils) returns None for unpacked position ids by reading their values,
    but on fake tensors it keeps the packed-sequence mask, so the causal mask gets materialized (s × s) and SDPA
    loses `is_causal` and `enable_gqa` (K and V expanded to every head). Our inputs are never packed: compute what
    the function computes, return what it returns on a GPU."""
    import transformers.masking_utils as mu

    orig = mu.find_packed_sequence_indices

    def unpacked(position_ids: torch.Tensor) -> None:
        orig(position_ids)
        return None

    mu.find_packed_sequence_indices = unpacked
    try:
        yield
    finally:
        mu.find_packed_sequence_indices = orig


def _attention(job: Job, notes: list[str]) -> str:
    if job.attention == "flash":
        # A GPU's flash kernel keeps the output and the log-sum-exp, as PyTorch's CPU flash-style SDPA kernel does.
        notes.append("attention flash traced as sdpa (its flash-style kernel keeps the same tensors as flash-attn)")
        return "sdpa"
    return job.attention


def build(config: Mapping[str, Any], job: Job, device: torch.device, hooks: Hooks) -> Workload:
    """Build the model, adapters and optimizer for `job` on `device` (under the caller's fake mode, if any)."""
    notes: list[str] = []
    _check_supported(job)
    cfg = hf_config(config, job, notes)
    compute = TORCH_DTYPES[job.dtype]
    # Mixed precision: fp32 master weights, compute under autocast in `dtype` (HF Trainer bf16=True).
    # LoRA/QLoRA keep the frozen base in `dtype`; PEFT upcasts the adapters to fp32 (autocast_adapter_dtype).
    mixed = job.training and job.precision == "mixed" and job.dtype != "fp32"
    weight_dtype = torch.float32 if (mixed and job.mode == "train") else compute
    kwargs: dict[str, Any] = {"dtype": weight_dtype, "attn_implementation": _attention(job, notes)}
    if getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None):
        # grouped_mm sorts tokens by expert and runs one grouped GEMM: no value-dependent shapes, as on a GPU.
        kwargs["experts_implementation"] = "grouped_mm"
        notes.append("MoE experts via grouped_mm; routing assumed as the kernel sees it (shapes do not depend on it)")
    with torch.device(device):
        try:
            model = _causal_lm(cfg, kwargs)
        except ValueError as e:
            if kwargs["attn_implementation"] != "sdpa" or "scaled_dot_product_attention" not in str(e):
                raise
            # e.g. Gemma-2 (logit soft-capping): transformers itself runs such models with eager attention
            notes.append(f"{type(cfg).__name__.replace('Config', '')} has no sdpa path in transformers; traced with eager attention")
            kwargs["attn_implementation"] = "eager"
            model = _causal_lm(cfg, kwargs)
    base = model
    hooks.set_phase("build")
    if job.quant != "none" and _real_gpu(device):
        from modelmem.trace._qlora import quantize_4bit_bnb

        quantize_4bit_bnb(model, job, compute)
        notes.append("4-bit base: bitsandbytes Linear4bit (real kernels)")
    elif job.quant != "none":
        from modelmem.trace._qlora import quantize_4bit

        quantize_4bit(model, job, compute)
        notes.append("4-bit base: shim of bitsandbytes Linear4bit storage (uint8 n/2 + absmax per 64) that dequantizes per matmul")
    if job.training:
        model.train()
        if job.grad_checkpointing == "full":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if job.uses_lora:
            model = _lora(model, job, notes, device)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
    else:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    for name, p in model.named_parameters():
        hooks.tag(p, "weights")
    for b in model.buffers():
        hooks.tag(b, "weights")
    optimizer = _optimizer(model, job, notes) if job.training else None
    return Workload(model, optimizer, job, cfg.vocab_size, device, compute if mixed else None, notes, base)


def _causal_lm(cfg: Any, kwargs: dict[str, Any]) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if cfg.model_type == "mllama_text_model":
        # the Auto mapping keys MllamaForCausalLM by the multimodal config; the text config builds it directly
        from transformers import MllamaForCausalLM

        return MllamaForCausalLM._from_config(cfg, **kwargs)
    return AutoModelForCausalLM.from_config(cfg, **kwargs)


def _real_gpu(device: torch.device) -> bool:
    """A real CUDA device (measure), not the fake one the trace check runs on (torch's CPU wheel: no CUDA)."""
    return device.type == "cuda" and torch.cuda.is_available()


def _check_supported(job: Job) -> None:
    if job.grad_checkpointing == "selective":
        raise UnsupportedJobError("grad_checkpointing", "selective", "none or full")
    if job.quant not in ("none", "nf4", "fp4", "nf4-dq"):
        raise UnsupportedJobError("quant", job.quant, "none, nf4, fp4 or nf4-dq")
    if not job.training and job.kv_dtype != job.dtype:
        # transformers' DynamicCache stores keys and values in the compute dtype
        raise UnsupportedJobError("kv_dtype", job.kv_dtype, f"{job.dtype} (the model's dtype)")
    gpus = job.num_gpus if isinstance(job.num_gpus, int) else 1  # "auto": one GPU is traced
    if gpus > 1 and job.strategy not in ("fsdp", "zero3"):
        raise UnsupportedJobError("strategy", job.strategy, "fsdp or zero3 with num_gpus > 1 (or one GPU)")
    if job.offload != "none":
        raise UnsupportedJobError("offload", job.offload, "none")
    for name in ("compile", "optimizer_in_backward", "activation_offload"):
        if getattr(job, name):
            raise UnsupportedJobError(name, True, "false")
    if job.loss != "full":
        raise UnsupportedJobError("loss", job.loss, "full")
    if job.runtime not in ("hf", "torchtune", "litgpt"):
        raise UnsupportedJobError("runtime", job.runtime, "hf (the traced workload is transformers + PEFT)")


def _lora(model: nn.Module, job: Job, notes: list[str], device: torch.device) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if job.lora_targets == "all-linear":
        targets: Any = "all-linear"
    elif job.lora_targets == "default":
        targets = None  # PEFT's per-architecture default
    else:
        targets = job.lora_targets.split(",")
    lcfg = LoraConfig(r=job.lora_rank, lora_alpha=job.lora_alpha, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM")
    notes.append("LoRA dropout 0 (PEFT default); adapters in fp32 (PEFT autocast_adapter_dtype)")
    # real tensors (measure) convert normally; only fake ones need _apply adjusted (and bnb's Params4bit must not be rewrapped)
    with (contextlib.nullcontext() if _real_gpu(device) else _no_swap()):
        # non-reentrant checkpointing (set in build) needs no enable_input_require_grads for frozen embeddings
        return get_peft_model(model, lcfg)


@contextlib.contextmanager
def _no_swap() -> Iterator[None]:
    """Module.to() on fake parameters goes through torch.utils.swap_tensors (forced for FakeTensor in
    Module._apply), which fails on tensors FakeTensorMode holds weakrefs to. While PEFT builds its adapters,
    _apply rebinds converted parameters instead; nothing holds the old ones yet (no optimizer exists)."""

    def _apply(self: nn.Module, fn: Any, recurse: bool = True) -> nn.Module:
        if recurse:
            for child in self.children():
                child._apply(fn)
        for key, param in self._parameters.items():
            if param is None:
                continue
            with torch.no_grad():
                applied = fn(param)
            if applied is not param:
                self._parameters[key] = nn.Parameter(applied, requires_grad=param.requires_grad)
        for key, buf in self._buffers.items():
            if buf is not None:
                self._buffers[key] = fn(buf)
        return self

    orig = nn.Module._apply
    nn.Module._apply = _apply  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module._apply = orig  # type: ignore[method-assign]


class _StateShim(torch.optim.Optimizer):
    """An optimizer that holds the state a real one holds, sized exactly, and updates in place without temporaries
    (as bitsandbytes' fused kernels do). Used for optimizers torch lacks: 8-bit and paged AdamW, Lion."""

    def __init__(self, params: Any, states: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> None:
        super().__init__(params, {})
        self._states = states

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not self.state[p]:
                    self.state[p].update(self._states(p))
                p.add_(p.grad, alpha=-1e-12)


def _bnb_8bit_states(p: torch.Tensor) -> dict[str, torch.Tensor]:
    # bitsandbytes Optimizer2State: uint8 states with one fp32 absmax per 256-element block; tensors under 4096
    # elements (min_8bit_size) keep fp32 states. (bitsandbytes/optim/optimizer.py)
    if p.numel() < 4096:
        return {"state1": torch.zeros_like(p, dtype=torch.float32), "state2": torch.zeros_like(p, dtype=torch.float32)}
    blocks = -(-p.numel() // 256)
    return {
        "state1": torch.zeros_like(p, dtype=torch.uint8),
        "state2": torch.zeros_like(p, dtype=torch.uint8),
        "absmax1": torch.zeros(blocks, dtype=torch.float32, device=p.device),
        "absmax2": torch.zeros(blocks, dtype=torch.float32, device=p.device),
    }


# On a CUDA device (measure) these run as bitsandbytes' own optimizers; on fake tensors as _StateShim.
_BNB_OPTIMIZERS = {"adamw-8bit": "AdamW8bit", "paged-adamw-8bit": "PagedAdamW8bit", "paged-adamw": "PagedAdamW"}


def _bnb_optimizer(params: list[Any], name: str, job: Job, notes: list[str]) -> Any:
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        from modelmem.errors import MissingExtraError

        raise MissingExtraError(f"measure with optimizer {name}", "gpu") from e
    notes.append(f"{name}: bitsandbytes.optim.{_BNB_OPTIMIZERS[name]} (paged states live in managed memory, outside torch's counters)")
    return getattr(bnb.optim, _BNB_OPTIMIZERS[name])(params, lr=1e-5)


def _optimizer(model: nn.Module, job: Job, notes: list[str]) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    name = job.optimizer
    if name in _BNB_OPTIMIZERS and params and _real_gpu(params[0].device):
        return _bnb_optimizer(params, name, job, notes)
    # foreach=True: the multi-tensor path CUDA takes by default (CPU's default is the per-tensor loop).
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-5, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-5, foreach=True)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-5, momentum=0.9, foreach=True)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-5, foreach=True)
    if name in ("adamw-8bit", "paged-adamw-8bit"):
        notes.append(f"{name}: shim with bitsandbytes' state sizes (uint8 + fp32 absmax per 256), fused update")
        return _StateShim(params, _bnb_8bit_states)
    if name == "paged-adamw":
        notes.append("paged-adamw: shim with bitsandbytes' fp32 states; paged (managed) memory counted as resident")
        return _StateShim(params, lambda p: {"state1": torch.zeros_like(p, dtype=torch.float32), "state2": torch.zeros_like(p, dtype=torch.float32)})
    if name == "lion":
        notes.append("lion: shim with one momentum state in the parameter's dtype (lion-pytorch)")
        return _StateShim(params, lambda p: {"exp_avg": torch.zeros_like(p)})
    raise UnsupportedJobError("optimizer", name, "adamw, adamw-8bit, paged-adamw-8bit, paged-adamw, sgd, sgd-momentum, adafactor or lion")


def _autocast(w: Workload) -> contextlib.AbstractContextManager[Any]:
    if w.autocast_dtype is None:
        return contextlib.nullcontext()
    # CUDA autocast silently disables itself without a GPU; the CPU autocast casts the same matmuls (linear, bmm,
    # SDPA) to the low-precision dtype. Its fp32 list differs from CUDA's (layer_norm, softmax, pow… run in fp32
    # only on CUDA), so on the CPU route CUDA's fp32 policy is applied on top (checked against the fake-CUDA route,
    # tests/test_trace_fake_cuda.py).
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(w.device.type, dtype=w.autocast_dtype))
    if w.device.type == "cpu":
        stack.enter_context(_CudaAutocastFp32())
    return stack


def _cuda_fp32_functions() -> tuple[dict[Any, str], set[Any]]:
    """torch functions CUDA autocast runs in fp32 (PyTorch docs, "CUDA Ops that can autocast to float32"), as the
    Python entry points models call: "cast" casts floating inputs to fp32; "dtype" passes dtype=float32 when none
    is given (autocast's fp32_set_opt_dtype policy: softmax, log_softmax, sum, cumsum, prod)."""
    F = torch.nn.functional
    T = torch.Tensor
    cast = [F.layer_norm, F.group_norm, F.normalize, torch.pow, T.pow, T.__pow__, T.__rpow__, torch.exp, T.exp,
            torch.log, T.log, torch.rsqrt, T.rsqrt, torch.reciprocal, T.reciprocal, torch.expm1, torch.log1p,
            T.log1p, torch.log2, torch.log10, F.softplus, F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.kl_div,
            F.binary_cross_entropy_with_logits, torch.norm, T.norm, torch.cdist, F.cosine_similarity,
            torch.acos, torch.asin, torch.cosh, torch.sinh, torch.tan, torch.erfinv]
    opt_dtype = [F.softmax, torch.softmax, T.softmax, F.log_softmax, torch.log_softmax, T.log_softmax, F.softmin,
                 torch.sum, T.sum, torch.cumsum, T.cumsum, torch.prod, T.prod, torch.cumprod, T.cumprod]
    return {f: "cast" for f in cast} | {f: "dtype" for f in opt_dtype}, set(opt_dtype)


class _CudaAutocastFp32(torch.overrides.TorchFunctionMode):
    """CUDA autocast's fp32 policy on the CPU route: what autocast("cuda") would run in fp32 runs in fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.policy, _ = _cuda_fp32_functions()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        how = self.policy.get(func)
        if how is None or not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        low = (torch.bfloat16, torch.float16)
        if how == "dtype":
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first.dtype in low and kwargs.get("dtype") is None and (
                    len(args) < 3 or args[2] is None):
                kwargs = {**kwargs, "dtype": torch.float32}
            return func(*args, **kwargs)

        def up(x: Any) -> Any:
            return x.float() if isinstance(x, torch.Tensor) and x.dtype in low else x

        return func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})


def _install_phase_hooks(w: Workload, hooks: Hooks) -> list[Any]:
    """Phases the tracker needs to name what it sees: logits/loss, and recomputation under checkpointing."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    handles = []
    base = w.base if w.base is not None else w.model
    head = base.get_output_embeddings()

    def head_pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if hooks.get_phase() in ("forward", "prefill", "decode"):
            hooks.set_phase("logits")
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.requires_grad:
                x.register_hook(lambda g: hooks.set_phase("backward"))

    handles.append(head.register_forward_pre_hook(head_pre))
    saved: list[str] = []

    def layer_pre(module: nn.Module, args: Any) -> None:
        phase = hooks.get_phase()
        saved.append(phase)
        if phase in ("backward", "loss_backward"):
            hooks.set_phase("recompute")

    def layer_post(module: nn.Module, args: Any, out: Any) -> None:
        if saved:
            hooks.set_phase(saved.pop())

    def phased(fn: Callable[..., Any]) -> Callable[..., Any]:
        # transformers checkpoints inside the layer's forward, so module hooks never see the recomputation:
        # wrap the function handed to torch.utils.checkpoint instead (it is what runs again in backward)
        def run(*args: Any, **kwargs: Any) -> Any:
            layer_pre(None, args)  # type: ignore[arg-type]
            try:
                return fn(*args, **kwargs)
            finally:
                layer_post(None, args, None)  # type: ignore[arg-type]

        return run

    for m in base.modules():
        if isinstance(m, GradientCheckpointingLayer) and getattr(m, "gradient_checkpointing", False):
            orig = m._gradient_checkpointing_func
            m._gradient_checkpointing_func = lambda fn, *a, _orig=orig, **k: _orig(phased(fn), *a, **k)
    return handles


def run_training(w: Workload, hooks: Hooks, steps: int = 2, on_step: Callable[[int], None] | None = None) -> None:
    """`steps` optimizer steps: forward, loss, backward, step, zero_grad(set_to_none=True).
    Two, because optimizer states exist only from the first step on."""
    job = w.job
    hooks.set_phase("inputs")
    ids = torch.randint(0, w.vocab_size, (job.batch_size, job.seq_len), device=w.device)
    handles = _install_phase_hooks(w, hooks)
    try:
        for step in range(steps):
            hooks.stage("warm step" if step < steps - 1 else "traced step")
            hooks.set_phase("forward")
            with _autocast(w):
                out = w.model(input_ids=ids, labels=ids, use_cache=False)
            loss = out.loss
            hooks.tag(out.logits, "logits")
            del out  # HF Trainer keeps only the loss
            hooks.set_phase("loss_backward")
            loss.backward()
            del loss
            for p in w.model.parameters():
                if p.grad is not None:
                    hooks.tag(p.grad, "gradients")
            hooks.set_phase("optimizer")
            w.optimizer.step()
            for state in w.optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        # AdamW's `step` counter lives on the host unless capturable/fused
                        hooks.tag(value, "host" if key == "step" else "optimizer_states")
            hooks.set_phase("zero_grad")
            w.optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(step)
    finally:
        for h in handles:
            h.remove()


def _grow_cache(cache: Any, tokens: int) -> None:
    for idx, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None)
        if keys is None or keys.dim() != 4:
            continue
        b, h, _, d = keys.shape
        vals = layer.values
        cache.update(keys.new_empty((b, h, tokens, d)), vals.new_empty((b, vals.shape[1], tokens, vals.shape[3])), idx)


def run_inference(w: Workload, hooks: Hooks, fast_decode: bool = True) -> Any:
    """Prefill the prompt, then `new_tokens` single-token decode steps with a DynamicCache and logits_to_keep=1:
    a hand-written greedy loop (generate() reads tensor values, which fake tensors do not have)."""
    from transformers import DynamicCache

    job = w.job
    hooks.set_phase("inputs")
    ids = torch.randint(0, w.vocab_size, (job.batch_size, job.seq_len), device=w.device)
    base = w.base if w.base is not None else w.model
    cache = DynamicCache(config=base.config)
    handles = _install_phase_hooks(w, hooks)

    def tag_cache() -> None:
        for layer in getattr(cache, "layers", []):
            for name in ("keys", "values"):
                hooks.tag(getattr(layer, name, None), "kv_cache")

    def forward(tokens: Any) -> Any:
        """One forward with the cache; returns the greedy next token (the logits die with `out`)."""
        out = w.model(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tag_cache()
        hooks.tag(out.logits, "logits")
        return out.logits[:, -1:].argmax(-1)

    try:
        with torch.no_grad():
            hooks.stage("prefill")
            hooks.set_phase("prefill")
            nxt = forward(ids)
            hooks.stage("decode")
            # Decode steps differ only in the cache length, and their memory grows with it: the last step is the
            # decode peak. Steps 2 … n−1 are fast-forwarded by growing the cache through its own update() (the
            # same cat and sliding-window trim those steps would do); the first and the last step run for real.
            steps = [0, job.new_tokens - 1] if (fast_decode and job.new_tokens > 2) else list(range(job.new_tokens))
            for i, step in enumerate(steps):
                if i and step - steps[i - 1] > 1:
                    hooks.set_phase("decode")
                    _grow_cache(cache, step - steps[i - 1] - 1)
                    tag_cache()
                hooks.set_phase("decode")
                nxt = forward(nxt)
            hooks.set_phase("done")
        return cache  # the caller decides when the cache dies (the trace reads it at the end)
    finally:
        for h in handles:
            h.remove()
