"""Interleavings: every schedule of the loaded trace's concurrent groups, its outcomes and its
findings, each one a click away from Explore (pinned, at the step where it departs).

The search runs in a child process (:class:`explorer.interleavings.job.ExploreJob`); the job and its
result live in the session, keyed by the trace's bytes and the settings, so a rerun (a click
elsewhere, a change of page) neither restarts nor loses it.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app_pages import common
from app_pages.ui import search_results as results
from app_pages.ui.search_settings import search_settings
from explorer.appsupport import content_key, settings_key
from explorer.interleavings.job import (
    DEFAULT_MAX_STATES,
    MAX_MAX_STATES,
    MIN_MAX_STATES,
    ExploreJob,
)
from explorer.model.constants import mode_label
from explorer.model.settings import Settings

JOBS = "interleavings_jobs"
#: Jobs (and their results) a session keeps; the oldest settled ones go first.
KEEP_JOBS = 8

#: A job's states before it settles: waiting for a free search, or searching
_UNSETTLED = ("queued", "running")

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
    if status.state not in _UNSETTLED:
        st.rerun()
    if status.state == "queued":  # (the server runs a few searches at once: ExploreJob)
        st.info(f"Queued: {status.message}.")
    else:
        reduced = " (reduced)" if job.reduction else ""
        text = f"Exploring: {status.states:,} states so far{reduced} (limit {job.max_states:,})"
        st.progress(min(status.states / job.max_states, 1.0), text=text)
    if st.button("Stop", key="btn_stop_explore"):
        job.stop()
        st.rerun()


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
    running = status is not None and status.state in _UNSETTLED
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
    if status.state in _UNSETTLED:
        _progress(key)
        return
    if status.state == "stopped":
        st.warning(status.message)
        if status.result is not None and status.result.get("reached"):
            results.reached(loaded, settings, status.result)
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
    results.summary(loaded, result)
    results.outcomes(loaded, settings, result)
    if not result["complete"] and result.get("reached"):
        results.reached(loaded, settings, result)
    results.findings(loaded, settings, result)


main()
