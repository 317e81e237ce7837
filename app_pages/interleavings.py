"""Interleavings: every schedule of the loaded trace's concurrent groups, its outcomes and its
findings, each one a click away from Explore (pinned, at the step where it departs).

The search runs in a child process (:class:`explorer.interleavings.job.ExploreJob`); the job and its
result live in the session, keyed by the trace's bytes and the settings, so a rerun (a click
elsewhere, a change of page) neither restarts nor loses it.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from app_pages import common
from app_pages.ui.search_settings import search_settings
from explorer.appsupport import content_key, settings_key
from explorer.interleavings.job import (
    DEFAULT_MAX_STATES,
    MAX_MAX_STATES,
    MIN_MAX_STATES,
    ExploreJob,
    explore_step,
    finding_link,
    first_difference,
    outcome_rows,
    pinned_trace,
    reached_rows,
    violation_rows,
)
from explorer.model.constants import mode_label
from explorer.model.settings import Settings

JOBS = "interleavings_jobs"
#: Jobs (and their results) a session keeps; the oldest settled ones go first.
KEEP_JOBS = 8
#: "Open in Explore" buttons shown for outcomes (a table of thousands needs no thousand buttons).
MAX_OUTCOME_BUTTONS = 60
BUTTONS_PER_ROW = 6

#: (the trace's content, its settings, whether the search is reduced)
JobKey = tuple[str, tuple[tuple[str, Any], ...], bool]


def _jobs() -> dict[JobKey, ExploreJob]:
    jobs: dict[JobKey, ExploreJob] = st.session_state.setdefault(JOBS, {})
    return jobs


def _start(key: JobKey, loaded: common.Loaded, settings: Settings, max_states: int) -> None:
    """One search per session at a time: a new one stops any other still running."""
    jobs = _jobs()
    for job in jobs.values():
        job.stop()
    jobs.pop(key, None)
    while len(jobs) >= KEEP_JOBS:
        jobs.pop(next(iter(jobs)))
    title = loaded.trace.title
    jobs[key] = ExploreJob(loaded.trace.events, settings, max_states, title=title, reduction=key[2])


@st.fragment(run_every=0.5)
def _progress(key: JobKey) -> None:
    """The running search's state count, twice a second; the whole page reruns once it ends."""
    job = _jobs().get(key)
    if job is None:
        return
    status = job.poll()
    if status.state != "running":
        st.rerun()
    reduced = " (reduced)" if job.reduction else ""
    text = f"Exploring: {status.states:,} states so far{reduced} (limit {job.max_states:,})"
    st.progress(min(status.states / job.max_states, 1.0), text=text)
    if st.button("Stop", key="btn_stop_explore"):
        job.stop()
        st.rerun()


def _stem(source: str) -> str:
    name = PurePath(source).name
    for suffix in (".gz", ".jsonl", ".csv"):
        name = name.removesuffix(suffix)
    return name or "trace"


def _open(
    loaded: common.Loaded,
    settings: Settings,
    orders: list[list[str]],
    label: str,
    suffix: str,
    at_step: int | None = None,
) -> None:
    """Load the trace with ``orders`` pinned and open Explore at ``at_step`` (a finding: the
    step it fires at), else where the pinned replay departs from the trace (an outcome)."""
    if loaded.name != "upload":  # a sample (pinned or not): its link names it and the orders
        with st.spinner("Pinning the schedule..."):
            plain = common.pinned_sample(loaded.name, []).trace if loaded.schedule else loaded.trace
            try:
                at_sample = common.adopt_pinned(loaded.name, orders, settings)
            except ValueError as exc:
                st.error(f"The schedule could not be pinned: {exc}")
                return
            step = (
                at_step
                if at_step is not None
                else first_difference(plain.events, settings, at_sample.trace.events)
            )
        st.session_state.cursor = step
        st.switch_page("app_pages/explore.py")
        return
    with st.spinner("Pinning the schedule and finding where it departs..."):
        data = pinned_trace(loaded.trace, settings, orders, label)
        problems = common.load_upload(f"{_stem(loaded.source)}-{suffix}.jsonl", data)
        if problems is not None:
            st.error("The pinned trace did not load:")
            common.problems_table(problems)
            return
        pinned: common.Loaded = st.session_state.loaded
        step = (
            at_step
            if at_step is not None
            else first_difference(loaded.trace.events, settings, pinned.trace.events)
        )
    st.session_state.cursor = step
    st.switch_page("app_pages/explore.py")


def _summary(result: dict[str, Any]) -> None:
    states, seconds = result["states"], result["seconds"]
    searched = "searched (reduced)" if result.get("reduction") else "(full search)"
    if not result["complete"]:
        covered = result.get("covered", {})
        st.warning(
            f"Incomplete: {states:,} states {searched} in {seconds} s, then the search stopped "
            f"in group {covered.get('groups', '?')} of {covered.get('groups_total', '?')}; "
            "nothing is claimed about the outcomes it did not reach. Raise the state limit and "
            "run it again."
        )
        st.text(str(result.get("stopped", "")))
        return
    verdict = "complete" if result["ok"] else "complete, with findings"
    st.markdown(
        f"**{states:,}** states {searched}, **{result['schedules']:,}** schedules {searched}, "
        f"**{len(result['outcomes']):,}** distinct outcomes ({result['end_states']:,} end "
        f"states: those differing only in page numbers are one outcome), {seconds} s: "
        f"{verdict}."
    )
    if "impossible" in result:
        st.warning("Under some interleaving an event of the trace cannot happen:")
        st.text(str(result["impossible"]))


def _outcomes(loaded: common.Loaded, settings: Settings, result: dict[str, Any]) -> None:
    rows = outcome_rows(result)
    if not rows:
        return
    st.subheader("Outcomes")
    st.caption(
        "Each distinct end state, how many turn orders reach it, and what it leaves. Open one "
        "to replay an interleaving that reaches it."
    )
    config = {
        "regions (refcount)": st.column_config.TextColumn(width="medium"),
        "kernel paths": st.column_config.TextColumn(width="large"),
    }
    frame = common.safe_frame(rows)
    st.dataframe(
        frame, hide_index=True, width="stretch", key="table_outcomes", column_config=config
    )
    st.caption("Open an outcome in Explore:")
    outcomes = result["outcomes"][:MAX_OUTCOME_BUTTONS]
    if len(result["outcomes"]) > MAX_OUTCOME_BUTTONS:
        st.caption(f"Buttons for the first {MAX_OUTCOME_BUTTONS} outcomes.")
    for first in range(0, len(outcomes), BUTTONS_PER_ROW):
        cols = st.columns(BUTTONS_PER_ROW)
        row = enumerate(outcomes[first : first + BUTTONS_PER_ROW], first + 1)
        for col, (n, o) in zip(cols, row, strict=False):
            if col.button(
                f"Outcome {n}",
                key=f"btn_open_outcome_{n}",
                width="stretch",
                help=f"Open outcome {n} in Explore, pinned to a schedule that reaches it",
            ):
                _open(loaded, settings, o["orders"], f"outcome {n}", f"outcome-{n}")


def _reached(loaded: common.Loaded, settings: Settings, result: dict[str, Any]) -> None:
    """What a search stopped by its limit (or the Stop button) had reached: real end states,
    each with a schedule that reaches it, but not every outcome."""
    rows = reached_rows(result)
    st.subheader("Reached before the stop")
    st.caption(
        "The search did not finish, so these are not every outcome and no schedule counts are "
        "claimed; each is a real end state, with a schedule that reaches it. Open one to "
        "replay that schedule."
    )
    config = {"regions (refcount)": st.column_config.TextColumn(width="medium")}
    st.dataframe(
        common.safe_frame(rows),
        hide_index=True,
        width="stretch",
        key="table_reached",
        column_config=config,
    )
    reached = result["reached"][:MAX_OUTCOME_BUTTONS]
    if len(result["reached"]) > MAX_OUTCOME_BUTTONS:
        st.caption(f"Buttons for the first {MAX_OUTCOME_BUTTONS}.")
    for first in range(0, len(reached), BUTTONS_PER_ROW):
        cols = st.columns(BUTTONS_PER_ROW)
        row = enumerate(reached[first : first + BUTTONS_PER_ROW], first + 1)
        for col, (n, o) in zip(cols, row, strict=False):
            if col.button(
                f"Reached {n}",
                key=f"btn_open_reached_{n}",
                width="stretch",
                help=f"Open end state {n} in Explore, pinned to a schedule that reaches it",
            ):
                _open(loaded, settings, o["orders"], f"reached {n}", f"reached-{n}")


def _findings(loaded: common.Loaded, settings: Settings, result: dict[str, Any]) -> None:
    link = None
    if loaded.name != "upload":  # a sample: a link can name it
        base = Settings().with_overrides(loaded.trace.settings)

        def link(v: dict[str, Any]) -> str:
            # (Explore is the default page: the app's root, relative to this page's URL)
            return "./?" + urlencode(finding_link(loaded.name, settings, base, v))

    rows = violation_rows(result, link)
    st.subheader("Findings")
    if not rows:
        if result["complete"]:
            st.success("No schedule violates an invariant, fires a kernel WARN or deadlocks.")
        return
    st.caption(
        "Invariant violations, kernel WARNs, deadlocks and livelocks, each with the first "
        "schedule found that reproduces it (step: where it fires in that schedule's replay, "
        "the step Explore opens at)."
        + (
            " The link reproduces it: the sample, its settings and the pinned schedule."
            if link is not None
            else " (A link needs a sample: an uploaded trace is not in the app's library.)"
        )
    )
    config: dict[str, Any] = {"message": st.column_config.TextColumn(width="large")}
    if link is not None:
        config["link"] = st.column_config.LinkColumn(display_text="link", width="small")
    frame = common.safe_frame(rows)
    st.dataframe(
        frame, hide_index=True, width="stretch", key="table_findings", column_config=config
    )
    violations = result["violations"]
    for first in range(0, len(violations), BUTTONS_PER_ROW):
        cols = st.columns(BUTTONS_PER_ROW)
        for col, v in zip(cols, violations[first : first + BUTTONS_PER_ROW], strict=False):
            code = str(v["code"])
            if col.button(
                f"Open {code}",
                key=f"btn_open_finding_{code}",
                width="stretch",
                help=f"Open {code} in Explore at step {explore_step(v)}, where it fires",
            ):
                _open(loaded, settings, v["orders"], code, code, at_step=explore_step(v))


def main() -> None:
    common.init_session()
    common.sidebar_trace_picker()
    loaded: common.Loaded = st.session_state.loaded
    sidebar = common.sidebar_settings()
    st.title("Interleavings")
    st.caption(
        "Every order of the CPUs' turns in each group of concurrent events (same t), searched "
        "on the engine itself: the distinct outcomes, how many schedules reach each, and every "
        "finding with a schedule that reproduces it. To see a finding, try the mode "
        f"{mode_label('v6-no-recheck')!r} in the sidebar: it drops the recheck under "
        "pamt_lock, and some schedule issues a second PAMT.ADD."
    )
    common.show_upload_errors()
    settings = search_settings(loaded, sidebar)
    st.text(f"trace: {loaded.source}: {loaded.trace.title}\nmode: {mode_label(settings.mode)}")
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    reduction = c2.toggle(
        "partial-order reduction",
        value=True,
        key="explore_reduction",
        help="On: one order per class of orders differing only in independent turns (same "
        "outcomes and findings). Off: every order, exact counts (--no-reduction).",
    )
    key: JobKey = (content_key(loaded.data), settings_key(settings), reduction)
    job = _jobs().get(key)
    status = job.poll() if job is not None else None
    running = status is not None and status.state == "running"
    limit = c1.number_input(
        "state limit",
        min_value=MIN_MAX_STATES,
        max_value=MAX_MAX_STATES,
        value=DEFAULT_MAX_STATES,
        step=10_000,
        key="explore_max_states",
        help="Past this many states the search stops and claims nothing (--max-states).",
    )
    max_states = int(limit)
    if c3.button("Explore every interleaving", key="btn_explore", disabled=running):
        _start(key, loaded, settings, max_states)
        st.rerun()
    if job is None or status is None:
        return
    if status.state == "running":
        _progress(key)
        return
    if status.state == "stopped":
        st.warning(status.message)
        if status.result is not None and status.result.get("reached"):
            _reached(loaded, settings, status.result)
        return
    if status.state == "failed" or status.result is None:
        st.error("The search failed:")
        st.code(status.message, language=None)
        return
    result = status.result
    if result["groups"] == 0:
        st.info(
            "This trace has no concurrent group (no two CPUs' events share a t): it has one "
            "interleaving, the replay Explore shows."
        )
        return
    _summary(result)
    _outcomes(loaded, settings, result)
    if not result["complete"] and result.get("reached"):
        _reached(loaded, settings, result)
    _findings(loaded, settings, result)


main()
