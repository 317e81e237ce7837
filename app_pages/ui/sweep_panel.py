"""Compare's sweep over dpamt_gets_per_fault: the cluster choice, the background SweepJob, its
progress and its chart."""

from __future__ import annotations

import hashlib
import os

import streamlit as st

from app_pages.ui.progress import sweep_progress as _sweep_progress
from app_pages.ui.replays import Loaded
from explorer.model.settings import Settings
from explorer.sweeps.job import SCHEDULER_ENV, SweepJob, address_problem, local_workers
from explorer.sweeps.sweep import grid_points, settings_json, trace_digest
from explorer.views.sweep import sweep_figure

#: Sweeps kept in the session (the latest few settings' results; older ones are dropped).
MAX_SWEEP_JOBS = 4


def _scheduler() -> tuple[str | None, str | None]:
    """The "Cluster" expander: (scheduler address or None for a local run, problem or None).

    The address starts as DPAMT_SCHEDULER (as for the CLI) and can be edited here; empty
    means this machine.
    """
    with st.expander("Cluster"):
        text = st.text_input(
            "Dask scheduler",
            value=os.environ.get(SCHEDULER_ENV, ""),
            key="sweep_scheduler",
            placeholder="tcp://HOST:PORT",
            help="Empty: this machine (in this process for a small sweep, else a local cluster "
            f"of one worker per CPU). Starts as ${SCHEDULER_ENV}. See docs/scaling.md.",
        ).strip()
        if not text:
            st.caption("The sweep runs on this machine.")
            return None, None
        problem = address_problem(text)
        if problem is None:
            st.caption(f"The sweep runs on the Dask cluster at {text}.")
            return text, None
    # outside the expander: seen even when it is closed, beside the disabled button
    st.error(f"Bad scheduler address. {problem}")
    return None, problem


def _digest(loaded: Loaded) -> str:
    """The trace digest of the sweep rows, computed once per loaded trace (keyed by its bytes)."""
    memo: dict[str, str] = st.session_state.setdefault("sweep_digests", {})
    raw = hashlib.sha256(loaded.data).hexdigest()
    if raw not in memo:
        memo.clear()
        memo[raw] = trace_digest(loaded.trace.events)
    return memo[raw]


def sweep_panel(loaded: Loaded, base: Settings, configs: list[tuple[str, Settings]]) -> None:
    """The sweep over dpamt_gets_per_fault, run by a background :class:`SweepJob`.

    The job lives in the session, keyed by the trace digest, the points' settings and the
    scheduler: changing a setting shows that setting's sweep (or none), and a sweep keeps
    running across reruns while the fragment below draws its progress.
    """
    st.subheader("Sweep dpamt_gets_per_fault")
    scheduler, problem = _scheduler()
    hi = st.slider("from 0 to", 1, 12, 8, key="sweep_hi")
    modes = sorted({s.mode for _, s in configs})
    points = [
        p
        for m in modes
        for p in grid_points(
            base.with_overrides({"mode": m}), {"dpamt_gets_per_fault": list(range(hi + 1))}
        )
    ]
    key = hashlib.sha256(
        "\n".join([_digest(loaded), scheduler or "", *map(settings_json, points)]).encode()
    ).hexdigest()
    jobs: dict[str, SweepJob] = st.session_state.setdefault("sweep_jobs", {})
    if st.button("Run the sweep", key="btn_sweep", disabled=problem is not None):
        for old in jobs.values():  # one sweep at a time from this page
            old.cancel()
        jobs.pop(key, None)
        workers = local_workers(len(points), len(loaded.trace.events), scheduler)
        jobs[key] = SweepJob(loaded.trace.events, points, scheduler, workers, trace=loaded.source)
        while len(jobs) > MAX_SWEEP_JOBS:
            jobs.pop(next(iter(jobs))).cancel()
    job = jobs.get(key)
    if job is None:
        return
    if not job.poll().finished:
        _sweep_progress(job)
        return
    status = job.poll()
    if status.state == "failed":
        st.error(f"The sweep failed. {status.error}")
        return
    if status.state == "cancelled":
        st.warning(
            f"The sweep was cancelled: {status.done:,} of {status.total:,} points were run, "
            "shown below."
        )
    else:
        st.caption(
            f"{status.total:,} points in {status.elapsed:,.1f} s "
            f"({'on ' + scheduler if scheduler else 'on this machine'})."
        )
    rows = job.rows()
    if rows:
        st.plotly_chart(
            sweep_figure(rows, "setting.dpamt_gets_per_fault", "setting.mode"),
            key="chart_sweep",
            width="stretch",
        )
