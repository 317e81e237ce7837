"""Seeks on restored machines that build region maps lazily (explorer.model.packed.LayeredMaps):
the sparse keyframe groups, the layered region counts of snapshots, and whole seeks on hosts
whose allocations scatter, against a replay from the start."""

from __future__ import annotations

import random
from dataclasses import asdict

import numpy as np
import pytest

from explorer.ingest import parse_trace
from explorer.ingest.shapes import write
from explorer.model.machine import Machine, StepReached
from explorer.model.packed import GROUP, encode_group, group_map, group_regions
from explorer.model.records import RegionCounts
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from explorer.views.frames import owner_table, region_arrays, regions_in_play


def _maps(rng: random.Random, regions: list[int], pages: int) -> dict[int, bytearray]:
    out = {}
    for r in regions:
        m = bytearray(512)
        for _ in range(pages):
            m[rng.randrange(512)] = rng.randint(1, 9)
        out[r] = m
    return out


@pytest.mark.parametrize("pages", [0, 3, 40, 400])
def test_groups_give_back_every_map(pages: int) -> None:
    """Sparse (few pages in use) and dense (deflated) groups alike."""
    rng = random.Random(pages)
    g = 5
    regions = sorted(rng.sample(range(g * GROUP, (g + 1) * GROUP), 20))
    maps = _maps(rng, regions, pages)
    group = encode_group(maps, g)
    assert isinstance(group, bytes) == (pages <= 64)
    assert group_regions(g, group) == regions
    inflated: dict[int, bytes] = {}
    for r in range(g * GROUP, (g + 1) * GROUP):
        assert group_map(group, r, 512, inflated) == maps.get(r)
    assert encode_group(maps, g + 1) is None


def _events(shape: str, faults: int, **settings: object):  # type: ignore[no-untyped-def]
    trace = parse_trace(write(shape, faults), f"{shape}.jsonl")
    return trace.events, Settings().with_overrides({**trace.settings, **settings})


def _from_the_start(events, settings, i: int):  # type: ignore[no-untyped-def]
    """The snapshot after step ``i`` of a machine that ran every event from the first."""
    m = Machine(settings, record=False, check=True)
    m.stop_at = i
    ev = -1
    try:
        m.run(events)
    except StepReached as reached:
        ev = reached.event
    return m.snapshot(step=i, event=ev)


@pytest.mark.parametrize(
    ("shape", "settings"),
    [
        ("runs", {"allocator": "random"}),
        ("churn", {"allocator": "spread", "schedule": "random"}),
        ("lifecycle", {"allocator": "random", "mode": "v5-hint"}),
        ("runs", {}),
    ],
)
def test_seeks_on_scattered_hosts_match_a_replay_from_the_start(
    shape: str, settings: dict[str, object]
) -> None:
    events, s = _events(shape, 1500, **settings)
    tl = replay(events, s, checkpoint_every=64, keyframe_every=4)
    assert len(tl._checkpoints) > 2
    rng = random.Random(3)
    for i in sorted(rng.sample(range(tl.nr_steps), 6)):
        got = tl.state_at(i)
        want = _from_the_start(events, s, i)
        assert isinstance(got.region_owners, RegionCounts)
        da, db = asdict(got), asdict(want)
        for key in da:
            assert da[key] == db[key], f"{key} differs at step {i}"
        # the views count the layers with numpy: the same table as from a plain dict
        regions, rows = owner_table(got.region_owners)
        plain = dict(want.region_owners.items())
        want_regions, want_rows = owner_table(plain)
        assert np.array_equal(regions, want_regions) and np.array_equal(rows, want_rows)
        a, b = asdict(region_arrays(got)), asdict(region_arrays(want))
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert regions_in_play(got).equals(regions_in_play(want))


def test_a_restored_machine_has_the_state_it_was_imaged_in() -> None:
    """Restore, then the deltas after the image (merged), give the live machine's canonical
    state, page maps and module kinds built from the layers included; and a machine restored
    that way images and restores again to the same state."""
    events, s = _events("runs", 1200, allocator="random")
    m = Machine(s, record=False, check=True)
    half = len(events) // 2
    m.run(events[:half])
    image = m.image()
    deltas = []
    for start in range(half, len(events), 150):
        m.run(events[start : start + 150])
        deltas.append(m.delta())
    again = Machine(s, record=False, check=True)
    again.restore(image)
    again.apply_deltas(deltas)
    assert again.canonical_state() == m.canonical_state()
    third = Machine(s, record=False, check=True)
    third.restore(again.image())
    assert third.canonical_state() == m.canonical_state()
    assert third.module.used == m.module.used and third.module.used_total == m.module.used_total


@pytest.mark.parametrize("allocator", ["random", "lowest"])
def test_merged_deltas_where_guest_memfd_and_mappings_differ(allocator: str) -> None:
    """When guest_memfd's changes differ from the mappings' (here a binding taken out of gmem
    for one interval and put back in the next, since the shapes' faults and zaps change both
    alike), the merged seek applies each table its own changes; one merge
    serves both only when every delta shares them. Merged, one by one and live: one state."""
    events, s = _events("churn", 1500, allocator=allocator)
    m = Machine(s, record=False, check=True)
    m.run(events[:200])
    image = m.image()
    deltas = []
    unbound: tuple[int, int] | None = None
    for n, start in enumerate(range(200, len(events), 120)):
        m.run(events[start : start + 120])
        td = m.tds[min(m.tds)]
        if unbound is not None:  # bound again: the state is a real one again
            td.gmem[unbound[0]] = unbound[1]
            unbound = None
        elif n % 3 == 1 and len(td.gmem):
            gfn = max(td.gmem.keys())
            unbound = (gfn, td.gmem.pop(gfn) or 0)
        deltas.append(m.delta())
    assert unbound is None
    parts = [p for d in deltas for p in d.tds.values()]
    assert any(p[2][0] is not p[1][0] for p in parts)
    assert any(p[2][0] is p[1][0] for p in parts)
    merged = Machine(s, record=False, check=True)
    merged.restore(image)
    merged.apply_deltas(deltas)
    single = Machine(s, record=False, check=True)
    single.restore(image)
    for d in deltas:
        single.apply_delta(d)
    assert merged.canonical_state() == m.canonical_state()
    assert single.canonical_state() == m.canonical_state()
