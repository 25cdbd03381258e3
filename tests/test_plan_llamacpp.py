"""llama.cpp --gpu-layers through the estimator: weights and KV cache split as llama.cpp places them."""

import pytest

import modelmem

pytest.importorskip("gguf")
from test_sources_gguf import EMBD, LAYER, OUT, OUT_NORM, TOTAL, write_tiny  # noqa: E402


def test_gguf_weights_are_sized_as_stored(tmp_path):
    path = write_tiny(tmp_path / "tiny.gguf")
    est = modelmem.estimate(str(path), runtime="llamacpp", seq_len=64, num_gpus=1)
    # Everything fits: every block and the output layer on the GPU; token_embd (the input layer) stays on the CPU.
    assert est.per_gpu.components["weights"] == TOTAL - EMBD
    assert est.per_gpu.cpu_ram >= EMBD


def test_gpu_layers_split_weights_and_kv(tmp_path):
    path = write_tiny(tmp_path / "tiny.gguf")
    full = modelmem.estimate(str(path), runtime="llamacpp", seq_len=64, n_ctx=64, num_gpus=1).per_gpu.components
    one_block = modelmem.estimate(str(path), runtime="llamacpp", seq_len=64, n_ctx=64, num_gpus=1,
                                  gpu_layers=2).per_gpu.components
    # -ngl 2 on 2 blocks: the output layer and the last block (llama.cpp counts n_layer + 1 slots); token_embd stays on the CPU.
    assert one_block["weights"] == OUT_NORM + OUT + LAYER
    # KV follows its block: 2 (K,V) × 2 kv heads × 64 dims × 64 cells (-c 64) × 2 bytes for the one block on the GPU.
    assert one_block["kv_cache"] == 2 * 2 * 64 * 64 * 2
    assert full["kv_cache"] == 2 * one_block["kv_cache"]
    assert EMBD > 0
