"""Interleavings: every schedule of the loaded trace's concurrent groups (being built)."""

import streamlit as st

from app_pages import common

common.init_session()
common.sidebar_trace_picker()
common.sidebar_settings()
st.title("Interleavings")
st.info("Work in progress: use `python -m explorer explore TRACE` meanwhile.")
