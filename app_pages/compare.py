"""Compare designs: the same trace under two to four configurations, side by side."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import common
from app_pages.ui.overhead_panel import memory_panel
from app_pages.ui.state_panel import page_theme
from app_pages.ui.sweep_panel import sweep_panel
from explorer.designs.overhead import (
    format_bytes,
)
from explorer.designs.rationale import design, help_text
from explorer.model.constants import MODES, mode_label
from explorer.model.errors import TraceError
from explorer.model.settings import Settings
from explorer.sweeps.metrics import RunMetrics
from explorer.views.caches import cache_top, pamt_cache_figure
from explorer.views.palette import OKABE_ITO
from explorer.views.region_map import column_width, region_map, replay_span
from explorer.views.sweep import count_axis

DEFAULT_CONFIGS = pd.DataFrame(
    [
        {"mode": "v6", "dpamt_gets_per_fault": 5, "worst_case_tables": 5},
        {"mode": "v5-topup-install", "dpamt_gets_per_fault": 5, "worst_case_tables": 5},
        {"mode": "kvm-style-cache", "dpamt_gets_per_fault": 5, "worst_case_tables": 5},
    ]
)
METRIC_LABELS = {
    "idle_pages_peak": "pages idle in caches (peak)",
    "idle_pages_mean": "pages idle in caches (mean)",
    "pairs_peak": "pairs installed (peak)",
    "speculative_refs_peak": "DPAMT refs for pages not in TD use (peak)",
    "dpamt_pair_bytes_peak": "DPAMT pair bytes (peak)",
    "static_pamt_4k_bytes": "static 4 KiB PAMT bytes",
    "gets_slow": "slow gets",
    "lost_races": "lost races",
    "pages_drained": "pages drained to the allocator",
    "retries": "retries",
    "livelocks": "livelocks",
    "allocs_under_lock": "allocations under a lock",
    "violations": "violations",
}
BYTE_ROWS = [METRIC_LABELS["dpamt_pair_bytes_peak"], METRIC_LABELS["static_pamt_4k_bytes"]]
#: The mode column's help: each mode's first line of :func:`explorer.designs.rationale.help_text`.
MODE_HELP = (
    "The design each row models. The sources' reasons for each are beside its column below "
    "(*Why each design*).\n\n" + "\n\n".join(help_text(m).split("\n")[0] for m in MODES)
)
REFCOUNT_CHOICES = {
    "vmalloc 0..max_pfn (as v6)": "vmalloc",
    "sparse: RAM regions only (the dropped optimization)": "sparse",
}


def _count(v: float) -> str:
    """A count with thousands separators; a mean with two decimals."""
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.2f}"


def _configs(base: Settings) -> tuple[list[tuple[str, Settings]], list[str]]:
    edited = st.data_editor(
        DEFAULT_CONFIGS,
        num_rows="dynamic",
        key="configs",
        width="stretch",
        column_config={
            "mode": st.column_config.SelectboxColumn(
                "mode", options=list(MODES), required=True, help=MODE_HELP
            ),
            "dpamt_gets_per_fault": st.column_config.NumberColumn(
                min_value=0, max_value=64, step=1
            ),
            "worst_case_tables": st.column_config.NumberColumn(min_value=0, max_value=40, step=1),
        },
    )
    out, problems = [], []
    for n, row in enumerate(edited.to_dict("records"), 1):
        try:
            s = base.with_overrides({k: row[k] for k in DEFAULT_CONFIGS.columns}, source=f"row {n}")
        except (TraceError, TypeError, ValueError) as exc:
            problems.append(f"row {n}: {exc}")
            continue
        out.append(
            (
                f"{n}: {mode_label(s.mode)}, {s.dpamt_gets_per_fault} gets, "
                f"{s.worst_case_tables} tables",
                s,
            )
        )
    if not 2 <= len(out) <= 4:
        problems.append(f"compare 2 to 4 configurations ({len(out)} valid rows)")
    return out[:4], problems


def main() -> None:
    common.init_session()
    common.sidebar_trace_picker()
    base = common.sidebar_settings()
    loaded: common.Loaded = st.session_state.loaded
    st.title("Compare designs")
    st.caption(
        "The same trace under the designs the seed patch weighed (and the worst-case "
        "counts), measured side by side. Edit the rows; 2 to 4 configurations."
    )
    st.text(f"trace: {loaded.source}: {loaded.trace.title}")
    configs, problems = _configs(base)
    for p in problems:
        st.warning("A configuration was not used:")
        st.text(p)
    if len(configs) < 2:
        return
    results = [(label, s, common.metrics(loaded, s)) for label, s in configs]
    table = pd.DataFrame(
        {label: {METRIC_LABELS[k]: r.row()[k] for k in METRIC_LABELS} for label, _, r in results}
    )
    # numbers stay numbers (sortable, testable); the Styler shows bytes with units, counts
    # with separators; the height fits every row, so nothing hides behind a scrollbar
    styled = table.style.format(_count).format(format_bytes, subset=pd.IndexSlice[BYTE_ROWS, :])
    st.dataframe(styled, width="stretch", height=35 * (len(table) + 1) + 3, key="table_compare")
    _reasons(results)
    # first divergence: the first event after which the measured series differ
    series = [r.series for _, _, r in results]
    n = min(len(s["idle_pages"]) for s in series)
    first = next(
        (e for e in range(n) if len({(s["idle_pages"][e], s["pairs"][e]) for s in series}) > 1),
        None,
    )
    if first is None:
        st.success("The configurations never diverge on pages held in caches or pairs installed.")
    else:
        ev = loaded.trace.events[first]
        st.info(f"They first diverge at event {first + 1} (trace line {ev.line}, op {ev.op}).")
    fig = go.Figure()
    for k, (label, _, r) in enumerate(results):
        fig.add_trace(
            go.Scatter(
                y=r.series["idle_pages"],
                name=label,
                mode="lines",
                line={"color": OKABE_ITO[k % len(OKABE_ITO)], "shape": "hv"},
            )
        )
    if first is not None:
        fig.add_vline(x=first, line_dash="dot", annotation_text="first divergence")
    fig.update_layout(
        title="Pages held idle in DPAMT caches, after each event",
        xaxis={"title": "event"},
        yaxis={"title": "pages", **count_axis([max(r.series["idle_pages"]) for *_, r in results])},
        legend={"orientation": "h", "y": -0.25},
    )
    st.plotly_chart(fig, key="chart_compare_idle", width="stretch")

    st.subheader("Side by side, at one event")
    nev = len(loaded.trace.events)
    e = st.slider(
        "after event", 1, nev, value=(first + 1) if first is not None else nev, key="compare_event"
    )
    cols = st.columns(len(results))
    snaps = []
    timelines = []
    for _label, s, _ in results:
        tl = common.timeline(loaded, s)
        timelines.append(tl)
        b = min(tl.batch_of_event(e - 1), tl.nr_batches - 1)
        i = tl.batch_step[b + 1] - 1 if b >= 0 else -1
        snaps.append(tl.state_at(min(i, tl.nr_steps - 1)))
    # one y range for every side's caches: equal heights are equal counts
    top = max(cache_top(snap) for snap in snaps)
    span = replay_span(*timelines)  # one span for every side: their cells line up
    for col, (label, s, _), snap in zip(cols, results, snaps, strict=True):
        col.caption(label, help=help_text(s.mode))
        col.plotly_chart(
            # the map sizes its colour bar for the column's real width
            region_map(
                snap,
                title=f"regions after event {e}",
                width=column_width(len(results)),
                theme=page_theme(),
                span=span,
            ),
            key=f"chart_cmp_map_{label}",
            width="stretch",
        )
        col.plotly_chart(
            pamt_cache_figure(snap, narrow=True, y_top=top, theme=page_theme()),
            key=f"chart_cmp_cache_{label}",
            width="stretch",
        )

    sweep_panel(loaded, base, configs)

    memory_panel()


def _reasons(results: list[tuple[str, Settings, RunMetrics]]) -> None:
    """Each configuration's design beside its column: the sources' reasons, what we can show."""
    st.markdown("**Why each design**: the seed's reasons (or the mode's provenance), quoted")
    for col, (label, s, _) in zip(st.columns(len(results)), results, strict=True):
        d = design(s.mode)
        col.markdown(f"**{label}**")
        col.caption(d.provenance)
        with col.expander(f"Why {s.mode}: quotes, what the simulation shows"):
            st.markdown(help_text(s.mode))


main()
