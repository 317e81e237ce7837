"""Diagrams for the About page: what a region and its PAMT pair are, and what PAMT costs."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from explorer.designs.overhead import LORE_V6, CoverRow, Overhead, cover_letter_rows, format_bytes
from explorer.views.palette import BLUE, GREY, ORANGE, SKY, free_colour


def region_diagram(used: int = 3, theme: str = "light") -> go.Figure:
    """A 2 MiB region as 512 pages (16 x 32), ``used`` of them given to a TD, and its PAMT pair.
    ``theme``: ``light`` or ``dark``; free pages follow it (a bright block on a dark page, else)."""
    free = free_colour(theme)
    z = [[0] * 32 for _ in range(16)]
    for i in range(used):
        z[i // 32][i % 32] = 1
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale=[[0, free], [0.5, free], [0.5, SKY], [1, SKY]],
            showscale=False,
            xgap=1,
            ygap=1,
            hovertemplate="4 KiB page<extra></extra>",
        )
    )
    fig.add_annotation(
        x=31,
        y=-2.2,
        text=f"refcount = {used} (pages of this region in TD use)",
        showarrow=False,
        xanchor="right",
    )
    for k, label in enumerate(("PAMT page 1", "PAMT page 2")):
        fig.add_shape(
            type="rect",
            x0=34,
            x1=39,
            y0=2 + 6 * k,
            y1=6 + 6 * k,
            fillcolor=BLUE,
            line={"color": BLUE},
        )
        fig.add_annotation(
            x=36.5, y=4 + 6 * k, text=label, showarrow=False, font={"color": "white"}
        )
    fig.update_layout(
        title="One 2 MiB region: 512 pages of 4 KiB; while any is in TD use, 2 pages of PAMT (8 KiB)",
        xaxis={"visible": False, "range": [-1, 40]},
        yaxis={"visible": False, "autorange": "reversed", "scaleanchor": "x"},
        height=320,
        margin={"l": 10, "r": 10, "t": 50, "b": 30},
    )
    return fig


def overhead_figure() -> go.Figure:
    """Static PAMT vs Dynamic PAMT, TDX on and no TD running: the v6 cover letter's four rows.

    Bars are the published figures (GB = GiB); the hover adds the figures our formulas give for
    the same configuration (:func:`explorer.designs.overhead.cover_letter_rows`). The third bar of each
    host is the "max_pfn at maxpa" row, where the refcount array alone is 8 GiB and Dynamic PAMT
    costs more than static PAMT on a 256 GB host.
    """
    rows = cover_letter_rows()
    at_ram = [r for r in rows if r.maxpa_bits is None]
    at_maxpa = [r for r in rows if r.maxpa_bits is not None]
    hosts = [
        f"{r.machine.split()[0].replace('GB', ' GB').replace('TB', ' TB')} host" for r in at_ram
    ]

    def hover(rs: list[CoverRow], static: bool) -> list[str]:
        out = []
        for r in rs:
            ours = r.computed.static_total if static else r.computed.dpamt_total
            published = r.published_static_gb if static else r.published_dpamt_gb
            out.append(
                f"{r.machine.split('(')[0].strip()}, max_pfn at {r.max_pfn_at}<br>"
                f"cover letter: {published:.2f} GB, savings/(loss) {r.published_ratio}<br>"
                f"our formula: {format_bytes(ours)} ({format_bytes(ours, 'MB', 1)})"
            )
        return out

    def bar(rs: list[CoverRow], static: bool, name: str, color: str) -> go.Bar:
        ys = [r.published_static_gb if static else r.published_dpamt_gb for r in rs]
        return go.Bar(
            x=hosts,
            y=ys,
            name=name,
            marker={"color": color},
            text=[f"{y:.2f} GB" for y in ys],
            hovertext=hover(rs, static),
            hoverinfo="text",
        )

    fig = go.Figure(
        [
            bar(at_ram, True, "static PAMT", GREY),
            bar(at_ram, False, "Dynamic PAMT, max_pfn at the RAM size", ORANGE),
            bar(at_maxpa, False, "Dynamic PAMT, max_pfn at maxpa (52 bits)", BLUE),
        ]
    )
    fig.update_layout(
        title="PAMT memory with TDX enabled and no TD running (v6 cover letter, non-optimized refcounts)",
        xaxis={"title": "host"},
        yaxis={"title": "GB (GiB) of PAMT"},
        barmode="group",
        legend={"orientation": "h", "y": -0.2},
        height=380,
    )
    return fig


def overhead_table(o: Overhead) -> pd.DataFrame:
    """Every part of :func:`explorer.designs.overhead.overhead`'s result, with units and separators.

    Columns: ``part``, ``size`` (:func:`format_bytes`), ``bytes`` (exact, thousands separators).
    The refcount row says which ``max_pfn`` and placement it covers; the totals come last.
    """
    covered = (
        f"4 B per 2 MiB, pfn 0 to max_pfn {o.max_pfn:,} (v6)"
        if o.refcounts == "vmalloc"
        else "4 B per 2 MiB of RAM only (sparse, dropped from v6)"
    )
    parts = [
        ("static: 16 B x 4 KiB pages", o.static_4k),
        ("static: 16 B x (2 MiB + 1 GiB entries), kept by DPAMT", o.static_2m + o.static_1g),
        ("DPAMT: bitmap, 1 bit per 4 KiB page", o.dpamt_bitmap),
        (f"DPAMT: refcounts, {covered}", o.dpamt_refcounts),
        (f"DPAMT: pairs, 8 KiB x {o.regions_with_pair:,} regions in use", o.dpamt_pairs),
        ("total static PAMT", o.static_total),
        ("total Dynamic PAMT", o.dpamt_total),
    ]
    return pd.DataFrame(
        [{"part": p, "size": format_bytes(n), "bytes": f"{n:,} B"} for p, n in parts]
    )


def overhead_verdict(o: Overhead) -> str:
    """One sentence: how much Dynamic PAMT saves, or that it costs more (and why)."""
    diff = o.static_total - o.dpamt_total
    if diff >= 0:
        return (
            f"Dynamic PAMT saves {format_bytes(diff)} ({o.saving:.1%} of static PAMT, "
            f"{o.ratio_label} in the cover letter's notation)."
        )
    why = (
        f" The refcount array alone is {format_bytes(o.dpamt_refcounts)}: it covers pfn 0 to "
        f"max_pfn whether RAM is there or not."
        if o.dpamt_refcounts > o.static_4k / 2
        else ""
    )
    return (
        f"Dynamic PAMT costs {format_bytes(-diff)} MORE than static PAMT here "
        f"({-o.saving:.1%} more, {o.ratio_label} in the cover letter's notation).{why}"
    )


def cover_letter_table() -> pd.DataFrame:
    """The v6 cover letter's four rows (TDX on, no TD): the published figures beside ours."""
    out = []
    for r in cover_letter_rows():
        out.append(
            {
                "machine": r.machine.split("(")[0].strip(),
                "max_pfn at": r.max_pfn_at,
                "PAMT (published, GB)": f"{r.published_static_gb:.2f}",
                "DPAMT (published, GB)": f"{r.published_dpamt_gb:.2f}",
                "savings/(loss) (published)": r.published_ratio,
                "static PAMT (ours, exact)": format_bytes(r.computed.static_total),
                "static PAMT (ours, 0.4 % rule)": f"{r.static_rule_gib:,.2f} GB",
                "DPAMT (ours)": format_bytes(r.computed.dpamt_total),
                "savings/(loss) (ours)": r.ratio_label,
                "DPAMT costs more": "yes" if r.dpamt_costs_more else "no",
            }
        )
    return pd.DataFrame(out)


def cover_letter_markdown() -> str:
    """The cover letter's rows as a Markdown table, and where Dynamic PAMT costs more."""
    rows = cover_letter_rows()
    lines = [
        "| machine | max_pfn at | static PAMT | Dynamic PAMT | savings/(loss) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.machine.split('(')[0].strip()} | {r.max_pfn_at} | "
            f"{r.published_static_gb:.2f} GB | {r.published_dpamt_gb:.2f} GB | "
            f"{r.published_ratio} |"
        )
    worse = [r for r in rows if r.dpamt_costs_more]
    refs = worse[0].computed.dpamt_refcounts if worse else 0
    lines += [
        "",
        "GB are GiB; the static column is the cover letter's 0.4 % of RAM (16 B per 4 KiB, "
        "plus the 2 MiB and 1 GiB levels, is 0.39 %: "
        + ", ".join(
            f"{format_bytes(r.computed.static_total)} for {r.host_gib:,} GiB"
            for r in rows
            if r.maxpa_bits is None
        )
        + ").",
    ]
    if worse:
        lines += [
            "",
            "**Where Dynamic PAMT costs more:** "
            + "; ".join(_costs_more(r) for r in worse)
            + f". v6 allocates the refcounts as one array from pfn 0 to `max_pfn` "
            f"({format_bytes(refs)} when `max_pfn` sits at the top of a 52-bit physical address "
            "space), whether or not RAM is there; the cover letter calls this the "
            "non-optimized refcount solution. v6 10/11 enables Dynamic PAMT only when the CPU "
            "has at most 48 physical address bits, which caps that array at 512 MB.",
        ]
    lines += ["", f"Source: the v6 cover letter, {LORE_V6}"]
    return "\n".join(lines)


def _costs_more(r: CoverRow) -> str:
    name = f"{r.machine.split('(')[0].strip()} with max_pfn at {r.max_pfn_at}"
    exact = (
        f"{format_bytes(r.computed.dpamt_total)} against {format_bytes(r.computed.static_total)}"
    )
    if r.published_dpamt_gb > r.published_static_gb:
        return (
            f"{name}: {r.published_dpamt_gb:.2f} GB against {r.published_static_gb:.2f} GB "
            f"as published, a loss of {r.published_ratio.strip('()')} ({exact} exact)"
        )
    return (
        f"{name}: about even as published ({r.published_dpamt_gb:.2f} GB against "
        f"{r.published_static_gb:.2f} GB, {r.published_ratio}), but more by the exact count "
        f"({exact})"
    )
