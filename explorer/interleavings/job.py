"""What the app's Interleavings page needs, without Streamlit: a background exploration and the
shapes of its result (tables, pinned traces, where to open them).

**Why a child process.** The search (:mod:`explorer.interleavings.search`) reads generator
frames, which only the kernel's generators in Python have; the app's own process runs the
compiled engine. So the page runs ``python -m explorer explore TRACE --json --progress`` in a
child, already on the search's engine (``DPAMT_PURE=search``,
:func:`explorer.interleavings.child.search_env`): the CLI then runs the search itself instead of
re-running itself in a grandchild, so the process the page holds is the one doing the work, and
stopping it stops the search. A child also keeps a long search off the server's threads and lets
the user stop it at any time.


**Why a reader thread.** The child prints ``progress states=N ...`` on stderr every 1,000
states; a thread reads those lines as they come (a full stderr pipe would stall the child) and
keeps the count, so a Streamlit fragment can poll it every half second without blocking. The
JSON result goes to a file, not a pipe: it is read once the child has exited.

The module holds no Streamlit object: a job is plain data behind a lock, safe to keep in
``st.session_state`` and to poll from any script run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any, Literal

from explorer.cli.common import usable_cpus
from explorer.ingest import Trace
from explorer.ingest.write import dump_trace
from explorer.interleavings import child
from explorer.interleavings.search import pin
from explorer.model.events import Event
from explorer.model.settings import Settings
from explorer.replay.timeline import replay

#: The repository root: the child runs ``-m explorer`` from here, so it finds this package.
ROOT = Path(__file__).resolve().parents[2]
#: Default and bounds of the page's state limit (``--max-states``).
DEFAULT_MAX_STATES = 200_000
MIN_MAX_STATES = 1_000
MAX_MAX_STATES = 1_000_000
#: How many lines of the child's stderr (other than progress) a failure report keeps.
STDERR_LINES = 40
#: The exit statuses after which stdout holds the JSON result: 0 clean, 1 findings, 3 limit.
RESULT_STATUSES = (0, 1, 3)
#: The exit status of an invalid trace, which includes an event impossible where some schedule
#: brings it: then the child still prints its result (see :meth:`ExploreJob._finish`)
IMPOSSIBLE_STATUS = 2
#: The largest schedule count a table column holds as a number (int64): past it, as text.
INT64_MAX = 2**63 - 1

JobState = Literal["queued", "running", "done", "failed", "stopped"]


def _max_searches() -> int:
    """How many searches one server runs at once: ``DPAMT_MAX_SEARCHES`` if set (a positive
    integer), else one per CPU this process may use."""
    text = os.environ.get("DPAMT_MAX_SEARCHES", "")
    if text.isascii() and text.isdigit() and int(text) > 0:
        return int(text)
    return usable_cpus()


#: Searches running at once in this process, at most :func:`_max_searches`. A search is a child
#: process on one core that holds about 3.8 KB a state (eight vCPUs; 200,000 states, the page's
#: default limit, are about 760 MB), and a class pressing Explore together started one each:
#: thirty children on two cores, several GB, every search slower than one alone. The others
#: wait their turn (``queued``), in the order they asked, and can be stopped while they wait.
MAX_SEARCHES = _max_searches()
_SLOTS = threading.Semaphore(MAX_SEARCHES)
_waiting_lock = threading.Lock()
_waiting: list[object] = []  # the queued jobs, first come first


def searches_waiting(job: object) -> int:
    """How many queued searches asked before ``job`` (0 if it is not queued)."""
    with _waiting_lock:
        return _waiting.index(job) if job in _waiting else 0


@dataclass(frozen=True)
class JobStatus:
    """One look at a job: ``state``, the states searched so far, and either the parsed JSON
    result (``done``) or a message (``failed``: the child's stderr; ``stopped``)."""

    state: JobState
    states: int
    result: dict[str, Any] | None = None
    message: str = ""


class ExploreJob:
    """``python -m explorer explore`` on ``events`` and ``settings`` in a child process, started
    at construction if one of the server's search slots is free (:data:`MAX_SEARCHES`), else
    ``queued`` until one is (the partial-order reduction unless ``reduction`` is False).
    :meth:`poll` says how it goes; :meth:`stop` ends it, or its wait. Thread-safe: the
    reader thread and any number of script runs share it through one lock."""

    def __init__(
        self,
        events: Sequence[Event],
        settings: Settings,
        max_states: int = DEFAULT_MAX_STATES,
        *,
        title: str = "",
        reduction: bool = True,
    ) -> None:
        if max_states < 1:
            raise ValueError(f"max_states must be at least 1, got {max_states}")
        self.max_states = max_states
        #: False: the full search (``--no-reduction``): exact state and schedule counts
        self.reduction = reduction
        self._lock = threading.Lock()
        self._states = 0
        self._state: JobState = "running"
        self._result: dict[str, Any] | None = None
        self._message = ""
        self._stop_requested = False
        self._stop_event = threading.Event()  # (wakes a queued job's wait at once)
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._dir = Path(tempfile.mkdtemp(prefix="dpamt-explore-"))
        self._out_path = self._dir / "result.json"
        # the child is started by the reader thread, which lives as long as the child: the
        # child dies with the thread that started it (explorer.interleavings.child), and a
        # script run of the app is a thread that ends long before the search
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._reader = threading.Thread(
            target=self._run, args=(events, settings, title), name="explore-reader", daemon=True
        )
        self._reader.start()
        self._started.wait()
        if self._start_error is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise self._start_error

    def _run(self, events: Sequence[Event], settings: Settings, title: str) -> None:
        if not self._take_slot():
            return
        try:
            with self._lock:
                stop = self._stop_requested
                if stop:  # (stopped as the slot came: nothing starts)
                    self._state = "stopped"
                    self._message = "stopped before it started: nothing was searched"
            if stop:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._started.set()
                return
            try:
                self._proc = self._start(events, settings, title)
            except BaseException as exc:
                if self._started.is_set():  # (queued: the constructor has returned)
                    with self._lock:
                        self._state = "failed"
                        self._message = f"the search could not start: {exc}"
                    shutil.rmtree(self._dir, ignore_errors=True)
                    return
                self._start_error = exc  # (handed to the constructor, which raises it)
                self._started.set()
                return
            with self._lock:
                self._state = "running"
            self._started.set()
            self._read()
        finally:
            _SLOTS.release()

    def _take_slot(self) -> bool:
        """Wait for one of the server's search slots (:data:`MAX_SEARCHES`): at once if one
        is free, else ``queued`` (the constructor returns; the page shows the wait) until one
        frees, in the order the searches asked. False: stopped while it waited."""
        with _waiting_lock:
            free = not _waiting and _SLOTS.acquire(blocking=False)
            if not free:
                _waiting.append(self)
        if free:
            return True
        with self._lock:
            self._state = "queued"
        self._started.set()
        try:
            while True:
                with self._lock:
                    stop = self._stop_requested
                if stop:
                    with self._lock:
                        self._state = "stopped"
                        self._message = "stopped before it started: nothing was searched"
                    shutil.rmtree(self._dir, ignore_errors=True)
                    return False
                with _waiting_lock:
                    first = _waiting[0] is self
                if first and _SLOTS.acquire(timeout=0.2):
                    return True
                if not first:
                    self._stop_event.wait(0.2)
        finally:
            with _waiting_lock:
                _waiting.remove(self)

    def _start(self, events: Sequence[Event], settings: Settings, title: str) -> Popen[str]:
        """Write the trace and start the child (its stdout to a file, its stderr to a pipe)."""
        trace_path = self._dir / "trace.jsonl"
        # the settings go into the trace's header: the child resolves exactly these (no --set)
        trace_path.write_text(
            dump_trace(events, title=title, settings=settings.to_dict()), encoding="utf-8"
        )
        argv = [
            sys.executable,
            "-m",
            "explorer",
            "explore",
            str(trace_path),
            "--json",
            "--progress",
            "--max-states",
            str(self.max_states),
        ]
        if not self.reduction:
            argv.append("--no-reduction")
        env = child.search_env()
        with open(self._out_path, "wb") as out:
            return child.popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
            )

    # ------------------------------------------------------------------ the reader thread
    def _read(self) -> None:
        """Count progress lines until the child closes stderr; then settle the outcome."""
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            states = parse_progress(line)
            with self._lock:
                if states is not None:
                    self._states = max(self._states, states)
                elif line.strip():
                    self._stderr.append(line.rstrip("\n"))
        code = self._proc.wait()
        self._finish(code)

    def _finish(self, code: int) -> None:
        try:
            text = self._out_path.read_text(encoding="utf-8")
        except OSError:
            text = ""
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        with self._lock:
            if self._stop_requested:
                # the child answers the stop signal with what it covered (exit 3, its JSON):
                # kept, for the outcomes it had reached; a child killed before that left none
                self._state = "stopped"
                self._message = f"stopped after {self._states:,} states: nothing is claimed"
                try:
                    result = json.loads(text) if code in RESULT_STATUSES else None
                except ValueError:
                    result = None
                if isinstance(result, dict):
                    self._result = result
                return
            if code == IMPOSSIBLE_STATUS and text.strip():
                # an event impossible where some schedule brings it: the child still printed
                # its result (the outcomes of the other schedules, the event's line and the
                # schedule reaching it); a usage error or an invalid file prints none
                try:
                    result = json.loads(text)
                except ValueError:
                    result = None
                if isinstance(result, dict) and "impossible" in result:
                    self._state = "done"
                    self._result = result
                    self._states = max(self._states, int(result.get("states", 0)))
                    return
            if code in RESULT_STATUSES:
                try:
                    result = json.loads(text)
                except ValueError as exc:
                    self._state = "failed"
                    self._message = f"the result was not JSON ({exc}); exit status {code}"
                    return
                if isinstance(result, dict):
                    self._state = "done"
                    self._result = result
                    self._states = max(self._states, int(result.get("states", 0)))
                    return
            self._state = "failed"
            detail = "\n".join(self._stderr) or "(no message)"
            self._message = f"exit status {code}\n{detail}"

    # ------------------------------------------------------------------ the page's side
    def poll(self) -> JobStatus:
        """How the job stands now (never blocks on the child)."""
        with self._lock:
            state, message = self._state, self._message
            status = JobStatus(state, self._states, self._result, message)
        if state == "queued":
            ahead = searches_waiting(self)
            status = JobStatus(
                state,
                0,
                None,
                f"waiting for a free search: this server runs {MAX_SEARCHES} at once"
                + (f", {ahead} more asked before this one" if ahead else ""),
            )
        return status

    def stop(self) -> None:
        """End the search: terminate the child, which answers with what it covered (the
        outcomes it had reached, no claim about the others) unless it has not done so within
        5 s (then it is killed). The reader thread then reports ``stopped``."""
        with self._lock:
            if self._state not in ("running", "queued"):
                return
            self._stop_requested = True
            queued = self._state == "queued"
        self._stop_event.set()
        if queued:  # (its thread ends the wait and says so; no child was started)
            self._reader.join(5)
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the job has settled (or ``timeout`` seconds): for tests and scripts."""
        self._reader.join(timeout)
        return self.poll()


def parse_progress(line: str) -> int | None:
    """The state count of a ``progress states=N ...`` line; None for any other line."""
    head, _, rest = line.strip().partition(" ")
    if head != "progress" or not rest.startswith("states="):
        return None
    value = rest[len("states=") :].split(" ", 1)[0]
    return int(value) if value.isdigit() else None


# ---------------------------------------------------------------------- result shapes
def _regions_text(regions: dict[str, Any]) -> str:
    """Each region's refcount, and whether it has a PAMT pair: ``r64: 2, pair``."""
    parts = []
    for r in sorted(regions, key=int):
        info = regions[r]
        pair = ", pair" if info.get("pair") else ""
        parts.append(f"r{r}: {info.get('refcount', 0)}{pair}")
    return "; ".join(parts)


def outcome_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per distinct outcome: how many schedules reach it and what it leaves (the
    PAMT operations, the pages idle in DPAMT caches, each region's refcount), so outcomes can
    be told apart at a glance. Schedule counts stay numbers (sortable) unless one overflows a
    table's 64-bit column, then all are text. Of a reduced search the column is
    ``schedules searched`` (one per class of orders of independent turns), else ``schedules``."""
    outcomes = result.get("outcomes", [])
    column = "schedules searched" if result.get("reduction") else "schedules"
    big = any(int(o["schedules"]) > INT64_MAX for o in outcomes)
    rows = []
    for n, o in enumerate(outcomes, 1):
        count = f"{o['schedules']:,}" if big else int(o["schedules"])
        rows.append({"outcome": n, column: count, **_outcome_row(o)})
    return rows


def reached_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of :func:`outcome_rows` for what a stopped search had reached
    (``result["reached"]``): no schedule counts (the search did not finish counting them) and
    no kernel paths (not gathered for a search that did not finish)."""
    rows = []
    for n, o in enumerate(result.get("reached", []), 1):
        row = _outcome_row(o)
        del row["kernel paths"]
        rows.append({"reached": n, **row})
    return rows


def _outcome_row(o: dict[str, Any]) -> dict[str, Any]:
    counters = o.get("counters", {})
    return {
        "lost races": int(o.get("lost_races", 0)),
        "PAMT.ADD": int(counters.get("pamt_add", 0)),
        "PAMT.ADD failed": int(counters.get("pamt_add_failed", 0)),
        "PAMT.REMOVE": int(counters.get("pamt_remove", 0)),
        "pages in DPAMT caches": sum(int(v) for v in o.get("pamt_cache", {}).values()),
        "regions (refcount)": _regions_text(o.get("regions", {})),
        # the engine's codes are "kind:CODE"; every kind is a problem, the code says which
        "findings": ", ".join(d.split(":", 1)[-1] for d in o.get("diagnostics", [])),
        "end states": int(o.get("variants", 1)),
        "kernel paths": paths_text(o.get("paths", [])),
        "turns": len(o.get("example", [])),
    }


def paths_text(paths: Sequence[dict[str, list[str]]]) -> str:
    """An outcome's kernel paths on one line: ``vcpu0: pamt_get.slow > pamt_get.add | ...``,
    paths separated by `` || ``."""
    return " || ".join(
        " | ".join(f"{cpu}: {' > '.join(seq) or '-'}" for cpu, seq in p.items()) for p in paths
    )


def explore_step(v: dict[str, Any]) -> int:
    """The step at which a finding fires in the pinned trace's replay, the step Explore opens
    at: the search's step, after the one ``schedule`` step the pinned trace has at the head of
    each concurrent group up to the finding's (see :func:`explorer.interleavings.search.pin`)."""
    return int(v["step"]) + len(v.get("orders", []))


def violation_rows(
    result: dict[str, Any], link: Callable[[dict[str, Any]], str | None] | None = None
) -> list[dict[str, Any]]:
    """One table row per finding: what it is, the step Explore shows it at (its step in the
    pinned replay of the first schedule that hits it) and, with ``link``, a link to it."""
    rows = []
    for v in result.get("violations", []):
        row = {
            "kind": v["kind"],
            "code": v["code"],
            "step": explore_step(v),
            "group": int(v["group"]) + 1,
            "turns": len(v.get("schedule", [])),
            "message": v["message"],
        }
        if link is not None:
            row["link"] = link(v)
        rows.append(row)
    return rows


#: A CPU's name in an encoded schedule: a thread name of the engine (``vcpu3``, ``td0``).
_CPU_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: Bound on the turns one encoded schedule may carry (a link is read from a URL).
MAX_LINK_TURNS = 1_000_000


def encode_schedule(orders: Sequence[Sequence[str]]) -> str:
    """Turn orders as URL-safe text: groups separated by ``~``, runs of one CPU as
    ``NAME*COUNT``, separated by ``.``: ``vcpu0*5.vcpu1*2~td0.vcpu1``. Runs keep a link short
    (a cold-range schedule is hundreds of turns in a few dozen runs)."""
    groups = []
    for order in orders:
        runs: list[str] = []
        prev, n = "", 0
        for name in [*order, ""]:
            if name == prev:
                n += 1
                continue
            if prev:
                runs.append(prev if n == 1 else f"{prev}*{n}")
            prev, n = name, 1
        groups.append(".".join(runs))
    return "~".join(groups)


def decode_schedule(text: str) -> list[list[str]]:
    """The turn orders of :func:`encode_schedule`; ValueError naming the bad part."""
    orders: list[list[str]] = []
    total = 0
    for g, group in enumerate(text.split("~"), 1):
        order: list[str] = []
        for run in group.split(".") if group else []:
            name, star, count = run.partition("*")
            if not _CPU_NAME.fullmatch(name):
                raise ValueError(f"schedule group {g}: {run!r} is not a CPU name (like vcpu0)")
            if star and not (count.isdigit() and 0 < int(count) <= MAX_LINK_TURNS):
                raise ValueError(f"schedule group {g}: {run!r}: the count must be 1 or more")
            n = int(count) if star else 1
            total += n
            if total > MAX_LINK_TURNS:
                raise ValueError(f"schedule: more than {MAX_LINK_TURNS:,} turns")
            order.extend([name] * n)
        orders.append(order)
    return orders


def finding_link(
    sample: str, settings: Settings, base: Settings, v: dict[str, Any]
) -> dict[str, str]:
    """Query parameters that reproduce a finding of a sample in Explore: the sample, the
    settings that differ from its own, the pinned turn orders (``schedule``), and the step."""
    from explorer.appsupport import encode_view_state

    params = encode_view_state(sample, explore_step(v), settings, base)
    params["schedule"] = encode_schedule(v["orders"])
    return params


def pinned_trace(
    trace: Trace, settings: Settings, orders: Sequence[Sequence[str]], label: str
) -> bytes:
    """The trace with ``orders`` pinned by ``schedule`` events (:func:`explorer.interleavings.search.pin`),
    as trace text: loaded in the app or replayed, it runs exactly that interleaving. The
    settings go into its header, since the app resets its overrides when a trace loads."""
    text = dump_trace(
        pin(trace.events, orders),
        title=f"{trace.title} (pinned: {label})" if trace.title else f"pinned: {label}",
        description=trace.description,
        settings=settings.to_dict(),
    )
    return text.encode("utf-8")


def first_difference(
    events: Sequence[Event], settings: Settings, pinned_events: Sequence[Event]
) -> int:
    """Where the pinned trace's replay first departs from the trace's own: the step to open it
    at, so the user lands where the interleaving becomes the one found. Steps are compared by
    CPU and label; the pinned replay's ``trace.schedule`` steps (which the original lacks) are
    skipped. With no difference, the first ``trace.schedule`` step (the pin itself)."""
    plain = replay(events, settings)
    pinned = replay(pinned_events, settings)
    a = plain.steps_between(0, plain.nr_steps)
    b = pinned.steps_between(0, pinned.nr_steps)
    first_schedule: int | None = None
    i = 0
    for step in b:
        if step.label == "trace.schedule":
            if first_schedule is None:
                first_schedule = step.index
            continue
        if i >= len(a) or (a[i].cpu, a[i].label) != (step.cpu, step.label):
            return step.index
        i += 1
    if first_schedule is not None:
        return first_schedule
    return max(pinned.nr_steps - 1, -1)
