"""The loaded trace and its replays, cached across reruns and sessions (``st.cache_resource``,
bounded by explorer.appsupport.REPLAY_CACHE_ENTRIES): every page draws from these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from explorer.appsupport import (
    REPLAY_CACHE_ENTRIES,
    REPLAY_CHECKPOINT_BUDGET,
    content_key,
    settings_key,
)
from explorer.ingest import Trace, parse_trace
from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline, replay
from explorer.sweeps.metrics import RunMetrics, run_metrics


@dataclass
class Loaded:
    name: str  # sample name, or "upload"
    source: str  # file name
    data: bytes
    trace: Trace
    #: A sample with its concurrent groups pinned (a finding's link or Open button): the turn
    #: orders as a link carries them (explorer.interleavings.job.encode_schedule), else "".
    schedule: str = ""


@st.cache_resource(max_entries=REPLAY_CACHE_ENTRIES, show_spinner=False)
def _parse(key: str, source: str, _data: bytes, _progress: Any = None) -> Trace:
    return parse_trace(_data, source, _progress)


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


def trace_settings(loaded: Loaded) -> Settings:
    return Settings().with_overrides(loaded.trace.settings, source=loaded.source)


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


def replay_key(loaded: Loaded, settings: Settings) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """Which replay a view was drawn from: the trace's bytes and the settings."""
    return (content_key(loaded.data), settings_key(settings))
