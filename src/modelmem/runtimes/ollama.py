"""Ollama: the llama.cpp settings it launches llama-server with, each default with the file it was read from.

Read from ollama/ollama at fb30760 (Aug 2026), where every GGUF model runs in an upstream llama-server subprocess
(llm/llama_server.go). Ollama passes `-c num_ctx × num_parallel -np num_parallel`, the KV type from
OLLAMA_KV_CACHE_TYPE and `--flash-attn auto|on|off`, and no `-ngl`: llama-server's own --fit chooses the layers
(modelmem.runtimes.llamacpp.fit_gpu_layers). Older Ollama releases fitted layers themselves in llm/memory.go; that
file is gone and its rule is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelmem.errors import InvalidJobError
from modelmem.runtimes.llamacpp import LlamaCppSettings
from modelmem.spec import ModelSpec
from modelmem.units import BYTES_IN_GIB, BYTES_IN_MIB

__all__ = ["OllamaDefault", "DEFAULTS", "KV_TYPES", "MINIMUM_MEMORY", "default_num_ctx", "effective_num_ctx",
           "llama_server_settings"]

OLLAMA_COMMIT = "ollama/ollama@fb30760"


@dataclass(frozen=True)
class OllamaDefault:
    name: str
    value: str
    source: str  # file (and line) of ollama/ollama it was read from


DEFAULTS: tuple[OllamaDefault, ...] = (
    OllamaDefault("context length", "OLLAMA_CONTEXT_LENGTH, else by total VRAM: ≥ 47 GiB → 262144, ≥ 23 GiB → 32768, "
                  "else 4096; never above the model's trained context", "server/routes.go (vram-based default context); "
                  "server/sched.go effectiveContext; llm/server.go NewLlamaServer"),
    OllamaDefault("parallel requests", "OLLAMA_NUM_PARALLEL = 1; llama-server gets -c num_ctx × num_parallel",
                  "envconfig/config.go NumParallel; llm/llama_server.go (-c, -np)"),
    OllamaDefault("KV cache type", "OLLAMA_KV_CACHE_TYPE, default f16 (q8_0, q4_0 accepted)",
                  "envconfig/config.go KvCacheType; llm/llama_server.go (--cache-type-k/--cache-type-v)"),
    OllamaDefault("flash attention", "auto where every GPU supports it (OLLAMA_FLASH_ATTENTION forces on/off)",
                  "llm/llama_server.go LlamaServerFlashAttention"),
    OllamaDefault("GPU layers", "no -ngl: llama-server --fit places the most layers that leave 1024 MiB free per GPU",
                  "llm/llama_server.go (NumGPU −1: -ngl not passed); llama.cpp common/common.h fit_params_target"),
    OllamaDefault("memory reserve", "OLLAMA_GPU_OVERHEAD = 0 bytes per GPU; a GPU with less than overhead + 457 MiB "
                  "free counts as having none", "envconfig/config.go GpuOverhead; ml/device.go MinimumMemory; "
                  "server/sched.go (available := FreeMemory − GpuOverhead − MinimumMemory)"),
)

KV_TYPES = ("f16", "q8_0", "q4_0")  # the OLLAMA_KV_CACHE_TYPE values Ollama documents (docs/faq.md)
MINIMUM_MEMORY = 457 * BYTES_IN_MIB  # ml/device.go DeviceInfo.MinimumMemory (CUDA, ROCm; Metal 512 MiB)


def default_num_ctx(total_vram_bytes: int, gpu_overhead: int = 0) -> int:
    """server/routes.go: the default context by total VRAM (thresholds 47/23 GiB "to account for small differences")."""
    vram = total_vram_bytes - gpu_overhead
    if vram >= 47 * BYTES_IN_GIB:
        return 262144
    if vram >= 23 * BYTES_IN_GIB:
        return 32768
    return 4096


def effective_num_ctx(num_ctx: int, spec: ModelSpec) -> int:
    """server/sched.go effectiveContext: never above the model's trained context; getRunner raises it to at least 4."""
    train = spec.max_position_embeddings or 0
    return max(4, min(num_ctx, train) if train > 0 else num_ctx)


def llama_server_settings(
    spec: ModelSpec, *, total_vram_bytes: int, num_ctx: int | None = None, num_parallel: int = 1,
    kv_type: str = "f16", flash_attn: bool = True,
) -> LlamaCppSettings:
    """The llama-server settings Ollama launches for one model (llm/llama_server.go)."""
    kv = {"fp16": "f16"}.get(kv_type, kv_type)
    if kv not in KV_TYPES:
        raise InvalidJobError("kv_dtype", kv_type, ", ".join(KV_TYPES) + " for runtime ollama (OLLAMA_KV_CACHE_TYPE)")
    ctx = effective_num_ctx(num_ctx if num_ctx is not None else default_num_ctx(total_vram_bytes), spec)
    return LlamaCppSettings(n_ctx=ctx * num_parallel, n_parallel=num_parallel, type_k=kv, type_v=kv,
                            flash_attn=flash_attn)
