"""The app's background sweep runner: same rows as run_sweep, progress, cancel, bad schedulers."""

import time
from pathlib import Path
from typing import Any

import pytest

from explorer.ingest import parse_trace
from explorer.model.settings import Settings
from explorer.sweeps.job import SweepJob, address_problem, local_workers
from explorer.sweeps.sweep import grid_points, metric_columns, run_sweep

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _trace(name: str) -> Any:
    return parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")


def _points(trace: Any, hi: int, modes: tuple[str, ...] = ("v6", "v6-locked")) -> list[Settings]:
    base = Settings().with_overrides(trace.settings)
    return [
        p
        for m in modes
        for p in grid_points(
            base.with_overrides({"mode": m}), {"dpamt_gets_per_fault": list(range(hi + 1))}
        )
    ]


def _same(row: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on where a point ran (not seconds, not worker)."""
    return {k: row[k] for k in [*metric_columns(), "key", "status", "setting.mode"]}


def test_a_job_on_its_own_local_cluster_gives_run_sweeps_rows() -> None:
    trace = _trace("lost_race")
    points = _points(trace, 4)
    job = SweepJob(trace.events, points, scheduler=None, workers=2)
    assert job.wait(120), job.poll()
    status = job.poll()
    assert status.state == "done" and status.error is None
    assert status.done == status.total == len(points) and status.eta == 0.0
    assert status.fraction == 1.0 and status.describe().startswith(
        f"{len(points)} of {len(points)}"
    )
    rows = job.rows()
    assert {r["worker"] for r in rows} != {"local"}  # on the cluster's workers
    assert [_same(r) for r in rows] == [
        _same(r) for r in run_sweep(trace.events, points, workers=1)
    ]


def test_a_job_on_a_scheduler_reports_progress_and_matches(cluster: Any) -> None:
    trace = _trace("lost_race")
    points = _points(trace, 3)
    seen: list[int] = []
    job = SweepJob(trace.events, points, scheduler=cluster.scheduler.address)
    deadline = time.monotonic() + 60
    while not job.poll().finished and time.monotonic() < deadline:
        seen.append(job.poll().done)
        time.sleep(0.01)
    assert job.wait(5)
    assert job.poll().state == "done", job.poll()
    assert seen == sorted(seen)  # progress only goes forward
    rows = job.rows()
    assert [_same(r) for r in rows] == [
        _same(r) for r in run_sweep(trace.events, points, workers=1)
    ]


@pytest.mark.parametrize("where", ["cluster", "in-process"])
def test_cancel_midway_keeps_the_rows_done_and_says_cancelled(cluster: Any, where: str) -> None:
    trace = _trace("workload_two_tds")  # a few thousand events: tens of ms a point
    points = _points(trace, 39, ("v6", "v6-locked", "kvm-style-cache"))  # 120 points
    if where == "cluster":
        job = SweepJob(trace.events, points, scheduler=cluster.scheduler.address)
    else:
        job = SweepJob(trace.events, points, scheduler=None, workers=1)
    deadline = time.monotonic() + 60
    while job.poll().done < 3 and not job.poll().finished and time.monotonic() < deadline:
        time.sleep(0.005)
    job.cancel()
    assert job.cancel_requested
    assert job.wait(30)
    status = job.poll()
    rows = job.rows()
    assert status.state == "cancelled" and status.error is None, status
    assert 3 <= len(rows) < len(points) and status.done == len(rows)
    # the rows kept are whole rows of their points, in the points' order, as run_sweep's
    index = {k: n for n, k in enumerate(_keys(trace, points))}
    order = [r["key"] for r in rows]
    assert order == sorted(order, key=index.__getitem__)
    assert all(r["status"] == "ok" for r in rows)
    again = run_sweep(trace.events, [points[index[k]] for k in order[:2]], workers=1)
    assert [_same(r) for r in rows[:2]] == [_same(r) for r in again]


def _keys(trace: Any, points: list[Settings]) -> list[str]:
    from explorer.sweeps.sweep import point_key, trace_digest

    digest = trace_digest(trace.events)
    return [point_key(digest, p) for p in points]


def test_cluster_is_free_again_after_a_cancel(cluster: Any) -> None:
    """Nothing of a cancelled sweep stays queued: the next sweep on the scheduler runs at once."""
    trace = _trace("workload_two_tds")
    points = _points(trace, 39, ("v6", "v6-locked", "kvm-style-cache"))
    job = SweepJob(trace.events, points, scheduler=cluster.scheduler.address)
    while job.poll().done < 1 and not job.poll().finished:
        time.sleep(0.005)
    job.cancel()
    assert job.wait(30)
    deadline = time.monotonic() + 10
    while cluster.processing() and any(cluster.processing().values()):
        assert time.monotonic() < deadline, cluster.processing()
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("free-port", "refused"),
        ("tcp//nohost", "not an address of the form tcp://HOST:PORT"),
    ],
)
def test_a_bad_scheduler_fails_the_job_quickly_with_the_reason(
    address: str, reason: str, free_port: int
) -> None:
    if address == "free-port":
        address = f"tcp://127.0.0.1:{free_port}"
    trace = _trace("lost_race")
    start = time.monotonic()
    job = SweepJob(trace.events, _points(trace, 2), scheduler=address)
    assert job.wait(10)
    assert time.monotonic() - start < 10
    status = job.poll()
    assert status.state == "failed" and job.rows() == []
    assert reason in str(status.error).lower() or reason in str(status.error), status.error
    assert f"cannot reach the Dask scheduler at {address}" in str(status.error)


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("tcp://10.0.0.5:8786", True),
        ("tcp://scheduler.example.org:8786", True),
        ("tcp://[::1]:8786", True),
        (" tcp://localhost:8786 ", True),
        ("localhost:8786", False),
        ("tcp://host", False),
        ("tcp://host:0", False),
        ("tcp://host:99999", False),
        ("http://host:8786", False),
        ("tcp://ho st:8786", False),
    ],
)
def test_address_shape(address: str, ok: bool) -> None:
    problem = address_problem(address)
    assert (problem is None) == ok, problem
    if not ok:
        assert "tcp://" in problem  # type: ignore[operator]


def test_small_local_sweeps_run_in_process() -> None:
    assert local_workers(27, 3227, None) == 1  # the page's default sweep of a large sample
    assert local_workers(3000, 3227, None) is None  # a LocalCluster pays for itself
    assert local_workers(27, 10, "tcp://h:1") is None  # the cluster's workers
