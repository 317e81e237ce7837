"""Explore: step through a trace and watch regions, refcounts, caches and locks move.

A thin page: the stepper, the panels and the tabs are app_pages/ui's (stepper, state_panel,
step_panel, explore_tabs)."""

from __future__ import annotations

import functools
import os

import streamlit as st

from app_pages import common
from app_pages.ui.boxes import apply_box_step, boxes_delivered
from app_pages.ui.explore_tabs import explore_tabs
from app_pages.ui.instant import instant_by_default, instant_event, instant_view
from app_pages.ui.keys import STEP_HEADER_KEY, step_keys
from app_pages.ui.replays import idle_trimmer
from app_pages.ui.state_panel import export_choice, map_and_caches
from app_pages.ui.step_panel import COMPACT_CSS, code_and_locks, step_text
from app_pages.ui.stepper import controls, play_clock, tick_interval
from explorer.appsupport import Place, place_in, stop_note
from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline


def knob_effects(loaded: common.Loaded, settings: Settings) -> None:
    """What the current knobs did, against the kernel defaults of the same knobs."""
    kernel = Settings()
    knobs = ("worst_case_tables", "dpamt_gets_per_fault", "mode")
    if all(getattr(settings, k) == getattr(kernel, k) for k in knobs):
        return
    default = settings.with_overrides({k: getattr(kernel, k) for k in knobs})
    now, ref = common.metrics(loaded, settings), common.metrics(loaded, default)
    cols = st.columns(6)
    for col, (label, a, b, what) in zip(
        cols,
        [
            ("retries", now.counters["fault_retries"], ref.counters["fault_retries"], ""),
            ("livelocks", now.counters["livelocks"], ref.counters["livelocks"], ""),
            ("idle cache (peak)", now.idle_peak, ref.idle_peak, "peak of the pages idle in caches"),
            ("pairs (peak)", now.pairs_peak, ref.pairs_peak, "peak of the PAMT pairs installed"),
            ("lost races", now.counters["pamt_lost_race"], ref.counters["pamt_lost_race"], ""),
            ("violations", now.violations, ref.violations, ""),
        ],
        strict=True,
    ):
        # short labels: six metrics share the page's width (longer ones were cut)
        col.metric(
            label,
            a,
            delta=a - b,
            delta_color="inverse",
            help=(f"{what}; " if what else "") + "the delta is against the kernel default knobs",
        )


def _remember_place(tl: Timeline, replay_key: tuple[object, ...], i: int) -> None:
    """Where the cursor is, as an event and a label (kept across a change of settings)."""
    old: Place | None = st.session_state.get("place")
    if old is not None and old.replay == replay_key and old.step == i:
        return
    if i < 0:
        st.session_state.place = Place(replay_key, i, -1, "")
    else:
        s = tl.step(i)
        st.session_state.place = Place(replay_key, i, s.event, s.label)


def view(
    tl: Timeline, loaded: common.Loaded, settings: Settings, replay_key: tuple[object, ...]
) -> None:
    last = tl.nr_steps - 1
    idle_trimmer().touch()  # a fragment's run is activity too (the page's runs touch it as well)
    apply_box_step()  # a fragment's run: its callbacks ran just before
    instant_event(tl)
    play_clock(last)
    step_keys()
    controls(tl)
    i = min(max(int(st.session_state.cursor), -1), last)
    st.session_state.shown_step = i
    _remember_place(tl, replay_key, i)
    step = tl.step(i) if i >= 0 else None
    changed = tl.changed_regions(i) if i >= 0 else []
    snap_at = functools.cache(functools.partial(tl.state_at, i))  # the seek, once, if asked
    if st.session_state.get("instant_steps"):
        # drawn and stepped in the browser (app_pages/ui/instant.py); the keys' listener's
        # marker (the step header's key) is on it, so keys.py's queue stays for the fallback
        with st.container(key=STEP_HEADER_KEY):
            instant_view(tl, replay_key, i)
    else:
        snap = snap_at()
        left, right = st.container(key="step_view").columns([5, 6])
        with left:
            map_and_caches(snap, changed, tl)
        with right:
            with st.container(key=STEP_HEADER_KEY):
                step_text(tl, step)
            code_and_locks(snap, step)
    explore_tabs(tl, loaded, i, snap_at, step, changed)
    common.sync_url(settings)
    boxes_delivered()  # the run drew everything: the browser holds what the boxes show


def restore_place(tl: Timeline, loaded: common.Loaded, replay_key: tuple[object, ...]) -> None:
    """After a change of settings (a new replay of the same trace), put the cursor on the same
    event, at the first step of the same label within it if there is one."""
    old: Place | None = st.session_state.get("place")
    if old is None or old.replay == replay_key or old.replay[0] != replay_key[0]:
        return
    if int(st.session_state.cursor) == old.step:  # moved meanwhile (e.g. a link): keep that
        st.session_state.cursor = place_in(tl, old.event, old.label)


def _notes_inside(nr_steps: int) -> None:
    """Review notes (from a link, or pinned before a change of settings) on steps the replay
    has: the others are dropped, with a message naming them."""
    notes: dict[int, str] = dict(st.session_state.get("review_notes") or {})
    outside = sorted(k for k in notes if not 0 <= k < nr_steps)
    if outside:
        st.warning(
            f"Review notes on steps outside this replay (steps 0 to {nr_steps - 1}) were "
            f"dropped: step(s) {', '.join(map(str, outside[:5]))}"
            + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        )
        st.session_state.review_notes = {k: v for k, v in notes.items() if k not in outside}


def main() -> None:
    problems = common.init_session()
    common.sidebar_trace_picker()
    settings = common.sidebar_settings()
    export_choice()
    if "instant_steps" not in st.session_state:  # DPAMT_INSTANT=1/0, else the default
        st.session_state.instant_steps = instant_by_default(os.environ.get("DPAMT_INSTANT"))
    st.sidebar.toggle(
        "Instant steps",
        key="instant_steps",
        help="Step through a window of steps drawn in the browser: Next, Prev, the keys and "
        "Play need no round trip to the server until the cursor leaves the window.",
    )
    st.sidebar.caption(
        "Why 10 pages: each DPAMT get uses 0 pages (fast path) or 2 (a PAMT pair). "
        "A 4 KiB fault links at most 4 non-root S-EPT tables (5-level EPT; the root "
        "is not covered) plus the leaf: 5 gets x 2 = 10 pages. Fewer: a cold fault "
        "runs dry and retries; 0: it livelocks."
    )
    loaded: common.Loaded = st.session_state.loaded
    st.markdown(COMPACT_CSS, unsafe_allow_html=True)  # our own CSS: tighter page margins
    st.caption(
        "Host memory, the DPAMT caches and the kernel code, step by step. "
        "Keys: Right / Left step, Home / End, Space plays."
    )
    for p in problems:
        st.warning("A link parameter was ignored:")
        st.text(p)
    common.show_upload_errors()
    st.text(f"{loaded.source}: {loaded.trace.title or '(untitled trace)'}")
    tl = common.timeline(loaded, settings)
    if tl.stopped is not None:
        note = stop_note(tl.diagnostics, tl.stopped, settings.max_retries)
        (st.warning if note.livelock_step is not None else st.error)(note.headline)
        st.text(note.detail)
    if tl.nr_steps == 0:
        st.info("This trace produced no step.")
        return
    _notes_inside(tl.nr_steps)
    knob_effects(loaded, settings)
    apply_box_step()
    if "cursor" not in st.session_state:
        st.session_state.cursor = -1
    replay_key = common.replay_key(loaded, settings)
    restore_place(tl, loaded, replay_key)
    st.session_state.cursor = min(max(int(st.session_state.cursor), -1), tl.nr_steps - 1)
    playing = st.session_state.get("playing", False)
    interval = tick_interval() if playing else None
    st.fragment(run_every=interval)(view)(tl, loaded, settings, replay_key)


main()
