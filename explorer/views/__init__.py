"""Plotly views: pure functions from engine data (Snapshots, Steps, series) to figures or tables.

No Streamlit, no globals: the same inputs always give the same figure.
"""
