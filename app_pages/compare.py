"""Compare designs: the same trace under two to four configurations, side by side."""

from __future__ import annotations

import hashlib
import os

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import common
from explorer.designs.overhead import (
    GIB,
    LORE_V6,
    MAXPA_BITS,
    format_bytes,
    max_pfn_at,
    overhead,
    regions_touched,
)
from explorer.designs.rationale import design, help_text
from explorer.model.constants import MODES, PAGE_SIZE, mode_label
from explorer.model.errors import TraceError
from explorer.model.settings import Settings
from explorer.sweeps.job import SCHEDULER_ENV, SweepJob, address_problem, local_workers
from explorer.sweeps.metrics import RunMetrics
from explorer.sweeps.sweep import grid_points, settings_json, trace_digest
from explorer.views.about import cover_letter_table, overhead_table, overhead_verdict
from explorer.views.caches import pamt_cache_figure
from explorer.views.palette import OKABE_ITO
from explorer.views.region_map import region_map
from explorer.views.sweep import count_axis, sweep_figure

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
    for col, (label, s, _) in zip(cols, results, strict=True):
        tl = common.timeline(loaded, s)
        b = min(tl.batch_of_event(e - 1), tl.nr_batches - 1)
        i = tl.batch_step[b + 1] - 1 if b >= 0 else -1
        snap = tl.state_at(min(i, tl.nr_steps - 1))
        col.caption(label, help=help_text(s.mode))
        col.plotly_chart(
            # a column of a 1440-px page: about 1,400 / n px wide (the map sizes its colour bar)
            region_map(snap, title=f"regions after event {e}", width=1400 // len(results)),
            key=f"chart_cmp_map_{label}",
            width="stretch",
        )
        col.plotly_chart(
            pamt_cache_figure(snap, narrow=True), key=f"chart_cmp_cache_{label}", width="stretch"
        )

    _sweep(loaded, base, configs)

    _memory()


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


def _digest(loaded: common.Loaded) -> str:
    """The trace digest of the sweep rows, computed once per loaded trace (keyed by its bytes)."""
    memo: dict[str, str] = st.session_state.setdefault("sweep_digests", {})
    raw = hashlib.sha256(loaded.data).hexdigest()
    if raw not in memo:
        memo.clear()
        memo[raw] = trace_digest(loaded.trace.events)
    return memo[raw]


def _sweep(loaded: common.Loaded, base: Settings, configs: list[tuple[str, Settings]]) -> None:
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


@st.fragment(run_every=0.5)
def _sweep_progress(job: SweepJob) -> None:
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


def _reasons(results: list[tuple[str, Settings, RunMetrics]]) -> None:
    """Each configuration's design beside its column: the sources' reasons, what we can show."""
    st.markdown("**Why each design**: the seed's reasons (or the mode's provenance), quoted")
    for col, (label, s, _) in zip(st.columns(len(results)), results, strict=True):
        d = design(s.mode)
        col.markdown(f"**{label}**")
        col.caption(d.provenance)
        with col.expander(f"Why {s.mode}: quotes, what the simulation shows"):
            st.markdown(help_text(s.mode))


def _memory() -> None:
    st.subheader("Memory overhead: static PAMT vs Dynamic PAMT")
    m1, m2, m3 = st.columns(3)
    host = int(m1.number_input("host memory (GiB)", 1, 65536, 256, key="oh_host"))
    frac = m2.slider("memory used by TDs at 4 KiB", 0.0, 1.0, 0.25, key="oh_frac")
    placement = m3.selectbox(
        "placement of TD pages",
        ["packed", "scattered"],
        key="oh_place",
        help="packed: pages fill regions one after another (fewest pairs); scattered: one page "
        "per region until all are touched (the worst case).",
    )
    m4, m5, m6 = st.columns(3)
    at = m4.radio(
        "max_pfn",
        ["at the host's RAM size", "at maxpa"],
        key="oh_maxpfn",
        help="The refcount array covers pfn 0 to max_pfn (v6 cover letter). max_pfn sits at the "
        "top of RAM, or, on a host whose highest RAM page is near the top of the physical "
        "address space, at maxpa.",
    )
    bits = int(
        m5.number_input(
            "physical address bits (maxpa)",
            39,
            52,
            MAXPA_BITS,
            key="oh_bits",
            disabled=at != "at maxpa",
            help="52 is the cover letter's worst case; v6 10/11 enables Dynamic PAMT only with "
            "at most 48 bits.",
        )
    )
    refcounts = REFCOUNT_CHOICES[
        m6.radio("refcount placement", list(REFCOUNT_CHOICES), key="oh_refcounts")
    ]
    host_bytes = host * GIB
    pages = host_bytes // PAGE_SIZE
    max_pfn = None
    if at == "at maxpa":
        max_pfn = max_pfn_at(bits)
        if max_pfn < pages:
            st.warning(
                f"{bits} bits address {format_bytes(max_pfn * PAGE_SIZE)}, less than the host's "
                f"{format_bytes(host_bytes)}: max_pfn taken at the RAM size."
            )
            max_pfn = None
        elif bits > 48:
            st.caption(
                f"At {bits} bits: v6 10/11 enables Dynamic PAMT only when x86_phys_bits <= 48; "
                "the cover letter's maxpa rows use 52 bits all the same."
            )
    o = overhead(host_bytes, regions_touched(host_bytes, frac, placement), max_pfn, refcounts)
    st.dataframe(
        overhead_table(o),
        hide_index=True,
        width="stretch",
        height=35 * 8 + 3,
        key="table_overhead",
    )
    verdict = overhead_verdict(o)
    (st.success if o.dpamt_total <= o.static_total else st.warning)(verdict)

    st.markdown("**The v6 cover letter's table** (TDX enabled, no TD, non-optimized refcounts)")
    st.dataframe(cover_letter_table(), hide_index=True, width="stretch", key="table_cover")
    st.caption(
        "Published figures beside ours. The cover letter's GB are GiB; its static column is "
        "0.4 % of RAM (the exact 16 B per 4 KiB plus the 2 MiB and 1 GiB levels is 0.39 %). "
        "Where max_pfn sits at maxpa, the refcount array (4 B per 2 MiB from pfn 0) is 8 GB "
        "and Dynamic PAMT costs more than static PAMT. "
        f"Source: v6 cover letter, {LORE_V6}"
    )


main()
