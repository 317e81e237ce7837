"""Sweeps (on Dask distributed) and the design-review metrics: figures that tell the designs
apart."""

import csv
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from explorer.cli.main import main
from explorer.ingest import parse_trace
from explorer.model.errors import SettingsError
from explorer.model.events import Fault, Inject, TdCreate, TdFinalize, VcpuCreate, Zap
from explorer.model.settings import Settings
from explorer.sweeps.metrics import run_metrics
from explorer.sweeps.sweep import (
    EXTRA_COLUMNS,
    MAX_SWEEP_POINTS,
    columns,
    grid_points,
    metric_columns,
    parse_vary,
    point_key,
    run_sweep,
    trace_digest,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"

BOOT = [TdCreate(td=0), VcpuCreate(td=0, vcpu=0), VcpuCreate(td=0, vcpu=1), TdFinalize(td=0)]
# Warm-up: link the upper S-EPT tables once, so the concurrent faults below never race on them
# (that race is real, and makes retries of its own: see test_racing_on_a_table_retries).
WARM = [*BOOT, Fault(vcpu=0, gfn=0x3F000), Fault(vcpu=1, gfn=0x3F001)]
# then two vCPUs touching many cold regions, concurrently
WORK = WARM + [
    Fault(vcpu=i % 2, gfn=0x200 * i, pfn=0x8000 + 0x200 * i, t=i // 2) for i in range(24)
]


def test_parse_vary_ranges_and_lists() -> None:
    grid = parse_vary(["dpamt_gets_per_fault=0..3", "mode=v6,v6-locked"])
    assert grid == {"dpamt_gets_per_fault": [0, 1, 2, 3], "mode": ["v6", "v6-locked"]}
    assert len(grid_points(Settings(), grid)) == 8


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("nope=1,2", "unknown setting"),
        ("mode=v7", "not one of the choices"),
        ("ept_levels", "expected key="),
        ("dpamt_gets_per_fault=5..1", "empty or too long"),
        ("dpamt_gets_per_fault=0..100000", "empty or too long"),
    ],
)
def test_parse_vary_refuses_bad_specs_with_the_reason(spec: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_vary([spec])
    assert reason in str(info.value)


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in metric_columns()}


def _lost_race() -> Any:
    return parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")


def _grid24() -> list[Settings]:
    trace = _lost_race()
    base = Settings().with_overrides(trace.settings)
    vary = ["dpamt_gets_per_fault=0..5", "mode=v6,v6-locked", "allocator=lowest,spread"]
    return grid_points(base, parse_vary(vary))


def test_sweep_rows_come_back_in_grid_order_and_match_single_runs(cluster: Any) -> None:
    # "spread": the new level-1 table of each fault is cold too, so a fault needs 2 gets
    base = Settings(allocator="spread", host_memory_mib=1024)
    points = grid_points(base, parse_vary(["dpamt_gets_per_fault=0,1,5"]))
    rows = run_sweep(WORK, points, client=cluster)
    assert [r["setting.dpamt_gets_per_fault"] for r in rows] == [0, 1, 5]
    single = run_metrics(WORK, points[2]).row()
    assert {k: rows[2][k] for k in single} == single  # same in a worker as in-process
    assert rows[2]["status"] == "ok" and rows[2]["worker"].startswith("tcp://127.0.0.1:")
    assert list(rows[0]) == columns()
    # workers=1: in this process, no cluster (the app's small sweeps), same rows
    serial = run_sweep(WORK, points, workers=1)
    assert [_metrics(r) for r in serial] == [_metrics(r) for r in rows]
    assert serial[0]["worker"] == "local"
    # 0 gets: every cold fault livelocks; 1 get: retries; 5 gets (the kernel default): none
    assert rows[0]["livelocks"] > 0
    assert rows[1]["retries"] > 0 and rows[1]["livelocks"] == 0
    assert rows[2]["retries"] == 0 and rows[2]["livelocks"] == 0


def test_racing_on_a_table_retries() -> None:
    # both vCPUs need the same level-3 and level-2 tables: one freezes the entry, the other retries
    race = [*BOOT, Fault(vcpu=0, gfn=0x0, t=0), Fault(vcpu=1, gfn=0x200, t=0)]
    assert run_metrics(race, Settings()).counters["fault_retries"] >= 1


def test_designs_show_their_costs() -> None:
    # "spread" scatters S-EPT pages over regions, where speculative DPAMT references cost pairs
    by_mode = {
        mode: run_metrics(WORK, Settings(mode=mode, allocator="spread", host_memory_mib=1024))
        for mode in ("v6", "kvm-style-cache", "v5-topup-install", "sleeping-under-lock", "mempool")
    }
    v6 = by_mode["v6"]
    assert v6.violations == 0 and v6.idle_peak <= 2 * 10  # two vCPUs, 10 pages each at most
    # KVM's rule fills to 40: more pages held idle
    assert by_mode["kvm-style-cache"].idle_peak > v6.idle_peak
    # install at top-up: speculative pairs and references for every cached S-EPT page
    assert by_mode["v5-topup-install"].pairs_peak > v6.pairs_peak
    assert v6.speculative_refs_peak == 0
    assert by_mode["v5-topup-install"].speculative_refs_peak >= 2 * 35  # 2 vCPUs x 40 cached
    # sleeping under the MMU lock: every allocation a violation (invariant 6)
    assert by_mode["sleeping-under-lock"].violations > 0
    assert by_mode["mempool"].counters["allocs_under_lock"] > 0


def test_atomic_under_lock_fails_where_the_cache_would_not() -> None:
    trace = [*WARM, Inject(what="alloc_fail", count=1), Fault(vcpu=0, gfn=0x10, pfn=0x9000)]
    atomic = run_metrics(trace, Settings(mode="atomic-under-lock"))
    cached = run_metrics(trace, Settings(mode="v6"))
    assert atomic.counters["fault_retries"] >= 1  # the atomic pair allocation failed under lock
    assert cached.counters["allocs_under_lock"] == 0


def test_metrics_series_cover_every_event() -> None:
    m = run_metrics([*WORK, Zap(td=0, gfn=0)], Settings())
    assert len(m.series["idle_pages"]) == len(WORK) + 1
    assert m.pairs_final == m.series["pairs"][-1]


# ------------------------------------------------------------------ Dask engine
def test_keys_are_deterministic_per_trace_and_settings() -> None:
    a, b = Settings(), Settings(mode="v6-locked")
    d = trace_digest(WORK)
    assert d == trace_digest(list(WORK)) and d != trace_digest(WARM)
    assert point_key(d, a) == point_key(d, Settings()) != point_key(d, b)
    assert point_key(d, a).startswith("point-") and point_key(d, a) != point_key(
        trace_digest(WARM), a
    )


def test_grid_over_the_limit_is_refused_with_the_count() -> None:
    grid = parse_vary(["dpamt_gets_per_fault=0..9", f"seed=0..{MAX_SWEEP_POINTS - 1}"])
    with pytest.raises(SettingsError) as info:
        grid_points(Settings(), grid)
    assert f"{10 * MAX_SWEEP_POINTS} points is over the limit of {MAX_SWEEP_POINTS}" in str(
        info.value
    )
    assert len(grid_points(Settings(), parse_vary(["seed=0..99999"]))) == MAX_SWEEP_POINTS


def test_cluster_sweep_to_parquet_equals_the_serial_results(cluster: Any, tmp_path: Path) -> None:
    trace, points = _lost_race(), _grid24()
    assert len(points) == 24
    out = tmp_path / "s.parquet"
    seen: list[tuple[int, int, float, float]] = []
    rows = run_sweep(
        trace.events, points, client=cluster, out=str(out), progress=lambda *a: seen.append(a)
    )
    serial = [run_metrics(trace.events, s).row() for s in points]
    assert [_metrics(r) for r in rows] == [{k: r[k] for k in metric_columns()} for r in serial]
    df = pd.read_parquet(out)  # no help needed
    assert list(df.columns) == columns() and len(df) == 24 and df["key"].is_unique
    assert set(df["status"]) == {"ok"} and (df["trace_digest"] == trace_digest(trace.events)).all()
    assert (df["seconds"] > 0).all() and set(df["worker"]) <= set(
        cluster.scheduler_info()["workers"]
    )
    by_key = {r["key"]: r for r in df.to_dict("records")}
    for row in rows:
        assert {k: by_key[row["key"]][k] for k in metric_columns()} == _metrics(row)
    assert not (tmp_path / "s.parquet.parts").exists()
    assert seen[-1][:2] == (24, 24) and seen[-1][3] == 0.0 and seen[-1][2] > 0


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_resume_runs_only_the_missing_points(cluster: Any, tmp_path: Path, suffix: str) -> None:
    trace, points = _lost_race(), _grid24()
    out = str(tmp_path / f"s.{suffix}")
    run_sweep(trace.events, points[:12], client=cluster, out=out)
    first = _read(out)
    assert len(first) == 12
    starts: list[int] = []
    rows = run_sweep(
        trace.events,
        points,
        client=cluster,
        out=out,
        progress=lambda done, total, rate, eta: starts.append(done),
    )
    assert starts[0] == 12  # the first half was read back, not rerun
    both = _read(out)
    assert len(both) == 24 and both["key"].is_unique
    assert set(both["key"]) == {point_key(trace_digest(trace.events), s) for s in points}
    # the first half is the rows of the first run, untouched (same seconds, same worker)
    again = both.set_index("key").loc[first["key"], ["seconds", "worker"]]
    assert again["seconds"].tolist() == pytest.approx(first["seconds"].tolist())
    assert again["worker"].tolist() == first["worker"].tolist()
    serial = [run_metrics(trace.events, s).row() for s in points]
    assert [_metrics(r) for r in rows] == [{k: r[k] for k in metric_columns()} for r in serial]


def test_an_interrupted_sweep_continues_where_it_stopped(cluster: Any, tmp_path: Path) -> None:
    trace, points = _lost_race(), _grid24()
    out = str(tmp_path / "s.parquet")

    def stop_after_5(done: int, total: int, rate: float, eta: float) -> None:
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(trace.events, points, client=cluster, out=out, progress=stop_after_5)
    kept = len(_read(out))
    assert 5 <= kept < 24
    ran: list[int] = []
    run_sweep(trace.events, points, client=cluster, out=out, progress=lambda d, *_: ran.append(d))
    assert ran[0] == kept
    df = _read(out)
    assert len(df) == 24 and df["key"].is_unique


def test_a_point_that_raises_is_recorded_not_fatal(cluster: Any, tmp_path: Path) -> None:
    trace = _lost_race()
    # Settings() does not validate: ept_levels=3 makes the engine raise (KeyError)
    points = [Settings(), Settings(ept_levels=3), Settings(mode="v6-locked")]
    out = tmp_path / "e.parquet"
    rows = run_sweep(trace.events, points, client=cluster, out=str(out))
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "KeyError" in rows[1]["error"] and rows[1]["steps"] is None
    assert rows[1]["setting.ept_levels"] == 3
    df = pd.read_parquet(out)
    bad = df[df["status"] == "error"]
    assert len(bad) == 1 and "KeyError" in bad["error"].iloc[0] and pd.isna(bad["steps"].iloc[0])


@pytest.mark.parametrize("via", ["flag", "env"])
def test_an_unreachable_scheduler_exits_2_quickly(
    via: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    free_port: int,
) -> None:
    address = f"tcp://127.0.0.1:{free_port}"
    argv = ["sweep", str(SAMPLES / "lost_race.jsonl"), "--vary", "dpamt_gets_per_fault=0..3"]
    argv += ["--out", str(tmp_path / "x.csv")]
    if via == "flag":
        argv += ["--scheduler", address]
    else:
        monkeypatch.setenv("DPAMT_SCHEDULER", address)
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address}" in err and "refused" in err.lower()


def test_cli_csv_escapes_a_formula_looking_note(
    cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.csv"
    note = '=HYPERLINK("http://evil.example","x")'
    argv = ["sweep", str(SAMPLES / "lost_race.jsonl"), "--vary", "dpamt_gets_per_fault=0..2"]
    argv += ["--note", note, "--scheduler", cluster.scheduler.address]
    assert main([*argv, "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["note"] for r in rows} == {"'" + note}
    assert {r["status"] for r in rows} == {"ok"} and list(rows[0]) == columns()
    assert "3 points (0 with an error)" in capsys.readouterr().err
    # - : CSV on stdout, escaped too
    assert main([*argv, "--out", "-"]) == 0
    printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(printed) == 3 and printed[0]["note"] == "'" + note


def _read(path: str) -> pd.DataFrame:
    if path.endswith(".csv"):
        return pd.read_csv(path)
    return pd.read_parquet(path)


def test_extra_columns_are_documented() -> None:
    assert columns()[-len(EXTRA_COLUMNS) :] == list(EXTRA_COLUMNS)


def test_a_worker_killed_mid_sweep_has_its_points_rerun(tmp_path: Path) -> None:
    """A scheduler and two workers on loopback, started here; one killed after 50 points."""
    import json
    import os
    import signal
    import subprocess
    import sys

    sched_file = tmp_path / "scheduler.json"
    scheduler_cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
    scheduler_cmd += ["--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)]
    worker_opts = ["--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"]
    logs = open(tmp_path / "cluster.log", "w")  # noqa: SIM115
    procs = [
        subprocess.Popen(
            scheduler_cmd,
            stdout=logs,
            stderr=logs,
        )
    ]
    try:
        deadline = time.monotonic() + 30
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distributed.cli.dask_worker", address, *worker_opts],
                    stdout=logs,
                    stderr=logs,
                )
            )
        from distributed import Client

        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=30)
        trace = _lost_race()
        base = Settings().with_overrides(trace.settings)
        vary = ["dpamt_gets_per_fault=0..9", "mode=v6,v6-locked,kvm-style-cache,mempool"]
        points = grid_points(base, parse_vary([*vary, "seed=0..4"]))
        assert len(points) == 200
        victim = procs[1]

        def kill_one(done: int, total: int, rate: float, eta: float) -> None:
            if done >= 50 and victim.poll() is None:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()

        out = tmp_path / "k.parquet"
        rows = run_sweep(trace.events, points, scheduler=address, out=str(out), progress=kill_one)
        assert victim.poll() is not None  # it was killed mid-way
        df = pd.read_parquet(out)
        assert len(df) == 200 and df["key"].is_unique and set(df["status"]) == {"ok"}
        assert df["worker"].nunique() == 2  # both ran points before the kill
        serial = [run_metrics(trace.events, s).row() for s in points]
        assert [_metrics(r) for r in rows] == [{k: r[k] for k in metric_columns()} for r in serial]
        by_key = df.set_index("key")
        for row in rows:
            assert by_key.loc[row["key"], "pairs_peak"] == row["pairs_peak"]
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        logs.close()
