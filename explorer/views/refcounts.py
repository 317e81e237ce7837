"""Refcounts of the regions in play, and DPAMT over time against static PAMT."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.frames import regions_in_play
from explorer.model.constants import PAGE_SIZE, PAGES_PER_REGION, PAMT_ENTRY_SIZE
from explorer.model.records import Snapshot
from explorer.views.palette import BLUE, GREY, ORANGE, VERMILLION, YELLOW

#: Bars drawn at most (regions with the highest refcounts first beyond that).
MAX_BARS = 64


def refcount_figure(snapshot: Snapshot, changed: list[int] | None = None) -> go.Figure:
    df = regions_in_play(snapshot)
    if len(df) > MAX_BARS:
        df = df.nlargest(MAX_BARS, "refcount").sort_values("region")
    changed_set = set(changed or ())
    colours = [
        VERMILLION if o else (YELLOW if not rc and p else BLUE)
        for rc, p, o in zip(df["refcount"], df["pair"], df["orphans"], strict=True)
    ]
    lines = [3 if r in changed_set else 0 for r in df["region"]]
    fig = go.Figure(
        go.Bar(
            x=[f"r{r}" for r in df["region"]],
            y=df["refcount"],
            marker={"color": colours, "line": {"width": lines, "color": "black"}},
            customdata=df[["pair", "orphans", "guest", "sept", "control"]].to_numpy(),
            hovertemplate=(
                "%{x}: refcount %{y}<br>pair %{customdata[0]}<br>orphans %{customdata[1]}"
                "<br>guest %{customdata[2]}, S-EPT %{customdata[3]}, control %{customdata[4]}"
                "<extra></extra>"
            ),
            name="refcount (blue: pair installed; red: leaked pair; yellow: pair at 0)",
        )
    )
    fig.update_layout(
        title=f"DPAMT refcount per region in play ({len(df)} regions)",
        xaxis={"title": "region", "type": "category"},
        yaxis={"title": "refcount (4 KiB pages gotten)"},
        showlegend=True,
        legend={"orientation": "h", "y": -0.3},
        margin={"l": 50, "r": 10, "t": 50, "b": 40},
        uirevision="refcounts",
    )
    return fig


def dpamt_over_time_figure(
    steps: list[int],
    pairs: list[int],
    leaked_pages: list[int],
    nr_regions: int,
    cursor: int | None = None,
) -> go.Figure:
    """Pairs installed and DPAMT pair bytes over the trace, against static 4 KiB PAMT."""
    static = nr_regions * PAGES_PER_REGION * PAMT_ENTRY_SIZE
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=pairs,
            name="PAMT pairs installed",
            mode="lines",
            line={"color": BLUE, "shape": "hv"},
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=[p * 2 * PAGE_SIZE / 2**20 for p in pairs],
            name="DPAMT pair memory (MiB)",
            mode="lines",
            line={"color": ORANGE, "shape": "hv"},
        ),
        secondary_y=True,
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=[static / 2**20] * len(steps),
            name="static 4 KiB PAMT (MiB)",
            mode="lines",
            line={"color": GREY, "dash": "dash"},
        ),
        secondary_y=True,
    )
    if any(leaked_pages):
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[p // 2 for p in leaked_pages],
                name="leaked pairs",
                mode="lines",
                line={"color": VERMILLION, "shape": "hv"},
            ),
            secondary_y=False,
        )
    if cursor is not None:
        fig.add_vline(x=cursor, line_color="black", line_dash="dot")
    fig.update_layout(
        title="DPAMT over the trace vs static PAMT for this host",
        xaxis={"title": "step"},
        legend={"orientation": "h", "y": -0.3},
        margin={"l": 50, "r": 10, "t": 50, "b": 40},
        uirevision="dpamt-time",
    )
    fig.update_yaxes(title_text="pairs", secondary_y=False)
    fig.update_yaxes(title_text="MiB", secondary_y=True)
    return fig
