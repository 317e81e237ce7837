"""DPAMT Explorer: entry point only (page config and navigation; the pages live in pages/)."""

import streamlit as st

st.set_page_config(page_title="DPAMT Explorer", page_icon=":material/memory:", layout="wide")

pages = [
    st.Page("pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("pages/traces.py", title="Traces", icon=":material/description:"),
    st.Page("pages/compare.py", title="Compare designs", icon=":material/compare_arrows:"),
    st.Page("pages/about.py", title="About DPAMT", icon=":material/menu_book:"),
]
st.navigation(pages).run()
