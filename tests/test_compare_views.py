"""Compare's side-by-side figures: one y range for every side's caches, maps whose colour bar
keeps its own room in a column."""

from pathlib import Path

import pytest

from explorer.ingest import parse_trace
from explorer.model.records import Snapshot
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from explorer.views.caches import cache_top, pamt_cache_figure
from explorer.views.region_map import (
    COLORBAR_PX,
    MARGIN,
    NARROW_WIDTH,
    SHORT_STATES,
    colorbar_px,
    column_width,
    map_geometry,
    region_map,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _end(mode: str) -> Snapshot:
    trace = parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")
    settings = Settings().with_overrides(trace.settings).with_overrides({"mode": mode})
    tl = replay(trace.events, settings)
    return tl.state_at(tl.nr_steps - 1)


def test_the_sides_caches_share_one_y_range() -> None:
    v6, kvm = _end("v6"), _end("kvm-style-cache")
    assert cache_top(v6) < cache_top(kvm)  # 10 against 40: the case the shared range is for
    top = max(cache_top(v6), cache_top(kvm))
    ranges = [
        tuple(pamt_cache_figure(s, narrow=True, y_top=top).layout.yaxis.range) for s in (v6, kvm)
    ]
    assert ranges[0] == ranges[1] == (0, top)
    # alone, each keeps its own (and a y_top too small never cuts a stack)
    assert tuple(pamt_cache_figure(v6).layout.yaxis.range) == (0, cache_top(v6))
    assert tuple(pamt_cache_figure(kvm, y_top=2).layout.yaxis.range) == (0, cache_top(kvm))


@pytest.mark.parametrize("columns", [1, 2, 3, 4])
def test_side_by_side_maps_keep_their_colour_bar_off_the_map(columns: int) -> None:
    snap = _end("v6")
    width = column_width(columns)
    # the columns and their gaps fill the page's content, no more
    assert columns * width <= 1000
    fig = region_map(snap, title="regions", width=width)
    bar = fig.data[0].colorbar
    compact = width < NARROW_WIDTH
    assert list(bar.ticktext) == (list(SHORT_STATES) if compact else list(bar.ticktext))
    room = COLORBAR_PX["compact" if compact else "full"]
    # the colour bar's labels fit in the room the map leaves it right of the plot area
    assert colorbar_px(bar.ticktext, compact) <= room
    _, _, _, pw, _ = map_geometry(snap.nr_regions, width)
    assert pw + MARGIN["l"] + MARGIN["r"] + room <= width
    assert pw >= width / 3  # the map, not its legend, takes the most room
