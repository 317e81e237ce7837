"""Exports for slides: the animation's narration and code, slide-size image export, the handout."""

from __future__ import annotations

import html
import json
import re
from itertools import combinations
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.ingest import parse_trace
from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline, replay
from explorer.teaching.handout import PLOTLYJS_ID, tour_handout_html
from explorer.teaching.tours import resolve, tour_for
from explorer.views.animation import NBSP, animation_figure, animation_html
from explorer.views.code import code_panel
from explorer.views.export import slide_config

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")


def _lost_race() -> tuple[Timeline, Settings]:
    path = ROOT / "sample_traces" / "lost_race.jsonl"
    trace = parse_trace(path.read_bytes(), path.name)
    settings = Settings().with_overrides(trace.settings)
    return replay(trace.events, settings), settings


def _plain(cell: str) -> str:
    """A Plotly text cell as the reader sees it."""
    text = re.sub(r"</?b>", "", cell).replace("<br>", "\n").replace(NBSP, " ")
    return html.unescape(text)


# ------------------------------------------------------------------ animation
def test_animation_frames_carry_each_steps_narration_and_code() -> None:
    tl, _ = _lost_race()
    lo, hi = 0, min(30, tl.nr_steps)
    window = [(tl.state_at(k), tl.changed_regions(k), tl.step(k).narration) for k in range(lo, hi)]
    fig = animation_figure(window, [tl.step(k).cpu for k in range(lo, hi)])
    assert len(fig.frames) == hi - lo
    for k, frame in zip(range(lo, hi), fig.frames, strict=True):
        step = tl.step(k)
        table = frame.data[3]
        assert table.type == "table"
        narration, code = (_plain(col[0]) for col in table.cells.values)
        assert " ".join(narration.split()) == " ".join(step.narration.split())
        cpu = next(c for c in code_panel(tl.state_at(k)) if c.cpu == step.cpu)
        lines = code.split("\n")
        assert lines[0].startswith(f"{cpu.cpu}: ")
        if cpu.lines:
            listing = cpu.listing(context=5).split("\n")
            assert len(listing) <= 14  # about 12 lines around the current one
            assert [x.rstrip("\u2026") for x in lines[1:]] == [
                x[: len(y.rstrip("\u2026"))] for x, y in zip(listing, lines[1:], strict=True)
            ]
            if cpu.current is not None:
                marked = [x for x in lines if x.startswith("=> ")]
                assert marked and cpu.lines[cpu.current].strip() in marked[0]
                assert "<b>" in table.cells.values[1][0]
        assert f"step {k}" in frame.layout.title.text and step.cpu in frame.layout.title.text


def test_animation_panels_do_not_overlap_and_the_html_is_offline() -> None:
    tl, _ = _lost_race()
    window = [(tl.state_at(k), tl.changed_regions(k), tl.step(k).narration) for k in range(10)]
    fig = animation_figure(window)  # the old call, without the CPUs, still works
    lay = fig.layout
    boxes = {
        "map": (lay.xaxis.domain, lay.yaxis.domain),
        "caches": (lay.xaxis2.domain, lay.yaxis2.domain),
        "table": (fig.data[3].domain.x, fig.data[3].domain.y),
    }
    bar = fig.data[0].colorbar
    boxes["colorbar"] = ((bar.x, bar.x + 0.06), (bar.y - bar.len / 2, bar.y + bar.len / 2))
    for (a, (ax, ay)), (b, (bx, by)) in combinations(boxes.items(), 2):
        apart = ax[1] <= bx[0] or bx[1] <= ax[0] or ay[1] <= by[0] or by[1] <= ay[0]
        assert apart, (a, b)
    # the slider and the buttons are below every panel
    assert lay.sliders[0].y <= 0 and lay.updatemenus[0].y <= 0
    assert lay.height and lay.height <= 900
    page = animation_html(fig)
    assert page.count("<script") >= 2 and "cdn.plot.ly/plotly" not in page


# ------------------------------------------------------------------ slide export
@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_slide_config_is_1920x1080(fmt: str) -> None:
    cfg = slide_config(fmt)
    opts = cfg["toImageButtonOptions"]
    assert (opts["format"], opts["width"], opts["height"], opts["scale"]) == (fmt, 1920, 1080, 1)
    assert opts["filename"] and cfg["displaylogo"] is False
    json.dumps(cfg)  # plain data: Streamlit sends it as JSON


def test_slide_config_refuses_other_formats() -> None:
    with pytest.raises(ValueError):
        slide_config("pdf")


# ------------------------------------------------------------------ handout
def test_the_lost_race_handout_has_every_stop_one_plotlyjs_and_no_url() -> None:
    tl, settings = _lost_race()
    tour = tour_for("lost_race")
    assert tour is not None
    page = tour_handout_html(tour, tl, settings)
    text = html.unescape(page)
    assert html.unescape(html.escape(tour.title)) in text
    for stop in resolve(tour, tl):
        assert stop.stop.narration in text
        assert f"Stop {stop.number} of {len(tour.stops)}: step {stop.step}<" in page
        assert tl.step(stop.step).narration in text
    assert page.count(f'<script id="{PLOTLYJS_ID}"') == 1
    start = page.index(f'<script id="{PLOTLYJS_ID}"')
    end = page.index("</script>", start)
    bundle, rest = page[start:end], page[:start] + page[end:]
    assert "Plotly" in bundle and len(bundle) > 1_000_000  # plotly.js itself, inlined
    assert "http://" not in rest and "https://" not in rest
    assert not re.search(r"<(script|link|img)[^>]*\b(src|href)=", rest)
    figures = [s for s in resolve(tour, tl) if s.stop.view in ("region_map", "pamt_caches")]
    assert rest.count("Plotly.newPlot") >= len(figures) > 0
    assert "@media print" in page and "page-break-inside: avoid" in page


# ------------------------------------------------------------------ the app
def _proto_configs(at: AppTest) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(el.proto.config) for el in at.get("plotly_chart")]


def test_explore_passes_the_chosen_export_format_to_its_charts() -> None:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    configs = _proto_configs(at)
    assert configs and all(c["toImageButtonOptions"]["format"] == "svg" for c in configs)
    at.sidebar.radio(key="export_format_choice").set_value("png").run()
    assert not at.exception, [e.value for e in at.exception]
    configs = _proto_configs(at)
    assert len(configs) >= 2
    for c in configs:
        opts = c["toImageButtonOptions"]
        assert (opts["format"], opts["width"], opts["height"]) == ("png", 1920, 1080)


def test_learn_offers_the_handout_and_keeps_the_export_format() -> None:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.sidebar.radio(key="export_format_choice").set_value("png").run()
    at.query_params["tour"] = "lost_race"
    at.query_params["stop"] = "4"  # a region map
    at.switch_page("app_pages/learn.py").run()
    assert not at.exception, [e.value for e in at.exception]
    buttons = [b for b in at.get("download_button") if b.proto.id.endswith("btn_tour_handout")]
    assert buttons and buttons[0].proto.label == "Download this tour as a handout (HTML)"
    configs = _proto_configs(at)
    assert configs and all(c["toImageButtonOptions"]["format"] == "png" for c in configs)
