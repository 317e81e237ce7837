"""The trace loader: a sample, an upload or a kernel capture becomes the loaded trace; the
session's first run takes the sample, step and settings from the URL, and every run keeps the
URL in step with what is shown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

from app_pages.ui.replays import Loaded, _parse, _timeline, idle_trimmer, trace_settings
from app_pages.ui.settings import KNOBS
from app_pages.ui.tables import problems_table
from explorer.appsupport import (
    DEFAULT_SAMPLE,
    UPLOAD_LIMIT_MB,
    RejectedUpload,
    content_key,
    decode_view_state,
    encode_view_state,
    list_samples,
    sample_bytes,
    settings_key,
)
from explorer.ingest.capture import looks_like_capture, parse_capture
from explorer.ingest.write import dump_trace
from explorer.interleavings.job import encode_schedule
from explorer.interleavings.search import pin
from explorer.model.errors import Problem, TraceError
from explorer.model.machine import thread_name
from explorer.model.settings import Settings


def init_session() -> list[str]:
    """On a session's first run, take the sample, step and settings from the URL. Every page
    calls it on every run: the run is activity for the idle trimmer too."""
    idle_trimmer().touch()
    if "loaded" in st.session_state:
        return []
    view, problems = decode_view_state(st.query_params.to_dict())
    name = view.sample
    data = sample_bytes(name)
    st.session_state.loaded = Loaded(
        name, f"{name}.jsonl", data, _parse(content_key(data), f"{name}.jsonl", data)
    )
    if view.schedule is not None:
        try:
            st.session_state.loaded = pinned_sample(name, view.schedule)
        except ValueError as exc:
            problems.append(f"URL: schedule ignored: {exc}; showing {name} unpinned")
    st.session_state.overrides = dict(view.overrides)
    st.session_state.review_notes = dict(view.notes)
    st.session_state.cursor = view.step
    st.session_state.playing = False
    return problems


def pinned_sample(name: str, orders: Sequence[Sequence[str]]) -> Loaded:
    """The sample ``name`` with its concurrent groups pinned to ``orders`` (a finding's turn
    orders, explorer.interleavings.search.pin), keeping the sample's own header settings, so a
    link's settings stay overrides against them. ValueError naming what does not fit: more
    orders than the sample has concurrent groups, or a CPU the sample does not have."""
    raw = sample_bytes(name)
    trace = _parse(content_key(raw), f"{name}.jsonl", raw)
    cpus = {thread_name(e) for e in trace.events}
    for k, order in enumerate(orders, 1):
        unknown = sorted(set(order) - cpus)
        if unknown:
            raise ValueError(f"group {k} names {', '.join(unknown[:3])}, not a CPU of {name}")
    events = pin(trace.events, orders)
    text = dump_trace(
        events,
        title=f"{trace.title} (pinned schedule)",
        description=trace.description,
        settings=trace.settings,
    ).encode("utf-8")
    source = f"{name}-pinned.jsonl"
    return Loaded(
        name, source, text, _parse(content_key(text), source, text), encode_schedule(orders)
    )


def adopt_pinned(name: str, orders: Sequence[Sequence[str]], settings: Settings) -> Loaded:
    """Show the sample ``name`` pinned to ``orders`` under ``settings`` (kept as overrides of
    the sample's own): what a finding's Open button does, so its share link is the sample's."""
    pinned = pinned_sample(name, orders)
    base = trace_settings(pinned)
    adopt(pinned)
    st.session_state.overrides = {
        k: v for k, v in settings.to_dict().items() if getattr(base, k) != v
    }
    return pinned


def load_sample(name: str) -> None:
    data = sample_bytes(name)
    adopt(Loaded(name, f"{name}.jsonl", data, _parse(content_key(data), f"{name}.jsonl", data)))


def adopt(loaded: Loaded) -> None:
    """Make ``loaded`` the trace on show: the previous one's upload error, review notes,
    setting overrides, place and knobs go with it (one place for the three ways in: a sample,
    an upload, an imported capture)."""
    st.session_state.loaded = loaded
    st.session_state.pop("upload_error", None)
    st.session_state.review_notes = {}
    st.session_state.overrides = {}
    st.session_state.cursor = -1
    st.session_state.playing = False
    for knob in KNOBS:
        st.session_state.pop(f"knob_{knob}", None)


#: Uploads with more events than this show a progress bar while they are parsed and replayed.
PROGRESS_EVENTS = 20_000


def load_upload(name: str, data: bytes) -> tuple[Problem, ...] | None:
    """Parse an upload, and replay a long one, before it replaces the loaded trace; on errors
    the loaded trace stays as it was and its problems are returned (plain data: the exception,
    whose traceback holds the decompressed bytes, is dropped here and never stored).

    A long upload shows one progress bar from its first line: parsing, then replaying (the
    replay is cached, so the page that follows finds it). Until both are done the previous
    trace stays loaded: if the user stops the run meanwhile (Streamlit's Stop), the
    ``loading`` mark is left behind and the next run says the load was cancelled
    (:func:`cancelled_load_note`), with the previous trace still there."""
    if looks_like_capture(data):
        return _load_capture(name, data)
    key = content_key(data)
    bar = st.progress(0.0, text=f"Loading {name}: reading") if len(data) > 1 << 20 else None
    st.session_state.loading = name

    def parsing(frac: float, msg: str) -> None:
        if bar is not None:
            bar.progress(0.5 * frac, text=f"Loading {name}: parsing, {msg}")

    try:
        trace = _parse(key, name, data, parsing if bar is not None else None)
    except TraceError as exc:
        st.session_state.pop("loading", None)
        if bar is not None:
            bar.empty()
        return tuple(exc.problems)
    if len(trace.events) > PROGRESS_EVENTS:
        settings = Settings().with_overrides(trace.settings, source=name)
        if bar is None:
            bar = st.progress(0.5, text=f"Loading {name}: replaying")

        def replaying(frac: float, msg: str) -> None:
            assert bar is not None
            bar.progress(0.5 + 0.5 * min(frac, 1.0), text=f"Loading {name}: replaying, {msg}")

        _timeline(key, settings_key(settings), trace, settings, replaying)
    if bar is not None:
        bar.empty()
    st.session_state.pop("loading", None)
    adopt(Loaded("upload", name, data, trace))
    return None


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
    if current is not None:  # the box cuts a long title: the whole of it, below
        st.sidebar.caption(titles[current])
    # Uploads are told apart by the uploader's file id (a new one for every upload), never by
    # name and size: a corrected file of the same name and size is read. After a refused
    # upload the uploader gets a new key, so it is empty again (and Streamlit drops its bytes).
    generation = int(st.session_state.get("upload_generation", 0))
    up = st.sidebar.file_uploader(
        f"...or upload a trace (.jsonl, .jsonl.gz, .csv) or a kernel capture "
        f"(tools/capture/dpamt.bt's .txt); up to {UPLOAD_LIMIT_MB} MB",
        type=["jsonl", "gz", "csv", "txt"],
        key=f"upload_{generation}",
    )
    if up is not None and st.session_state.get("upload_seen") != up.file_id:
        st.session_state.upload_seen = up.file_id
        problems = load_upload(up.name, up.getvalue())
        if problems is not None:
            st.session_state.upload_error = RejectedUpload(up.name, problems)
            st.session_state.upload_generation = generation + 1
        st.rerun()
    bad: RejectedUpload | None = st.session_state.get("upload_error")
    if bad is not None:
        st.sidebar.error(
            f"The upload has {len(bad.problems)} problem(s) and was not loaded; the previous "
            "trace is still loaded. See the list on the page."
        )


@dataclass(frozen=True)
class CaptureInfo:
    """A kernel capture loaded as its imported trace, and the model's conformance to it."""

    source: str  # the capture's file name
    trace_key: str  # content_key of the imported trace's bytes: whose views these are
    conformance: Any  # explorer.conformance.conform.Conformance
    #: what the parse derived (a build's inlined gets and puts) and the unknown keys it noted
    notes: tuple[str, ...] = ()


def _load_capture(name: str, data: bytes) -> tuple[Problem, ...] | None:
    """A kernel capture (tools/capture/dpamt.bt's output, told apart by its content): imported
    as a trace (explorer.conformance.importer), checked against the model (``conform``), loaded as the
    imported trace; the conformance stays beside it for Explore's markers and jumps."""
    from explorer.conformance.conform import conform
    from explorer.conformance.importer import import_capture
    from explorer.ingest.write import dump_trace

    try:
        cap = parse_capture(data, name)
    except TraceError as exc:
        return tuple(exc.problems)
    imp = import_capture(cap)
    text = dump_trace(
        imp.events, title=f"imported from {name}", settings=imp.settings.to_dict()
    ).encode()
    stem = name.rsplit(".", 1)[0]
    source = f"{stem}.imported.jsonl"
    key = content_key(text)
    trace = _parse(key, source, text)
    adopt(Loaded("upload", source, text, trace))
    st.session_state.capture_info = CaptureInfo(
        name, key, conform(cap, imported=imp), (*cap.derived, *cap.unknown)
    )
    return None


def capture_info(loaded: Loaded) -> CaptureInfo | None:
    """The capture the loaded trace was imported from, if it was."""
    info: CaptureInfo | None = st.session_state.get("capture_info")
    if info is None or info.trace_key != content_key(loaded.data):
        return None
    return info


def cancelled_load_note() -> None:
    """After a load the user stopped (Streamlit's Stop, mid-parse or mid-replay): say so once;
    the previous trace is still loaded."""
    name = st.session_state.pop("loading", None)
    if name is not None:
        loaded: Loaded = st.session_state.loaded
        st.warning(f"The load of {name} was cancelled; {loaded.source} is still loaded.")


def show_upload_errors() -> None:
    """The problems of the last refused upload, until another trace loads or they are
    dismissed."""
    cancelled_load_note()
    bad: RejectedUpload | None = st.session_state.get("upload_error")
    if bad is None:
        return
    loaded: Loaded = st.session_state.loaded
    st.error("The uploaded trace was not loaded: it has these problems.")
    st.text(f"file: {bad.source}\nstill loaded: {loaded.source}")
    problems_table(bad.problems)
    if st.button("Dismiss", key="btn_dismiss_upload_error"):
        st.session_state.pop("upload_error", None)
        st.rerun()


def sync_url(settings: Settings) -> None:
    """The URL names what is shown: a sample (pinned: with its ``schedule``) or ``upload``."""
    loaded: Loaded = st.session_state.loaded
    params = encode_view_state(
        loaded.name if loaded.name != "upload" else "upload",
        int(st.session_state.get("cursor", -1)),
        settings,
        trace_settings(loaded),
        st.session_state.get("review_notes") or None,
        schedule=loaded.schedule,
    )
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


def ensure_default() -> None:
    if "loaded" not in st.session_state:
        load_sample(DEFAULT_SAMPLE)
