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
- ``percpu``: each CPU (each thread of the model: a vCPU, a VM's work) allocates from its own
  blocks of :data:`PCP_BLOCK_PAGES` pages, the lowest free page first, and claims the lowest
  unclaimed block when its blocks are full (a vCPU's first block when it is created). That is
  the kernel's per-CPU page lists (``struct per_cpu_pages``: an order-0 ``alloc_page()`` takes
  from this CPU's list, ``rmqueue_pcplist()``, refilled ``pcp->batch`` pages at a time under
  the zone lock) with a refill of one block. One difference: the kernel puts a freed page on
  the freeing CPU's list (``free_unref_page()``), the model gives it back to the CPU whose
  block holds it, so that each page belongs to one CPU's pool and a CPU's picks depend on its
  own allocations and the frees into its blocks only. Why: under the other policies every
  allocation of one CPU changes what the next allocation of any other CPU gets, so searching
  every interleaving (``explore``) searches every order of the CPUs' cache top-ups as well,
  which the kernel's per-CPU lists do not order; with ``percpu`` two CPUs' allocations commute
  (only claims of new blocks, and a full host's fallback, are ordered).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Final

from explorer.model.constants import PAGES_PER_REGION, PAGES_PER_REGION_SHIFT
from explorer.model.packed import GROUP_SHIFT, LayeredMaps, SparseGroup, SparseImages, int32s
from explorer.model.prng import XorShift32
from explorer.model.records import OWNERS, RegionCounts

FREE: Final = 0
#: a free page in an owner map (``bytes.lstrip``'s argument: the length of a run of free pages)
_FREE_BYTE: Final = bytes([FREE])
#: ``percpu``: a CPU's list is stocked a block of 128 pages (a quarter of a region) at a time, so
#: the first fault of a fresh vCPU (about 90 pages of cache top-ups) fits the block its
#: creation stocked, and the blocks of the first CPUs share region 0 with the TD's control
#: pages, as consecutive allocations of the other policies do (the kernel's ``pcp->batch``
#: is 63 pages; a bigger block keeps refills, which CPUs race for, out of the first faults).
PCP_BLOCK_SHIFT: Final = 7
PCP_BLOCK_PAGES: Final = 1 << PCP_BLOCK_SHIFT
_NR_OWNERS: Final = len(OWNERS)


#: the pages changed over a delta interval (ascending) and their owners (one byte each)
PageDelta = tuple["array[int]", bytes]


@dataclass(slots=True)
class MemoryImage:
    """A frozen copy of :class:`HostMemory` for checkpoints (never mutated, shared)."""

    regions: dict[int, SparseGroup]  # owner maps, sparse, by groups of regions (shared)
    counts: tuple[int, ...]
    heap: tuple[int, ...]
    untouched: int
    spread_cursor: int
    rng_state: int  # the random allocator's XorShift32 state
    percpu: tuple[Any, ...] = ()  # ``percpu``: :meth:`HostMemory.percpu_state`


def owner_counts(owners: bytearray) -> list[int]:
    """Pages of a region per owner code."""
    return [owners.count(code) for code in range(_NR_OWNERS)]


class HostMemory:
    """Pages, owners and the allocator. Owner changes go through :meth:`set_owner` only.

    A memory restored from a checkpoint holds its keyframe's maps and the deltas' pages in a
    :class:`~explorer.model.packed.LayeredMaps` (``_layers``) and builds a region's map and
    counts (``regions``, ``rcounts``) when it first reads or writes that region."""

    def __init__(self, total_pages: int, policy: str, seed: int) -> None:
        self.total_pages = total_pages
        self.nr_regions = total_pages >> PAGES_PER_REGION_SHIFT
        self.policy = policy
        self._lowest = policy == "lowest"
        #: the owner map of each touched region built so far (see ``_layers``)
        self.regions: dict[int, bytearray] = {}
        #: pages of each region in ``regions`` per owner code (``[FREE]`` is its free pages)
        self.rcounts: dict[int, list[int]] = {}
        #: the maps of a restored memory not built yet (None: nothing restored)
        self._layers: LayeredMaps | None = None
        #: regions the layers were found not to hold (the "lowest" allocator asks about the
        #: lowest untouched region at every allocation)
        self._absent: set[int] = set()
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
        #: the owner maps as of the last image, shared by every image since
        self._images = SparseImages()
        #: pages a trace pins to later events (see :meth:`pin`), by region: never allocated
        self._pins: dict[int, frozenset[int]] = {}
        # "percpu": each region's CPU, each CPU's regions that may have free pages (lazy
        # min-heaps), the lowest region not examined for a claim, and whether the last pick
        # read more than its CPU's own blocks (a claim or a full host's fallback).
        self.per_cpu = policy == "percpu"
        self._block_cpu: dict[int, str] = {}
        self._cpu_heaps: dict[str, list[int]] = {}
        self._heaped: set[int] = set()  # the blocks in some CPU's heap (a block has one CPU)
        self._claim_cursor = 0
        self.picked_shared = False

    # -- reading -------------------------------------------------------------------------
    def _built(self, region: int) -> bytearray | None:
        """``region``'s map, built from the restored layers if needed; None: never touched."""
        owners = self.regions.get(region)
        if owners is None and self._layers is not None and region not in self._absent:
            owners = self._layers.map(region)
            if owners is not None:
                self.regions[region] = owners
                self.rcounts[region] = owner_counts(owners)
            else:
                self._absent.add(region)
        return owners

    def owner(self, pfn: int) -> int:
        owners = self.regions.get(pfn >> PAGES_PER_REGION_SHIFT)
        if owners is None:
            if self._layers is None:
                return FREE
            owners = self._built(pfn >> PAGES_PER_REGION_SHIFT)
            if owners is None:
                return FREE
        return owners[pfn & (PAGES_PER_REGION - 1)]

    def is_free(self, pfn: int) -> bool:
        return 0 <= pfn < self.total_pages and self.owner(pfn) == FREE

    def _rc(self, region: int) -> list[int] | None:
        rc = self.rcounts.get(region)
        if rc is None and self._layers is not None and self._built(region) is not None:
            rc = self.rcounts[region]
        return rc

    def region_counts(self, region: int) -> tuple[int, ...]:
        """Pages of ``region`` per owner code (kept up to date by every owner change: a snapshot
        reads thousands of regions)."""
        rc = self._rc(region)
        if rc is None:
            return (PAGES_PER_REGION,) + (0,) * (_NR_OWNERS - 1)
        return tuple(rc)

    def region_table(self) -> RegionCounts:
        """:meth:`region_counts` of every touched region, for a snapshot: the counts of the
        regions built so far, and the layers of the rest (read when the snapshot is)."""
        built = {r: tuple(rc) for r, rc in self.rcounts.items()}
        layers = self._layers
        if layers is None:
            return RegionCounts(built)
        return RegionCounts(built, layers.base, layers.pfns, layers.values)

    def maps(self) -> dict[int, bytearray]:
        """Every touched region's owner map (all built: for a canonical state)."""
        if self._layers is not None:
            for r in self._layers.regions():
                self._built(r)
        return self.regions

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
        if code == FREE:
            if self._lowest and region not in self._in_heap:
                self._in_heap.add(region)
                heappush(self._heap, region)
            elif self.per_cpu:
                block = pfn >> PCP_BLOCK_SHIFT
                cpu = self._block_cpu.get(block)
                if cpu is not None and block not in self._heaped:
                    self._heaped.add(block)
                    heappush(self._cpu_heaps[cpu], block)
        return old

    def _touch(self, region: int) -> bytearray:
        if self._layers is not None:
            built = self._built(region)
            if built is not None:
                return built
        owners = bytearray(PAGES_PER_REGION)
        self.regions[region] = owners
        rc = [0] * _NR_OWNERS
        rc[FREE] = PAGES_PER_REGION
        self.rcounts[region] = rc
        if self._lowest:  # only "lowest" searches by region order
            self._in_heap.add(region)
            heappush(self._heap, region)
        return owners

    def pin(self, pfns: Iterable[int]) -> None:
        """Reserve ``pfns``: pages the kernel's capture names for later events (a fault's leaf
        and S-EPT table pages, a TD's or vCPU's control pages). The allocator never hands one
        out, so a pinned page is free when its event takes it, whatever the model allocated
        before (the kernel's buddy allocator chose it; the model's policy must not). Pins hold
        for the whole run (images do not carry them): a page the kernel used twice, pinned once
        and reused by the allocator once, stays out of the model's allocator too."""
        by_region: dict[int, set[int]] = {}
        for pfn in pfns:
            if 0 <= pfn < self.total_pages:
                by_region.setdefault(pfn >> PAGES_PER_REGION_SHIFT, set()).add(pfn)
        pins = {r: set(p) for r, p in self._pins.items()}
        for r, p in by_region.items():
            pins.setdefault(r, set()).update(p)
        self._pins = {r: frozenset(p) for r, p in pins.items()}

    def pin_table(self) -> dict[int, frozenset[int]]:
        """The pins (:meth:`pin`) by region, to give another machine of the same replay at once
        (:meth:`use_pins`: a seek's machine, without building the sets again)."""
        return self._pins

    def use_pins(self, table: dict[int, frozenset[int]]) -> None:
        """Take the pins of :meth:`pin_table` (read-only: :meth:`pin` builds a new table)."""
        self._pins = table

    def is_pinned(self, pfn: int) -> bool:
        """Whether :meth:`pin` reserved ``pfn``."""
        pins = self._pins.get(pfn >> PAGES_PER_REGION_SHIFT)
        return pins is not None and pfn in pins

    def pick_free(self, cpu: str = "") -> int | None:
        """The pfn the policy would allocate next, or None when memory is full. Changes nothing
        but, under ``percpu``, which CPU's blocks a claimed region joins (``cpu``: the thread
        that allocates)."""
        if self.counts[FREE] == 0:
            self.picked_shared = True  # (nothing free anywhere: read every CPU's free set)
            return None
        if self.per_cpu:
            return self._pick_percpu(cpu)
        if self.policy == "lowest":
            pfn = self._pick_lowest()
        elif self.policy == "spread":
            pfn = self._pick_spread()
        else:
            pfn = self._pick_random()
        if self._pins and self.is_pinned(pfn):
            return self._skip_pins(pfn)
        return pfn

    def take_free(self, cpu: str, n: int, code: int) -> tuple[list[int], bool]:
        """Up to ``n`` pages taken for ``code`` exactly as ``n`` rounds of :meth:`pick_free`
        and :meth:`set_owner` would take them, in order, stopping at the first pick that finds
        none (a cache top-up's run of allocations: ``kvm_mmu_topup_memory_cache()``'s loop);
        and whether any pick read more than ``cpu``'s own blocks (``picked_shared`` is the last
        pick's, as after those rounds).

        Why: a fresh vCPU's first fault fills its KVM caches with about 80 pages, and the
        search re-executes those fills on every return to a state. Under ``percpu`` a pick
        from the CPU's own block takes that block's lowest free unpinned page and taking it
        changes no heap, so the picks after it are the block's next free unpinned pages: one
        scan of the block's owner map instead of a pick each. Where the block runs out (or
        under the other policies) each page is picked as :meth:`pick_free` picks it."""
        out: list[int] = []
        shared = False
        while len(out) < n:
            pfn = self.pick_free(cpu)
            shared = shared or self.picked_shared
            if pfn is None:
                break
            self.set_owner(pfn, code)
            out.append(pfn)
            if not self.per_cpu or self.picked_shared:
                continue
            # the same block is still the CPU's lowest (its heap did not change) and every
            # page of it below ``pfn`` is taken or pinned: its next picks are the free
            # unpinned pages after ``pfn``, up to the block's end
            region = pfn >> PAGES_PER_REGION_SHIFT
            base = region << PAGES_PER_REGION_SHIFT
            owners = self.regions[region]
            pins = self._pins.get(region, frozenset())
            off = (pfn & (PAGES_PER_REGION - 1)) + 1
            end = (((pfn >> PCP_BLOCK_SHIFT) + 1) << PCP_BLOCK_SHIFT) - base
            took = len(out)
            journal = self.journal
            while len(out) < n:
                off = owners.find(FREE, off, end)
                if off < 0:
                    break
                # the run of free pages from ``off`` (a fresh block is one run), taken at once
                # up to what is still wanted and the first pin in it: set_owner's work, the
                # counts added once below
                stop = min(end, off + n - len(out))
                run = stop - off - len(owners[off:stop].lstrip(_FREE_BYTE))
                if pins:
                    run = next((i - off for i in range(off, off + run) if base | i in pins), run)
                if run == 0:  # (a pinned page: skipped)
                    off += 1
                    continue
                owners[off : off + run] = code.to_bytes(1, "little") * run
                pfns = range(base | off, (base | off) + run)
                journal.extend(pfns)
                out.extend(pfns)
                off += run
            k = len(out) - took
            if k:
                counts, rc = self.counts, self.rcounts[region]
                counts[FREE] -= k
                counts[code] += k
                rc[FREE] -= k
                rc[code] += k
        return out, shared

    def _unpinned_free_in(self, region: int, start: int) -> int | None:
        """The first free page of ``region`` at or after offset ``start`` that no pin holds."""
        pins = self._pins.get(region, frozenset())
        base = region << PAGES_PER_REGION_SHIFT
        owners = self.regions.get(region)
        if owners is None and self._layers is not None:
            owners = self._built(region)
        off = start
        while off < PAGES_PER_REGION:
            if owners is not None:
                off = owners.find(FREE, off)
                if off < 0:
                    return None
            if base | off not in pins:
                return base | off
            off += 1
        return None

    def _skip_pins(self, pfn: int) -> int | None:
        """The policy's choice past the pinned page ``pfn``: the next free unpinned page in
        the policy's order (``lowest``: ascending pfns; ``spread`` and ``random``: the rest of
        ``pfn``'s region, its start, then the next regions round-robin). None: every free page
        is pinned."""
        region, off = pfn >> PAGES_PER_REGION_SHIFT, pfn & (PAGES_PER_REGION - 1)
        n = self.nr_regions
        for i in range(n):
            r = region + i if self._lowest else (region + i) % n
            if r >= n:
                return None
            rc = self._rc(r)
            if rc is not None and rc[FREE] == 0:
                continue
            got = self._unpinned_free_in(r, off if i == 0 else 0)
            if got is None and i == 0 and off and not self._lowest:
                got = self._unpinned_free_in(r, 0)
            if got is not None:
                if self.policy == "spread":
                    self._spread_cursor = r + 1
                return got
        return None

    def _first_free_in(self, region: int, start: int = 0) -> int:
        owners = self.regions.get(region)
        if owners is None and self._layers is not None:
            owners = self._built(region)
        if owners is None:
            off = start
        else:
            off = owners.find(FREE, start)
            if off < 0:
                off = owners.find(FREE)
        return (region << PAGES_PER_REGION_SHIFT) | off

    def _has_free(self, region: int) -> bool:
        rc = self.rcounts.get(region)
        if rc is None and self._layers is not None:
            rc = self._rc(region)
        return rc is None or rc[FREE] > 0

    def _pick_lowest(self) -> int:
        heap = self._heap
        while heap:
            rc = self._rc(heap[0])
            if rc is not None and rc[FREE] > 0:
                break
            self._in_heap.discard(heappop(heap))
        untouched = self._untouched
        while self._is_touched(untouched):
            untouched += 1
        self._untouched = untouched
        if heap and (heap[0] < untouched or untouched >= self.nr_regions):
            region = heap[0]  # a hole in (or the rest of) a touched region comes first
            return (region << PAGES_PER_REGION_SHIFT) | self.regions[region].find(FREE)
        return untouched << PAGES_PER_REGION_SHIFT  # a fresh region: its first page

    def block_cpu(self, pfn: int) -> str | None:
        """``percpu``: the CPU whose block holds ``pfn`` (None: no CPU claimed its block)."""
        return self._block_cpu.get(pfn >> PCP_BLOCK_SHIFT)

    def _free_in_block(self, block: int) -> int | None:
        """The lowest free unpinned page of ``block`` (:data:`PCP_BLOCK_PAGES` pages)."""
        region = block >> (PAGES_PER_REGION_SHIFT - PCP_BLOCK_SHIFT)
        got = self._unpinned_free_in(region, (block << PCP_BLOCK_SHIFT) & (PAGES_PER_REGION - 1))
        return got if got is not None and got >> PCP_BLOCK_SHIFT == block else None

    def _pick_percpu(self, cpu: str) -> int | None:
        """``cpu``'s lowest free unpinned page in its own blocks; else the lowest block no CPU
        claimed with a free unpinned page, claimed for ``cpu``; else (every block claimed: a
        full host) the lowest free unpinned page anywhere. ``picked_shared`` says whether the
        pick read more than ``cpu``'s own blocks."""
        heap = self._cpu_heaps.get(cpu)
        if heap is None:
            heap = self._cpu_heaps[cpu] = []
        while heap:
            got = self._free_in_block(heap[0])
            if got is not None:
                self.picked_shared = False
                return got
            self._heaped.discard(heappop(heap))  # (pushed again when a page of it is freed)
        self.picked_shared = True
        block = self._claim(cpu)
        if block is not None:
            return self._free_in_block(block)
        for region in range(self.nr_regions):  # a full host: any CPU's free page
            rc = self._rc(region)
            if rc is not None and rc[FREE] == 0:
                continue
            got = self._unpinned_free_in(region, 0)
            if got is not None:
                return got
        return None

    def _claim(self, cpu: str) -> int | None:
        """Give ``cpu`` the lowest block no CPU claimed that has a free unpinned page (every
        unpinned page of an unclaimed block is free: only its CPU allocates in a block)."""
        block = self._claim_cursor
        end = self.total_pages >> PCP_BLOCK_SHIFT
        while block < end:
            if block not in self._block_cpu and self._free_in_block(block) is not None:
                self._block_cpu[block] = cpu
                heappush(self._cpu_heaps.setdefault(cpu, []), block)
                self._heaped.add(block)
                self._claim_cursor = block + 1
                return block
            block += 1
        self._claim_cursor = block
        return None

    def stock_cpu(self, cpu: str) -> bool:
        """``percpu``: give ``cpu`` its first block now, if it has none (a vCPU's, when the vCPU
        is created: the kernel's per-CPU lists are stocked long before a TD runs, so the first
        faults of vCPUs racing each other do not race for blocks). Returns whether a block
        was claimed (a change of the shared claim table)."""
        if not self.per_cpu or self._cpu_heaps.get(cpu):
            return False
        return self._claim(cpu) is not None

    def percpu_state(self) -> tuple[Any, ...]:
        """``percpu``'s state for checkpoints and canonical states: each claimed block's CPU,
        each CPU's heap of blocks that may have free pages (as sets: the order of a lazy heap
        is not state), and the claim cursor. Empty under the other policies."""
        if not self.per_cpu:
            return ()
        return (
            tuple(sorted(self._block_cpu.items())),
            tuple(sorted((c, tuple(sorted(set(h)))) for c, h in self._cpu_heaps.items())),
            self._claim_cursor,
        )

    def percpu_key(self) -> tuple[Any, ...]:
        """What of ``percpu``'s state a canonical state needs: each claimed block's CPU and the
        claim cursor (with the page owners, they decide every later pick; the heaps are an
        index of the blocks with free pages, and an exhausted block still in one is not a
        different state)."""
        if not self.per_cpu:
            return ()
        return (tuple(sorted(self._block_cpu.items())), self._claim_cursor)

    def _set_percpu(self, state: tuple[Any, ...]) -> None:
        if not self.per_cpu:
            return
        if not state:
            self._block_cpu, self._cpu_heaps, self._claim_cursor = {}, {}, 0
            self._heaped = set()
            return
        blocks, heaps, self._claim_cursor = state
        self._block_cpu = dict(blocks)
        self._cpu_heaps = {c: list(h) for c, h in heaps}  # (sorted: a valid heap)
        self._heaped = {b for _, h in heaps for b in h}

    def _is_touched(self, region: int) -> bool:
        if region in self.regions:
            return True
        return self._layers is not None and self._built(region) is not None

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
        dirty = self._journal_regions()
        layers = self._layers
        if layers is not None:  # the groups to encode again need all their regions built
            self._images.dirty |= {g << GROUP_SHIFT for g in layers.patched_groups()}
            for g in {r >> GROUP_SHIFT for r in self._images.dirty | dirty}:
                for r in layers.regions_in_group(g):
                    self._built(r)
        return MemoryImage(
            regions=self._images.pack(self.regions, dirty),
            counts=tuple(self.counts),
            heap=tuple(self._heap),
            untouched=self._untouched,
            spread_cursor=self._spread_cursor,
            rng_state=self._rng.state,
            percpu=self.percpu_state(),
        )

    def restore(self, img: MemoryImage) -> None:
        """Take ``img``'s state. The maps stay in the image until first read or written."""
        self.regions = {}
        self.rcounts = {}
        self._layers = LayeredMaps(img.regions, PAGES_PER_REGION) if img.regions else None
        self._absent = set()
        self._images = SparseImages(dict(img.regions))
        self.counts = list(img.counts)
        self._heap = list(img.heap)
        self._in_heap = set(img.heap)
        self._untouched = img.untouched
        self._spread_cursor = img.spread_cursor
        self._rng.state = img.rng_state
        self._set_percpu(img.percpu)
        self.journal = []

    def scalars(self) -> tuple[Any, ...]:
        """What a delta checkpoint copies besides the changed pages."""
        return (
            tuple(self.counts),
            tuple(self._heap),
            self._untouched,
            self._spread_cursor,
            self._rng.state,
            self.percpu_state(),
        )

    def apply(self, pages: PageDelta, scalars: tuple[Any, ...]) -> None:
        """Apply a delta checkpoint (see :meth:`explorer.model.machine.Machine.delta`)."""
        self.apply_many([pages], scalars)

    def apply_many(self, pages: list[PageDelta], scalars: tuple[Any, ...]) -> None:
        """Apply consecutive delta checkpoints as one: their pages merged first (the last owner
        of each page wins), so a page changed in several of them is taken once; ``scalars``
        are the last one's. The pages of regions not built yet join the layers (read when the
        region is first touched); those of built regions are written to their maps."""
        merged: dict[int, int] = {}
        for pfns, owners in pages:
            merged.update(zip(pfns, owners, strict=True))
        regions, rcounts = self.regions, self.rcounts
        if regions:
            later: dict[int, int] = {}
            touched: set[int] = set()
            for pfn, code in merged.items():
                region = pfn >> PAGES_PER_REGION_SHIFT
                map_ = regions.get(region)
                if map_ is None:
                    later[pfn] = code
                    continue
                off = pfn & (PAGES_PER_REGION - 1)
                old = map_[off]
                map_[off] = code
                rc = rcounts[region]
                rc[old] = rc[old] - 1
                rc[code] = rc[code] + 1
                touched.add(region)
            self._images.dirty |= touched
            merged = later
        if merged:
            layers = self._layers
            if layers is None:
                layers = LayeredMaps(None, PAGES_PER_REGION)
            self._layers = layers.with_pages(merged)
            self._absent = set()
        counts, heap, self._untouched, self._spread_cursor, self._rng.state, pcp = scalars
        self._set_percpu(pcp)
        self.counts = list(counts)
        self._heap = list(heap)
        self._in_heap = set(heap)
        self.journal = []
