"""Each vCPU's ``tdx_pamt_cache`` as its stack of pages, and KVM's MMU caches as levels."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.model.constants import KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE, PAGES_PER_REGION_SHIFT
from explorer.model.records import Snapshot
from explorer.views.palette import BLUE, GREY, ORANGE, VERMILLION, YELLOW


def pamt_cache_figure(snapshot: Snapshot, height: int | None = None) -> go.Figure:
    """One column per vCPU: its cached pages bottom to top (the top pops first, LIFO), each
    labelled with its region; the dashed line is the top-up target ``2 * dpamt_gets_per_fault``."""
    fig = go.Figure()
    vcpus = [v for v in snapshot.vcpus if v.alive]
    target = 2 * snapshot.settings.dpamt_gets_per_fault
    xs, ys, texts, hovers, colours = [], [], [], [], []
    for v in vcpus:
        for pos, pfn in enumerate(v.pamt_cache):
            is_top = pos == len(v.pamt_cache) - 1
            xs.append(f"vCPU {v.vcpu}")
            ys.append(pos + 0.5)
            texts.append(f"r{pfn >> PAGES_PER_REGION_SHIFT}")
            hovers.append(
                f"vCPU {v.vcpu}, position {pos} of {len(v.pamt_cache)}<br>pfn {pfn:#x}, "
                f"region {pfn >> PAGES_PER_REGION_SHIFT}"
                + ("<br>next to pop (LIFO)" if is_top else "")
            )
            colours.append(VERMILLION if is_top else ORANGE)
    fig.add_trace(
        go.Bar(
            x=xs,
            y=[1] * len(xs),
            base=[y - 0.5 for y in ys],
            text=texts,
            textposition="inside",
            insidetextanchor="middle",
            textfont={"size": 11, "color": "black"},
            constraintext="none",
            textangle=0,
            hovertext=hovers,
            hoverinfo="text",
            marker={"color": colours, "line": {"width": 1, "color": "white"}},
            name="cached page (top: next pop)",
            width=0.6,
        )
    )
    labels = [f"vCPU {v.vcpu}" for v in vcpus] or ["no vCPU"]
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=[target] * len(labels),
            mode="lines+markers",
            line={"dash": "dash", "color": BLUE},
            marker={"symbol": "line-ew-open", "size": 30},
            name=f"top-up target 2 x {snapshot.settings.dpamt_gets_per_fault} = {target}",
        )
    )
    if "mempool" in snapshot.extra:
        pool = snapshot.extra["mempool"]
        fig.add_trace(
            go.Bar(x=["mempool"], y=[len(pool)], name="mempool reserve", marker={"color": YELLOW})
        )
    top = max([target, *[len(vc.pamt_cache) for vc in vcpus], 1]) + 1
    fig.update_layout(
        title="tdx_pamt_cache per vCPU (LIFO stack; labels: region of each page)",
        xaxis={
            "title": "vCPU",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels,
        },
        yaxis={"title": "pages in the cache", "range": [0, top], "dtick": 2},
        barmode="overlay",
        legend={"orientation": "h", "y": -0.3, "font": {"size": 10}},
        margin={"l": 50, "r": 10, "t": 40, "b": 30},
        uirevision="pamt-cache",
        height=height,
    )
    return fig


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
        fig.add_hline(
            y=wct,
            line_dash="dot",
            line_color=VERMILLION,
            annotation_text=f"min = worst_case_tables = {wct}",
        )
        fig.add_hline(
            y=KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE,
            line_dash="dash",
            line_color=GREY,
            annotation_text="capacity 40",
        )
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
