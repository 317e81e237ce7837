"""Traces: load, validate, inspect, generate and download traces."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app_pages import common
from explorer.appsupport import stop_note
from explorer.ingest.generate import WORKLOADS
from explorer.ingest.write import dump_trace, event_object

#: Events shown in the table (the whole trace can be downloaded).
MAX_ROWS = 5000


def main() -> None:
    common.init_session()
    common.sidebar_trace_picker()
    settings = common.sidebar_settings()
    loaded: common.Loaded = st.session_state.loaded
    st.title("Traces")
    st.caption(
        "The format is JSON Lines (docs/trace-format.md): an optional header, then one event "
        "per line. Upload one in the sidebar; problems are listed with line and column."
    )
    common.show_upload_errors()

    st.subheader("The loaded trace")
    st.text(f"file: {loaded.source}\ntitle: {loaded.trace.title or '(none)'}")
    if loaded.trace.description:
        st.text(loaded.trace.description)
    c1, c2 = st.columns(2)
    c1.markdown("**Settings in its header**")
    c1.dataframe(
        common.safe_frame(
            [{"setting": k, "value": str(v)} for k, v in loaded.trace.settings.items()],
            columns=["setting", "value"],
        ),
        hide_index=True,
        key="table_header_settings",
    )
    c2.markdown("**Settings in force** (header, then the sidebar)")
    c2.dataframe(
        common.safe_frame(
            [{"setting": k, "value": str(v)} for k, v in settings.to_dict().items()],
            columns=["setting", "value"],
        ),
        hide_index=True,
        key="table_settings",
    )
    events = loaded.trace.events
    st.markdown(
        f"**{len(events):,} events**"
        + (f" (the first {MAX_ROWS:,} shown)" if len(events) > MAX_ROWS else "")
    )
    rows = []
    for i, ev in enumerate(events[:MAX_ROWS]):
        obj = event_object(ev)
        rows.append(
            {
                "event": i + 1,
                "line": ev.line,
                "t": "" if ev.t is None else str(ev.t),  # logical time; blank when none
                "op": obj.pop("op"),
                "fields": ", ".join(f"{k}={v}" for k, v in obj.items() if k not in ("t", "note")),
                "note": ev.note or "",
            }
        )
    table = pd.DataFrame(rows, columns=["event", "line", "t", "op", "fields", "note"])
    # notes are the uploader's text: escaped, so the toolbar's "Download as CSV" is safe
    # whole rows only: the header and up to 12 rows, each 35 px, plus the frame's 3 px
    st.dataframe(
        common.safe_frame(table),
        hide_index=True,
        width="stretch",
        height=35 * (min(len(table), 12) + 1) + 3,
        key="table_events",
    )
    tl = common.timeline(loaded, settings)
    if tl.stopped is not None:
        note = stop_note(tl.diagnostics, tl.stopped, settings.max_retries)
        (st.warning if note.livelock_step is not None else st.error)(note.headline)
        st.text(note.detail)
    else:
        st.success(f"Valid: it replays in {tl.nr_steps:,} steps.")
    d1, d2 = st.columns(2)
    d1.download_button(
        "Download the trace (canonical JSON Lines)",
        dump_trace(events, loaded.trace.title, loaded.trace.description, loaded.trace.settings),
        file_name=loaded.source.removesuffix(".gz"),
        mime="application/x-ndjson",
        key="btn_download_trace",
    )
    d2.download_button(
        "Download the replay summary (JSON)",
        json.dumps(tl.summary(), indent=2),
        file_name="summary.json",
        mime="application/json",
        key="btn_download_summary",
    )

    st.subheader("Generate a workload")
    with st.form("generate"):
        g = st.columns(6)
        workload = g[0].selectbox("workload", sorted(WORKLOADS), key="gen_workload")
        tds = g[1].number_input("TDs", 1, 16, 2, key="gen_tds")
        vcpus = g[2].number_input("vCPUs", 1, 64, 4, key="gen_vcpus")
        faults = g[3].number_input("faults", 1, 200_000, 2000, step=500, key="gen_faults")
        seed = g[4].number_input("seed", 0, 2**31 - 1, 1, key="gen_seed")
        zap = g[5].slider("zap ratio (churn)", 0.0, 1.0, 0.3, key="gen_zap")
        submitted = st.form_submit_button("Generate and load")
    if submitted:
        if vcpus < tds:
            st.error("Each TD needs at least one vCPU: use at least as many vCPUs as TDs.")
        else:
            kwargs = {
                "tds": int(tds),
                "vcpus": int(vcpus),
                "faults": int(faults),
                "seed": int(seed),
            }
            if workload == "churn":
                kwargs["zap_ratio"] = float(zap)
            text = "\n".join(WORKLOADS[workload](**kwargs)) + "\n"
            name = f"{workload}-{tds}td-{vcpus}vcpu-{faults}-seed{seed}.jsonl"
            problems = common.load_upload(name, text.encode())
            if problems is not None:
                common.problems_table(problems)
            else:
                st.session_state.generated = (name, text)
                st.rerun()
    gen = st.session_state.get("generated")
    if gen is not None:
        st.download_button(
            f"Download {gen[0]}",
            gen[1],
            file_name=gen[0],
            mime="application/x-ndjson",
            key="btn_download_generated",
        )


main()
