"""Serving runtimes through estimate() and the CLI: vLLM capacity, llama.cpp and Ollama placement, bad input."""

import json

import pytest

import modelmem
from modelmem.cli import main
from modelmem.errors import InvalidJobError

GIB = 1 << 30


def test_vllm_json_reports_serving_capacity():
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="vllm", num_gpus=1, max_model_len=32768)
    d = est.to_dict()
    s = d["serving"]
    assert set(s) >= {"kv_cache_tokens", "kv_cache_blocks", "max_concurrency"}
    assert s["kv_cache_tokens"] == s["kv_cache_blocks"] * 16
    # 32 layers × 2 (K, V) × 8 heads × 128 × 2 bytes = 128 KiB per token.
    assert est.per_gpu.components["kv_cache"] == s["kv_cache_tokens"] * 128 * 1024
    assert s["max_concurrency"] == pytest.approx(s["kv_cache_blocks"] / (32768 // 16))
    assert d["fits"] is True and d["cpu_ram"] is None


def test_vllm_refuses_a_32k_qwen_72b_on_two_h100s():
    est = modelmem.estimate("Qwen/Qwen2.5-72B-Instruct", runtime="vllm", num_gpus=2, max_model_len=32768,
                            max_num_seqs=256)
    assert not est.fits
    assert est.per_gpu.serving.refusal.startswith("To serve at least one request with the models's max seq len (32768)")
    # What the memory would hold: less than one 32k request.
    assert est.to_dict()["serving"]["kv_cache_tokens"] < 32768 and est.per_gpu.serving.max_concurrency < 1


def test_vllm_fp8_kv_and_max_model_len_change_the_answer():
    base = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="vllm", num_gpus=1, max_model_len=16384)
    fp8 = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="vllm", num_gpus=1, max_model_len=16384, kv_dtype="fp8")
    assert fp8.per_gpu.serving.kv_cache_tokens == pytest.approx(2 * base.per_gpu.serving.kv_cache_tokens, rel=0.001)
    longer = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="vllm", num_gpus=1, max_model_len=65536)
    assert longer.per_gpu.serving.max_concurrency == pytest.approx(base.per_gpu.serving.max_concurrency / 4, rel=0.01)


def test_vllm_weights_record_tp2():
    # measured.jsonl vllm_l3_8b_tp2_h100_weights: "model weights take 7.48GiB" per rank (PR #10511).
    est = modelmem.estimate("meta-llama/Meta-Llama-3-8B", runtime="vllm", num_gpus=2, strategy="tp", max_model_len=8192)
    assert est.per_gpu.components["weights"] / GIB == pytest.approx(7.48, abs=0.01)


def test_gpt_oss_120b_sized_as_stored_mxfp4():
    est = modelmem.estimate("openai/gpt-oss-120b", runtime="vllm", num_gpus=4, strategy="tp", gpu="a100-80gb")
    assert est.per_gpu.components["weights"] / GIB == pytest.approx(17.2, rel=0.01)  # vLLM's log, issue 14
    quant = modelmem.estimate("openai/gpt-oss-20b", runtime="vllm", num_gpus=1, quant="mxfp4")
    assert quant.per_gpu.components["weights"] < 16 * GIB


def test_llamacpp_gguf_header_placement_and_cpu_ram(tmp_path):
    pytest.importorskip("gguf")
    from test_sources_gguf import EMBD, TOTAL, write_tiny

    path = write_tiny(tmp_path / "tiny.gguf")
    est = modelmem.estimate(str(path), runtime="llamacpp", num_gpus=1, gpu_layers=0)
    d = est.to_dict()
    assert d["cpu_ram"] >= TOTAL  # every weight stays on the CPU at -ngl 0
    assert est.per_gpu.components["weights"] == 0
    full = modelmem.estimate(str(path), runtime="llamacpp", num_gpus=1)
    assert full.per_gpu.components["weights"] == TOTAL - EMBD  # auto-fit: everything but the input layer
    assert full.to_dict()["cpu_ram"] >= EMBD
    assert full.model.stored_as == "Q4_K_M"


def test_llamacpp_never_answers_tp():
    est = modelmem.estimate("meta-llama/Llama-3.1-70B", runtime="llamacpp", quant="gguf:Q4_K_M", num_gpus=2,
                            gpu="rtx-4090")
    assert est.job.strategy == "layer-split"
    with pytest.raises(InvalidJobError, match="strategy"):
        modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="llamacpp", num_gpus=2, strategy="tp")


def test_llamacpp_kv_types_and_context():
    f16 = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="llamacpp", quant="gguf:Q4_K_M", num_gpus=1, n_ctx=8192)
    q8 = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="llamacpp", quant="gguf:Q4_K_M", num_gpus=1, n_ctx=8192,
                           kv_dtype="q8_0")
    assert f16.per_gpu.components["kv_cache"] == 1024 * 2**20  # llama.cpp's log for -c 8192
    assert q8.per_gpu.components["kv_cache"] == 544 * 2**20
    slots = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="llamacpp", quant="gguf:Q4_K_M", num_gpus=1,
                              n_ctx=8192, parallel=4)
    assert slots.per_gpu.components["kv_cache"] == 1024 * 2**20  # llama.cpp's -c is shared by the slots


def test_ollama_multiplies_context_by_parallel():
    one = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="ollama", quant="gguf:Q4_K_M", num_gpus=1, n_ctx=8192)
    four = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="ollama", quant="gguf:Q4_K_M", num_gpus=1, n_ctx=8192,
                             parallel=4)
    assert four.per_gpu.components["kv_cache"] == 4 * one.per_gpu.components["kv_cache"]
    # No num_ctx: Ollama's VRAM tier (≥ 47 GiB → 262144), capped at the model's 131072.
    auto = modelmem.estimate("meta-llama/Llama-3.1-8B", runtime="ollama", quant="gguf:Q4_K_M", num_gpus=1)
    assert auto.per_gpu.components["kv_cache"] + auto.to_dict()["cpu_ram"] >= 131072 * 128 * 1024


@pytest.mark.parametrize("argv, field", [
    (["--runtime", "llamacpp", "--max-num-seqs", "8"], "max_num_seqs"),
    (["--runtime", "hf", "--gpu-memory-utilization", "0.8"], "gpu_memory_utilization"),
    (["--runtime", "llamacpp", "--quant", "gguf:Q4_K_M", "--gpu-layers", "99"], "gpu_layers"),
    (["--runtime", "vllm", "--kv-dtype", "q8_0"], "kv_dtype"),
    (["--runtime", "vllm", "--kv-dtype", "int8"], "kv_dtype"),
    (["--runtime", "ollama", "--kv-dtype", "q5_1"], "kv_dtype"),
    (["--runtime", "vllm", "--n-ctx", "4096"], "n_ctx"),
    (["--runtime", "vllm", "--max-model-len", "1000000"], "max_model_len"),
    (["--runtime", "vllm", "--num-gpus", "2", "--strategy", "layer-split"], "strategy"),
])
def test_bad_serving_input_is_one_line_exit_2(argv, field, capsys):
    assert main(["estimate", "meta-llama/Llama-3.1-8B", "--num-gpus", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert field in err and "\n" not in err and "Traceback" not in err


def test_cli_vllm_text_and_json(capsys):
    assert main(["estimate", "meta-llama/Llama-3.1-8B", "--runtime", "vllm", "--num-gpus", "1", "--max-model-len",
                 "32768", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["serving"]["kv_cache_blocks"] > 0
    assert main(["estimate", "meta-llama/Llama-3.1-8B", "--runtime", "vllm", "--num-gpus", "1", "--max-model-len",
                 "32768"]) == 0
    out = capsys.readouterr().out
    assert "GPU KV cache size:" in out and "Maximum concurrency for 32,768 tokens per request" in out
