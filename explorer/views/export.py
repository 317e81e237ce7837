"""Slide-size image export of the charts: the browser's own export (the modebar's camera button),
set to 1920x1080 in SVG or PNG. Nothing is rendered on the server (no kaleido)."""

from __future__ import annotations

from typing import Any

#: Slide size in pixels (16:9, full HD).
SLIDE_WIDTH, SLIDE_HEIGHT = 1920, 1080
#: Export formats the camera button offers, with the label the app shows.
FORMATS = {"svg": "SVG", "png": "PNG (1920x1080)"}
DEFAULT_FORMAT = "svg"


def slide_config(fmt: str = DEFAULT_FORMAT, filename: str = "dpamt-explorer") -> dict[str, Any]:
    """A Plotly ``config`` whose camera button saves the chart as a 1920x1080 ``fmt`` image."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return {
        "displaylogo": False,
        "toImageButtonOptions": {
            "format": fmt,
            "width": SLIDE_WIDTH,
            "height": SLIDE_HEIGHT,
            "scale": 1,
            "filename": filename,
        },
    }
