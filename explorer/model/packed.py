"""Compact forms of the int-keyed tables a keyframe copies.

A keyframe copies the machine's per-region tables (free pages, owner maps, module pages and use
counts, pairs, refcounts, references held) and the tables of guest-mapping chunks: thousands of
entries each after a long replay, a hundred keyframes per million faults. As dicts each entry
costs about 70 bytes (the slot, the key's int object, often the value's); packed as arrays of
8-byte ints (and a tuple for values that are objects, shared with the live machine) it costs 8
to 16. Restoring unpacks with ``dict(zip(...))``, in C, in the original order.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Final

#: keys and int values
PackedInts = tuple["array[int]", "array[int]"]
#: keys and object values (bytes, tuples: immutable, shared)
PackedRefs = tuple["array[int]", tuple[Any, ...]]


def int32s(values: Sequence[int] | Iterable[int]) -> array[int]:
    """``array("i", values)``, built about three times faster: the array's own constructor
    converts each item through ``PyArg_Parse`` (hundreds of instructions per item, measured:
    a tenth of a bulk replay's per-batch bookkeeping), ``struct`` packs them natively."""
    items = values if isinstance(values, (list, tuple)) else list(values)
    out = array("i")
    out.frombytes(struct.pack(f"@{len(items)}i", *items))
    return out


def pack_ints(d: dict[int, int]) -> PackedInts:
    """A region-keyed table of counts (refcounts, references, use counts): 32-bit keys and
    values (a 4 TiB host has 2**21 regions), in key order. Sorted so that the dict a restore
    rebuilds is in region order: a snapshot of a host whose allocations scatter reads its
    tens of thousands of regions in that order, and visiting them in the order they were
    first touched (random) cost four times as much (cache misses)."""
    keys = sorted(d)
    return int32s(keys), int32s([d[k] for k in keys])


#: keys and pairs of ints
PackedPairs = tuple["array[int]", "array[int]", "array[int]"]


def pack_pairs(d: dict[int, tuple[int, int]]) -> PackedPairs:
    """Region -> (pfn, pfn) as three 32-bit arrays (12 bytes a pair, not a tuple's 64), in
    region order (as :func:`pack_ints`)."""
    keys = sorted(d)
    pairs = [d[k] for k in keys]
    return (
        int32s(keys),
        int32s([p[0] for p in pairs]),
        int32s([p[1] for p in pairs]),
    )


def unpack_pairs(p: PackedPairs) -> dict[int, tuple[int, int]]:
    return dict(zip(p[0], zip(p[1], p[2], strict=True), strict=True))


def unpack_ints(p: PackedInts) -> dict[int, int]:
    return dict(zip(p[0], p[1], strict=True))


def pack_refs(d: dict[int, Any]) -> PackedRefs:
    return array("q", d.keys()), tuple(d.values())


def unpack_refs(p: PackedRefs) -> dict[int, Any]:
    return dict(zip(p[0], p[1], strict=True))


#: Regions per compressed group of an image (64 regions: 128 MiB of host memory).
GROUP_SHIFT: Final = 6
GROUP: Final = 1 << GROUP_SHIFT
#: Raw deflate: no header, no Adler-32 (a fifth of a restore's time went to checksums that a
#: copy held in memory does not need).
_RAW: Final = -15
#: One group of an image: the indices (0..63) of its touched regions, and their maps (and
#: counts) joined and deflated.
Group = tuple[bytes, bytes]


class ImageCache:
    """Per-region maps (owner maps, module page kinds: 512 bytes each) as of the last image,
    deflated in groups of :data:`GROUP` regions and shared by every image since: a group
    unchanged between two images is one object, not two copies.

    Why deflate: a host whose allocations scatter (the ``random`` and ``spread`` allocators)
    touches every region with a few pages each, so an image held every region's 512-byte map,
    nearly all zeros: 15 MiB per map per image over 64 GiB, a thousand bytes per event of the
    trace. Deflated by groups (``zlib`` level 1, in C), the same maps take about 40 times less,
    for about 25 ms per image of 32,768 regions; a mostly full region deflates as well.

    ``dirty``: the regions changed since the last image (folded in from each delta interval).
    ``width``: 32-bit counts kept per region beside its map (a host's owner counts), or 0."""

    __slots__ = ("cache", "dirty", "width")

    def __init__(self, width: int = 0, cache: dict[int, Group] | None = None) -> None:
        self.cache: dict[int, Group] = {} if cache is None else cache
        self.dirty: set[int] = set()
        self.width = width

    def pack(
        self,
        source: dict[int, bytearray],
        dirty: set[int],
        counts: dict[int, list[int]] | None = None,
    ) -> PackedRefs:
        """The image of ``source`` (and of ``counts``, one list of ``width`` ints per region):
        the groups with a region changed since the last image (``self.dirty``, and ``dirty`` of
        the current delta interval) deflated again, the others shared."""
        cache = self.cache
        width = self.width
        for g in {r >> GROUP_SHIFT for r in self.dirty | dirty}:
            base = g << GROUP_SHIFT
            present = bytearray()
            parts: list[bytes | bytearray] = []
            rows: list[int] = []
            for i in range(GROUP):
                m = source.get(base + i)
                if m is not None:
                    present.append(i)
                    parts.append(m)
                    if counts is not None and width:
                        rows += counts[base + i]
            if parts:
                if width:  # packed by struct: array.extend converts each int via PyArg_Parse
                    parts.append(struct.pack(f"@{len(rows)}i", *rows))
                cache[g] = (bytes(present), zlib.compress(b"".join(parts), 1, _RAW))
            else:
                cache.pop(g, None)
        self.dirty = set()
        return pack_refs(cache)


def unpack_maps(
    image: PackedRefs, size: int, width: int = 0
) -> tuple[dict[int, bytearray], dict[int, list[int]], ImageCache]:
    """The maps of an image (``size`` bytes each, fresh bytearrays in region order), the counts
    kept beside them (``width`` ints per region), and an :class:`ImageCache` that shares the
    image's groups (the next image re-deflates only the groups changed after this one)."""
    groups: dict[int, Group] = unpack_refs(image)
    maps: dict[int, bytearray] = {}
    counts: dict[int, list[int]] = {}
    row = 4 * width  # bytes of one region's counts
    for g in sorted(groups):
        present, blob = groups[g]
        data = memoryview(zlib.decompress(blob, _RAW))
        base = g << GROUP_SHIFT
        at = 0
        for i in present:
            maps[base + i] = bytearray(data[at : at + size])
            at += size
        if width:
            rows = array("i")
            rows.frombytes(data[at : at + row * len(present)])
            values = rows.tolist()
            k = 0
            for i in present:
                counts[base + i] = values[k : k + width]
                k += width
    return maps, counts, ImageCache(width, groups)
