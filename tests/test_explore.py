"""``python -m explorer explore``: every interleaving of a trace's concurrent groups.

The search reads generator frames, so it runs on the pure Python engine: these tests run the
command in a child process (under the compiled engine the command re-runs itself so), and
check the JSON contract, the exit status, the outcome counts derived in docs/engine.md, and
that a counterexample's schedule, pinned into the trace, replays to the same finding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from explorer.ingest import parse_trace
from explorer.interleavings.search import _count_paths, pin
from explorer.model.machine import Machine
from explorer.model.settings import Settings
from explorer.replay.timeline import replay

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
EXPLORE = (sys.executable, "-m", "explorer", "explore")
KEYS = ("ok", "complete", "groups", "states", "schedules", "end_states", "outcomes")


def run(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    env = dict(os.environ)
    env.pop("DPAMT_PURE", None)  # the command itself switches to the pure engine
    p = subprocess.run(
        [sys.executable, "-m", "explorer", "explore", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    data = json.loads(p.stdout) if "--json" in args and p.stdout.strip() else None
    return p.returncode, data, p.stderr


def explore_json(sample: str, mode: str, *extra: str) -> tuple[int, dict[str, Any]]:
    code, data, err = run(
        str(SAMPLES / f"{sample}.jsonl"), "--set", f"mode={mode}", "--json", *extra
    )
    assert data is not None, err
    return code, data


@pytest.mark.parametrize("reduction", [True, False], ids=["reduced", "full"])
@pytest.mark.parametrize("mode", ["v6", "v6-locked", "v5-hint"])
def test_clean_modes_explore_completely_with_the_outcomes_written_down(
    mode: str, reduction: bool
) -> None:
    # outcome counts: docs/engine.md derives the two-vCPU v6 ones by hand. v6-locked allocates
    # the pair before the lock: with the search's per-CPU allocator (the default) each CPU's
    # pair pages are its own whatever the order, so no end states differ in which free page
    # was taken (with --set allocator=lowest: 4 and 3)
    expected = {
        ("lost_race", "v6"): 4,
        ("lost_race", "v6-locked"): 2,
        ("lost_race", "v5-hint"): 4,
        ("put_vs_get", "v6"): 2,
        ("put_vs_get", "v6-locked"): 2,
        ("put_vs_get", "v5-hint"): 3,
    }
    for sample in ("lost_race", "put_vs_get"):
        code, r = explore_json(sample, mode, *([] if reduction else ["--no-reduction"]))
        assert code == 0 and r["ok"] and r["complete"] and r["violations"] == []
        assert r["reduction"] is reduction
        assert all(k in r for k in (*KEYS, "violations", "seconds"))
        # the settings the search ran with: the per-CPU allocator, the search's default
        assert r["settings"]["mode"] == mode and r["settings"]["allocator"] == "percpu"
        assert r["groups"] == 1 and r["end_states"] == expected[(sample, mode)]
        assert r["schedules"] == sum(o["schedules"] for o in r["outcomes"])
        for o in r["outcomes"]:
            assert set(o) >= {"schedules", "example", "counters", "regions", "pamt_cache", "pages"}
            assert o["example"] == [t for order in o["orders"] for t in order]


def test_v6_two_vcpus_on_a_cold_region_by_hand() -> None:
    """The four end states of docs/engine.md: the winner (vCPU 0 or 1) installs its own two
    cache pages as the pair; the other either finds refcount 1 on the lock-free check (fast
    path, its cache keeps its pages) or read 0 before the ADD and lost the race under the lock
    (its two pages freed to the allocator). As outcomes, page numbers abstracted: the two lost
    races are one outcome (8 + 8 cache pages, which vCPU won only changes which pages form the
    pair), the fast paths two (the winner's cache is the one with 8). Schedule counts are of
    the full search (the reduced one searches one order per class of independent turns); the
    reduced search reaches the same outcomes by the same kernel paths."""
    _, r = explore_json("lost_race", "v6", "--no-reduction")
    assert not r["reduction"] and r["states"] == 540  # docs/engine.md's hand count
    assert r["end_states"] == 4 and len(r["outcomes"]) == 3
    lost = [o for o in r["outcomes"] if o["counters"]["pamt_lost_race"] == 1]
    fast = [o for o in r["outcomes"] if o["counters"]["pamt_lost_race"] == 0]
    assert len(lost) == 1 and lost[0]["variants"] == 2
    assert lost[0]["pamt_cache"] == {"0": 8, "1": 8}
    assert sorted(tuple(o["pamt_cache"].values()) for o in fast) == [(8, 10), (10, 8)]
    assert all(o["variants"] == 1 and o["regions"]["64"]["refcount"] == 2 for o in fast)
    # symmetric: each winner the same number of schedules (the lost race: two equal halves);
    # reading 0 before the winner's ADD is far the commoner
    assert fast[0]["schedules"] == fast[1]["schedules"] and lost[0]["schedules"] % 2 == 0
    assert lost[0]["schedules"] > 2 * fast[0]["schedules"]
    # the kernel paths: the loser's get went to the lock and lost; on the fast path it did not
    for p in lost[0]["paths"]:
        assert sorted("pamt_get.lost_race" in seq for seq in p.values()) == [False, True]
    for o in fast:
        for p in o["paths"]:
            assert any(seq[-1].startswith("pamt_get.fast") for seq in p.values())
            assert any("pamt_get.add" in seq for seq in p.values())
    _, reduced = explore_json("lost_race", "v6")
    assert reduced["reduction"] and reduced["states"] < r["states"]
    assert reduced["end_states"] == 4

    def shape(o: dict[str, Any]) -> tuple[Any, ...]:
        paths = sorted(sorted(map(tuple, p.values())) for p in o["paths"])
        # (the regions without the pair's page numbers: which end state of an outcome is its
        # example depends on the order the search met them)
        regions = {r: (v["refcount"], v["pair"] is not None) for r, v in o["regions"].items()}
        return (o["counters"], o["pamt_cache"], regions, o["variants"], paths)

    assert sorted(map(repr, map(shape, reduced["outcomes"]))) == sorted(
        map(repr, map(shape, r["outcomes"]))
    )


@pytest.mark.parametrize("reduction", [True, False], ids=["reduced", "full"])
def test_the_broken_mode_is_caught_and_its_schedule_replays_to_the_finding(
    tmp_path: Path, reduction: bool
) -> None:
    pinned = tmp_path / "pinned.jsonl"
    extra = [] if reduction else ["--no-reduction"]
    code, r = explore_json("lost_race", "v6-no-recheck", "--write-pinned", str(pinned), *extra)
    assert code == 1 and not r["ok"] and r["complete"]
    finding = r["violations"][0]
    assert finding["code"] == "WARN_PAMT_ADD" and finding["kind"] == "warning"
    assert "TDX_HPA_RANGE_NOT_FREE" in finding["message"]
    # the same finding, replayed (compiled engine, this process) from the pinned trace
    trace = parse_trace(pinned.read_bytes(), "pinned.jsonl")
    s = Settings().with_overrides(trace.settings)
    assert s.mode == "v6-no-recheck"
    tl = replay(trace.events, s)
    hits = [d for d in tl.diagnostics if d.code == "WARN_PAMT_ADD"]
    assert hits and hits[0].step == finding["step"] + 1  # + the schedule event's own step
    # and pin() gives the same events as the file
    original = parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")
    assert [e.op for e in pin(original.events, finding["orders"])] == [e.op for e in trace.events]


@pytest.mark.parametrize("reduction", [True, False], ids=["reduced", "full"])
def test_three_cpus_on_one_region(reduction: bool) -> None:
    extra = [] if reduction else ["--no-reduction"]
    code, r = explore_json("race_three_cpus", "v6", *extra)
    assert code == 0 and r["complete"] and r["end_states"] == 5
    code, r = explore_json("race_three_cpus", "v6-no-recheck", *extra)
    assert code == 1 and {v["code"] for v in r["violations"]} == {"WARN_PAMT_ADD"}


def test_exit_status_and_messages() -> None:
    lost = str(SAMPLES / "lost_race.jsonl")
    code, data, _ = run(lost, "--json", "--max-states", "10")
    assert code == 3 and data is not None
    assert not data["complete"] and not data["ok"] and "limit of 10 states" in data["stopped"]
    assert data["outcomes"] == [] and data["states"] == 11
    code, _, err = run(lost, "--set", "mode=v7")
    assert code == 2 and "mode" in err and "v6-no-recheck" in err
    code, _, err = run(lost, "--set", "nonsense")
    assert code == 2 and "expected key=value" in err
    code, _, err = run(lost, "--max-states", "0")
    assert code == 2 and "--max-states" in err
    code, _, err = run(str(SAMPLES / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in err


def test_human_output_lists_outcomes_and_findings() -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "explorer",
            "explore",
            str(SAMPLES / "lost_race.jsonl"),
            "--set",
            "mode=v6-no-recheck",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert p.returncode == 1
    assert "distinct outcome(s)" in p.stdout and "WARNING WARN_PAMT_ADD" in p.stdout
    assert "path: vcpu0: " in p.stdout  # each outcome's kernel paths
    assert "schedule: vcpu" in p.stdout
    # the counts say which search they are of
    assert "states searched (reduced)" in p.stdout and "schedule(s) searched" in p.stdout
    full = subprocess.run(
        [*EXPLORE, str(SAMPLES / "lost_race.jsonl"), "--no-reduction"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert full.returncode == 0 and "540 states (full search)" in full.stdout
    assert "searched" not in full.stdout


def test_count_paths_on_a_small_graph() -> None:
    # a diamond and a shortcut: a->b->d, a->c->d, a->d: three paths to d, one to e via b
    edges = {b"a": [b"b", b"c", b"d"], b"b": [b"d", b"e"], b"c": [b"d"]}
    assert _count_paths(b"a", edges, {b"d", b"e"}) == {b"d": 3, b"e": 1}


def test_no_concurrent_group_is_one_outcome() -> None:
    code, r = explore_json("cold_region", "v6")
    assert code == 0 and r["groups"] == 0 and r["end_states"] == 1 and r["schedules"] == 1
    trace = parse_trace((SAMPLES / "cold_region.jsonl").read_bytes(), "cold_region.jsonl")
    m = Machine(Settings().with_overrides(trace.settings), record=False)
    m.run(trace.events)
    assert r["outcomes"][0]["counters"]["faults"] == m.counter("faults")
