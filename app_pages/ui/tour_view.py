"""A tour stop's view: the view the stop names, at its step, drawn by the same view functions
as the Explore page."""

from __future__ import annotations

import streamlit as st

from app_pages.ui.state_panel import chart_config as _config
from explorer.replay.timeline import Timeline
from explorer.teaching.tours import ResolvedStop
from explorer.views.caches import kvm_caches_figure, pamt_cache_figure
from explorer.views.changes import diff_snapshots, effects_table
from explorer.views.code import code_panel, lock_summary
from explorer.views.refcounts import refcount_figure, timeline_over_time_figure
from explorer.views.region_map import region_map


def show_stop_view(tl: Timeline, stop: ResolvedStop) -> None:
    """The view the stop names, at its step."""
    i = stop.step
    snap = tl.state_at(i)
    step = tl.step(i)
    changed = tl.changed_regions(i)
    view = stop.stop.view
    st.caption(f"view: {stop.view_title}")
    if view == "region_map" or view == "animation":
        st.plotly_chart(
            region_map(snap, changed, height=300),
            key="chart_learn_map",
            config=_config("learn_map"),
            width="stretch",
        )
        if view == "animation":
            st.caption("The animation plays on the Explore page (Animation tab).")
    elif view == "pamt_caches":
        st.plotly_chart(
            pamt_cache_figure(snap, height=260),
            key="chart_learn_cache",
            config=_config("learn_cache"),
            width="stretch",
        )
    elif view == "code":
        panel = code_panel(snap)
        panel.sort(key=lambda c: (c.cpu != step.cpu, c.cpu))
        for cpu in panel[:2]:
            st.caption(f"{cpu.cpu}: {' > '.join(cpu.stack) or cpu.function}")
            if cpu.lines:
                st.code(cpu.listing(context=4), language=None, wrap_lines=True)
    elif view == "locks":
        st.text("\n".join(lock_summary(snap)))
    elif view == "what_changed":
        st.dataframe(effects_table(step), hide_index=True, width="stretch")
    elif view == "refcounts":
        st.plotly_chart(
            refcount_figure(snap, changed),
            key="chart_learn_refcounts",
            config=_config("learn_refcounts"),
            width="stretch",
        )
    elif view == "kvm_caches":
        st.plotly_chart(
            kvm_caches_figure(snap),
            key="chart_learn_kvm",
            config=_config("learn_kvm"),
            width="stretch",
        )
    elif view == "over_time":
        st.plotly_chart(
            timeline_over_time_figure(tl, i, snap.nr_regions),
            key="chart_learn_over_time",
            config=_config("learn_over_time"),
            width="stretch",
        )
    elif view == "diff":
        st.dataframe(diff_snapshots(tl.state_at(i - 1), snap), hide_index=True, width="stretch")
    elif view == "diagnostics":
        if not step.diagnostics:
            st.caption("No diagnostic at this step.")
        for d in step.diagnostics:
            (st.error if d.kind in ("violation", "error") else st.warning)(f"{d.kind}: {d.code}")
            st.text(d.message)
