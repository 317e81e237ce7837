"""Instant steps (issue 27): Explore's step view drawn in the browser from a window of steps.

Each Next/Prev used to rerun the step view on the server (230-250 ms idle, 400-700 ms under load,
tools/step_latency.py). Here one ``st.components.v2`` component (no iframe: it lives in the page's
DOM, as keys.py's does) gets :func:`explorer.views.window.step_window`'s payload for the steps
around the cursor and draws the map and the caches with Plotly.js, the text, the code and the
locks itself. The keys and the stepper's First/Prev/Next/Last/Play buttons are caught before
Streamlit sees them (capture listeners on ``window``) and step the window without a rerun. The
component reports its step as its ``step`` state after ``IDLE_MS`` without a step, or at once near
the window's edge; the callback puts the cursor there, so the rest of the page (tabs, URL, notes)
follows, and the rerun sends a re-centred window, the shown step kept.

Plotly.js is not a global in Streamlit's page: plotly's own ``plotly.min.js`` (the installed
plotly package, the same version the server-drawn charts use) is copied into ``static/`` at start
and served by Streamlit's static file serving (``server.enableStaticServing``); it works offline.

The sidebar's "Instant steps" toggle; new sessions start as :data:`ON_BY_DEFAULT` says, or as
the server's ``DPAMT_INSTANT`` says (``1`` on, ``0`` off: the server-drawn view, the fallback the
browser tests of that view use).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import plotly
import streamlit as st

from app_pages.ui.state_panel import CACHE_HEIGHT, MAP_HEIGHT, chart_config, page_theme
from app_pages.ui.stepper import period
from explorer.replay.timeline import Timeline
from explorer.views.region_map import replay_span
from explorer.views.window import step_window

#: The map's width (px) for region_map's layout: the view's left column (5/11 of the page, 330 px at
#: 1280, 440 at 1440) takes a compact colour bar; the caches take their two-line title.
MAP_WIDTH = 400
#: Steps either side of the cursor the browser holds.
RADIUS = 30
#: The browser asks for a re-centred window when it is this close to the window's edge.
MARGIN = 20
#: Memo entries (about two a step: its changed cells, its text/code/caches) kept for re-centred
#: windows (per session) before the memo starts over.
MEMO_ENTRIES = 1000
#: Where Streamlit serves static files from (beside the main script) and the served path.
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
PLOTLY_SRC = "app/static/plotly.min.js"

_HERE = Path(__file__).resolve().parent
#: Whether a session starts with instant steps when the server's DPAMT_INSTANT is unset (the
#: in-process AppTest tests, which run no JavaScript, set DPAMT_INSTANT=0: tests/conftest.py).
#: On: every step drawn in the browser (docs/lecture.md); DPAMT_INSTANT=0 or the toggle turns it off.
ON_BY_DEFAULT = True
#: Values of DPAMT_INSTANT that turn instant steps off (or on) for new sessions.
OFF_VALUES = ("0", "off", "false", "no")
ON_VALUES = ("1", "on", "true", "yes")


def instant_by_default(value: str | None) -> bool:
    """Whether a new session starts with instant steps, given the server's ``DPAMT_INSTANT``:
    off for ``0`` (``off``, ``false``, ``no``), on for ``1`` (``on``, ``true``, ``yes``), any
    case, spaces ignored; unset, empty or anything else: :data:`ON_BY_DEFAULT`."""
    v = (value or "").strip().lower()
    return False if v in OFF_VALUES else True if v in ON_VALUES else ON_BY_DEFAULT


def _plotly_js() -> None:
    """Copy the installed plotly package's plotly.min.js beside the app (gitignored), once."""
    src = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    dst = STATIC_DIR / "plotly.min.js"
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        STATIC_DIR.mkdir(exist_ok=True)
        shutil.copyfile(src, dst)


_plotly_js()

_component = st.components.v2.component(
    "dpamt_instant",
    js=(_HERE / "instant.js").read_text(encoding="utf-8"),
    css=(_HERE / "instant.css").read_text(encoding="utf-8"),
    isolate_styles=False,  # Plotly.js styles its charts from the document's head
)


def newer_report(value: object, last_seq: int, nr_steps: int) -> int | None:
    """The step of the page's report ``value`` (``{"step": int, "seq": int}``) if it is newer
    than the last one applied (``last_seq``) and names a step of the replay, else None. The
    page numbers its reports 1, 2, ...; a report the server has already applied, or an older
    one, is a late copy and must not move the cursor back (issue 27: Play paused at step 33 was
    put back on 24 by an answer to an earlier report)."""
    if not isinstance(value, dict):
        return None
    step, seq = value.get("step"), value.get("seq")
    if type(step) is not int or type(seq) is not int or seq <= last_seq:
        return None
    return step if -1 <= step < nr_steps else None


def _on_report() -> None:
    """The browser's step becomes the cursor (the rest of the page follows on this rerun); the
    report's sequence number is echoed back so that the page can tell an answer to its latest
    report from one to an older report. The step box's value sent with it is not a request
    (stepper.apply_box_step)."""
    report = (st.session_state.get("instant_view") or {}).get("report")
    last = int(st.session_state.get("instant_seq", 0))
    step = newer_report(report, last, int(st.session_state.get("instant_nr_steps", 0)))
    if step is None:
        return
    assert isinstance(report, dict)
    st.session_state.cursor = step
    st.session_state.instant_reported = step
    st.session_state.instant_seq = report["seq"]
    st.session_state.instant_report_run = True
    event = report.get("event")
    if type(event) is int:  # the event box, edited in the page: its first step (instant_event)
        st.session_state.instant_event = event


def instant_event(tl: Timeline) -> None:
    """Put the cursor on the first step of the event the page's event box asked for (its
    report's ``event``, 1-based as the box shows it); the page follows the server's cursor."""
    if "instant_event" not in st.session_state:
        return
    e = int(st.session_state.pop("instant_event")) - 1
    s = tl.first_step_of_event(e) if 0 <= e < tl.nr_events else None
    if s is None:
        st.session_state.jump_note = f"event {e + 1} did not run (the replay stopped before it)"
    else:
        st.session_state.jump_note = ""
        st.session_state.cursor = s


def _window(tl: Timeline, replay_key: tuple[object, ...], cursor: int) -> dict[str, Any]:
    """The window around ``cursor``, rebuilt only when the cursor nears its edge (or the
    replay, the colouring, the theme or the notes change): most reruns reuse it. The map draws
    the replay's span and both figures the page's theme, as the server-drawn view does."""
    color_by = st.session_state.get("color_by", "dpamt")
    theme = page_theme()
    notes = dict(st.session_state.get("review_notes") or {})
    key = (replay_key, color_by, theme, tuple(sorted(notes.items())))
    old = st.session_state.get("instant_window")
    if old is not None and old[0] == key:
        w: dict[str, Any] = old[1]
        lo, hi, last = w["lo"], w["hi"], tl.nr_steps - 1
        inside = lo <= cursor <= hi
        if inside and (cursor - lo >= MARGIN or lo == -1) and (hi - cursor >= MARGIN or hi == last):
            return w
    memo = st.session_state.get("instant_memo")
    if memo is None or memo[0] != replay_key or len(memo[1]) > MEMO_ENTRIES:
        memo = st.session_state.instant_memo = (replay_key, {})
    w = step_window(
        tl,
        cursor,
        RADIUS,
        color_by=color_by,
        map_height=MAP_HEIGHT,
        cache_height=CACHE_HEIGHT,
        map_width=MAP_WIDTH,
        narrow_caches=True,
        notes=notes,
        memo=memo[1],
        theme=theme,
        span=replay_span(tl),
    )
    st.session_state.instant_window = (key, w)
    return w


def instant_view(tl: Timeline, replay_key: tuple[object, ...], cursor: int) -> None:
    """The step view (map, caches, text, code, locks) drawn and stepped in the browser."""
    st.session_state.instant_nr_steps = tl.nr_steps
    _component(
        key="instant_view",
        data={
            "window": _window(tl, replay_key, cursor),
            "cursor": cursor,
            # the cursor is the step the browser reported (not moved since by the server)
            "from_client": st.session_state.get("instant_reported") == cursor,
            # the last report applied: a cursor answering an older one than the page's latest
            # does not move the page's step
            "seq": int(st.session_state.get("instant_seq", 0)),
            "margin": MARGIN,
            "period_ms": int(period() * 1000),
            "plotly_src": PLOTLY_SRC,
            "config": {"map": chart_config("region_map"), "caches": chart_config("pamt_cache")},
        },
        default={"report": None},
        on_report_change=_on_report,
    )
