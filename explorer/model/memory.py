"""Host memory: 4 KiB pages in 2 MiB regions, their owners, and the page allocator.

Memory is sparse: a region gets a 512-byte owner map (one byte per page, codes of
:data:`explorer.model.records.OWNERS`) the first time one of its pages is allocated; an untouched
region is entirely free. That keeps a 4 TiB host (2M regions) as cheap as a 256 MiB one until
pages are used, and makes ``bytearray.find`` do the "first free page in a region" search in C.

Allocator policies (what ``alloc_page()`` returns, deterministically):

- ``lowest``: the lowest free pfn (buddy-allocator-like locality: consecutive allocations fill a
  region before touching the next, the best case for DPAMT).
- ``spread``: round-robin over regions, the lowest free page of the next region that has one
  (every allocation lands in a different region: the worst case for DPAMT, each needs a pair).
- ``random``: a seeded random region, then a seeded random free page in it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Final

from explorer.model.constants import PAGES_PER_REGION, PAGES_PER_REGION_SHIFT
from explorer.model.packed import (
    ImageCache,
    PackedInts,
    PackedRefs,
    pack_ints,
    unpack_ints,
    unpack_refs,
)
from explorer.model.records import OWNERS

FREE: Final = 0
_NR_OWNERS: Final = len(OWNERS)
#: region_counts' memo: owner map -> counts (bounded: 8,192 maps of 512 bytes, 4 MiB at most)
_COUNTS: dict[bytes, tuple[int, ...]] = {}
_COUNTS_MAX: Final = 8192


@dataclass(slots=True)
class MemoryImage:
    """A frozen copy of :class:`HostMemory` for checkpoints (bytes are shared, never mutated)."""

    regions: PackedRefs  # region -> owner map (bytes, shared between images)
    nfree: PackedInts
    counts: tuple[int, ...]
    heap: tuple[int, ...]
    untouched: int
    spread_cursor: int
    rng_state: (
        Any  # random.Random.getstate() (Any: mypyc cannot compile an `object` dataclass field)
    )


def _randbelow(rng: random.Random, n: int) -> int:
    """``rng.randrange(n)`` for ``n > 0``: the same draws (CPython's rejection sampling on
    ``getrandbits(n.bit_length())``), without randrange's argument handling in Python."""
    k = n.bit_length()
    r = rng.getrandbits(k)
    while r >= n:
        r = rng.getrandbits(k)
    return r


class HostMemory:
    """Pages, owners and the allocator. Owner changes go through :meth:`set_owner` only."""

    def __init__(self, total_pages: int, policy: str, seed: int) -> None:
        self.total_pages = total_pages
        self.nr_regions = total_pages >> PAGES_PER_REGION_SHIFT
        self.policy = policy
        self._lowest = policy == "lowest"
        self.regions: dict[int, bytearray] = {}
        self.nfree: dict[int, int] = {}
        #: pages per owner code, over all memory
        self.counts: list[int] = [0] * _NR_OWNERS
        self.counts[FREE] = total_pages
        # "lowest": touched regions that may have free pages (lazy min-heap) + the lowest
        # untouched region.
        self._heap: list[int] = []
        self._in_heap: set[int] = set()
        self._untouched = 0
        self._spread_cursor = 0
        self._rng = random.Random(seed)
        #: regions changed since the last checkpoint (delta checkpoints copy only these)
        self.dirty: set[int] = set()
        #: the owner maps as of the last image, shared by every image since
        self._images = ImageCache()
        self._ckpt_rng: object = None  # the generator's state at the last delta checkpoint

    # -- reading -------------------------------------------------------------------------
    def owner(self, pfn: int) -> int:
        owners = self.regions.get(pfn >> PAGES_PER_REGION_SHIFT)
        return FREE if owners is None else owners[pfn & (PAGES_PER_REGION - 1)]

    def is_free(self, pfn: int) -> bool:
        return 0 <= pfn < self.total_pages and self.owner(pfn) == FREE

    def region_counts(self, region: int) -> tuple[int, ...]:
        """Pages of ``region`` per owner code. Memoized by the owner map's content: a snapshot
        counts every touched region (thousands after a long replay), most of them unchanged
        since the last snapshot; one lookup replaces ten scans."""
        owners = self.regions.get(region)
        if owners is None:
            return (PAGES_PER_REGION,) + (0,) * (_NR_OWNERS - 1)
        key = bytes(owners)
        counts = _COUNTS.get(key)
        if counts is None:
            counts = tuple(owners.count(code) for code in range(_NR_OWNERS))
            if len(_COUNTS) >= _COUNTS_MAX:
                _COUNTS.clear()
            _COUNTS[key] = counts
        return counts

    # -- writing -------------------------------------------------------------------------
    def set_owner(self, pfn: int, code: int) -> int:
        """Give ``pfn`` a new owner; returns the old one. Freeing is ``code == FREE``."""
        region = pfn >> PAGES_PER_REGION_SHIFT
        owners = self.regions.get(region)
        if owners is None:
            owners = self._touch(region)
        off = pfn & (PAGES_PER_REGION - 1)
        old = owners[off]
        if old == code:
            return old
        owners[off] = code
        self.dirty.add(region)
        counts = self.counts
        counts[old] = counts[old] - 1
        counts[code] = counts[code] + 1
        if old == FREE:
            nfree = self.nfree
            nfree[region] = nfree[region] - 1
        elif code == FREE:
            nfree = self.nfree
            nfree[region] = nfree[region] + 1
            if self._lowest and region not in self._in_heap:
                self._in_heap.add(region)
                heappush(self._heap, region)
        return old

    def _touch(self, region: int) -> bytearray:
        owners = bytearray(PAGES_PER_REGION)
        self.regions[region] = owners
        self.nfree[region] = PAGES_PER_REGION
        self.dirty.add(region)
        if self._lowest:  # only "lowest" searches by region order
            self._in_heap.add(region)
            heappush(self._heap, region)
        return owners

    def pick_free(self) -> int | None:
        """The pfn the policy would allocate next, or None when memory is full (no change)."""
        if self.counts[FREE] == 0:
            return None
        if self.policy == "lowest":
            return self._pick_lowest()
        if self.policy == "spread":
            return self._pick_spread()
        return self._pick_random()

    def _first_free_in(self, region: int, start: int = 0) -> int:
        owners = self.regions.get(region)
        if owners is None:
            off = start
        else:
            off = owners.find(FREE, start)
            if off < 0:
                off = owners.find(FREE)
        return (region << PAGES_PER_REGION_SHIFT) | off

    def _has_free(self, region: int) -> bool:
        return self.nfree.get(region, PAGES_PER_REGION) > 0

    def _pick_lowest(self) -> int:
        heap = self._heap
        nfree = self.nfree
        while heap and nfree[heap[0]] == 0:
            self._in_heap.discard(heappop(heap))
        regions = self.regions
        untouched = self._untouched
        while untouched in regions:
            untouched += 1
        self._untouched = untouched
        if heap and (heap[0] < untouched or untouched >= self.nr_regions):
            region = heap[0]  # a hole in (or the rest of) a touched region comes first
            return (region << PAGES_PER_REGION_SHIFT) | regions[region].find(FREE)
        return untouched << PAGES_PER_REGION_SHIFT  # a fresh region: its first page

    def _pick_spread(self) -> int:
        n = self.nr_regions
        region = self._spread_cursor % n
        while not self._has_free(region):  # terminates: counts[FREE] > 0
            region = (region + 1) % n
        self._spread_cursor = region + 1
        return self._first_free_in(region)

    def _pick_random(self) -> int:
        n = self.nr_regions
        region = _randbelow(self._rng, n)
        while not self._has_free(region):
            region = (region + 1) % n
        return self._first_free_in(region, _randbelow(self._rng, PAGES_PER_REGION))

    # -- checkpoints ---------------------------------------------------------------------
    def clear_dirty(self) -> None:
        """Start a new delta interval (the regions changed still go into the next image)."""
        self._images.dirty |= self.dirty
        self.dirty = set()

    def image(self) -> MemoryImage:
        return MemoryImage(
            regions=self._images.pack(self.regions, self.dirty),
            nfree=pack_ints(self.nfree),
            counts=tuple(self.counts),
            heap=tuple(self._heap),
            untouched=self._untouched,
            spread_cursor=self._spread_cursor,
            rng_state=self._rng.getstate(),
        )

    def restore(self, img: MemoryImage) -> None:
        cache = unpack_refs(img.regions)
        self.regions = {r: bytearray(b) for r, b in cache.items()}
        self.nfree = unpack_ints(img.nfree)
        self.counts = list(img.counts)
        self._heap = list(img.heap)
        self._in_heap = set(img.heap)
        self._untouched = img.untouched
        self._spread_cursor = img.spread_cursor
        self._rng.setstate(img.rng_state)
        self.dirty = set()
        self._images = ImageCache(cache)

    def scalars(self) -> tuple[Any, ...]:
        """What a delta checkpoint copies besides the dirty regions. The random generator's
        state (625 ints, 5 KB) only when it moved since the last call (only the ``random``
        policy draws from it): None otherwise."""
        state = self._rng.getstate()
        if state == self._ckpt_rng:
            rng = None
        else:
            rng = self._ckpt_rng = state
        return (tuple(self.counts), tuple(self._heap), self._untouched, self._spread_cursor, rng)

    def apply(
        self, regions: dict[int, bytes], nfree: dict[int, int], scalars: tuple[Any, ...]
    ) -> None:
        """Apply a delta checkpoint (see :meth:`explorer.model.machine.Machine.delta`)."""
        for r, b in regions.items():
            self.regions[r] = bytearray(b)
        self._images.dirty.update(regions)
        self.nfree.update(nfree)
        counts, heap, self._untouched, self._spread_cursor, rng = scalars
        self.counts = list(counts)
        self._heap = list(heap)
        self._in_heap = set(heap)
        if rng is not None:
            self._rng.setstate(rng)
        self.dirty = set()
