"""What a search stopped by its limits had reached (issue 26): the end states found before the
stop, each a real outcome with a schedule that reaches it, shown by the CLI, the app's job and
``--write-pinned``; nothing claimed about the others."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from explorer.ingest import parse_trace
from explorer.interleavings.job import ExploreJob, outcome_rows, reached_rows
from explorer.interleavings.search import explore, outcome_key, pin
from explorer.model.events import Event
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from tests.purechild import child_runner, in_process, run_pure
from tests.test_explore import ROOT, SAMPLES, run

#: one concurrent group (the reached end states are the trace's), and a search of hundreds of
#: states, so small limits stop it at several depths
FRESH = "fresh_td_race"
#: two concurrent groups (tests/test_explore.py's lost_race has one)
TWO_GROUPS = (
    '{"format": "dpamt-trace", "version": 1, "title": "t", "settings": {"allocator": '
    '"percpu"}}\n'
    '{"op": "td_create", "td": 0}\n{"op": "vcpu_create", "td": 0, "vcpu": 0}\n'
    '{"op": "vcpu_create", "td": 0, "vcpu": 1}\n{"op": "td_finalize", "td": 0}\n'
    '{"op": "fault", "vcpu": 0, "gfn": "0x0", "t": 1}\n'
    '{"op": "fault", "vcpu": 1, "gfn": "0x1", "t": 1}\n'
    '{"op": "fault", "vcpu": 0, "gfn": "0x200", "t": 2}\n'
    '{"op": "fault", "vcpu": 1, "gfn": "0x201", "t": 2}\n'
)


#: three vCPUs' first faults on one gfn of a fresh TD: hundreds of thousands of states, a
#: search no test waits for
SAME_GFN = (
    '{"format": "dpamt-trace", "version": 1, "title": "t", "settings": {"allocator": '
    '"percpu"}}\n'
    '{"op": "td_create", "td": 0}\n{"op": "vcpu_create", "td": 0, "vcpu": 0}\n'
    '{"op": "vcpu_create", "td": 0, "vcpu": 1}\n{"op": "vcpu_create", "td": 0, "vcpu": 2}\n'
    '{"op": "td_finalize", "td": 0}\n'
    '{"op": "fault", "vcpu": 0, "gfn": "0x5", "t": 1}\n'
    '{"op": "fault", "vcpu": 1, "gfn": "0x5", "t": 1}\n'
    '{"op": "fault", "vcpu": 2, "gfn": "0x5", "t": 1}\n'
)


@child_runner
def test_on_the_pure_engine() -> None:
    run_pure(__file__)


def _fresh() -> tuple[Sequence[Event], Settings]:
    trace = parse_trace((SAMPLES / f"{FRESH}.jsonl").read_bytes(), f"{FRESH}.jsonl")
    return list(trace.events), Settings().with_overrides({"allocator": "percpu"})


@in_process
def test_what_a_stopped_search_reached_is_among_the_complete_outcomes() -> None:
    events, settings = _fresh()
    full = explore(events, settings)
    assert full["complete"] and "reached" not in full
    every = {outcome_key(o) for o in full["outcomes"]}
    seen = []
    for limit in (10, 60, 150, 300):
        r = explore(events, settings, max_states=limit)
        assert not r["complete"] and r["outcomes"] == [] and r["schedules"] == 0
        for o in r["reached"]:
            assert "schedules" not in o and "paths" not in o
            assert outcome_key(dict(o, schedules=0)) in every
        seen.append(len(r["reached"]))
    # a search that goes further reaches more (depth first: an end state comes early)
    assert seen[0] < seen[-1] and seen == sorted(seen)
    assert seen[-1] <= len(every)


@in_process
def test_each_reached_schedule_replays_to_its_outcome() -> None:
    events, settings = _fresh()
    r = explore(events, settings, max_states=200)
    assert r["reached"]
    for o in r["reached"]:
        got = replay(pin(events, o["orders"]), settings).summary()
        assert {k: got["counters"][k] for k in o["counters"]} == o["counters"]
        assert got["regions"] == o["regions"]
        assert o["example"] == [name for order in o["orders"] for name in order]


@in_process
def test_a_stop_before_the_last_group_reaches_no_outcome_of_the_trace() -> None:
    """End states of an earlier group are starts of the next, not the trace's outcomes."""
    trace = parse_trace(TWO_GROUPS.encode(), "two.jsonl")
    settings = Settings().with_overrides(trace.settings)
    full = explore(trace.events, settings)
    assert full["complete"] and full["groups"] == 2
    first = explore(trace.events, settings, max_states=40)
    assert not first["complete"] and first["covered"]["groups"] == 1
    assert first["reached"] == []
    # stopped in the second group: what it reached are outcomes of the whole trace
    last = explore(trace.events, settings, max_states=full["states"] - 1)
    assert not last["complete"] and last["covered"]["groups"] == 2 and last["reached"]
    every = {outcome_key(o) for o in full["outcomes"]}
    assert all(outcome_key(dict(o, schedules=0)) in every for o in last["reached"])


def test_the_cli_prints_and_pins_what_it_reached(tmp_path: Path) -> None:
    sample = str(SAMPLES / f"{FRESH}.jsonl")
    code, data, err = run(sample, "--json", "--max-states", "200")
    assert code == 3 and data is not None and data["reached"], err
    code, _, err = run(sample, "--max-states", "200")
    assert code == 3, err
    out = run_text(sample, "--max-states", "200")
    assert "# reached before the stop:" in out and "not every outcome" in out
    assert out.count("\nreached ") == len(data["reached"])
    pinned = tmp_path / "pinned.jsonl"
    code, _, err = run(sample, "--max-states", "200", "--write-pinned", str(pinned))
    assert code == 3 and "the first outcome reached before the stop" in err
    events = parse_trace(pinned.read_bytes(), "pinned.jsonl").events
    assert sum(1 for e in events if e.op == "schedule") == 1


def run_text(*args: str) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "explorer", "explore", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    return p.stdout


def test_the_job_keeps_what_a_limit_reached() -> None:
    events, settings = _fresh()
    status = ExploreJob(events, settings, 200).wait(120)
    assert status.state == "done", status.message
    r = status.result
    assert r is not None and not r["complete"] and outcome_rows(r) == []
    rows = reached_rows(r)
    assert [row["reached"] for row in rows] == list(range(1, len(r["reached"]) + 1))
    assert rows and all("kernel paths" not in row and "lost races" in row for row in rows)


def test_the_stop_button_keeps_what_the_search_had_reached() -> None:
    """Stop sends the child its stop signal; it answers with what it covered."""
    trace = parse_trace(SAME_GFN.encode(), "same.jsonl")
    settings = Settings().with_overrides(trace.settings)
    job = ExploreJob(trace.events, settings, 10_000_000)
    deadline = time.monotonic() + 90
    while job.poll().states < 3_000 and job.poll().state == "running":
        assert time.monotonic() < deadline, "the search did not get going"
        time.sleep(0.05)
    job.stop()
    status = job.wait(60)
    assert status.state == "stopped" and "stopped" in status.message
    r = status.result
    assert r is not None and not r["complete"] and "cancelled" in r["stopped"]
    assert r["reached"] and reached_rows(r)


@in_process
def test_summarising_what_was_reached_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A search stopped late may hold tens of thousands of end states: summarising them stops
    at REACHED_SECONDS, and the result says how many of those found it summarised."""
    import explorer.interleavings.search as search

    events, settings = _fresh()
    r = explore(events, settings, max_states=300)
    c = r["covered"]
    assert c["end_states_found"] == c["end_states_summarised"] > 0
    assert sum(o["variants"] for o in r["reached"]) == c["end_states_summarised"]
    monkeypatch.setattr(search, "REACHED_SECONDS", -1.0)
    r = explore(events, settings, max_states=300)
    c = r["covered"]
    assert c["end_states_found"] > 0 and c["end_states_summarised"] == 0 and r["reached"] == []
