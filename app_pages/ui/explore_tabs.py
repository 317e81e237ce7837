"""Explore's tabs below the step: what changed, refcounts, KVM caches, over time, a diff, the
animation, diagnostics, the kernel capture, review notes and the display choice. Only the open
tab is drawn."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from app_pages.ui.loader import capture_info
from app_pages.ui.replays import Loaded
from app_pages.ui.state_panel import chart_config as _config
from app_pages.ui.tables import safe_frame
from explorer.appsupport import (
    MAX_NOTE_CHARS,
    MAX_NOTES,
    MAX_URL_NOTES_CHARS,
    notes_in_trace,
    url_notes_length,
)
from explorer.ingest.write import dump_trace
from explorer.model.records import Snapshot, Step
from explorer.replay.timeline import Timeline
from explorer.views.animation import animation_figure, animation_html
from explorer.views.caches import kvm_caches_figure
from explorer.views.capture import capture_markers_figure
from explorer.views.changes import diff_snapshots, effects_table
from explorer.views.refcounts import refcount_figure, timeline_over_time_figure

TABS = (
    "What changed",
    "Refcounts",
    "KVM caches",
    "Over time",
    "Diff two steps",
    "Animation",
    "Diagnostics",
    "Kernel capture",
    "Review notes",
    "Display",
)


def explore_tabs(
    tl: Timeline,
    loaded: Loaded,
    i: int,
    snap: Callable[[], Snapshot],
    step: Step | None,
    changed: list[int],
) -> None:
    """The tabs below the step, at step ``i`` (``step`` and ``changed`` are its; ``snap`` gives
    its state: asked only by the tabs that draw it, since a seek is the dearest part of a run
    whose open tab does not need it, e.g. the instant view's report with "What changed" open)."""
    # Only the open tab is drawn (a step reruns this fragment: the hidden tabs' figures are not
    # rebuilt and re-sent for every step); switching tabs reruns the fragment.
    tabs = st.tabs(list(TABS), key="explore_tab", on_change="rerun")
    opened = [t.open is not False for t in tabs]
    if opened[0]:
        with tabs[0]:
            if step is not None:
                st.dataframe(
                    effects_table(step), hide_index=True, width="stretch", key="table_effects"
                )
            else:
                st.caption("Nothing yet: this is the state before the first step.")
    if opened[1]:
        with tabs[1]:
            st.plotly_chart(
                refcount_figure(snap(), changed),
                key="chart_refcounts",
                config=_config("refcounts"),
                width="stretch",
            )
    if opened[2]:
        with tabs[2]:
            st.plotly_chart(
                kvm_caches_figure(snap()),
                key="chart_kvm_caches",
                config=_config("kvm_caches"),
                width="stretch",
            )
    if opened[3]:
        with tabs[3]:
            st.plotly_chart(
                timeline_over_time_figure(tl, i, snap().nr_regions),
                key="chart_over_time",
                config=_config("over_time"),
                width="stretch",
            )
    if opened[4]:
        with tabs[4]:
            c1, c2 = st.columns(2)
            other = c1.number_input(
                "compare with step",
                min_value=-1,
                max_value=tl.nr_steps - 1,
                value=max(i - 1, -1),
                key="diff_step",
            )
            c2.caption(f"current step: {i}")
            st.dataframe(
                diff_snapshots(tl.state_at(int(other)), snap()),
                hide_index=True,
                width="stretch",
                key="table_diff",
            )
    if opened[5]:
        with tabs[5]:
            animation_tab(tl, i)
    if opened[6]:
        with tabs[6]:
            diagnostics_tab(tl)
    if opened[7]:
        with tabs[7]:
            capture_tab(tl, loaded, i)
    if opened[8]:
        with tabs[8]:
            notes_tab(tl, loaded, i)
    with tabs[9]:  # always drawn: the radio keeps its value while another tab is open
        st.radio(
            "colour regions by",
            ["dpamt", "owner"],
            horizontal=True,
            key="color_by",
            format_func=lambda c: "DPAMT state" if c == "dpamt" else "page owner",
        )


def capture_tab(tl: Timeline, loaded: Loaded, i: int) -> None:
    """A kernel capture's observations on the timeline, and where the model parts from it."""
    info = capture_info(loaded)
    if info is None:
        st.caption(
            "No kernel capture is loaded. Upload one (the output of tools/capture/dpamt.bt, "
            "docs/capture.md): it is imported as a trace and checked against the model, "
            "observation by observation."
        )
        return
    c = info.conformance
    verdict = (
        "the model agrees with every observation" if c.ok else f"{len(c.divergences)} divergence(s)"
    )
    st.markdown(f"**{info.source}**: {c.observations} kernel observations compared; {verdict}.")
    for note in info.notes:  # (derived records, unknown keys: docs/capture.md)
        st.caption(note)
    if c.stopped:
        st.warning("The imported trace's replay stopped:")
        st.text(c.stopped)
    st.plotly_chart(
        capture_markers_figure(c.matches, c.divergences, i, tl.nr_steps),
        key="chart_capture",
        config=_config("capture"),
        width="stretch",
    )
    if c.divergences:
        st.dataframe(
            safe_frame(
                [
                    {
                        "capture line": d.line,
                        "kind": d.kind,
                        "kernel": str(d.observed),
                        "model": str(d.predicted),
                        "step": d.step,
                    }
                    for d in c.divergences
                ]
            ),
            hide_index=True,
            width="stretch",
            key="table_divergences",
        )
        st.caption("Jump to them with 'a divergence from the kernel capture' above.")


def _pin_note(i: int) -> None:
    text = str(st.session_state.get("note_text", "")).strip()[:MAX_NOTE_CHARS]
    notes = dict(st.session_state.get("review_notes") or {})
    st.session_state.pop("note_error", None)
    if not text:
        notes.pop(i, None)
    elif len(notes) < MAX_NOTES or i in notes:
        notes[i] = text
        if url_notes_length(notes) > MAX_URL_NOTES_CHARS:
            st.session_state.note_error = (
                f"Not pinned: with this note the notes would not fit in a link (at most "
                f"{MAX_URL_NOTES_CHARS:,} characters as a URL). Shorten it, or download the "
                "trace with the notes below."
            )
            return
    st.session_state.review_notes = notes
    st.session_state.note_text = ""


def notes_tab(tl: Timeline, loaded: Loaded, i: int) -> None:
    """A reviewer's notes pinned to steps: carried by the link (the URL) and, on download, by
    the trace itself (a ``note`` event before the step's event)."""
    notes: dict[int, str] = dict(st.session_state.get("review_notes") or {})
    if i >= 0:
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        c1.text_input(
            f"note for step {i} (empty: remove it)",
            key="note_text",
            max_chars=MAX_NOTE_CHARS,
            placeholder=notes.get(i, "e.g. look here: this is the lost race"),
        )
        c2.button("Pin to this step", key="btn_pin_note", on_click=_pin_note, args=(i,))
        if st.session_state.get("note_error"):
            st.warning(st.session_state.note_error)
    else:
        st.caption("Step to a step to pin a note to it.")
    if not notes:
        st.caption(
            f"No note yet. Notes go into the link (this page's URL) and into the trace you "
            f"download here; at most {MAX_NOTES}."
        )
        return
    st.dataframe(
        safe_frame(
            [{"step": k, "note": v} for k, v in sorted(notes.items())], columns=["step", "note"]
        ),
        hide_index=True,
        width="stretch",
        key="table_notes",
    )
    events = notes_in_trace(tl.events, tl, notes)
    st.download_button(
        "Download the trace with these notes (note events)",
        dump_trace(
            events,
            title=loaded.trace.title,
            description=loaded.trace.description,
            settings=settings_dict(tl),
        ),
        file_name=loaded.source.rsplit(".", 1)[0] + "-notes.jsonl",
        key="btn_download_notes",
    )


def settings_dict(tl: Timeline) -> dict[str, object]:
    return dict(tl.settings.to_dict())


def animation_tab(tl: Timeline, i: int) -> None:
    st.caption(
        "Plays in the browser, with no round-trip to the server: the region map, the caches, "
        "each step's narration and its CPU's code over the 30 steps around the cursor."
    )
    if st.button("Build the animation", key="btn_animation"):
        lo, hi = max(i - 15, 0), min(i + 15, tl.nr_steps)
        window = [
            (tl.state_at(k), tl.changed_regions(k), tl.step(k).narration) for k in range(lo, hi)
        ]
        if window:
            fig = animation_figure(window, [tl.step(k).cpu for k in range(lo, hi)])
            st.session_state.animation = (lo, hi, fig)
    anim = st.session_state.get("animation")
    if anim is not None:
        st.plotly_chart(
            anim[2], key="chart_animation", config=_config("animation"), width="stretch"
        )
        st.download_button(
            "Download as standalone HTML",
            animation_html(anim[2]),
            file_name=f"dpamt-steps-{anim[0]}-{anim[1]}.html",
            mime="text/html",
            key="btn_download_animation",
        )


def diagnostics_tab(tl: Timeline) -> None:
    if tl.diagnostics:
        st.dataframe(
            safe_frame(
                [
                    {
                        "step": d.step,
                        "event": d.event + 1,
                        "line": d.line,
                        "kind": d.kind,
                        "code": d.code,
                        "message": d.message,
                    }
                    for d in tl.diagnostics
                ]
            ),
            hide_index=True,
            width="stretch",
            key="table_diagnostics",
        )
    else:
        st.caption("No violation, warning or livelock in this replay.")
