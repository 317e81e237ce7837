"""Fair retries in ``explore``: a retry loop is a cycle of the state graph, reported as a
livelock only when a fair schedule can stay in it (issue 26)."""

from __future__ import annotations

from pathlib import Path

from explorer.ingest import parse_trace
from explorer.interleavings.search import _count_paths, _fair_cycles, pin
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from tests.test_explore import SAMPLES, explore_json


def test_a_retry_on_another_cpus_frozen_entry_is_no_livelock() -> None:
    # the table race: the loser retries while the winner holds the frozen entry; an unfair
    # scheduler could keep retrying it forever, a fair one lets the winner finish
    code, r = explore_json("cold_race_2vcpu", "v6")
    assert code == 0 and r["complete"] and r["ok"] and r["violations"] == []
    assert r["outcomes"] and all(
        not any("LIVELOCK" in d for d in o["diagnostics"]) for o in r["outcomes"]
    )
    # futile laps are not counted: a few retries that saw a changed world, not max_retries
    assert max(o["counters"]["fault_retries"] for o in r["outcomes"]) < 8


def test_a_retry_no_other_cpu_can_end_is_a_livelock_that_replays(tmp_path: Path) -> None:
    pinned = tmp_path / "pinned.jsonl"
    code, r = explore_json(
        "cold_race_2vcpu",
        "v6",
        "--set",
        "dpamt_gets_per_fault=0",
        "--write-pinned",
        str(pinned),
    )
    assert code == 1 and r["complete"] and not r["ok"]
    (finding,) = [v for v in r["violations"] if v["code"] == "LIVELOCK"]
    assert finding["kind"] == "livelock" and "retr" in finding["message"]
    # the pinned schedule (to the loop, then one lap of it) replays into the same loop: the
    # replay's own bound (max_retries) then reports it
    trace = parse_trace(pinned.read_bytes(), "pinned.jsonl")
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    assert any(d.code == "LIVELOCK" for d in tl.diagnostics)
    original = parse_trace((SAMPLES / "cold_race_2vcpu.jsonl").read_bytes(), "x.jsonl")
    assert len(pin(original.events, finding["orders"])) == len(trace.events)


def test_fair_cycles_need_every_enabled_cpu_to_move_inside() -> None:
    # a: T loops on itself while U is enabled and U's turn leaves the loop: unfair
    edges = {b"a": [("T", b"a"), ("U", b"b")], b"b": [("T", b"b")]}
    enabled = {b"a": ("T", "U"), b"b": ("T",)}
    # b: T alone loops (U is done there): fair, a real livelock
    assert _fair_cycles([b"a", b"b"], edges, enabled) == [{b"b"}]
    # U blocked in a (it waits on T): the loop at a is fair too
    assert {frozenset(c) for c in _fair_cycles([b"a"], edges, {b"a": ("T",)})} == {
        frozenset({b"a"})
    }
    # no loop at all: nothing
    assert _fair_cycles([b"a"], {b"a": [("T", b"b")]}, {b"a": ("T",)}) == []


def test_paths_are_counted_up_to_laps_of_a_loop() -> None:
    # a -> b <-> c -> d, and a -> d: the loop b/c counts as one node
    edges = {b"a": [b"b", b"d"], b"b": [b"c"], b"c": [b"b", b"d"]}
    assert _count_paths(b"a", edges, {b"d"}) == {b"d": 2}
