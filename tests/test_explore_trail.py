"""Edges extended past their conflicting turn (docs/engine.md, "Every interleaving", point 10):
the turns after an edge's one turn that may conflict, when no turn of another CPU conflicts with
them (unlocks, the end of a fault, the end of a retry lap), join the edge, so the state between
is no scheduling point. The search must find the same outcomes, end states and findings as
without the extension, in fewer states; an acquisition of ``pamt_lock`` (no left-mover) never
joins; a turn found to conflict ends the edge before it, the machine put back by re-execution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import explorer.interleavings.search as search
from explorer.ingest import parse_trace
from explorer.model.settings import Settings
from tests.purechild import child_runner, in_process, run_pure


@child_runner
def test_on_the_pure_engine() -> None:
    run_pure(__file__)


SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _explore(
    sample: str, overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch, trail: bool
) -> tuple[dict[str, Any], list[search._Reduced]]:
    """``explore`` of a sample with trailing turns on or off, and the group searches it ran."""
    trace = parse_trace((SAMPLES / f"{sample}.jsonl").read_bytes(), f"{sample}.jsonl")
    settings = Settings().with_overrides({**trace.settings, "allocator": "percpu", **overrides})
    made: list[search._Reduced] = []
    run = search._Reduced.run

    def keep(self: search._Reduced) -> None:
        made.append(self)
        run(self)

    monkeypatch.setattr(search._Reduced, "trail", trail)
    monkeypatch.setattr(search._Reduced, "run", keep)
    return search.explore(trace.events, settings, max_seconds=120), made


def _outcomes(r: dict[str, Any]) -> dict[tuple[Any, ...], int]:
    """Each outcome (``outcome_key``: which end state a retry count or a page number reached
    first is search order, not outcome) and how many end states it has."""
    return {search.outcome_key(o): o["variants"] for o in r["outcomes"]}


CASES = [
    ("cold_race_2vcpu", {}),
    ("fresh_td_race", {}),
    ("lost_race", {"mode": "v6-no-recheck"}),
    ("race_three_cpus", {"mode": "v6-locked"}),
    ("put_remove_vs_get", {}),
    ("stale_fault", {}),
    ("cold_race_2vcpu", {"allocator": "lowest"}),
]


@in_process
@pytest.mark.parametrize(("sample", "overrides"), CASES, ids=[f"{s}-{o}" for s, o in CASES])
def test_the_same_outcomes_and_findings_in_no_more_states(
    sample: str, overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    off, _ = _explore(sample, overrides, monkeypatch, trail=False)
    on, made = _explore(sample, overrides, monkeypatch, trail=True)
    assert off["complete"] and on["complete"]
    assert _outcomes(on) == _outcomes(off)
    assert on["end_states"] == off["end_states"]
    found = sorted((v["kind"], v["code"]) for v in on["violations"])
    assert found == sorted((v["kind"], v["code"]) for v in off["violations"])
    assert on["states"] <= off["states"]
    assert made and all(g.trail for g in made)


@in_process
def test_a_cold_range_race_needs_fewer_states_and_the_miss_path_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two vCPUs on a cold range: the states between a CPU's page.aug and the end of its fault
    (and between a lost freeze and the end of its lap) are gone; some turn after a conflicting
    one conflicts too (a page.aug after an unlock), so the search met a miss and re-executed."""
    off, _ = _explore("cold_race_2vcpu", {}, monkeypatch, trail=False)
    on, made = _explore("cold_race_2vcpu", {}, monkeypatch, trail=True)
    assert on["states"] * 3 < off["states"] * 2  # 151 against 250 when written
    assert sum(g.trail_misses for g in made) > 0
    assert any(g.no_trail for g in made)
    # the edges that now end in the unlock and the end of the fault after page.aug
    labels = [lab for g in made for labs in g.labels.values() for lab in labs]
    assert any(
        isinstance(lab, tuple)
        and lab[-4:] == ("page.aug", "mmu_lock.read_unlock", "fault.done", "")
        for lab in labels
    )


@in_process
def test_an_acquisition_joining_after_the_conflicting_turn_would_lose_end_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why an acquisition of ``pamt_lock`` ends the extension: taken in one edge with the slow
    path's look at the refcount, it lets no other CPU add the pair in between, and end states
    where one CPU loses that race are gone (16 end states become 14 on two vCPUs)."""
    off, _ = _explore("cold_race_2vcpu", {}, monkeypatch, trail=False)
    real = search._lock_op
    monkeypatch.setattr(search, "_lock_op", lambda m, op: op != "acq" and real(m, op))
    wrong, _ = _explore("cold_race_2vcpu", {}, monkeypatch, trail=True)
    assert wrong["end_states"] < off["end_states"]
