"""The allocator a search of every interleaving uses, as the Interleavings page offers it."""

from __future__ import annotations

import streamlit as st

from app_pages.ui.replays import Loaded
from explorer.interleavings.allocator import EXPLORE_ALLOCATOR, explore_settings
from explorer.model.settings import Settings


def search_settings(loaded: Loaded, settings: Settings) -> Settings:
    """``settings`` (the sidebar's) for the search: with the per-CPU allocator
    (:mod:`explorer.interleavings.allocator`) unless the trace or the sidebar names an
    allocator or the user turns the toggle off. What it returns is what the page's links and
    pinned traces carry."""
    named = "allocator" in loaded.trace.settings or "allocator" in st.session_state.overrides
    if not named and settings.allocator != EXPLORE_ALLOCATOR:
        per_cpu = st.toggle(
            f"per-CPU page lists (allocator {EXPLORE_ALLOCATOR})",
            value=True,
            key="explore_percpu",
            help="On (the search's default when the trace names no allocator): each CPU "
            "allocates from its own list, as the kernel's order-0 allocations do, so two CPUs' "
            f"cache top-ups do not race. Off: the trace's allocator ({settings.allocator}), "
            "whose one global order makes every order of the CPUs' allocations a race.",
        )
        if per_cpu:
            settings = explore_settings(settings, ())
    st.caption(f"allocator: {settings.allocator}")
    return settings
