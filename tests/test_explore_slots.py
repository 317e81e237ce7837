"""A server runs a few searches at once (explorer/interleavings/job.py, MAX_SEARCHES): the others
wait their turn, first come first, and can be stopped while they wait."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.interleavings import job as J

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _sample(name: str, **overrides: str):  # type: ignore[no-untyped-def]
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), name)
    return trace, resolve_settings(trace, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture
def one_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(J, "MAX_SEARCHES", 1)
    monkeypatch.setattr(J, "_SLOTS", threading.Semaphore(1))


@pytest.mark.usefixtures("one_slot")
def test_searches_past_the_limit_wait_their_turn_in_order() -> None:
    long, long_settings = _sample("race_three_cpus", mode="v6-locked")
    short, settings = _sample("lost_race")
    first = J.ExploreJob(long.events, long_settings, 1_000_000, reduction=False)
    assert first.poll().state == "running"
    second = J.ExploreJob(short.events, settings)
    third = J.ExploreJob(short.events, settings, 10)
    s2, s3 = second.poll(), third.poll()
    assert (s2.state, s3.state) == ("queued", "queued")
    assert "runs 1 at once" in s2.message and "1 more asked before this one" in s3.message
    first.stop()
    assert first.wait(30).state == "stopped"
    done = second.wait(60)
    assert done.state == "done" and done.result is not None and done.result["complete"]
    assert third.wait(60).state == "done"


@pytest.mark.usefixtures("one_slot")
def test_a_queued_search_stops_without_starting() -> None:
    long, long_settings = _sample("race_three_cpus", mode="v6-locked")
    short, settings = _sample("lost_race")
    first = J.ExploreJob(long.events, long_settings, 1_000_000, reduction=False)
    waiting = J.ExploreJob(short.events, settings)
    assert waiting.poll().state == "queued"
    waiting.stop()
    status = waiting.wait(10)
    assert status.state == "stopped" and "before it started" in status.message
    assert status.result is None and not hasattr(waiting, "_proc")
    first.stop()
    assert first.wait(30).state == "stopped"
    # the slot is free again: the next search runs at once
    nxt = J.ExploreJob(short.events, settings)
    assert nxt.poll().state in ("running", "done")
    assert nxt.wait(60).state == "done"


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPAMT_MAX_SEARCHES", "3")
    assert J._max_searches() == 3
    for bad in ("0", "-1", "two", ""):
        monkeypatch.setenv("DPAMT_MAX_SEARCHES", bad)
        assert J._max_searches() >= 1
