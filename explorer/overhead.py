"""Memory overhead: static PAMT against Dynamic PAMT, for a host size and a workload.

The formulas (dpamt-model.md section 1; the v6 cover letter):

- Static PAMT: one 16-byte entry per page at each of three levels:
  ``16 B x (pages_4k + regions_2m + regions_1g)``. The 4 KiB level dominates: about 0.4 % of RAM.
- Dynamic PAMT keeps the 1 GiB and 2 MiB levels static, replaces the 4 KiB level by a bitmap of
  one bit per 4 KiB page, adds the kernel's refcount array (4 bytes per 2 MiB region from 0 to
  max_pfn), and pays 2 pages (8 KiB: 512 entries x 16 B) for every 2 MiB region that holds at
  least one 4 KiB page in TD use.

For a workload given as a fraction of host memory used by TDs at 4 KiB, the number of touched
regions depends on placement: ``packed`` (pages fill regions one after another: the fewest
pairs) or ``scattered`` (every page in a different region until all regions are touched: the
worst case, what the ``spread`` allocator does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from explorer.model.constants import PAGE_SIZE, PAGES_PER_REGION, PAMT_ENTRY_SIZE

GIB = 1 << 30
PAIR_BYTES = 2 * PAGE_SIZE
REFCOUNT_BYTES = 4

#: The v6 cover letter's figures (TDX enabled, no TD running): host, static PAMT, DPAMT, in the
#: letter's "GB", which are thousands of MiB (1.02 = the 1024 MiB 4 KiB level of 256 GiB).
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


def overhead(host_bytes: int, regions_with_pair: int) -> Overhead:
    """Overhead for a host of ``host_bytes`` with ``regions_with_pair`` PAMT pairs installed."""
    if host_bytes <= 0:
        raise ValueError("host memory must be positive")
    pages = host_bytes // PAGE_SIZE
    regions = math.ceil(pages / PAGES_PER_REGION)
    if not 0 <= regions_with_pair <= regions:
        raise ValueError(f"regions with a pair must be in 0..{regions}")
    gigs = math.ceil(host_bytes / GIB)
    return Overhead(
        host_bytes=host_bytes,
        static_4k=pages * PAMT_ENTRY_SIZE,
        static_2m=regions * PAMT_ENTRY_SIZE,
        static_1g=gigs * PAMT_ENTRY_SIZE,
        dpamt_bitmap=math.ceil(pages / 8),
        dpamt_refcounts=regions * REFCOUNT_BYTES,
        dpamt_pairs=regions_with_pair * PAIR_BYTES,
        regions_with_pair=regions_with_pair,
    )


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
