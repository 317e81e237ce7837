"""Each vCPU's ``tdx_pamt_cache`` as its stack of pages, and KVM's MMU caches as levels."""

from __future__ import annotations

from typing import NamedTuple

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.model.constants import KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE, PAGES_PER_REGION_SHIFT
from explorer.model.records import Snapshot
from explorer.views.palette import (
    BACKGROUND,
    BLUE,
    GREY,
    ORANGE,
    VERMILLION,
    YELLOW,
    check_theme,
    legend_line,
    unchecked_figure,
)

#: At most this many region labels per vCPU stack: more overprint each other in a small chart.
MAX_STACK_LABELS = 12


def stack_label_points(
    regions: list[int], max_labels: int = MAX_STACK_LABELS
) -> list[tuple[int, float, str]]:
    """Where a stack's labels go: (position labelled, y centre of its run, text), none overprinting.

    The top page (the next to pop) is always labelled ``r<region>``. Below it, each run of pages
    of one region gets one label at its middle, ``r<region>`` or ``r<region> x<n>`` for a run of
    n pages. In a stack taller than ``max_labels`` pages, labels keep a gap of
    ``ceil(len / max_labels)`` positions: the longest runs are labelled first, and a run too close
    to a label already placed is left to its hover text.
    """
    n = len(regions)
    if not n:
        return []
    gap = max(1, -(-n // max_labels))
    points = [(n - 1, n - 0.5, f"r{regions[-1]}")]
    runs: list[tuple[int, int, int]] = []  # (start, length, region) below the top page
    start = 0
    for pos in range(1, n):
        if pos == n - 1 or regions[pos] != regions[start]:
            runs.append((start, pos - start, regions[start]))
            start = pos
    for first, length, region in sorted(runs, key=lambda r: (-r[1], -r[0])):
        mid = first + (length - 1) // 2
        if all(abs(mid - p) >= gap for p, _, _ in points) and len(points) < max_labels:
            text = f"r{region}" + (f" x{length}" if length > 1 else "")
            points.append((mid, first + length / 2, text))
    return points


def stack_labels(regions: list[int], max_labels: int = MAX_STACK_LABELS) -> list[str]:
    """One label per stack position (bottom first), most of them empty: see
    :func:`stack_label_points`."""
    texts = [""] * len(regions)
    for pos, _, text in stack_label_points(regions, max_labels):
        texts[pos] = text
    return texts


def cache_top(snapshot: Snapshot) -> int:
    """The top of the y axis of :func:`pamt_cache_figure`: a page above the fullest cache or
    the top-up target."""
    target = 2 * snapshot.settings.dpamt_gets_per_fault
    return max([target, *[len(v.pamt_cache) for v in snapshot.vcpus if v.alive], 1]) + 1


class CacheStacks(NamedTuple):
    """The bars of the vCPUs' ``tdx_pamt_cache`` stacks, one page a bar (x, base, label, hover,
    colour: the top, the next to pop, in vermillion), and the run labels' points: the data of
    :func:`pamt_cache_figure`, shared with the browser's step window (explorer/views/window.py)."""

    xs: list[str]
    bases: list[int]
    texts: list[str]
    hovers: list[str]
    colours: list[str]
    lx: list[str]
    ly: list[float]
    ltext: list[str]


def cache_stacks(snapshot: Snapshot) -> CacheStacks:
    """The stacks of the live vCPUs' caches, bottom to top (see :class:`CacheStacks`)."""
    out = CacheStacks([], [], [], [], [], [], [], [])
    for v in snapshot.vcpus:
        if not v.alive:
            continue
        name = f"vCPU {v.vcpu}"
        regions = [pfn >> PAGES_PER_REGION_SHIFT for pfn in v.pamt_cache]
        out.texts.extend(stack_labels(regions))
        for _, y, text in stack_label_points(regions):
            out.lx.append(name)
            out.ly.append(y)
            out.ltext.append(text)
        size = len(v.pamt_cache)
        for pos, pfn in enumerate(v.pamt_cache):
            is_top = pos == size - 1
            out.xs.append(name)
            out.bases.append(pos)
            out.hovers.append(
                f"{name}, position {pos} of {size}<br>pfn {pfn:#x}, "
                f"region {pfn >> PAGES_PER_REGION_SHIFT}"
                + ("<br>next to pop (LIFO)" if is_top else "")
            )
            out.colours.append(VERMILLION if is_top else ORANGE)
    return out


def pamt_cache_figure(
    snapshot: Snapshot,
    height: int | None = None,
    narrow: bool = False,
    y_top: int | None = None,
    theme: str = "light",
) -> go.Figure:
    """One column per vCPU: its cached pages bottom to top (the top pops first, LIFO), labelled
    with their regions (runs of one region share a label: :func:`stack_labels`); the dashed line
    is the top-up target ``2 * dpamt_gets_per_fault``. ``narrow``: a title on two short lines,
    for a chart in a column of the page. ``y_top``: the top of the y axis (default
    :func:`cache_top`); charts compared side by side pass the largest of theirs, so that equal
    heights mean equal counts (a cache of 10 drawn as tall as one of 40 misleads). ``theme``:
    ``light`` or ``dark``; the pages of a stack are parted by lines of the page's background
    (white lines on a dark page drew a bright ladder)."""
    check_theme(theme)
    vcpus = [v for v in snapshot.vcpus if v.alive]
    target = 2 * snapshot.settings.dpamt_gets_per_fault
    st = cache_stacks(snapshot)
    xs, texts, hovers, colours = st.xs, st.texts, st.hovers, st.colours
    lx, ly, ltext = st.lx, st.ly, st.ltext
    ys = [b + 0.5 for b in st.bases]
    labels = [f"vCPU {v.vcpu}" for v in vcpus]
    data: list[dict[str, object]] = [
        {
            "type": "bar",
            "x": xs,
            "y": [1] * len(xs),
            "base": [y - 0.5 for y in ys],
            # the labels are drawn by the text trace below, centred on their runs (a bar's own
            # text hides when its one-page segment is too small for it)
            "text": texts,
            "textposition": "none",
            "hovertext": hovers,
            "hoverinfo": "text",
            "marker": {"color": colours, "line": {"width": 1, "color": BACKGROUND[theme]}},
            "name": "cached page (top: next pop)",
            "width": 0.6,
        },
        {
            "type": "scatter",
            "x": labels,
            "y": [target] * len(labels),
            "mode": "lines+markers",
            "line": {"dash": "dash", "color": BLUE},
            "marker": {"symbol": "line-ew-open", "size": 30},
            "name": f"top-up target 2 x {snapshot.settings.dpamt_gets_per_fault} = {target}",
        },
    ]
    if "mempool" in snapshot.extra:
        pool = snapshot.extra["mempool"]
        data.append(
            {
                "type": "bar",
                "x": ["mempool"],
                "y": [len(pool)],
                "name": "mempool reserve",
                "marker": {"color": YELLOW},
            }
        )
    data.append(
        {
            "type": "scatter",
            "x": lx,
            "y": ly,
            "text": ltext,
            "mode": "text",
            "textfont": {"size": 11, "color": "black"},
            "hoverinfo": "skip",
            "showlegend": False,
            "name": "region labels",
        }
    )
    top = max(y_top, cache_top(snapshot)) if y_top is not None else cache_top(snapshot)
    title = (
        "tdx_pamt_cache per vCPU<br><sup>LIFO stack; labels: regions of its pages</sup>"
        if narrow
        else "tdx_pamt_cache per vCPU (LIFO stack; labels: region of each page)"
    )
    layout: dict[str, object] = {
        "title": {"text": title, "font": {"size": 15 if narrow else 17}},
        "xaxis": {
            "title": {"text": "vCPU"},
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels,
            "showticklabels": bool(vcpus),
        },
        "yaxis": {
            "title": {"text": "pages in the cache"},
            "range": [0, top],
            "dtick": 2 if top <= 24 else 10,
            "tickformat": ",d",
        },
        "barmode": "overlay",
        "legend": {"orientation": "h", "y": -0.3, "font": {"size": 10}},
        "margin": {"l": 50, "r": 10, "t": 60 if narrow else 40, "b": 30},
        "uirevision": "pamt-cache",
    }
    if height is not None:
        layout["height"] = height
    if not vcpus:  # an empty chart, labelled: no stub of a target line over a dummy column
        layout["annotations"] = [
            {
                "text": "no vCPU yet: each vCPU's cache appears here once vcpu_create has run",
                "x": 0.5,
                "y": 0.5,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "font": {"size": 13, "color": GREY},
            }
        ]
    return unchecked_figure(data, layout)


def kvm_caches_figure(snapshot: Snapshot) -> go.Figure:
    """KVM's MMU caches per vCPU: how full (of 40), with each cache's ``min`` marked."""
    vcpus = [v for v in snapshot.vcpus if v.alive]
    names = [c.name for c in vcpus[0].kvm_caches] if vcpus else []
    fig = make_subplots(rows=1, cols=1)
    for i, name in enumerate(names):
        counts, mins, kinds = [], [], []
        for v in vcpus:
            c = next(c for c in v.kvm_caches if c.name == name)
            counts.append(c.count)
            mins.append(c.min)
            kinds.append("objects" if c.objects else "host pages")
        fig.add_trace(
            go.Bar(
                x=[f"vCPU {v.vcpu}" for v in vcpus],
                y=counts,
                name=f"{name} ({kinds[0] if kinds else ''})",
                marker={
                    "color": [GREY, ORANGE, BLUE, YELLOW][i % 4],
                    "pattern": {"shape": "/" if kinds and kinds[0] == "objects" else ""},
                },
                hovertemplate=f"{name}: %{{y}} of {KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE}"
                + f" (min {mins[0] if mins else 0})<extra></extra>",
            )
        )
    if vcpus:
        wct = snapshot.settings.worst_case_tables
        # the two levels are named in the legend: a label on the line would sit over a bar
        for y, dash, colour, name in (
            (wct, "dot", VERMILLION, f"min = worst_case_tables = {wct}"),
            (KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE, "dash", GREY, "capacity 40"),
        ):
            fig.add_hline(y=y, line_dash=dash, line_color=colour)
            fig.add_trace(legend_line(name, colour, dash))
    fig.update_layout(
        title="KVM's MMU caches (no-op at >= min, else filled to 40)",
        xaxis={"title": "vCPU"},
        yaxis={"title": "objects / pages", "range": [0, KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE + 4]},
        barmode="group",
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 50, "r": 10, "t": 50, "b": 40},
        uirevision="kvm-caches",
    )
    return fig
