"""A window of steps around the cursor, as one JSON-serialisable payload a browser can step through
without asking the server (issue 27, "instant steps").

Why: each Next/Prev in Explore reran the step view on the server and redrew two Plotly charts
(230-250 ms idle, 400-700 ms under load). A payload holding steps ``[c - R, c + R]`` lets the page
show any of them at once and ask the server only when the cursor leaves the window.

What the payload holds for each step is what the step view shows, built by the same pure view
functions the server-drawn charts use (:func:`~explorer.views.region_map.region_map`,
:func:`~explorer.views.caches.pamt_cache_figure`, :func:`step_text`, :func:`code_view`,
:func:`~explorer.views.code.lock_summary`), so the picture is identical:

* the region map once, as the base figure of the window's first step, plus for each step a patch
  of only the cells whose colour or hover text differ from the base and the outline of the
  regions the step changed (a 1 TiB map is 524,288 cells; a step changes a handful);
* the PAMT caches' figure (a few dozen bars: sent whole);
* the step's header, narration, event line and diagnostics; the code listing with the current
  line; the locks.

:func:`apply_map_patch` is the reference for the client's patching (the tests rebuild each step's
map with it and compare it with ``region_map`` for that step).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from explorer.model.records import Snapshot, Step
from explorer.replay.timeline import Timeline
from explorer.views.caches import pamt_cache_figure
from explorer.views.code import code_panel, lock_summary

#: Steps either side of the centre the window holds by default.
DEFAULT_RADIUS = 20
#: Lines of pseudocode either side of the current one in the code listing.
CODE_CONTEXT = 2


@dataclass(frozen=True)
class StepText:
    """The step in words: the header (Markdown), the narration, the event line and the
    diagnostics as ``(kind, code, message, is_error)``."""

    header: str
    narration: str
    event_line: str
    diagnostics: tuple[tuple[str, str, str, bool], ...]


@dataclass(frozen=True)
class CodeBlock:
    """One CPU in the code panel: its caption and, for the step's CPU, its listing."""

    caption: str
    listing: str | None


#: What the code panel says before any CPU has run kernel code.
NO_CODE = "No CPU has run kernel code yet: the code shows here from the first step."


def step_text(tl: Timeline, step: Step | None) -> StepText:
    """Which step this is, on which CPU in which function, its narration, event and
    diagnostics (the step view's right column, above the code)."""
    if step is None:
        return StepText(
            f"**Before the first step** (of {tl.nr_steps} steps, numbered 0 to "
            f"{tl.nr_steps - 1}). Press **Next** (or the Right arrow).",
            "",
            "",
            (),
        )
    ev = tl.events[step.event] if step.event >= 0 else None
    event_line = ""
    if ev is not None:
        event_line = (
            f"event {step.event + 1} of {tl.nr_events} (line {ev.line}): "
            + ev.describe()
            + (f"  # {ev.note}" if ev.note else "")
        )
    return StepText(
        f"**Step {step.index}** of {tl.nr_steps} steps (numbered 0 to {tl.nr_steps - 1}), "
        f"on **{step.cpu}** in `{step.function}`",
        step.narration,
        event_line,
        tuple(
            (d.kind, d.code, d.message, d.kind in ("violation", "error")) for d in step.diagnostics
        ),
    )


def code_view(snap: Snapshot, step: Step | None, context: int = CODE_CONTEXT) -> list[CodeBlock]:
    """The code of two CPUs, the step's first: each with its stack and state; the step's CPU
    with its listing (the other as one line, so the map, the caches and the code fit a
    projector's 720 lines together). Empty before any CPU has run kernel code."""
    panel = code_panel(snap)
    panel.sort(key=lambda c: (step is None or c.cpu != step.cpu, c.cpu))
    out = []
    for n, cpu in enumerate(panel[:2]):
        state = (
            "spinning on " + cpu.spinning_on
            if cpu.spinning_on
            else ("running" if cpu.running else "idle")
        )
        caption = f"{cpu.cpu}: {' > '.join(cpu.stack) or cpu.function} ({state})"
        listing = cpu.listing(context=context) if cpu.lines and n == 0 else None
        out.append(CodeBlock(caption, listing))
    return out


def figure_json(fig: Any) -> dict[str, Any]:
    """A Plotly figure as plain JSON data (numpy arrays as lists, NaN as null): what Plotly.js
    draws, and comparable with ``==``."""
    out: dict[str, Any] = _plain(fig.to_plotly_json())
    return out


def _plain(x: Any) -> Any:
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, dict) and "bdata" in x and "dtype" in x:  # plotly's typed-array encoding
        a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
        if "shape" in x:
            a = a.reshape([int(n) for n in str(x["shape"]).split(",")])
        return _plain(a)
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def _flat(grid: Any) -> list[Any]:
    return [v for row in grid for v in row] if grid and isinstance(grid[0], list) else list(grid)


def _map(tl: Timeline, i: int, color_by: str, height: int | None) -> dict[str, Any]:
    # imported here: region_map pulls numpy/plotly, as the callers already have
    from explorer.views.region_map import region_map

    changed = tl.changed_regions(i) if i >= 0 else []
    return figure_json(region_map(tl.state_at(i), changed, color_by=color_by, height=height))


def map_patch(base: dict[str, Any], fig: dict[str, Any]) -> dict[str, Any]:
    """What differs in ``fig`` (a step's map) from ``base`` (the window's first map): the cells
    whose z or hover text differ as ``[flat index, z, text]``, the outline trace of the regions
    the step changed (or None), and the layout when it differs (it does only if the map's size
    does, which a replay keeps)."""
    bz, fz = _flat(base["data"][0]["z"]), _flat(fig["data"][0]["z"])
    bt = _flat(base["data"][0].get("text") or [])
    ft = _flat(fig["data"][0].get("text") or [])
    if len(bz) != len(fz):
        raise ValueError("the map's grid changed size within a replay")
    cells = [
        [k, fz[k], ft[k] if ft else None]
        for k in range(len(fz))
        if fz[k] != bz[k] or (ft and ft[k] != bt[k])
    ]
    patch: dict[str, Any] = {
        "cells": cells,
        "outline": fig["data"][1] if len(fig["data"]) > 1 else None,
    }
    if fig["layout"] != base["layout"]:
        patch["layout"] = fig["layout"]
    return patch


def apply_map_patch(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The step's map from the window's base map and the step's patch (the client does the
    same in app_pages/ui/instant.py's script)."""
    heat = json.loads(json.dumps(base["data"][0]))
    z = heat["z"]
    text = heat.get("text")
    cols = len(z[0]) if z and isinstance(z[0], list) else len(z)
    for k, value, hover in patch["cells"]:
        r, c = divmod(k, cols)
        z[r][c] = value
        if text is not None:
            text[r][c] = hover
    data = [heat] + ([patch["outline"]] if patch["outline"] is not None else [])
    return {"data": data, "layout": patch.get("layout", base["layout"])}


def _without(layout: dict[str, Any], key: str, value: object) -> dict[str, Any]:
    if key in layout and layout[key] == value:
        return {k: v for k, v in layout.items() if k != key}
    return layout


def caches_figure(window: Mapping[str, Any], step: Mapping[str, Any]) -> dict[str, Any]:
    """A step's caches figure from the window (its template put back, as the client does)."""
    layout = dict(step["caches"]["layout"])
    if "template" not in layout and window["caches_template"] is not None:
        layout["template"] = window["caches_template"]
    return {"data": step["caches"]["data"], "layout": layout}


def step_window(
    tl: Timeline,
    centre: int,
    radius: int = DEFAULT_RADIUS,
    *,
    color_by: str = "dpamt",
    map_height: int | None = None,
    cache_height: int | None = None,
    notes: Mapping[int, str] | None = None,
    memo: dict[tuple[object, ...], tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The payload for steps ``[centre - radius, centre + radius]`` (clipped to -1 .. last; -1
    is the state before the first step). ``notes``: review notes pinned to steps (shown with
    the step's text). ``memo``: the steps' figures of earlier windows of the same replay (kept by
    the caller): a re-centred window builds only its new steps (a figure costs ~50 ms, mostly
    plotly's validation). Raises ValueError naming the bad argument."""
    last = tl.nr_steps - 1
    if last < 0:
        raise ValueError("step_window: the replay has no step")
    if not -1 <= centre <= last:
        raise ValueError(f"step_window: centre {centre} is outside -1..{last}")
    if radius < 0:
        raise ValueError(f"step_window: radius {radius} is negative")
    lo, hi = max(centre - radius, -1), min(centre + radius, last)
    memo = {} if memo is None else memo

    def figures(i: int, snap: Snapshot) -> tuple[dict[str, Any], dict[str, Any]]:
        k = (i, color_by, map_height, cache_height)
        if k not in memo:
            caches = figure_json(pamt_cache_figure(snap, height=cache_height))
            memo[k] = (_map(tl, i, color_by, map_height), caches)
        return memo[k]

    base = figures(lo, tl.state_at(lo))[0]
    template = None
    steps = []
    for i in range(lo, hi + 1):
        snap = tl.state_at(i)
        step = tl.step(i) if i >= 0 else None
        note = (notes or {}).get(i, "")
        fig_map, caches = figures(i, snap)
        # the caches' theme template (7 KB) once for the window, not once a step
        template = caches["layout"].get("template", template)
        caches = {**caches, "layout": _without(caches["layout"], "template", template)}
        steps.append(
            {
                "step": i,
                "event": step.event if step is not None else -1,
                "map": map_patch(base, fig_map),
                "caches": caches,
                "text": asdict(step_text(tl, step)),
                "note": note,
                "code": [asdict(b) for b in code_view(snap, step)],
                "locks": lock_summary(snap),
            }
        )
    return {
        "lo": lo,
        "hi": hi,
        "centre": centre,
        "nr_steps": tl.nr_steps,
        "no_code": NO_CODE,
        "map_base": base,
        "caches_template": template,
        "steps": steps,
    }
