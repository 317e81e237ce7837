"""Views: the figures carry the engine's numbers (checked on real snapshots from the samples)."""

import itertools
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.replay.timeline import replay
from explorer.views.about import overhead_figure, region_diagram
from explorer.views.animation import animation_figure, animation_html
from explorer.views.caches import kvm_caches_figure, pamt_cache_figure
from explorer.views.changes import diff_snapshots, effects_table
from explorer.views.code import code_panel, lock_summary
from explorer.views.frames import region_arrays, regions_in_play
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
    rows = {tuple(r) for r in table.to_numpy()}
    assert ("refcount", "refcount[64]", "1", "2") in rows
    assert ("counter", "pamt_lost_race", "0", "1") in rows  # counters show old -> new too
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


def test_stack_labels_label_runs_not_every_page() -> None:
    from explorer.views.caches import MAX_STACK_LABELS, stack_labels

    forty = stack_labels([0] * 40)  # kvm-style-cache: 40 pages of region 0
    assert [t for t in forty if t] == ["r0 x39", "r0"]
    assert forty[-1] == "r0"  # the top (next pop) is always labelled
    assert stack_labels([0, 0, 64, 64, 1]) == ["r0 x2", "", "r64 x2", "", "r1"]
    many = stack_labels(list(range(40)))
    placed = [i for i, t in enumerate(many) if t]
    assert len(placed) <= MAX_STACK_LABELS and many[-1] == "r39"
    assert min(b - a for a, b in itertools.pairwise(placed)) >= 4
    assert stack_labels([]) == []


def test_pamt_cache_narrow_title_and_few_labels_for_a_kvm_style_cache() -> None:
    trace = parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")
    settings = resolve_settings(trace, []).with_overrides({"mode": "kvm-style-cache"})
    tl = replay(trace.events, settings)
    s = tl.state_at(tl.nr_steps - 1)
    fig = pamt_cache_figure(s, narrow=True)
    assert "<br>" in fig.layout.title.text and fig.layout.margin.t >= 60
    bars = fig.data[0]
    per_vcpu = max(len(v.pamt_cache) for v in s.vcpus)
    assert per_vcpu > 12  # the fill-to-40 rule
    assert sum(1 for t in bars.text if t) <= 2 * len(s.vcpus) * 12
    assert sum(1 for t in bars.text if t) < len(bars.text) / 2
    assert fig.layout.yaxis.tickformat == ",d"
    labels = fig.data[-1]  # the run labels, centred on their runs
    assert labels.mode == "text" and sorted(labels.text) == sorted(t for t in bars.text if t)


def test_sweep_lines_are_told_apart_and_counts_have_integer_ticks() -> None:
    from explorer.views.sweep import count_axis, overlaps, sweep_figure

    rows = [
        {
            "setting.dpamt_gets_per_fault": g,
            "setting.mode": m,
            "idle_pages_peak": 2 * g,
            "retries": 0,
            "livelocks": 1 if g == 0 else 0,
            "pairs_peak": 2,
        }
        for m in ("v6", "mempool")
        for g in range(3)
    ]
    fig = sweep_figure(rows, "setting.dpamt_gets_per_fault", "setting.mode")
    v6, mempool = fig.data[0], fig.data[4]
    assert v6.line.dash != mempool.line.dash and v6.marker.symbol != mempool.marker.symbol
    assert v6.line.width > mempool.line.width  # the line underneath shows around the one on top
    notes = [a.text for a in fig.layout.annotations if "same line" in a.text]
    assert all("same line: v6 = mempool" in n for n in notes) and len(notes) == 4
    for axis in ("yaxis", "yaxis2", "yaxis3", "yaxis4", "xaxis"):
        assert fig.layout[axis].tickformat == ",d"
    assert fig.layout.yaxis3.dtick == 1  # livelocks 0..1: no 0.5 tick
    assert count_axis([0, 0])["dtick"] == 1 and "dtick" not in count_axis([0, 300])
    assert overlaps({"a": [1, 2], "b": [1, 2], "c": [0]}) == [["a", "b"]]


def test_memory_tables_quote_the_cover_letter() -> None:
    from explorer.designs.overhead import GIB, max_pfn_at, overhead
    from explorer.views.about import (
        cover_letter_markdown,
        cover_letter_table,
        overhead_table,
        overhead_verdict,
    )

    table = cover_letter_table()
    assert list(table["DPAMT (published, GB)"]) == ["0.01", "8.01", "0.08", "8.08"]
    assert list(table["DPAMT (ours)"])[1] == "8.01 GB"
    md = cover_letter_markdown()
    assert md.count("\n| ") == 4 and "costs more" in md and "(8x)" in md
    o = overhead(256 * GIB, 0, max_pfn_at(52))
    parts = overhead_table(o)
    assert parts.iloc[3]["size"] == "8.00 GB" and parts.iloc[3]["bytes"] == "8,589,934,592 B"
    assert "MORE" in overhead_verdict(o)
    assert "saves" in overhead_verdict(overhead(256 * GIB, 0))


def test_cache_chart_before_any_vcpu_is_empty_and_labelled(race) -> None:  # type: ignore[no-untyped-def]
    tl, _ = race
    s = tl.state_at(0)
    assert not [v for v in s.vcpus if v.alive]
    fig = pamt_cache_figure(s)
    assert all("no vCPU" not in list(t.x or []) for t in fig.data)  # no dummy column, no stub
    assert any("no vCPU yet" in a.text for a in fig.layout.annotations)


def test_over_time_puts_each_unit_on_its_own_axis_and_levels_in_the_legend(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    s = tl.state_at(i)
    x = list(tl.series_x())
    fig = dpamt_over_time_figure(
        x, list(tl.series["pairs"]), list(tl.series["leaked_pages"]), s.nr_regions, cursor=i
    )
    pairs = [t for t in fig.data if t.yaxis == "y"]
    mib = [t for t in fig.data if t.yaxis == "y2"]
    assert [t.name for t in pairs] == ["PAMT pairs installed"]
    assert all("MiB" in t.name for t in mib) and len(mib) == 2  # DPAMT and static, one axis
    names = {t.name for t in kvm_caches_figure(s).data}
    assert "min = worst_case_tables = 5" in names and "capacity 40" in names
    assert not kvm_caches_figure(s).layout.annotations  # no label over a bar


def _luminance(colour: str) -> float:
    """Relative luminance (WCAG) of ``#RRGGBB``."""
    rgb = [int(colour[k : k + 2], 16) / 255 for k in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _free_scale_colour(fig: go.Figure) -> str:
    return str(fig.data[0].colorscale[0][1])  # code 0: free


@pytest.mark.parametrize("color_by", ["dpamt", "owner"])
def test_the_map_follows_a_dark_theme(race, color_by: str) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    snap = tl.state_at(i)
    dark = region_map(snap, [1], color_by=color_by, theme="dark")
    light = region_map(snap, [1], color_by=color_by)
    # free cells, most of a map, are dim on a dark page and stay light on a light one
    assert _luminance(_free_scale_colour(dark)) < 0.1
    assert _luminance(_free_scale_colour(light)) > 0.7
    # the outline of the changed cells reads on the dark page
    assert _luminance(dark.data[1].marker.color) > 0.7
    with pytest.raises(ValueError, match="theme"):
        region_map(snap, theme="blue")


def test_the_caches_and_abouts_grid_follow_a_dark_theme(race) -> None:  # type: ignore[no-untyped-def]
    tl, i = race
    snap = tl.state_at(i)
    grid = region_diagram(3, theme="dark")
    assert _luminance(str(grid.data[0].colorscale[0][1])) < 0.1
    assert _luminance(str(region_diagram(3).data[0].colorscale[0][1])) > 0.7
    bars = pamt_cache_figure(snap, theme="dark").data[0]
    assert _luminance(bars.marker.line.color) < 0.1  # no white ladder between the pages
    assert pamt_cache_figure(snap).data[0].marker.line.color.upper() == "#FFFFFF"
