"""The instant-steps window: each step's payload is what the server-drawn step view shows."""

import json
from pathlib import Path

import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.replay.timeline import Timeline, replay
from explorer.views.caches import pamt_cache_figure
from explorer.views.code import lock_summary
from explorer.views.region_map import region_map
from explorer.views.window import (
    apply_map_patch,
    caches_figure,
    code_view,
    figure_json,
    step_text,
    step_window,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _timeline(name: str) -> Timeline:
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), name)
    return replay(trace.events, resolve_settings(trace, []))


@pytest.mark.parametrize(("name", "centre"), [("lost_race", 30), ("td_lifecycle", 0)])
def test_each_step_is_what_the_views_draw(name: str, centre: int) -> None:
    tl = _timeline(name)
    centre = min(centre, tl.nr_steps - 1)
    w = step_window(tl, centre, 6, map_height=220, cache_height=160, notes={centre: "look"})
    payload = json.loads(json.dumps(w, allow_nan=False))  # JSON as the browser gets it
    assert payload["lo"] == max(centre - 6, -1)
    assert [s["step"] for s in payload["steps"]] == list(range(payload["lo"], payload["hi"] + 1))
    moved = 0
    for s in payload["steps"]:
        i = s["step"]
        snap = tl.state_at(i)
        step = tl.step(i) if i >= 0 else None
        changed = tl.changed_regions(i) if i >= 0 else []
        want = figure_json(region_map(snap, changed, height=220))
        assert apply_map_patch(payload["map_base"], s["map"]) == want, f"map at step {i}"
        moved += bool(s["map"]["cells"])
        assert caches_figure(payload, s) == figure_json(pamt_cache_figure(snap, height=160)), i
        text = step_text(tl, step)
        assert s["text"]["header"] == text.header and s["text"]["narration"] == text.narration
        assert s["text"]["event_line"] == text.event_line
        assert s["code"] == [
            {"caption": b.caption, "listing": b.listing} for b in code_view(snap, step)
        ]
        assert s["locks"] == lock_summary(snap)
        assert s["note"] == ("look" if i == centre else "")
    if name == "lost_race":
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


def test_a_recentred_window_reuses_the_memo_and_equals_a_fresh_one() -> None:
    tl = _timeline("lost_race")
    memo: dict = {}  # type: ignore[type-arg]
    step_window(tl, 30, 4, memo=memo)
    assert len(memo) == 9
    again = step_window(tl, 33, 4, memo=memo)
    assert len(memo) == 12  # only the 3 new steps were built
    assert again == step_window(tl, 33, 4)
