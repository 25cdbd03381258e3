"""llama.cpp as it places a model: which tensors go to which device, its KV cache, compute and output buffers.

Read from ggml-org/llama.cpp (b6xxx, 2025): src/llama-model.cpp `load_tensors` (three placement groups: the input
layer always on the CPU, "very little benefit to offloading the input layer"; the n_layer repeating blocks `blk.N.*`;
the output layer, slot n_layer; `--n-gpu-layers N` offloads the last N of those n_layer + 1 slots,
i_gpu_start = max(n_layer + 1 - N, 0)); src/llama-kv-cache.cpp (K and V per layer of `-ctk/-ctv` type for n_ctx
cells; sliding-window layers keep n_swa × n_seq + n_ubatch cells); src/llama-context.cpp (the host output buffer
n_vocab × n_seq floats; the worst-case compute graph for n_ubatch tokens); common/common.h (defaults: -c 4096,
-ub 512, --fit on with a 1024 MiB free margin per device); common/arg.cpp (the KV cache types).
Multi-GPU is llama.cpp's layer split (--split-mode layer), never tensor parallel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelmem import limits
from modelmem.errors import InvalidJobError, shown
from modelmem.result import PerGPU
from modelmem.spec import ModelSpec
from modelmem.units import BYTES_IN_GIB, BYTES_IN_MIB

if TYPE_CHECKING:
    from modelmem.counts import ParamCounts
    from modelmem.job import Job
    from modelmem.result import GPUInfo
    from modelmem.sources.gguf import GGUFTensor

__all__ = [
    "GGUFLayout", "GGUFSplit", "LlamaCppSettings", "LlamaCppMemory", "KV_TYPES", "LAYOUT_KEY", "INPUT_TENSORS",
    "OUTPUT_TENSORS", "offloaded", "gguf_split", "gguf_layout", "layout_from_tensors", "layout_for",
    "kv_type", "kv_bytes_per_token", "kv_cache_bytes", "compute_buffer_bytes", "output_buffer_bytes",
    "placement", "fit_gpu_layers", "file_type_label", "settings_for_job", "per_gpu",
]

# LLM_TENSOR_LAYER_INPUT and LLM_TENSOR_LAYER_OUTPUT tensors (src/llama-arch.cpp LLM_TENSOR_INFOS).
INPUT_TENSORS = ("token_embd", "position_embd", "token_types", "per_layer_token_embd")
OUTPUT_TENSORS = ("output", "output_norm", "cls", "cls_out", "output_scale")
_BLOCK_NAME = re.compile(r"^blk\.([0-9]{1,9})\.")  # ASCII digits only: str.isdigit() also accepts "²"


@dataclass(frozen=True)
class GGUFSplit:
    gpu_bytes: int
    cpu_bytes: int
    gpu_layers: int  # repeating blocks on the GPU
    output_on_gpu: bool

    @property
    def total_bytes(self) -> int:
        return self.gpu_bytes + self.cpu_bytes


@dataclass(frozen=True)
class GGUFLayout:
    """Weight bytes in llama.cpp's placement groups."""

    input_bytes: int  # token_embd & co: always on the CPU
    layer_bytes: tuple[int, ...]  # blk.N.*
    output_bytes: int  # output_norm, output (the LM head)
    other_bytes: int = 0  # e.g. rope_freqs, token_embd_norm: placed with the first block
    tied_output_bytes: int = 0  # no output.weight: llama.cpp duplicates token_embd as the head (TENSOR_DUPLICATED)

    @property
    def total_bytes(self) -> int:
        """Bytes in the file; the tied head's GPU copy is not in the file."""
        return self.input_bytes + sum(self.layer_bytes) + self.output_bytes + self.other_bytes

    def split(self, gpu_layers: int | None) -> GGUFSplit:
        """Weight bytes on GPU and CPU for llama.cpp `--n-gpu-layers gpu_layers` (None: everything offloaded)."""
        on_gpu, output_on_gpu = offloaded(len(self.layer_bytes), gpu_layers)
        gpu = sum(b for b, g in zip(self.layer_bytes, on_gpu) if g)
        if on_gpu and on_gpu[0]:
            gpu += self.other_bytes
        if output_on_gpu:
            # A tied head is a GPU copy of token_embd; the CPU keeps the original for the input layer.
            gpu += self.output_bytes + self.tied_output_bytes
        return GGUFSplit(
            gpu_bytes=gpu, cpu_bytes=self.total_bytes - gpu + (self.tied_output_bytes if output_on_gpu else 0),
            gpu_layers=sum(on_gpu), output_on_gpu=output_on_gpu,
        )


def offloaded(num_layers: int, gpu_layers: int | None) -> tuple[tuple[bool, ...], bool]:
    """Which blocks, and whether the output layer, llama.cpp puts on the GPU for `--n-gpu-layers gpu_layers`.

    src/llama-model.cpp: i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0), act_gpu_layers = min(n_gpu_layers,
    n_layer + 1); slot il (n_layer is the output layer) is on the GPU iff i_gpu_start <= il < i_gpu_start + act.
    A negative value (llama.cpp's -1 default) or None offloads everything. KV cache for a block lives with it.
    """
    slots = num_layers + 1
    n = slots if gpu_layers is None or gpu_layers < 0 else gpu_layers
    start = max(slots - n, 0)
    active = min(n, slots)
    gpu = tuple(start <= il < start + active for il in range(slots))
    return gpu[:num_layers], gpu[num_layers]


def gguf_split(source: ModelSpec | GGUFLayout, gpu_layers: int | None) -> GGUFSplit:
    """GPU and CPU weight bytes of a GGUF model under `--n-gpu-layers`; `source` is a spec from spec_from_gguf."""
    layout = source if isinstance(source, GGUFLayout) else gguf_layout(source)
    if layout is None:
        from modelmem.sources.gguf import GGUFError

        raise GGUFError(getattr(source, "name", "?"), "the spec was not read from a GGUF file; no layer split known")
    return layout.split(gpu_layers)


LAYOUT_KEY = "modelmem_gguf_layout"


def gguf_layout(spec: ModelSpec) -> GGUFLayout | None:
    """The placement groups `spec_from_gguf` recorded, JSON-safe, in `spec.config["modelmem_gguf_layout"]`."""
    raw = spec.config.get(LAYOUT_KEY)
    if not isinstance(raw, Mapping):
        return None
    return GGUFLayout(
        input_bytes=raw["input_bytes"], layer_bytes=tuple(raw["layer_bytes"]), output_bytes=raw["output_bytes"],
        other_bytes=raw.get("other_bytes", 0), tied_output_bytes=raw.get("tied_output_bytes", 0),
    )


def layout_from_tensors(tensors: Sequence[GGUFTensor], num_layers: int) -> GGUFLayout:
    layers = [0] * num_layers
    input_bytes = output_bytes = other = 0
    names = set()
    for t in tensors:
        stem = t.name.split(".", 1)[0]
        names.add(stem)
        block = _BLOCK_NAME.match(t.name)
        if block is not None:
            index = int(block.group(1))
            if index >= limits.LAYERS.maximum:  # a list this long would be the file's doing, not the model's
                from modelmem.sources.gguf import GGUFMalformedError

                raise GGUFMalformedError(f"tensor {shown(t.name)}", f"block {index:,d}: {limits.LAYERS.problem(index + 1)}")
            if index >= num_layers:  # MTP / NextN blocks beyond block_count (GLM-4.5, DeepSeek-V3 GGUFs)
                layers.extend([0] * (index + 1 - num_layers))
                num_layers = index + 1
            layers[index] += t.n_bytes
        elif stem in INPUT_TENSORS:
            input_bytes += t.n_bytes
        elif stem in OUTPUT_TENSORS:
            output_bytes += t.n_bytes
        else:
            other += t.n_bytes
    tied = 0
    if "output" not in names:
        tied = sum(t.n_bytes for t in tensors if t.name == "token_embd.weight")
    return GGUFLayout(input_bytes, tuple(layers), output_bytes, other, tied)




def layout_for(spec: ModelSpec, weight_bytes: int, embed_bytes: int, head_bytes: int) -> GGUFLayout:
    """A GGUF layout for a model that was not read from a GGUF file (a catalog model with --quant gguf:TYPE): the
    blocks share `weight_bytes` − embeddings − head evenly."""
    recorded = gguf_layout(spec)
    if recorded is not None:
        return recorded
    layers = max(1, spec.num_layers)
    tied = spec.tie_word_embeddings
    body = max(0, weight_bytes - embed_bytes - (0 if tied else head_bytes))
    per = body // layers
    return GGUFLayout(input_bytes=embed_bytes, layer_bytes=(per,) * layers, output_bytes=0 if tied else head_bytes,
                      other_bytes=body - per * layers, tied_output_bytes=embed_bytes if tied else 0)


# -ctk / -ctv types (common/arg.cpp kv_cache_types) → (elements per block, bytes per block), ggml type_traits.
KV_TYPES: Mapping[str, tuple[int, int]] = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20),
    "iq4_nl": (32, 18), "q5_0": (32, 22), "q5_1": (32, 24),
}
_KV_ALIASES = {"fp32": "f32", "fp16": "f16", "int8": "q8_0", "int4": "q4_0"}  # JOBS.md names → ggml block types


def kv_type(name: str) -> str:
    """A job's kv_dtype as llama.cpp names it; a type llama.cpp lacks is an input error."""
    key = _KV_ALIASES.get(name.lower(), name.lower())
    if key not in KV_TYPES:
        raise InvalidJobError("kv_dtype", name, ", ".join(KV_TYPES) + " for runtime llamacpp (-ctk/-ctv)")
    return key


@dataclass(frozen=True)
class LlamaCppSettings:
    """llama-server's context settings (common/common.h defaults)."""

    n_ctx: int = 4096  # -c: cells of the KV cache, shared by all slots
    n_parallel: int = 1  # -np: slots; each sequence gets n_ctx / n_parallel
    type_k: str = "f16"  # -ctk
    type_v: str = "f16"  # -ctv
    flash_attn: bool = True  # -fa (auto turns it on where the backend supports it)
    n_ubatch: int = 512  # -ub: tokens per compute graph
    fit_margin: int = 1024 * BYTES_IN_MIB  # --fit-target: memory --fit leaves free on each device


def _kv_widths(spec: ModelSpec) -> tuple[int, int]:
    """(n_embd_k_gqa, n_embd_v_gqa): elements K and V hold per token per layer."""
    if spec.mla is not None:
        # deepseek2 with MLA: the compressed latent plus the rope key as K, the latent as V (llama-model.cpp).
        return spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim, spec.mla.kv_lora_rank
    return spec.num_kv_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim


def _type_bytes(name: str, elements: int) -> float:
    block, size = KV_TYPES[name]
    return elements * size / block


def kv_bytes_per_token(spec: ModelSpec, settings: LlamaCppSettings) -> float:
    """Bytes one cached token takes in one layer (K of type_k plus V of type_v)."""
    k, v = _kv_widths(spec)
    return _type_bytes(kv_type(settings.type_k), k) + _type_bytes(kv_type(settings.type_v), v)


def _cells(spec: ModelSpec, settings: LlamaCppSettings, kind: str) -> int:
    if kind == "sliding" and spec.sliding_window:
        # llama_kv_cache_iswa: the SWA cache holds n_swa × n_seq_max + n_ubatch cells (unless --swa-full).
        return min(settings.n_ctx, spec.sliding_window * settings.n_parallel + settings.n_ubatch)
    return settings.n_ctx


def kv_cache_bytes(spec: ModelSpec, settings: LlamaCppSettings, on_gpu: Sequence[bool] | None = None) -> tuple[int, int]:
    """(GPU bytes, CPU bytes) of the KV cache: each layer's cache lives with its block (`offloaded`)."""
    per = kv_bytes_per_token(spec, settings)
    gpu = cpu = 0
    for i, kind in enumerate(spec.layer_kinds):
        size = int(per * _cells(spec, settings, kind))
        if on_gpu is None or (i < len(on_gpu) and on_gpu[i]):
            gpu += size
        else:
            cpu += size
    return gpu, cpu


def output_buffer_bytes(spec: ModelSpec, settings: LlamaCppSettings) -> int:
    """llama_context::output_reserve: fp32 logits of one output per sequence, in host memory ("CPU output buffer")."""
    return spec.vocab_size * 4 * settings.n_parallel


def compute_buffer_bytes(spec: ModelSpec, settings: LlamaCppSettings, output_on_gpu: bool = True) -> int:
    """The worst-case graph's buffer on the device that runs it (ggml-alloc reuses memory between nodes, so the
    buffer is the largest moment plus the residual stream). Moments, all fp32, for n_ubatch tokens:
      logits: n_vocab + the normed hidden state per token (only where the output layer runs);
      attention without flash attention: the n_kv × n_ubatch score matrix of every head (soft_max in place);
      the MLP: gate, up and their product (n_ff each).
    Checked against llama.cpp's "CUDA0 compute buffer size = 258.50 MiB" for Llama-3-8B (-fa, -ub 512):
    512 × (128256 + 4096) × 4 bytes."""
    u, h = settings.n_ubatch, spec.hidden_size
    logits = u * (spec.vocab_size + h) * 4 if output_on_gpu else 0
    n_kv = max(_cells(spec, settings, kind) for kind in set(spec.layer_kinds))
    scores = 0 if settings.flash_attn else n_kv * u * spec.num_heads * 4
    ff = spec.moe.expert_intermediate_size * spec.moe.experts_per_token if spec.moe is not None else spec.intermediate_size
    mlp = 3 * u * ff * 4
    return max(logits, scores + u * h * 4, mlp + u * h * 4)


@dataclass(frozen=True)
class LlamaCppMemory:
    """Where llama.cpp puts a model's bytes: the busiest GPU, and host RAM."""

    settings: LlamaCppSettings
    gpu_layers: int  # the -ngl value: blocks plus the output layer (n_layer + 1 means everything)
    blocks_on_gpu: int
    num_layers: int
    output_on_gpu: bool
    num_gpus: int
    weights_gpu: int  # on the busiest GPU
    kv_gpu: int
    compute_gpu: int
    weights_cpu: int
    kv_cpu: int
    compute_cpu: int
    output_buffer: int

    @property
    def gpu_total(self) -> int:
        return self.weights_gpu + self.kv_gpu + self.compute_gpu

    @property
    def cpu_ram(self) -> int:
        """Host memory: weights left on the CPU (the input layer always), their KV, the CPU compute and output buffers."""
        return self.weights_cpu + self.kv_cpu + self.compute_cpu + self.output_buffer


def placement(spec: ModelSpec, layout: GGUFLayout, settings: LlamaCppSettings, gpu_layers: int | None,
              num_gpus: int = 1) -> LlamaCppMemory:
    """Bytes per device for `-ngl gpu_layers` (None or negative: all) over `num_gpus` GPUs split by layer
    (--split-mode layer: contiguous blocks per GPU, the output layer on the last; the busiest GPU is reported)."""
    n_layer = len(layout.layer_bytes)
    if gpu_layers is not None and gpu_layers > n_layer + 1:
        raise InvalidJobError("gpu_layers", gpu_layers, f"0 to {n_layer + 1} ({n_layer} blocks and the output layer)")
    if not settings.flash_attn and KV_TYPES[kv_type(settings.type_v)][0] > 1:
        # llama_init_from_model: "V cache quantization requires flash_attn".
        raise InvalidJobError("kv_dtype", settings.type_v, "f16, bf16 or f32 for the V cache without flash attention")
    on_gpu, output_on_gpu = offloaded(n_layer, gpu_layers)
    split = layout.split(gpu_layers)
    kv_gpu, kv_cpu = kv_cache_bytes(spec, settings, on_gpu[: spec.num_layers])
    blocks = sum(on_gpu)
    compute_gpu = compute_buffer_bytes(spec, settings, output_on_gpu) if (blocks or output_on_gpu) else 0
    cpu_runs = blocks < n_layer or not output_on_gpu
    compute_cpu = compute_buffer_bytes(spec, settings, not output_on_gpu) if cpu_runs else 0
    n = max(1, min(num_gpus, max(blocks, 1)))
    if n > 1:
        # Layer split: each GPU gets about blocks / n of the offloaded blocks; the last also holds the output layer.
        per_block_weights = (split.gpu_bytes - (layout.output_bytes + layout.tied_output_bytes if output_on_gpu else 0)) / blocks
        share = math.ceil(blocks / n)
        head = layout.output_bytes + layout.tied_output_bytes if output_on_gpu else 0
        weights_gpu = int(per_block_weights * share) + head
        kv_gpu = int(kv_gpu / blocks * share)
    else:
        weights_gpu = split.gpu_bytes
    return LlamaCppMemory(
        settings=settings, gpu_layers=blocks + (1 if output_on_gpu else 0), blocks_on_gpu=blocks, num_layers=n_layer,
        output_on_gpu=output_on_gpu, num_gpus=n, weights_gpu=weights_gpu, kv_gpu=kv_gpu, compute_gpu=compute_gpu,
        weights_cpu=split.cpu_bytes, kv_cpu=kv_cpu, compute_cpu=compute_cpu,
        output_buffer=output_buffer_bytes(spec, settings),
    )


def fit_gpu_layers(spec: ModelSpec, layout: GGUFLayout, settings: LlamaCppSettings, gpu_memory_bytes: int,
                   num_gpus: int = 1, reserve: int = 0) -> int:
    """The -ngl llama.cpp's --fit picks: the most slots (blocks, then the output layer) whose bytes on the busiest
    GPU, plus the fit margin and `reserve` (CUDA context, Ollama's minimum), stay within the GPU's memory."""
    budget = gpu_memory_bytes - settings.fit_margin - reserve
    best = 0
    for ngl in range(len(layout.layer_bytes) + 2):
        if placement(spec, layout, settings, ngl, num_gpus).gpu_total <= budget:
            best = ngl
        else:
            break
    return best


def file_type_label(spec: ModelSpec) -> str | None:
    """The GGUF file type (Q4_K_M, MXFP4_MOE…) a spec read from a GGUF file carries."""
    q = spec.quantization or {}
    return q.get("file_type") if q.get("quant_method") == "gguf" else None


LLAMA_CPP_DEFAULT_CTX = 4096  # common/common.h n_ctx


def settings_for_job(spec: ModelSpec, job: Job, gpu: GPUInfo, num_gpus: int) -> LlamaCppSettings:
    """llama-server's settings for a job: -c n_ctx (default 4096, at least the job's tokens), -np, -ctk/-ctv, -fa."""
    kv = kv_type(job.kv_dtype)
    n_ctx = job.n_ctx or max(LLAMA_CPP_DEFAULT_CTX, job.seq_len + job.new_tokens)
    return LlamaCppSettings(n_ctx=n_ctx, n_parallel=job.parallel or 1, type_k=kv, type_v=kv,
                            flash_attn=job.flash_attention)


def per_gpu(spec: ModelSpec, job: Job, n: int, gpu: GPUInfo, settings: LlamaCppSettings, weight_bytes: int,
            counts: ParamCounts, reserve: int = 0) -> PerGPU:
    """The busiest GPU of a llama.cpp run (weights, KV cache, compute buffer) and the host RAM it needs."""
    from modelmem.memory.overhead import CONTEXT_BYTES

    bpp = weight_bytes / max(1, counts.total)
    layout = layout_for(spec, weight_bytes, int(counts.embeddings * bpp), int(counts.lm_head * bpp))
    context = CONTEXT_BYTES[gpu.platform]
    ngl = job.gpu_layers
    auto = ngl is None
    if auto:
        ngl = fit_gpu_layers(spec, layout, settings, gpu.usable_bytes - context, n, reserve)
    mem = placement(spec, layout, settings, ngl, n)
    mib = BYTES_IN_MIB
    notes = [
        f"llama.cpp -ngl {mem.gpu_layers}{' (--fit: the most layers leaving ' + str(settings.fit_margin // mib) + ' MiB free)' if auto else ''}: "
        f"{mem.blocks_on_gpu} of {mem.num_layers} blocks{' and the output layer' if mem.output_on_gpu else ''} on "
        f"{'the GPU' if mem.num_gpus == 1 else str(mem.num_gpus) + ' GPUs, split by layer (the busiest shown)'}; "
        f"the input layer stays on the CPU",
        f"-c {settings.n_ctx} (-np {settings.n_parallel}), K {settings.type_k} / V {settings.type_v}, flash attention "
        f"{'on' if settings.flash_attn else 'off'}, -ub {settings.n_ubatch}; compute buffer {mem.compute_gpu / mib:.2f} MiB, "
        f"host output buffer {mem.output_buffer / mib:.2f} MiB",
        f"CPU RAM {mem.cpu_ram / BYTES_IN_GIB:.2f} GiB: weights {mem.weights_cpu / BYTES_IN_GIB:.2f}, KV {mem.kv_cpu / BYTES_IN_GIB:.2f}, "
        f"compute {mem.compute_cpu / mib:.0f} MiB, output buffer {mem.output_buffer / mib:.2f} MiB",
    ]
    refusal = None
    if gpu.unified_memory and mem.gpu_total + mem.cpu_ram > gpu.memory_bytes:
        # On unified memory the "CPU" part lives in the same RAM: the layers llama.cpp leaves off the GPU do not help.
        refusal = (f"needs {(mem.gpu_total + mem.cpu_ram) / BYTES_IN_GIB:.1f} GiB of unified memory (GPU "
                   f"{mem.gpu_total / BYTES_IN_GIB:.1f} + CPU {mem.cpu_ram / BYTES_IN_GIB:.1f}); the machine has "
                   f"{gpu.memory_bytes / BYTES_IN_GIB:.1f}")
        notes.append(refusal)
    components = {"weights": mem.weights_gpu, "kv_cache": mem.kv_gpu, "compute_buffer": mem.compute_gpu}
    # ggml allocates each buffer once at its final size: no caching-allocator slack.
    host = {"weights": mem.weights_cpu, "kv_cache": mem.kv_cpu, "compute_buffer": mem.compute_cpu,
            "output_buffer": mem.output_buffer}
    return PerGPU(components=components, allocator_overhead=0, cuda_context=context, notes=tuple(notes),
                  cpu_components=host, refusal=refusal)
