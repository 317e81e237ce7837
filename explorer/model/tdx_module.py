"""The TDX module's own view of memory: the ground truth the kernel is checked against.

The module knows which 2 MiB regions have a Dynamic PAMT page pair (installed by
``TDH.PHYMEM.PAMT.ADD``, returned by ``TDH.PHYMEM.PAMT.REMOVE``) and which 4 KiB pages it uses
and for what. It knows nothing of the kernel's refcounts: keeping the two apart is what lets a
broken kernel mode show up as a violation instead of passing silently (dpamt-model.md section 9;
``tdh_phymem_pamt_add.c``, ``tdh_phymem_pamt_remove.c`` in ``intel/tdx-module``).

Every SEAMCALL returns a status name: ``TDX_SUCCESS`` or the module's error name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from explorer.model.constants import PAGES_PER_REGION, PAGES_PER_REGION_SHIFT
from explorer.model.packed import (
    ImageCache,
    PackedInts,
    PackedRefs,
    pack_ints,
    pack_refs,
    unpack_ints,
    unpack_refs,
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


@dataclass(slots=True)
class ModuleImage:
    pairs: PackedRefs  # region -> (pfn, pfn)
    pages: PackedRefs  # region -> page kinds (bytes, shared between images)
    used: PackedInts


class TdxModule:
    """PAMT pairs per region and the module's page usage; SEAMCALL rules as methods."""

    def __init__(self) -> None:
        self.pairs: dict[int, tuple[int, int]] = {}
        self.pages: dict[int, bytearray] = {}  # region -> kind code per page
        #: region -> number of its 4 KiB pages in TD use (excluding PAMT pair pages, which need
        #: no backing of their own)
        self.used: dict[int, int] = {}
        #: regions whose pages, pair or use count changed since the last checkpoint
        self.dirty: set[int] = set()
        #: page kinds as of the last image, shared by every image since
        self._images = ImageCache()

    def kind(self, pfn: int) -> int:
        kinds = self.pages.get(pfn >> PAGES_PER_REGION_SHIFT)
        return 0 if kinds is None else kinds[pfn & (PAGES_PER_REGION - 1)]

    def _set_kind(self, pfn: int, code: int) -> None:
        region = pfn >> PAGES_PER_REGION_SHIFT
        kinds = self.pages.get(region)
        if kinds is None:
            kinds = self.pages[region] = bytearray(PAGES_PER_REGION)
        off = pfn & (PAGES_PER_REGION - 1)
        old = kinds[off]
        kinds[off] = code
        self.dirty.add(region)
        delta = (code not in (0, _PAMT)) - (old not in (0, _PAMT))
        if delta:
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
        self.dirty.add(region)
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
        self.dirty.add(region)
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
    def clear_dirty(self) -> None:
        """Start a new delta interval (the regions changed still go into the next image)."""
        self._images.dirty |= self.dirty
        self.dirty = set()

    def image(self) -> ModuleImage:
        return ModuleImage(
            pack_refs(self.pairs), self._images.pack(self.pages, self.dirty), pack_ints(self.used)
        )

    def restore(self, img: ModuleImage) -> None:
        cache = unpack_refs(img.pages)
        self.pairs = unpack_refs(img.pairs)
        self.pages = {r: bytearray(b) for r, b in cache.items()}
        self.used = unpack_ints(img.used)
        self.dirty = set()
        self._images = ImageCache(cache)

    def delta(self) -> tuple[dict[int, bytes], dict[int, int | None], dict[int, Any]]:
        """Pages, use counts and pairs of the regions changed since the last checkpoint."""
        d = self.dirty
        out = (
            {r: bytes(self.pages[r]) for r in d if r in self.pages},
            {r: self.used.get(r) for r in d},
            {r: self.pairs.get(r) for r in d},
        )
        self.clear_dirty()
        return out

    def apply(self, d: tuple[dict[int, bytes], dict[int, int | None], dict[int, Any]]) -> None:
        pages, used, pairs = d
        for r, b in pages.items():
            self.pages[r] = bytearray(b)
        self._images.dirty.update(pages)
        for r, n in used.items():
            if n is None:
                self.used.pop(r, None)
            else:
                self.used[r] = n
        for r, p in pairs.items():
            if p is None:
                self.pairs.pop(r, None)
            else:
                self.pairs[r] = p
        self.dirty = set()
