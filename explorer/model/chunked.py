"""A dict of non-negative int values, keyed by int, in chunks that checkpoints freeze compactly.

A TD's guest mappings (``leaves``) and guest_memfd bindings (``gmem``) are the machine's biggest
state: one entry per faulted page, a million after a million faults. The timeline keeps a full
checkpoint (a keyframe) every thousand batches or so and restores one on every seek; with plain
dicts each keyframe copied every entry (about 40 bytes and 30 ns each, plus the int objects),
which dominated both the memory of a long timeline and the time of a seek.

Here keys are grouped by ``key >> CHUNK_SHIFT`` (512 consecutive gfns: one 2 MiB guest region)
into small dicts. A checkpoint (:meth:`ChunkedDict.frozen_table`) holds each chunk *frozen*: two
arrays of ints (sorted keys, values), 4-byte ints when every one fits (:func:`ints`; a pfn of a
host up to 8 TiB, a gfn below 8 TiB of guest address space), else 8-byte ones: 8 or 16 bytes per
entry and no int objects; a chunk not
written since the previous checkpoint is not frozen again, the checkpoints share it. A restored
copy starts with frozen chunks and thaws one into a dict the first time it is read.

Changes since the last delta checkpoint are remembered with their values, so a delta
(:meth:`delta`) is two arrays as well.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Final

CHUNK_SHIFT: Final = 9
#: a frozen chunk, or a delta: keys (ascending) and their values (-1: deleted)
Frozen = tuple["array[int]", "array[int]"]
ChunkedDelta = Frozen
#: a checkpoint's table of frozen chunks: chunk ids, the chunks, the number of keys
FrozenTable = tuple["array[int]", tuple[Frozen, ...], int]


def ints(values: list[int] | tuple[int, ...]) -> array[int]:
    """``values`` as an array of 4-byte ints when they all fit, else of 8-byte ones. Frozen
    chunks and deltas hold gfns and pfns: on 128 TDs of 2 vCPUs, the 8-byte arrays were a
    third of the bytes the timeline held per event. Readers never depend on the item size
    (indexing, ``zip``, ``bisect`` and ``==`` work across typecodes)."""
    try:
        return array("i", values)
    except OverflowError:
        return array("q", values)


def _freeze(chunk: dict[int, int]) -> Frozen:
    keys = sorted(chunk)
    return ints(keys), _values_of(chunk, keys)


def merge_deltas(deltas: list[ChunkedDelta]) -> ChunkedDelta:
    """Consecutive deltas (:meth:`ChunkedDict.delta`) as one, the last value of each key
    winning (a dict update in C per delta, then one sort: each delta's keys are ascending, a
    few runs for the sort to merge). A seek merges a TD's guest-mapping changes once and
    applies the result to both tables that record them (``leaves`` and ``gmem`` change
    together on every fault: ``kvm_tdp_mmu_map`` installs the leaf of a page gmem holds)."""
    if len(deltas) == 1:
        return deltas[0]
    merged: dict[int, int] = {}
    for keys, values in deltas:
        merged.update(zip(keys, values, strict=True))
    keys_ = sorted(merged)
    return ints(keys_), _values_of(merged, keys_)


def _values_of(d: dict[int, int], keys: list[int]) -> array[int]:
    """``d``'s values for ``keys``, as an array: one ``itemgetter`` call looks them all up in C
    (a third faster than a lookup per key through ``map``; keyframes and deltas do this for
    every chunk and change they hold). An ``itemgetter`` of one key returns the value itself."""
    if len(keys) > 1:
        return ints(itemgetter(*keys)(d))
    return ints([d[k] for k in keys])


class ChunkedDict:
    """``dict[int, int]`` semantics for non-negative values (pfns), with compact checkpoints.

    A plain class, not a ``MutableMapping``: compiled by mypyc (explorer.model.native) it is a
    native class, and a guest fault reads and writes two of these. Chunks live thawed in
    ``_chunks``; a restored copy keeps the frozen ones in ``_cold`` until first read.
    Iteration order is by chunk, not by insertion: every caller in the engine sorts."""

    __slots__ = ("_chunks", "_cold", "_frozen", "_len", "_unfrozen", "changed")

    def __init__(self, items: Iterable[tuple[int, int]] | None = None) -> None:
        self._chunks: dict[int, dict[int, int]] = {}
        #: frozen chunks of a restored copy, not read yet
        self._cold: dict[int, Frozen] = {}
        self._len = 0
        #: the last frozen version of each chunk, and the chunks written since
        self._frozen: dict[int, Frozen] = {}
        self._unfrozen: set[int] = set()
        #: key -> value (-1: deleted) for the keys changed since the last delta checkpoint
        self.changed: dict[int, int] = {}
        if items is not None:
            for k, v in items:
                self[k] = v
            self.changed = {}

    # -- reading -----------------------------------------------------------------------
    def chunk(self, key: int) -> dict[int, int] | None:
        """The dict holding ``key``'s chunk (thawed if it was frozen), None if none: read-only
        for callers."""
        cid = key >> CHUNK_SHIFT
        c = self._chunks.get(cid)
        if c is not None or not self._cold:
            return c
        f = self._cold.pop(cid, None)
        if f is None:
            return None
        thawed = dict(zip(f[0], f[1], strict=True))
        self._chunks[cid] = thawed
        return thawed

    def __getitem__(self, key: int) -> int:
        c = self.chunk(key)
        if c is None:
            raise KeyError(key)
        return c[key]

    def get(self, key: int, default: int | None = None) -> int | None:
        c = self.chunk(key)
        return default if c is None else c.get(key, default)

    def __contains__(self, key: int) -> bool:
        c = self.chunk(key)
        return c is not None and key in c

    def __len__(self) -> int:
        return self._len

    def _thaw_all(self) -> None:
        for cid in list(self._cold):
            self.chunk(cid << CHUNK_SHIFT)

    def keys(self) -> list[int]:
        self._thaw_all()
        return [k for c in self._chunks.values() for k in c]

    def values(self) -> list[int]:
        self._thaw_all()
        return [v for c in self._chunks.values() for v in c.values()]

    def items(self) -> list[tuple[int, int]]:
        self._thaw_all()
        return [kv for c in self._chunks.values() for kv in c.items()]

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    # -- writing -----------------------------------------------------------------------
    def _writable(self, cid: int) -> dict[int, int]:
        c = self._chunks.get(cid)
        if c is None:
            c = self.chunk(cid << CHUNK_SHIFT)
            if c is None:
                c = self._chunks[cid] = {}
        self._unfrozen.add(cid)
        return c

    def __setitem__(self, key: int, value: int) -> None:
        c = self._writable(key >> CHUNK_SHIFT)
        n = len(c)
        c[key] = value
        self._len += len(c) - n
        self.changed[key] = value

    def __delitem__(self, key: int) -> None:
        cid = key >> CHUNK_SHIFT
        c = self.chunk(key)
        if c is None or key not in c:
            raise KeyError(key)
        del c[key]
        self._unfrozen.add(cid)
        self._len -= 1
        self.changed[key] = -1
        if not c:
            del self._chunks[cid]

    def pop(self, key: int, default: int | None = None) -> int | None:
        """Remove ``key`` and return its value (``default`` when absent)."""
        c = self.chunk(key)
        if c is None or key not in c:
            return default
        value = c[key]
        del self[key]
        return value

    def set_many(self, items: dict[int, int]) -> None:
        """``self[k] = v`` for every item (the batch fast path: a run's mappings at once):
        grouped by chunk first, then one ``dict.update`` per chunk."""
        self.set_grouped(self.group(items))

    @staticmethod
    def group(items: dict[int, int]) -> dict[int, dict[int, int]]:
        """``items`` split by chunk (for :meth:`set_grouped`, on several dicts)."""
        by_chunk: dict[int, dict[int, int]] = {}
        for k, v in items.items():
            sub = by_chunk.get(k >> CHUNK_SHIFT)
            if sub is None:
                sub = by_chunk[k >> CHUNK_SHIFT] = {}
            sub[k] = v
        return by_chunk

    def set_grouped(self, by_chunk: dict[int, dict[int, int]]) -> None:
        """:meth:`set_many` with the items already split by chunk (:meth:`group`, or the simple
        runs' grouping by TD and chunk); one grouping can serve several dicts."""
        changed = self.changed
        for cid, sub in by_chunk.items():
            c = self._writable(cid)
            before = len(c)
            c.update(sub)
            self._len += len(c) - before
            changed.update(sub)

    # -- checkpoints -------------------------------------------------------------------
    def frozen_table(self, like: ChunkedDict | None = None) -> FrozenTable:
        """The table of frozen chunks (for a checkpoint): the chunks written since the last
        call are frozen again, the others are the same objects as in the previous table.
        ``like``: a dict whose table was just taken (a TD's mappings, for its guest_memfd
        bindings): a chunk equal to its chunk there shares its frozen form instead of being
        frozen again (a fault maps a gfn to the page guest_memfd gave it, so the two are
        usually equal: half the freezing, and half the keyframes' chunks)."""
        frozen = self._frozen
        for cid in self._unfrozen:
            c = self._chunks.get(cid)
            if c is None:
                frozen.pop(cid, None)
            else:
                shared = None
                if like is not None:
                    oc = like._chunks.get(cid)
                    if oc is not None and oc == c:  # (its frozen form is current: its
                        shared = like._frozen.get(cid)  # table was just taken)
                frozen[cid] = shared if shared is not None else _freeze(c)
        self._unfrozen = set()
        return array("q", frozen.keys()), tuple(frozen.values()), self._len

    @classmethod
    def from_table(cls, table: FrozenTable) -> ChunkedDict:
        """A dict restored from a :meth:`frozen_table` (chunks thawed when first read)."""
        cids, chunks, n = table
        d = cls()
        d._cold = dict(zip(cids, chunks, strict=True))
        d._frozen = dict(d._cold)
        d._len = n
        return d

    def delta(self) -> ChunkedDelta:
        """The keys changed since the last call (ascending) and their values (-1: deleted), as
        two arrays of ints (:func:`ints`): 8 or 16 bytes per change."""
        changed = self.changed
        keys = sorted(changed)
        values = _values_of(changed, keys)
        self.changed = {}
        return ints(keys), values

    def apply(self, delta: ChunkedDelta) -> None:
        """Apply a :meth:`delta` (moving a restored copy forward to the next checkpoint). The
        keys are sorted: each chunk's slice is found by bisection and written with one
        ``dict.update``."""
        keys, values = delta
        if -1 in values:
            for k, v in zip(keys, values, strict=True):
                if v < 0:
                    self.pop(k, None)
            self.set_many({k: v for k, v in zip(keys, values, strict=True) if v >= 0})
        else:
            i, n = 0, len(keys)
            while i < n:
                cid = keys[i] >> CHUNK_SHIFT
                j = bisect_left(keys, (cid + 1) << CHUNK_SHIFT, i)
                c = self._writable(cid)
                before = len(c)
                c.update(zip(keys[i:j], values[i:j], strict=True))
                self._len += len(c) - before
                i = j
        self.changed = {}

    def apply_many(self, deltas: list[ChunkedDelta]) -> None:
        """Apply consecutive deltas (:meth:`delta`) as one: merged first (the last value of
        each key wins, a dict update in C per delta), so a key changed in several of them is
        written once. A seek applies up to a keyframe interval of deltas."""
        self.apply(merge_deltas(deltas))

    def chunk_count(self) -> int:
        return len(self._chunks) + len(self._cold)

    def __repr__(self) -> str:
        return f"ChunkedDict({dict(self.items())!r})"
