"""Memory overhead: static PAMT against Dynamic PAMT, for a host, its ``max_pfn`` and a workload.

Sources: the v6 Dynamic PAMT series
(https://lore.kernel.org/kvm/20260526023515.288829-1-rick.p.edgecombe@intel.com/): the cover
letter's memory table, 02/11 (the 4 KiB level is replaced by a bitmap, "currently it is 1 bit per
page"), 04/11 (the refcount array) and 10/11 (Dynamic PAMT only when ``x86_phys_bits <= 48``).

The formulas:

- Static PAMT: one 16-byte entry per page at each of three levels:
  ``16 B x (pages_4k + regions_2m + regions_1g)``. The 4 KiB level dominates: 16 B per 4 KiB is
  0.39 % of RAM (02/11: "approximately 0.4% of the system memory").
- Dynamic PAMT keeps the 1 GiB and 2 MiB levels static, replaces the 4 KiB level by a bitmap of
  one bit per 4 KiB page of RAM, adds the kernel's refcount array, and pays 2 pages (8 KiB:
  512 entries x 16 B) for every 2 MiB region that holds at least one 4 KiB page in TD use.
- The refcount array (04/11, ``init_pamt_refcounts()``) is one ``atomic_t`` (4 bytes) per 2 MiB
  of physical address space from 0 to ``max_pfn``: ``DIV_ROUND_UP(max_pfn, PTRS_PER_PTE) *
  sizeof(atomic_t)`` in a single ``__vmalloc``, whether or not RAM is there. 04/11: "This
  allocation will currently consume 2 MB for every 1 TB of address space from 0 to max_pfn ...
  In a worst case scenario where the entire 52-bit address space is covered this would be 8GB."
  So a host whose highest RAM page sits near the top of a 52-bit physical address space ("max_pfn
  at maxpa" in the cover letter) pays 8 GiB of refcounts, more than static PAMT costs a 256 GiB
  host. The cover letter calls this "the non-optimized refcount solution"; the optimization
  (refcounts only for ranges with RAM, ``refcounts="sparse"`` here) was dropped from v6.

Note: 10/11 enables Dynamic PAMT only when ``boot_cpu_data.x86_phys_bits <= 48``, which caps
``max_pfn`` at 2^36 pages and the refcount array at 512 MiB. The cover letter's maxpa rows (and
04/11's "8GB") use the 52-bit worst case; we reproduce them as published.

These are not the kernel's exact allocations: it sizes PAMT per TDMR (TDX memory region, with holes)
and page-aligns each level; here the host's RAM is one range from 0, the levels are not
page-aligned, and pairs (2 pages per region) are counted for regions in TD use.

For a workload given as a fraction of host memory used by TDs at 4 KiB, the number of touched
regions depends on placement: ``packed`` (pages fill regions one after another: the fewest
pairs) or ``scattered`` (every page in a different region until all regions are touched: the
worst case, what the ``spread`` allocator does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from explorer.model.constants import PAGE_SIZE, PAGES_PER_REGION, PAMT_ENTRY_SIZE

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
PAGE_SHIFT = 12
PAIR_BYTES = 2 * PAGE_SIZE
#: ``sizeof(atomic_t)``: one refcount per 2 MiB region.
REFCOUNT_BYTES = 4
#: The worst case of 04/11 and the cover letter: "the entire 52-bit address space".
MAXPA_BITS = 52
#: 10/11: Dynamic PAMT is enabled only if ``x86_phys_bits <= 48``.
DPAMT_MAX_PHYS_BITS = 48
#: Where the refcounts are: ``vmalloc`` = v6's single array from pfn 0 to ``max_pfn``;
#: ``sparse`` = only regions with RAM (the optimization the cover letter says was dropped).
REFCOUNT_PLACEMENTS = ("vmalloc", "sparse")
#: 02/11 and the 11/11 documentation: static PAMT "comes to about 0.4% of system memory".
STATIC_PAMT_RULE = 0.004

LORE_V6 = "https://lore.kernel.org/kvm/20260526023515.288829-1-rick.p.edgecombe@intel.com/"

#: The v6 cover letter's table, as published ("Consider a couple simple examples of TDX enabled,
#: but no TDs, and the non-optimized refcount solution"): machine, host GiB, physical address
#: bits at which max_pfn sits (None: max_pfn at the RAM size), PAMT (GB), DPAMT (GB),
#: Savings/(Loss).
COVER_LETTER_TABLE: tuple[tuple[str, int, int | None, float, float, str], ...] = (
    ("256GB (max_pfn at 256GB)", 256, None, 1.02, 0.01, "100x"),
    ("256GB (max_pfn at maxpa)", 256, MAXPA_BITS, 1.02, 8.01, "(8x)"),
    ("2TB   (max_pfn at 2TB)", 2048, None, 8.19, 0.08, "99x"),
    ("2TB   (max_pfn at maxpa)", 2048, MAXPA_BITS, 8.19, 8.08, "1x"),
)

#: Kept for callers written before the maxpa rows were added: the two "max_pfn at the RAM size"
#: rows as (host, host GiB, PAMT GB, DPAMT GB). New code should call :func:`cover_letter_rows`.
COVER_LETTER_FIGURES = (
    ("256 GB host", 256, 1.02, 0.01),
    ("2 TB host", 2048, 8.19, 0.08),
)


@dataclass(frozen=True, slots=True)
class Overhead:
    """Bytes of PAMT metadata for one host and workload, with the parts that make them up."""

    host_bytes: int
    static_4k: int
    static_2m: int
    static_1g: int
    dpamt_bitmap: int
    dpamt_refcounts: int
    dpamt_pairs: int
    regions_with_pair: int
    #: Highest pfn the refcount array covers (exclusive), as ``max_pfn`` in the kernel.
    max_pfn: int = 0
    #: One of :data:`REFCOUNT_PLACEMENTS`.
    refcounts: str = "vmalloc"

    @property
    def static_total(self) -> int:
        return self.static_4k + self.static_2m + self.static_1g

    @property
    def dpamt_total(self) -> int:
        return (
            self.static_2m
            + self.static_1g
            + self.dpamt_bitmap
            + self.dpamt_refcounts
            + self.dpamt_pairs
        )

    @property
    def saving(self) -> float:
        """Fraction of static PAMT that DPAMT saves (negative if it costs more)."""
        return 1.0 - self.dpamt_total / self.static_total

    @property
    def ratio(self) -> float:
        """Static over dynamic: above 1 DPAMT saves that many times, below 1 it loses."""
        return self.static_total / self.dpamt_total

    @property
    def ratio_label(self) -> str:
        """The cover letter's Savings/(Loss) notation: ``100x`` or ``(8x)``."""
        return ratio_label(self.ratio)


def ratio_label(ratio: float) -> str:
    """``100x`` for a saving of 100 times, ``(8x)`` for a loss of 8 times (the cover's notation)."""
    if ratio <= 0:
        raise ValueError("the ratio must be positive")
    if ratio >= 1:
        return f"{round(ratio):,}x"
    return f"({round(1 / ratio):,}x)"


def max_pfn_at(phys_bits: int) -> int:
    """``max_pfn`` of a host whose highest RAM page is at the top of ``phys_bits`` of address."""
    if not PAGE_SHIFT < phys_bits <= 64:
        raise ValueError("physical address bits must be in 13..64")
    return 1 << (phys_bits - PAGE_SHIFT)


def overhead(
    host_bytes: int,
    regions_with_pair: int,
    max_pfn: int | None = None,
    refcounts: str = "vmalloc",
) -> Overhead:
    """Overhead for a host of ``host_bytes`` with ``regions_with_pair`` PAMT pairs installed.

    ``max_pfn`` is the end of the range the refcount array covers (default: the host's RAM size,
    "max_pfn at the RAM size"; :func:`max_pfn_at` gives "max_pfn at maxpa"). ``refcounts`` is
    ``vmalloc`` (v6: 4 bytes per 2 MiB from pfn 0 to ``max_pfn``) or ``sparse`` (4 bytes per
    2 MiB region of RAM only).
    """
    if host_bytes <= 0:
        raise ValueError("host memory must be positive")
    pages = host_bytes // PAGE_SIZE
    regions = math.ceil(pages / PAGES_PER_REGION)
    if not 0 <= regions_with_pair <= regions:
        raise ValueError(f"regions with a pair must be in 0..{regions}")
    if max_pfn is None:
        max_pfn = pages
    if max_pfn < pages:
        raise ValueError(f"max_pfn must be at least the host's {pages:,} pages")
    if refcounts not in REFCOUNT_PLACEMENTS:
        raise ValueError(f"refcounts must be one of {', '.join(REFCOUNT_PLACEMENTS)}")
    covered = math.ceil(max_pfn / PAGES_PER_REGION) if refcounts == "vmalloc" else regions
    gigs = math.ceil(host_bytes / GIB)
    return Overhead(
        host_bytes=host_bytes,
        static_4k=pages * PAMT_ENTRY_SIZE,
        static_2m=regions * PAMT_ENTRY_SIZE,
        static_1g=gigs * PAMT_ENTRY_SIZE,
        dpamt_bitmap=math.ceil(pages / 8),
        dpamt_refcounts=covered * REFCOUNT_BYTES,
        dpamt_pairs=regions_with_pair * PAIR_BYTES,
        regions_with_pair=regions_with_pair,
        max_pfn=max_pfn,
        refcounts=refcounts,
    )


@dataclass(frozen=True, slots=True)
class CoverRow:
    """One row of the v6 cover letter's table: the published figures and ours.

    Units: the cover letter's "GB" are GiB (2^30 bytes). Checked against both units:

    - The DPAMT column is reproduced exactly by our formula in GiB (0.0103, 8.0098, 0.0821,
      8.0782 -> 0.01, 8.01, 0.08, 8.08). In 10^9 bytes it would read 0.01, 8.60, 0.09, 8.67.
    - The PAMT column is neither unit applied to the exact size: 16 B per 4 KiB plus the 2 MiB and
      1 GiB levels is 1.00 / 8.02 GiB (1.08 / 8.61 in 10^9 bytes). The published 1.02 / 8.19 are
      0.4 % of 256 / 2048 GiB (1.024 / 8.192), the "approximately 0.4%" of 02/11 and 11/11, while
      16 B / 4 KiB is 0.39 %. :attr:`static_rule_gib` reproduces the column; :attr:`static_gib`
      is the exact figure, 2.2 % below it.
    - Savings/(Loss) is static over dynamic, rounded to a whole number of times.
    """

    machine: str
    host_gib: int
    maxpa_bits: int | None
    published_static_gb: float
    published_dpamt_gb: float
    published_ratio: str
    computed: Overhead

    @property
    def max_pfn_at(self) -> str:
        return "RAM size" if self.maxpa_bits is None else f"maxpa ({self.maxpa_bits} bits)"

    @property
    def static_gib(self) -> float:
        """Static PAMT, all three levels, exact, in GiB."""
        return self.computed.static_total / GIB

    @property
    def static_rule_gib(self) -> float:
        """Static PAMT as the cover letter counts it: 0.4 % of the host, in GiB."""
        return self.host_gib * STATIC_PAMT_RULE

    @property
    def dpamt_gib(self) -> float:
        """Dynamic PAMT with no TD running (bitmap, refcounts, 2 MiB and 1 GiB levels), in GiB."""
        return self.computed.dpamt_total / GIB

    @property
    def ratio(self) -> float:
        """Static (as the cover counts it) over dynamic: the Savings/(Loss) column."""
        return self.static_rule_gib / self.dpamt_gib

    @property
    def ratio_label(self) -> str:
        return ratio_label(self.ratio)

    @property
    def dpamt_costs_more(self) -> bool:
        return self.computed.dpamt_total > self.computed.static_total


def cover_letter_rows() -> tuple[CoverRow, ...]:
    """The cover letter's 4 configurations (TDX on, no TD, v6's refcount vmalloc) computed here."""
    rows = []
    for machine, host_gib, bits, static_gb, dpamt_gb, label in COVER_LETTER_TABLE:
        max_pfn = None if bits is None else max_pfn_at(bits)
        rows.append(
            CoverRow(
                machine=machine,
                host_gib=host_gib,
                maxpa_bits=bits,
                published_static_gb=static_gb,
                published_dpamt_gb=dpamt_gb,
                published_ratio=label,
                computed=overhead(host_gib * GIB, 0, max_pfn=max_pfn),
            )
        )
    return tuple(rows)


_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def format_bytes(n: int | float, unit: str | None = None, decimals: int | None = None) -> str:
    """``n`` bytes with a unit and thousands separators: ``1.02 GB``, ``10,092 KB``.

    Units are binary (1 KB = 1024 B), named as the kernel's messages and the cover letter name
    them ("10092 KB allocated for PAMT"). ``unit`` forces one of B, KB, MB, GB, TB, PB (or the
    KiB/MiB/GiB/TiB/PiB spelling, which is kept in the output); by default the largest unit that
    keeps the value at or above 1. ``decimals`` defaults to 0 for B and KB, 2 otherwise.
    """
    if unit is None:
        power = 0
        while power < len(_UNITS) - 1 and abs(n) >= 1024 ** (power + 1):
            power += 1
        label = _UNITS[power]
    else:
        short = unit.replace("i", "") if unit.endswith("iB") else unit
        if short not in _UNITS:
            raise ValueError(f"unit must be one of {', '.join(_UNITS)}")
        power = _UNITS.index(short)
        label = unit
    if decimals is None:
        decimals = 0 if power <= 1 else 2
    return f"{n / 1024**power:,.{decimals}f} {label}"


def regions_touched(host_bytes: int, td_fraction: float, placement: str = "packed") -> int:
    """Regions holding at least one TD page when ``td_fraction`` of memory is TD 4 KiB pages."""
    if not 0.0 <= td_fraction <= 1.0:
        raise ValueError("the fraction of memory used by TDs must be in 0..1")
    pages = host_bytes // PAGE_SIZE
    regions = math.ceil(pages / PAGES_PER_REGION)
    td_pages = round(pages * td_fraction)
    if placement == "packed":
        return min(regions, math.ceil(td_pages / PAGES_PER_REGION))
    if placement == "scattered":
        return min(regions, td_pages)
    raise ValueError("placement must be 'packed' or 'scattered'")
