"""Explore's stepper: First/Prev/Next/Last/Play with their keys, the speed, the step slider,
go to step or event, and jumps to the next step of a kind. The cursor is
``st.session_state.cursor``; playing moves it by the clock (:func:`due`)."""

from __future__ import annotations

import time

import streamlit as st

from app_pages.ui.boxes import EVENT_BOX, SLIDER, STEP_BOX, box_moved, event_box_moved, show_boxes
from app_pages.ui.loader import capture_info
from explorer.replay.timeline import Timeline
from explorer.views.capture import divergence_steps

JUMP_KINDS = {
    "an event of op...": "op",
    "a change of region...": "region",
    "a lost race": "lost_race",
    "a refcount crossing 0": "refcount_zero",
    "a cache drained to the allocator": "cache_drained",
    "a fault retry": "retry",
    "a livelock": "livelock",
    "a violation": "violation",
    "a warning": "warning",
    "a divergence from the kernel capture": "divergence",
    "a review note": "review_note",
}
OPS = (
    "fault",
    "zap",
    "td_create",
    "vcpu_create",
    "td_finalize",
    "vcpu_free",
    "td_destroy",
    "inject",
    "note",
    "schedule",
)
#: Seconds between steps while playing.
SPEEDS = {
    "1 step/s": 1.0,
    "2 steps/s": 0.5,
    "4 steps/s": 0.25,
    "8 steps/s": 0.125,
    "10 steps/s": 0.1,
}
DEFAULT_SPEED = "2 steps/s"
#: While playing, the server-drawn step view's timer ticks at most this often. A tick's run
#: takes about 100 ms (more on a loaded machine): at 10 steps/s ticks ran back to back, and a
#: Pause click that lands while a tick's run is replaced is lost with it, so Pause could be
#: clicked for a minute without effect (a browser test caught it). The speed is unchanged:
#: the cursor goes by the clock (:func:`_due`), each tick shows the step due by then.
MIN_TICK_S = 0.25

NUMBERING = (
    "Steps are numbered from 0, as in the replay log, the Traces page and the diagnostics; "
    "-1 is the state before step 0. Events are numbered from 1, like the trace's event lines."
)


def _period() -> float:
    return SPEEDS.get(st.session_state.get("speed", DEFAULT_SPEED), SPEEDS[DEFAULT_SPEED])


def _anchor(step: int) -> None:
    """Playing: ``step`` is due now, and one more every period after it (see :func:`_due`)."""
    st.session_state.play_anchor = (time.monotonic(), step, _period())


def _due(last: int) -> int:
    """The step that playing has reached: the anchor's step plus the periods since it, by the
    clock (not by counting timer ticks: a tick that comes late, or two that the server folds
    into one run, still leave playing at the chosen speed)."""
    t0, step, period = st.session_state.play_anchor
    return min(int(step) + int((time.monotonic() - t0) / period + 0.5), last)


def _set_cursor(i: int) -> None:
    st.session_state.cursor = i
    if st.session_state.get("playing"):
        _anchor(i)


def _move(delta: int, last: int) -> None:
    _set_cursor(min(max(st.session_state.cursor + delta, -1), last))


def _toggle_play() -> None:
    st.session_state.playing = not st.session_state.playing
    st.session_state.play_changed = True
    if st.session_state.playing:
        _anchor(int(st.session_state.get("shown_step", st.session_state.cursor)) + 1)
    else:  # stop where the last tick drew (the slider may send an older value)
        st.session_state.pause_at = st.session_state.get("shown_step", st.session_state.cursor)


def _speed_changed() -> None:
    if st.session_state.get("playing"):
        _anchor(int(st.session_state.get("shown_step", st.session_state.cursor)))
        st.session_state.play_changed = True  # a new timer period: rerun the app


def _jump_to_one_of(steps: list[int], direction: int, what: str) -> None:
    """The next (previous) of ``steps`` after (before) the cursor."""
    cursor = int(st.session_state.cursor)
    found = [x for x in steps if (x > cursor if direction > 0 else x < cursor)]
    if not found:
        st.session_state.jump_note = f"no {'later' if direction > 0 else 'earlier'} {what}"
        return
    st.session_state.jump_note = ""
    _set_cursor(found[0] if direction > 0 else found[-1])


def _jump(tl: Timeline, direction: int) -> None:
    kind = JUMP_KINDS[st.session_state.jump_kind]
    if kind == "divergence":
        info = capture_info(st.session_state.loaded)
        if info is None:
            st.session_state.jump_note = "no kernel capture is loaded (upload one)"
            return
        _jump_to_one_of(divergence_steps(info.conformance.divergences), direction, "divergence")
        return
    if kind == "review_note":
        notes = st.session_state.get("review_notes") or {}
        _jump_to_one_of(sorted(notes), direction, "review note")
        return
    arg: object = None
    if kind == "op":
        arg = st.session_state.jump_op
    elif kind == "region":
        arg = int(st.session_state.jump_region)
    found = tl.find(kind, st.session_state.cursor, direction, arg)
    if found is None:
        st.session_state.jump_note = (
            f"no {'later' if direction > 0 else 'earlier'} step of that kind"
        )
    else:
        st.session_state.jump_note = ""
        _set_cursor(found)


def controls(tl: Timeline) -> None:
    last = tl.nr_steps - 1
    # one row (a projector's 720 lines): the five buttons, the speed, the step and event boxes,
    # and the jumps in a popover
    cols = st.columns([1, 1, 1, 1, 1.1, 1.5, 1.3, 1.3, 1.3], vertical_alignment="bottom")
    cols[0].button(
        "First",
        key="btn_first",
        on_click=_set_cursor,
        args=(-1,),
    )
    cols[1].button(
        "Prev",
        key="btn_prev",
        on_click=_move,
        args=(-1, last),
    )
    cols[2].button(
        "Next",
        key="btn_next",
        on_click=_move,
        args=(1, last),
        type="primary",
    )
    cols[3].button(
        "Last",
        key="btn_last",
        on_click=_set_cursor,
        args=(last,),
    )
    cols[4].button(
        "Pause" if st.session_state.playing else "Play",
        key="btn_play",
        on_click=_toggle_play,
    )
    cols[5].selectbox(
        "speed",
        list(SPEEDS),
        index=list(SPEEDS).index(DEFAULT_SPEED),
        key="speed",
        on_change=_speed_changed,
        label_visibility="collapsed",
    )
    playing = bool(st.session_state.playing)
    # the two boxes show where the cursor is (set before the widgets exist in this run); before
    # the first step no event has run: the event box is empty
    cur = min(max(int(st.session_state.cursor), -1), last)
    event = tl.step(cur).event + 1 if cur >= 0 else None
    show_boxes((cur, event, cur))
    cols[6].number_input(
        "step",
        min_value=-1,
        max_value=max(last, -1),
        step=1,
        key=STEP_BOX,
        on_change=box_moved,
        args=(STEP_BOX,),
        disabled=playing,
        help=f"0 to {last}; -1: before the first step. {NUMBERING}",
    )
    cols[7].number_input(
        "event",
        min_value=1,
        max_value=max(tl.nr_events, 1),
        step=1,
        key=EVENT_BOX,
        on_change=event_box_moved,
        args=(tl,),
        disabled=playing,
        placeholder="none",  # "none yet" was cut to "none ye" in the column at 1280 px
        help=f"1 to {tl.nr_events}: the trace's events, in order (empty before the first step)",
    )
    with cols[8].popover("Jump...", width="stretch"):
        kind = st.selectbox(
            "jump to the previous / next step with", list(JUMP_KINDS), key="jump_kind"
        )
        if JUMP_KINDS[kind] == "op":
            st.selectbox("op", OPS, key="jump_op")
        elif JUMP_KINDS[kind] == "region":
            st.number_input(
                "region",
                min_value=0,
                max_value=tl.settings.nr_regions - 1,
                step=1,
                key="jump_region",
            )
        c1, c2 = st.columns(2)
        c1.button("earlier", key="btn_jump_prev", on_click=_jump, args=(tl, -1))
        c2.button("later", key="btn_jump_next", on_click=_jump, args=(tl, 1))
    if last >= 0:
        st.slider(
            "step",
            min_value=-1,
            max_value=last,
            key=SLIDER,
            on_change=box_moved,
            args=(SLIDER,),
            label_visibility="collapsed",
            help=NUMBERING,
            disabled=playing,
        )
    note = st.session_state.get("jump_note")
    if note:
        st.caption(note)


def play_clock(last: int) -> None:
    """At the top of each run of the step view: apply a pause, and while playing put the
    cursor on the step the clock has reached (stopping at ``last``)."""
    if st.session_state.pop("play_changed", False):
        st.rerun(scope="app")  # start, stop or retime the timer (run_every is set by the app)
    if "pause_at" in st.session_state:
        st.session_state.cursor = st.session_state.pop("pause_at")
    if st.session_state.playing:
        if "play_anchor" not in st.session_state:
            _anchor(int(st.session_state.cursor))
        st.session_state.cursor = _due(last)
        if st.session_state.cursor >= last:
            st.session_state.playing = False
            st.rerun(scope="app")  # the last step: stop the timer


def period() -> float:
    """Seconds between steps at the chosen speed."""
    return _period()


def tick_interval() -> float:
    """Seconds between the step view's timer ticks while playing: the period, but never under
    :data:`MIN_TICK_S` (a gap between ticks for the user's clicks)."""
    return max(_period(), MIN_TICK_S)
