"""What modelmem accepts: every bound on its input, in one table, each beside the largest real value it must admit.

Anything a user can paste (a job, a config.json, a safetensors header, a GGUF file, a size like `1e30`) is checked
against these bounds before any arithmetic or allocation depends on it, and a refusal is one line naming the field.
The bounds are generous (4× to 100× the largest real model) and exist so that every estimate of an input that passes
finishes in bounded time and memory: ≤ 2 CPU seconds and ≤ 256 MiB for any accepted input, ≤ 0.1 s for a config
at every limit (`num_gpus auto` included: the GPU count is bisected, not walked), ≤ 1.3 s for the largest safetensors
header. `python benchmarks/fuzz.py --bounds` times the largest accepted inputs; README shows the last run.

JSON is pre-scanned (`scan_json`) before `json.loads`: string bodies are dropped with bytes.replace/split, then
nesting depth, item counts and the longest digit run are counted without recursion, so a 100,000-deep `[[[…` or a
5,000-digit integer is refused by name instead of raising RecursionError or ValueError.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limit:
    field: str
    maximum: int
    largest_real: str  # the largest value a real model or job uses, and where it is from

    def problem(self, value: int) -> str | None:
        """None when `value` is within the limit, else the one-line reason."""
        if value <= self.maximum:
            return None
        return f"{self.field} {_short(value)} exceeds modelmem's limit of {self.maximum:,d} (largest real: {self.largest_real})"


def _short(value: int) -> str:
    text = str(value) if abs(value) < 10**30 else f"~1e{len(str(abs(value))) - 1}"
    return text


# --- the model's shape (any source: config.json, GGUF metadata, a bare size, a ModelSpec) -------------------------
LAYERS = Limit("num_layers", 512, "126, Llama-3.1-405B; 96, GPT-3 175B")
HIDDEN = Limit("hidden_size", 131_072, "18,432, PaLM-540B; 16,384, Llama-3.1-405B")
HEADS = Limit("num_heads", 8192, "128, Llama-3.1-405B and DeepSeek-V3")
HEAD_DIM = Limit("head_dim", 16_384, "256, Gemma 2/3; 576 for DeepSeek-V3's MLA latent + rope")
INTERMEDIATE = Limit("intermediate_size", 1 << 20, "53,248, Llama-3.1-405B; 73,728, Grok-1 experts")
VOCAB = Limit("vocab_size", 1 << 22, "262,208, Gemma 3; 256,000, Gemma 1/2")
EXPERTS = Limit("num_experts", 2048, "384, Kimi K2; 512, Qwen3-Next")
POSITIONS = Limit("max_position_embeddings", 1 << 30, "10,485,760, Llama 4 Scout")
PARAMS = Limit("parameters", 10**13, "1.6e12, Switch-C; 1.0e12, Kimi K2")
CHECKPOINT_BYTES = Limit("checkpoint bytes", 8 * 10**14, "~2 TB, Kimi K2 in bf16")
CONFIG_INT = Limit("a config integer", 1 << 48, "1,000,000,000, rope_theta written as an integer")

# --- the job ----------------------------------------------------------------------------------------------------
BATCH = Limit("batch_size", 1 << 20, "4,096 sequences per GPU in vLLM serving (max_num_seqs)")
SEQ_LEN = Limit("seq_len", 1 << 27, "10,485,760, Llama 4 Scout's context")
NEW_TOKENS = Limit("new_tokens", 1 << 27, "10,485,760, Llama 4 Scout's context")
LORA_RANK = Limit("lora_rank", 1 << 16, "64, the LoRA paper's largest (Hu et al. 2021, Table 6); recipes stay ≤ 1,024")
LORA_ALPHA = Limit("lora_alpha", 1 << 20, "2 × rank")
GROUP_SIZE = Limit("quant_group_size", 1 << 20, "128, the GPTQ/AWQ default; a whole row is at most 53,248 wide")
GPUS = Limit("num_gpus", 1 << 16, "16,384 H100s for Llama-3.1-405B pretraining")
GPU_LAYERS = Limit("gpu_layers", 1 << 16, "999 in llama.cpp recipes ('all layers')")
NUM_SEQS = Limit("max_num_seqs", 1 << 20, "1,024 in vLLM high-throughput configs")
BLOCK_SIZE = Limit("block_size", 1 << 16, "128 (vLLM's largest documented KV block)")
DIGITS = Limit("integer digits", 40, "20, a uint64 offset or count")

# --- files and headers ------------------------------------------------------------------------------------------
# safetensors' own MAX_HEADER_SIZE (safetensors/src/tensor.rs); huggingface_hub's remote cap is 25 MB.
# huggingface_hub's cap for remote headers (constants.SAFETENSORS_MAX_HEADER_LENGTH); safetensors' own is 100 MB.
SAFETENSORS_HEADER_BYTES = Limit("safetensors header bytes", 25_000_000, "~3 MB, a DeepSeek-V3 shard")
TENSORS_PER_HEADER = Limit("tensors in one header", 131_072, "~94,000 if DeepSeek-V3 were one file; ~5,000 per shard")
SHARDS = Limit("shards in an index", 16_384, "191, Llama-3.1-405B; 163, DeepSeek-V3")
CONFIG_BYTES = Limit("config.json bytes", 4 * 1024 * 1024, "~200 KB, Llama-3.2-Vision with its vision config")
INDEX_BYTES = Limit("index bytes", 64 * 1024 * 1024, "~10 MB for 100k tensors")
GGUF_HEADER_BYTES = Limit("GGUF header bytes", 1 << 30, "~20 MB, vocabulary and merges of a 262k-token model")
GGUF_KV = Limit("GGUF metadata keys", 1 << 16, "~60, a Gemma 3 GGUF")
GGUF_TENSORS = Limit("GGUF tensors", 1 << 15, "~1,100, DeepSeek-V3 (experts merged per layer); ~1,140, Llama-3.1-405B")
GGUF_STRINGS = Limit("GGUF array strings", 1 << 21, "~410,000, Llama 3's 128k tokens + 280k merges")
GGUF_SPLITS = Limit("GGUF split parts", 1024, "~30, DeepSeek-V3 at Q8_0 in 50 GB parts")
JSON_DEPTH = Limit("JSON nesting depth", 64, "4, a VLM config.json (vision_config.rope_scaling…)")
# Brackets, commas and colons in one JSON document: 15 per 2-D tensor in a safetensors header.
JSON_ITEMS = Limit("JSON items", 16 * TENSORS_PER_HEADER.maximum, "~1,400,000, a 94,000-tensor header")
TENSOR_DIMS = Limit("tensor dimensions", 16, "5, conv3d patch embeddings of video VLMs (GGML_MAX_DIMS is 4)")
# safetensors stores offsets and shapes as usize; GGUF dims are uint64 but ggml tensors index with int64.
TENSOR_EXTENT = Limit("a tensor dimension or offset", (1 << 63) - 1, "~2^40, the bytes of a 1 TB checkpoint shard")

ALL: tuple[Limit, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, Limit))


def check_int(limit: Limit, value: int, fail: Callable[[str], Exception]) -> int:
    """`value` if within `limit`, else raise fail(message)."""
    problem = limit.problem(value)
    if problem is not None:
        raise fail(problem)
    return value


def check_spec(spec: Any, fail: Callable[[str], Exception]) -> None:
    """Every shape field of a ModelSpec within its limit (a spec built in code is checked like a config)."""
    moe = getattr(spec, "moe", None)
    pairs = [
        (LAYERS, spec.num_layers), (HIDDEN, spec.hidden_size), (HEADS, spec.num_heads), (HEADS, spec.num_kv_heads),
        (HEAD_DIM, spec.head_dim), (INTERMEDIATE, spec.intermediate_size), (VOCAB, spec.vocab_size),
        (PARAMS, spec.extra_params),
    ]
    if spec.max_position_embeddings is not None:
        pairs.append((POSITIONS, spec.max_position_embeddings))
    if spec.sliding_window is not None:
        pairs.append((POSITIONS, spec.sliding_window))
    if moe is not None:
        pairs += [(EXPERTS, moe.num_experts), (EXPERTS, moe.experts_per_token), (EXPERTS, moe.num_shared_experts),
                  (INTERMEDIATE, moe.expert_intermediate_size), (INTERMEDIATE, moe.shared_intermediate_size),
                  (LAYERS, moe.first_dense_layers), (LAYERS, moe.layer_freq)]
    for limit, value in pairs:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"{limit.field} must be a non-negative integer, got {value!r}")
        check_int(limit, value, fail)
    if len(spec.layer_types) > LAYERS.maximum:
        raise fail(f"layer_types has {len(spec.layer_types):,d} entries; {LAYERS.problem(len(spec.layer_types))}")


# --- bounded JSON ---------------------------------------------------------------------------------------------------

_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_SAME_BRACKET = bytes.maketrans(b"{}", b"[]")
_DIGIT_MASK = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))


@dataclass(frozen=True)
class JSONShape:
    items: int  # containers + commas + colons: an upper bound on the values json.loads would build
    longest_digits: int
    depth: int  # -1 when not counted (too many items to be worth it)
    balanced: bool = True


def scan_json(data: bytes, max_items: int | None = None) -> JSONShape:
    """Items, longest digit run and nesting depth of a JSON document, counted without recursion or parsing.

    The depth walk is skipped (depth -1) when the items already exceed `max_items`, so the scan stays linear in
    the bytes with a small constant.
    """
    # Outside strings valid JSON has no backslash or quote, so dropping escaped backslashes, then escaped quotes,
    # leaves quotes that pair up: the even pieces between them are everything that is not a string body.
    bare = b"".join(data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[0::2])
    brackets = bare.translate(None, _NOT_BRACKETS)
    items = len(brackets) + bare.count(b",") + bare.count(b":")
    longest = 0
    digits = bare.translate(_DIGIT_MASK)
    if b"0" * (DIGITS.maximum + 1) in digits:
        longest = max(len(run) for run in digits.split())
    if max_items is not None and items > max_items:
        return JSONShape(items, longest, -1)
    # Depth without recursion: each round deletes every innermost "[]" pair (braces folded into brackets), so the
    # number of rounds is the depth; a residue that no round can shrink means unbalanced brackets.
    pairs = brackets.translate(_SAME_BRACKET)
    depth = 0
    while pairs and depth <= JSON_DEPTH.maximum:
        shorter = pairs.replace(b"[]", b"")
        if len(shorter) == len(pairs):
            return JSONShape(items, longest, depth, balanced=False)
        pairs, depth = shorter, depth + 1
    return JSONShape(items, longest, depth)


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"the number {text[:40]} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise _NotFinite(f"{text} is not a number modelmem accepts")


def loads_json(data: bytes | str, fail: Callable[[str], Exception], *, max_items: int | None = None) -> Any:
    """json.loads behind the limits: depth, items, digits, finite numbers. Raises fail(message) naming the limit."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    cap = max_items if max_items is not None else JSON_ITEMS.maximum
    shape = scan_json(raw, cap)
    if shape.longest_digits:
        raise fail(f"a number has {shape.longest_digits:,d} digits; {DIGITS.field} are limited to {DIGITS.maximum}")
    if shape.depth > JSON_DEPTH.maximum:
        raise fail(f"{JSON_DEPTH.field} exceeds modelmem's limit of {JSON_DEPTH.maximum} "
                   f"(largest real: {JSON_DEPTH.largest_real})")
    if not shape.balanced:
        raise fail("not valid JSON (its brackets do not balance)")
    if shape.items > cap:
        raise fail(f"{JSON_ITEMS.field} {shape.items:,d} exceed modelmem's limit of {cap:,d} "
                   f"(largest real: {JSON_ITEMS.largest_real})")
    try:
        return json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except _NotFinite as e:
        raise fail(str(e)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"not valid JSON ({e})") from e
    except RecursionError:  # unreachable behind the depth check; kept so no input can raise it
        raise fail(JSON_DEPTH.problem(JSON_DEPTH.maximum + 1) or "") from None


# --- files ------------------------------------------------------------------------------------------------------


def regular_file_size(path: Any, fail: Callable[[str], Exception]) -> int:
    """The size of `path` if it is a regular file; a FIFO, device, socket or folder is refused before any open()
    (opening a FIFO blocks until a writer comes; reading a device may never end)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise fail(f"cannot read ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise fail(f"is {kind}, not a regular file")
    return st.st_size
