"""Diagrams for the About page: what a region and its PAMT pair are, and what PAMT costs."""

from __future__ import annotations

import plotly.graph_objects as go

from explorer.overhead import CoverRow, cover_letter_rows, format_bytes
from explorer.views.palette import BLUE, GREY, LIGHT, ORANGE, SKY


def region_diagram(used: int = 3) -> go.Figure:
    """A 2 MiB region as 512 pages (16 x 32), ``used`` of them given to a TD, and its PAMT pair."""
    z = [[0] * 32 for _ in range(16)]
    for i in range(used):
        z[i // 32][i % 32] = 1
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale=[[0, LIGHT], [0.5, LIGHT], [0.5, SKY], [1, SKY]],
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
    the same configuration (:func:`explorer.overhead.cover_letter_rows`). The third bar of each
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
