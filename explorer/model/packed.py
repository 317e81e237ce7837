"""Compact forms of the int-keyed tables a keyframe copies.

A keyframe copies the machine's per-region tables (free pages, owner maps, module pages and use
counts, pairs, refcounts, references held) and the tables of guest-mapping chunks: thousands of
entries each after a long replay, a hundred keyframes per million faults. As dicts each entry
costs about 70 bytes (the slot, the key's int object, often the value's); packed as arrays of
8-byte ints (and a tuple for values that are objects, shared with the live machine) it costs 8
to 16. Restoring unpacks with ``dict(zip(...))``, in C, in the original order.
"""

from __future__ import annotations

from array import array
from typing import Any

#: keys and int values
PackedInts = tuple["array[int]", "array[int]"]
#: keys and object values (bytes, tuples: immutable, shared)
PackedRefs = tuple["array[int]", tuple[Any, ...]]


def pack_ints(d: dict[int, int]) -> PackedInts:
    return array("q", d.keys()), array("q", d.values())


def unpack_ints(p: PackedInts) -> dict[int, int]:
    return dict(zip(p[0], p[1], strict=True))


def pack_refs(d: dict[int, Any]) -> PackedRefs:
    return array("q", d.keys()), tuple(d.values())


def unpack_refs(p: PackedRefs) -> dict[int, Any]:
    return dict(zip(p[0], p[1], strict=True))


class ImageCache:
    """Per-region bytes (owner maps, module page kinds) as of the last image, shared by every
    image since: a region unchanged between two images is one object, not two copies. ``dirty``:
    the regions changed since the last image (folded in from each delta interval)."""

    __slots__ = ("cache", "dirty")

    def __init__(self, cache: dict[int, bytes] | None = None) -> None:
        self.cache: dict[int, bytes] = {} if cache is None else cache
        self.dirty: set[int] = set()

    def pack(self, source: dict[int, bytearray], dirty: set[int]) -> PackedRefs:
        """The image of ``source``: its regions changed since the last image (``self.dirty``,
        and ``dirty`` of the current delta interval) copied, the others shared."""
        cache = self.cache
        for r in self.dirty | dirty:
            if r in source:
                cache[r] = bytes(source[r])
        self.dirty = set()
        return pack_refs(cache)
