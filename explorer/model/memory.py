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

from array import array
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Final

from explorer.model.constants import PAGES_PER_REGION, PAGES_PER_REGION_SHIFT
from explorer.model.packed import ImageCache, PackedRefs, int32s, unpack_maps
from explorer.model.prng import XorShift32
from explorer.model.records import OWNERS

FREE: Final = 0
_NR_OWNERS: Final = len(OWNERS)


#: the pages changed over a delta interval (ascending) and their owners (one byte each)
PageDelta = tuple["array[int]", bytes]


@dataclass(slots=True)
class MemoryImage:
    """A frozen copy of :class:`HostMemory` for checkpoints (bytes are shared, never mutated)."""

    regions: PackedRefs  # owner maps and owner counts, deflated by groups (shared)
    counts: tuple[int, ...]
    heap: tuple[int, ...]
    untouched: int
    spread_cursor: int
    rng_state: int  # the random allocator's XorShift32 state


class HostMemory:
    """Pages, owners and the allocator. Owner changes go through :meth:`set_owner` only."""

    def __init__(self, total_pages: int, policy: str, seed: int) -> None:
        self.total_pages = total_pages
        self.nr_regions = total_pages >> PAGES_PER_REGION_SHIFT
        self.policy = policy
        self._lowest = policy == "lowest"
        self.regions: dict[int, bytearray] = {}
        #: pages of each touched region per owner code (``[FREE]`` is its free pages)
        self.rcounts: dict[int, list[int]] = {}
        #: pages per owner code, over all memory
        self.counts: list[int] = [0] * _NR_OWNERS
        self.counts[FREE] = total_pages
        # "lowest": touched regions that may have free pages (lazy min-heap) + the lowest
        # untouched region.
        self._heap: list[int] = []
        self._in_heap: set[int] = set()
        self._untouched = 0
        self._spread_cursor = 0
        self._rng = XorShift32(seed, 1)
        #: pages whose owner changed since the last checkpoint (a delta holds their owners)
        self.journal: list[int] = []
        #: the owner maps and their counts as of the last image, shared by every image since
        self._images = ImageCache(_NR_OWNERS)

    # -- reading -------------------------------------------------------------------------
    def owner(self, pfn: int) -> int:
        owners = self.regions.get(pfn >> PAGES_PER_REGION_SHIFT)
        return FREE if owners is None else owners[pfn & (PAGES_PER_REGION - 1)]

    def is_free(self, pfn: int) -> bool:
        return 0 <= pfn < self.total_pages and self.owner(pfn) == FREE

    def region_counts(self, region: int) -> tuple[int, ...]:
        """Pages of ``region`` per owner code (kept up to date by every owner change: a snapshot
        reads thousands of regions)."""
        rc = self.rcounts.get(region)
        if rc is None:
            return (PAGES_PER_REGION,) + (0,) * (_NR_OWNERS - 1)
        return tuple(rc)

    def all_region_counts(self) -> dict[int, tuple[int, ...]]:
        """:meth:`region_counts` of every touched region, in region order (a snapshot)."""
        rcounts = self.rcounts
        out: dict[int, tuple[int, ...]] = {}
        for r in sorted(rcounts):
            out[r] = tuple(rcounts[r])
        return out

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
        self.journal.append(pfn)
        counts = self.counts
        counts[old] = counts[old] - 1
        counts[code] = counts[code] + 1
        rc = self.rcounts[region]
        rc[old] = rc[old] - 1
        rc[code] = rc[code] + 1
        if code == FREE and self._lowest and region not in self._in_heap:
            self._in_heap.add(region)
            heappush(self._heap, region)
        return old

    def _touch(self, region: int) -> bytearray:
        owners = bytearray(PAGES_PER_REGION)
        self.regions[region] = owners
        rc = [0] * _NR_OWNERS
        rc[FREE] = PAGES_PER_REGION
        self.rcounts[region] = rc
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
        rc = self.rcounts.get(region)
        return rc is None or rc[FREE] > 0

    def _pick_lowest(self) -> int:
        heap = self._heap
        rcounts = self.rcounts
        while heap and rcounts[heap[0]][FREE] == 0:
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
        region = self._rng.below(n)
        while not self._has_free(region):
            region = (region + 1) % n
        return self._first_free_in(region, self._rng.below(PAGES_PER_REGION))

    # -- checkpoints ---------------------------------------------------------------------
    def _journal_regions(self) -> set[int]:
        return {p >> PAGES_PER_REGION_SHIFT for p in self.journal}

    def clear_dirty(self) -> None:
        """Start a new delta interval (the regions changed still go into the next image)."""
        self._images.dirty |= self._journal_regions()
        self.journal = []

    def page_delta(self) -> PageDelta:
        """The pages whose owner changed since the last checkpoint and their owners now: two
        arrays, about five bytes a page (a delta of a host whose allocations scatter over
        thousands of regions holds its few changed pages, not those regions' whole maps)."""
        pfns = sorted(set(self.journal))
        regions = self.regions
        owners = bytes(
            [regions[p >> PAGES_PER_REGION_SHIFT][p & (PAGES_PER_REGION - 1)] for p in pfns]
        )
        self.clear_dirty()
        return int32s(pfns), owners  # (32-bit: a 4 TiB host has 2**30 pages)

    def image(self) -> MemoryImage:
        return MemoryImage(
            regions=self._images.pack(self.regions, self._journal_regions(), self.rcounts),
            counts=tuple(self.counts),
            heap=tuple(self._heap),
            untouched=self._untouched,
            spread_cursor=self._spread_cursor,
            rng_state=self._rng.state,
        )

    def restore(self, img: MemoryImage) -> None:
        self.regions, self.rcounts, self._images = unpack_maps(
            img.regions, PAGES_PER_REGION, _NR_OWNERS
        )
        self.counts = list(img.counts)
        self._heap = list(img.heap)
        self._in_heap = set(img.heap)
        self._untouched = img.untouched
        self._spread_cursor = img.spread_cursor
        self._rng.state = img.rng_state
        self.journal = []

    def scalars(self) -> tuple[Any, ...]:
        """What a delta checkpoint copies besides the changed pages."""
        return (
            tuple(self.counts),
            tuple(self._heap),
            self._untouched,
            self._spread_cursor,
            self._rng.state,
        )

    def apply(self, pages: PageDelta, scalars: tuple[Any, ...]) -> None:
        """Apply a delta checkpoint (see :meth:`explorer.model.machine.Machine.delta`): the
        changed pages' owners, then each touched region's free count, recounted."""
        self.apply_many([pages], scalars)

    def apply_many(self, pages: list[PageDelta], scalars: tuple[Any, ...]) -> None:
        """Apply consecutive delta checkpoints as one: their pages merged first (the last owner
        of each page wins), so a page changed in several of them is written once; ``scalars``
        are the last one's."""
        if len(pages) == 1:
            merged = dict(zip(pages[0][0], pages[0][1], strict=True))
        else:
            merged = {}
            for pfns, owners in pages:
                merged.update(zip(pfns, owners, strict=True))
        regions, rcounts = self.regions, self.rcounts
        touched: set[int] = set()
        for pfn, code in merged.items():
            region = pfn >> PAGES_PER_REGION_SHIFT
            map_ = regions.get(region)
            if map_ is None:
                map_ = self._touch(region)
            off = pfn & (PAGES_PER_REGION - 1)
            old = map_[off]
            map_[off] = code
            rc = rcounts[region]
            rc[old] = rc[old] - 1
            rc[code] = rc[code] + 1
            touched.add(region)
        self._images.dirty |= touched
        counts, heap, self._untouched, self._spread_cursor, self._rng.state = scalars
        self.counts = list(counts)
        self._heap = list(heap)
        self._in_heap = set(heap)
        self.journal = []
