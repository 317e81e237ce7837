"""Learn: guided tours of the samples and predict-the-next-step (being built)."""

import streamlit as st

from app_pages import common

common.init_session()
common.sidebar_trace_picker()
common.sidebar_settings()
st.title("Learn")
st.info("Work in progress.")
