"""The region map and the PAMT caches of a step, and the charts' Plotly config (the camera
button's slide export, its format chosen in the sidebar)."""

from __future__ import annotations

import streamlit as st

from explorer.model.records import Snapshot
from explorer.replay.timeline import Timeline
from explorer.views.caches import pamt_cache_figure
from explorer.views.export import DEFAULT_FORMAT, FORMATS, slide_config
from explorer.views.region_map import region_map, replay_span


def page_theme() -> str:
    """``dark`` or ``light``: the theme the viewer's browser shows (``st.context.theme``, since
    Streamlit 1.46), for the views that take a ``theme``. Unknown (the first run of a session,
    before the browser has said; Streamlit issue 11920) counts as light, Streamlit's default."""
    return "dark" if st.context.theme.type == "dark" else "light"


def chart_config(name: str) -> dict[str, object]:
    """The charts' Plotly config: the camera button saves a slide-size image (the format chosen
    in the sidebar), named after the chart."""
    return slide_config(st.session_state.get("export_format", DEFAULT_FORMAT), f"dpamt-{name}")


def export_choice() -> None:
    """The camera button's format, kept in ``export_format`` (not a widget key: the Learn page,
    which has no such widget, reads it too)."""
    if "export_format_choice" not in st.session_state:
        st.session_state.export_format_choice = st.session_state.get(
            "export_format", DEFAULT_FORMAT
        )
    st.session_state.export_format = st.sidebar.radio(
        "Export format for the charts' camera button",
        list(FORMATS),
        format_func=lambda f: FORMATS[f],
        horizontal=True,
        key="export_format_choice",
        help="The camera button at a chart's top right saves it as a 1920x1080 slide image "
        "(the browser draws it: nothing is sent to a server).",
    )


#: Heights (px) of the map and the caches: with the controls above, both fit a 1280x720 view.
MAP_HEIGHT, CACHE_HEIGHT = 220, 160


def map_and_caches(snap: Snapshot, changed: list[int], tl: Timeline | None = None) -> None:
    """The region map (coloured as the Display tab says) above the vCPUs' PAMT caches, on the
    page's theme. With ``tl`` (the replay ``snap`` is a step of) the map draws the replay's span,
    one grid at every step of a 4 GiB host; without, the whole map."""
    color_by = st.session_state.get("color_by", "dpamt")
    theme = page_theme()
    span = replay_span(tl) if tl is not None else None
    st.plotly_chart(
        region_map(snap, changed, color_by=color_by, height=MAP_HEIGHT, theme=theme, span=span),
        key="chart_region_map",
        config=chart_config("region_map"),
        width="stretch",
    )
    st.plotly_chart(
        pamt_cache_figure(snap, height=CACHE_HEIGHT, theme=theme),
        key="chart_pamt_cache",
        config=chart_config("pamt_cache"),
        width="stretch",
    )
