"""The page's server without a browser: its JSON is the public API's answer, it reads no server paths, uploads are
capped and parsed, every job field has a labelled input, and errors are one line."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest

import modelmem
from modelmem.errors import InvalidJobError, ModelmemError
from modelmem.job import FIELDS
from modelmem.web import api, make_server
from modelmem.web.form import fields, render_fields
from modelmem.catalog.gpus import gpus

from conftest import LLAMA3_8B_CONFIG

JOB = {"mode": "lora", "gpu": "rtx-4090", "batch_size": "2", "seq_len": "2048", "num_gpus": "1"}


@pytest.fixture(scope="module")
def server():
    srv = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_result_is_the_public_estimate():
    r = api.compute({"model": "meta-llama/Llama-3.1-8B", **JOB})
    est = modelmem.estimate("meta-llama/Llama-3.1-8B", mode="lora", gpu="rtx-4090", batch_size=2, seq_len=2048, num_gpus=1)
    assert r["estimate"] == est.to_dict()
    assert r["totals"]["allocated_peak"] == est.per_gpu.allocated_peak
    assert r["fits"] == est.fits and r["num_gpus"] == est.num_gpus and r["auto"] is None
    # the bar's segments add up to the device total: components + allocator slack + CUDA context
    assert sum(p["bytes"] for p in r["bar"]) == est.per_gpu.device_total


def test_auto_needing_more_than_one_gpu_leads_with_one_as_the_cli_does():
    job = {"mode": "train", "gpu": "a100-80gb"}  # 8B full training with AdamW: ≈ 16 bytes per parameter, > 80 GB
    auto = modelmem.estimate("llama-3.1-8b", **job)
    assert auto.num_gpus > 1
    r = api.compute({"model": "llama-3.1-8b", **job})
    assert r["estimate"] == modelmem.estimate("llama-3.1-8b", **job, num_gpus=1).to_dict()
    assert r["auto"].endswith(f"{auto.num_gpus}× {auto.gpu.label} ({auto.job.strategy}): "
                              f"{auto.per_gpu.device_total / 1024**3:.1f} of {auto.gpu.usable_bytes / 1024**3:.1f} GiB per GPU"
                              f" ({auto.headroom_bytes / 1024**3:.1f} GiB free)")
    one = api.compute({"model": "llama-3.1-8b", "gpu": "a100-80gb"})  # inference: auto's answer is one GPU
    assert one["auto"] is None and one["estimate"] == modelmem.estimate("llama-3.1-8b", gpu="a100-80gb").to_dict()


def test_planner_answers_are_the_planners():
    job = {"mode": "qlora", "gpu": "rtx-4090", "batch_size": 2, "seq_len": 2048, "num_gpus": 1}
    r = api.compute({"model": "llama-3.1-8b", **{k: str(v) for k, v in job.items()}})
    answers = {a["field"]: a["max"] for a in r["planner"]["answers"]}
    assert answers["batch_size"] == modelmem.fit("llama-3.1-8b", "batch-size", **job).max
    assert answers["seq_len"] == modelmem.fit("llama-3.1-8b", "seq-len", **job).max
    est = modelmem.estimate("llama-3.1-8b", **job)
    assert [s["change"] for s in r["planner"]["suggestions"]] == [dict(s.change) for s in est.suggestions]
    assert (r["planner"]["suggestions"] != []) == (not est.fits)
    # the layouts shown are the planner's search on the chosen GPU kind, in its order
    from modelmem.planner.layouts import search

    found = search(modelmem.resolve_model("llama-3.1-8b"), {k: v for k, v in job.items() if k != "num_gpus"},
                   gpus=["rtx-4090"], max_gpus=64, top=5)
    assert found and len(r["planner"]["plans"]) == len(found)
    for line, p in zip(r["planner"]["plans"], found):
        assert line.startswith(f"{p.num_gpus}× ") and f"{p.per_gpu.device_total / 2**30:.1f} GiB per GPU" in line


def test_seed_column_is_the_seed_method_on_the_same_gpus():
    r = api.compute({"model": "llama-3.1-8b", "mode": "lora", "gpu": "rtx-4090", "num_gpus": "1"})
    seed = modelmem.estimate("llama-3.1-8b", method="seed", mode="lora", gpu="rtx-4090", num_gpus=1)
    assert r["seed"] == seed.to_dict()
    rows = {x["component"]: x for x in r["comparison"]["rows"]}
    # the seed's "weights" (16-bit copy + fp32 masters) is split over two rows; together they are the seed's term
    assert rows["weights"]["seed"] + rows["master_weights"]["seed"] == pytest.approx(seed.per_gpu.components["weights"], abs=2)
    assert all(x["why"] for x in r["comparison"]["rows"])


def test_curves_cover_checkpointing_and_mark_the_fit_boundary():
    r = api.curves({"model": "llama-3.1-8b", "mode": "lora", "gpu": "rtx-4090", "num_gpus": "1"})
    seq = next(c for c in r["curves"] if c["field"] == "seq_len")
    none, full = (next(s for s in seq["series"] if s["checkpointing"] == k) for k in ("none", "full"))
    gpu = modelmem.estimate("llama-3.1-8b", gpu="rtx-4090").gpu.usable_bytes
    for s in (none, full):
        ys = [y for y in s["y"] if y is not None]
        assert ys == sorted(ys)  # more tokens never need less memory
        fitting = [x for x, y in zip(seq["x"], s["y"]) if y is not None and y <= gpu]
        assert s["largest_fitting"] == (max(fitting) if fitting else None)
    assert all(f <= n for f, n in zip(full["y"], none["y"]))  # checkpointing never costs memory at the peak
    est = modelmem.estimate("llama-3.1-8b", mode="lora", gpu="rtx-4090", num_gpus=1, seq_len=4096, grad_checkpointing="none")
    assert none["y"][seq["x"].index(4096)] == est.per_gpu.device_total
    with pytest.raises(InvalidJobError, match="^num_gpus: "):
        api.curves({"model": "llama-3.1-8b"})  # the page always passes the count its result resolved


def test_inference_has_one_curve_per_field():
    r = api.curves({"model": "llama-3.1-8b", "gpu": "a100-80gb", "num_gpus": "1"})
    assert [len(c["series"]) for c in r["curves"]] == [1, 1]


@pytest.mark.parametrize("model", ["/etc/passwd", "../config.json", "~/x", "a/b/c", "C:\\x", "models", "org/model"])
def test_no_server_paths(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # names that happen to exist on the server are paths too
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").write_text("{}")
    with pytest.raises(InvalidJobError, match="^model: .*no server paths"):
        api.resolve(model)


def test_bad_values_name_the_field():
    with pytest.raises(InvalidJobError, match="^batch_size: '0'"):
        api.compute({"model": "llama-3.1-8b", "batch_size": "0"})
    with pytest.raises(InvalidJobError, match="^colour: "):
        api.compute({"model": "llama-3.1-8b", "colour": "red"})
    with pytest.raises(InvalidJobError, match="^model: ''"):
        api.compute({"mode": "lora"})


def test_upload_config_json():
    data = json.dumps(LLAMA3_8B_CONFIG).encode()
    r = api.upload("config.json", data)
    assert r["model"].startswith("upload:")
    est = api.compute({"model": r["model"], "num_gpus": "1"})
    # Llama-3.1-8B: 8,030,261,248 parameters (the model card's safetensors count)
    assert est["model"]["params"] == 8_030_261_248


def test_upload_caps_and_junk():
    with pytest.raises(ModelmemError, match="not valid JSON"):
        api.upload("config.json", b"{nope")
    with pytest.raises(InvalidJobError, match="^model: .*at most"):
        api.upload("config.json", b" " * (api.MAX_UPLOAD_CONFIG_BYTES + 1))
    with pytest.raises(InvalidJobError, match="upload the file again"):
        api.resolve("upload:0000000000000000")


def test_upload_gguf_header_only(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("numpy")
    from test_sources_gguf import EMBD, TOTAL, write_tiny
    from modelmem.sources.gguf import parse_gguf_header

    data = write_tiny(tmp_path / "tiny-Q4_K_M.gguf").read_bytes()
    header_end = parse_gguf_header(data, "tiny").data_offset
    r = api.upload("tiny-Q4_K_M.gguf", data[:header_end])  # what the page sends: the header, not the weights
    est = api.compute({"model": r["model"], "num_gpus": "1", "runtime": "llamacpp"})
    # ggml block sizes, summed by hand; llama.cpp keeps the input layer (token_embd) on the CPU.
    assert est["estimate"]["per_gpu"]["components"]["weights"] == TOTAL - EMBD
    assert est["estimate"]["cpu_ram"] >= EMBD


def test_every_job_field_has_a_labelled_input():
    names = [f.name for f in fields()]
    assert sorted(names) == sorted(FIELDS)
    page = render_fields(gpus())
    for f in fields():
        assert f'<label for="f-{f.name}">{f.label}</label>' in page
        assert f'name="{f.name}"' in page
    labels = {f.name: f.label for f in fields()}
    assert labels["mode"] == "Mode" and labels["gpu"] == "GPU" and labels["batch_size"] == "Batch size"
    assert labels["seq_len"] == "Sequence length" and labels["num_gpus"] == "Number of GPUs"
    assert page.index('legend>Job') < page.index("<details")  # basic first, the rest folded
    assert "<summary>More</summary>" not in page  # every field has its place
    from modelmem.job import FIELD_SPECS

    for f in fields():  # hints and choices come from the field's own declaration
        assert f.help.startswith(FIELD_SPECS[f.name].help)
        if FIELD_SPECS[f.name].kind == "choice":
            assert f.choices == FIELD_SPECS[f.name].choices


def test_http_roundtrip(server):
    status, body = get(server + "/api/estimate?" + urlencode({"model": "llama-3.1-8b", **JOB}))
    assert status == 200
    assert body["estimate"] == modelmem.estimate("llama-3.1-8b", mode="lora", gpu="rtx-4090", batch_size=2, seq_len=2048,
                                                 num_gpus=1).to_dict()
    status, body = get(server + "/api/curves?" + urlencode({"model": "llama-3.1-8b", **JOB}))
    assert status == 200 and [c["field"] for c in body["curves"]] == ["seq_len", "batch_size"]
    status, body = get(server + "/api/models?q=mistral-7b")
    assert status == 200 and any(m["id"] == "mistralai/Mistral-7B-v0.1" for m in body)


def test_http_errors_are_one_line(server):
    status, body = get(server + "/api/estimate?model=llama-3.1-8b&dtype=fp12")
    assert status == 400
    assert body["error"].startswith("dtype: 'fp12' is not allowed") and "\n" not in body["error"]
    status, body = get(server + "/api/estimate?model=%2Fetc%2Fpasswd")
    assert status == 400 and body["error"].startswith("model:")
    status, body = post(server + "/api/upload?name=config.json", b"")
    assert status == 400 and body["error"].startswith("model:")
    status, body = get(server + "/nope")
    assert status == 404


def test_page_has_spinner_error_and_labels(server):
    with urllib.request.urlopen(server + "/", timeout=30) as r:
        page = r.read().decode()
    assert 'id="spinner" role="status"' in page and 'id="error" role="alert"' in page
    assert '<label for="f-model">Model</label>' in page
    assert "{{" not in page  # every placeholder filled


def test_space_entry_point_serves_the_same_page(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    app = Path(__file__).resolve().parents[1] / "app.py"
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0"}
    proc = subprocess.Popen([sys.executable, str(app)], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stderr.readline()
        assert "serving on http://127.0.0.1:" in line, line
        base = line.split("serving on ", 1)[1].strip().rstrip("/")
        status, body = get(base + "/api/estimate?model=llama-3.1-8b&num_gpus=1")
        assert status == 200 and body["estimate"] == modelmem.estimate("llama-3.1-8b", num_gpus=1).to_dict()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_on_a_taken_port_is_one_line(server):
    import subprocess
    import sys

    port = server.rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "modelmem", "serve", "--port", port], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("modelmem: error: port: ") and "Traceback" not in r.stderr


def test_a_mac_is_judged_by_what_metal_lets_the_gpu_use():
    r = api.compute({"model": "llama-3.1-8b", "gpu": "metal:36GB", "num_gpus": "1"})
    assert r["gpu"]["usable_bytes"] < r["gpu"]["memory_bytes"]
    assert r["fits"] == (r["totals"]["device_total"] <= r["gpu"]["usable_bytes"])
    assert f"of {r['gpu']['usable_bytes'] / 1024**3:.1f} GiB per GPU" in r["verdict"]
    seq = api.curves({"model": "llama-3.1-8b", "gpu": "metal:36GB", "num_gpus": "1"})["curves"][0]
    fitting = [x for x, y in zip(seq["x"], seq["series"][0]["y"]) if y is not None and y <= r["gpu"]["usable_bytes"]]
    assert seq["series"][0]["largest_fitting"] == (max(fitting) if fitting else None)
