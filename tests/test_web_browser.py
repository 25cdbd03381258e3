"""The page in a real browser: Debian's Chromium driven by playwright (no browser download).

`modelmem serve` runs on a free local port; the tests use the inputs' accessible labels, as a person would. They
skip only where Chromium or playwright is missing on a developer's machine; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from urllib.parse import urlencode

import pytest

import modelmem

CHROMIUM = os.environ.get("MODELMEM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {why} (.ci/run installs chromium and playwright)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="module")
def url():
    """`modelmem serve` itself, on port 0 (a free one); it prints the address it bound."""
    proc = subprocess.Popen([sys.executable, "-m", "modelmem", "serve", "--host", "127.0.0.1", "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving on http://127.0.0.1:" in line, line
        yield line.split("serving on ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    ctx.close()


def _shown_bytes(pg, total: str) -> tuple[int, float]:
    cell = pg.locator(f"#total-{total}")
    cell.wait_for()
    return int(cell.get_attribute("data-bytes")), float(cell.inner_text().split()[0])


def test_pick_a_job_and_read_the_allocated_peak(page, url):
    page.goto(url)
    page.get_by_label("Model", exact=True).fill("meta-llama/Llama-3.1-8B")
    # the catalog search offers the model as the user types
    page.locator("#model-list option[value='meta-llama/Llama-3.1-8B']").wait_for(state="attached")
    page.get_by_label("Mode", exact=True).select_option("lora")
    page.get_by_label("GPU", exact=True).select_option("rtx-4090")
    page.get_by_label("Batch size", exact=True).fill("2")
    page.get_by_label("Sequence length", exact=True).fill("2048")
    # record whether the spinner came on while the server computed (the page must not just freeze)
    page.evaluate("""() => { window.__spun = false; const s = document.querySelector('#spinner');
        new MutationObserver(() => { if (s.classList.contains('on')) window.__spun = true; })
            .observe(s, {attributes: true}); }""")
    page.get_by_role("button", name="Estimate").click()
    shown, shown_gib = _shown_bytes(page, "allocated_peak")
    assert page.evaluate("window.__spun") is True
    job = {"mode": "lora", "gpu": "rtx-4090", "batch_size": 2, "seq_len": 2048}
    auto = modelmem.estimate("meta-llama/Llama-3.1-8B", **job)
    # Number of GPUs was left to auto: like the CLI, the page leads with one GPU when auto needs more, and says so
    est = auto if auto.num_gpus == 1 else modelmem.estimate("meta-llama/Llama-3.1-8B", **job, num_gpus=1)
    assert shown == est.per_gpu.allocated_peak
    if auto.num_gpus > 1:
        assert page.locator("#auto").inner_text().startswith("with Number of GPUs left to auto")
    assert shown_gib == pytest.approx(est.per_gpu.allocated_peak / 1024**3, abs=0.005)
    verdict = page.locator("#verdict").inner_text()
    assert verdict.startswith("fits" if est.fits else "does not fit") and f"{est.num_gpus}×" in verdict
    # the job is now in the page's address, so the link reproduces it
    for part in ("model=meta-llama%2FLlama-3.1-8B", "mode=lora", "gpu=rtx-4090", "batch_size=2", "seq_len=2048"):
        assert part in page.url
    page.locator("svg[data-curve=seq_len]").wait_for()
    assert page.locator("svg[data-curve=batch_size]").count() == 1
    # the planner's largest batch on this GPU, as modelmem.fit answers it
    fit = modelmem.fit("meta-llama/Llama-3.1-8B", "batch-size", **job, num_gpus=est.num_gpus, strategy=est.job.strategy)
    shown_max = page.locator("#planner-answers li[data-fit=batch_size] .fit-max").get_attribute("data-max")
    assert shown_max == ("" if fit.max is None else str(fit.max))
    assert not page.locator("#spinner").is_visible()


def test_a_link_reproduces_the_job(page, url):
    job = {"mode": "qlora", "gpu": "a10g", "batch_size": 1, "seq_len": 4096, "grad_checkpointing": "full", "num_gpus": 1}
    page.goto(url + "?" + urlencode({"model": "mistralai/Mistral-7B-v0.1", **job}))
    shown, _ = _shown_bytes(page, "device_total")
    est = modelmem.estimate("mistralai/Mistral-7B-v0.1", **job)
    assert shown == est.per_gpu.device_total
    assert page.get_by_label("Mode", exact=True).input_value() == "qlora"
    assert page.get_by_label("Gradient checkpointing", exact=True).input_value() == "full"
    assert page.get_by_label("Gradient checkpointing", exact=True).is_visible()  # its folded group was opened
    assert page.get_by_label("Sequence length", exact=True).input_value() == "4096"


def test_a_bad_value_shows_the_one_line_error(page, url):
    page.goto(url)
    page.get_by_label("Model", exact=True).fill("llama-3.1-8b")
    page.get_by_label("Batch size", exact=True).fill("0")
    page.get_by_role("button", name="Estimate").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    text = alert.inner_text()
    assert text.startswith("batch_size: '0' is not allowed; expected an integer ≥ 1")
    assert "\n" not in text.strip() and "Traceback" not in page.content()
    assert not page.locator("#result").is_visible()


def test_upload_a_config_json(page, url, tmp_path):
    import json

    from conftest import LLAMA3_8B_CONFIG

    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA3_8B_CONFIG))
    page.goto(url)
    page.get_by_label("Number of GPUs", exact=True).fill("1")
    page.get_by_label("Upload config.json or GGUF", exact=True).set_input_files(str(path))
    shown, _ = _shown_bytes(page, "allocated_peak")
    assert page.get_by_label("Model", exact=True).input_value().startswith("upload:")
    # the same architecture as the catalog's Llama-3.1-8B, so the same bytes
    assert shown == modelmem.estimate("meta-llama/Llama-3.1-8B", num_gpus=1).per_gpu.allocated_peak
