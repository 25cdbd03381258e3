"""The GPU catalog and every other way to name a device: sizes, descriptions, platforms and their limits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import modelmem
from modelmem.catalog.gpus import SOURCED, gpus, lookup_gpu
from modelmem.errors import InvalidJobError, UnknownGPUError
from modelmem.memory import overhead as ov
from modelmem.result import GPUInfo

GiB, MiB = 1024**3, 1024**2


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelmem", *args], capture_output=True, text=True)


# --- the catalog --------------------------------------------------------------------------------------------------

ISSUE_11_DEVICES = [
    "t4", "v100-16gb", "v100-32gb", "a10", "a10g", "a30", "a40", "a100-40gb", "a100-40gb-pcie", "a100-80gb",
    "a100-80gb-pcie", "l4", "l40", "l40s", "h100-pcie", "h100-sxm", "h100-nvl", "h200", "gh200", "b200", "gb200",
    "rtx-3060-12gb", "rtx-3090", "rtx-4090", "rtx-5090", "rtx-a6000", "rtx-6000-ada", "rtx-pro-6000",
    "mi210", "mi250x", "mi300x", "mi325x", "mi355x", "rx-7900-xtx", "rx-7900-xt", "rx-9070-xt",
    "m1-16gb", "m1-max-64gb", "m1-ultra-128gb", "m2-ultra-192gb", "m3-pro-36gb", "m3-max-128gb", "m3-ultra-512gb",
    "m4-max-128gb", "m4-pro-48gb", "m5-32gb", "gaudi2", "gaudi3",
]


@pytest.mark.parametrize("name", ISSUE_11_DEVICES)
def test_the_issue_list_is_covered(name):
    g = lookup_gpu(name)
    assert g.memory_bytes > 0 and g.bandwidth_bytes_per_s


def test_every_figure_has_a_source():
    raw = json.loads((__import__("importlib.resources").resources.files("modelmem.catalog") / "gpus.json").read_text())
    assert len(raw["gpus"]) >= 90
    for row in raw["gpus"]:
        for key in SOURCED:
            if row[key] is not None:
                assert row["sources"].get(key), f"{row['name']}: {key} has no source"
        # Spec figures cite a vendor page or document; derived ones say they are derived and from what.
        for key in ("bandwidth_bytes_per_s", "bf16_flops"):
            if row[key] is not None:
                src = row["sources"][key]
                assert src.startswith(("http", "Intel", "derived:")) or "https://" in src, (row["name"], key)
    assert raw["calibration"] and all("https://" in c for c in raw["calibration"])


@pytest.mark.parametrize(("name", "bandwidth", "bf16", "fp8"), [
    # Vendor datasheets print sparse tensor throughput; the catalog holds dense (half of it).
    ("h100-sxm", 3.35e12, 989.5e12, 1979e12),   # H100 SXM: 1,979 TFLOPS bf16 "with sparsity"
    ("h100-pcie", 2.0e12, 756e12, 1513e12),
    ("h200", 4.8e12, 989.5e12, 1979e12),
    ("a100-80gb", 2.039e12, 312e12, None),      # A100 datasheet: 312 TFLOPS bf16 (624 sparse); no fp8
    ("l40s", 0.864e12, 362.05e12, 733e12),
    ("mi300x", 5.3e12, 1307.4e12, 2614.9e12),  # AMD: 1307.4 TFLOPS FP16/BF16 dense
    ("gaudi3", 3.67e12, 1835e12, 1835e12),      # Intel Hot Chips 2024: 1835 BF16/FP8 matrix TFLOPS, 3.67 TB/s
    ("t4", 0.32e12, None, None),                # Turing has no bf16 tensor cores
])
def test_published_figures(name, bandwidth, bf16, fp8):
    g = lookup_gpu(name)
    assert g.bandwidth_bytes_per_s == pytest.approx(bandwidth)
    assert g.bf16_flops == (None if bf16 is None else pytest.approx(bf16))
    assert g.fp8_flops == (None if fp8 is None else pytest.approx(fp8))


def test_memory_is_what_the_device_reports():
    # PyTorch out-of-memory messages: "total capacity of 79.11 GiB" on H100 80GB, 14.75 GiB on a T4, 23.65 on an RTX 4090.
    assert lookup_gpu("h100").memory_bytes / GiB == pytest.approx(79.11, abs=0.005)
    assert lookup_gpu("t4").memory_bytes / GiB == pytest.approx(14.75, abs=0.005)
    assert lookup_gpu("4090").memory_bytes / GiB == pytest.approx(23.65, abs=0.005)
    # Apple sells "36GB" Macs with 36 GiB (hw.memsize).
    assert lookup_gpu("m3-pro-36gb").memory_bytes == 36 * GiB


@pytest.mark.parametrize("old", [  # every name of the previous catalog still resolves
    "h100-80gb", "h100", "h100-sxm", "h100-pcie", "h100-nvl", "h200", "h200-141gb", "b200", "b200-180gb", "gh200",
    "a100-80gb", "a100-sxm4-80gb", "a100-40gb", "a100", "l40s", "l40", "a40", "l4", "a10g", "a10", "rtx-a6000",
    "a6000", "rtx-6000-ada", "rtx-5090", "5090", "rtx-4090", "4090", "rtx-3090", "3090", "rtx-4080", "v100-32gb",
    "v100-16gb", "v100", "t4", "mi300x", "mi250x",
])
def test_old_names_are_aliases(old):
    assert lookup_gpu(old).name


def test_catalog_loads_lazily():
    code = ("import modelmem, modelmem.catalog.gpus as g\n"
            "assert g._load.cache_info().currsize == 0\n"
            "g.lookup_gpu('h100'); assert g._load.cache_info().currsize == 1\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_gpus_json_lists_objects_with_sources():
    r = cli("gpus", "--json")
    assert r.returncode == 0
    rows = json.loads(r.stdout)
    assert len(rows) == len(gpus())
    for row in rows:
        assert {"name", "label", "memory_bytes", "nominal_gb", "bandwidth_bytes_per_s", "bf16_flops", "sources"} <= set(row)
    assert cli("gpus", "apple").stdout.count("Apple") >= 40


# --- any device by size or description -----------------------------------------------------------------------------

def test_size_spelling_is_one_for_api_cli_and_json():
    est = modelmem.estimate("7B", gpu="24GiB")
    assert est.gpu.memory_bytes == 24 * GiB and est.job.gpu == "24GiB"
    assert modelmem.estimate("7B", gpu="80GB").gpu.memory_bytes == 80 * 10**9
    d = json.loads(cli("estimate", "7B", "--gpu", "24GiB", "--json").stdout)
    assert d["job"]["gpu"] == "24GiB" and d["gpu"]["memory_bytes"] == 24 * GiB
    again = modelmem.estimate("7B", gpu=d["job"]["gpu"])  # the JSON's job field is accepted back
    assert again.per_gpu.device_total == est.per_gpu.device_total


def test_platform_prefix_on_a_size():
    mac = lookup_gpu("metal:36GB")
    assert mac.platform == "metal" and mac.memory_bytes == 36 * 10**9
    assert lookup_gpu("rocm:24GiB").platform == "rocm"


def test_api_accepts_a_description_object_or_dict():
    desc = GPUInfo(name="my-card", memory_bytes=20 * GiB, nominal_gb=21.5, bandwidth_bytes_per_s=800 * 10**9,
                   bf16_flops=100 * 10**12)
    est = modelmem.estimate("llama-3.1-8b", gpu=desc)
    assert est.gpu is desc and est.speed is not None
    from_dict = modelmem.estimate("llama-3.1-8b", gpu={"name": "my-card", "memory_bytes": 20 * GiB, "nominal_gb": 21.5,
                                                       "bandwidth_bytes_per_s": 800 * 10**9, "bf16_flops": 100 * 10**12})
    assert from_dict.gpu == desc
    assert from_dict.to_dict()["job"]["gpu"]["memory_bytes"] == 20 * GiB
    # A catalog GPU's own JSON is a valid description.
    h100 = lookup_gpu("h100")
    assert modelmem.estimate("7B", gpu=h100.to_dict()).gpu.memory_bytes == h100.memory_bytes


def test_a_size_alone_gives_memory_but_no_speed():
    est = modelmem.estimate("7B", gpu="24GiB")
    assert est.speed is None and any("no speed estimate" in n and "bandwidth_bytes_per_s" in n for n in est.explanation)


# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "says"), [
    ("24XB", "a size in GB, GiB"),
    ("-3GiB", "between 256MiB and 16TiB"),
    ("24", "a catalog GPU"),
    ("vulkan:24GB", "platform prefix"),
])
def test_malformed_size_names_the_field(value, says):
    with pytest.raises(InvalidJobError, match=f"^gpu: .*{says}"):
        modelmem.estimate("7B", gpu=value)
    r = cli("estimate", "7B", "--gpu", value)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "gpu:" in r.stderr and "Traceback" not in r.stderr


def test_unknown_gpu_suggests_the_closest():
    with pytest.raises(UnknownGPUError, match="did you mean rtx-4090"):
        lookup_gpu("rtx-4091")
    r = cli("estimate", "7B", "--gpu", "mi301x")
    assert r.returncode == 2 and "mi300x" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize(("desc", "field"), [
    ({"bandwidth_bytes_per_s": 10**12}, "gpu.memory_bytes"),
    ({"memory_bytes": -5}, "gpu.memory_bytes"),
    ({"memory_bytes": GiB, "platform": "opencl"}, "gpu.platform"),
    ({"memory_bytes": GiB, "vram": 3}, "gpu.vram"),
])
def test_bad_description_names_the_field(desc, field):
    with pytest.raises(InvalidJobError, match=f"^{field.replace('.', '[.]')}:"):
        modelmem.estimate("7B", gpu=desc)


# --- platforms -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected_mib"), [
    # recommendedMaxWorkingSetSize as llama.cpp printed it on real Macs:
    ("m1-pro-16gb", 10922.67),   # abetlen/llama-cpp-python#687: 16 GiB → 10922.67 MB (2/3)
    ("m1-max-32gb", 21845.34),   # ggml-org/llama.cpp#2011, ollama/ollama#434: 32 GiB → 21845.34 MB (2/3)
    ("m2-max-64gb", 49152.00),   # ggml-org/llama.cpp#1870: 64 GiB → 49152.00 MiB (3/4)
    ("m2-max-96gb", 73728.00),   # ggml-org/llama.cpp#3213: 96 GiB → 73728.00 MB (3/4)
])
def test_apple_working_set(name, expected_mib):
    assert lookup_gpu(name).usable_bytes / MiB == pytest.approx(expected_mib, abs=0.01)


def test_a_mac_fits_only_its_working_set():
    # 36 GiB M3 Pro: 27 GiB for the GPU. A 70B Q4_K_M GGUF-sized load (~40 GiB) cannot fit; an 8B one can.
    mac = lookup_gpu("m3-pro-36gb")
    assert mac.usable_bytes == 27 * GiB
    est = modelmem.estimate("llama-3.1-8b", gpu="m3-pro-36gb", quant="gguf:Q4_K_M", runtime="llamacpp")
    assert est.fits and est.headroom_bytes == mac.usable_bytes - est.per_gpu.device_total
    assert est.per_gpu.cuda_context == ov.METAL_CONTEXT_BYTES
    out = cli("estimate", "llama-3.1-8b", "--gpu", "m3-pro-36gb", "--quant", "gguf:Q4_K_M", "--runtime", "llamacpp").stdout
    assert "27.0 of 36.0 GiB of unified memory" in out and "OS and other apps" in out
    big = modelmem.estimate("llama-3.1-70b", gpu="m3-pro-36gb", quant="gguf:Q4_K_M", runtime="llamacpp")
    assert not big.fits and big.num_gpus == 1  # a Mac has one GPU: auto never adds a second


def test_per_process_overhead_by_platform():
    cuda = modelmem.estimate("7B", gpu="h100", num_gpus=1).per_gpu.cuda_context
    rocm = modelmem.estimate("7B", gpu="mi300x", num_gpus=1).per_gpu.cuda_context
    assert (cuda, rocm) == (ov.CUDA_CONTEXT_BYTES, ov.ROCM_CONTEXT_BYTES) and rocm > cuda


@pytest.mark.parametrize(("job", "says"), [
    (dict(mode="qlora"), "bitsandbytes"),
    (dict(quant="nf4"), "bitsandbytes"),
    (dict(runtime="vllm"), "vLLM"),
    (dict(quant="awq"), "GPTQ and AWQ"),
    (dict(num_gpus=2, strategy="tp"), "one GPU"),
])
def test_what_cannot_run_on_a_mac_is_refused(job, says):
    with pytest.raises(InvalidJobError, match=says):
        modelmem.estimate("llama-3.1-8b", gpu="m2-max-64gb", **job)


def test_refusal_is_one_line_on_the_cli():
    r = cli("estimate", "llama-3.1-8b", "--mode", "qlora", "--gpu", "m4-max-128gb")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bitsandbytes" in r.stderr


@pytest.mark.parametrize("gpu", ["m3-max-64gb", "rx-7900-xtx", "mi300x"])
def test_llamacpp_runs_on_apple_and_amd(gpu):
    est = modelmem.estimate("llama-3.1-8b", gpu=gpu, quant="gguf:Q4_K_M", runtime="llamacpp")
    assert est.fits and est.speed.decode_tokens_per_s > 0
    # Apple publishes no TFLOPS for the M3: decode (bandwidth-bound) is estimated, prefill is not.
    assert (est.speed.prefill_seconds is None) == (gpu == "m3-max-64gb")


def test_vllm_and_bitsandbytes_run_on_amd():
    assert modelmem.estimate("llama-3.1-8b", gpu="mi300x", runtime="vllm").fits
    assert modelmem.estimate("llama-3.1-8b", gpu="mi300x", mode="qlora").fits


def test_every_view_measures_a_mac_against_its_working_set():
    # 192 GiB M2 Ultra: Metal's 3/4 is 144 GiB, in the side-by-side table as in the estimate's verdict.
    out = cli("estimate", "7B", "--method", "both", "--gpu", "m2-ultra-192gb").stdout
    assert "against 144.00 GiB per GPU" in out


@pytest.mark.parametrize(("gpu", "runtime", "says"), [
    ("m1-max-64gb", "torchao", "torchao's quantized kernels"),
    ("gaudi3", "llamacpp", "no Gaudi backend"),
])
def test_runtimes_say_where_they_run(gpu, runtime, says):
    with pytest.raises(InvalidJobError, match=f"^runtime: .*{says}"):
        modelmem.estimate("llama-3.1-8b", gpu=gpu, runtime=runtime)
    assert modelmem.estimate("llama-3.1-8b", gpu="gaudi3", runtime="vllm").fits  # vLLM has a Gaudi backend
