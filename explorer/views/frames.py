"""Engine data -> numpy arrays and pandas DataFrames for the views (the only pandas user besides
the views and pages).

Region arrays cover every 2 MiB region of host memory, so the region map is one heatmap built
from arrays even at 524,288 regions (1 TiB).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from explorer.model.constants import PAGES_PER_REGION, PAGES_PER_REGION_SHIFT
from explorer.model.packed import GROUP_SHIFT, sparse_header
from explorer.model.records import OWNER_CODE, OWNERS, RegionCounts, Snapshot

FREE_CODE = OWNER_CODE["free"]


@dataclass(frozen=True)
class RegionArrays:
    """Per-region arrays (length ``nr_regions``)."""

    state: npt.NDArray[np.int8]  # index into views.palette.DPAMT_STATES
    refcount: npt.NDArray[np.int32]
    owner: npt.NDArray[np.int8]  # dominant owner among used pages (0: all free)
    used: npt.NDArray[np.int16]  # pages not free


_NR_OWNERS = len(OWNERS)


def owner_table(
    region_owners: Mapping[int, tuple[int, ...]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """A snapshot's ``region_owners`` as arrays: the touched regions (ascending) and their
    pages per owner (one row each). A :class:`~explorer.model.records.RegionCounts` of a
    restored machine keeps most regions as its keyframe's sparse maps and the deltas' pages:
    they are counted here, with numpy, rather than region by region in the engine."""
    if not isinstance(region_owners, RegionCounts):
        regions = np.fromiter(region_owners.keys(), dtype=np.int64, count=len(region_owners))
        rows = np.array(list(region_owners.values()), dtype=np.int32).reshape(-1, _NR_OWNERS)
        order = np.argsort(regions, kind="stable")
        return regions[order], rows[order]
    built, base, pfns, values = region_owners.layers()
    page_parts: list[npt.NDArray[np.int64]] = []
    code_parts: list[npt.NDArray[np.uint8]] = []
    region_parts: list[npt.NDArray[np.int64]] = []
    for g, group in (base or {}).items():
        first = g << GROUP_SHIFT
        if isinstance(group, bytes):  # sparse: indices, where each region begins, entries
            n = group[0]
            ids = first + np.frombuffer(group, dtype=np.uint8, count=n, offset=1).astype(np.int64)
            head = sparse_header(n)
            bounds = np.frombuffer(group, dtype="<u2", count=n + 1, offset=head).astype(np.int64)
            entries = np.frombuffer(group, dtype="<u2", offset=head + 2 * (n + 1)).astype(np.int64)
            page_parts.append(
                (np.repeat(ids, bounds[1:] - bounds[:-1]) << PAGES_PER_REGION_SHIFT)
                | (entries & (PAGES_PER_REGION - 1))
            )
            code_parts.append((entries >> 9).astype(np.uint8))
        else:  # dense: indices, and their maps deflated
            index, blob = group
            ids = first + np.frombuffer(index, dtype=np.uint8).astype(np.int64)
            maps = np.frombuffer(zlib.decompress(blob, -15), dtype=np.uint8)
            maps = maps.reshape(len(ids), PAGES_PER_REGION)
            row, off = np.nonzero(maps)
            page_parts.append((ids[row] << PAGES_PER_REGION_SHIFT) | off)
            code_parts.append(maps[row, off])
        region_parts.append(ids)
    patch = np.frombuffer(pfns, dtype=np.int32).astype(np.int64)
    page_parts.append(patch)
    code_parts.append(np.frombuffer(values, dtype=np.uint8))
    region_parts.append(patch >> PAGES_PER_REGION_SHIFT)
    region_parts.append(np.fromiter(built.keys(), dtype=np.int64, count=len(built)))
    regions = np.unique(np.concatenate(region_parts))
    pages = np.concatenate(page_parts)
    codes = np.concatenate(code_parts).astype(np.int64)
    # the deltas' pages come after the keyframe's: keep each page's last owner
    order = np.argsort(pages, kind="stable")
    pages, codes = pages[order], codes[order]
    last = np.ones(len(pages), dtype=bool)
    last[:-1] = pages[1:] != pages[:-1]
    pages, codes = pages[last], codes[last]
    idx = np.searchsorted(regions, pages >> PAGES_PER_REGION_SHIFT)
    flat = np.bincount(idx * _NR_OWNERS + codes, minlength=len(regions) * _NR_OWNERS)
    rows = flat.reshape(len(regions), _NR_OWNERS).astype(np.int32)
    rows[:, FREE_CODE] = PAGES_PER_REGION - (rows.sum(axis=1) - rows[:, FREE_CODE])
    if built:
        keys = np.fromiter(built.keys(), dtype=np.int64, count=len(built))
        rows[np.searchsorted(regions, keys)] = np.array(list(built.values()), dtype=np.int32)
    return regions, rows


def region_arrays(s: Snapshot) -> RegionArrays:
    n = s.nr_regions
    refcount = np.zeros(n, dtype=np.int32)
    if s.refcount:
        idx = np.fromiter(s.refcount.keys(), dtype=np.int64, count=len(s.refcount))
        refcount[idx] = np.fromiter(s.refcount.values(), dtype=np.int32, count=len(s.refcount))
    used = np.zeros(n, dtype=np.int16)
    owner = np.zeros(n, dtype=np.int8)
    if s.region_owners:
        regions, counts = owner_table(s.region_owners)
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
    table, table_rows = owner_table(s.region_owners)
    at = np.searchsorted(table, regions).tolist()
    rows = []
    for r, i in zip(regions, at, strict=True):
        pair = s.pairs.get(r)
        found = i < len(table) and table[i] == r
        counts = tuple(table_rows[i].tolist()) if found else None
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
