"""tools/loadtest.py against a real server, briefly: both views' sessions step their own trace
with no error (the load figures themselves are `make loadtest`'s, docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import loadtest  # noqa: E402
from appserver import free_port, start_app, stop_app  # noqa: E402


@pytest.mark.parametrize("view", ["instant", "server"])
def test_sessions_step_their_own_trace_on_each_view(
    view: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPAMT_INSTANT", "1" if view == "instant" else "0")
    driver = loadtest.drive_instant if view == "instant" else loadtest.drive
    # a press every 0.6 s on the instant view: longer than the page's quiet time, so each step
    # is reported (near the trace's start a step is not at a window's edge: no report at once)
    pace = {"pace": (0.6, 0.6)} if view == "instant" else {}
    port = free_port()
    server = start_app(port)
    try:

        async def two() -> list[dict[str, Any]]:
            return await asyncio.gather(
                driver(port, 0, "lost_race", _title("lost_race"), 60, max_nexts=4, **pace),
                driver(port, 1, "td_lifecycle", _title("td_lifecycle"), 60, max_nexts=4, **pace),
            )

        results = asyncio.run(two())
    finally:
        stop_app(server)
        os.environ.pop("DPAMT_INSTANT", None)
    for r in results:
        assert r["errors"] == [], r
        assert len(r["latencies"]) == 4, r
        if view == "instant":  # each press reported, each report answered by the server
            assert len(r["reports"]) == 4 and all(x > 0 for x in r["reports"]), r


def _title(name: str) -> str:
    from explorer.appsupport import list_samples

    return next(s.title for s in list_samples() if s.name == name)


def test_a_session_that_cannot_connect_is_an_error_not_a_crash() -> None:
    for driver in (loadtest.drive_instant, loadtest.drive):
        r = asyncio.run(driver(free_port(), 0, "lost_race", "t", 5, max_nexts=2))
        assert len(r["errors"]) == 1 and "ConnectionRefusedError" in r["errors"][0], r
