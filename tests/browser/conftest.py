"""Real-browser fixtures: one Streamlit server per session, Debian's Chromium via Playwright.

``playwright install`` cannot download a browser here, so Chromium comes from Debian (``make
test`` installs it). Without it the browser tests skip locally but FAIL under CI (CI=true): CI
must never pass by skipping them. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from appserver import free_port, start_app, stop_app  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def _serve(log_name: str, instant: str | None) -> Iterator[str]:
    """A Streamlit server whose environment has ``DPAMT_INSTANT=instant`` (None: unset, the
    app's default); the variable is put back as it was after."""
    port = free_port()
    log = ARTIFACTS / log_name
    ARTIFACTS.mkdir(exist_ok=True)
    before = os.environ.pop("DPAMT_INSTANT", None)
    if instant is not None:
        os.environ["DPAMT_INSTANT"] = instant  # the server's process inherits it
    try:
        with log.open("w") as out:
            try:
                proc = start_app(port, log=out)
            except RuntimeError as exc:
                pytest.fail(f"{exc}; see {log}")
            yield f"http://127.0.0.1:{port}"
            stop_app(proc)
    finally:
        os.environ.pop("DPAMT_INSTANT", None)
        if before is not None:
            os.environ["DPAMT_INSTANT"] = before


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """The server-drawn fallback (DPAMT_INSTANT=0): Explore's step view drawn by the server,
    the Plotly charts the tests of that view wait for (chart_region_map, ...)."""
    yield from _serve("streamlit.log", "0")


@pytest.fixture(scope="session")
def instant_server() -> Iterator[str]:
    """Instant steps from the first page load, deep links open on the browser-drawn view: the
    app's default when it is on (DPAMT_INSTANT unset), else DPAMT_INSTANT=1."""
    from app_pages.ui.instant import ON_BY_DEFAULT

    yield from _serve("streamlit-instant.log", None if ON_BY_DEFAULT else "1")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing under CI: make test installs Debian's chromium")
        pytest.skip("chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def settle(pg) -> None:  # type: ignore[no-untyped-def]
    """Wait until the app has finished its rerun."""
    pg.wait_for_timeout(300)
    pg.wait_for_selector(IDLE, timeout=60_000)
    pg.wait_for_timeout(300)


def shot(pg, name: str) -> None:  # type: ignore[no-untyped-def]
    """A screenshot once the page has settled and its charts have drawn."""
    settle(pg)
    for chart in pg.locator(".js-plotly-plot").all():
        if chart.is_visible():  # charts in closed tabs stay hidden
            chart.locator(".main-svg").first.wait_for(state="attached")
    pg.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))
