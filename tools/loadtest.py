"""``make loadtest``: N browser sessions against one ``streamlit run`` on loopback.

Each session loads a different sample (every fifth one uploads a trace of its own), then steps
with Next for the given time. It records errors (must be 0), the latency from a click to the next
step on screen (p50/p95), the server's memory, and checks that no session ever sees another
session's trace or cursor. Only 127.0.0.1 is contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tools"))
from appserver import free_port, start_app, stop_app  # noqa: E402

from explorer.appsupport import list_samples  # noqa: E402
from explorer.ingest.generate import boot  # noqa: E402

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
MAX_CLICKS = 10_000


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 1024


async def session(browser, url: str, k: int, seconds: float, upload: Path | None) -> dict:  # type: ignore[no-untyped-def]
    samples = [s for s in list_samples()]
    sample = samples[k % len(samples)]
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await ctx.new_page()
    page.set_default_timeout(120_000)
    result = {"session": k, "errors": [], "latencies": [], "steps": 0}
    try:
        await page.goto(f"{url}/?sample={sample.name}")
        await page.wait_for_selector(IDLE)
        expect = f"{sample.name}.jsonl: {sample.title}"
        if upload is not None:
            await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                str(upload)
            )
            expect = f"{upload.name}: "
        await page.wait_for_selector(f"text={expect}")
        deadline = time.monotonic() + seconds
        step = -1
        for _ in range(MAX_CLICKS):
            if time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            await page.locator(".st-key-btn_next button").first.click()
            step += 1
            await page.wait_for_selector(f"text=/^Step {step} of \\d+/")
            result["latencies"].append((time.monotonic() - t0) * 1000)
            await page.wait_for_selector(IDLE)  # the URL is updated at the end of the run
            if await page.get_by_text(expect).count() != 1:
                result["errors"].append(f"step {step}: the session's trace is not shown")
            if f"step={step}" not in page.url:
                result["errors"].append(f"step {step}: the URL does not carry this session's step")
        result["steps"] = step + 1
    except Exception as exc:  # a load test reports failures, it does not stop at the first
        result["errors"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        await ctx.close()
    return result


async def run(sessions: int, seconds: float) -> dict:  # type: ignore[type-arg]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_app(port)  # (waits for the health check before any session starts)
    try:
        tmp = Path(tempfile.mkdtemp())
        uploads = {}
        for k in range(sessions):
            if k % 5 == 4:  # an upload of its own, with a title nobody else has
                path = tmp / f"session-{k}.jsonl"
                path.write_text("\n".join(boot(tds=1, vcpus=2, faults=200 + k, seed=k)) + "\n")
                uploads[k] = path
        rss: list[float] = []

        async def watch() -> None:
            while True:
                rss.append(_rss_mib(server.pid))
                await asyncio.sleep(1)

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            watcher = asyncio.create_task(watch())
            t0 = time.monotonic()
            results = await asyncio.gather(
                *[session(browser, url, k, seconds, uploads.get(k)) for k in range(sessions)]
            )
            wall = time.monotonic() - t0
            watcher.cancel()
            await browser.close()
    finally:
        stop_app(server)
    lat = sorted(x for r in results for x in r["latencies"])
    errors = [f"session {r['session']}: {e}" for r in results for e in r["errors"]]
    return {
        "sessions": sessions,
        "seconds": seconds,
        "wall_s": round(wall, 1),
        "steps": sum(r["steps"] for r in results),
        "errors": len(errors),
        "error_list": errors[:20],
        "step_latency_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "step_latency_p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
        "server_rss_peak_mib": round(max(rss), 1) if rss else None,
        "server_rss_start_mib": round(rss[0], 1) if rss else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python tools/loadtest.py")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60)
    args = p.parse_args()
    if not shutil.which("chromium"):
        print("chromium is missing: make test installs it", file=sys.stderr)
        return 2
    report = asyncio.run(run(args.sessions, args.seconds))
    print(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
