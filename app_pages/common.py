"""What every page shares: the loaded trace, the settings sidebar, cached replays, the URL.

User-provided text (titles, notes, error lines) is only ever shown with ``st.text``, ``st.code``
or in dataframes: never as Markdown or HTML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from explorer.appsupport import (
    DEFAULT_SAMPLE,
    REPLAY_CACHE_ENTRIES,
    REPLAY_CHECKPOINT_BUDGET,
    UPLOAD_LIMIT_MB,
    content_key,
    decode_view_state,
    encode_view_state,
    list_samples,
    sample_bytes,
    settings_key,
)
from explorer.metrics import RunMetrics, run_metrics
from explorer.model.errors import TraceError
from explorer.model.settings import SETTING_SPECS, Settings
from explorer.timeline import Timeline, replay
from explorer.trace import Trace, parse_trace

KNOBS = (
    "worst_case_tables",
    "dpamt_gets_per_fault",
    "ept_levels",
    "mode",
    "allocator",
    "schedule",
    "seed",
    "host_memory_mib",
    "max_retries",
)
KNOB_HELP = {
    "worst_case_tables": "min of KVM's page-table caches per fault (PT64_ROOT_MAX_LEVEL)",
    "dpamt_gets_per_fault": "n of tdx_topup_pamt_cache(cache, n): the cache holds 2n pages",
    "ept_levels": "4-level EPT: 3 non-root tables per fault at most; 5-level: 4",
    "mode": "v6 as posted, its variants, and the designs the seed rejected",
    "allocator": "lowest packs pages into regions; spread scatters them (worst case for DPAMT)",
    "schedule": "how concurrent events (same t) interleave",
    "seed": "seed of the random allocator and schedule",
    "host_memory_mib": "host memory; even, 2 MiB per region",
    "max_retries": "local retries of a fault before the explorer reports a livelock",
}


@dataclass
class Loaded:
    name: str  # sample name, or "upload"
    source: str  # file name
    data: bytes
    trace: Trace


def problems_table(exc: TraceError) -> None:
    """Every problem of a bad trace as a table (line, column, reason, text, expected)."""
    st.dataframe(
        [
            {
                "line": p.line,
                "column": p.col,
                "reason": p.reason,
                "text": p.text,
                "expected": p.expected,
            }
            for p in exc.problems
        ],
        hide_index=True,
        width="stretch",
    )


@st.cache_resource(max_entries=REPLAY_CACHE_ENTRIES, show_spinner=False)
def _parse(key: str, source: str, _data: bytes) -> Trace:
    return parse_trace(_data, source)


@st.cache_resource(max_entries=REPLAY_CACHE_ENTRIES, show_spinner=False)
def _timeline(
    key: str,
    skey: tuple[tuple[str, Any], ...],
    _trace: Trace,
    _settings: Settings,
    _progress: Any = None,
) -> Timeline:
    return replay(
        _trace.events, _settings, progress=_progress, checkpoint_budget=REPLAY_CHECKPOINT_BUDGET
    )


@st.cache_resource(max_entries=4 * REPLAY_CACHE_ENTRIES, show_spinner=False)
def _metrics(
    key: str, skey: tuple[tuple[str, Any], ...], _trace: Trace, _settings: Settings
) -> RunMetrics:
    return run_metrics(_trace.events, _settings)


def init_session() -> list[str]:
    """On a session's first run, take the sample, step and settings from the URL."""
    if "loaded" in st.session_state:
        return []
    view, problems = decode_view_state(st.query_params.to_dict())
    name = view.sample
    data = sample_bytes(name)
    st.session_state.loaded = Loaded(
        name, f"{name}.jsonl", data, _parse(content_key(data), f"{name}.jsonl", data)
    )
    st.session_state.overrides = dict(view.overrides)
    st.session_state.cursor = view.step
    st.session_state.playing = False
    return problems


def load_sample(name: str) -> None:
    data = sample_bytes(name)
    st.session_state.loaded = Loaded(
        name, f"{name}.jsonl", data, _parse(content_key(data), f"{name}.jsonl", data)
    )
    st.session_state.overrides = {}
    st.session_state.cursor = -1
    st.session_state.playing = False
    for knob in KNOBS:
        st.session_state.pop(f"knob_{knob}", None)


def load_upload(name: str, data: bytes) -> TraceError | None:
    """Parse an upload; on errors the loaded trace stays as it was."""
    try:
        trace = _parse(content_key(data), name, data)
    except TraceError as exc:
        return exc
    st.session_state.loaded = Loaded("upload", name, data, trace)
    st.session_state.overrides = {}
    st.session_state.cursor = -1
    st.session_state.playing = False
    for knob in KNOBS:
        st.session_state.pop(f"knob_{knob}", None)
    return None


def trace_settings(loaded: Loaded) -> Settings:
    return Settings().with_overrides(loaded.trace.settings, source=loaded.source)


def current_settings() -> Settings:
    loaded: Loaded = st.session_state.loaded
    base = trace_settings(loaded)
    try:
        return base.with_overrides(st.session_state.overrides, source="sidebar")
    except TraceError as exc:
        st.sidebar.error("A setting is invalid and was reset:")
        st.sidebar.code(str(exc), language=None)
        st.session_state.overrides = {}
        return base


def sidebar_trace_picker() -> None:
    """Sample picker and upload box (in the sidebar)."""
    loaded: Loaded = st.session_state.loaded
    samples = list_samples()
    names = [s.name for s in samples]
    titles = {s.name: s.title for s in samples}
    current = loaded.name if loaded.name in names else None
    if current is None and st.session_state.get("sample_select") is not None:
        st.session_state.sample_select = None  # an upload is loaded: no sample is selected
    choice = st.sidebar.selectbox(
        "Sample trace",
        names,
        index=names.index(current) if current else None,
        format_func=lambda n: titles[n],
        key="sample_select",
        placeholder="(an uploaded trace is loaded)",
    )
    if choice is not None and choice != loaded.name:
        load_sample(choice)
        st.rerun()
    up = st.sidebar.file_uploader(
        f"...or upload a trace (.jsonl, .jsonl.gz, .csv; up to {UPLOAD_LIMIT_MB} MB)",
        type=["jsonl", "gz", "csv"],
        key="upload",
    )
    if up is not None and st.session_state.get("upload_seen") != (up.name, up.size):
        st.session_state.upload_seen = (up.name, up.size)
        err = load_upload(up.name, up.getvalue())
        if err is None:
            st.rerun()
        st.session_state.upload_error = (up.name, err)
    bad = st.session_state.get("upload_error")
    if bad is not None and bad[0] == (up.name if up else None):
        st.sidebar.error(
            f"That upload has {len(bad[1].problems)} problem(s); the loaded trace "
            "is unchanged. See the list on the page."
        )


def show_upload_errors() -> None:
    bad = st.session_state.get("upload_error")
    up = st.session_state.get("upload")
    if bad is not None and up is not None and bad[0] == up.name:
        st.error("The uploaded trace was not loaded: it has these problems.")
        st.text(f"file: {bad[0]}")
        problems_table(bad[1])


def sidebar_settings() -> Settings:
    """The worst-case page-table counts and the other knobs, each with its default and a reset."""
    loaded: Loaded = st.session_state.loaded
    base = trace_settings(loaded)
    kernel = Settings()
    overrides: dict[str, Any] = st.session_state.overrides
    st.sidebar.subheader("Settings")
    for knob in KNOBS:
        spec = SETTING_SPECS[knob]
        value = overrides.get(knob, getattr(base, knob))
        label = f"{knob} (kernel default {getattr(kernel, knob)})"
        key = f"knob_{knob}"
        if spec.choices:
            choices = list(spec.choices)
            new = st.sidebar.selectbox(
                label, choices, index=choices.index(value), key=key, help=KNOB_HELP[knob]
            )
        else:
            hi = min(spec.hi, 2**53 - 1) if knob != "host_memory_mib" else 1024 * 1024
            new = st.sidebar.number_input(
                label,
                min_value=spec.lo,
                max_value=hi,
                value=value,
                step=2 if spec.even else 1,
                key=key,
                help=KNOB_HELP[knob],
            )
        if new != getattr(base, knob):
            overrides[knob] = new
        else:
            overrides.pop(knob, None)
    if st.sidebar.button(
        "Reset to the trace's settings", key="reset_settings", disabled=not overrides
    ):
        st.session_state.overrides = {}
        for knob in KNOBS:
            st.session_state.pop(f"knob_{knob}", None)
        st.rerun()
    return current_settings()


def timeline(loaded: Loaded, settings: Settings) -> Timeline:
    """The replay for this trace and settings (cached across reruns and sessions)."""
    key = content_key(loaded.data)
    skey = settings_key(settings)
    if len(loaded.trace.events) > 20_000:
        bar = st.progress(0.0, text="Replaying...")

        def progress(frac: float, msg: str) -> None:
            bar.progress(min(frac, 1.0), text=f"Replaying: {msg}")

        tl = _timeline(key, skey, loaded.trace, settings, progress)
        bar.empty()
        return tl
    return _timeline(key, skey, loaded.trace, settings)


def metrics(loaded: Loaded, settings: Settings) -> RunMetrics:
    return _metrics(content_key(loaded.data), settings_key(settings), loaded.trace, settings)


def sync_url(settings: Settings) -> None:
    loaded: Loaded = st.session_state.loaded
    params = encode_view_state(
        loaded.name if loaded.name != "upload" else "upload",
        int(st.session_state.get("cursor", -1)),
        settings,
        trace_settings(loaded),
    )
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


def ensure_default() -> None:
    if "loaded" not in st.session_state:
        load_sample(DEFAULT_SAMPLE)
