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

from explorer.model.records import OWNERS, Snapshot, Step
from explorer.replay.timeline import Timeline
from explorer.views.caches import cache_stacks, pamt_cache_figure
from explorer.views.code import code_panel, lock_summary
from explorer.views.frames import RegionArrays, region_arrays
from explorer.views.palette import (
    DPAMT_STATES,
    GREY,
    THEMES,
    YELLOW,
    check_theme,
)

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
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "biu":  # no NaN to replace: the nested lists as they are (fast)
            return x.tolist()
        if x.dtype.kind == "f":
            o = x.astype(object)
            o[np.isnan(x)] = None
            return o.tolist()
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


def _hover_texts(
    snap: Snapshot, a: RegionArrays, codes: Any, names: list[str], regions: Any
) -> list[str]:
    """The hover text of ``regions`` (as region_map writes it for maps of at most
    HOVER_TEXT_LIMIT regions; tests/test_window.py checks they agree)."""
    pairs = snap.pairs
    return [
        f"region {r} ({r << 21:#x})<br>{names[int(codes[r])]}<br>refcount {int(a.refcount[r])}"
        + (f"<br>pair {pairs[r][0]:#x}, {pairs[r][1]:#x}" if r in pairs else "")
        + f"<br>{int(a.used[r])} of 512 pages in use"
        for r in regions
    ]


def _codes(a: RegionArrays, color_by: str) -> tuple[Any, list[str]]:
    if color_by == "owner":
        return a.owner, list(OWNERS)
    if color_by == "dpamt":
        return a.state, [name for name, _, _ in DPAMT_STATES]
    raise ValueError("color_by must be 'dpamt' or 'owner'")


def _delta(
    prev: tuple[Snapshot, RegionArrays],
    cur: tuple[Snapshot, RegionArrays],
    color_by: str,
    with_text: bool,
) -> dict[int, tuple[int, str | None]]:
    """The cells whose colour (or hover text) differ between two consecutive steps, by flat
    index (the grid is the regions row-major, so a cell's flat index is its region): a
    vectorised compare of the region arrays."""
    (ps, pa), (cs, ca) = prev, cur
    pc, _ = _codes(pa, color_by)
    cc, names = _codes(ca, color_by)
    diff = pc != cc
    if with_text:
        diff |= (pa.refcount != ca.refcount) | (pa.used != ca.used)
        moved = {r for r, p in ps.pairs.items() if cs.pairs.get(r) != p}
        moved |= {r for r in cs.pairs if r not in ps.pairs}
        if moved:
            diff[np.fromiter(moved, dtype=np.int64, count=len(moved))] = True
    idx = np.flatnonzero(diff)
    z = cc[idx].tolist()
    texts: list[str | None] = (
        list(_hover_texts(cs, ca, cc, names, idx.tolist())) if with_text else [None] * len(z)
    )
    return dict(zip(idx.tolist(), zip(z, texts, strict=True), strict=True))


def _outline(template: dict[str, Any], changed: list[int], cols: int, base: int, end: int) -> Any:
    """The changed regions' outline trace: region_map's own trace (``template``, built once)
    with this step's regions shown (``[base, end)``: the map's span); None when the step
    changed none (region_map's figure then has no such trace)."""
    ch = sorted({r for r in changed if base <= r < end})
    if not changed:
        return None
    return {
        **template,
        "x": [r % cols for r in ch],
        "y": [r // cols for r in ch],
        "customdata": ch,
    }


def map_patch(base: dict[str, Any], fig: dict[str, Any]) -> dict[str, Any]:
    """What differs in ``fig`` (a step's map) from ``base`` (the window's first map): the cells
    whose z or hover text differ as ``[flat index, z, text]``, the outline trace of the regions
    the step changed (or None), and the layout when it differs. The reference for
    :func:`step_window`'s direct patches (which never build a step's figure)."""
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


def _caches_json(snap: Snapshot, ref: dict[str, Any]) -> dict[str, Any]:
    """The caches figure of ``snap`` as plain JSON, from its data: the bars, the target line
    and the labels of pamt_cache_figure, with the styles and layout of ``ref`` (that function's
    figure for another step of the replay, built once a window). tests/test_window.py checks
    the result equals pamt_cache_figure's for every step."""
    vcpus = [v for v in snap.vcpus if v.alive]
    target = 2 * snap.settings.dpamt_gets_per_fault
    st = cache_stacks(snap)
    by_name = {t.get("name"): t for t in ref["data"]}
    bar, line, labels_t = ref["data"][0], ref["data"][1], ref["data"][-1]
    labels = [f"vCPU {v.vcpu}" for v in vcpus]
    data: list[dict[str, Any]] = [
        {
            **bar,
            "x": st.xs,
            "y": [1] * len(st.xs),
            "base": [float(b) for b in st.bases],
            "text": st.texts,
            "hovertext": st.hovers,
            "marker": {**bar["marker"], "color": st.colours},
        },
        {**line, "x": labels, "y": [target] * len(labels)},
    ]
    if "mempool" in snap.extra:
        pool = by_name.get("mempool reserve") or {
            "type": "bar",
            "x": ["mempool"],
            "name": "mempool reserve",
            "marker": {"color": YELLOW},
        }
        data.append({**pool, "y": [len(snap.extra["mempool"])]})
    data.append({**labels_t, "x": st.lx, "y": st.ly, "text": st.ltext})
    layout = {k: v for k, v in ref["layout"].items() if k != "annotations"}
    if not vcpus:
        layout["annotations"] = [
            {
                "font": {"color": GREY, "size": 13},
                "showarrow": False,
                "text": "no vCPU yet: each vCPU's cache appears here once vcpu_create has run",
                "x": 0.5,
                "xref": "paper",
                "y": 0.5,
                "yref": "paper",
            }
        ]
    top = max([target, *[len(vc.pamt_cache) for vc in vcpus], 1]) + 1
    layout["xaxis"] = {**layout["xaxis"], "categoryarray": labels, "showticklabels": bool(vcpus)}
    layout["yaxis"] = {**layout["yaxis"], "range": [0, top], "dtick": 2 if top <= 24 else 10}
    return {"data": data, "layout": layout}


def step_window(
    tl: Timeline,
    centre: int,
    radius: int = DEFAULT_RADIUS,
    *,
    color_by: str = "dpamt",
    map_height: int | None = None,
    cache_height: int | None = None,
    map_width: int | None = None,
    narrow_caches: bool = False,
    notes: Mapping[int, str] | None = None,
    memo: dict[tuple[object, ...], Any] | None = None,
    theme: str = "light",
    span: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The payload for steps ``[centre - radius, centre + radius]`` (clipped to -1 .. last; -1
    is the state before the first step). ``notes``: review notes pinned to steps (shown with
    the step's text). ``map_width`` and ``narrow_caches``: region_map's ``width`` and
    pamt_cache_figure's ``narrow`` (a compact colour bar, a short title for a narrow column).
    ``theme`` and ``span``: region_map's (``span`` the replay's, :func:`replay_span`, so a 4 GiB
    map keeps one grid over the window and across windows) and pamt_cache_figure's ``theme``;
    the payload's ``page_template`` is the Plotly template the browser draws both figures with
    on that theme (:func:`page_template`).
    ``memo``: what earlier windows of the same replay built (kept by the
    caller): each step's cells that changed from the step before and its caches.

    Speed: a Plotly figure costs ~50 ms (its validation), so the window builds two real ones
    (the base step's map and caches, whose styles and layout the steps reuse) and each step's
    patch from the snapshot's data: region_arrays, a vectorised compare with the step before,
    the changed cells' hover text. Raises ValueError naming the bad argument."""
    last = tl.nr_steps - 1
    if last < 0:
        raise ValueError("step_window: the replay has no step")
    if not -1 <= centre <= last:
        raise ValueError(f"step_window: centre {centre} is outside -1..{last}")
    if radius < 0:
        raise ValueError(f"step_window: radius {radius} is negative")
    if color_by not in ("dpamt", "owner"):
        raise ValueError(f"step_window: color_by {color_by!r} is not 'dpamt' or 'owner'")
    if theme not in THEMES:
        raise ValueError(f"step_window: theme {theme!r} is not one of {', '.join(THEMES)}")
    if span is not None and not 0 <= span[0] < span[1]:
        raise ValueError(f"step_window: span {span!r} is not (first, end) with first < end")
    lo, hi = max(centre - radius, -1), min(centre + radius, last)
    memo = {} if memo is None else memo
    from explorer.views.region_map import HOVER_TEXT_LIMIT, region_map, shown_regions

    snap_lo = tl.state_at(lo)
    n = snap_lo.nr_regions
    if span is not None and span[1] > n:
        raise ValueError(f"step_window: span {span!r} ends beyond the map's {n} regions")
    # the regions the map draws: its grid's flat index k is region first + k
    first, end = shown_regions(n, span, map_width, map_height)
    changed_lo = tl.changed_regions(lo) if lo >= 0 else []
    opts: dict[str, Any] = {
        "color_by": color_by,
        "height": map_height,
        "width": map_width,
        "theme": theme,
        "span": span,
    }
    base = figure_json(region_map(snap_lo, changed_lo, **opts))
    cols = len(base["data"][0]["z"][0])
    padded = len(base["data"][0]["z"]) * cols != end - first
    with_text = end - first <= HOVER_TEXT_LIMIT
    okey = ("outline", color_by, map_height, map_width, theme, span)
    if okey not in memo:
        if len(base["data"]) > 1:
            memo[okey] = base["data"][1]
        else:  # region_map's outline trace (styled by it), any shown region will do
            memo[okey] = figure_json(region_map(snap_lo, [first], **opts))["data"][1]
    outline = memo[okey]
    rkey = ("caches_ref", cache_height, narrow_caches, theme)
    if rkey not in memo:  # its styles and layout (the steps' data replace its own)
        memo[rkey] = figure_json(
            pamt_cache_figure(snap_lo, height=cache_height, narrow=narrow_caches, theme=theme)
        )
    cache_ref = memo[rkey]
    template = cache_ref["layout"].get("template")

    arrays: dict[int, tuple[Snapshot, RegionArrays]] = {}

    def at(i: int) -> tuple[Snapshot, RegionArrays]:
        if i not in arrays:
            snap = tl.state_at(i)
            arrays[i] = (snap, region_arrays(snap))
        return arrays[i]

    def delta(i: int) -> dict[int, tuple[int, str | None]]:
        k = ("delta", i, color_by, with_text)
        if k not in memo:
            memo[k] = _delta(at(i - 1), at(i), color_by, with_text)
        d: dict[int, tuple[int, str | None]] = memo[k]
        return d

    bz = _flat(base["data"][0]["z"])
    bt = _flat(base["data"][0].get("text") or [])
    cells: dict[int, tuple[int, str | None]] = {}
    steps = []
    for i in range(lo, hi + 1):
        if i > lo:
            cells.update(delta(i))
        patch_cells = [
            [r - first, float(z) if padded else z, t]
            for r, (z, t) in sorted(cells.items())
            if first <= r < end and (z != bz[r - first] or (with_text and t != bt[r - first]))
        ]
        skey = ("step", i, cache_height, narrow_caches, theme)
        if skey not in memo:  # what a step shows besides its map, built once a replay
            snap = tl.state_at(i)
            step = tl.step(i) if i >= 0 else None
            memo[skey] = {
                "event": step.event if step is not None else -1,
                "caches": _caches_json(snap, cache_ref),
                "text": asdict(step_text(tl, step)),
                "code": [asdict(b) for b in code_view(snap, step)],
                "locks": lock_summary(snap),
                "changed": tl.changed_regions(i) if i >= 0 else [],
            }
        m = memo[skey]
        # the caches' theme template (7 KB) once for the window, not once a step
        caches = {**m["caches"], "layout": _without(m["caches"]["layout"], "template", template)}
        steps.append(
            {
                "step": i,
                "event": m["event"],
                "map": {
                    "cells": patch_cells,
                    "outline": _outline(outline, m["changed"], cols, first, end),
                },
                "caches": caches,
                "text": m["text"],
                "note": (notes or {}).get(i, ""),
                "code": m["code"],
                "locks": m["locks"],
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
        "page_template": page_template(theme),
        "steps": steps,
    }


def page_template(theme: str) -> dict[str, Any] | None:
    """The Plotly template the browser draws the window's figures with on ``theme``: None on
    light (the figures' own); on dark, plotly's ``plotly_dark`` with see-through backgrounds,
    so the charts sit on the page's dark background with light text and grid (the figures'
    own template is a white page: a bright block in a dark page). The server-drawn charts get
    the same from Streamlit's own chart theme."""
    if check_theme(theme) == "light":
        return None
    import plotly.io as pio

    t: dict[str, Any] = _plain(pio.templates["plotly_dark"].to_plotly_json())
    t["layout"] = {**t["layout"], "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)"}
    return t
