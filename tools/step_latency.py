"""Step latency in a real browser: how long a Right-arrow step takes, as a user feels it.

Starts the app on a free port, opens it in Debian's Chromium (Playwright) at 1440x900, and times
Right-arrow presses from the key press until the new step number is shown and the app is idle
again, on a few samples. Prints p50 and p95 per sample (``--json``: one JSON object). Run by
``make bench`` (``python -m explorer.bench``); never a test assertion (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import itertools
import json
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


def measure(url: str, chromium: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for (width, height), (sample, first, presses) in itertools.product(SIZES, CASES):
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.set_default_timeout(180_000)  # the first load replays the trace
            page.goto(f"{url}/?sample={sample}&step={first}")
            page.wait_for_selector(f"text=/^Step {first} of \\d+/")
            for chart in ("chart_region_map", "chart_pamt_cache"):  # the view has drawn
                page.wait_for_selector(f".st-key-{chart} .main-svg")
            page.wait_for_selector(IDLE)
            times = []
            for n in range(first + 1, first + 1 + presses):
                t0 = time.perf_counter()
                page.keyboard.press("ArrowRight")
                page.wait_for_selector(f"text=/^Step {n} of \\d+/")
                page.wait_for_selector(IDLE)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            out[f"{sample} at {width}x{height}"] = {
                "presses": presses,
                "p50_ms": statistics.median(times),
                "p95_ms": times[int(0.95 * (len(times) - 1))],
                "max_ms": times[-1],
            }
            page.context.close()
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/step_latency.py")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("step latency: skipped, chromium is not installed (make chromium)", file=sys.stderr)
        return 2
    port = free_port()
    proc = start_app(port)
    try:
        result = measure(f"http://127.0.0.1:{port}", chromium)
    finally:
        stop_app(proc)
    if args.json:
        print(json.dumps(result))
    else:
        for sample, r in result.items():
            print(
                f"{sample}: {r['presses']} Right-arrow steps, p50 {r['p50_ms']:.0f} ms, "
                f"p95 {r['p95_ms']:.0f} ms, max {r['max_ms']:.0f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
