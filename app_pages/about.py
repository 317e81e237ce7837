"""About DPAMT: the mechanism and the fault path, for people who arrive cold."""

import streamlit as st

from app_pages.ui.state_panel import page_theme
from explorer.views.about import cover_letter_markdown, overhead_figure, region_diagram

st.title("About Dynamic PAMT")
st.markdown(
    """
**PAMT** (Physical Address Metadata Table) is where the Intel TDX module keeps 16 bytes of
metadata for every physical page it might hand to a trust domain (TD), at three levels: 1 GiB,
2 MiB and 4 KiB. Allocated statically, the 4 KiB level alone costs about **0.4 % of all RAM**
(16 B per 4 KiB), even on a host that never runs a TD.

**Dynamic PAMT** keeps the 1 GiB and 2 MiB levels static, replaces the 4 KiB level by a bitmap
(one bit per page: about 0.004 %), and supplies the real 4 KiB entries of a 2 MiB region only
while that region holds a page the TDX module uses: 512 entries x 16 B = 8 KiB = **2 pages per
region**, handed over with `TDH.PHYMEM.PAMT.ADD` and taken back with `TDH.PHYMEM.PAMT.REMOVE`.
"""
)
st.plotly_chart(region_diagram(3, theme=page_theme()), key="chart_about_region", width="stretch")
st.markdown(
    """
The kernel keeps a **refcount per 2 MiB region**: the number of its 4 KiB pages in TD use.
`tdx_pamt_get(pfn, cache)` increments it; the **0 -> 1** transition installs the pair
(PAMT.ADD), under the global spinlock `pamt_lock`. `tdx_pamt_put(pfn)` decrements it; **1 -> 0**
removes the pair (PAMT.REMOVE). Anything else takes a lock-free fast path.
"""
)
st.plotly_chart(overhead_figure(), key="chart_about_overhead", width="stretch")
st.markdown(
    """
The chart draws the v6 cover letter's four rows: TDX enabled, no TD running, the refcounts in one
array from pfn 0 to `max_pfn` (v6's "non-optimized refcount solution"). Dynamic PAMT saves about
100 times when `max_pfn` is at the RAM size, and **costs more** when `max_pfn` sits at the top of
the physical address space (maxpa). Compare designs has the calculator for other hosts.
"""
)
st.markdown(cover_letter_markdown())
st.markdown(
    """
### The fault path, and why the cache holds 10 pages

When a TD's vCPU touches a private page that is not mapped yet (an EPT violation), KVM maps it
while holding `kvm->mmu_lock`, a spinlock: no sleeping allocation is allowed there. It does not
know in advance how many S-EPT page tables the fault will add, so **before** taking the lock it
tops up its caches for the **worst case**: `PT64_ROOT_MAX_LEVEL` = 5 tables.

Each table page and the 4 KiB guest page may land in a region without a PAMT pair, so each needs
a DPAMT get, and a cold get needs 2 pages. The v6 series (patch 08/11, *"x86/tdx: Add APIs to
support Dynamic PAMT ops from KVM's fault path"*) adds a small per-vCPU list, `struct
tdx_pamt_cache`, topped up by `tdx_topup_pamt_cache(cache, 5)` = **10 pages**: the root table is
not covered (-1) but the 4 KiB leaf is (+1), so with 5-level EPT at most 4 tables + 1 leaf = 5
gets. Under the lock, `tdx_pamt_get()` pops pages from it and never sleeps.

Steps of one fault: top up the caches (sleepable) -> `read_lock(mmu_lock)` -> walk the table
from the root, and for each missing table: take a shadow page, freeze the entry,
`tdx_pamt_get()`, `TDH.MEM.SEPT.ADD` -> at the leaf: `tdx_pamt_get()`, `TDH.MEM.PAGE.AUG`
(or `PAGE.ADD` while the TD is being built) -> unlock. If the cache ran dry, the fault retries.

**The lost race.** Two vCPUs fault on the same cold region: both see refcount 0, both pop two
pages, one wins `pamt_lock` and installs the pair; the other rechecks under the lock, finds
refcount 1, increments it, and frees its two pages to the page allocator (not back to its cache).
Open the sample *"Two vCPUs race on one cold region"* on the Explore page to watch it.

### Sources
- The v6 series, cover letter: https://lore.kernel.org/kvm/20260526023515.288829-1-rick.p.edgecombe@intel.com/
- The seed patch: v6 08/11, *x86/tdx: Add APIs to support Dynamic PAMT ops from KVM's fault path*
  (Rick Edgecombe, with Sean Christopherson), May 2026.
- The design history (v4 cover): https://patchew.org/linux/20251121005125.417831-1-rick.p.edgecombe@intel.com
"""
)
