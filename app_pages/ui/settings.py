"""The settings sidebar: the trace's knobs, each with its kernel default, help and a reset."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app_pages.ui.replays import Loaded, trace_settings
from explorer.appsupport import knob_widget, parse_knob_text
from explorer.designs.rationale import help_text
from explorer.model.constants import MODES, mode_label
from explorer.model.errors import TraceError
from explorer.model.settings import Settings

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
    # each mode's summary and where it comes from (explorer.designs.rationale: the seed's own reasons)
    "mode": "v6 as posted, its variants, and the designs the seed rejected:\n\n"
    + "\n\n".join(help_text(m).split("\n")[0] for m in MODES),
    "allocator": "lowest packs pages into regions; spread scatters them (worst case for DPAMT); "
    "percpu: each CPU allocates from its own blocks, as the kernel's per-CPU lists (the "
    "Interleavings page's default)",
    "schedule": "how concurrent events (same t) interleave",
    "seed": "seed of the random allocator and schedule",
    "host_memory_mib": "host memory; even, 2 MiB per region",
    "max_retries": "local retries of a fault before the explorer reports a livelock",
}


#: What does not change between runs, made once per process instead of on every run (the
#: sidebar is drawn on every Next of every session): the kernel's defaults, each knob's widget
#: kind and bounds, its label.
_KERNEL = Settings()
_WIDGETS = {knob: knob_widget(knob) for knob in KNOBS}  # bounds: the parser's own (SETTING_SPECS)
_LABELS = {knob: f"{knob} (kernel default {getattr(_KERNEL, knob)})" for knob in KNOBS}
_CHOICES = {knob: list(w.choices) for knob, w in _WIDGETS.items() if w.kind == "select"}


def current_settings(base: Settings | None = None) -> Settings:
    """The trace's settings (``base``, default: the loaded trace's) with the sidebar's
    overrides; an override the trace's settings refuse is dropped, with a message."""
    if base is None:
        base = trace_settings(st.session_state.loaded)
    try:
        return base.with_overrides(st.session_state.overrides, source="sidebar")
    except TraceError as exc:
        st.sidebar.error("A setting is invalid and was reset:")
        st.sidebar.code(str(exc), language=None)
        st.session_state.overrides = {}
        return base


def sidebar_settings() -> Settings:
    """The worst-case page-table counts and the other knobs, each with its default and a reset."""
    loaded: Loaded = st.session_state.loaded
    base = trace_settings(loaded)
    overrides: dict[str, Any] = st.session_state.overrides
    st.sidebar.subheader("Settings")
    for knob in KNOBS:
        widget = _WIDGETS[knob]
        value = overrides.get(knob, getattr(base, knob))
        label = _LABELS[knob]
        key = f"knob_{knob}"
        new: Any
        if widget.kind == "select":
            choices = _CHOICES[knob]
            new = st.sidebar.selectbox(
                label,
                choices,
                index=choices.index(value),
                key=key,
                help=KNOB_HELP[knob],
                format_func=mode_label if knob == "mode" else str,
            )
        elif widget.kind == "number":
            new = st.sidebar.number_input(
                label,
                min_value=widget.lo,
                max_value=widget.hi,
                value=value,
                step=widget.step,
                key=key,
                help=KNOB_HELP[knob],
            )
        else:  # wider than a browser number holds exactly (the seed): typed as text
            text = st.sidebar.text_input(
                label, value=str(value), key=key, help=f"{KNOB_HELP[knob]}; {widget.expected}"
            )
            try:
                new = parse_knob_text(knob, text)
            except ValueError as exc:
                st.sidebar.error("Not a valid value; it is ignored:")
                st.sidebar.text(str(exc))
                new = value
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
    return current_settings(base)
