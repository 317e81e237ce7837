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


def sweep_figure(rows: Sequence[dict[str, Any]], x: str, group: str | None = None) -> go.Figure:
    """Four small panels against ``x`` (a ``setting.*`` column), one line per ``group`` value."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[group] if group else "all", []).append(row)
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in PANELS])
    for gi, (name, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: r[x])
        colour = OKABE_ITO[gi % len(OKABE_ITO)]
        for pi, (metric, _title) in enumerate(PANELS):
            fig.add_trace(
                go.Scatter(
                    x=[r[x] for r in members],
                    y=[r[metric] for r in members],
                    mode="lines+markers",
                    name=str(name),
                    legendgroup=str(name),
                    showlegend=pi == 0,
                    line={"color": colour},
                ),
                row=pi // 2 + 1,
                col=pi % 2 + 1,
            )
    label = x.removeprefix("setting.")
    for i in range(1, 5):
        fig.update_xaxes(title_text=label, row=(i - 1) // 2 + 1, col=(i - 1) % 2 + 1)
    fig.update_layout(
        title=f"Sweep over {label}" + (f" by {group.removeprefix('setting.')}" if group else ""),
        legend_title_text=group.removeprefix("setting.") if group else "",
        height=600,
    )
    return fig
