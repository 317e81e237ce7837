"""Refcounts of the regions in play, and DPAMT over time against static PAMT."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.model.constants import PAGE_SIZE, PAGES_PER_REGION, PAMT_ENTRY_SIZE
from explorer.model.records import Snapshot
from explorer.replay.timeline import Timeline
from explorer.views.frames import regions_in_play
from explorer.views.palette import BLUE, GREY, NEUTRAL, ORANGE, VERMILLION, YELLOW

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
            marker={"color": colours, "line": {"width": lines, "color": NEUTRAL}},
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
    """Pairs installed over the trace (top), and their memory against static 4 KiB PAMT on one
    MiB axis (bottom): two y-axes of different units side by side would put 2 pairs level with
    1 MiB, so each panel has one unit and the memory panel shows the honest ratio."""
    static_mib = nr_regions * PAGES_PER_REGION * PAMT_ENTRY_SIZE / 2**20
    pair_mib = 2 * PAGE_SIZE / 2**20
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        row_heights=[0.5, 0.5],
        subplot_titles=("PAMT pairs installed", "PAMT memory (MiB, one axis)"),
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=pairs,
            name="PAMT pairs installed",
            mode="lines",
            line={"color": BLUE, "shape": "hv"},
            hovertemplate="step %{x}: %{y} pairs<extra></extra>",
        ),
        row=1,
        col=1,
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
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=[p * pair_mib for p in pairs],
            name="DPAMT pair memory (MiB)",
            mode="lines",
            line={"color": ORANGE, "shape": "hv"},
            hovertemplate="step %{x}: %{y:.3f} MiB<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[steps[0], steps[-1]] if steps else [],
            y=[static_mib, static_mib] if steps else [],
            name=f"static 4 KiB PAMT ({static_mib:,.2f} MiB)",
            mode="lines",
            line={"color": GREY, "dash": "dash"},
            hovertemplate=f"static PAMT: {static_mib:,.2f} MiB<extra></extra>",
        ),
        row=2,
        col=1,
    )
    if pairs:
        peak = max(pairs) * pair_mib
        share = peak / static_mib if static_mib else 0.0
        fig.add_annotation(
            text=f"peak DPAMT {peak * 1024:,.0f} KiB = {share:.1%} of static PAMT",
            xref="x2 domain",
            yref="y2 domain",
            x=0.99,
            y=0.5,
            xanchor="right",
            showarrow=False,
            font={"size": 12, "color": NEUTRAL},
        )
    if cursor is not None:
        fig.add_vline(x=cursor, line_color=NEUTRAL, line_dash="dot")
    fig.update_layout(
        title="DPAMT over the trace vs static PAMT for this host",
        legend={"orientation": "h", "y": -0.18},
        margin={"l": 60, "r": 10, "t": 60, "b": 40},
        height=480,
        uirevision="dpamt-time",
    )
    fig.update_xaxes(title_text="step", row=2, col=1)
    few = max(pairs, default=0) <= 8  # a count: whole ticks only
    fig.update_yaxes(
        title_text="pairs", rangemode="tozero", tickformat=",d", dtick=1 if few else None, row=1
    )
    fig.update_yaxes(title_text="MiB", rangemode="tozero", row=2, col=1)
    return fig


def timeline_over_time_figure(tl: Timeline, cursor: int, nr_regions: int) -> go.Figure:
    """:func:`dpamt_over_time_figure` of a timeline's series, the cursor at step ``cursor``
    (Explore, the Learn page and the tour handout draw this same chart)."""
    return dpamt_over_time_figure(
        list(tl.series_x()),
        list(tl.series["pairs"]),
        list(tl.series["leaked_pages"]),
        nr_regions,
        cursor=cursor,
    )
