"""Explorations as Dask tasks (issue 19): one search per (trace, settings), rows like the CLI's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from explorer.interleavings.grid import run_exploration, run_grid
from explorer.model.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"


def _trace(name: str) -> tuple[str, bytes]:
    return f"{name}.jsonl", (SAMPLES / f"{name}.jsonl").read_bytes()


def test_one_search_row_matches_the_command() -> None:
    name, data = _trace("lost_race")
    row = run_exploration(data, name, {"mode": "v6-no-recheck"}, 100_000, reduction=False)
    assert row["status"] == "done" and row["complete"] and not row["ok"]
    # 620 states of the full search: the fault path checks mmu_invalidate_retry_gfn_unsafe()
    # before and after faulting the page in (issue 30), two more steps where the other CPU can
    # run; 660 counted 40 states twice, whose frames listed their locals in two orders (the
    # order f_locals was first read in: tests/test_explore_keys.py)
    assert row["states"] == 620 and row["end_states"] == 4 and row["findings"] == "WARN_PAMT_ADD"
    assert row["reduction"] is False
    # the default, reduced search: the same end states and finding in fewer states
    reduced = run_exploration(data, name, {"mode": "v6-no-recheck"}, 100_000)
    assert reduced["reduction"] is True and reduced["status"] == "done"
    assert reduced["end_states"] == 4 and reduced["findings"] == "WARN_PAMT_ADD"
    assert reduced["states"] < row["states"]
    bad = run_exploration(data, name, {"mode": "v7"}, 100)
    assert bad["status"] == "error" and "mode" in bad["error"]


def test_a_grid_on_a_local_cluster_equals_one_search_at_a_time(tmp_path: Path) -> None:
    traces = [_trace("lost_race"), _trace("put_vs_get")]
    modes = [Settings(mode=m) for m in ("v6", "v6-locked")]
    grid = [(n, d, modes) for n, d in traces]
    on_cluster = run_grid(grid, max_states=100_000, workers=2)
    one_by_one = run_grid(grid, max_states=100_000, workers=1)
    keep = ["trace", "mode", "status", "states", "end_states", "schedules", "findings"]
    assert [{k: r[k] for k in keep} for r in on_cluster] == [
        {k: r[k] for k in keep} for r in one_by_one
    ]
    assert {r["worker"] for r in on_cluster} != {"local"}
    assert [(r["trace"], r["mode"]) for r in on_cluster] == [
        (n, m) for n, _ in traces for m in ("v6", "v6-locked")
    ]


def _explore_grid(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m explorer explore-grid lost_race.jsonl ARGS`` in a child process."""
    cmd = [sys.executable, "-m", "explorer", "explore-grid", str(SAMPLES / "lost_race.jsonl")]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=timeout,
    )


def test_the_command_writes_parquet_and_says_what_it_found(tmp_path: Path) -> None:
    out = tmp_path / "grid.parquet"
    p = _explore_grid(
        "--vary", "mode=v6,v6-no-recheck", "--workers", "1", "--out", str(out), timeout=300
    )
    assert p.returncode == 1, p.stderr  # a finding
    frame = pd.read_parquet(out)
    assert list(frame["mode"]) == ["v6", "v6-no-recheck"]
    assert list(frame["findings"].fillna("")) == ["", "WARN_PAMT_ADD"]
    assert "WARN_PAMT_ADD" in p.stderr
    p = _explore_grid(
        "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "x.csv"), timeout=60
    )
    assert p.returncode == 2 and "127.0.0.1:9" in p.stderr
