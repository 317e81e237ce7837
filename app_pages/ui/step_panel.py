"""The step in words (where, what, the event, its diagnostics, a pinned note), the code panel
(the CPUs' pseudocode with the current line) and the locks."""

from __future__ import annotations

import streamlit as st

from explorer.model.records import Snapshot, Step
from explorer.replay.timeline import Timeline
from explorer.views.code import code_panel, lock_summary


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
            st.caption(f"event {step.event + 1} of {tl.nr_events} (trace line {ev.line})")
            st.text(ev.describe() + (f"  # {ev.note}" if ev.note else ""))
        for d in step.diagnostics:
            (st.error if d.kind in ("violation", "error") else st.warning)(f"{d.kind}: {d.code}")
            st.text(d.message)
        pinned = (st.session_state.get("review_notes") or {}).get(step.index)
        if pinned:
            st.info("Review note on this step:")
            st.text(pinned)


def code_and_locks(snap: Snapshot, step: Step | None) -> None:
    """The code of two CPUs (the step's first) with their stacks and state, then the locks."""
    panel = code_panel(snap)
    panel.sort(key=lambda c: (step is None or c.cpu != step.cpu, c.cpu))
    for cpu in panel[:2]:
        state = (
            "spinning on " + cpu.spinning_on
            if cpu.spinning_on
            else ("running" if cpu.running else "idle")
        )
        st.caption(f"{cpu.cpu}: {' > '.join(cpu.stack) or cpu.function} ({state})")
        if cpu.lines:
            st.code(cpu.listing(context=3), language=None, wrap_lines=True)
            if cpu.source:
                st.caption(f"follows {cpu.source}")
    st.text("\n".join(lock_summary(snap)))
