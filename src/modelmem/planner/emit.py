"""--emit RUNTIME: the launch settings that run an estimated or planned job, in each runtime's own keys.

Each emitter writes only keys its runtime documents (the URLs are beside each one and in tests/test_planner_emit.py),
and refuses, naming the field, a job its runtime cannot express.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from modelmem.errors import InvalidJobError
from modelmem.result import Estimate

EMIT_RUNTIMES = ("accelerate", "deepspeed", "torchtune", "vllm", "llamacpp")


def _degree(job, name: str) -> int:
    return int(getattr(job, name, 1) or 1)


def _accum(job) -> int:
    return int(getattr(job, "grad_accum", 1) or 1)


def _layout(est: Estimate) -> tuple[int, int, int]:
    """(tp, pp, dp) of the estimate's layout (parallel.layout_of)."""
    from modelmem.parallel import layout_of

    lay = layout_of(est.job, est.num_gpus)
    return lay.tp, lay.pp, lay.dp * lay.cp


def _nodes(est: Estimate, gpus_per_node: int) -> int:
    return max(1, math.ceil(est.num_gpus / gpus_per_node))


def _need_training(est: Estimate, runtime: str) -> None:
    if not est.job.training:
        raise InvalidJobError("emit", runtime, "vllm or llamacpp for an inference job")


def accelerate_fsdp(est: Estimate, gpus_per_node: int = 8) -> str:
    """An `accelerate launch --config_file` YAML (https://huggingface.co/docs/accelerate/usage_guides/fsdp)."""
    _need_training(est, "accelerate")
    job = est.job
    tp, pp, dp = _layout(est)
    if tp > 1 or pp > 1:
        raise InvalidJobError("emit", "accelerate", "deepspeed or torchtune for tensor or pipeline parallel plans "
                              "(accelerate's FSDP config shards data-parallel ranks only)")
    sharding = {"fsdp": "FULL_SHARD", "zero3": "FULL_SHARD", "hsdp": "HYBRID_SHARD", "zero2": "SHARD_GRAD_OP",
                "zero1": "SHARD_GRAD_OP", "ddp": "NO_SHARD", "none": "NO_SHARD"}.get(job.strategy, "FULL_SHARD")
    nodes = _nodes(est, gpus_per_node)
    mixed = {"bf16": "bf16", "fp16": "fp16"}.get(job.dtype, "no")
    lines = [
        "compute_environment: LOCAL_MACHINE",
        "distributed_type: FSDP",
        "fsdp_config:",
        f"  fsdp_activation_checkpointing: {str(job.grad_checkpointing != 'none').lower()}  # true trades compute for activation memory",
        "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP",
        "  fsdp_backward_prefetch: BACKWARD_PRE",
        "  fsdp_cpu_ram_efficient_loading: true",
        "  fsdp_forward_prefetch: false",
        f"  fsdp_offload_params: {str(job.offload != 'none').lower()}  # true moves parameters, gradients and optimizer states to CPU",
        f"  fsdp_sharding_strategy: {sharding}",
        "  fsdp_state_dict_type: SHARDED_STATE_DICT",
        "  fsdp_sync_module_states: true",
        "  fsdp_use_orig_params: true",
        "machine_rank: 0",
        f"mixed_precision: {mixed if job.precision == 'mixed' else 'no'}",
        f"num_machines: {nodes}",
        f"num_processes: {est.num_gpus}",
        "rdzv_backend: static",
        "same_network: true",
        "use_cpu: false",
    ]
    return "\n".join(lines)


def deepspeed_json(est: Estimate, gpus_per_node: int = 8) -> str:
    """A DeepSpeed config (https://www.deepspeed.ai/docs/config-json/)."""
    _need_training(est, "deepspeed")
    job = est.job
    tp, pp, dp = _layout(est)
    if pp > 1:
        raise InvalidJobError("emit", "deepspeed", "a plan without pipeline parallelism (DeepSpeed sets pipelines "
                              "in code, with PipelineModule, not in its JSON)")
    stage = {"zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3, "hsdp": 3}.get(job.strategy, 0)
    zero: dict = {"stage": stage}
    if job.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if job.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage >= 2:
        zero["overlap_comm"] = True
        zero["contiguous_gradients"] = True
    cfg: dict = {
        "train_micro_batch_size_per_gpu": job.batch_size,
        "gradient_accumulation_steps": _accum(est.job),
        "train_batch_size": job.batch_size * _accum(est.job) * dp,
        "bf16": {"enabled": job.dtype == "bf16"},
        "fp16": {"enabled": job.dtype == "fp16"},
        "zero_optimization": zero,
        "gradient_clipping": 1.0,
    }
    if tp > 1:
        cfg["tensor_parallel"] = {"autotp_size": tp}  # AutoTP training (https://www.deepspeed.ai/tutorials/autotp-training/)
    if job.grad_checkpointing != "none":
        # The model's own checkpointing does the recomputation; these keys tune DeepSpeed's checkpoint function.
        cfg["activation_checkpointing"] = {"partition_activations": tp > 1, "cpu_checkpointing": bool(job.activation_offload),
                                           "contiguous_memory_optimization": False}
    return json.dumps(cfg, indent=2)


def torchtune_overrides(est: Estimate, gpus_per_node: int = 8) -> str:
    """`tune run` with key=value overrides of a recipe config (https://pytorch.org/torchtune/stable/deep_dives/configs.html;
    keys as in recipes/configs/llama3_1/8B_full.yaml and 8B_lora.yaml)."""
    _need_training(est, "torchtune")
    job = est.job
    tp, pp, dp = _layout(est)
    if pp > 1:
        raise InvalidJobError("emit", "torchtune", "a plan without pipeline parallelism (torchtune's recipes have none)")
    distributed = est.num_gpus > 1
    kind = "full_finetune" if job.mode == "train" else "lora_finetune"
    recipe = f"{kind}_{'distributed' if distributed else 'single_device'}"
    over = [
        f"batch_size={job.batch_size}",
        f"gradient_accumulation_steps={_accum(job)}",
        f"dtype={'bf16' if job.dtype == 'bf16' else 'fp32'}",
        f"enable_activation_checkpointing={job.grad_checkpointing != 'none'}",
        f"enable_activation_offloading={bool(job.activation_offload)}",
        f"compile={bool(job.compile)}",
        f"tokenizer.max_seq_len={job.seq_len}",
    ]
    if job.mode == "train":
        over.append(f"optimizer_in_bwd={bool(job.optimizer_in_backward)}")
    if distributed:
        over.append(f"fsdp_cpu_offload={job.offload != 'none'}")
        if tp > 1:
            over.append(f"tensor_parallel_dim={tp}")
    if job.uses_lora:
        over += [f"model.lora_rank={job.lora_rank}", f"model.lora_alpha={job.lora_alpha}"]
    optimizers = {"adamw": "torch.optim.AdamW", "adamw-8bit": "bitsandbytes.optim.AdamW8bit",
                  "paged-adamw-8bit": "bitsandbytes.optim.PagedAdamW8bit", "paged-adamw": "bitsandbytes.optim.PagedAdamW",
                  "sgd": "torch.optim.SGD"}
    if job.optimizer in optimizers:
        over.append(f"optimizer._component_={optimizers[job.optimizer]}")
    if job.loss == "chunked":
        over.append("loss._component_=torchtune.modules.loss.CEWithChunkedOutputLoss")
    launch = f"tune run --nnodes {_nodes(est, gpus_per_node)} --nproc_per_node {min(est.num_gpus, gpus_per_node)} " if distributed else "tune run "
    return launch + recipe + " --config CONFIG \\\n  " + " \\\n  ".join(over)


_VLLM_QUANT = {"fp8": "fp8", "awq": "awq", "gptq": "gptq", "nf4": "bitsandbytes", "int8": "bitsandbytes"}


def vllm_serve(est: Estimate, gpus_per_node: int = 8) -> str:
    """`vllm serve` flags (https://docs.vllm.ai/en/latest/cli/serve.html)."""
    job = est.job
    if job.training:
        raise InvalidJobError("emit", "vllm", "accelerate, deepspeed or torchtune for a training job")
    from modelmem.runtimes.profiles import profile_for

    tp, pp, _ = _layout(est)
    served = profile_for(job).kv_block_pool  # the job was estimated as vLLM: its own settings apply
    kv = "fp8" if job.kv_dtype == "fp8" else "auto"
    length = job.max_model_len if getattr(job, "max_model_len", None) else job.seq_len + job.new_tokens
    flags = [
        f"--tensor-parallel-size {tp}",
        f"--pipeline-parallel-size {pp}",
        f"--max-model-len {length}",
        f"--kv-cache-dtype {kv}",
        f"--gpu-memory-utilization {job.gpu_memory_utilization}",
        f"--max-num-seqs {job.max_num_seqs if served else job.batch_size}",
        f"--dtype {'bfloat16' if job.dtype == 'bf16' else 'float16' if job.dtype == 'fp16' else 'float32'}",
    ]
    if job.quant in _VLLM_QUANT:
        flags.append(f"--quantization {_VLLM_QUANT[job.quant]}")
    return f"vllm serve {est.model.name} \\\n  " + " \\\n  ".join(flags)


_LLAMACPP_CACHE = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}


def llamacpp_flags(est: Estimate, gpus_per_node: int = 8) -> str:
    """`llama-server` flags (https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md)."""
    job = est.job
    if job.training:
        raise InvalidJobError("emit", "llamacpp", "accelerate, deepspeed or torchtune for a training job")
    if job.kv_dtype not in _LLAMACPP_CACHE:
        raise InvalidJobError("kv_dtype", job.kv_dtype, "fp16, bf16, int8 or int4 for llama.cpp's -ctk/-ctv")
    cache = _LLAMACPP_CACHE[job.kv_dtype]
    # llama-server's -c is the context of all -np slots together.
    ctx = (job.seq_len + job.new_tokens) * job.batch_size
    ngl = job.gpu_layers if job.gpu_layers is not None else 999  # 999: every layer (llama.cpp caps it)
    flags = [f"-m {est.model.name}", f"-ngl {ngl}", f"-c {ctx}", f"-np {job.batch_size}", f"-ctk {cache}", f"-ctv {cache}"]
    if cache not in ("f16", "f32", "bf16"):
        flags.append("-fa on")  # a quantized V cache needs flash attention
    if est.num_gpus > 1:
        flags.append("-sm layer")
    return "llama-server " + " ".join(flags)


EMITTERS: dict[str, Callable[[Estimate, int], str]] = {
    "accelerate": accelerate_fsdp,
    "deepspeed": deepspeed_json,
    "torchtune": torchtune_overrides,
    "vllm": vllm_serve,
    "llamacpp": llamacpp_flags,
}


def emit(est: Estimate, runtime: str, gpus_per_node: int = 8) -> str:
    key = runtime.strip().lower()
    if key not in EMITTERS:
        raise InvalidJobError("emit", runtime, ", ".join(EMIT_RUNTIMES))
    return EMITTERS[key](est, gpus_per_node)
