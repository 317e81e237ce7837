"""Compare designs: the same trace under two to four configurations, side by side."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import common
from explorer.model.constants import MODES
from explorer.model.errors import TraceError
from explorer.model.settings import Settings
from explorer.overhead import COVER_LETTER_FIGURES, GIB, overhead, regions_touched
from explorer.sweep import grid_points, run_sweep
from explorer.views.caches import pamt_cache_figure
from explorer.views.palette import OKABE_ITO
from explorer.views.region_map import region_map
from explorer.views.sweep import sweep_figure

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


def _configs(base: Settings) -> tuple[list[tuple[str, Settings]], list[str]]:
    edited = st.data_editor(
        DEFAULT_CONFIGS,
        num_rows="dynamic",
        key="configs",
        width="stretch",
        column_config={
            "mode": st.column_config.SelectboxColumn("mode", options=list(MODES), required=True),
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
            (f"{n}: {s.mode}, {s.dpamt_gets_per_fault} gets, {s.worst_case_tables} tables", s)
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
    st.dataframe(table, width="stretch", key="table_compare")
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
        yaxis={"title": "pages"},
        legend={"orientation": "h", "y": -0.25},
    )
    st.plotly_chart(fig, key="chart_compare_idle", width="stretch")

    st.subheader("Side by side, at one event")
    nev = len(loaded.trace.events)
    e = st.slider(
        "after event", 1, nev, value=(first + 1) if first is not None else nev, key="compare_event"
    )
    cols = st.columns(len(results))
    for col, (label, s, _) in zip(cols, results, strict=True):
        tl = common.timeline(loaded, s)
        b = min(tl.batch_of_event(e - 1), tl.nr_batches - 1)
        i = tl.batch_step[b + 1] - 1 if b >= 0 else -1
        snap = tl.state_at(min(i, tl.nr_steps - 1))
        col.caption(label)
        col.plotly_chart(
            # a column of a 1440-px page: about 1,400 / n px wide (the map sizes its colour bar)
            region_map(snap, title=f"regions after event {e}", width=1400 // len(results)),
            key=f"chart_cmp_map_{label}",
            width="stretch",
        )
        col.plotly_chart(pamt_cache_figure(snap), key=f"chart_cmp_cache_{label}", width="stretch")

    st.subheader("Sweep dpamt_gets_per_fault")
    hi = st.slider("from 0 to", 1, 12, 8, key="sweep_hi")
    if st.button("Run the sweep", key="btn_sweep"):
        modes = sorted({s.mode for _, s in configs})
        points = [
            p
            for m in modes
            for p in grid_points(
                base.with_overrides({"mode": m}), {"dpamt_gets_per_fault": list(range(hi + 1))}
            )
        ]
        rows = run_sweep(loaded.trace.events, points, workers=1)
        st.session_state.sweep_rows = rows
    rows = st.session_state.get("sweep_rows")
    if rows:
        st.plotly_chart(
            sweep_figure(rows, "setting.dpamt_gets_per_fault", "setting.mode"),
            key="chart_sweep",
            width="stretch",
        )

    st.subheader("Memory overhead: static PAMT vs Dynamic PAMT")
    m1, m2, m3 = st.columns(3)
    host = m1.number_input("host memory (GiB)", 1, 65536, 256, key="oh_host")
    frac = m2.slider("memory used by TDs at 4 KiB", 0.0, 1.0, 0.25, key="oh_frac")
    placement = m3.selectbox("placement", ["packed", "scattered"], key="oh_place")
    o = overhead(int(host) * GIB, regions_touched(int(host) * GIB, frac, placement))
    st.dataframe(
        pd.DataFrame(
            [
                {"part": "static: 16 B x 4 KiB pages", "bytes": o.static_4k},
                {
                    "part": "static: 16 B x (2 MiB + 1 GiB entries), kept by DPAMT",
                    "bytes": o.static_2m + o.static_1g,
                },
                {"part": "DPAMT: bitmap, 1 bit per 4 KiB page", "bytes": o.dpamt_bitmap},
                {"part": "DPAMT: refcounts, 4 B per 2 MiB region", "bytes": o.dpamt_refcounts},
                {
                    "part": f"DPAMT: pairs, 8 KiB x {o.regions_with_pair:,} regions in use",
                    "bytes": o.dpamt_pairs,
                },
                {"part": "total static PAMT", "bytes": o.static_total},
                {"part": "total Dynamic PAMT", "bytes": o.dpamt_total},
            ]
        ),
        hide_index=True,
        key="table_overhead",
    )
    st.caption(
        f"Dynamic PAMT saves {o.saving:.1%} of static PAMT here. Reference (v6 cover letter, "
        "no TD running): "
        + "; ".join(f"{h}: {s} GB static vs {d} GB dynamic" for h, _, s, d in COVER_LETTER_FIGURES)
    )


main()
