"""The sweep chart: what a knob costs, one line per group (e.g. per mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.views.palette import OKABE_ITO

PANELS = (
    ("idle_pages_peak", "pages held idle in DPAMT caches (peak)"),
    ("retries", "fault retries"),
    ("livelocks", "livelocks"),
    ("pairs_peak", "PAMT pairs installed (peak)"),
)
#: One dash and one marker per group, so lines that lie on each other stay told apart.
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star")


def count_axis(values: Sequence[float]) -> dict[str, Any]:
    """Axis properties for a count: integer ticks (never 0.5), from 0, with room for markers."""
    top = max([1, *(v for v in values if isinstance(v, int | float))])
    axis: dict[str, Any] = {"tickformat": ",d", "range": [-0.06 * top, top * 1.08]}
    if top <= 6:
        axis |= {"tick0": 0, "dtick": 1}
    return axis


def overlaps(lines: dict[str, list[Any]]) -> list[list[str]]:
    """Groups of line names with identical points (2 names or more each), in first-seen order."""
    same: dict[tuple[Any, ...], list[str]] = {}
    for name, ys in lines.items():
        same.setdefault(tuple(ys), []).append(name)
    return [names for names in same.values() if len(names) > 1]


def sweep_figure(rows: Sequence[dict[str, Any]], x: str, group: str | None = None) -> go.Figure:
    """Four small panels against ``x`` (a ``setting.*`` column), one line per ``group`` value.

    Each group has its own colour, dash and marker, and earlier groups are drawn wider with
    larger markers, so a line on top of another leaves it visible; a panel where lines coincide
    says so in a note ("same: v6 = mempool").
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[group] if group else "all", []).append(row)
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[t for _, t in PANELS],
        vertical_spacing=0.22,
        horizontal_spacing=0.08,
    )
    per_panel: list[dict[str, list[Any]]] = [{} for _ in PANELS]
    xs_all: list[float] = []
    n = len(groups)
    for gi, (name, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: r[x])
        colour = OKABE_ITO[gi % len(OKABE_ITO)]
        xs = [r[x] for r in members]
        xs_all += xs
        for pi, (metric, _title) in enumerate(PANELS):
            ys = [r[metric] for r in members]
            per_panel[pi][str(name)] = list(zip(xs, ys, strict=True))
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=str(name),
                    legendgroup=str(name),
                    showlegend=pi == 0,
                    line={
                        "color": colour,
                        "dash": DASHES[gi % len(DASHES)],
                        "width": 1.5 + 2.0 * (n - 1 - gi),
                    },
                    marker={
                        "color": colour,
                        "symbol": SYMBOLS[gi % len(SYMBOLS)],
                        "size": 6 + 4 * (n - 1 - gi),
                        "line": {"width": 1, "color": "white"},
                    },
                    hovertemplate=f"{name}<br>{x.removeprefix('setting.')} %{{x}}: %{{y:,}}"
                    "<extra></extra>",
                ),
                row=pi // 2 + 1,
                col=pi % 2 + 1,
            )
    label = x.removeprefix("setting.")
    for pi in range(len(PANELS)):
        prow, pcol = pi // 2 + 1, pi % 2 + 1
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs_all)
        x_axis = count_axis(xs_all) if numeric and xs_all else {}
        fig.update_xaxes(title_text=label, row=prow, col=pcol, **x_axis)
        ys_all = [y for pts in per_panel[pi].values() for _, y in pts]
        fig.update_yaxes(row=prow, col=pcol, **count_axis(ys_all or [0]))
        same = overlaps(per_panel[pi])
        if same:
            # the note goes under the panel's title (subplot titles are the first annotations)
            fig.layout.annotations[pi].text = (
                f"{PANELS[pi][1]}<br><sup>same line: "
                + "; ".join(" = ".join(names) for names in same)
                + "</sup>"
            )
    fig.update_layout(
        title=f"Sweep over {label}" + (f" by {group.removeprefix('setting.')}" if group else ""),
        legend_title_text=group.removeprefix("setting.") if group else "",
        height=720,
    )
    return fig
