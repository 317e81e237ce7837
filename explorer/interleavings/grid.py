"""Every interleaving of many scenarios: one Dask task per (trace, settings), e.g. scenario x mode.

A design review asks for the race catalogue of every mode over a dozen scenarios. Each search is
independent and can take seconds (three CPUs under ``v6-locked``: 8 s), so they run as tasks on
Dask distributed, on the same cluster machinery as sweeps
(:func:`explorer.sweeps.sweep.dask_client`: a LocalCluster by default, or ``--scheduler
tcp://HOST:PORT``). A task runs ``python -m explorer explore`` in a child process (the search
reads generator frames, which only the kernel's generators in Python have: the child is started
on the search's engine, ``DPAMT_PURE=search``), on the trace's bytes, which reach each worker
once (scattered), and returns one row: the search's figures, the findings' codes, the seconds
and the worker. Results as Parquet or CSV, one row per task.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from explorer.cli.common import workers_problem
from explorer.interleavings.child import search_env
from explorer.model.settings import Settings
from explorer.sweeps.sweep import dask_client

ROOT = Path(__file__).resolve().parents[2]
#: The columns of a result row, in order (the settings' own columns follow as ``setting.*``).
COLUMNS = (
    "trace",
    "trace_digest",
    "mode",
    "status",
    "ok",
    "complete",
    "groups",
    "reduction",
    "states",
    "end_states",
    "schedules",
    "findings",
    "seconds",
    "worker",
    "error",
)
#: At most this many tasks in one grid (each is a search of up to --max-states states).
MAX_TASKS = 10_000

ProgressFn = Callable[[int, int], None]


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def run_exploration(
    data: bytes, source: str, settings: dict[str, Any], max_states: int, reduction: bool = True
) -> dict[str, Any]:
    """One search, in a child process on the search's engine; a row (never raises: a failed
    search is a row with ``status`` "error" and the reason). ``reduction`` False: the full
    search (``--no-reduction``); the row's ``reduction`` says which its counts are of."""
    row = _error_row(source, data, settings, "", _worker())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpamt-explore-") as tmp:
        path = os.path.join(tmp, os.path.basename(source) or "trace.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        cmd = [sys.executable, "-m", "explorer", "explore", path, "--json", "--compact"]
        cmd += ["--max-states", str(max_states)]
        if not reduction:
            cmd.append("--no-reduction")
        for k, v in settings.items():
            cmd += ["--set", f"{k}={v}"]
        env = search_env()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    if p.returncode not in (0, 1, 3) or not p.stdout.strip():
        row["error"] = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        return row
    r = json.loads(p.stdout)
    row.update(
        status="done" if r["complete"] else "incomplete",
        ok=bool(r["ok"]),
        complete=bool(r["complete"]),
        groups=int(r["groups"]),
        reduction=bool(r.get("reduction", False)),
        states=int(r["states"]),
        end_states=int(r["end_states"]),
        schedules=str(r["schedules"]),  # (exceeds 64 bits: kept as text)
        findings=",".join(v["code"] for v in r["violations"]),
    )
    return row


def _error_row(
    source: str, data: bytes, settings: dict[str, Any], error: str, worker: str | None
) -> dict[str, Any]:
    """A row of the search of ``source`` under ``settings`` that has not (or not yet) run:
    status "error", the reason in ``error``; a search that completes overwrites it."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        trace=source,
        trace_digest=digest(data),
        mode=settings.get("mode", "v6"),
        status="error",
        error=error,
        worker=worker,
    )
    for k, v in settings.items():
        row[f"setting.{k}"] = v
    return row


def _worker() -> str:
    with contextlib.suppress(Exception):
        distributed = importlib.import_module("distributed")
        return str(distributed.get_worker().address)
    return "local"


def _run_task(
    blob: Any, source: str, settings: dict[str, Any], max_states: int, reduction: bool
) -> dict[str, Any]:
    return run_exploration(blob, source, settings, max_states, reduction)


def run_grid(
    traces: Sequence[tuple[str, bytes, Sequence[Settings]]],
    *,
    max_states: int,
    reduction: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Every search of ``traces`` (each a name, its bytes and its grid of settings: a trace's own
    header settings differ from another's); rows in that order. ``workers`` 1 runs the searches
    one after the other in this process's children (no cluster); ``workers`` outside 1 to
    :func:`explorer.cli.common.max_workers` is a ValueError before anything runs;
    ``reduction`` False runs the full searches."""
    problem = workers_problem(workers)
    if problem is not None:
        raise ValueError(problem)
    tasks = [(name, data, s.to_dict()) for name, data, points in traces for s in points]
    if len(tasks) > MAX_TASKS:
        raise ValueError(f"{len(tasks):,} searches, over the limit of {MAX_TASKS:,} (MAX_TASKS)")
    rows: list[dict[str, Any] | None] = [None] * len(tasks)
    done = 0
    if workers == 1 and not scheduler:
        for i, (name, data, s) in enumerate(tasks):
            rows[i] = run_exploration(data, name, s, max_states, reduction)
            done += 1
            if progress is not None:
                progress(done, len(tasks))
        return [r for r in rows if r is not None]
    distributed = importlib.import_module("distributed")
    with dask_client(scheduler, workers) as client:
        blobs = {name: client.scatter(data, broadcast=True, hash=False) for name, data, _ in traces}
        futures = {
            client.submit(_run_task, blobs[name], name, s, max_states, reduction, pure=False): i
            for i, (name, _, s) in enumerate(tasks)
        }
        for future in distributed.as_completed(list(futures), loop=client.loop):
            i = futures[future]
            try:
                rows[i] = future.result()
            except Exception as exc:  # a worker lost for good: the row says so
                name, data, s = tasks[i]
                rows[i] = _error_row(name, data, s, f"{type(exc).__name__}: {exc}", None)
            done += 1
            if progress is not None:
                progress(done, len(tasks))
    return [r for r in rows if r is not None]


def write_rows(rows: Sequence[dict[str, Any]], out: BinaryIO | None, parquet: bool) -> None:
    """Rows as Parquet (``parquet``) or CSV to the binary file ``out`` (None: CSV on standard
    output). The command opens ``out`` (``atomic_output``: a complete file or none)."""
    import pandas as pd

    from explorer.csvsafe import escape_frame

    frame = pd.DataFrame(list(rows))
    if out is None:
        escape_frame(frame).to_csv(sys.stdout, index=False)
    elif parquet:
        frame.to_parquet(out, index=False)
    else:
        out.write(escape_frame(frame).to_csv(index=False).encode("utf-8"))
