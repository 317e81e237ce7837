"""The step in words (where, what, the event, its diagnostics, a pinned note), the code panel
(the CPUs' pseudocode with the current line) and the locks."""

from __future__ import annotations

import streamlit as st

from app_pages.ui.keys import STEP_HEADER_CSS
from explorer.model.records import Snapshot, Step
from explorer.replay.timeline import Timeline
from explorer.views.code import code_panel, lock_summary

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
    """Which step this is, on which CPU in which function, its narration and event."""
    if step is None:
        st.markdown(
            f"**Before the first step** (of {tl.nr_steps} steps, numbered 0 to "
            f"{tl.nr_steps - 1}). Press **Next** (or the Right arrow)."
        )
    else:
        ev = tl.events[step.event] if step.event >= 0 else None
        st.markdown(
            f"**Step {step.index}** of {tl.nr_steps} steps (numbered 0 to {tl.nr_steps - 1}), "
            f"on **{step.cpu}** in `{step.function}`"
        )
        st.text(step.narration)
        if ev is not None:
            # one plain-text line (the event's fields are the trace's): the column fits 720 lines
            st.text(
                f"event {step.event + 1} of {tl.nr_events} (line {ev.line}): "
                + ev.describe()
                + (f"  # {ev.note}" if ev.note else "")
            )
        for d in step.diagnostics:
            (st.error if d.kind in ("violation", "error") else st.warning)(f"{d.kind}: {d.code}")
            st.text(d.message)
        pinned = (st.session_state.get("review_notes") or {}).get(step.index)
        if pinned:
            st.info("Review note on this step:")
            st.text(pinned)


#: Lines of pseudocode either side of the current one (two CPUs and the locks fit 720 lines).
CODE_CONTEXT = 2


def code_and_locks(snap: Snapshot, step: Step | None) -> None:
    """The code of two CPUs (the step's first) with their stacks and state, then the locks."""
    with st.container(key="code_panel"):
        _code(snap, step)
    with st.container(key="locks"):
        st.text("\n".join(lock_summary(snap)))


def _code(snap: Snapshot, step: Step | None) -> None:
    panel = code_panel(snap)
    if not panel:
        st.caption("No CPU has run kernel code yet: the code shows here from the first step.")
        return
    panel.sort(key=lambda c: (step is None or c.cpu != step.cpu, c.cpu))
    for n, cpu in enumerate(panel[:2]):
        state = (
            "spinning on " + cpu.spinning_on
            if cpu.spinning_on
            else ("running" if cpu.running else "idle")
        )
        st.caption(f"{cpu.cpu}: {' > '.join(cpu.stack) or cpu.function} ({state})")
        # the step's CPU with its code; the other CPU as one line,
        # so the map, the caches and the code fit a projector's 720 lines together
        if cpu.lines and n == 0:
            st.code(cpu.listing(context=CODE_CONTEXT), language=None, wrap_lines=False)
