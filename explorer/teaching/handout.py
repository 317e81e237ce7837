"""A one-page handout of a tour: a standalone HTML page to print or hand out.

Per stop: its number, its step, what to look at, the teacher's text, the step's narration and the
stop's view, drawn by the same view functions as the Learn page. plotly.js is inlined once (the
page works offline and fetches nothing); every figure is a div that uses it. Text is the tour's
and the trace's: always HTML-escaped.
"""

from __future__ import annotations

from html import escape

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline
from explorer.teaching.tours import ResolvedStop, Tour, resolve
from explorer.views.caches import kvm_caches_figure, pamt_cache_figure
from explorer.views.changes import diff_snapshots, effects_table
from explorer.views.code import code_panel, lock_summary
from explorer.views.refcounts import refcount_figure, timeline_over_time_figure
from explorer.views.region_map import region_map, replay_span

#: id of the one <script> element holding plotly.js.
PLOTLYJS_ID = "plotly-js"
FIGURE_CONFIG = {"displayModeBar": False, "responsive": True}

CSS = """
body { font-family: Arial, Helvetica, sans-serif; margin: 1.5em auto; max-width: 60em;
       color: #111; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.9em; }
.stop { border-top: 1px solid #999; padding: 0.6em 0; page-break-inside: avoid;
        break-inside: avoid; }
.stop h2 { font-size: 1.1em; margin: 0.2em 0; }
.label { font-weight: bold; margin: 0.4em 0 0.1em; }
.text { white-space: pre-wrap; margin: 0; }
pre { background: #f4f4f4; padding: 0.4em; font-size: 0.8em; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #bbb; padding: 0.1em 0.4em; text-align: left; }
.figure { height: 320px; page-break-inside: avoid; break-inside: avoid; }
@media print {
  body { margin: 0; max-width: none; }
  .stop { page-break-inside: avoid; break-inside: avoid; }
  .figure { page-break-inside: avoid; break-inside: avoid; }
}
"""


def _figure(tl: Timeline, stop: ResolvedStop) -> go.Figure | None:
    """The stop's view as a figure, if it is one (the Learn page's choice of figure)."""
    i = stop.step
    snap = tl.state_at(i)
    changed = tl.changed_regions(i)
    view = stop.stop.view
    if view in ("region_map", "animation"):
        return region_map(snap, changed, height=300, span=replay_span(tl))
    if view == "pamt_caches":
        return pamt_cache_figure(snap, height=260)
    if view == "refcounts":
        return refcount_figure(snap, changed)
    if view == "kvm_caches":
        return kvm_caches_figure(snap)
    if view == "over_time":
        return timeline_over_time_figure(tl, i, snap.nr_regions)
    return None


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="text">(nothing)</p>'
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _text_view(tl: Timeline, stop: ResolvedStop) -> str:
    """The stop's view when it is text or a table (the Learn page's choice again)."""
    i = stop.step
    snap = tl.state_at(i)
    step = tl.step(i)
    view = stop.stop.view
    if view == "code":
        panel = code_panel(snap)
        panel.sort(key=lambda c: (c.cpu != step.cpu, c.cpu))
        parts = []
        for cpu in panel[:2]:
            parts.append(f'<p class="label">{escape(cpu.cpu)}: ')
            parts.append(f"{escape(' > '.join(cpu.stack) or cpu.function)}</p>")
            if cpu.lines:
                parts.append(f"<pre>{escape(cpu.listing(context=4))}</pre>")
        return "".join(parts)
    if view == "locks":
        return f"<pre>{escape(chr(10).join(lock_summary(snap)))}</pre>"
    if view == "what_changed":
        return _table(effects_table(step))
    if view == "diff":
        return _table(diff_snapshots(tl.state_at(i - 1), snap))
    if view == "diagnostics":
        if not step.diagnostics:
            return '<p class="text">No diagnostic at this step.</p>'
        return "".join(
            f'<p class="label">{escape(d.kind)}: {escape(d.code)}</p>'
            f'<p class="text">{escape(d.message)}</p>'
            for d in step.diagnostics
        )
    return ""


def _stop_html(tl: Timeline, stop: ResolvedStop, n: int) -> str:
    step = tl.step(stop.step)
    fig = _figure(tl, stop)
    if fig is not None:
        fig.update_layout(height=fig.layout.height or 320)
        view = fig.to_html(
            include_plotlyjs=False,
            full_html=False,
            config=FIGURE_CONFIG,
            default_height=f"{fig.layout.height}px",
            div_id=f"stop-{stop.number}",
        )
        view = f'<div class="figure" style="height:{fig.layout.height}px">{view}</div>'
    else:
        view = _text_view(tl, stop)
    return (
        '<section class="stop">'
        f"<h2>Stop {stop.number} of {n}: step {step.index}</h2>"
        f'<p class="meta">{escape(stop.stop.where())}; {escape(step.cpu)} in '
        f"{escape(step.function)}; view: {escape(stop.view_title)}</p>"
        f'<p class="label">Look at</p><p class="text">{escape(stop.stop.look)}</p>'
        f'<p class="label">The teacher says</p><p class="text">{escape(stop.stop.narration)}</p>'
        f'<p class="label">Step {step.index}</p><p class="text">{escape(step.narration)}</p>'
        f"{view}</section>"
    )


def tour_handout_html(tour: Tour, timeline: Timeline, settings: Settings) -> str:
    """A standalone HTML handout of ``tour`` on ``timeline`` (replayed with ``settings``):
    plotly.js inlined once, no external URL. Raises :class:`explorer.teaching.tours.TourError` if a stop
    does not resolve."""
    stops = resolve(tour, timeline)
    knobs = ", ".join(f"{k}={v}" for k, v in settings.to_dict().items())
    body = "".join(_stop_html(timeline, s, len(stops)) for s in stops)
    description = f'<p class="text">{escape(tour.description)}</p>' if tour.description else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(tour.title)}</title>"
        f"<style>{CSS}</style>"
        f'<script id="{PLOTLYJS_ID}" type="text/javascript">{plotly.offline.get_plotlyjs()}'
        "</script></head><body>"
        f"<h1>{escape(tour.title)}</h1>{description}"
        f'<p class="meta">Tour of the sample trace {escape(tour.trace)}: {len(stops)} stops. '
        f"Settings: {escape(knobs)}.</p>"
        f"{body}</body></html>\n"
    )
