"""Redraw docs/page.png: `modelmem serve` on a free port, one job loaded from its link, Debian's Chromium.

    python docs/page_screenshot.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

JOB = {"model": "meta-llama/Llama-3.1-8B", "mode": "qlora", "gpu": "rtx-4090", "num_gpus": "1", "batch_size": "2",
       "seq_len": "2048", "grad_checkpointing": "full"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", default=str(Path(__file__).with_name("page.png")))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    proc = subprocess.Popen([sys.executable, "-m", "modelmem", "serve", "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stderr.readline().split("serving on ", 1)[1].strip()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.goto(url + "?" + urlencode(JOB))
            page.locator("#total-allocated_peak").wait_for()
            page.locator("svg[data-curve=seq_len]").wait_for()
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(args.out)


if __name__ == "__main__":
    main()
