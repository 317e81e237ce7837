"""DPAMT Explorer: entry point only (page config and navigation over app_pages/).

The page files live in ``app_pages/``, not ``pages/``: while a ``pages/`` directory sits beside
the entry point, Streamlit (1.67) runs a deep link such as ``/compare`` on a fresh server as a
legacy multipage app, executing the page file alone, without this file's navigation and page
config, until some session has run ``st.navigation`` once. Shared links must work on a fresh
server, so the directory has another name.
"""

import streamlit as st

st.set_page_config(page_title="DPAMT Explorer", page_icon="🧮", layout="wide")

pages = [
    st.Page("app_pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("app_pages/traces.py", title="Traces", icon=":material/description:"),
    st.Page("app_pages/interleavings.py", title="Interleavings", icon=":material/account_tree:"),
    st.Page("app_pages/learn.py", title="Learn", icon=":material/school:"),
    st.Page("app_pages/compare.py", title="Compare designs", icon=":material/compare_arrows:"),
    st.Page("app_pages/about.py", title="About DPAMT", icon=":material/menu_book:"),
]
st.navigation(pages).run()
