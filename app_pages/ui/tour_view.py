"""A tour stop's view: the view the stop names, at its step, drawn by the same view functions
as the Explore page."""

from __future__ import annotations

import streamlit as st

from app_pages.ui.state_panel import chart_config as _config
from app_pages.ui.state_panel import page_theme
from explorer.replay.timeline import Timeline
from explorer.teaching.tours import ResolvedStop
from explorer.views.caches import kvm_caches_figure, pamt_cache_figure
from explorer.views.changes import diff_snapshots, effects_table
from explorer.views.code import code_panel, lock_summary
from explorer.views.refcounts import refcount_figure, timeline_over_time_figure
from explorer.views.region_map import region_map, replay_span


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
            region_map(snap, changed, height=300, theme=page_theme(), span=replay_span(tl)),
            key="chart_learn_map",
            config=_config("learn_map"),
            width="stretch",
        )
        if view == "animation":
            st.caption("The animation plays on the Explore page (Animation tab).")
    elif view == "pamt_caches":
        st.plotly_chart(
            pamt_cache_figure(snap, height=260, theme=page_theme()),
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


#: Which element of the full view each stop view points at (the CSS class of its container);
#: the other views are drawn below the full view, in ``tour_extra``.
LOOK_AT: dict[str, str] = {
    "region_map": "st-key-chart_region_map",
    "animation": "st-key-chart_region_map",
    "pamt_caches": "st-key-chart_pamt_cache",
    "code": "st-key-code_panel",
    "locks": "st-key-locks",
}
EXTRA_KEY = "tour_extra"


def highlight_css(view: str) -> str:
    """CSS outlining the element the stop points at (an amber frame, as a pointer on a slide
    would): the stop's view in the full view, or the extra view drawn below it."""
    target = LOOK_AT.get(view, f"st-key-{EXTRA_KEY}")
    return (
        f"<style>.{target}{{outline:3px solid #f59e0b;outline-offset:2px;border-radius:4px}}"
        ".st-key-tour_teacher{background:rgba(245,158,11,0.12);padding:0.4rem 0.6rem;"
        "border-left:4px solid #f59e0b}</style>"
    )


def show_stop_full(tl: Timeline, stop: ResolvedStop) -> None:
    """The stop as Explore shows its step (the map and caches; the step, the code and the
    locks) with the teacher's text beside them and the element the stop names outlined."""
    from app_pages.ui.keys import STEP_HEADER_KEY
    from app_pages.ui.state_panel import map_and_caches
    from app_pages.ui.step_panel import code_and_locks, step_text

    i = stop.step
    snap = tl.state_at(i)
    step = tl.step(i)
    st.markdown(highlight_css(stop.stop.view), unsafe_allow_html=True)
    left, right = st.container(key="step_view").columns([5, 6])
    with left:
        map_and_caches(snap, tl.changed_regions(i), tl)
    with right:
        with st.container(key="tour_teacher"):
            st.text(stop.stop.look)
            st.text(stop.stop.narration)
        with st.container(key=STEP_HEADER_KEY):
            step_text(tl, step)
        code_and_locks(snap, step)
    if stop.stop.view not in LOOK_AT:
        with st.container(key=EXTRA_KEY):
            show_stop_view(tl, stop)
