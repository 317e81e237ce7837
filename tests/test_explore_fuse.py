"""Fused turns in the reduced search (docs/engine.md, "Every interleaving", points 8 and 9): a
turn no other CPU's turn conflicts with is not a scheduling point, what a fusion relied on is
watched (a later conflicting access searches the group again), a fused edge expands to its
turns in schedules, and a state whose enabled CPUs are all asleep still has a successor."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from explorer.ingest import parse_trace
from explorer.interleavings.search import _apart, _Reduced, _Refuse, pin
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from tests.test_explore import SAMPLES, explore_json, run

R, W, A = frozenset("r"), frozenset("w"), frozenset("a")


def test_accesses_are_apart_when_one_cpu_or_only_reads_or_only_updates() -> None:
    assert _apart((frozenset({"vcpu0"}), frozenset("rwa")))
    assert _apart((frozenset({"vcpu0", "vcpu1"}), R))
    assert _apart((frozenset({"vcpu0", "vcpu1"}), A))
    assert not _apart((frozenset({"vcpu0", "vcpu1"}), frozenset("ra")))
    assert not _apart((frozenset({"vcpu0", "vcpu1"}), W))


def _search() -> Any:
    """Just what _fusable and _note use of a search."""
    return SimpleNamespace(seen={}, relied=set(), shared=set())


def test_a_fusion_is_searched_again_when_another_cpu_conflicts_with_what_it_relied_on() -> None:
    g = _search()
    x = ("sept", 0, 1, 0)
    mine: tuple[frozenset[Any], ...] = (frozenset({x}), frozenset(), frozenset())
    _Reduced._note(g, "vcpu0", mine)
    assert _Reduced._fusable(g, "vcpu0", mine)  # only vcpu0 has touched it
    g.relied.add(x)
    _Reduced._note(g, "vcpu1", mine)  # another CPU reads it too: reads commute
    with pytest.raises(_Refuse) as again:  # and writes it: the fusion was wrong
        _Reduced._note(g, "vcpu1", (frozenset(), frozenset({x}), frozenset()))
    assert again.value.shared == {x}
    # an object the group was searched again for is never fused on
    g2 = _search()
    g2.shared.add(x)
    assert not _Reduced._fusable(g2, "vcpu0", mine)
    # updates only, by any CPU: fusable; a turn of an unannotated event never is
    up: tuple[frozenset[Any], ...] = (frozenset(), frozenset(), frozenset({("counts", 9)}))
    _Reduced._note(g2, "vcpu0", up)
    _Reduced._note(g2, "vcpu1", up)
    assert _Reduced._fusable(g2, "vcpu1", up)
    assert not _Reduced._fusable(g2, "vcpu0", (frozenset(), frozenset({"*"}), frozenset()))


def test_three_vcpus_on_a_cold_range_in_fewer_states_with_every_outcome() -> None:
    code, r = explore_json("cold_race_3vcpu", "v6")
    assert code == 0 and r["complete"] and r["ok"]
    # 43,303 states before fused turns (7,590 with, 3,002 with edges past their conflicting
    # turn), with the same 21 outcomes and 144 end states
    assert r["states"] < 10_000 and len(r["outcomes"]) == 21 and r["end_states"] == 144


def test_a_fused_schedule_replays_to_its_outcome() -> None:
    """Each outcome's schedule (fused edges expanded to their turns) pinned and replayed ends
    in that outcome: the counters and the regions it lists."""
    code, r = explore_json("fresh_td_race", "v6")
    assert code == 0 and r["complete"]
    original = parse_trace((SAMPLES / "fresh_td_race.jsonl").read_bytes(), "x.jsonl")
    settings = Settings().with_overrides({"allocator": "percpu"})
    for o in r["outcomes"]:
        tl = replay(pin(original.events, o["orders"]), settings)
        got = tl.summary()
        assert {k: got["counters"][k] for k in o["counters"]} == o["counters"]
        assert got["regions"] == o["regions"]


LOOPING_ALONE = (
    '{"format": "dpamt-trace", "version": 1, "title": "t", "settings": {"mode": "v6", '
    '"dpamt_gets_per_fault": 0, "max_retries": 3, "allocator": "percpu"}}\n'
    '{"op": "td_create", "td": 0}\n{"op": "vcpu_create", "td": 0, "vcpu": 0}\n'
    '{"op": "td_create", "td": 1}\n{"op": "vcpu_create", "td": 1, "vcpu": 1}\n'
    '{"op": "td_finalize", "td": 0}\n{"op": "td_finalize", "td": 1}\n'
    '{"op": "fault", "vcpu": 0, "gfn": "0x0", "t": 1, "pfn": "0x8001"}\n'
    '{"op": "fault", "vcpu": 1, "gfn": "0x1", "t": 1}\n'
)


@pytest.mark.parametrize("reduction", [True, False], ids=["reduced", "full"])
def test_a_cpu_looping_alone_after_the_other_is_done_is_a_livelock(
    tmp_path: Path, reduction: bool
) -> None:
    """vCPU 0 cannot get a pair for its cold region (no cache pages) and retries for ever;
    vCPU 1's turns conflict with none of its loop's. The property test's counterexample: the
    reduced search left the states after vCPU 1 was done to sleep sets and found no LIVELOCK
    where the full search did."""
    path = tmp_path / "t.jsonl"
    path.write_text(LOOPING_ALONE)
    code, data, err = run(str(path), "--json", *([] if reduction else ["--no-reduction"]))
    assert data is not None, err
    assert code == 1 and data["complete"]
    assert [v["code"] for v in data["violations"]] == ["LIVELOCK"]
