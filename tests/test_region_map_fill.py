"""The region map fills its axes at every size (issue 16): from 16 regions to 524,288, in the
Explore page's main map and in a third of the Compare designs page.

The axis ranges are computed the way Plotly would: an explicit layout range is used as set;
otherwise the axis autoranges to the heatmap's cells, and ``scaleanchor`` (with the default
``constrain: "range"``) then widens one range until a data unit has the same length in px on
both axes, in the plot area the figure leaves after its margins and its colour bar.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.model.records import OWNERS, Snapshot
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from explorer.views.frames import region_arrays
from explorer.views.region_map import active_span, region_map, replay_span, shown_regions

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"
SIZES = [16, 128, 1024, 32_768, 524_288]
#: (figure width in px where the app shows the map, height the caller passes)
EXPLORE = (600, 300)  # left 3/5 of a wide page at 1440 px; app_pages/explore.py passes 300
COMPARE = (320, None)  # a third of the page; app_pages/compare.py passes no height
PLOTLY_DEFAULT_HEIGHT = 450


def _snapshot(n: int, seed: int = 0) -> Snapshot:
    rng = np.random.default_rng(seed)
    used = rng.choice(n, size=max(1, n // 4), replace=False).tolist()
    owners = {}
    for r in used:
        c = [0] * len(OWNERS)
        c[0], c[7] = 256, 256
        owners[r] = tuple(c)
    return Snapshot(
        step=0,
        event=0,
        settings=Settings(host_memory_mib=n * 2),
        nr_regions=n,
        region_owners=owners,
        refcount={r: 1 + (r % 70) for r in used},
        pairs={r: (r << 21, (r << 21) + 4096) for r in used},
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


def _heat(fig: go.Figure) -> Any:
    heats = [t for t in fig.data if t.type == "heatmap"]
    assert len(heats) == 1
    return heats[0]


def _colorbar_px(heat: Any) -> float:
    """Room the colour bar takes right of the plot area (Plotly widens the margin for it)."""
    if heat.showscale is False:
        return 0.0
    cb = heat.colorbar
    thickness = cb.thickness if cb.thickness is not None else 30
    size = cb.tickfont.size if cb.tickfont.size is not None else 12
    labels = list(cb.ticktext) if cb.ticktext is not None else ["0"]
    title = cb.title.text or ""
    label_px = 0.6 * size * max(len(str(t)) for t in labels)
    return 10 + thickness + 3 + max(label_px, 0.6 * size * len(title) / 2) + 10


def _plot_area(fig: go.Figure, fig_width: int) -> tuple[float, float]:
    lay = fig.layout
    m = lay.margin
    left = m.l if m.l is not None else 80
    right = m.r if m.r is not None else 80
    top = m.t if m.t is not None else 100
    bottom = m.b if m.b is not None else 80
    height = lay.height if lay.height is not None else PLOTLY_DEFAULT_HEIGHT
    pw = fig_width - left - right - _colorbar_px(_heat(fig))
    ph = height - top - bottom
    return pw, ph


def _extent(heat: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    rows, cols = np.asarray(heat.z).shape
    x0 = heat.x0 if heat.x is None and heat.x0 is not None else 0
    y0 = heat.y0 if heat.y is None and heat.y0 is not None else 0
    if heat.x is not None:
        xs = np.asarray(heat.x, dtype=float)
        x0, cols = xs[0], len(xs)
    if heat.y is not None:
        ys = np.asarray(heat.y, dtype=float)
        y0, rows = ys[0], len(ys)
    return (x0 - 0.5, x0 + cols - 0.5), (y0 - 0.5, y0 + rows - 0.5)


def _axis_ranges(fig: go.Figure, fig_width: int) -> tuple[list[float], list[float]]:
    lay = fig.layout
    (x_lo, x_hi), (y_lo, y_hi) = _extent(_heat(fig))
    ranges = []
    for ax, lo, hi in ((lay.xaxis, x_lo, x_hi), (lay.yaxis, y_lo, y_hi)):
        if ax.range is not None and ax.autorange in (None, False):
            ranges.append([float(ax.range[0]), float(ax.range[1])])
        else:
            ranges.append([hi, lo] if ax.autorange == "reversed" else [lo, hi])
    xr, yr = ranges
    if lay.yaxis.scaleanchor == "x" and lay.yaxis.constrain != "domain":
        pw, ph = _plot_area(fig, fig_width)
        span_x, span_y = abs(xr[1] - xr[0]), abs(yr[1] - yr[0])
        ppu = min(pw / span_x, ph / span_y)  # px per data unit on both axes
        for r, length in ((xr, pw), (yr, ph)):
            mid, half = (r[0] + r[1]) / 2, length / ppu / 2
            sign = 1 if r[1] >= r[0] else -1
            r[0], r[1] = mid - sign * half, mid + sign * half
    return xr, yr


def _fill(fig: go.Figure, fig_width: int) -> tuple[float, float]:
    """Share of each axis range covered by the heatmap's cells."""
    xr, yr = _axis_ranges(fig, fig_width)
    out = []
    for r, (lo, hi) in zip((xr, yr), _extent(_heat(fig)), strict=True):
        a, b = min(r), max(r)
        out.append(max(0.0, min(b, hi) - max(a, lo)) / (b - a))
    return out[0], out[1]


def _check(fig: go.Figure, fig_width: int, n: int) -> None:
    fx, fy = _fill(fig, fig_width)
    assert fx >= 0.9 and fy >= 0.9, f"{n} regions at {fig_width} px: fills {fx:.0%} x {fy:.0%}"
    heat = _heat(fig)
    z = np.asarray(heat.z)
    assert z.size >= n and z.size - n < z.shape[1]  # every region, at most one partial row
    # cells are square-ish, or at least readable (neither side more than 2.5x the other)
    pw, ph = _plot_area(fig, fig_width)
    cell = (pw / z.shape[1]) / (ph / z.shape[0])
    assert 0.4 <= cell <= 2.5, f"{n} regions at {fig_width} px: cell aspect {cell:.2f}"
    # the colour bar does not crowd the map: the plot area keeps most of the figure
    height = fig.layout.height if fig.layout.height is not None else PLOTLY_DEFAULT_HEIGHT
    assert pw >= 0.45 * fig_width, f"{n} regions at {fig_width} px: plot {pw:.0f} px wide"
    assert ph >= 0.4 * height


@pytest.mark.parametrize("n", SIZES)
def test_explore_map_fills_its_axes(n: int) -> None:
    width, height = EXPLORE
    s = _snapshot(n)
    # as app_pages/explore.py calls it (no width: the default is the Explore page's)
    _check(region_map(s, [1, n - 1], height=height), width, n)
    _check(region_map(s, [1, n - 1], color_by="owner", height=height, width=width), width, n)


@pytest.mark.parametrize("n", SIZES)
def test_compare_map_fills_its_axes(n: int) -> None:
    width, height = COMPARE
    s = _snapshot(n)
    fig = region_map(s, title="regions after event 3", height=height, width=width)
    _check(fig, width, n)
    assert fig.layout.height is not None  # sized from the rows, not Plotly's 450 px default


@pytest.mark.parametrize("n", SIZES)
def test_default_call_fills_its_axes(n: int) -> None:
    # app_pages/compare.py passes neither width nor height: whatever width the figure gets, its
    # axes span exactly the grid
    fig = region_map(_snapshot(n), title="regions after event 3")
    for width in (320, 600, 900):
        fx, fy = _fill(fig, width)
        assert fx >= 0.9 and fy >= 0.9


def test_workload_two_tds_fills_its_axes() -> None:
    trace = parse_trace((SAMPLES / "workload_two_tds.jsonl").read_bytes(), "workload_two_tds")
    tl = replay(trace.events, resolve_settings(trace, []))
    i = tl.nr_steps // 2
    snap = tl.state_at(i)
    assert snap.nr_regions == 1024
    changed = tl.changed_regions(i)
    # the whole map (no span), and the span with activity
    for zoom in (False, True):
        shown = snap.nr_regions
        span = None
        if zoom:
            a = region_arrays(snap)
            span = active_span(snap.nr_regions, (a.state != 0) | (a.used > 0), changed)
            base, end = shown_regions(snap.nr_regions, span, None, 300)
            shown = end - base
        fig = region_map(snap, changed, height=300, span=span)
        _check(fig, EXPLORE[0], shown)
        _check(region_map(snap, title="after", width=COMPARE[0], span=span), COMPARE[0], shown)


def _four_gib(used: list[int]) -> Snapshot:
    """A 4 GiB host (2,048 regions) whose TD uses a page of each region in ``used``."""
    owners = {}
    for r in used:
        c = [0] * len(OWNERS)
        c[0], c[OWNERS.index("guest")] = 511, 1
        owners[r] = tuple(c)
    return replace(
        _snapshot(16),
        settings=Settings(host_memory_mib=4096),
        nr_regions=2048,
        region_owners=owners,
        refcount={r: 1 for r in used},
        pairs={r: (r << 21, (r << 21) + 4096) for r in used},
    )


@pytest.mark.parametrize("used", [[0, 1, 2], [1500, 1503], [700, 702, 760]])
def test_a_4_gib_map_shows_the_span_with_activity(used: list[int]) -> None:
    s = _four_gib(used)
    fig = region_map(s, [used[-1]], height=300, span=(min(used), max(used) + 1))
    heat = _heat(fig)
    z = np.asarray(heat.z, dtype=float)
    # the active regions are a visible share of the cells drawn, not one corner cell of 2,048
    assert z.size <= 2048 // 8 and z.size >= 64
    assert np.count_nonzero(np.nan_to_num(z) != 0) == len(used)
    cols = z.shape[1]
    base = int(heat.y0) * cols
    assert f"regions {base:,}-" in fig.layout.title.text and "of 2,048" in fig.layout.title.text
    # every active region is at its cell: row y0 + r, column c is region (y0 + r) x cols + c
    for r in used:
        assert z[r // cols - int(heat.y0), r % cols] != 0
        assert f"region {r} " in heat.text[r // cols - int(heat.y0)][r % cols]
    outline = fig.data[1]
    assert (outline.x[0], outline.y[0]) == (used[-1] % cols, used[-1] // cols)
    _check(fig, EXPLORE[0], z.size - int(np.isnan(z).sum()))
    # spread activity, or no span: the whole map
    assert np.asarray(_heat(region_map(s)).z).size >= 2048
    assert np.asarray(_heat(region_map(_four_gib([0, 2000]), span=(0, 2001))).z).size >= 2048


@pytest.mark.parametrize("sample", ["cold_5level", "cache_too_small", "td_lifecycle"])
def test_a_replay_is_drawn_on_one_span_at_every_step(sample: str) -> None:
    """The map of every step of a replay shows the same regions (the replay's span), and that
    span holds every region any step changes: a map zoomed on each step's own activity moved
    its cells as the activity grew."""
    trace = parse_trace((SAMPLES / f"{sample}.jsonl").read_bytes(), sample)
    tl = replay(trace.events, resolve_settings(trace, []))
    span = replay_span(tl)
    assert span is not None
    grids = set()
    for i in range(0, tl.nr_steps, max(1, tl.nr_steps // 12)):
        changed = tl.changed_regions(i)
        assert all(span[0] <= r < span[1] for r in changed)
        heat = _heat(region_map(tl.state_at(i), changed, height=300, span=span))
        grids.add((np.asarray(heat.z).shape, float(heat.y0)))
    assert len(grids) == 1
    if sample == "cold_5level":  # 2,048 regions, activity in the first few dozen: zoomed
        assert tl.state_at(0).nr_regions == 2048
        assert np.prod(grids.pop()[0]) <= 2048 // 8


def test_hover_and_outline_follow_the_grid() -> None:
    n = 1024
    s = _snapshot(n)
    fig = region_map(s, [5, 1000], height=300)
    heat = _heat(fig)
    z = np.asarray(heat.z)
    cols = z.shape[1]
    outline = fig.data[1]
    assert list(outline.customdata) == [5, 1000]
    assert list(outline.x) == [5 % cols, 1000 % cols] and list(outline.y) == [0, 1000 // cols]
    assert heat.text[1000 // cols][1000 % cols].startswith("region 1000 ")
    assert f"region mod {cols}" == fig.layout.xaxis.title.text
    big = region_map(_snapshot(524_288), [7], height=300)
    h = _heat(big)
    assert h.text is None and h.xgap is None and h.ygap is None
    assert np.asarray(h.z).dtype == np.int8  # the fast path: 1 byte a cell
    assert f"x {np.asarray(h.z).shape[1]} + column" in h.hovertemplate
