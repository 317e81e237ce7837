"""Compare's memory overhead section: static PAMT against Dynamic PAMT for a host, and the v6
cover letter's published table beside ours."""

from __future__ import annotations

import streamlit as st

from explorer.designs.overhead import (
    GIB,
    LORE_V6,
    MAXPA_BITS,
    format_bytes,
    max_pfn_at,
    overhead,
    regions_touched,
)
from explorer.model.constants import PAGE_SIZE
from explorer.views.about import cover_letter_table, overhead_table, overhead_verdict

REFCOUNT_CHOICES = {
    "vmalloc 0..max_pfn (as v6)": "vmalloc",
    "sparse: RAM regions only (the dropped optimization)": "sparse",
}


def memory_panel() -> None:
    st.subheader("Memory overhead: static PAMT vs Dynamic PAMT")
    m1, m2, m3 = st.columns(3)
    host = int(m1.number_input("host memory (GiB)", 1, 65536, 256, key="oh_host"))
    frac = m2.slider("memory used by TDs at 4 KiB", 0.0, 1.0, 0.25, key="oh_frac")
    placement = m3.selectbox(
        "placement of TD pages",
        ["packed", "scattered"],
        key="oh_place",
        help="packed: pages fill regions one after another (fewest pairs); scattered: one page "
        "per region until all are touched (the worst case).",
    )
    m4, m5, m6 = st.columns(3)
    at = m4.radio(
        "max_pfn",
        ["at the host's RAM size", "at maxpa"],
        key="oh_maxpfn",
        help="The refcount array covers pfn 0 to max_pfn (v6 cover letter). max_pfn sits at the "
        "top of RAM, or, on a host whose highest RAM page is near the top of the physical "
        "address space, at maxpa.",
    )
    bits = int(
        m5.number_input(
            "physical address bits (maxpa)",
            39,
            52,
            MAXPA_BITS,
            key="oh_bits",
            disabled=at != "at maxpa",
            help="52 is the cover letter's worst case; v6 10/11 enables Dynamic PAMT only with "
            "at most 48 bits.",
        )
    )
    refcounts = REFCOUNT_CHOICES[
        m6.radio("refcount placement", list(REFCOUNT_CHOICES), key="oh_refcounts")
    ]
    host_bytes = host * GIB
    pages = host_bytes // PAGE_SIZE
    max_pfn = None
    if at == "at maxpa":
        max_pfn = max_pfn_at(bits)
        if max_pfn < pages:
            st.warning(
                f"{bits} bits address {format_bytes(max_pfn * PAGE_SIZE)}, less than the host's "
                f"{format_bytes(host_bytes)}: max_pfn taken at the RAM size."
            )
            max_pfn = None
        elif bits > 48:
            st.caption(
                f"At {bits} bits: v6 10/11 enables Dynamic PAMT only when x86_phys_bits <= 48; "
                "the cover letter's maxpa rows use 52 bits all the same."
            )
    o = overhead(host_bytes, regions_touched(host_bytes, frac, placement), max_pfn, refcounts)
    st.dataframe(
        overhead_table(o),
        hide_index=True,
        width="stretch",
        height=35 * 8 + 3,
        key="table_overhead",
    )
    verdict = overhead_verdict(o)
    (st.success if o.dpamt_total <= o.static_total else st.warning)(verdict)

    st.markdown("**The v6 cover letter's table** (TDX enabled, no TD, non-optimized refcounts)")
    st.dataframe(cover_letter_table(), hide_index=True, width="stretch", key="table_cover")
    st.caption(
        "Published figures beside ours. The cover letter's GB are GiB; its static column is "
        "0.4 % of RAM (the exact 16 B per 4 KiB plus the 2 MiB and 1 GiB levels is 0.39 %). "
        "Where max_pfn sits at maxpa, the refcount array (4 B per 2 MiB from pfn 0) is 8 GB "
        "and Dynamic PAMT costs more than static PAMT. "
        f"Source: v6 cover letter, {LORE_V6}"
    )
