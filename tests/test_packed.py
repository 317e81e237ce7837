"""Keyframe page maps deflated by groups of regions (explorer.model.packed.ImageCache)."""

from __future__ import annotations

import random

from explorer.model.packed import (
    GROUP,
    ImageCache,
    SparseImages,
    encode_group,
    group_map,
    pack_pairs,
    unpack_maps,
    unpack_pairs,
)


def _maps(rng: random.Random, regions: list[int]) -> dict[int, bytearray]:
    out = {}
    for r in regions:
        m = bytearray(512)
        for _ in range(rng.randint(0, 40)):
            m[rng.randrange(512)] = rng.randint(1, 11)
        out[r] = m
    return out


def test_round_trip_with_counts_and_sharing() -> None:
    rng = random.Random(4)
    regions = rng.sample(range(5000), 700)
    maps = _maps(rng, regions)
    counts = {r: [rng.randint(0, 512) for _ in range(12)] for r in regions}
    cache = ImageCache(12)
    img1 = cache.pack(maps, set(regions), counts)
    back, back_counts, cache2 = unpack_maps(img1, 512, 12)
    assert back == maps and back_counts == counts
    assert list(back) == sorted(maps)  # region order, whatever the insertion order
    # change one region: only its group is deflated again, every other group is shared
    r0 = regions[0]
    maps[r0][7] ^= 1
    img2 = cache.pack(maps, {r0}, counts)
    groups1 = dict(zip(img1[0], img1[1], strict=True))
    groups2 = dict(zip(img2[0], img2[1], strict=True))
    assert groups1.keys() == groups2.keys()
    changed = [g for g in groups2 if groups2[g] is not groups1[g]]
    assert changed == [r0 // GROUP]
    assert unpack_maps(img2, 512, 12)[0] == maps
    # a cache made by a restore shares the restored groups with the next image
    img3 = cache2.pack(back, set(), back_counts)
    assert all(a is b for a, b in zip(img3[1], img1[1], strict=True))


def test_mostly_free_maps_deflate_well() -> None:
    rng = random.Random(1)
    maps = {r: bytearray(512) for r in range(4096)}
    for m in maps.values():
        m[rng.randrange(512)] = 3
    img = ImageCache().pack(maps, set(maps))
    deflated = sum(len(blob) for _, blob in img[1])
    assert deflated * 20 < 4096 * 512
    assert unpack_maps(img, 512)[0] == maps


def test_pairs_pack_as_arrays() -> None:
    pairs = {3: (10, 11), 70000: (2**29, 5)}
    assert unpack_pairs(pack_pairs(pairs)) == pairs


def _scattered_maps(seed: int, regions: int, touched: int) -> dict[int, bytearray]:
    """512-byte maps of ``touched`` random regions of ``regions``, inserted in random order
    (as a random allocator touches them), a few pages in use each, some groups dense."""
    rng = random.Random(seed)
    maps: dict[int, bytearray] = {}
    for r in rng.sample(range(regions), touched):
        m = bytearray(512)
        for _ in range(rng.choice((0, 1, 3, 100))):
            m[rng.randrange(512)] = rng.randrange(1, 7)
        maps[r] = m
    return maps


def test_sparse_pack_is_the_same_whichever_way_it_finds_a_groups_regions() -> None:
    """SparseImages.pack lists each group's regions from the maps' keys when most groups are
    dirty (a scattered host) and looks them up one by one otherwise: the groups it encodes
    must be identical both ways and decode to the maps (indices ascending whatever order the
    regions were touched in)."""
    maps = _scattered_maps(7, 64 * GROUP, 1500)
    by_lookup = {g: encode_group(maps, g) for g in range(64)}
    images = SparseImages()
    every = images.pack(maps, set(maps))  # every group dirty: the keys pass
    assert every == {g: v for g, v in by_lookup.items() if v is not None}
    for r, m in maps.items():
        assert group_map(every[r // GROUP], r, 512) == m
    few = SparseImages(dict(every))
    changed = min(maps)
    maps[changed][5] = 6
    again = few.pack(maps, {changed})  # one dirty group: the lookups
    assert again[changed // GROUP] == encode_group(maps, changed // GROUP)
    assert group_map(again[changed // GROUP], changed, 512) == maps[changed]
