"""What every page shares, under one name: the pages (and app_pages/interleavings.py) call
``common.X``; the pieces themselves live in :mod:`app_pages.ui`, one module each.

User-provided text (titles, notes, error lines) is only ever shown with ``st.text``, ``st.code``
or in dataframes (through :func:`safe_frame`): never as Markdown or HTML.
"""

from __future__ import annotations

from app_pages.ui.loader import (
    PROGRESS_EVENTS,
    CaptureInfo,
    adopt,
    adopt_pinned,
    cancelled_load_note,
    capture_info,
    ensure_default,
    init_session,
    load_sample,
    load_upload,
    pinned_sample,
    show_upload_errors,
    sidebar_trace_picker,
    sync_url,
)
from app_pages.ui.replays import Loaded, metrics, replay_key, timeline, trace_settings
from app_pages.ui.settings import KNOB_HELP, KNOBS, current_settings, sidebar_settings
from app_pages.ui.tables import problems_table, safe_frame

__all__ = [
    "KNOBS",
    "KNOB_HELP",
    "PROGRESS_EVENTS",
    "CaptureInfo",
    "Loaded",
    "adopt",
    "adopt_pinned",
    "cancelled_load_note",
    "capture_info",
    "current_settings",
    "ensure_default",
    "init_session",
    "load_sample",
    "load_upload",
    "metrics",
    "pinned_sample",
    "problems_table",
    "replay_key",
    "safe_frame",
    "show_upload_errors",
    "sidebar_settings",
    "sidebar_trace_picker",
    "sync_url",
    "timeline",
    "trace_settings",
]
