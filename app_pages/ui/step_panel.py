"""The step in words (where, what, the event, its diagnostics, a pinned note), the code panel
(the CPUs' pseudocode with the current line) and the locks."""

from __future__ import annotations

import streamlit as st

from app_pages.ui.keys import STEP_HEADER_CSS
from explorer.model.records import Snapshot, Step
from explorer.replay.timeline import Timeline
from explorer.views import window
from explorer.views.code import lock_summary

#: Our own CSS: tight page margins and gaps, and a code panel in a projector's 720 lines.
COMPACT_CSS = (
    "<style>.block-container{padding-top:3rem;padding-bottom:1rem}"
    ".st-key-step_view [data-testid=stVerticalBlock]{gap:0.35rem}"
    ".st-key-code_panel pre, .st-key-code_panel code{font-size:12px;line-height:1.3}"
    ".st-key-code_panel pre{padding:0.4rem 0.6rem !important}"
    ".st-key-locks pre, .st-key-locks div{font-size:12px}"
    ".st-key-step_header p, .st-key-step_header div{font-size:14px}" + STEP_HEADER_CSS + "</style>"
)


def step_text(tl: Timeline, step: Step | None) -> None:
    """Which step this is, on which CPU in which function, its narration and event (the words
    are explorer.views.window's, which the instant-steps window sends to the browser too)."""
    text = window.step_text(tl, step)
    st.markdown(text.header)
    if step is None:
        return
    st.text(text.narration)
    if text.event_line:
        # one plain-text line (the event's fields are the trace's): the column fits 720 lines
        st.text(text.event_line)
    for kind, code, message, is_error in text.diagnostics:
        (st.error if is_error else st.warning)(f"{kind}: {code}")
        st.text(message)
    pinned = (st.session_state.get("review_notes") or {}).get(step.index)
    if pinned:
        st.info("Review note on this step:")
        st.text(pinned)


def code_and_locks(snap: Snapshot, step: Step | None) -> None:
    """The code of two CPUs (the step's first) with their stacks and state, then the locks."""
    with st.container(key="code_panel"):
        blocks = window.code_view(snap, step)
        if not blocks:
            st.caption(window.NO_CODE)
        for block in blocks:
            st.caption(block.caption)
            if block.listing is not None:
                st.code(block.listing, language=None, wrap_lines=False)
    with st.container(key="locks"):
        st.text("\n".join(lock_summary(snap)))
