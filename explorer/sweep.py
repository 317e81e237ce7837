"""Sweeps: one trace under a grid of settings, each point measured by :mod:`explorer.metrics`.

``--vary dpamt_gets_per_fault=0..8 --vary mode=v6,v6-locked`` gives the cross product of the
listed values (``a..b`` is an inclusive integer range, ``a,b,c`` a list). Points run in worker
processes (deterministic: each point is a pure function of the trace and its settings), and the
rows come back in grid order whatever finished first.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from explorer.metrics import run_metrics
from explorer.model.errors import Problem, SettingsError
from explorer.model.events import Event
from explorer.model.settings import SETTING_SPECS, Settings

#: A sweep of more points than this is refused (each point is a full replay).
MAX_SWEEP_POINTS = 512


def parse_vary(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["k=0..3", "mode=v6,v6-locked"]`` -> ``{"k": [0, 1, 2, 3], "mode": [...]}``, validated."""
    grid: dict[str, list[Any]] = {}
    problems: list[Problem] = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            problems.append(Problem("--vary", 0, 0, "expected key=a..b or key=a,b,c", spec))
            continue
        setting = SETTING_SPECS.get(key)
        if setting is None:
            problems.append(
                Problem("--vary", 0, 0, f"unknown setting {key!r}", spec, ", ".join(SETTING_SPECS))
            )
            continue
        texts: list[str]
        if ".." in raw:
            lo_text, _, hi_text = raw.partition("..")
            try:
                lo, hi = int(lo_text, 0), int(hi_text, 0)
            except ValueError:
                problems.append(Problem("--vary", 0, 0, "a range needs two integers", spec, "a..b"))
                continue
            if hi < lo or hi - lo >= MAX_SWEEP_POINTS:
                problems.append(
                    Problem("--vary", 0, 0, f"range {lo}..{hi} is empty or too long", spec)
                )
                continue
            texts = [str(v) for v in range(lo, hi + 1)]
        else:
            texts = [t.strip() for t in raw.split(",") if t.strip()]
        values = []
        for text in texts:
            try:
                values.append(setting.check(setting.from_text(text)))
            except ValueError as exc:
                problems.append(
                    Problem("--vary", 0, 0, f"{key}={text}: {exc}", spec, setting.expected)
                )
        grid[key] = values
    if problems:
        raise SettingsError(problems)
    return grid


def grid_points(base: Settings, grid: dict[str, list[Any]]) -> list[Settings]:
    """Every combination of the grid's values applied to ``base`` (in grid order)."""
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys)))
    if len(combos) > MAX_SWEEP_POINTS:
        raise SettingsError(
            Problem("--vary", 0, 0, f"{len(combos)} points is over the limit of {MAX_SWEEP_POINTS}")
        )
    return [base.with_overrides(dict(zip(keys, combo, strict=True))) for combo in combos]


def _point(args: tuple[Sequence[Event], Settings]) -> dict[str, Any]:
    return run_metrics(args[0], args[1]).row()


def run_sweep(
    events: Sequence[Event],
    points: Sequence[Settings],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of :meth:`explorer.metrics.RunMetrics.row`, one per point, in the points' order."""
    workers = workers or min(len(points), os.cpu_count() or 1)
    rows: list[dict[str, Any]] = []
    if workers <= 1 or len(points) <= 1:
        for i, s in enumerate(points):
            rows.append(_point((events, s)))
            if progress:
                progress(i + 1, len(points))
        return rows
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, row in enumerate(pool.map(_point, [(events, s) for s in points])):
            rows.append(row)
            if progress:
                progress(i + 1, len(points))
    return rows
