"""Checkpoints that cost what changed, on hosts of many TDs and vCPUs (issue 28, the ``fleet``
shape): a delta leaves out the vCPUs whose frozen state did not change and the TDs with nothing
changed, gives a TD's small tuple as None when unchanged, and frozen chunks and deltas hold
4-byte ints when they fit. Each is checked for exactness against the live machine (restore, then
the deltas, one by one and merged) and for actually holding less."""

from __future__ import annotations

from typing import Any

import pytest

from explorer.ingest import parse_trace
from explorer.ingest.shapes import fleet
from explorer.model.chunked import ChunkedDict, ints
from explorer.model.events import Event
from explorer.model.machine import (
    Machine,
    MachineDelta,
    MachineImage,
    _freeze_vcpu,
    _from_varints,
    _pack_entries,
    _patched_vcpu,
    _small_ints,
    _thaw_vcpu,
    _unpack_entries,
    _varints,
    _vcpu_patch,
    batches,
)
from explorer.model.settings import Settings
from explorer.model.state import GONE
from explorer.replay.timeline import replay


def _fleet(faults: int, tds: int, **overrides: Any) -> tuple[list[Event], Settings]:
    data = ("\n".join(fleet(faults, seed=3, tds=tds)) + "\n").encode()
    trace = parse_trace(data, "fleet.jsonl")
    return list(trace.events), Settings().with_overrides({**trace.settings, **overrides})


def _checkpointed(
    events: list[Event], s: Settings, every: int, keyframe_every: int
) -> tuple[list[MachineDelta], dict[int, MachineImage], list[tuple[Any, ...]]]:
    """Run ``events`` as the replay does, a delta every ``every`` events (and an image every
    ``keyframe_every`` deltas): the deltas, the images by delta ordinal, the live canonical
    state at each checkpoint."""
    m = Machine(s, record=False, check=True)
    deltas: list[MachineDelta] = []
    images: dict[int, MachineImage] = {}
    states: list[tuple[Any, ...]] = []
    since = every
    for start, end in batches(events):
        if since >= every:
            since = 0
            deltas.append(m.delta())
            if (len(deltas) - 1) % keyframe_every == 0:
                images[len(deltas) - 1] = m.image()
            states.append(m.canonical_state())
        m.run_batch((i, events[i]) for i in range(start, end))
        since += end - start
    return deltas, images, states


@pytest.mark.parametrize(
    "overrides",
    [{}, {"allocator": "spread", "schedule": "random"}, {"allocator": "random"}],
    ids=["default", "spread", "random"],
)
def test_every_checkpoint_rebuilds_the_live_state(overrides: dict[str, Any]) -> None:
    """From each image, the deltas after it (merged, and one by one) rebuild the machine's
    canonical state at every later checkpoint, although the deltas leave out unchanged vCPUs
    and TDs."""
    events, s = _fleet(2500, tds=24, **overrides)
    deltas, images, states = _checkpointed(events, s, every=96, keyframe_every=4)
    assert len(images) >= 3
    for k, image in images.items():
        for j in range(k, min(k + 6, len(deltas))):
            merged = Machine(s, record=False, check=True)
            merged.restore(image)
            merged.apply_deltas(deltas[k + 1 : j + 1])
            assert merged.canonical_state() == states[j], (k, j)
            single = Machine(s, record=False, check=True)
            single.restore(image)
            for d in deltas[k + 1 : j + 1]:
                single.apply_delta(d)
            assert single.canonical_state() == states[j], (k, j)


def test_a_delta_holds_only_what_changed() -> None:
    """No vCPU in a delta is frozen as it was at the previous checkpoint, no TD part is
    empty, and an unchanged small tuple is None; on this shape most vCPUs a batch ran on end
    the interval as they began it, so deltas hold far fewer vCPUs than ran."""
    events, s = _fleet(3000, tds=32)
    deltas, images, _ = _checkpointed(events, s, every=128, keyframe_every=1000)
    m = Machine(s, record=False, check=True)
    m.restore(images[0])
    held = 0
    nones = 0
    for d in deltas[1:]:
        before = {k: _freeze_vcpu(v) for k, v in m.vcpus.items()}
        for k, f in d.vcpus.items():
            assert before.get(k) != _freeze_vcpu(_patched_vcpu([f], m.vcpus.get(k))), k
        for k, (small, leaves, gmem, entries) in d.tds.items():
            assert small is not None or len(leaves[0]) or len(gmem[0]) or entries, k
            nones += small is None
        held += len(d.vcpus)
        m.apply_delta(d)
    assert nones > 0
    assert held < 0.5 * len(m.vcpus) * (len(deltas) - 1)


def test_an_image_between_deltas_starts_the_next_delta() -> None:
    """An image taken mid-interval is a checkpoint: the next delta is relative to it, so a vCPU
    changed and changed back since the image is still in it (its state at the last delta is
    not the baseline any more)."""
    events, s = _fleet(1200, tds=8)
    spans = batches(events)
    third = len(spans) // 3
    m = Machine(s, record=False, check=True)
    for start, end in spans[:third]:
        m.run_batch((i, events[i]) for i in range(start, end))
    m.delta()
    v = min(m._frozen_vcpus)  # (a vCPU the delta froze: its baseline until the image)
    saved = list(m.vcpus[v].pamt_cache)
    m.vcpus[v].pamt_cache.append(999_999)  # changed since the delta, then imaged
    m._delta_vcpus.add(v)
    image = m.image()
    m.vcpus[v].pamt_cache[:] = saved  # back to its state at the delta
    m._delta_vcpus.add(v)
    d = m.delta()
    assert v in d.vcpus
    again = Machine(s, record=False, check=True)
    again.restore(image)
    again.apply_delta(d)
    assert again.canonical_state() == m.canonical_state()
    for start, end in spans[third : 2 * third]:
        m.run_batch((i, events[i]) for i in range(start, end))
    again.apply_delta(m.delta())
    assert again.canonical_state() == m.canonical_state()


def test_frozen_ints_are_four_bytes_when_they_fit() -> None:
    """Chunks and deltas of small gfns and pfns take 4-byte ints; a gfn past 2**31 takes 8
    bytes, and both round-trip through a checkpoint."""
    assert ints([1, 2, -1]).itemsize == 4
    assert ints([1, 1 << 40]).itemsize == 8
    small = ChunkedDict([(7, 70), (600, 6000)])
    big = ChunkedDict([(7, 70), ((1 << 40) + 3, 1 << 33)])
    for d in (small, big):
        table = d.frozen_table()
        back = ChunkedDict.from_table(table)
        assert dict(back.items()) == dict(d.items())
        d[9] = 90
        delta = d.delta()
        back.apply(delta)
        assert dict(back.items()) == dict(d.items())
    assert all(a.itemsize == 4 for chunk in small.frozen_table()[1] for a in chunk)
    assert any(a.itemsize == 8 for chunk in big.frozen_table()[1] for a in chunk)


#: bytes per event of the timeline in test_fleet_timeline_bytes_per_event: 659 before deltas
#: left out unchanged vCPUs and TDs, 336 (pure Python) to 355 (compiled) after
BYTES_BOUND = 450


def test_fleet_timeline_bytes_per_event() -> None:
    """The timeline of a small fleet (2,000 faults on 32 TDs, a checkpoint every 128 events)
    holds well under the bytes per event it held when every vCPU and TD a batch ran on was
    frozen into each delta."""
    events, s = _fleet(2000, tds=32)
    tl = replay(events, s, checkpoint_every=128)
    per_event = sum(tl.memory_bytes().values()) / tl.nr_events
    assert per_event < BYTES_BOUND, per_event


def test_sept_entry_changes_pack_into_one_array_and_back() -> None:
    """A delta's and a keyframe's S-EPT entries: present and gone entries pack as four ints
    each (8-byte ints past 2**31) and unpack to the same changes; anything else (a ``frozen``
    entry, never seen between batches) stays a dict, copied, not the live one."""
    changes: dict[Any, Any] = {(1, 7): ("present", 70, 71), (2, 0): GONE, (3, 1): ("present", 5, 6)}
    packed = _pack_entries(changes)
    assert not isinstance(packed, dict) and len(packed) == 12 and packed.itemsize == 4
    assert _unpack_entries(packed) == changes
    big = {(1, 1 << 33): ("present", 1 << 32, 9)}
    packed_big = _pack_entries(big)
    assert not isinstance(packed_big, dict) and packed_big.itemsize == 8
    assert _unpack_entries(packed_big) == big
    odd = {(1, 7): ("frozen", "cpu0"), (1, 8): ("present", 1, 2)}
    kept = _pack_entries(odd)
    assert kept == odd and kept is not odd
    assert _unpack_entries(_pack_entries({})) == {}


def test_region_rows_take_the_narrowest_ints() -> None:
    """A delta's refcounts, orphans and references held: 1 byte per row when they fit (all
    zero: one zeroed buffer), else 2, else 4; the values are unchanged."""
    for values, size in (([], 1), ([0, 0, 0], 1), ([3, 0, 127], 1), ([512, 1], 2), ([1 << 20], 4)):
        a = _small_ints(values)
        assert list(a) == values and a.itemsize == size, (values, a)


def test_frozen_vcpu_pages_pack_as_varint_differences() -> None:
    """A frozen vCPU's counts and page differences round-trip through varints for any value
    (negative differences, pages past 2**32); a run of pages a stride of 512 apart (a spread
    allocator's top-up) takes 2 bytes a page, not 4."""
    values = [0, 1, -1, 63, -64, 64, 8191, -8192, 1 << 33, -(1 << 40), 512]
    assert _from_varints(_varints(values)) == values
    run = [1 << 23] + [512] * 40
    assert len(_varints(run)) <= 4 + 2 * 40
    events, s = _fleet(600, tds=4, allocator="random")
    m = Machine(s, record=False, check=True)
    m.run(events)
    for v in m.vcpus.values():
        v.pamt_cache.append((1 << 34) + 5)  # (a page past 32 bits, then a lower one)
        v.pamt_cache.append(3)
        f = _freeze_vcpu(v)
        assert _freeze_vcpu(_thaw_vcpu(f)) == f
        assert _thaw_vcpu(f).pamt_cache == v.pamt_cache
        assert {k: c.pfns for k, c in _thaw_vcpu(f).caches.items()} == {
            k: c.pfns for k, c in v.caches.items()
        }


def test_a_delta_holds_each_vcpu_as_a_patch_of_its_previous_state() -> None:
    """A vCPU in a delta is a patch of its previous frozen state: applied to that state it
    gives the live vCPU exactly, with no previous state it stands alone, and with a random
    allocator (pages 3 to 4 varint bytes apart) it holds well under half the bytes of the full
    frozen form, the bottom of each cache stack being kept from one checkpoint to the next."""
    events, s = _fleet(1500, tds=8, allocator="random")
    m = Machine(s, record=False, check=True)
    prev = {k: _freeze_vcpu(v) for k, v in m.vcpus.items()}
    full = patched = compared = 0
    for start, end in batches(events):
        m.run_batch((i, events[i]) for i in range(start, end))
        for k, v in m.vcpus.items():
            f = _freeze_vcpu(v)
            before = prev.get(k)
            alone = _vcpu_patch(v, None)
            assert _freeze_vcpu(_patched_vcpu([alone], None)) == f, k
            if before is None or before == f:
                prev[k] = f
                continue
            patch = _vcpu_patch(v, before)
            assert _freeze_vcpu(_patched_vcpu([patch], _thaw_vcpu(before))) == f, k
            full += len(f[4])
            patched += len(patch[4])
            compared += 1
            prev[k] = f
    assert compared > 50
    assert patched < 0.4 * full, (patched, full)
