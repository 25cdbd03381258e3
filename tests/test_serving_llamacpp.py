"""llama.cpp placement, KV cache and buffers (runtimes/llamacpp.py) against llama.cpp's logs and source arithmetic."""

import os

import pytest

from modelmem.errors import InvalidJobError
from modelmem.model import resolve_model
from modelmem.runtimes import llamacpp as lc

MIB = 1 << 20
GIB = 1 << 30


@pytest.fixture(scope="module")
def llama3():
    return resolve_model("meta-llama/Meta-Llama-3-8B")  # 32 layers, 8 KV heads × 128, vocab 128256


def test_kv_cache_f16_as_logged(llama3):
    # llama.cpp, Llama-3-8B, -c 8192: "KV self size = 1024.00 MiB, K (f16): 512.00 MiB, V (f16): 512.00 MiB"
    # = 8192 cells × 32 layers × 1024 (8 heads × 128) × 2 bytes, for K and for V.
    gpu, cpu = lc.kv_cache_bytes(llama3, lc.LlamaCppSettings(n_ctx=8192))
    assert (gpu, cpu) == (1024 * MIB, 0)


def test_kv_cache_types(llama3):
    s = lc.LlamaCppSettings(n_ctx=8192, type_k="q8_0", type_v="q8_0")
    # q8_0 blocks: 34 bytes per 32 values → K 272 MiB, V 272 MiB.
    assert lc.kv_cache_bytes(llama3, s)[0] == 2 * 8192 * 32 * 1024 * 34 // 32 == 544 * MIB
    s = lc.LlamaCppSettings(n_ctx=8192, type_k="q4_0", type_v="q4_0")
    assert lc.kv_cache_bytes(llama3, s)[0] == 2 * 8192 * 32 * 1024 * 18 // 32 == 288 * MIB
    assert lc.kv_type("fp16") == "f16"
    with pytest.raises(InvalidJobError, match="kv_dtype"):
        lc.kv_type("fp8")  # llama.cpp has no fp8 cache type


def test_quantized_v_cache_needs_flash_attention(llama3):
    layout = lc.layout_for(llama3, 4 * GIB, 500 * MIB, 500 * MIB)
    s = lc.LlamaCppSettings(type_v="q8_0", flash_attn=False)
    with pytest.raises(InvalidJobError, match="kv_dtype"):
        lc.placement(llama3, layout, s, None)


def test_compute_and_output_buffers_as_logged(llama3):
    # "CUDA0 compute buffer size = 258.50 MiB" (Llama-3-8B, -fa, -ub 512) = 512 × (128256 + 4096) × 4 bytes;
    # "CPU output buffer size = 0.49 MiB" = 128256 fp32 logits for one sequence.
    s = lc.LlamaCppSettings(n_ctx=8192, flash_attn=True)
    assert lc.compute_buffer_bytes(llama3, s) == 512 * (128256 + 4096) * 4
    assert lc.compute_buffer_bytes(llama3, s) / MIB == pytest.approx(258.5, abs=0.01)
    assert lc.output_buffer_bytes(llama3, s) / MIB == pytest.approx(0.49, abs=0.01)
    # Without flash attention the 8192 × 512 score matrix of 32 heads (fp32) is the widest moment.
    no_fa = lc.compute_buffer_bytes(llama3, lc.LlamaCppSettings(n_ctx=8192, flash_attn=False))
    assert no_fa == 8192 * 512 * 32 * 4 + 512 * 4096 * 4


def test_gpu_layers_beyond_the_model_is_an_error(llama3):
    layout = lc.layout_for(llama3, 4 * GIB, 500 * MIB, 500 * MIB)
    with pytest.raises(InvalidJobError, match=r"gpu_layers.*0 to 33"):
        lc.placement(llama3, layout, lc.LlamaCppSettings(), 34)


def test_placement_splits_weights_kv_and_ram(llama3):
    layout = lc.GGUFLayout(input_bytes=100, layer_bytes=(10,) * 32, output_bytes=50)
    s = lc.LlamaCppSettings(n_ctx=1024)
    per_layer_kv = 1024 * 1024 * 2 * 2  # cells × (8 × 128) × 2 bytes × (K, V)
    m = lc.placement(llama3, layout, s, 17)  # output layer + the last 16 blocks
    assert (m.blocks_on_gpu, m.output_on_gpu, m.gpu_layers) == (16, True, 17)
    assert m.weights_gpu == 16 * 10 + 50
    assert m.kv_gpu == 16 * per_layer_kv and m.kv_cpu == 16 * per_layer_kv
    assert m.weights_cpu == 100 + 16 * 10  # the input layer never leaves the CPU
    assert m.cpu_ram == m.weights_cpu + m.kv_cpu + m.compute_cpu + m.output_buffer
    none = lc.placement(llama3, layout, s, 0)
    assert none.weights_gpu == 0 and none.kv_gpu == 0 and none.compute_gpu == 0
    assert none.weights_cpu == layout.total_bytes


def test_layer_split_over_two_gpus(llama3):
    layout = lc.GGUFLayout(input_bytes=100, layer_bytes=(10,) * 32, output_bytes=50)
    one = lc.placement(llama3, layout, lc.LlamaCppSettings(n_ctx=1024), None, num_gpus=1)
    two = lc.placement(llama3, layout, lc.LlamaCppSettings(n_ctx=1024), None, num_gpus=2)
    assert two.weights_gpu == 16 * 10 + 50  # half the blocks, and the output layer on the last GPU
    assert two.kv_gpu * 2 == one.kv_gpu


def test_fit_picks_the_most_layers_that_leave_the_margin(llama3):
    layout = lc.GGUFLayout(input_bytes=500 * MIB, layer_bytes=(200 * MIB,) * 32, output_bytes=400 * MIB)
    s = lc.LlamaCppSettings(n_ctx=4096)
    everything = lc.placement(llama3, layout, s, None)
    assert lc.fit_gpu_layers(llama3, layout, s, everything.gpu_total + s.fit_margin) == 33
    ngl = lc.fit_gpu_layers(llama3, layout, s, 4 * GIB)
    assert lc.placement(llama3, layout, s, ngl).gpu_total <= 4 * GIB - s.fit_margin
    assert lc.placement(llama3, layout, s, ngl + 1).gpu_total > 4 * GIB - s.fit_margin
    # More memory never means fewer layers.
    assert lc.fit_gpu_layers(llama3, layout, s, 6 * GIB) >= ngl


def test_sliding_layers_keep_the_window(llama3):
    spec = resolve_model("openai/gpt-oss-20b")  # 12 sliding (128) + 12 full layers, 8 KV heads × 64
    s = lc.LlamaCppSettings(n_ctx=32768)
    per_token = 2 * 8 * 64 * 2
    # llama_kv_cache_iswa: SWA layers hold n_swa × n_seq + n_ubatch = 128 + 512 cells.
    assert lc.kv_cache_bytes(spec, s)[0] == 12 * per_token * 32768 + 12 * per_token * (128 + 512)


def test_gguf_header_parsed_once_per_file(tmp_path):
    pytest.importorskip("gguf")
    from test_sources_gguf import write_tiny

    from modelmem.sources import gguf

    path = write_tiny(tmp_path / "tiny.gguf")
    first = gguf.read_gguf_header(path)
    assert gguf.read_gguf_header(path) is first  # same path, size and mtime: the cached parse
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert gguf.read_gguf_header(path) is not first  # touched: parsed again
