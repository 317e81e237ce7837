"""A kernel capture's observations on the replay's timeline (issue 18): where the model agrees
with what the kernel did, and where it parts from it.

One row per kind of observation (a get's path, its cache count after, a PAMT.ADD's region...),
the replay's steps along x: a grey tick where the kernel and the model agree, an orange cross
where they diverge, and the cursor as a line. Pure: data in, figure out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from explorer.views.palette import NEUTRAL, ORANGE


def capture_markers_figure(
    matches: Sequence[Any], divergences: Sequence[Any], cursor: int, nr_steps: int
) -> go.Figure:
    """``matches`` and ``divergences``: objects with ``line``, ``kind`` and ``step`` (and, for a
    divergence, ``observed`` and ``predicted``): :mod:`explorer.conformance.importer`'s."""
    kinds = sorted({m.kind for m in matches} | {d.kind for d in divergences})
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[m.step for m in matches],
            y=[m.kind for m in matches],
            mode="markers",
            marker={"symbol": "line-ns-open", "size": 10, "color": NEUTRAL},
            name="kernel = model",
            text=[f"capture line {m.line}: {m.kind} = {m.value} (step {m.step})" for m in matches],
            hovertemplate="%{text}<extra></extra>",
        )
    )
    shown = [d for d in divergences if d.step >= 0]
    fig.add_trace(
        go.Scatter(
            x=[d.step for d in shown],
            y=[d.kind for d in shown],
            mode="markers",
            marker={"symbol": "x", "size": 11, "color": ORANGE},
            name="divergence",
            text=[
                f"capture line {d.line}: {d.kind}: kernel {d.observed}, model {d.predicted}"
                for d in shown
            ],
            hovertemplate="%{text}<extra></extra>",
        )
    )
    if cursor >= 0:
        fig.add_vline(x=cursor, line_width=1, line_dash="dot", line_color="#555555")
    fig.update_layout(
        title="Kernel capture: observations along the replay",
        height=120 + 22 * max(len(kinds), 1),
        margin={"l": 10, "r": 10, "t": 40, "b": 30},
        xaxis={"title": "step", "range": [-1, max(nr_steps, 1)]},
        yaxis={"categoryorder": "array", "categoryarray": kinds},
        legend={"orientation": "h", "y": -0.25},
        uirevision="capture-markers",
    )
    return fig


def divergence_steps(divergences: Sequence[Any]) -> list[int]:
    """The steps where the model parts from the kernel, ascending (the jump-to kind)."""
    return sorted({d.step for d in divergences if d.step >= 0})
