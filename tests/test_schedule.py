"""A trace's ``schedule`` event pins the interleaving of its group (docs/trace-format.md)."""

from __future__ import annotations

from pathlib import Path

from explorer.ingest import parse_trace
from explorer.model.events import Schedule
from explorer.model.machine import Machine
from explorer.model.settings import Settings
from explorer.replay.timeline import replay

from .test_bulk import agree

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _lost_race(order: list[str] | None) -> tuple[list, Settings]:
    trace = parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")
    events = list(trace.events)
    if order is not None:
        at = next(i for i, e in enumerate(events) if e.t == 1)
        events.insert(at, Schedule(t=1, order=tuple(order)))
    return events, Settings().with_overrides(trace.settings)


def _steps(events: list, s: Settings) -> Machine:
    m = Machine(s, record=True)
    m.run(events)
    return m


def test_the_order_is_followed_then_the_schedule_goes_on() -> None:
    events, s = _lost_race(["vcpu1"] * 6 + ["vcpu0"] * 3)
    m = _steps(events, s)
    assert m.stopped is None
    first = next(i for i, st in enumerate(m.steps) if st.label == "trace.schedule")
    cpus = [st.cpu for st in m.steps[first + 1 : first + 10]]
    assert cpus == ["vcpu1"] * 6 + ["vcpu0"] * 3
    # then round-robin (the trace's setting), from the group's first CPU
    rest = [st.cpu for st in m.steps[first + 10 : first + 14]]
    assert rest == ["vcpu0", "vcpu1", "vcpu0", "vcpu1"]
    assert "vcpu1 vcpu1" in m.steps[first].narration


def test_a_pinned_order_changes_the_outcome() -> None:
    plain, s = _lost_race(None)
    vcpu0_first, _ = _lost_race(["vcpu0"] * 60)
    a, b = _steps(plain, s), _steps(vcpu0_first, s)
    assert a.counter("pamt_lost_race") == 1  # round-robin: both reach the lock together
    assert b.counter("pamt_lost_race") == 0  # vCPU 0 runs to the end first: no race


def test_a_cpu_without_work_stops_the_replay_at_the_schedule() -> None:
    events, s = _lost_race(["vcpu0", "vcpu5"])
    m = _steps(events, s)
    assert m.stopped is not None and m.stopped.code == "IMPOSSIBLE_EVENT"
    assert "vcpu5" in m.stopped.message and "no work left" in m.stopped.message


def test_turns_left_over_stop_the_replay() -> None:
    events, s = _lost_race(["vcpu0"] * 500)
    events = [e for e in events if not (e.t == 1 and getattr(e, "vcpu", None) == 1)]
    m = _steps(events, s)  # a group of one CPU, with more turns pinned than it takes
    assert m.stopped is not None
    assert "after its group's work is done" in m.stopped.message


def test_bulk_replay_and_seeks_agree_with_a_pinned_schedule() -> None:
    events, s = _lost_race(["vcpu1", "vcpu0", "vcpu0", "vcpu1"] * 5)
    agree(events, s)
    tl = replay(events, s)
    assert tl.stopped is None and tl.nr_steps == _steps(events, s).nr_steps
