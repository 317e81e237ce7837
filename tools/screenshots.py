"""Screenshots of the app for the docs (docs/img/), at 1440x900 in Debian's Chromium.

``python tools/screenshots.py [--out docs/img]``: starts the app on a free port and saves the
Learn page at a tour stop and after a prediction, the Interleavings page with a finding, the
Explore page's kernel-capture tab, and Compare's memory calculator. Look at them before
committing: they are the docs' pictures, not tests.

The server starts with ``DPAMT_INSTANT=0``: the Explore shots wait for the server-drawn charts
(``chart_region_map``, ``chart_pamt_cache``), which instant steps (the default) replace with the
view drawn in the browser.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appserver import ROOT, free_port, start_app, stop_app
from step_latency import CHROMIUM_ARGS, IDLE


def _settle(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_timeout(400)
    page.wait_for_selector(IDLE, timeout=180_000)
    page.wait_for_timeout(800)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/screenshots.py")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium is not installed (make chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    port = free_port()
    os.environ["DPAMT_INSTANT"] = "0"  # the server-drawn view (the server inherits it)
    proc = start_app(port)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
            page.set_default_timeout(180_000)

            # Explore at the lost race on a 1280x720 projector: map, caches, code and locks
            small = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
            small.set_default_timeout(180_000)
            small.goto(f"{url}/?sample=lost_race&step=134")
            for chart in ("chart_region_map", "chart_pamt_cache"):
                small.wait_for_selector(f".st-key-{chart} .main-svg")
            _settle(small)
            small.screenshot(path=str(out / "explore-lecture.png"))
            # the same projector: a tour stop on the full view, and a prediction
            small.goto(f"{url}/learn?tour=lost_race&stop=4")
            small.get_by_text(re.compile(r"^Stop \d+ of \d+$")).first.wait_for()
            _settle(small)
            small.screenshot(path=str(out / "learn-tour-lecture.png"))
            small.get_by_role("tab", name="Predict").click()
            _settle(small)
            small.get_by_role("button", name=re.compile(r"^Start after step")).click()
            _settle(small)
            small.screenshot(path=str(out / "learn-predict-lecture.png"))
            small.context.close()

            # Learn: a tour stop (linked), then a prediction round with one answer checked
            page.goto(f"{url}/learn?tour=lost_race&stop=4")
            _settle(page)
            page.screenshot(path=str(out / "learn-tour.png"))
            page.get_by_role("tab", name="Predict").click()
            _settle(page)
            page.get_by_role("button", name=re.compile(r"^Start after step")).click()
            _settle(page)
            # the answer's radio (the round's "start after" is a radio too)
            radios = page.locator('[class*="st-key-predict_answer_"] [role="radiogroup"] label')
            if radios.count():
                radios.first.click()
                _settle(page)
            page.get_by_role("button", name="Check").first.click()
            _settle(page)
            page.screenshot(path=str(out / "learn-predict.png"))

            # Interleavings: the broken mode's finding
            page.goto(f"{url}/interleavings?sample=lost_race&mode=v6-no-recheck")
            _settle(page)
            page.get_by_role("button", name="Explore every interleaving").click()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not page.get_by_text("WARN_PAMT_ADD").count():
                page.wait_for_timeout(500)
            _settle(page)
            page.screenshot(path=str(out / "interleavings.png"), full_page=True)

            # Explore: a divergent kernel capture, on its Kernel capture tab
            page.goto(url)
            _settle(page)
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                str(ROOT / "sample_traces" / "captures" / "divergent.txt")
            )
            _settle(page)
            page.get_by_role("button", name="Jump...").click()  # the jumps' popover
            page.locator(".st-key-jump_kind").first.click()
            page.get_by_role("option", name="a divergence from the kernel capture").click()
            _settle(page)
            page.get_by_role("button", name="later").click()
            _settle(page)
            page.get_by_role("tab", name="Kernel capture").click()
            _settle(page)
            page.get_by_text("kernel observations compared").scroll_into_view_if_needed()
            page.mouse.wheel(0, 250)
            _settle(page)
            page.screenshot(path=str(out / "capture.png"))

            # Compare: the memory calculator
            page.goto(f"{url}/compare?sample=lost_race")
            _settle(page)
            page.get_by_text("Memory overhead").first.scroll_into_view_if_needed()
            _settle(page)
            page.screenshot(path=str(out / "calculator.png"))
            browser.close()
    finally:
        stop_app(proc)
    print(f"wrote the screenshots to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
