"""The TDX module's own view of memory: the ground truth the kernel is checked against.

The module knows which 2 MiB regions have a Dynamic PAMT page pair (installed by
``TDH.PHYMEM.PAMT.ADD``, returned by ``TDH.PHYMEM.PAMT.REMOVE``) and which 4 KiB pages it uses
and for what. It knows nothing of the kernel's refcounts: keeping the two apart is what lets a
broken kernel mode show up as a violation instead of passing silently (dpamt-model.md section 9;
``tdh_phymem_pamt_add.c``, ``tdh_phymem_pamt_remove.c`` in ``intel/tdx-module``).

Every SEAMCALL returns a status name: ``TDX_SUCCESS`` or the module's error name.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from explorer.model.constants import PAGES_PER_REGION, PAGES_PER_REGION_SHIFT
from explorer.model.packed import (
    GROUP_SHIFT,
    Deflated,
    LayeredMaps,
    SparseGroup,
    SparseImages,
    int32s,
    zpack_ints,
    zpack_pairs,
    zunpack_ints,
    zunpack_pairs,
)

SUCCESS: Final = "TDX_SUCCESS"
HPA_RANGE_NOT_FREE: Final = "TDX_HPA_RANGE_NOT_FREE"
PAGE_NOT_FREE: Final = "TDX_PAGE_NOT_FREE"
NO_PAMT_PAGE_PAIR: Final = "TDX_NO_PAMT_PAGE_PAIR"
PAMT_PAGE_NOT_EMPTY: Final = "TDX_PAMT_PAGE_NOT_EMPTY"
MISSING_PAMT_PAGE_PAIR: Final = "TDX_MISSING_PAMT_PAGE_PAIR"
OPERAND_BUSY: Final = "TDX_OPERAND_BUSY"
#: The status an injected PAMT.ADD / PAMT.REMOVE failure returns (the kernel WARNs on any error).
INJECTED_ERROR: Final = "TDX_SW_ERROR"

#: What the module uses a 4 KiB page for (0: nothing). ``pamt`` pages back a region's PAMT.
PAGE_KINDS: Final = ("none", "pamt", "tdr", "tdcs", "tdvpr", "tdcx", "sept", "guest")
KIND_CODE: Final = {name: code for code, name in enumerate(PAGE_KINDS)}
_PAMT: Final = KIND_CODE["pamt"]
#: kinds of TD page, as :meth:`TdxModule.give_page` takes them
K_TDR: Final = KIND_CODE["tdr"]
K_TDCS: Final = KIND_CODE["tdcs"]
K_TDVPR: Final = KIND_CODE["tdvpr"]
K_TDCX: Final = KIND_CODE["tdcx"]
K_SEPT: Final = KIND_CODE["sept"]
K_GUEST: Final = KIND_CODE["guest"]

#: a delta: the pages whose kind changed (ascending) and their kinds now; the regions whose pair
#: changed and their pairs' two pages (-1: no pair); the count of pages in TD use now of each
#: region a changed page is in (16-bit: at most 512; in region order, the regions being those of
#: the pages: :func:`regions_of`), and the host's total. (The counts: a seek applies a delta to
#: regions it has not built; taking each region's count as the delta recorded it replaces
#: classifying every merged page's two kinds at every seek.)
ModuleDelta = tuple[
    "array[int]", bytes, "array[int]", "array[int]", "array[int]", "array[int]", int
]


def regions_of(pfns: Iterable[int]) -> list[int]:
    """The regions of ascending ``pfns``, each once, ascending (one pass, no set: the module's
    delta stores its regions' counts in this order without the regions themselves)."""
    out: list[int] = []
    last = -1
    for p in pfns:
        r = p >> PAGES_PER_REGION_SHIFT
        if r != last:
            out.append(r)
            last = r
    return out


@dataclass(slots=True)
class ModuleImage:
    pairs: Deflated  # region -> (pfn, pfn) (:func:`explorer.model.packed.zpack_pairs`)
    pages: dict[int, SparseGroup]  # page kinds, sparse, by groups of regions (shared)
    used: Deflated  # region -> TD pages in use (:func:`explorer.model.packed.zpack_ints`)


class TdxModule:
    """PAMT pairs per region and the module's page usage; SEAMCALL rules as methods."""

    def __init__(self) -> None:
        self.pairs: dict[int, tuple[int, int]] = {}
        self.pages: dict[int, bytearray] = {}  # region -> kind code per page
        #: region -> number of its 4 KiB pages in TD use (excluding PAMT pair pages, which need
        #: no backing of their own)
        self.used: dict[int, int] = {}
        self.used_total = 0  # the sum of ``used`` (read after every batch by the metrics)
        #: pages whose kind changed, and regions whose pair changed, since the last checkpoint
        self.journal: list[int] = []
        self.pairs_dirty: set[int] = set()
        #: the kinds of a restored module not built yet (None: nothing restored), and the
        #: regions they were found not to hold
        self._layers: LayeredMaps | None = None
        self._absent: set[int] = set()
        #: page kinds as of the last image, shared by every image since
        self._images = SparseImages()

    def _built(self, region: int) -> bytearray | None:
        """``region``'s kinds, built from the restored layers if needed (see
        :class:`~explorer.model.packed.LayeredMaps`); None: no page of it was ever used."""
        kinds = self.pages.get(region)
        if kinds is None and self._layers is not None and region not in self._absent:
            kinds = self._layers.map(region)
            if kinds is not None:
                self.pages[region] = kinds
            else:
                self._absent.add(region)
        return kinds

    def kind(self, pfn: int) -> int:
        kinds = self.pages.get(pfn >> PAGES_PER_REGION_SHIFT)
        if kinds is None:
            if self._layers is None:
                return 0
            kinds = self._built(pfn >> PAGES_PER_REGION_SHIFT)
            if kinds is None:
                return 0
        return kinds[pfn & (PAGES_PER_REGION - 1)]

    def kind_maps(self) -> dict[int, bytearray]:
        """Every used region's kinds (all built: for a canonical state)."""
        if self._layers is not None:
            for r in self._layers.regions():
                self._built(r)
        return self.pages

    def _set_kind(self, pfn: int, code: int) -> None:
        region = pfn >> PAGES_PER_REGION_SHIFT
        kinds = self.pages.get(region)
        if kinds is None:
            kinds = self._built(region) if self._layers is not None else None
            if kinds is None:
                kinds = self.pages[region] = bytearray(PAGES_PER_REGION)
        off = pfn & (PAGES_PER_REGION - 1)
        old = kinds[off]
        kinds[off] = code
        self.journal.append(pfn)
        delta = (code not in (0, _PAMT)) - (old not in (0, _PAMT))
        if delta:
            self.used_total += delta
            self.used[region] = self.used.get(region, 0) + delta
            if not self.used[region]:
                del self.used[region]

    # -- SEAMCALLs -----------------------------------------------------------------------
    def pamt_add(self, region: int, pair: tuple[int, int]) -> str:
        """TDH.PHYMEM.PAMT.ADD: install ``pair`` as the 4 KiB PAMT of ``region``."""
        if region in self.pairs:
            return HPA_RANGE_NOT_FREE
        if any(self.kind(p) for p in pair) or pair[0] == pair[1]:
            return PAGE_NOT_FREE
        self.pairs[region] = pair
        self.pairs_dirty.add(region)
        for p in pair:
            self._set_kind(p, _PAMT)
        return SUCCESS

    def pamt_remove(self, region: int) -> tuple[str, tuple[int, int] | None]:
        """TDH.PHYMEM.PAMT.REMOVE: take the pair back if no 4 KiB page of ``region`` is in use."""
        pair = self.pairs.get(region)
        if pair is None:
            return NO_PAMT_PAGE_PAIR, None
        if self.used.get(region, 0):
            return PAMT_PAGE_NOT_EMPTY, None
        del self.pairs[region]
        self.pairs_dirty.add(region)
        for p in pair:
            self._set_kind(p, 0)
        return SUCCESS, pair

    def give_page(self, pfn: int, kind: int) -> str:
        """MNG.CREATE/ADDCX, VP.CREATE/ADDCX, SEPT.ADD, PAGE.AUG/ADD: the module takes ``pfn``."""
        if self.kind(pfn):
            return PAGE_NOT_FREE
        if (pfn >> PAGES_PER_REGION_SHIFT) not in self.pairs:
            return MISSING_PAMT_PAGE_PAIR
        self._set_kind(pfn, kind)
        return SUCCESS

    def take_page(self, pfn: int) -> str:
        """PAGE.REMOVE / PHYMEM.PAGE.RECLAIM: the module gives ``pfn`` back."""
        if not self.kind(pfn) or self.kind(pfn) == _PAMT:
            return PAGE_NOT_FREE
        self._set_kind(pfn, 0)
        return SUCCESS

    # -- checkpoints ---------------------------------------------------------------------
    def _journal_regions(self) -> set[int]:
        return {p >> PAGES_PER_REGION_SHIFT for p in self.journal}

    def clear_dirty(self) -> None:
        """Start a new delta interval (the regions changed still go into the next image)."""
        self._images.dirty |= self._journal_regions()
        self.journal = []
        self.pairs_dirty = set()

    def image(self) -> ModuleImage:
        dirty = self._journal_regions()
        layers = self._layers
        if layers is not None:  # the groups to encode again need all their regions built
            self._images.dirty |= {g << GROUP_SHIFT for g in layers.patched_groups()}
            for g in {r >> GROUP_SHIFT for r in self._images.dirty | dirty}:
                for r in layers.regions_in_group(g):
                    self._built(r)
        return ModuleImage(
            zpack_pairs(self.pairs),
            self._images.pack(self.pages, dirty),
            zpack_ints(self.used),
        )

    def restore(self, img: ModuleImage) -> None:
        """Take ``img``'s state. The kinds stay in the image until first read or written."""
        self.pages = {}
        self._layers = LayeredMaps(img.pages, PAGES_PER_REGION) if img.pages else None
        self._absent = set()
        self._images = SparseImages(dict(img.pages))
        self.pairs = zunpack_pairs(img.pairs)
        self.used = zunpack_ints(img.used)
        self.used_total = sum(self.used.values())
        self.journal = []
        self.pairs_dirty = set()

    def delta(self) -> ModuleDelta:
        """The pages whose kind changed since the last checkpoint with their kinds now (about
        five bytes a page), the pairs of the regions whose pair changed (-1: removed), and the
        TD-use count of every region a changed page is in (two bytes a region)."""
        pfns = sorted(set(self.journal))
        pages = self.pages
        kinds = bytes(
            [pages[p >> PAGES_PER_REGION_SHIFT][p & (PAGES_PER_REGION - 1)] for p in pfns]
        )
        regions = sorted(self.pairs_dirty)
        pairs = [self.pairs.get(r) for r in regions]
        touched = regions_of(pfns)
        self._images.dirty.update(touched)
        used = self.used
        counts = array("H", [used.get(r, 0) for r in touched])
        self.journal = []
        self.pairs_dirty = set()
        return (
            int32s(pfns),  # (32-bit: a 4 TiB host has 2**30 pages)
            kinds,
            int32s(regions),
            int32s([-1 if p is None else p[0] for p in pairs]),
            int32s([-1 if p is None else p[1] for p in pairs]),
            counts,
            self.used_total,
        )

    def apply(self, d: ModuleDelta) -> None:
        """Apply a :meth:`delta`."""
        self.apply_many([d])

    def apply_many(self, deltas: list[ModuleDelta]) -> None:
        """Apply consecutive :meth:`delta` results as one: pages, pairs and regions' TD-use
        counts merged first (the last value of each winning), so each is taken once. The kinds
        of regions not built yet join the layers (read when the region is first touched); those
        of built regions are written to their maps. The use counts are the deltas' own (a
        region's count as its last delta recorded it): on a host whose allocations scatter a
        seek merges tens of thousands of pages, and classifying each page's kinds again was
        most of applying the deltas."""
        merged: dict[int, int] = {}
        pairs: dict[int, tuple[int, int]] = {}
        counts: dict[int, int] = {}
        for pfns, kinds, pair_regions, firsts, seconds, used_now, _total in deltas:
            merged.update(zip(pfns, kinds, strict=True))
            pairs.update(zip(pair_regions, zip(firsts, seconds, strict=True), strict=True))
            counts.update(zip(regions_of(pfns), used_now, strict=True))
        if deltas:
            used = self.used
            used.update(counts)  # (in C; then the regions that went to 0 leave)
            for r in [r for r, n in counts.items() if not n]:
                del used[r]
            self.used_total = deltas[-1][6]
        pages = self.pages
        if pages:
            later: dict[int, int] = {}
            dirty: set[int] = set()
            for pfn, code in merged.items():
                region = pfn >> PAGES_PER_REGION_SHIFT
                map_ = pages.get(region)
                if map_ is None:
                    later[pfn] = code
                else:
                    map_[pfn & (PAGES_PER_REGION - 1)] = code
                    dirty.add(region)
            self._images.dirty |= dirty
            merged = later
        if merged:
            layers = self._layers
            if layers is None:
                layers = LayeredMaps(None, PAGES_PER_REGION)
            self._layers = layers.with_pages(merged)
            self._absent = set()
        for r, (a, b) in pairs.items():
            if a < 0:
                self.pairs.pop(r, None)
            else:
                self.pairs[r] = (a, b)
        self.journal = []
        self.pairs_dirty = set()
