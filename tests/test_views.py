"""Views: the figures carry the engine's numbers (checked on real snapshots from the samples)."""

from pathlib import Path

import numpy as np
import pytest

from explorer.cli import resolve_settings
from explorer.frames import region_arrays, regions_in_play
from explorer.timeline import replay
from explorer.trace import parse_trace
from explorer.views.about import overhead_figure, region_diagram
from explorer.views.animation import animation_figure, animation_html
from explorer.views.caches import kvm_caches_figure, pamt_cache_figure
from explorer.views.changes import diff_snapshots, effects_table
from explorer.views.code import code_panel, lock_summary
from explorer.views.refcounts import dpamt_over_time_figure, refcount_figure
from explorer.views.region_map import grid_width, region_map, region_map_stats

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


@pytest.fixture(scope="module")
def race():  # type: ignore[no-untyped-def]
    trace = parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")
    tl = replay(trace.events, resolve_settings(trace, []))
    i = tl.find("lost_race", 0, 1)
    assert i is not None
    return tl, i


def test_region_map_colours_regions_by_dpamt_state(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    s = tl.state_at(i)
    fig = region_map(s, changed=tl.changed_regions(i))
    heat = fig.data[0]
    w = grid_width(s.nr_regions)
    z = np.asarray(heat.z)
    assert z.shape == (s.nr_regions // w, w)
    assert z[64 // w, 64 % w] == 2  # region 64: pair installed, refcount 2 after the lost race
    assert z[0, 0] == 3  # region 0: control pages, tables, guest pages: refcount 4..63
    assert z[127 // w, 127 % w] == 0  # untouched
    outline = fig.data[1]
    assert list(outline.customdata) == [64]  # the lost race changed region 64's refcount
    assert "region 64" in heat.text[64 // w][64 % w] and "refcount 2" in heat.text[64 // w][64 % w]
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_region_map_by_owner_and_bad_mode(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    s = tl.state_at(i)
    a = region_arrays(s)
    assert a.owner[64] == 7  # guest pages dominate region 64
    fig = region_map(s, color_by="owner")
    assert "owner" in fig.data[0].colorbar.title.text and "guest" in fig.data[0].colorbar.ticktext
    with pytest.raises(ValueError):
        region_map(s, color_by="rainbow")


@pytest.mark.parametrize("n", [32768, 524288])
def test_big_maps_stay_compact(n: int) -> None:
    stats = region_map_stats(n)
    assert stats["json_bytes"] < 2 * n  # about 1 byte a region (int8 z, base64) plus the frame


def test_pamt_cache_shows_the_stack_and_the_target(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    s = tl.state_at(i)
    fig = pamt_cache_figure(s)
    bars, target = fig.data[0], fig.data[1]
    per_vcpu = {v.vcpu: len(v.pamt_cache) for v in s.vcpus}
    assert sorted(per_vcpu.values()) == [
        8,
        8,
    ]  # both popped a pair: the loser's went to the allocator
    assert len(bars.x) == 16
    top = s.vcpus[0].pamt_cache[-1]
    assert f"r{top >> 9}" in bars.text
    assert list(target.y) == [10, 10]
    assert kvm_caches_figure(s).data[0].y is not None


def test_refcounts_and_time_series(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    s = tl.state_at(i)
    df = regions_in_play(s)
    assert list(df["region"]) == [0, 64] and list(df["refcount"])[1] == 2
    fig = refcount_figure(s, changed=[64])
    assert list(fig.data[0].y) == list(df["refcount"])
    x = list(tl.series_x())
    f2 = dpamt_over_time_figure(
        x, list(tl.series["pairs"]), list(tl.series["leaked_pages"]), s.nr_regions, cursor=i
    )
    assert list(f2.data[0].y)[-1] == 2  # two pairs at the end: regions 0 and 64


def test_effects_diff_and_code_panel(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    step = tl.step(i)
    table = effects_table(step)
    assert ("refcount", "refcount[64]", "1", "2") in {tuple(r) for r in table.to_numpy()}
    diff = diff_snapshots(tl.state_at(i - 1), tl.state_at(i))
    assert set(diff["item"]) >= {"refcount[64]", "counter.pamt_lost_race"}
    panel = {c.cpu: c for c in code_panel(tl.state_at(i))}
    me = panel[step.cpu]
    assert me.function == "tdx_pamt_get" and me.current is not None
    assert "=> " in me.listing() and "atomic_inc(refcount)" in me.lines[me.current]
    assert any("pamt_lock" in line for line in lock_summary(tl.state_at(i)))


def test_animation_has_a_frame_per_step_and_exports(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    window = [
        (tl.state_at(k), tl.changed_regions(k), tl.step(k).label) for k in range(i - 5, i + 5)
    ]
    fig = animation_figure(window)
    assert len(fig.frames) == 10
    assert fig.layout.updatemenus[0].buttons[0].label == "Play"
    assert len(fig.layout.sliders[0].steps) == 10
    html = animation_html(fig)
    assert "<html>" in html[:100] and "Plotly.newPlot" in html and len(html) > 1_000_000


def test_about_diagrams() -> None:
    assert len(region_diagram(3).layout.shapes) == 2
    fig = overhead_figure()
    assert list(fig.data[0].y) == [1.02, 8.19] and list(fig.data[1].y) == [0.01, 0.08]
