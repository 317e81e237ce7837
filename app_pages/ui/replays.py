"""The loaded trace and its replays, cached across reruns and sessions in one process-wide
cache bounded in bytes (explorer.appsupport.ByteBudgetCache, REPLAY_CACHE_BUDGET): every page
draws from these. A trace too big for the budget is kept in its own session only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from explorer.appsupport import (
    REPLAY_CACHE_BUDGET,
    REPLAY_CHECKPOINT_BUDGET,
    ByteBudgetCache,
    IdleTrimmer,
    content_key,
    mmap_large_blocks,
    parse_estimate,
    replay_estimate,
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


@st.cache_resource(show_spinner=False)
def shared_cache() -> ByteBudgetCache:
    """The process's one cache of parsed traces and replays (all sessions)."""
    return ByteBudgetCache(REPLAY_CACHE_BUDGET)


@st.cache_resource(show_spinner=False)
def idle_trimmer() -> IdleTrimmer:
    """The process's one :class:`~explorer.appsupport.IdleTrimmer` (started on first use):
    memory the sessions freed goes back to the system once no script has run for a while."""
    mmap_large_blocks()
    return IdleTrimmer().start()


#: Session state key of the parse and the replay too big for the shared cache: the session's
#: latest of each, dropped with the session (or when the next one comes).
OWN_KEY = "own_cache"


def _cached(key: tuple[Any, ...], make: Any, estimate: Any) -> Any:
    """``make()``'s value under ``key``: from the shared cache, or from the session's own
    (over-budget) entries, or made now and kept in the first that takes it."""
    cache = shared_cache()
    value = cache.get(key)
    if value is not None:
        return value
    own: dict[Any, Any] = st.session_state.setdefault(OWN_KEY, {})
    if key in own:
        return own[key]
    value = make()
    if not cache.put(key, value, estimate(value)):
        for k in [k for k in own if k[0] == key[0]]:  # one of each kind: the latest
            del own[k]
        own[key] = value
    return value


def _parse(key: str, source: str, _data: bytes, _progress: Any = None) -> Trace:
    trace: Trace = _cached(
        ("parse", key, source),
        lambda: parse_trace(_data, source, _progress),
        lambda t: parse_estimate(len(t.events)),
    )
    return trace


def _timeline(
    key: str,
    skey: tuple[tuple[str, Any], ...],
    _trace: Trace,
    _settings: Settings,
    _progress: Any = None,
) -> Timeline:
    tl: Timeline = _cached(
        ("replay", key, skey),
        lambda: replay(
            _trace.events,
            _settings,
            progress=_progress,
            checkpoint_budget=REPLAY_CHECKPOINT_BUDGET,
        ),
        lambda _: replay_estimate(len(_trace.events)),
    )
    return tl


def _metrics(
    key: str, skey: tuple[tuple[str, Any], ...], _trace: Trace, _settings: Settings
) -> RunMetrics:
    """Run metrics (counters, peaks, and per-event series: a list slot and often an int object
    per value, 36 B counted for each), in the same byte-bounded cache."""
    m: RunMetrics = _cached(
        ("metrics", key, skey),
        lambda: run_metrics(_trace.events, _settings),
        lambda r: parse_estimate(0) + 36 * sum(len(v) for v in r.series.values()),
    )
    return m


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
