"""The region map: host memory as a grid of 2 MiB regions, coloured by DPAMT state or owner.

One ``go.Heatmap`` built from numpy arrays (no gaps, no per-cell shapes), so it stays light at
524,288 regions (1 TiB): z travels as a typed array. Per-cell hover text is only attached to
small maps; large maps hover with the region index and state, and the app's region inspector
gives the detail. Regions changed by the current step are outlined by a small scatter overlay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import plotly.graph_objects as go

from explorer.model.records import OWNERS, Snapshot
from explorer.views.frames import RegionArrays, region_arrays
from explorer.views.palette import (
    DPAMT_STATES,
    check_theme,
    discrete_scale,
    dpamt_colours,
    ink,
    owner_colours,
)

if TYPE_CHECKING:
    from explorer.replay.timeline import Timeline

#: Above this many regions, cells carry no per-cell hover text (payload size).
HOVER_TEXT_LIMIT = 16384

#: Figure width (px) assumed when the caller does not say: the Explore page's main map (the left
#: 3/5 of a wide page at 1440 px). The map fills its axes at any real width; this only sets the
#: cells' aspect.
DEFAULT_WIDTH = 600
#: Width (px) of the page's content where maps stand side by side (Compare): a 1440-px window
#: less the sidebar and the page's padding; columns are this wide together, less their gaps.
CONTENT_WIDTH, COLUMN_GAP = 1000, 16
#: Below this figure width (px) the colour bar is compact (thin, small font, short labels).
NARROW_WIDTH = 450
#: Margins (px) around the plot area: y-axis title and ticks, right edge, title, x-axis title.
MARGIN = {"l": 50, "r": 10, "t": 40, "b": 40}
#: Room (px) the colour bar takes right of the plot area (Plotly widens the right margin for it).
COLORBAR_PX = {"full": 180, "compact": 85}
#: Plot-area height (px) bounds when the figure height is sized from the rows.
MIN_PLOT_HEIGHT, MAX_PLOT_HEIGHT = 140, 560
#: Preferred plot-area aspect (width / height) when the height is free.
WIDE_ASPECT, NARROW_ASPECT = 1.5, 1.0

#: Short labels for the DPAMT states in a compact colour bar (same order as DPAMT_STATES; "rc"
#: is the refcount; the hover text gives the full name).
SHORT_STATES = ("free", "used", "rc 1-3", "rc 4-63", "rc 64+", "leaked", "rc 0")


def grid_width(nr_regions: int, aspect: float = WIDE_ASPECT) -> int:
    """Columns of the grid for a plot area ``aspect`` times as wide as tall: the power of two
    that makes the cells closest to square (so a cell is at most 2x as wide as tall or the
    reverse), at most 1024 and at most ``nr_regions``."""
    n = max(nr_regions, 1)
    best, best_err = 1, math.inf
    cols = 1
    while cols <= min(n, 1024):
        rows = -(-n // cols)
        # cell aspect (px wide / px tall) = (W / cols) / (H / rows) = aspect * rows / cols
        err = abs(math.log(aspect * rows / cols))
        if err <= best_err + 1e-9:  # ties: the wider grid (fewer rows, a shorter figure)
            best, best_err = cols, err
        cols *= 2
    return best


def _grid(values: npt.NDArray[np.int8], width: int) -> npt.NDArray[np.int8 | np.float32]:
    """Rows of ``width``; int8 (1 byte a cell in the payload) unless the last row needs NaN
    padding (then float32)."""
    rows = -(-len(values) // width)
    if rows * width == len(values):
        return values.astype(np.int8).reshape(rows, width)
    z = np.full(rows * width, np.nan, dtype=np.float32)
    z[: len(values)] = values
    return z.reshape(rows, width)


def column_width(columns: int, content: int = CONTENT_WIDTH) -> int:
    """The width (px) of one of ``columns`` side-by-side maps on a page ``content`` px wide:
    what to pass as ``width`` to :func:`region_map`, so a narrow column gets the compact
    colour bar and the plot area keeps its room (a width guessed too large sized a full colour
    bar that pushed the map to a sliver, or over it)."""
    n = max(columns, 1)
    return max(1, (content - COLUMN_GAP * (n - 1)) // n)


def colorbar_px(ticktext: Sequence[str], compact: bool) -> int:
    """An estimate (px) of the room a colour bar with these labels takes right of the plot:
    its thickness, padding and the longest label (about 0.6 em a character)."""
    font = 10 if compact else 12
    thickness, pad = (10, 4) if compact else (16, 10)
    return thickness + 2 * pad + math.ceil(0.6 * font * max((len(t) for t in ticktext), default=0))


#: Zoom in on the activity when it spans at most 1/ZOOM_RATIO of the map (a 4 GiB host whose
#: TDs use a few regions showed one corner cell of 2,048), to at least MIN_SPAN regions.
ZOOM_RATIO, MIN_SPAN = 8, 64


def active_span(
    nr_regions: int, active: npt.NDArray[np.bool_], changed: Sequence[int] = ()
) -> tuple[int, int] | None:
    """The regions ``[lo, hi)`` from the first to the last one with activity (a page in use, a
    pair, a change now), or None when there is none."""
    idx = np.flatnonzero(active[:nr_regions])
    points = [int(idx[0]), int(idx[-1])] if idx.size else []
    points += [int(r) for r in changed if 0 <= r < nr_regions]
    if not points:
        return None
    return min(points), max(points) + 1


def replay_span(*timelines: Timeline) -> tuple[int, int] | None:
    """The regions from the first to the last one any step of these replays touches (a page's
    owner, a refcount, a pair, an orphan), for :func:`region_map`'s ``span``: one span for a
    whole replay, and one for the replays Compare shows side by side, so their cells line up."""
    spans = [s for s in (tl.touched_span() for tl in timelines) if s is not None]
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans)


def shown_regions(
    nr_regions: int, span: tuple[int, int] | None, width: int | None, height: int | None
) -> tuple[int, int]:
    """The regions ``[base, end)`` the map draws: all of them, or, when the activity spans at
    most 1/:data:`ZOOM_RATIO` of the map, that span (at least :data:`MIN_SPAN`), starting at a
    row boundary so that "region = row x columns + column" still holds."""
    if span is None or (span[1] - span[0]) * ZOOM_RATIO > nr_regions:
        return 0, nr_regions
    lo, hi = span
    m = max(hi - lo, MIN_SPAN)
    cols = map_geometry(m, width, height)[0]
    base = lo - lo % cols
    end = min(nr_regions, max(hi, base + m))
    return base, end


def map_geometry(
    nr_regions: int, width: int | None = None, height: int | None = None
) -> tuple[int, int, int, float, float]:
    """(columns, rows, figure height, plot-area width, plot-area height) in px of the map of
    ``nr_regions`` in a figure ``width`` px wide (default DEFAULT_WIDTH). With ``height`` given,
    the columns follow the plot area's aspect; without, the columns follow a preferred aspect and
    the height is sized so the cells are square (within MIN/MAX_PLOT_HEIGHT)."""
    w = width if width is not None else DEFAULT_WIDTH
    narrow = w < NARROW_WIDTH
    pw = max(40.0, w - MARGIN["l"] - MARGIN["r"] - COLORBAR_PX["compact" if narrow else "full"])
    if height is not None:
        ph = max(40.0, height - MARGIN["t"] - MARGIN["b"])
        cols = grid_width(nr_regions, pw / ph)
        rows = -(-max(nr_regions, 1) // cols)
        return cols, rows, height, pw, ph
    cols = grid_width(nr_regions, NARROW_ASPECT if narrow else WIDE_ASPECT)
    rows = -(-max(nr_regions, 1) // cols)
    ph = min(MAX_PLOT_HEIGHT, max(MIN_PLOT_HEIGHT, pw * rows / cols))
    return cols, rows, round(ph) + MARGIN["t"] + MARGIN["b"], pw, ph


def region_map(
    snapshot: Snapshot,
    changed: Sequence[int] = (),
    color_by: str = "dpamt",
    arrays: RegionArrays | None = None,
    title: str | None = None,
    height: int | None = None,
    *,
    width: int | None = None,
    theme: str = "light",
    span: tuple[int, int] | None = None,
) -> go.Figure:
    """The map for ``snapshot``; ``changed`` regions are outlined.

    ``span``: the regions with activity over the whole replay (:func:`replay_span`, or
    :func:`active_span` of one state); when it is a small part of a big map, only that span is
    drawn (:func:`shown_regions`; the title says which regions), the rows keeping their numbers,
    so a cell is still region row x columns + column. It is the replay's, not the step's: a map
    zoomed on each step's own activity changed its grid as the activity grew, moving every
    cell under a viewer stepping through it. None: the whole map.

    ``theme``: ``light`` or ``dark`` (the app's, ``st.context.theme.type``): free cells, most of
    a map, are a dim grey on a dark theme instead of a bright block, and the outlines white.

    ``width``: the figure's width in px where the app shows it (default DEFAULT_WIDTH; the
    figure still stretches to its container). ``height``: the figure's height in px, or None to
    size it from the rows. The columns are chosen for near-square cells in that box, and the
    axes span exactly the grid, so the data fills the plot area at any size and any real width.
    """
    check_theme(theme)
    a = arrays if arrays is not None else region_arrays(snapshot)
    n = snapshot.nr_regions
    base, end = shown_regions(n, span, width, height)
    m = end - base
    w, _, fig_height, pw, ph = map_geometry(m, width, height)
    if base % w:  # the span's own columns (a power of two) start base on a row boundary
        w = math.gcd(w, base)
    row0 = base // w
    rows = -(-m // w)
    narrow = (width if width is not None else DEFAULT_WIDTH) < NARROW_WIDTH
    if color_by == "owner":
        codes, names = a.owner, [name for name in OWNERS]
        by_owner = owner_colours(theme)
        colours = [by_owner[name] for name in OWNERS]
        legend = "owner" if narrow else "dominant owner of the region's pages"
        short = names  # already short
    elif color_by == "dpamt":
        codes, names = a.state, [name for name, _, _ in DPAMT_STATES]
        colours = dpamt_colours(theme)
        legend = "state" if narrow else "DPAMT state"
        short = list(SHORT_STATES)
    else:
        raise ValueError("color_by must be 'dpamt' or 'owner'")
    z = _grid(codes[base:end], w)
    k = len(colours)
    colorbar: dict[str, object] = {
        "title": {"text": legend},
        "tickvals": list(range(k)),
        "ticktext": short if narrow else names,
        "len": 1.0,
        "y": 0.5,
        "yanchor": "middle",
    }
    if narrow:
        colorbar.update(thickness=10, tickfont={"size": 10}, xpad=4)
        colorbar["title"] = {"text": legend, "font": {"size": 10}}
    else:
        colorbar.update(thickness=16)
    heat: dict[str, object] = {
        "z": z,
        "zmin": -0.5,
        "zmax": k - 0.5,
        "colorscale": discrete_scale(colours),
        "showscale": True,
        "colorbar": colorbar,
        "name": "regions",
        "x0": 0,
        "dx": 1,
        "y0": row0,
        "dy": 1,
    }
    if m <= HOVER_TEXT_LIMIT:
        idx = range(base, end)
        refc = a.refcount
        pairs = snapshot.pairs
        text = [
            f"region {r} ({r << 21:#x})<br>{names[int(codes[r])]}<br>refcount {int(refc[r])}"
            + (f"<br>pair {pairs[r][0]:#x}, {pairs[r][1]:#x}" if r in pairs else "")
            + f"<br>{int(a.used[r])} of 512 pages in use"
            for r in idx
        ]
        text += [""] * (z.size - m)
        heat["text"] = np.array(text, dtype=object).reshape(z.shape)
        heat["hovertemplate"] = "%{text}<extra></extra>"
    else:
        heat["hovertemplate"] = (
            f"row %{{y}}, column %{{x}}: region = row x {w} + column<br>state %{{z}}<extra></extra>"
        )
    fig = go.Figure(go.Heatmap(**heat))
    if changed:
        ch = np.asarray(sorted(set(changed)), dtype=np.int64)
        ch = ch[(ch >= base) & (ch < end)]
        cell = min(pw / w, ph / rows)
        fig.add_trace(
            go.Scatter(
                x=(ch % w).tolist(),
                y=(ch // w).tolist(),
                mode="markers",
                marker={
                    "symbol": "square-open",
                    "size": int(min(14, max(8, cell))),
                    "line": {"width": 3 if cell >= 10 else 2},
                    "color": ink(theme),
                },
                name="changed by this step",
                hovertemplate="region %{customdata} changed<extra></extra>",
                customdata=ch.tolist(),
                cliponaxis=False,
            )
        )
    fig.update_layout(
        title={
            "text": _title(title, n, base, end),
            "font": {"size": 13 if narrow else 16},
        },
        xaxis={
            "title": f"region mod {w}",
            "range": [-0.5, w - 0.5],
            "autorange": False,
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "title": f"region div {w}",
            # rows go down: an explicit reversed range (what autorange "reversed" would give)
            "range": [row0 + rows - 0.5, row0 - 0.5],
            "autorange": False,
            "showgrid": False,
            "zeroline": False,
        },
        legend={"orientation": "h", "y": -0.15},
        showlegend=False,
        margin=dict(MARGIN),
        uirevision="region-map",
        height=fig_height,
    )
    return fig


def _title(title: str | None, n: int, base: int, end: int) -> str:
    """The map's title; a zoomed map names its span (short: it shares a line with the chart)."""
    if end - base == n:
        return title or f"Host memory: {n:,} regions of 2 MiB ({n * 2:,} MiB)"
    span = f"regions {base:,}-{end - 1:,} of {n:,}"
    return f"{title} ({span})" if title else f"Host memory: {span} (2 MiB each; the rest free)"


def region_map_stats(nr_regions: int, seed: int = 0) -> dict[str, float]:
    """Build time (s) and JSON payload (bytes) of a map of ``nr_regions`` with realistic content,
    for the benchmark."""
    from explorer.model.records import OWNERS as _OWNERS
    from explorer.model.settings import Settings

    rng = np.random.default_rng(seed)
    used = rng.choice(nr_regions, size=max(1, nr_regions // 4), replace=False)
    counts = tuple([0] * len(_OWNERS))
    region_owners = {}
    for r in used.tolist():
        c = list(counts)
        c[0], c[7] = 256, 256
        region_owners[r] = tuple(c)
    snapshot = Snapshot(
        step=0,
        event=0,
        settings=Settings(host_memory_mib=nr_regions * 2),
        nr_regions=nr_regions,
        region_owners=region_owners,
        refcount={r: 256 for r in used.tolist()},
        pairs={r: (0, 1) for r in used.tolist()},
        orphans={},
        vcpus=(),
        tds=(),
        cpus=(),
        pamt_lock=None,
        mmu_lock_writer=None,
        mmu_lock_readers=(),
        counters={},
        pages={},
        injections={},
    )
    t0 = time.perf_counter()
    arrays = region_arrays(snapshot)
    fig = region_map(snapshot, changed=used[:3].tolist(), arrays=arrays)
    build = time.perf_counter() - t0
    payload = len(fig.to_json())
    return {"regions": nr_regions, "build_s": build, "json_bytes": payload}
