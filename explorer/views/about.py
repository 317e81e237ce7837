"""Diagrams for the About page: what a region and its PAMT pair are, and what PAMT costs."""

from __future__ import annotations

import plotly.graph_objects as go

from explorer.overhead import COVER_LETTER_FIGURES
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
    """Static PAMT vs Dynamic PAMT, TDX on and no TD running (the v6 cover letter's figures)."""
    hosts = [h for h, _, _, _ in COVER_LETTER_FIGURES]
    fig = go.Figure(
        [
            go.Bar(
                x=hosts,
                y=[s for _, _, s, _ in COVER_LETTER_FIGURES],
                name="static PAMT",
                marker={"color": GREY},
                text=[f"{s} GB" for _, _, s, _ in COVER_LETTER_FIGURES],
            ),
            go.Bar(
                x=hosts,
                y=[d for _, _, _, d in COVER_LETTER_FIGURES],
                name="Dynamic PAMT",
                marker={"color": ORANGE},
                text=[f"{d} GB" for _, _, _, d in COVER_LETTER_FIGURES],
            ),
        ]
    )
    fig.update_layout(
        title="PAMT memory with TDX enabled and no TD running (v6 cover letter)",
        xaxis={"title": "host"},
        yaxis={"title": "GB of PAMT"},
        barmode="group",
        legend={"orientation": "h", "y": -0.2},
        height=360,
    )
    return fig
