"""The instant-steps window: each step's payload is what the server-drawn step view shows."""

import json
from pathlib import Path

import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.replay.timeline import Timeline, replay
from explorer.views.caches import pamt_cache_figure
from explorer.views.code import lock_summary
from explorer.views.region_map import region_map, replay_span, shown_regions
from explorer.views.window import (
    apply_map_patch,
    caches_figure,
    code_view,
    figure_json,
    page_template,
    step_text,
    step_window,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _timeline(name: str) -> Timeline:
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), name)
    return replay(trace.events, resolve_settings(trace, []))


@pytest.mark.parametrize(
    ("name", "centre", "color_by", "width", "theme", "with_span"),
    [
        ("lost_race", 30, "dpamt", None, "light", False),
        ("td_lifecycle", 0, "dpamt", 400, "light", False),
        ("lost_race", 12, "owner", 400, "dark", True),
        ("workload_two_tds", 200, "dpamt", None, "light", True),
        # a 4 GiB host: the map draws the replay's span (a zoomed grid starting at a row > 0)
        ("cold_5level", 20, "dpamt", 400, "light", True),
        ("cold_5level", 6, "owner", None, "dark", True),
        # a span that does not start at region 0 (the grid's first row is not row 0) and leaves
        # out regions the steps change (their cells and outlines are not drawn)
        ("cold_5level", 99, "dpamt", 400, "dark", (70, 140)),
    ],
)
def test_each_step_is_what_the_views_draw(
    name: str,
    centre: int,
    color_by: str,
    width: int | None,
    theme: str,
    with_span: bool | tuple[int, int],
) -> None:
    narrow = width is not None
    tl = _timeline(name)
    span = with_span if isinstance(with_span, tuple) else replay_span(tl) if with_span else None
    centre = min(centre, tl.nr_steps - 1)
    w = step_window(
        tl,
        centre,
        6,
        color_by=color_by,
        map_height=220,
        cache_height=160,
        map_width=width,
        narrow_caches=narrow,
        notes={centre: "look"},
        theme=theme,
        span=span,
    )
    payload = json.loads(json.dumps(w, allow_nan=False))  # JSON as the browser gets it
    base, end = shown_regions(tl.state_at(0).nr_regions, span, width, 220)
    if name == "cold_5level":  # the case guards the zoom: the span is drawn, not the map
        assert end - base < tl.state_at(0).nr_regions
        assert (base > 0) == isinstance(with_span, tuple)
    assert (payload["page_template"] is None) == (theme == "light")
    assert payload["lo"] == max(centre - 6, -1)
    assert [s["step"] for s in payload["steps"]] == list(range(payload["lo"], payload["hi"] + 1))
    moved = 0
    for s in payload["steps"]:
        i = s["step"]
        snap = tl.state_at(i)
        step = tl.step(i) if i >= 0 else None
        changed = tl.changed_regions(i) if i >= 0 else []
        want = figure_json(
            region_map(
                snap, changed, color_by=color_by, height=220, width=width, theme=theme, span=span
            )
        )
        assert apply_map_patch(payload["map_base"], s["map"]) == want, f"map at step {i}"
        moved += bool(s["map"]["cells"])
        assert caches_figure(payload, s) == figure_json(
            pamt_cache_figure(snap, height=160, narrow=narrow, theme=theme)
        ), i
        text = step_text(tl, step)
        assert s["text"]["header"] == text.header and s["text"]["narration"] == text.narration
        assert s["text"]["event_line"] == text.event_line
        assert s["code"] == [
            {"caption": b.caption, "listing": b.listing} for b in code_view(snap, step)
        ]
        assert s["locks"] == lock_summary(snap)
        assert s["note"] == ("look" if i == centre else "")
    if name != "td_lifecycle":
        assert moved, "no step of the window changed a cell: the patches were not exercised"


def test_a_dropped_patch_is_seen() -> None:
    tl = _timeline("lost_race")
    w = step_window(tl, 30, 6)
    s = next(s for s in w["steps"] if s["map"]["cells"])
    i = s["step"]
    want = figure_json(region_map(tl.state_at(i), tl.changed_regions(i)))
    assert apply_map_patch(w["map_base"], s["map"]) == want
    dropped = dict(s["map"], cells=s["map"]["cells"][1:])
    assert apply_map_patch(w["map_base"], dropped) != want
    no_outline = dict(s["map"], outline=None)
    if s["map"]["outline"] is not None:
        assert apply_map_patch(w["map_base"], no_outline) != want


def test_bad_arguments_are_named() -> None:
    tl = _timeline("td_lifecycle")
    with pytest.raises(ValueError, match="centre"):
        step_window(tl, tl.nr_steps, 3)
    with pytest.raises(ValueError, match="radius"):
        step_window(tl, 0, -1)
    with pytest.raises(ValueError, match="theme"):
        step_window(tl, 0, 3, theme="blue")
    with pytest.raises(ValueError, match="span"):
        step_window(tl, 0, 3, span=(5, 2))
    with pytest.raises(ValueError, match="beyond"):
        step_window(tl, 0, 3, span=(0, tl.state_at(0).nr_regions + 1))


def test_the_dark_page_template_has_see_through_backgrounds() -> None:
    t = page_template("dark")
    assert t is not None
    assert t["layout"]["paper_bgcolor"] == t["layout"]["plot_bgcolor"] == "rgba(0,0,0,0)"
    assert t["layout"]["font"]["color"] != "#2a3f5f"  # plotly's light text, unreadable on dark
    assert page_template("light") is None


def test_a_recentred_window_reuses_the_memo_and_equals_a_fresh_one() -> None:
    tl = _timeline("lost_race")
    memo: dict = {}  # type: ignore[type-arg]
    step_window(tl, 30, 4, memo=memo)
    deltas = [k for k in memo if k[0] == "delta"]
    assert sorted(k[1] for k in deltas) == list(range(27, 35))  # each step but the first
    again = step_window(tl, 33, 4, memo=memo)
    assert sorted(k[1] for k in memo if k[0] == "delta") == list(range(27, 38))
    assert again == step_window(tl, 33, 4)


def test_no_step_builds_a_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window builds its base step's map and caches (and once a replay the outline's
    style), never one figure per step: that is what made a re-centre cost 10 x 50-70 ms."""
    import explorer.views.caches as caches_mod
    import explorer.views.region_map as rm
    import explorer.views.window as win

    calls = {"map": 0, "caches": 0}
    real_map, real_caches = rm.region_map, caches_mod.pamt_cache_figure

    def count_map(*a: object, **k: object) -> object:
        calls["map"] += 1
        return real_map(*a, **k)  # type: ignore[arg-type]

    def count_caches(*a: object, **k: object) -> object:
        calls["caches"] += 1
        return real_caches(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(rm, "region_map", count_map)
    monkeypatch.setattr(win, "pamt_cache_figure", count_caches)
    w = step_window(_timeline("lost_race"), 30, 10)
    assert len(w["steps"]) == 21
    assert calls["map"] <= 2 and calls["caches"] == 1, calls


def test_dpamt_instant_turns_instant_steps_on_and_off() -> None:
    """Explore's start (app_pages/explore.py reads DPAMT_INSTANT through this)."""
    from app_pages.ui.instant import ON_BY_DEFAULT, instant_by_default

    assert instant_by_default(None) is ON_BY_DEFAULT and instant_by_default("") is ON_BY_DEFAULT
    assert instant_by_default("0") is False and instant_by_default(" Off ") is False
    assert instant_by_default("1") is True and instant_by_default("yes") is True


def test_only_a_newer_report_of_the_page_moves_the_cursor() -> None:
    """The page numbers its reports; an answer to (or copy of) an older one than the last
    applied is not a request (issue 27: a paused Play put back on an earlier step)."""
    from app_pages.ui.instant import newer_report

    assert newer_report({"step": 33, "seq": 8}, 7, 100) == 33
    assert newer_report({"step": -1, "seq": 1}, 0, 100) == -1
    assert newer_report({"step": 24, "seq": 7}, 7, 100) is None  # applied already
    assert newer_report({"step": 24, "seq": 5}, 7, 100) is None  # older
    assert newer_report({"step": 100, "seq": 8}, 7, 100) is None  # no such step
    for bad in (None, 33, {"step": 33}, {"step": "33", "seq": 8}, {"step": True, "seq": 8}):
        assert newer_report(bad, 0, 100) is None, bad


class _State(dict[str, object]):
    """st.session_state's dict and attribute access, for the stepper's functions."""

    def __getattr__(self, name: str) -> object:
        return self[name]

    def __setattr__(self, name: str, value: object) -> None:
        self[name] = value


def test_a_step_box_echo_sent_with_a_report_does_not_move_the_cursor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step box's value sent in the same rerun as the page's report is an echo of a step
    shown earlier: the report decides, whichever callback ran last; without a report the box
    moves the cursor."""
    import types

    from app_pages.ui import boxes

    state = _State(cursor=33, box_step=24, instant_report_run=True)
    monkeypatch.setattr(boxes, "st", types.SimpleNamespace(session_state=state))
    boxes.apply_box_step()
    assert state == {"cursor": 33}
    state.update(box_step=24)
    boxes.apply_box_step()
    assert state == {"cursor": 24}
    boxes.apply_box_step()  # nothing asked: nothing moves
    assert state == {"cursor": 24}
