"""The region map: host memory as a grid of 2 MiB regions, coloured by DPAMT state or owner.

One ``go.Heatmap`` built from numpy arrays (no gaps, no per-cell shapes), so it stays light at
524,288 regions (1 TiB): z travels as a typed array. Per-cell hover text is only attached to
small maps; large maps hover with the region index and state, and the app's region inspector
gives the detail. Regions changed by the current step are outlined by a small scatter overlay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import plotly.graph_objects as go

from explorer.frames import RegionArrays, region_arrays
from explorer.model.records import OWNERS, Snapshot
from explorer.views.palette import BLACK, DPAMT_STATES, OWNER_COLOURS, discrete_scale

#: Above this many regions, cells carry no per-cell hover text (payload size).
HOVER_TEXT_LIMIT = 16384


def grid_width(nr_regions: int) -> int:
    """Columns of the grid: about 1.5 x as wide as tall, a power of two from 16 to 1024."""
    if nr_regions <= 16:
        return max(nr_regions, 1)
    w = 2 ** round(math.log2(math.sqrt(nr_regions) * 1.5))
    return int(min(1024, max(16, w)))


def _grid(values: npt.NDArray[np.int8], width: int) -> npt.NDArray[np.int8 | np.float32]:
    """Rows of ``width``; int8 (1 byte a cell in the payload) unless the last row needs NaN
    padding (then float32)."""
    rows = -(-len(values) // width)
    if rows * width == len(values):
        return values.astype(np.int8).reshape(rows, width)
    z = np.full(rows * width, np.nan, dtype=np.float32)
    z[: len(values)] = values
    return z.reshape(rows, width)


def region_map(
    snapshot: Snapshot,
    changed: Sequence[int] = (),
    color_by: str = "dpamt",
    arrays: RegionArrays | None = None,
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """The map for ``snapshot``; ``changed`` regions are outlined."""
    a = arrays if arrays is not None else region_arrays(snapshot)
    n = snapshot.nr_regions
    w = grid_width(n)
    if color_by == "owner":
        codes, names = a.owner, [name for name in OWNERS]
        colours = [OWNER_COLOURS[name] for name in OWNERS]
        legend = "dominant owner of the region's pages"
    elif color_by == "dpamt":
        codes, names = a.state, [name for name, _, _ in DPAMT_STATES]
        colours = [c for _, _, c in DPAMT_STATES]
        legend = "DPAMT state"
    else:
        raise ValueError("color_by must be 'dpamt' or 'owner'")
    z = _grid(codes, w)
    k = len(colours)
    heat: dict[str, object] = {
        "z": z,
        "zmin": -0.5,
        "zmax": k - 0.5,
        "colorscale": discrete_scale(colours),
        "showscale": True,
        "colorbar": {
            "title": {"text": legend},
            "tickvals": list(range(k)),
            "ticktext": names,
            "len": 0.9,
        },
        "name": "regions",
    }
    if n <= HOVER_TEXT_LIMIT:
        idx = range(n)
        refc = a.refcount
        pairs = snapshot.pairs
        text = [
            f"region {r} ({r << 21:#x})<br>{names[int(codes[r])]}<br>refcount {int(refc[r])}"
            + (f"<br>pair {pairs[r][0]:#x}, {pairs[r][1]:#x}" if r in pairs else "")
            + f"<br>{int(a.used[r])} of 512 pages in use"
            for r in idx
        ]
        text += [""] * (z.size - n)
        heat["text"] = np.array(text, dtype=object).reshape(z.shape)
        heat["hovertemplate"] = "%{text}<extra></extra>"
    else:
        heat["hovertemplate"] = (
            f"row %{{y}}, column %{{x}}: region = row x {w} + column<br>state %{{z}}<extra></extra>"
        )
    fig = go.Figure(go.Heatmap(**heat))
    if changed:
        ch = np.asarray(sorted(set(changed)), dtype=np.int64)
        ch = ch[(ch >= 0) & (ch < n)]
        fig.add_trace(
            go.Scatter(
                x=(ch % w).tolist(),
                y=(ch // w).tolist(),
                mode="markers",
                marker={"symbol": "square-open", "size": 14, "line": {"width": 3}, "color": BLACK},
                name="changed by this step",
                hovertemplate="region %{customdata} changed<extra></extra>",
                customdata=ch.tolist(),
            )
        )
    fig.update_layout(
        title=title or f"Host memory: {n:,} regions of 2 MiB ({n * 2:,} MiB)",
        xaxis={"title": f"region mod {w}", "showgrid": False, "zeroline": False},
        yaxis={
            "title": f"region div {w}",
            "autorange": "reversed",
            "showgrid": False,
            "zeroline": False,
            "scaleanchor": "x",
        },
        legend={"orientation": "h", "y": -0.15},
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        uirevision="region-map",
        height=height,
    )
    return fig


def region_map_stats(nr_regions: int, seed: int = 0) -> dict[str, float]:
    """Build time (s) and JSON payload (bytes) of a map of ``nr_regions`` with realistic content,
    for the benchmark."""
    from explorer.model.records import OWNERS as _OWNERS
    from explorer.model.settings import Settings

    rng = np.random.default_rng(seed)
    used = rng.choice(nr_regions, size=max(1, nr_regions // 4), replace=False)
    counts = tuple([0] * len(_OWNERS))
    region_owners = {}
    for r in used.tolist():
        c = list(counts)
        c[0], c[7] = 256, 256
        region_owners[r] = tuple(c)
    snapshot = Snapshot(
        step=0,
        event=0,
        settings=Settings(host_memory_mib=nr_regions * 2),
        nr_regions=nr_regions,
        region_owners=region_owners,
        refcount={r: 256 for r in used.tolist()},
        pairs={r: (0, 1) for r in used.tolist()},
        orphans={},
        vcpus=(),
        tds=(),
        cpus=(),
        pamt_lock=None,
        mmu_lock_writer=None,
        mmu_lock_readers=(),
        counters={},
        pages={},
        injections={},
    )
    t0 = time.perf_counter()
    arrays = region_arrays(snapshot)
    fig = region_map(snapshot, changed=used[:3].tolist(), arrays=arrays)
    build = time.perf_counter() - t0
    payload = len(fig.to_json())
    return {"regions": nr_regions, "build_s": build, "json_bytes": payload}
