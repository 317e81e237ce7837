"""An animation of the region map and the DPAMT caches over a window of steps.

Plotly frames with a play button and a slider inside the chart: it plays in the browser with no
server round-trip. ``animation_html`` exports it as one standalone HTML file (plotly.js inlined,
so it works offline).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.frames import region_arrays
from explorer.model.records import Snapshot
from explorer.views.palette import BLACK, DPAMT_STATES, NEUTRAL, ORANGE, discrete_scale
from explorer.views.region_map import _grid, grid_width

#: Frames at most in one animation (the window around the cursor is cut to this).
MAX_FRAMES = 120


def _frame_data(s: Snapshot, changed: Sequence[int], w: int) -> list[go.BaseTraceType]:
    a = region_arrays(s)
    vcpus = [v for v in s.vcpus if v.alive]
    return [
        go.Heatmap(z=_grid(a.state, w)),
        go.Scatter(x=[r % w for r in changed], y=[r // w for r in changed]),
        go.Bar(x=[f"vCPU {v.vcpu}" for v in vcpus], y=[len(v.pamt_cache) for v in vcpus]),
    ]


def animation_figure(window: Sequence[tuple[Snapshot, Sequence[int], str]]) -> go.Figure:
    """``window``: (snapshot, changed regions, caption) per step, in order."""
    if not window:
        raise ValueError("an animation needs at least one step")
    window = list(window)[:MAX_FRAMES]
    first = window[0][0]
    w = grid_width(first.nr_regions)
    colours = [c for _, _, c in DPAMT_STATES]
    names = [n for n, _, _ in DPAMT_STATES]
    target = 2 * first.settings.dpamt_gets_per_fault
    # the heatmap's colour bar sits in the gap between the two panels: wide enough for its
    # labels, so they stay clear of the cache panel's ticks
    spacing = 0.22
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.7, 0.3],
        horizontal_spacing=spacing,
        subplot_titles=("regions (DPAMT state)", "tdx_pamt_cache pages per vCPU"),
    )
    heat, outline, bars = _frame_data(first, window[0][1], w)
    heat.update(
        zmin=-0.5,
        zmax=len(colours) - 0.5,
        colorscale=discrete_scale(colours),
        colorbar={
            "tickvals": list(range(len(colours))),
            "ticktext": names,
            "x": (1 - spacing) * 0.7 + 0.01,
            "xanchor": "left",
            "thickness": 16,
            "tickfont": {"size": 11},
        },
        name="regions",
    )
    outline.update(
        mode="markers",
        name="changed",
        marker={"symbol": "square-open", "size": 12, "color": BLACK, "line": {"width": 2}},
    )
    bars.update(marker={"color": ORANGE}, name="cache pages")
    fig.add_trace(heat, row=1, col=1)
    fig.add_trace(outline, row=1, col=1)
    fig.add_trace(bars, row=1, col=2)
    frames = []
    steps = []
    for s, changed, caption in window:
        name = str(s.step)
        frames.append(
            go.Frame(
                data=_frame_data(s, changed, w),
                traces=[0, 1, 2],
                name=name,
                layout={"title": {"text": f"step {s.step}: {caption}"}},
            )
        )
        steps.append(
            {
                "method": "animate",
                "label": name,
                "args": [
                    [name],
                    {
                        "mode": "immediate",
                        "frame": {"duration": 0, "redraw": True},
                        "transition": {"duration": 0},
                    },
                ],
            }
        )
    fig.frames = frames
    fig.update_layout(
        title=f"step {window[0][0].step}: {window[0][2]}",
        yaxis={"autorange": "reversed", "title": f"region div {w}"},
        xaxis={"title": f"region mod {w}"},
        # no y title: the panel's own title names its unit (pages), and a title here would sit
        # next to the colour bar's labels
        yaxis2={"range": [0, max(target, 1) + 2]},
        xaxis2={"title": "vCPU"},
        showlegend=False,
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0,
                "y": -0.12,
                "xanchor": "left",
                "buttons": [
                    {
                        "label": "Play",
                        "method": "animate",
                        "args": [
                            None,
                            {
                                "frame": {"duration": 400, "redraw": True},
                                "fromcurrent": True,
                                "transition": {"duration": 0},
                            },
                        ],
                    },
                    {
                        "label": "Pause",
                        "method": "animate",
                        "args": [
                            [None],
                            {"mode": "immediate", "frame": {"duration": 0, "redraw": False}},
                        ],
                    },
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.15,
                "len": 0.85,
                "y": -0.08,
                "currentvalue": {"prefix": "step "},
                "steps": steps,
            }
        ],
        margin={"l": 50, "r": 10, "t": 60, "b": 90},
    )
    fig.add_hline(y=target, line_dash="dash", line_color=NEUTRAL, row=1, col=2)
    return fig


def animation_html(fig: go.Figure) -> str:
    """A standalone HTML page of ``fig`` (plotly.js inlined: no network needed)."""
    html: str = fig.to_html(include_plotlyjs=True, full_html=True, auto_play=False)
    return html
