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

import json
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import plotly
import streamlit as st

from app_pages.ui.boxes import event_first_step
from app_pages.ui.replays import idle_trimmer
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
#: windows (per replay, shared by the sessions) before that memo starts over, and the replays
#: whose memos are kept (:func:`_memo`): at most MEMOS x MEMO_ENTRIES entries in the process.
MEMO_ENTRIES = 500
MEMOS = 4
#: Seconds without any run after which the memos are dropped (they only save time; the memory
#: goes back once nobody uses the app: explorer.appsupport.IdleTrimmer.on_idle).
MEMO_IDLE_S = 30.0
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
    s = event_first_step(tl, int(st.session_state.pop("instant_event")))
    if s is not None:
        st.session_state.cursor = s


_MEMOS: OrderedDict[tuple[object, ...], dict[Any, Any]] = OrderedDict()
_MEMOS_LOCK = threading.Lock()


def _memo(replay_key: tuple[object, ...]) -> dict[Any, Any]:
    """The memo of step-window parts for ``replay_key``, shared by every session of the process
    (sessions on one trace and settings build each step's parts once: a class on one sample
    shares them), at most :data:`MEMOS` replays and :data:`MEMO_ENTRIES` entries each (the least
    recently used replay goes first; a full memo starts over). Its entries are values, so two
    sessions writing one key at once write equal values."""
    _drop_memos_when_idle()
    with _MEMOS_LOCK:
        memo = _MEMOS.get(replay_key)
        if memo is None or len(memo) > MEMO_ENTRIES:
            memo = _MEMOS[replay_key] = {}
        _MEMOS.move_to_end(replay_key)
        while len(_MEMOS) > MEMOS:
            _MEMOS.popitem(last=False)
        return memo


def _drop_memos() -> None:
    with _MEMOS_LOCK:
        _MEMOS.clear()


@st.cache_resource(show_spinner=False)
def _drop_memos_when_idle() -> bool:
    """Register, once per process, the memos' drop with the idle trimmer."""
    idle_trimmer().on_idle(_drop_memos, MEMO_IDLE_S)
    return True


def _window(tl: Timeline, replay_key: tuple[object, ...], cursor: int) -> bytes:
    """The window around ``cursor``, rebuilt only when the cursor nears its edge (or the
    replay, the colouring, the theme or the notes change): most reruns reuse it. The map draws
    the replay's span and both figures the page's theme, as the server-drawn view does."""
    color_by = st.session_state.get("color_by", "dpamt")
    theme = page_theme()
    notes = dict(st.session_state.get("review_notes") or {})
    key = (replay_key, color_by, theme, tuple(sorted(notes.items())))
    old = st.session_state.get("instant_window")
    if old is not None and old[0] == key:
        lo, hi, last = old[1], old[2], tl.nr_steps - 1
        inside = lo <= cursor <= hi
        if inside and (cursor - lo >= MARGIN or lo == -1) and (hi - cursor >= MARGIN or hi == last):
            return old[3]  # type: ignore[no-any-return]
    memo = _memo(replay_key)
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
        memo=memo,
        theme=theme,
        span=replay_span(tl),
    )
    # encoded once per window (not on every run: Streamlit's component JSON-encodes its data
    # twice a run, once for the message and once for the element's identity, 18 % of the
    # server's time under 12 stepping sessions; bytes go through as they are, hashed once)
    encoded = json.dumps(w, separators=(",", ":")).encode()
    st.session_state.instant_window = (key, w["lo"], w["hi"], encoded)
    return encoded


def instant_view(tl: Timeline, replay_key: tuple[object, ...], cursor: int) -> None:
    """The step view (map, caches, text, code, locks) drawn and stepped in the browser."""
    st.session_state.instant_nr_steps = tl.nr_steps
    rest = {
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
    }
    # the page's data as UTF-8 JSON bytes: {"window": ..., <rest>} (instant.js decodes them)
    data = b'{"window":' + _window(tl, replay_key, cursor) + b"," + json.dumps(rest)[1:].encode()
    _component(
        key="instant_view",
        data=data,
        default={"report": None},
        on_report_change=_on_report,
    )
