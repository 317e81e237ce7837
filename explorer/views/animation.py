"""An animation of the region map and the DPAMT caches over a window of steps, with each step's
narration and the pseudocode of the CPU that ran it (the current line marked) below them.

Plotly frames with a play button and a slider inside the chart: it plays in the browser with no
server round-trip. ``animation_html`` exports it as one standalone HTML file (plotly.js inlined,
so it works offline).
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.model.records import Snapshot
from explorer.views.code import CpuCode, code_panel
from explorer.views.frames import region_arrays
from explorer.views.palette import BLACK, DPAMT_STATES, LIGHT, NEUTRAL, ORANGE, discrete_scale
from explorer.views.region_map import _grid, grid_width

#: Frames at most in one animation (the window around the cursor is cut to this).
MAX_FRAMES = 120
#: Lines of pseudocode either side of the current one in a frame's code (about 12 in all).
CODE_CONTEXT = 5
#: Characters per line: the narration is wrapped to this, a code line cut to that.
NARRATION_WIDTH = 56
CODE_WIDTH = 88
#: The figure's height in pixels: the map and the caches above, the narration and code below;
#: fits a 1440x900 screen's chart area and a 1920x1080 slide.
HEIGHT = 860
NBSP = "\u00a0"


def _plotly_text(text: str) -> str:
    """Plain text as Plotly's text renderer shows it verbatim: ``<``/``&`` escaped (it decodes
    entities back), spaces non-breaking (SVG would collapse an indentation)."""
    return html.escape(text, quote=False).replace(" ", NBSP)


def _cpu_code(s: Snapshot, caption: str, cpu: str | None) -> CpuCode | None:
    """The code panel of the CPU that ran the step: ``cpu`` if given, else the CPU whose last
    narration is the caption, else the first running one."""
    panel = code_panel(s)
    if cpu is not None:
        return next((c for c in panel if c.cpu == cpu), None)
    return next((c for c in panel if c.narration == caption), None) or next(
        (c for c in panel if c.running), None
    )


def narration_text(caption: str) -> str:
    """A frame's narration cell: the caption, wrapped (``<br>`` between lines)."""
    lines = textwrap.wrap(caption, NARRATION_WIDTH) or [""]
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def code_text(code: CpuCode | None) -> str:
    """A frame's code cell: the CPU and its stack, then the listing around the current line
    (marked ``=>`` and bold)."""
    if code is None:
        return _plotly_text("(no CPU ran this step)")
    head = f"{code.cpu}: {' > '.join(code.stack) or code.function or '(idle)'}"
    out = [_plotly_text(head[:CODE_WIDTH])]
    if code.lines:
        for line in code.listing(context=CODE_CONTEXT).split("\n"):
            cut = line if len(line) <= CODE_WIDTH else line[: CODE_WIDTH - 1] + "\u2026"
            text = _plotly_text(cut)
            out.append(f"<b>{text}</b>" if line.startswith("=> ") else text)
    return "<br>".join(out)


def _frame_data(
    s: Snapshot, changed: Sequence[int], w: int, caption: str, cpu: str | None
) -> list[go.BaseTraceType]:
    a = region_arrays(s)
    vcpus = [v for v in s.vcpus if v.alive]
    code = _cpu_code(s, caption, cpu)
    return [
        go.Heatmap(z=_grid(a.state, w)),
        go.Scatter(x=[r % w for r in changed], y=[r // w for r in changed]),
        go.Bar(x=[f"vCPU {v.vcpu}" for v in vcpus], y=[len(v.pamt_cache) for v in vcpus]),
        go.Table(cells={"values": [[narration_text(caption)], [code_text(code)]]}),
    ]


def _title(s: Snapshot, caption: str, cpu: str | None) -> str:
    code = _cpu_code(s, caption, cpu)
    where = f" on {code.cpu} in {code.function}" if code is not None and code.function else ""
    return html.escape(f"step {s.step}{where}", quote=False)


def animation_figure(
    window: Sequence[tuple[Snapshot, Sequence[int], str]],
    cpus: Sequence[str | None] | None = None,
) -> go.Figure:
    """``window``: (snapshot, changed regions, caption) per step, in order; the caption is the
    step's narration. ``cpus``: the CPU that ran each step (its code is shown); without it, the
    CPU whose last narration is the caption."""
    if not window:
        raise ValueError("an animation needs at least one step")
    window = list(window)[:MAX_FRAMES]
    who: list[str | None] = list(cpus or [])[: len(window)]
    who += [None] * (len(window) - len(who))
    first = window[0][0]
    w = grid_width(first.nr_regions)
    colours = [c for _, _, c in DPAMT_STATES]
    names = [n for n, _, _ in DPAMT_STATES]
    target = 2 * first.settings.dpamt_gets_per_fault
    # the heatmap's colour bar sits in the gap between the two top panels: wide enough for its
    # labels, so they stay clear of the cache panel's ticks
    spacing = 0.22
    fig = make_subplots(
        rows=2,
        cols=2,
        column_widths=[0.7, 0.3],
        row_heights=[0.55, 0.45],
        horizontal_spacing=spacing,
        vertical_spacing=0.12,
        specs=[[{"type": "xy"}, {"type": "xy"}], [{"type": "table", "colspan": 2}, None]],
        subplot_titles=("regions (DPAMT state)", "tdx_pamt_cache pages per vCPU"),
    )
    x_dom = fig.layout.xaxis.domain
    y_dom = fig.layout.yaxis.domain
    heat, outline, bars, table = _frame_data(first, window[0][1], w, window[0][2], who[0])
    heat.update(
        zmin=-0.5,
        zmax=len(colours) - 0.5,
        colorscale=discrete_scale(colours),
        colorbar={
            "tickvals": list(range(len(colours))),
            "ticktext": names,
            "x": x_dom[1] + 0.01,
            "xanchor": "left",
            "y": (y_dom[0] + y_dom[1]) / 2,
            "yanchor": "middle",
            "len": y_dom[1] - y_dom[0],
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
    table.update(
        columnwidth=[0.4, 0.6],
        header={
            "values": ["<b>what happens</b>", "<b>the code of the CPU that ran the step</b>"],
            "align": "left",
            "fill": {"color": LIGHT},
            "font": {"color": BLACK, "size": 12},
        },
        cells={
            "align": "left",
            "font": {"family": ["Arial, sans-serif", "monospace"], "size": [12, 11]},
            "fill": {"color": "rgba(0,0,0,0)"},
            "line": {"color": NEUTRAL},
        },
        name="narration and code",
    )
    fig.add_trace(heat, row=1, col=1)
    fig.add_trace(outline, row=1, col=1)
    fig.add_trace(bars, row=1, col=2)
    fig.add_trace(table, row=2, col=1)
    frames = []
    steps = []
    for (s, changed, caption), cpu in zip(window, who, strict=True):
        name = str(s.step)
        frames.append(
            go.Frame(
                data=_frame_data(s, changed, w, caption, cpu),
                traces=[0, 1, 2, 3],
                name=name,
                layout={"title": {"text": _title(s, caption, cpu)}},
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
        title=_title(first, window[0][2], who[0]),
        height=HEIGHT,
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
                "y": -0.07,
                "xanchor": "left",
                "yanchor": "top",
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
                "y": -0.015,
                "yanchor": "top",
                "currentvalue": {"prefix": "step "},
                "steps": steps,
            }
        ],
        margin={"l": 50, "r": 10, "t": 60, "b": 120},
    )
    # the target line (add_hline(row=, col=) trips over the table trace, which has no axes)
    fig.add_shape(
        type="line",
        xref="x2 domain",
        x0=0,
        x1=1,
        yref="y2",
        y0=target,
        y1=target,
        line={"dash": "dash", "color": NEUTRAL},
    )
    return fig


def animation_html(fig: go.Figure) -> str:
    """A standalone HTML page of ``fig`` (plotly.js inlined: no network needed)."""
    html: str = fig.to_html(include_plotlyjs=True, full_html=True, auto_play=False)
    return html
