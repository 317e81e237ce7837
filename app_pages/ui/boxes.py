"""The stepper's step box, event box and slider: what the browser sends back for them is a
request only when the user edited them (issue 27), and a request is applied once per run
(:func:`apply_box_step`).

Why a value sent back is not always a request: a widget's value comes back from the browser on
every rerun, and Streamlit calls its on_change whenever that value differs from the one the
server last set. The server sets the boxes in runs the browser may never see the end of (a run
cut short by the next request: the instant view's report while the user changes the speed, two
quick clicks). The browser then still holds, and sends, the value of the last run it received:
read as a request, it moved the cursor back (issue 27: Play in the instant view paused at 63 went
back to 57 when the speed changed). So each run that ends records what it showed
(:func:`boxes_delivered`), and a value equal to what the last finished run showed is the browser's
copy, not an edit (:func:`edited`).

In the instant view the page moves without the server, so the browser's copy of an older step
can come back with any rerun, and a finished run's boxes may not yet be drawn when the next
request leaves (seen under load: Play paused at 15 went back to 14). There the widgets send no
request at all: the page turns the user's edits of them into its own reports
(app_pages/ui/instant.js: the step box and the slider move the page at once, the event box asks
the server for its first step, app_pages/ui/instant.py ``instant_event``).

The keys stay the same for the session's life: a new key per move (a new widget) would tell
edits from copies without a record, but the browser then draws the old and the new box side by
side while a run is drawing (seen in the browser tests).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import streamlit as st

from explorer.replay.timeline import Timeline

#: The keys of the step box, the event box and the slider.
STEP_BOX, EVENT_BOX, SLIDER = "goto_step", "goto_event", "step_slider"
KEYS = (STEP_BOX, EVENT_BOX, SLIDER)


def _state(state: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
    return st.session_state if state is None else state


def show_boxes(
    values: tuple[int, int | None, int], state: MutableMapping[str, Any] | None = None
) -> None:
    """Set the step box, the event box and the slider to ``values`` before they are drawn, and
    remember them as this run's (see :func:`boxes_delivered`). ``state``: the session's state
    (Streamlit's, unless a test gives its own)."""
    state = _state(state)
    for key, value in zip(KEYS, values, strict=True):
        state[key] = value
    state["box_set"] = dict(zip(KEYS, values, strict=True))


def boxes_delivered(state: MutableMapping[str, Any] | None = None) -> None:
    """The run has drawn everything: the browser gets the boxes' values this run set. Called at
    the end of the step view (a run cut short never gets here)."""
    state = _state(state)
    if "box_set" in state:
        state["box_delivered"] = state["box_set"]


def edited(key: str, state: MutableMapping[str, Any] | None = None) -> bool:
    """Whether the value the browser sent for ``key`` is the user's edit: not the value the last
    run the browser received showed there (the copy it holds of a box a later, unfinished run
    changed)."""
    state = _state(state)
    delivered: dict[str, Any] = state.get("box_delivered") or {}
    return key not in delivered or delivered[key] != state[key]


def _requests() -> bool:
    """Whether the values the boxes and the slider send can be requests. Not while playing (the
    boxes and the slider are disabled and the clock places the cursor: a value they send then is
    the one shown a tick ago), and not in the instant view, whose page turns the user's edits of
    them into its own reports (app_pages/ui/instant.js): there the browser's copy of an older step
    can come back with any rerun, since the page moves without the server, and the browser may
    not yet have drawn a finished run's boxes when the next request leaves."""
    return not st.session_state.get("playing") and not st.session_state.get("instant_steps")


def box_moved(key: str) -> None:
    """The step box or the slider (``key``) was edited: a request for that step, applied by
    :func:`apply_box_step`."""
    if _requests() and edited(key):
        st.session_state.box_step = int(st.session_state[key])


def event_box_moved(tl: Timeline) -> None:
    """The event box was edited: a request for the event's first step."""
    value = st.session_state[EVENT_BOX]
    if not _requests() or value is None or not edited(EVENT_BOX):
        return
    e = int(value) - 1
    s = tl.first_step_of_event(e) if 0 <= e < tl.nr_events else None
    if s is None:
        st.session_state.jump_note = f"event {e + 1} did not run (the replay stopped before it)"
    else:
        st.session_state.jump_note = ""
        st.session_state.box_step = s


def apply_box_step() -> None:
    """Put the cursor where the step or event box asked, unless the browser's instant view
    reported its step in the same run (app_pages/ui/instant.py). Its reports come while the
    server is still drawing an earlier step, so the same request can carry a box value the page
    had not yet received the update of (an echo of a step shown a moment ago, not a request):
    the report is the page's newer word. Applied here, not in the callbacks, whose order
    Streamlit does not fix. Called before the cursor is read (the app's run and the view's)."""
    box = st.session_state.pop("box_step", None)
    if st.session_state.pop("instant_report_run", False):
        return
    if box is not None:
        st.session_state.cursor = int(box)
