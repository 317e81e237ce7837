"""A dict of int keys in chunks shared copy-on-write between snapshots.

A TD's guest mappings (``leaves``) and guest_memfd bindings (``gmem``) are the machine's biggest
state: one entry per faulted page, a million after a million faults. The timeline keeps a full
checkpoint (a keyframe) of the machine every thousand batches or so and restores one on every
seek; with plain dicts each keyframe copied every entry (about 40 bytes and 30 ns each), which
dominated both the memory of a long timeline and the time of a seek.

Here the keys are grouped by ``key >> CHUNK_SHIFT`` (512 consecutive gfns: the pages of one
2 MiB guest region) into small dicts. :meth:`ChunkedDict.snapshot` copies only the table of
chunks; both dicts then share every chunk, and the first write to a shared chunk copies that
chunk alone. A fault run touches a few chunks per thousand batches, so a keyframe costs a few
chunks instead of the whole mapping, and a restore costs the table of chunks.

Like the machine's ``TrackedDict``, it remembers which keys changed since the last delta
checkpoint (:meth:`delta`, :meth:`apply`).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

CHUNK_SHIFT = 9
#: a delta: changed keys (ascending) and their values, -1 where deleted
ChunkedDelta = tuple["array[int]", "array[int]"]


class _Gone:
    """The value of a key deleted since the last delta checkpoint."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "GONE"


GONE: Any = _Gone()
_MISSING = object()


class ChunkedDict(MutableMapping[int, Any]):
    """``dict[int, Any]`` semantics; snapshots share chunks until one side writes to them.

    Iteration order is by chunk, not by insertion: every caller in the engine sorts."""

    __slots__ = ("_chunks", "_len", "_owned", "changed")

    def __init__(self, items: Iterable[tuple[int, Any]] | None = None) -> None:
        self._chunks: dict[int, dict[int, Any]] = {}
        self._owned: set[int] = set()  # chunks this dict may write in place (not shared)
        self._len = 0
        #: keys changed since the last delta checkpoint
        self.changed: set[int] = set()
        if items is not None:
            for k, v in items:
                self[k] = v
            self.changed = set()

    # -- reading -----------------------------------------------------------------------
    def __getitem__(self, key: int) -> Any:
        chunk = self._chunks.get(key >> CHUNK_SHIFT)
        if chunk is None:
            raise KeyError(key)
        return chunk[key]

    def get(self, key: int, default: Any = None) -> Any:
        chunk = self._chunks.get(key >> CHUNK_SHIFT)
        return default if chunk is None else chunk.get(key, default)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        chunk = self._chunks.get(key >> CHUNK_SHIFT)
        return chunk is not None and key in chunk

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for chunk in list(self._chunks.values()):
            yield from list(chunk)

    def chunk(self, key: int) -> dict[int, Any] | None:
        """The chunk holding ``key``'s neighbourhood, read-only (the fast path's lookups)."""
        return self._chunks.get(key >> CHUNK_SHIFT)

    # -- writing -----------------------------------------------------------------------
    def _writable(self, cid: int) -> dict[int, Any]:
        chunk = self._chunks.get(cid)
        if cid not in self._owned:
            chunk = {} if chunk is None else dict(chunk)
            self._chunks[cid] = chunk
            self._owned.add(cid)
        assert chunk is not None
        return chunk

    def __setitem__(self, key: int, value: Any) -> None:
        chunk = self._writable(key >> CHUNK_SHIFT)
        if key not in chunk:
            self._len += 1
        chunk[key] = value
        self.changed.add(key)

    def __delitem__(self, key: int) -> None:
        cid = key >> CHUNK_SHIFT
        chunk = self._chunks.get(cid)
        if chunk is None or key not in chunk:
            raise KeyError(key)
        chunk = self._writable(cid)
        del chunk[key]
        self._len -= 1
        self.changed.add(key)
        if not chunk:
            del self._chunks[cid]
            self._owned.discard(cid)

    def pop(self, key: int, default: Any = _MISSING) -> Any:
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def set_many(self, items: dict[int, Any]) -> None:
        """``self[k] = v`` for every item (the batch fast path: a run's mappings at once)."""
        chunks, owned = self._chunks, self._owned
        cid_last, chunk = -1, None
        added = 0
        for k, v in items.items():
            cid = k >> CHUNK_SHIFT
            if cid != cid_last or chunk is None:
                chunk = chunks.get(cid)
                if cid not in owned:
                    chunk = {} if chunk is None else dict(chunk)
                    chunks[cid] = chunk
                    owned.add(cid)
                cid_last = cid
            assert chunk is not None
            if k not in chunk:
                added += 1
            chunk[k] = v
        self._len += added
        self.changed.update(items)

    # -- checkpoints -------------------------------------------------------------------
    def snapshot(self) -> ChunkedDict:
        """A copy that shares every chunk (both copy a chunk before their next write to it)."""
        copy = ChunkedDict()
        copy._chunks = dict(self._chunks)
        copy._len = self._len
        self._owned = set()
        return copy

    def delta(self) -> ChunkedDelta:
        """The keys changed since the last call, ascending, and their values (-1: deleted),
        as two arrays of 8-byte ints: 16 bytes per change instead of a dict's ~100 (values
        must be non-negative ints, as pfns are)."""
        chunks = self._chunks
        keys = array("q", sorted(self.changed))
        values = array("q")
        for k in keys:
            chunk = chunks.get(k >> CHUNK_SHIFT)
            values.append(-1 if chunk is None else chunk.get(k, -1))
        self.changed = set()
        return keys, values

    def apply(self, delta: ChunkedDelta) -> None:
        """Apply a :meth:`delta` (moving a restored copy forward to the next checkpoint)."""
        keys, values = delta
        if -1 in values:
            for k, v in zip(keys, values, strict=True):
                if v < 0:
                    self.pop(k, None)
            self.set_many({k: v for k, v in zip(keys, values, strict=True) if v >= 0})
        else:
            self.set_many(dict(zip(keys, values, strict=True)))
        self.changed = set()

    def chunk_count(self) -> int:
        return len(self._chunks)

    def __repr__(self) -> str:
        return f"ChunkedDict({dict(self)!r})"
