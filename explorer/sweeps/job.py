"""A sweep in a background thread, for a UI: poll its progress, cancel it, keep what finished.

The app's script must not block on a sweep (a rerun every half second draws its progress, and a
Cancel button must be answered), so :class:`SweepJob` runs :func:`explorer.sweeps.sweep.run_sweep` --
the same function, the same Dask code path and rows as ``python -m explorer sweep`` -- in a
thread of its own, through run_sweep's ``progress`` and ``cancel`` hooks. Nothing here imports
Streamlit: the runner is tested on its own (tests/test_sweepjob.py) and the page only draws what
:meth:`SweepJob.poll` says.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from explorer.model.events import Event
from explorer.model.settings import Settings
from explorer.sweeps.sweep import SchedulerUnreachable, run_sweep

#: Environment variable naming the Dask scheduler (as for the CLI's ``--scheduler``).
SCHEDULER_ENV = "DPAMT_SCHEDULER"
#: With no scheduler, a sweep of at most this many event replays (points x events) runs in
#: this process (see :func:`local_workers`).
IN_PROCESS_MAX_REPLAYS = 300_000

State = Literal["running", "done", "cancelled", "failed"]

_ADDRESS = re.compile(
    r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})"
)


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a scheduler address of the form ``tcp://HOST:PORT`` (None if it is).

    Checked before anything connects, so a typo gets a message about its shape at once instead
    of a connection error (or a wait) that hides it.
    """
    m = _ADDRESS.fullmatch(address.strip())
    if m is None:
        return (
            f"{address!r} is not a scheduler address: expected tcp://HOST:PORT "
            "(for example tcp://10.0.0.5:8786), or nothing for a local cluster"
        )
    if not 1 <= int(m["port"]) <= 65535:
        return f"{address!r}: the port must be 1 to 65535"
    return None


def local_workers(points: int, events: int, scheduler: str | None) -> int | None:
    """The ``workers`` for a sweep of ``points`` points over ``events`` events.

    With a scheduler: None (its workers are the cluster's). Without one, a small sweep runs in
    this process (``1``): a LocalCluster takes one to a few seconds to start its worker processes
    and ship them the trace, while the app's default sweep (about 9 points for each of three
    modes, a few thousand events) replays in under a second here. A larger sweep (more than
    :data:`IN_PROCESS_MAX_REPLAYS` event replays) starts a LocalCluster of one worker process
    per CPU (None), where that start-up is paid back.
    """
    if scheduler:
        return None
    return 1 if points * max(events, 100) <= IN_PROCESS_MAX_REPLAYS else None


@dataclass(frozen=True)
class SweepStatus:
    """One look at a :class:`SweepJob` (a copy: it does not change under the reader)."""

    state: State
    done: int  #: points done (rows so far)
    total: int  #: points in the sweep (distinct ones)
    rate: float  #: points per second since the first submission
    eta: float  #: seconds left at that rate (``inf`` before the first point)
    error: str | None  #: why the sweep failed (state "failed")
    elapsed: float  #: seconds since the job started

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 1.0

    def describe(self) -> str:
        """``"12 of 27 points, 8.1 points/s, ETA 2 s"``: what a progress bar says."""
        eta = "ETA -" if not math.isfinite(self.eta) else f"ETA {self.eta:,.0f} s"
        return f"{self.done:,} of {self.total:,} points, {self.rate:,.1f} points/s, {eta}"


class SweepJob:
    """A sweep of ``points`` over ``events`` running in a background thread from construction.

    ``scheduler`` ("tcp://HOST:PORT") or None for a LocalCluster of ``workers`` processes
    (``workers=1``: in this process), exactly as :func:`explorer.sweeps.sweep.run_sweep` takes them.
    :meth:`poll` may be called from any thread; :meth:`cancel` stops submitting points and
    cancels the pending ones, and the rows already finished are kept (:meth:`rows`). A
    scheduler that does not answer fails the job within about ten seconds
    (:func:`explorer.sweeps.sweep.probe_scheduler`) with its reason in :attr:`SweepStatus.error`.
    """

    def __init__(
        self,
        events: Sequence[Event],
        points: Sequence[Settings],
        scheduler: str | None = None,
        workers: int | None = None,
        *,
        trace: str = "",
        note: str = "",
    ) -> None:
        self.scheduler = scheduler or None
        self.workers = workers
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._state: State = "running"
        self._done = 0
        self._total = len(points)
        self._rate = 0.0
        self._eta = math.inf
        self._error: str | None = None
        self._rows: list[dict[str, Any]] = []
        self._start = time.monotonic()
        self._end: float | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(tuple(events), tuple(points), trace, note),
            name="dpamt-sweep",
            daemon=True,  # a sweep left running never holds the process open at exit
        )
        self._thread.start()

    # -- the worker thread
    def _progress(self, done: int, total: int, rate: float, eta: float) -> None:
        with self._lock:
            self._done, self._total, self._rate, self._eta = done, total, rate, eta

    def _run(
        self, events: tuple[Event, ...], points: tuple[Settings, ...], trace: str, note: str
    ) -> None:
        rows: list[dict[str, Any]] = []
        error: str | None = None
        try:
            rows = run_sweep(
                events,
                points,
                scheduler=self.scheduler,
                workers=self.workers,
                progress=self._progress,
                cancel=self._cancel.is_set,
                trace=trace,
                note=note,
            )
        except SchedulerUnreachable as exc:
            error = str(exc)
        except Exception as exc:  # the job reports it; the app's script must not die of it
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._rows = rows
            self._error = error
            if error is not None:
                self._state = "failed"
            elif self._cancel.is_set() and self._done < self._total:
                self._state = "cancelled"
            else:
                self._state, self._eta = "done", 0.0
            self._end = time.monotonic()

    # -- any thread
    def poll(self) -> SweepStatus:
        """Points done, total, points/s, ETA, state and error, as of now."""
        with self._lock:
            end = self._end if self._end is not None else time.monotonic()
            return SweepStatus(
                state=self._state,
                done=self._done,
                total=self._total,
                rate=self._rate,
                eta=self._eta,
                error=self._error,
                elapsed=end - self._start,
            )

    def cancel(self) -> None:
        """Stop: nothing more is submitted, pending points are cancelled, finished rows stay."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job to finish (True) or ``timeout`` seconds to pass (False)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def rows(self) -> list[dict[str, Any]]:
        """The rows, in the points' order, once finished (a cancelled job: those done); else []."""
        with self._lock:
            return list(self._rows)
