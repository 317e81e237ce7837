"""Engine data -> numpy arrays and pandas DataFrames for the views (the only pandas user besides
the views and pages).

Region arrays cover every 2 MiB region of host memory, so the region map is one heatmap built
from arrays even at 524,288 regions (1 TiB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from explorer.model.records import OWNER_CODE, OWNERS, Snapshot

FREE_CODE = OWNER_CODE["free"]


@dataclass(frozen=True)
class RegionArrays:
    """Per-region arrays (length ``nr_regions``)."""

    state: npt.NDArray[np.int8]  # index into views.palette.DPAMT_STATES
    refcount: npt.NDArray[np.int32]
    owner: npt.NDArray[np.int8]  # dominant owner among used pages (0: all free)
    used: npt.NDArray[np.int16]  # pages not free


def region_arrays(s: Snapshot) -> RegionArrays:
    n = s.nr_regions
    refcount = np.zeros(n, dtype=np.int32)
    if s.refcount:
        idx = np.fromiter(s.refcount.keys(), dtype=np.int64, count=len(s.refcount))
        refcount[idx] = np.fromiter(s.refcount.values(), dtype=np.int32, count=len(s.refcount))
    used = np.zeros(n, dtype=np.int16)
    owner = np.zeros(n, dtype=np.int8)
    if s.region_owners:
        regions = np.fromiter(s.region_owners.keys(), dtype=np.int64, count=len(s.region_owners))
        counts = np.array(list(s.region_owners.values()), dtype=np.int16)
        used[regions] = 512 - counts[:, FREE_CODE]
        busy = counts.copy()
        busy[:, FREE_CODE] = 0
        dom = busy.argmax(axis=1).astype(np.int8)
        dom[busy.max(axis=1) == 0] = 0
        owner[regions] = dom
    state = np.zeros(n, dtype=np.int8)
    state[used > 0] = 1
    has_pair = np.zeros(n, dtype=bool)
    if s.pairs:
        has_pair[np.fromiter(s.pairs.keys(), dtype=np.int64, count=len(s.pairs))] = True
    state[has_pair & (refcount >= 1)] = 2
    state[has_pair & (refcount >= 4)] = 3
    state[has_pair & (refcount >= 64)] = 4
    state[has_pair & (refcount == 0)] = 6
    if s.orphans:
        orphan = np.zeros(n, dtype=bool)
        orphan[np.fromiter(s.orphans.keys(), dtype=np.int64, count=len(s.orphans))] = True
        state[orphan & has_pair] = 5
    return RegionArrays(state=state, refcount=refcount, owner=owner, used=used)


def regions_in_play(s: Snapshot) -> pd.DataFrame:
    """One row per region with a refcount, a pair or an orphan: the refcount chart's data."""
    regions = sorted(set(s.refcount) | set(s.pairs) | set(s.orphans))
    rows = []
    for r in regions:
        pair = s.pairs.get(r)
        counts = s.region_owners.get(r)
        rows.append(
            {
                "region": r,
                "refcount": s.refcount.get(r, 0),
                "pair": f"{pair[0]:#x}, {pair[1]:#x}" if pair else "",
                "orphans": s.orphans.get(r, 0),
                "guest": counts[OWNER_CODE["guest"]] if counts else 0,
                "sept": counts[OWNER_CODE["sept"]] if counts else 0,
                "control": counts[OWNER_CODE["control"]] if counts else 0,
            }
        )
    return pd.DataFrame(
        rows, columns=["region", "refcount", "pair", "orphans", "guest", "sept", "control"]
    )


def region_detail(s: Snapshot, region: int) -> dict[str, object]:
    """What a region holds: for the hover and the region inspector."""
    counts = s.region_owners.get(region)
    pages = (
        {name: int(counts[i]) for i, name in enumerate(OWNERS) if counts and counts[i]}
        if counts
        else {"free": 512}
    )
    pair = s.pairs.get(region)
    return {
        "region": region,
        "address": f"{region << 21:#x}-{((region + 1) << 21) - 1:#x}",
        "refcount": s.refcount.get(region, 0),
        "pair": f"{pair[0]:#x}, {pair[1]:#x}" if pair else "none",
        "orphans": s.orphans.get(region, 0),
        "pages": pages,
    }


def series_frame(x: list[int] | npt.NDArray[np.int64], series: dict[str, object]) -> pd.DataFrame:
    """Per-batch series -> a tidy frame indexed by step."""
    data = {k: np.asarray(v) for k, v in series.items()}
    df = pd.DataFrame(data)
    df.insert(0, "step", np.asarray(x))
    return df
