"""explorer.interleavings.job: the Interleavings page's background search and its result's shapes."""

from pathlib import Path

import pytest

from explorer.ingest import Trace, parse_trace
from explorer.interleavings.job import (
    ExploreJob,
    first_difference,
    outcome_rows,
    parse_progress,
    pinned_trace,
    violation_rows,
)
from explorer.interleavings.search import pin
from explorer.model.settings import Settings
from explorer.replay.timeline import replay

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _sample(name: str, **overrides: object) -> tuple[Trace, Settings]:
    data = (SAMPLES / f"{name}.jsonl").read_bytes()
    trace = parse_trace(data, f"{name}.jsonl")
    settings = Settings().with_overrides(trace.settings).with_overrides(dict(overrides))
    return trace, settings


def test_progress_lines_are_parsed_and_others_are_not() -> None:
    assert parse_progress("progress states=3000 group 1: 3,000 states\n") == 3000
    assert parse_progress("progress states=x") is None
    assert parse_progress("Traceback (most recent call last):") is None


@pytest.mark.parametrize("reduction", [True, False], ids=["reduced", "full"])
def test_lost_race_explores_to_three_outcomes_in_a_child(reduction: bool) -> None:
    trace, settings = _sample("lost_race")
    job = ExploreJob(trace.events, settings, 200_000, reduction=reduction)
    status = job.wait(60)
    assert status.state == "done", status.message
    r = status.result
    assert r is not None and r["complete"] and r["ok"] and r["groups"] == 1
    # the full search's states are docs/engine.md's hand count; the reduced search's fewer
    assert r["reduction"] is reduction and (r["states"] < 540 if reduction else r["states"] == 540)
    assert status.states == r["states"]
    rows = outcome_rows(r)
    # four end states; the two lost races differ only in which pages form the pair: one outcome
    assert len(rows) == 3 and r["end_states"] == 4
    assert sorted(row["lost races"] for row in rows) == [0, 0, 1]
    assert sorted(row["pages in DPAMT caches"] for row in rows) == [16, 18, 18]
    assert all("r64: 2, pair" in row["regions (refcount)"] for row in rows)
    # the column says whether the schedules are all of them or those the reduced search ran
    column = "schedules searched" if reduction else "schedules"
    assert all(column in row and len(row) == len(rows[0]) for row in rows)
    assert sum(row[column] for row in rows) == r["schedules"]
    assert all(
        row["turns"] == len(o["example"]) for row, o in zip(rows, r["outcomes"], strict=True)
    )
    assert violation_rows(r) == []
    job.stop()  # a settled job: stopping it changes nothing
    assert job.poll().state == "done"


def test_a_broken_mode_finds_the_warn_and_its_pinned_trace_replays_to_it() -> None:
    trace, settings = _sample("lost_race", mode="v6-no-recheck")
    status = ExploreJob(trace.events, settings).wait(60)
    assert status.state == "done", status.message
    r = status.result
    assert r is not None and not r["ok"]
    (finding,) = [v for v in violation_rows(r) if v["code"] == "WARN_PAMT_ADD"]
    assert finding["kind"] == "warning"
    assert any("WARN_PAMT_ADD" in row["findings"] for row in outcome_rows(r))
    v = next(v for v in r["violations"] if v["code"] == "WARN_PAMT_ADD")
    data = pinned_trace(trace, settings, v["orders"], v["code"])
    pinned = parse_trace(data, "lost_race-WARN_PAMT_ADD.jsonl")
    assert pinned.title.endswith("(pinned: WARN_PAMT_ADD)")
    assert pinned.settings["mode"] == "v6-no-recheck"
    tl = replay(pinned.events, settings)
    warns = [d for d in tl.diagnostics if d.code == "WARN_PAMT_ADD"]
    assert warns
    step = first_difference(trace.events, settings, pinned.events)
    assert 0 <= step <= warns[0].step
    # before it, the pinned replay runs as the trace's own (but for the pin itself)
    plain = replay(trace.events, settings)
    ours = [(s.cpu, s.label) for s in tl.steps_between(0, step) if s.label != "trace.schedule"]
    assert ours == [(s.cpu, s.label) for s in plain.steps_between(0, len(ours))]


def test_first_difference_of_the_trace_own_schedule_is_the_pin() -> None:
    trace, settings = _sample("lost_race")
    tl = replay(trace.events, settings)
    steps = tl.steps_between(0, tl.nr_steps)
    group = [s.cpu for s in steps if s.event >= 6]
    pinned = pin(trace.events, [group])
    i = first_difference(trace.events, settings, pinned)
    assert replay(pinned, settings).step(i).label == "trace.schedule"


def test_stop_ends_a_running_search() -> None:
    trace, settings = _sample("race_three_cpus", mode="v6-locked")
    job = ExploreJob(trace.events, settings, 1_000_000)
    assert job.poll().state == "running"
    job.stop()
    status = job.wait(30)
    assert status.state == "stopped"
    assert "stopped" in status.message
    assert status.result is None


def test_the_state_limit_ends_a_search_that_claims_nothing() -> None:
    trace, settings = _sample("lost_race")
    status = ExploreJob(trace.events, settings, 10).wait(60)
    assert status.state == "done", status.message  # exit status 3 still prints its JSON
    r = status.result
    assert r is not None and not r["complete"] and "stopped" in r
    assert outcome_rows(r) == []
