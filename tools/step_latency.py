"""Step latency in a real browser: how long a Right-arrow step takes, as a user feels it.

Starts the app on a free port, opens it in Debian's Chromium (Playwright) at 1440x900, and times
Right-arrow presses from the key press until the new step number is shown, on a few samples, at
1280x720 and 1440x900. By default Explore runs as it does for a user, with instant steps (the
window drawn in the browser): also the in-page time from the key press to the step drawn.
``--server-drawn``: the fallback (the server started with DPAMT_INSTANT=0), each step timed
until the app's rerun is over. Prints p50 and p95 per sample (``--json``: one JSON object). Run
by ``make bench`` (``python -m explorer.bench``); never a test assertion (shared machines are
noisy).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appserver import free_port, start_app, stop_app

IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
#: (sample, first step, presses): the default sample, the lost race, the 1,024-region workload
CASES = (("td_lifecycle", 100, 20), ("lost_race", 90, 20), ("workload_two_tds", 2000, 20))
#: The projector and the laptop screen the layout is made for (issue 27).
SIZES = ((1280, 720), (1440, 900))


def measure(url: str, chromium: str, instant: bool = False) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for (width, height), (sample, first, presses) in itertools.product(SIZES, CASES):
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.set_default_timeout(180_000)  # the first load replays the trace
            page.goto(f"{url}/?sample={sample}&step={first}")
            page.wait_for_selector(f"text=/^Step {first} of \\d+/")
            charts = (
                (".instant .map", ".instant .caches")
                if instant
                else (".st-key-chart_region_map", ".st-key-chart_pamt_cache")
            )
            for chart in charts:  # the view has drawn
                page.wait_for_selector(f"{chart} .main-svg")
            page.wait_for_selector(IDLE)
            times = []
            for n in range(first + 1, first + 1 + presses):
                t0 = time.perf_counter()
                page.keyboard.press("ArrowRight")
                page.wait_for_selector(f"text=/^Step {n} of \\d+/")
                if not instant:  # the step is shown once the app's rerun is over
                    page.wait_for_selector(IDLE)
                times.append((time.perf_counter() - t0) * 1000)
                # instant: shown without a rerun; a report's rerun may follow (not timed: the
                # step is on screen), waited for so that each press starts alike
                page.wait_for_selector(IDLE)
            times.sort()
            r = out[f"{sample} at {width}x{height}"] = {
                "presses": presses,
                "p50_ms": statistics.median(times),
                "p95_ms": times[int(0.95 * (len(times) - 1))],
                "max_ms": times[-1],
            }
            if instant:  # key press to the step drawn, timed in the page (no Playwright round trip)
                inpage = sorted(page.evaluate(f"window.__dpamtInstant.times.slice(-{presses})"))
                r["in_page_p50_ms"] = statistics.median(inpage)
                r["in_page_p95_ms"] = inpage[int(0.95 * (len(inpage) - 1))]
            page.context.close()
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/step_latency.py")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--instant",
        action="store_true",
        help="Explore's instant steps, the window drawn in the browser (the app's default)",
    )
    mode.add_argument(
        "--server-drawn",
        action="store_true",
        help="the server-drawn fallback (the server started with DPAMT_INSTANT=0)",
    )
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("step latency: skipped, chromium is not installed (make chromium)", file=sys.stderr)
        return 2
    port = free_port()
    instant = not args.server_drawn
    os.environ["DPAMT_INSTANT"] = "1" if instant else "0"  # the app inherits it
    proc = start_app(port)
    try:
        result = measure(f"http://127.0.0.1:{port}", chromium, instant)
    finally:
        stop_app(proc)
    if args.json:
        print(json.dumps(result))
    else:
        for sample, r in result.items():
            print(
                f"{sample}: {r['presses']} Right-arrow steps, p50 {r['p50_ms']:.0f} ms, "
                f"p95 {r['p95_ms']:.0f} ms, max {r['max_ms']:.0f} ms"
                + (
                    f"; in the page p50 {r['in_page_p50_ms']:.0f} ms, "
                    f"p95 {r['in_page_p95_ms']:.0f} ms"
                    if "in_page_p50_ms" in r
                    else ""
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
