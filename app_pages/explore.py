"""Explore: step through a trace and watch regions, refcounts, caches and locks move."""

from __future__ import annotations

import time

import streamlit as st

from app_pages import common
from explorer.appsupport import (
    MAX_NOTE_CHARS,
    MAX_NOTES,
    Place,
    notes_in_trace,
    place_in,
    stop_note,
)
from explorer.ingest.write import dump_trace
from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline
from explorer.views.animation import animation_figure, animation_html
from explorer.views.caches import kvm_caches_figure, pamt_cache_figure
from explorer.views.capture import capture_markers_figure, divergence_steps
from explorer.views.changes import diff_snapshots, effects_table
from explorer.views.code import code_panel, lock_summary
from explorer.views.export import DEFAULT_FORMAT, FORMATS, slide_config
from explorer.views.refcounts import refcount_figure, timeline_over_time_figure
from explorer.views.region_map import region_map

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
COMPACT_CSS = "<style>.block-container{padding-top:2.6rem;padding-bottom:1rem}</style>"
#: Seconds between steps while playing.
SPEEDS = {
    "1 step/s": 1.0,
    "2 steps/s": 0.5,
    "4 steps/s": 0.25,
    "8 steps/s": 0.125,
    "10 steps/s": 0.1,
}
DEFAULT_SPEED = "2 steps/s"
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
    return min(step + int((time.monotonic() - t0) / period + 0.5), last)


def _set_cursor(i: int) -> None:
    st.session_state.cursor = i
    if st.session_state.get("playing"):
        _anchor(i)


def _goto_step() -> None:
    # While playing, the boxes and the slider are disabled and the clock places the cursor: a
    # value they send then is the one shown a tick ago, not a request.
    if not st.session_state.get("playing"):
        st.session_state.cursor = int(st.session_state.goto_step)


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
        info = common.capture_info(st.session_state.loaded)
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


def _go_event(tl: Timeline) -> None:
    if st.session_state.get("playing") or st.session_state.goto_event is None:
        return
    e = int(st.session_state.goto_event) - 1
    s = tl.first_step_of_event(e) if 0 <= e < tl.nr_events else None
    if s is None:
        st.session_state.jump_note = f"event {e + 1} did not run (the replay stopped before it)"
    else:
        st.session_state.jump_note = ""
        st.session_state.cursor = s


def controls(tl: Timeline) -> None:
    last = tl.nr_steps - 1
    cols = st.columns([1.2, 1.1, 1.1, 1.1, 1.2, 1.5], vertical_alignment="bottom")
    cols[0].button(
        "First",
        key="btn_first",
        on_click=_set_cursor,
        args=(-1,),
        shortcut="Home",
        help="before the first step (Home)",
    )
    cols[1].button(
        "Prev",
        key="btn_prev",
        on_click=_move,
        args=(-1, last),
        shortcut="Left",
        help="previous step (Left arrow)",
    )
    cols[2].button(
        "Next",
        key="btn_next",
        on_click=_move,
        args=(1, last),
        shortcut="Right",
        type="primary",
        help="next step (Right arrow)",
    )
    cols[3].button(
        "Last",
        key="btn_last",
        on_click=_set_cursor,
        args=(last,),
        shortcut="End",
        help="the last step (End)",
    )
    cols[4].button(
        "Pause" if st.session_state.playing else "Play",
        key="btn_play",
        on_click=_toggle_play,
        shortcut="Space",
        help="play / pause (Space)",
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
    if last >= 0:
        st.slider(
            "step",
            min_value=-1,
            max_value=last,
            key="cursor",
            label_visibility="collapsed",
            help=NUMBERING,
            disabled=playing,
        )
    # the two boxes show where the cursor is (set before the widgets exist in this run); before
    # the first step no event has run: the event box is empty
    cur = min(max(int(st.session_state.cursor), -1), last)
    st.session_state.goto_step = cur
    st.session_state.goto_event = tl.step(cur).event + 1 if cur >= 0 else None
    j = st.columns([1, 1, 1.7, 1.3, 0.9, 0.9], vertical_alignment="bottom")
    j[0].number_input(
        "go to step",
        min_value=-1,
        max_value=max(last, -1),
        step=1,
        key="goto_step",
        on_change=_goto_step,
        disabled=playing,
        help=f"0 to {last}; -1: before the first step. {NUMBERING}",
    )
    j[1].number_input(
        "go to event",
        min_value=1,
        max_value=max(tl.nr_events, 1),
        step=1,
        key="goto_event",
        on_change=_go_event,
        args=(tl,),
        disabled=playing,
        placeholder="none yet",
        help=f"1 to {tl.nr_events}: the trace's events, in order (empty before the first step)",
    )
    kind = j[2].selectbox(
        "jump to the previous / next step with", list(JUMP_KINDS), key="jump_kind"
    )
    if JUMP_KINDS[kind] == "op":
        j[3].selectbox("op", OPS, key="jump_op")
    elif JUMP_KINDS[kind] == "region":
        j[3].number_input(
            "region", min_value=0, max_value=tl.settings.nr_regions - 1, step=1, key="jump_region"
        )
    j[4].button("earlier", key="btn_jump_prev", on_click=_jump, args=(tl, -1))
    j[5].button("later", key="btn_jump_next", on_click=_jump, args=(tl, 1))
    note = st.session_state.get("jump_note")
    if note:
        st.caption(note)


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
    if st.session_state.pop("play_changed", False):
        st.rerun(scope="app")  # start, stop or retime the timer (run_every is set by the app)
    last = tl.nr_steps - 1
    if "pause_at" in st.session_state:
        st.session_state.cursor = st.session_state.pop("pause_at")
    if st.session_state.playing:
        if "play_anchor" not in st.session_state:
            _anchor(int(st.session_state.cursor))
        st.session_state.cursor = _due(last)
        if st.session_state.cursor >= last:
            st.session_state.playing = False
            st.rerun(scope="app")  # the last step: stop the timer
    controls(tl)
    i = min(max(int(st.session_state.cursor), -1), last)
    st.session_state.shown_step = i
    _remember_place(tl, replay_key, i)
    snap = tl.state_at(i)
    step = tl.step(i) if i >= 0 else None
    changed = tl.changed_regions(i) if i >= 0 else []
    left, right = st.columns([3, 2])
    with left:
        color_by = st.session_state.get("color_by", "dpamt")
        st.plotly_chart(
            region_map(snap, changed, color_by=color_by, height=300),
            key="chart_region_map",
            config=_config("region_map"),
            width="stretch",
        )
        st.plotly_chart(
            pamt_cache_figure(snap, height=240),
            key="chart_pamt_cache",
            config=_config("pamt_cache"),
            width="stretch",
        )
    with right:
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
                (st.error if d.kind in ("violation", "error") else st.warning)(
                    f"{d.kind}: {d.code}"
                )
                st.text(d.message)
            pinned = (st.session_state.get("review_notes") or {}).get(step.index)
            if pinned:
                st.info("Review note on this step:")
                st.text(pinned)
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
                refcount_figure(snap, changed),
                key="chart_refcounts",
                config=_config("refcounts"),
                width="stretch",
            )
    if opened[2]:
        with tabs[2]:
            st.plotly_chart(
                kvm_caches_figure(snap),
                key="chart_kvm_caches",
                config=_config("kvm_caches"),
                width="stretch",
            )
    if opened[3]:
        with tabs[3]:
            st.plotly_chart(
                timeline_over_time_figure(tl, i, snap.nr_regions),
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
                diff_snapshots(tl.state_at(int(other)), snap),
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
    common.sync_url(settings)


def capture_tab(tl: Timeline, loaded: common.Loaded, i: int) -> None:
    """A kernel capture's observations on the timeline, and where the model parts from it."""
    info = common.capture_info(loaded)
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
            common.safe_frame(
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
    if not text:
        notes.pop(i, None)
    elif len(notes) < MAX_NOTES or i in notes:
        notes[i] = text
    st.session_state.review_notes = notes
    st.session_state.note_text = ""


def notes_tab(tl: Timeline, loaded: common.Loaded, i: int) -> None:
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
    else:
        st.caption("Step to a step to pin a note to it.")
    if not notes:
        st.caption(
            f"No note yet. Notes go into the link (this page's URL) and into the trace you "
            f"download here; at most {MAX_NOTES}."
        )
        return
    st.dataframe(
        common.safe_frame(
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


def _config(name: str) -> dict[str, object]:
    """The charts' Plotly config: the camera button saves a slide-size image (the format chosen
    in the sidebar), named after the chart."""
    return slide_config(st.session_state.get("export_format", DEFAULT_FORMAT), f"dpamt-{name}")


def export_choice() -> None:
    """The camera button's format, kept in ``export_format`` (not a widget key: the Learn page,
    which has no such widget, reads it too)."""
    if "export_format_choice" not in st.session_state:
        st.session_state.export_format_choice = st.session_state.get(
            "export_format", DEFAULT_FORMAT
        )
    st.session_state.export_format = st.sidebar.radio(
        "Export format for the charts' camera button",
        list(FORMATS),
        format_func=lambda f: FORMATS[f],
        horizontal=True,
        key="export_format_choice",
        help="The camera button at a chart's top right saves it as a 1920x1080 slide image "
        "(the browser draws it: nothing is sent to a server).",
    )


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
            common.safe_frame(
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


def restore_place(tl: Timeline, loaded: common.Loaded, replay_key: tuple[object, ...]) -> None:
    """After a change of settings (a new replay of the same trace), put the cursor on the same
    event, at the first step of the same label within it if there is one."""
    old: Place | None = st.session_state.get("place")
    if old is None or old.replay == replay_key or old.replay[0] != replay_key[0]:
        return
    if int(st.session_state.cursor) == old.step:  # moved meanwhile (e.g. a link): keep that
        st.session_state.cursor = place_in(tl, old.event, old.label)


def main() -> None:
    problems = common.init_session()
    common.sidebar_trace_picker()
    settings = common.sidebar_settings()
    export_choice()
    st.sidebar.caption(
        "Why 10 pages: each DPAMT get uses 0 pages (fast path) or 2 (a PAMT pair). "
        "A 4 KiB fault links at most 4 non-root S-EPT tables (5-level EPT; the root "
        "is not covered) plus the leaf: 5 gets x 2 = 10 pages. Fewer: a cold fault "
        "runs dry and retries; 0: it livelocks."
    )
    loaded: common.Loaded = st.session_state.loaded
    st.markdown(COMPACT_CSS, unsafe_allow_html=True)  # our own CSS: tighter page margins
    st.markdown(
        "**You are watching host memory (2 MiB regions), the vCPUs' DPAMT caches and the "
        "kernel code, step by step, while KVM handles a TDX trace. Press Next (or the "
        "Right arrow).**"
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
    knob_effects(loaded, settings)
    if "cursor" not in st.session_state:
        st.session_state.cursor = -1
    replay_key = common.replay_key(loaded, settings)
    restore_place(tl, loaded, replay_key)
    st.session_state.cursor = min(max(int(st.session_state.cursor), -1), tl.nr_steps - 1)
    playing = st.session_state.get("playing", False)
    interval = _period() if playing else None
    st.fragment(run_every=interval)(view)(tl, loaded, settings, replay_key)


main()
