"""Regenerates docs/images/serve_page.png: the inpainting page with a held-out digit mid-spread.

    .venv/bin/python docs/serve_screenshot.py --workdir runs/demo [--example 3] [--step 2] [--out PATH]

Starts ``python -m psm_jax.serve`` on a free loopback port, drives Debian's ``chromium`` headless with playwright
(nothing is downloaded), picks the held-out image, brushes a stroke across it, runs the spread at the model's
default T, moves the iteration slider to ``--step`` and saves a full-page screenshot.
"""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "demo"))
    ap.add_argument("--example", type=int, default=3)
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "serve_page.png"))
    args = ap.parse_args()

    proc = subprocess.Popen([sys.executable, "-m", "psm_jax.serve", "--workdir", args.workdir, "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    url = next(m.group(1) for line in proc.stdout if (m := re.search(r"(http://\S+?)/?\s", line + " ")))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1200}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.click(f"#examples button[data-index='{args.example}']")
            page.wait_for_selector("#run:not([disabled])")
            page.eval_on_selector("#brush-size", "el => { el.value = 4; el.dispatchEvent(new Event('input')); }")
            box = page.locator("#mask-canvas").bounding_box()
            for (x0, y0), (x1, y1) in (((0.2, 0.35), (0.8, 0.55)), ((0.5, 0.15), (0.45, 0.75))):
                page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
                page.mouse.down()
                page.mouse.move(box["x"] + x1 * box["width"], box["y"] + y1 * box["height"], steps=16)
                page.mouse.up()
            page.fill("#seed", str(args.seed))
            page.click("#run")
            deadline = time.monotonic() + 600
            while not page.evaluate("() => window.psm.response !== null"):
                if time.monotonic() > deadline:
                    raise TimeoutError("no answer from the server in 10 minutes")
                time.sleep(0.2)
            page.eval_on_selector("#step", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                                  args.step)
            time.sleep(0.5)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
