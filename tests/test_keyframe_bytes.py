"""Keyframes measured in the bytes they hold (issue 28): deflated region tables
(explorer.model.packed.zpack_ints / zpack_pairs) and a keyframe spacing chosen from the real
bytes of the keyframes kept, seeks exact on a scattered host."""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest

from explorer.ingest import parse_trace
from explorer.ingest.shapes import write
from explorer.model.packed import (
    pack_ints,
    zpack_ints,
    zpack_pairs,
    zunpack_ints,
    zunpack_pairs,
)
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from tests.test_seek_layers import _from_the_start


@pytest.mark.parametrize(
    "table",
    [
        {},
        {0: 0},
        {5: -3, 1: 2**40, 2**21: 7},  # a value past 32 bits, a negative one
        {k: k % 300 for k in range(0, 70_000, 3)},
        {7: 1, 3: 2, 70_000: 5, 0: 7, 512: 1},
    ],
)
def test_deflated_counts_are_lossless_and_in_key_order(table: dict[int, int]) -> None:
    back = zunpack_ints(zpack_ints(table))
    assert back == table
    assert list(back) == sorted(table)


@pytest.mark.parametrize(
    "pairs",
    [{}, {40: (10, 11), 2: (7, 8), 1 << 20: (3, 4)}, {3: (2**29, 5), 9: (0, 2**31 - 1)}],
)
def test_deflated_pairs_are_lossless_and_in_key_order(
    pairs: dict[int, tuple[int, int]],
) -> None:
    back = zunpack_pairs(zpack_pairs(pairs))
    assert back == pairs
    assert list(back) == sorted(pairs)


def test_a_scattered_hosts_counts_deflate_well() -> None:
    """Nearly every region present, small counts: a fraction of the two 32-bit arrays."""
    rng = random.Random(2)
    table = {r: rng.randint(1, 300) for r in range(32_768) if rng.random() < 0.95}
    keys, values = pack_ints(table)
    assert len(zpack_ints(table)) * 4 < len(keys) * 4 + len(values) * 4


def test_keyframes_held_stay_within_a_budget_in_real_bytes() -> None:
    """With half the bytes the keyframes take unbounded, the keyframes kept hold at most that
    budget (each shared object once), fewer are kept, and seeks stay exact."""
    trace = parse_trace(write("runs", 1500), "runs.jsonl")
    s = Settings().with_overrides({**trace.settings, "allocator": "random"})
    free = replay(trace.events, s, checkpoint_every=64, keyframe_every=2)
    held = free.memory_bytes()["keyframes"]
    budget = held // 2
    tl = replay(trace.events, s, checkpoint_every=64, keyframe_every=2, checkpoint_budget=budget)
    assert tl.memory_bytes()["keyframes"] <= budget
    assert 1 < len(tl._checkpoints) < len(free._checkpoints)
    rng = random.Random(5)
    for i in sorted(rng.sample(range(tl.nr_steps), 4)):
        got, want = asdict(tl.state_at(i)), asdict(_from_the_start(trace.events, s, i))
        for key in got:
            assert got[key] == want[key], f"{key} differs at step {i}"


@pytest.mark.parametrize(
    "pairs",
    [
        {0: (0, 0)},
        {1: (5, 2), 2: (2, 5), 3: (2**31, 0)},  # second page below the first, a wide gap
        {4: (2**32 - 1, 2**32 - 1)},  # the largest 4-byte lanes
        {1: (2**31, 0), 2: (2**31 + 5, 2**31 + 10)},  # a lane's sum carries, its result fits
        {9: (2**32, 2**32)},  # one past 4 bytes
        {5: (3 << 30, 5 << 30)},  # only the second pfn past 4 bytes
        {7: (2**32 + 3, 1), 2**33: (1, 2**40)},  # 8-byte lanes
    ],
)
def test_pairs_in_lanes_come_back_whatever_the_width(
    pairs: dict[int, tuple[int, int]],
) -> None:
    """zunpack_pairs adds the first pfns and the biased distances as two big integers: each
    lane must come back exactly, with no carry or borrow from its neighbour."""
    back = zunpack_pairs(zpack_pairs(pairs))
    assert back == pairs
    assert list(back) == sorted(pairs)


def test_a_scattered_hosts_pairs_come_back_exactly() -> None:
    rng = random.Random(5)
    pairs: dict[int, tuple[int, int]] = {}
    for r in rng.sample(range(65_536), 40_000):
        a = rng.randrange(1 << 28)
        pairs[r] = (a, max(0, a + rng.randint(-600, 600)))
    back = zunpack_pairs(zpack_pairs(pairs))
    assert back == pairs
    assert list(back) == sorted(pairs)


def test_a_negative_pfn_in_a_pair_is_refused_naming_its_region() -> None:
    with pytest.raises(ValueError, match="region 12 holds"):
        zpack_pairs({3: (1, 2), 12: (4, -1)})
