"""--emit: every key or flag written is one its runtime documents (lists copied from the docs named beside them)."""

import json
import re
import subprocess
import sys

import pytest

import modelmem
from modelmem.planner.emit import emit

# https://huggingface.co/docs/accelerate/usage_guides/fsdp and accelerate's ClusterConfig
# (https://huggingface.co/docs/accelerate/package_reference/cli#accelerate-config): top-level keys and fsdp_config keys.
ACCELERATE_KEYS = {"compute_environment", "debug", "distributed_type", "downcast_bf16", "fsdp_config", "machine_rank",
                   "main_training_function", "mixed_precision", "num_machines", "num_processes", "rdzv_backend",
                   "same_network", "tpu_env", "tpu_use_cluster", "tpu_use_sudo", "use_cpu", "main_process_ip",
                   "main_process_port", "deepspeed_config", "gpu_ids"}
ACCELERATE_FSDP_KEYS = {"fsdp_activation_checkpointing", "fsdp_auto_wrap_policy", "fsdp_backward_prefetch",
                        "fsdp_cpu_ram_efficient_loading", "fsdp_forward_prefetch", "fsdp_offload_params",
                        "fsdp_reshard_after_forward", "fsdp_sharding_strategy", "fsdp_state_dict_type",
                        "fsdp_sync_module_states", "fsdp_transformer_layer_cls_to_wrap", "fsdp_use_orig_params",
                        "fsdp_version", "fsdp_min_num_params"}
ACCELERATE_SHARDING = {"FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"}
# https://www.deepspeed.ai/docs/config-json/ (batch, precision, ZeRO, offload, activation checkpointing) and
# https://www.deepspeed.ai/tutorials/autotp-training/ (tensor_parallel.autotp_size).
DEEPSPEED_KEYS = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16",
                  "zero_optimization", "gradient_clipping", "activation_checkpointing", "tensor_parallel", "optimizer",
                  "scheduler", "steps_per_print", "wall_clock_breakdown"}
DEEPSPEED_ZERO_KEYS = {"stage", "offload_optimizer", "offload_param", "overlap_comm", "contiguous_gradients",
                       "reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                       "stage3_param_persistence_threshold", "stage3_max_live_parameters", "sub_group_size"}
DEEPSPEED_OFFLOAD_KEYS = {"device", "pin_memory", "nvme_path", "buffer_count", "fast_init", "ratio"}
DEEPSPEED_ACT_KEYS = {"partition_activations", "cpu_checkpointing", "contiguous_memory_optimization",
                      "number_checkpoints", "synchronize_checkpoint_boundary", "profile"}
# torchtune recipe configs (https://pytorch.org/torchtune/stable/deep_dives/configs.html; recipes/configs/llama3_1/
# 8B_full.yaml, 8B_lora.yaml, 70B_full.yaml) and the recipe names of `tune ls`.
TORCHTUNE_KEYS = {"batch_size", "gradient_accumulation_steps", "dtype", "enable_activation_checkpointing",
                  "enable_activation_offloading", "compile", "tokenizer.max_seq_len", "optimizer_in_bwd",
                  "fsdp_cpu_offload", "tensor_parallel_dim", "model.lora_rank", "model.lora_alpha",
                  "optimizer._component_", "loss._component_", "epochs", "max_steps_per_epoch"}
TORCHTUNE_RECIPES = {"full_finetune_single_device", "full_finetune_distributed", "lora_finetune_single_device",
                     "lora_finetune_distributed"}
# https://docs.vllm.ai/en/latest/cli/serve.html (engine arguments).
VLLM_FLAGS = {"--tensor-parallel-size", "--pipeline-parallel-size", "--max-model-len", "--kv-cache-dtype",
              "--gpu-memory-utilization", "--max-num-seqs", "--dtype", "--quantization", "--block-size",
              "--enable-prefix-caching", "--max-num-batched-tokens"}
VLLM_KV = {"auto", "fp8", "fp8_e4m3", "fp8_e5m2"}
# https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md (common params).
LLAMACPP_FLAGS = {"-m", "-ngl", "-c", "-np", "-ctk", "-ctv", "-fa", "-sm", "-ts", "-b", "-ub", "-t"}
LLAMACPP_CACHE = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"}


def yaml_keys(text):
    top, nested = set(), set()
    for line in text.splitlines():
        m = re.match(r"^(\s*)([A-Za-z_]+):", line)
        if m:
            (nested if m.group(1) else top).add(m.group(2))
    return top, nested


def test_accelerate_fsdp_keys():
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="train", num_gpus=16, strategy="fsdp", offload="optimizer",
                            grad_checkpointing="full")
    text = emit(est, "accelerate")
    top, nested = yaml_keys(text)
    assert top <= ACCELERATE_KEYS and nested <= ACCELERATE_FSDP_KEYS
    assert "num_processes: 16" in text and "num_machines: 2" in text
    assert "fsdp_offload_params: true" in text and "fsdp_activation_checkpointing: true" in text
    assert re.search(r"fsdp_sharding_strategy: (\w+)", text).group(1) in ACCELERATE_SHARDING


@pytest.mark.parametrize("strategy, offload, stage", [("zero2", "optimizer", 2), ("zero3", "params", 3), ("zero1", "none", 1)])
def test_deepspeed_keys(strategy, offload, stage):
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="train", num_gpus=8, strategy=strategy, offload=offload,
                            batch_size=2)
    cfg = json.loads(emit(est, "deepspeed"))
    assert set(cfg) <= DEEPSPEED_KEYS and set(cfg["zero_optimization"]) <= DEEPSPEED_ZERO_KEYS
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 8
    for k in ("offload_optimizer", "offload_param"):
        if k in cfg["zero_optimization"]:
            assert set(cfg["zero_optimization"][k]) <= DEEPSPEED_OFFLOAD_KEYS
    assert ("offload_optimizer" in cfg["zero_optimization"]) == (offload != "none")
    assert ("offload_param" in cfg["zero_optimization"]) == (offload == "params")


def test_torchtune_overrides():
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="lora", num_gpus=2, strategy="fsdp", grad_checkpointing="full",
                            loss="chunked", runtime="torchtune")
    text = emit(est, "torchtune")
    recipe = re.search(r"tune run (?:--\S+ \S+ )*(\S+) --config", text).group(1)
    assert recipe in TORCHTUNE_RECIPES and recipe == "lora_finetune_distributed"
    keys = set(re.findall(r"(\S+)=", text))
    assert keys <= TORCHTUNE_KEYS
    assert "enable_activation_checkpointing=True" in text and "loss._component_=torchtune.modules.loss.CEWithChunkedOutputLoss" in text


def test_vllm_flags():
    est = modelmem.estimate("meta-llama/Llama-3.1-70B", runtime="vllm", num_gpus=4, kv_dtype="fp8", max_model_len=8192)
    text = emit(est, "vllm")
    flags = dict(re.findall(r"(--[a-z-]+) (\S+)", text))
    assert set(flags) <= VLLM_FLAGS
    assert flags["--tensor-parallel-size"] == "4" and flags["--max-model-len"] == "8192"
    assert flags["--kv-cache-dtype"] in VLLM_KV and flags["--kv-cache-dtype"] == "fp8"
    assert 0 < float(flags["--gpu-memory-utilization"]) <= 1


def test_llamacpp_flags():
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="llamacpp", quant="gguf:Q4_K_M", seq_len=4096,
                            new_tokens=512, kv_dtype="int8", num_gpus=1)
    text = emit(est, "llamacpp")
    flags = dict(re.findall(r"(?:^|\s)(-[a-z]+) (\S+)", text))
    assert set(flags) <= LLAMACPP_FLAGS
    assert flags["-c"] == str(4096 + 512) and flags["-ctk"] in LLAMACPP_CACHE and flags["-ctk"] == "q8_0"


def test_cli_emit_and_bad_runtime():
    r = subprocess.run([sys.executable, "-m", "modelmem", "estimate", "meta-llama/Llama-3.1-8B", "--mode", "train",
                        "--num-gpus", "8", "--strategy", "zero3", "--emit", "deepspeed"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["zero_optimization"]["stage"] == 3
    r = subprocess.run([sys.executable, "-m", "modelmem", "estimate", "meta-llama/Llama-3.1-8B", "--emit", "slurm"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "emit: 'slurm'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "modelmem", "estimate", "meta-llama/Llama-3.1-8B", "--emit", "deepspeed"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "emit: 'deepspeed'" in r.stderr
