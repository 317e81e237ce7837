"""Colours and legend text shared by every view (Okabe-Ito: safe for colour-blind readers and
readable on light and dark backgrounds)."""

from __future__ import annotations

import plotly.graph_objects as go

BLACK = "#000000"
ORANGE = "#E69F00"
SKY = "#56B4E9"
GREEN = "#009E73"
YELLOW = "#F0E442"
BLUE = "#0072B2"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#BBBBBB"
LIGHT = "#EEEEEE"
#: Lines and marks that must read on a light and on a dark background (black vanishes on
#: Streamlit's dark theme, white on its light one): a mid grey, contrast >= 3:1 on both.
NEUTRAL = "#8C8C8C"

#: The themes a view can be drawn for (Streamlit's ``st.context.theme.type``).
THEMES = ("light", "dark")
#: On a dark theme: free cells a little lighter than Streamlit's dark background (#0E1117), so
#: the grid reads as a grid without the bright block LIGHT makes there; marks that are black on a
#: light theme are white.
FREE_DARK = "#30343E"
WHITE = "#FFFFFF"
#: The page's background on each theme (Streamlit's defaults): thin separators between cells.
BACKGROUND = {"light": WHITE, "dark": "#0E1117"}


def check_theme(theme: str) -> str:
    """``theme`` if it is one of :data:`THEMES`, else a ValueError naming it."""
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {', '.join(THEMES)}, not {theme!r}")
    return theme


def free_colour(theme: str = "light") -> str:
    """The colour of free cells (a region with no page in use, a free page) on ``theme``."""
    return FREE_DARK if check_theme(theme) == "dark" else LIGHT


def ink(theme: str = "light") -> str:
    """Marks drawn over the data (outlines of changed cells): black on light, white on dark."""
    return WHITE if check_theme(theme) == "dark" else BLACK


def dpamt_colours(theme: str = "light") -> list[str]:
    """The colours of :data:`DPAMT_STATES` on ``theme`` (only free changes)."""
    return [free_colour(theme) if name == "free" else c for name, _, c in DPAMT_STATES]


def owner_colours(theme: str = "light") -> dict[str, str]:
    """:data:`OWNER_COLOURS` on ``theme``: free follows the theme, black marks turn white."""
    out = dict(OWNER_COLOURS)
    out["free"] = free_colour(theme)
    out["in_hand"] = ink(theme)
    return out


#: DPAMT state of a region, by code (the region map's default colouring).
DPAMT_STATES = (
    ("free", "no page in use", LIGHT),
    ("used, no pair", "pages in use by the host (caches, allocations), no PAMT pair", GREY),
    ("pair, refcount 1-3", "PAMT pair installed; few TD pages", SKY),
    ("pair, refcount 4-63", "PAMT pair installed", BLUE),
    ("pair, refcount 64+", "PAMT pair installed; many TD pages", GREEN),
    ("leaked pair", "PAMT.REMOVE failed: refcount held by an orphan, pair leaked", VERMILLION),
    ("pair, refcount 0", "transient: pair present while refcount is 0 (inside a put)", YELLOW),
)

#: Page owners (explorer.model.records.OWNERS order) -> colour, for "colour by owner".
OWNER_COLOURS = {
    "free": LIGHT,
    "pamt_pair": BLUE,
    "pamt_cache": ORANGE,
    "kvm_cache": YELLOW,
    "sept": GREEN,
    "mirror": "#7FC8B0",
    "control": PURPLE,
    "guest": SKY,
    "leaked": VERMILLION,
    "in_hand": BLACK,
}

CPU_COLOURS = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK)
#: Line colours for series of several configurations, in order.
OKABE_ITO = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK)


def discrete_scale(colours: list[str]) -> list[list[float | str]]:
    """A Plotly colourscale mapping integer codes 0..n-1 (z range 0..n-1) to flat colours."""
    n = len(colours)
    scale: list[list[float | str]] = []
    for i, c in enumerate(colours):
        scale.append([i / n, c])
        scale.append([(i + 1) / n, c])
    return scale


def legend_line(name: str, colour: str, dash: str = "solid") -> go.Scatter:
    """A legend entry for a line drawn as a shape (``add_hline``): no data, only the key."""
    return go.Scatter(
        x=[None],
        y=[None],
        mode="lines",
        line={"color": colour, "dash": dash},
        name=name,
        hoverinfo="skip",
    )
