"""A background job's progress: a bar and a Cancel button redrawn by a timer fragment while
the job runs (the job itself lives in the session, so it survives reruns)."""

from __future__ import annotations

import streamlit as st

from explorer.sweeps.job import SweepJob


@st.fragment(run_every=0.5)
def sweep_progress(job: SweepJob) -> None:
    """The running sweep's progress bar and Cancel button, redrawn every half second.

    When the job has finished, the whole page reruns once, and draws its chart instead.
    """
    status = job.poll()
    if status.finished:
        st.rerun()
    st.progress(status.fraction, text=status.describe())
    if job.cancel_requested:
        st.caption("Cancelling: the points running now finish, the rest are dropped.")
    elif st.button("Cancel", key="btn_sweep_cancel"):
        job.cancel()
        st.caption("Cancelling: the points running now finish, the rest are dropped.")
