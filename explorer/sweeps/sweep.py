"""Sweeps: one trace under a grid of settings, each point measured by :mod:`explorer.sweeps.metrics`.

``--vary dpamt_gets_per_fault=0..8 --vary mode=v6,v6-locked`` gives the cross product of the
listed values (``a..b`` is an inclusive integer range, ``a,b,c`` a list), up to
:data:`MAX_SWEEP_POINTS` points.

Engine: Dask distributed. :func:`run_sweep` submits to an existing scheduler (``scheduler=
"tcp://HOST:PORT"``) or starts a ``LocalCluster`` on this machine (worker processes, loopback
only, no dashboard); ``workers=1`` without a scheduler runs the points in this process instead
(no cluster to start: what the app's small sweeps use). The trace reaches each worker once: its
events are pickled into one blob, scattered with ``broadcast=True``, and each worker process
unpickles it once and caches it under the trace digest (:func:`trace_digest`, a SHA-256 of the
events' canonical JSON). Each point is one task whose Dask key is :func:`point_key` -- a
SHA-256 of the trace digest and the point's canonical settings JSON -- so the same point is the
same task (and the same row) in every run. A point that raises is recorded (``status`` "error",
``error`` the message), never fatal; a worker lost mid-sweep has its tasks rerun elsewhere by
the scheduler.

Output (``out``), one row per point, written as the results arrive: every ``setting.<name>``,
every metric of :meth:`explorer.sweeps.metrics.RunMetrics.row`, then ``trace_digest``, ``trace``,
``note``, ``key``, ``seconds`` (the point's run time on its worker), ``worker`` (the worker's
address), ``status`` and ``error`` (:data:`EXTRA_COLUMNS`).

- ``FILE.csv``: rows appended (and flushed) one by one, text cells escaped by
  :mod:`explorer.csvsafe`.
- ``FILE.parquet``: a Parquet file cannot be appended to in place, so finished rows go to a
  sidecar directory ``FILE.parquet.parts/``, one small Parquet file per batch (every
  :data:`PARQUET_BATCH_ROWS` rows or :data:`PARQUET_BATCH_SECONDS` seconds). At the end of a
  sweep, and at the start of a resumed one, ``FILE.parquet`` and the parts are merged (each key
  once) into a new ``FILE.parquet`` (written aside, then renamed over it) and the parts removed.
  ``pandas.read_parquet(FILE)`` reads the result with no help; the schema is fixed
  (:func:`parquet_schema`), so metric columns of an error row are nulls.
- ``-``: CSV on standard output (nothing to resume from).

Resume: the rows already in ``out`` (and its parts) are read first, and the points whose key is
there (ok or error: a point is a pure function of trace and settings) are skipped; the new rows
are appended. An interrupted sweep, rerun with the same arguments, runs only what is missing.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import importlib
import itertools
import json
import os
import pickle
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from explorer.csvsafe import FORMULA_STARTS, escape_cell
from explorer.model.errors import Problem, SettingsError
from explorer.model.events import Event
from explorer.model.settings import SETTING_SPECS, Settings
from explorer.sweeps.metrics import run_metrics

#: A sweep of more points than this is refused (each point is a full replay; 100,000 points of a
#: 3,000-event trace is about an hour on one worker, see docs/scaling.md).
MAX_SWEEP_POINTS = 100_000
#: Seconds to wait for a scheduler before giving up (the CLI exits 2).
CONNECT_TIMEOUT_S = 5.0
#: Parquet output: a part file every this many rows, or this many seconds.
PARQUET_BATCH_ROWS = 500
PARQUET_BATCH_SECONDS = 5.0
#: Columns after the settings and metrics.
EXTRA_COLUMNS = ("trace_digest", "trace", "note", "key", "seconds", "worker", "status", "error")

#: progress(points done, total, points per second, ETA in seconds)
ProgressFn = Callable[[int, int, float, float], None]
#: cancel() -> True once the sweep should stop (asked between points; see :func:`run_sweep`)
CancelFn = Callable[[], bool]
#: Seconds between looks at ``cancel`` while waiting for the cluster's next result.
CANCEL_POLL_S = 0.05


class SchedulerUnreachable(Exception):
    """The scheduler at ``address`` could not be reached (``reason``)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the Dask scheduler at {address}: {reason}")
        self.address = address
        self.reason = reason


class SweepOutputError(Exception):
    """The output file cannot be resumed (an unknown suffix, or a CSV with other columns)."""


# ------------------------------------------------------------------ grid
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
        if key in grid:  # (the second used to replace the first, silently)
            problems.append(
                Problem(
                    "--vary",
                    0,
                    0,
                    f"{key} is varied twice: give its values once",
                    spec,
                    f"{key}=a,b,c (or a..b)",
                )
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
    count = 1
    for k in keys:
        count *= len(grid[k])
    if count > MAX_SWEEP_POINTS:
        raise SettingsError(
            Problem(
                "--vary",
                0,
                0,
                f"{count} points is over the limit of {MAX_SWEEP_POINTS} (MAX_SWEEP_POINTS)",
            )
        )
    combos = itertools.product(*(grid[k] for k in keys))
    return [base.with_overrides(dict(zip(keys, combo, strict=True))) for combo in combos]


# ------------------------------------------------------------------ keys
def trace_digest(events: Sequence[Event]) -> str:
    """SHA-256 (hex) of the events' canonical JSON (their fields and lines), format-independent."""
    from explorer.ingest.write import event_object

    h = hashlib.sha256()
    for ev in events:
        obj = event_object(ev)
        obj["line"] = ev.line
        h.update(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def settings_json(settings: Settings) -> str:
    """Canonical JSON of every setting (sorted keys, no spaces)."""
    return json.dumps(settings.to_dict(), sort_keys=True, separators=(",", ":"))


def point_key(digest: str, settings: Settings) -> str:
    """The task key of one point: ``point-<sha256 of the digest and the settings JSON>``."""
    raw = f"{digest}\n{settings_json(settings)}".encode()
    return "point-" + hashlib.sha256(raw).hexdigest()


# ------------------------------------------------------------------ schema
@functools.lru_cache(maxsize=1)
def _template_row() -> dict[str, Any]:
    return run_metrics([], Settings()).row()


def setting_columns() -> list[str]:
    return [k for k in _template_row() if k.startswith("setting.")]


def metric_columns() -> list[str]:
    return [k for k in _template_row() if not k.startswith("setting.")]


def columns() -> list[str]:
    """Every column of a sweep row, in file order."""
    return [*_template_row(), *EXTRA_COLUMNS]


def _column_types() -> dict[str, type]:
    types: dict[str, type] = {k: type(v) for k, v in _template_row().items()}
    types["idle_pages_mean"] = float
    types.update({k: str for k in EXTRA_COLUMNS})
    types["seconds"] = float
    return types


def parquet_schema() -> Any:
    """The fixed pyarrow schema of a sweep's Parquet file."""
    pa = importlib.import_module("pyarrow")
    kinds = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
    return pa.schema([(k, kinds[t]) for k, t in _column_types().items()])


# ------------------------------------------------------------------ one point
#: Per worker process: trace digest -> events, unpickled once from the scattered blob.
_EVENTS: dict[str, Sequence[Event]] = {}


def _events_of(digest: str, blob: bytes | Sequence[Event]) -> Sequence[Event]:
    if not isinstance(blob, bytes):
        return blob
    events = _EVENTS.get(digest)
    if events is None:
        events = pickle.loads(blob)  # our own blob, from the client
        if len(_EVENTS) >= 4:
            _EVENTS.pop(next(iter(_EVENTS)))
        _EVENTS[digest] = events
    return events


def _worker_address() -> str:
    try:
        distributed = importlib.import_module("distributed")
        address: str = distributed.get_worker().address
        return address
    except (ImportError, ValueError):
        return "local"


def error_row(
    settings: Settings, digest: str, key: str, message: str, seconds: float = 0.0, worker: str = ""
) -> dict[str, Any]:
    """The row of a point that raised: its settings, null metrics, the message."""
    row: dict[str, Any] = {f"setting.{k}": v for k, v in settings.to_dict().items()}
    row.update(dict.fromkeys(metric_columns()))
    row.update(
        trace_digest=digest,
        key=key,
        seconds=seconds,
        worker=worker,
        status="error",
        error=message,
    )
    return row


def run_point(
    blob: bytes | Sequence[Event], digest: str, settings: Settings, key: str
) -> dict[str, Any]:
    """One point, on a worker: the metrics row plus digest, key, seconds, worker, status, error.

    Never raises: an exception of the engine becomes a row with ``status`` "error".
    """
    start = time.perf_counter()
    worker = _worker_address()
    try:
        row = run_metrics(_events_of(digest, blob), settings).row()
    except Exception as exc:  # a point that raises is recorded, never fatal
        return error_row(
            settings,
            digest,
            key,
            f"{type(exc).__name__}: {exc}",
            time.perf_counter() - start,
            worker,
        )
    row.update(
        trace_digest=digest,
        key=key,
        seconds=time.perf_counter() - start,
        worker=worker,
        status="ok",
        error="",
    )
    return row


# ------------------------------------------------------------------ output
def _unescape(value: str) -> str:
    if value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row (all text) back to the types of a sweep row."""
    out: dict[str, Any] = {}
    for k, t in _column_types().items():
        v = row.get(k)
        if v is None:
            out[k] = None
        elif t is str:
            out[k] = _unescape(v)
        elif v == "":
            out[k] = None
        elif t is bool:
            out[k] = v == "True"
        else:
            out[k] = t(v)
    return out


def _nonempty(path: str) -> bool:
    """Whether ``path`` holds something (an empty file is a sweep not yet written)."""
    return os.path.exists(path) and os.path.getsize(path) > 0


def _drop_partial_row(path: str) -> None:
    """Cut a CSV's last line when it has no end: a sweep killed (or a disk filled) in the middle
    of a row leaves part of it, and the rows appended on resume would be glued to it. That
    point's key is then not in the file, so the resumed sweep runs it again."""
    size = os.path.getsize(path)
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


class _Sink:
    """Where rows go: nowhere, CSV (file or stdout) or Parquet parts."""

    def __init__(self, out: str | None) -> None:
        self.out = out
        self.kind = (
            "none"
            if out is None
            else "stdout"
            if out == "-"
            else "csv"
            if out.lower().endswith(".csv")
            else "parquet"
            if out.lower().endswith(".parquet")
            else ""
        )
        if not self.kind:
            raise SweepOutputError(f"--out {out}: expected a .parquet or .csv file, or -")
        self.parts = f"{out}.parts"
        self.pending: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self._file: Any = None
        self._writer: Any = None

    # existing rows (resume)
    def existing(self) -> list[dict[str, Any]]:
        assert self.out is not None
        if self.kind == "csv" and os.path.exists(self.out):
            _drop_partial_row(self.out)
            with open(self.out, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is not None and list(reader.fieldnames) != columns():
                    raise SweepOutputError(
                        f"{self.out} has other columns than a sweep of this version: "
                        "write to a new file"
                    )
                return [_typed(r) for r in reader]
        if self.kind == "parquet":
            if _nonempty(self.out):
                self._own_parquet()  # (checked before the parts are merged into it)
            self.merge()
            if _nonempty(self.out):
                return self._own_parquet()
        return []

    def _own_parquet(self) -> list[dict[str, Any]]:
        """The rows of an existing ``--out`` Parquet, refused (a usage error, before any point
        runs) when it is not a Parquet file or not one of a sweep of this version: its rows
        could not be merged with this sweep's (an explore-grid catalogue, a stray file)."""
        assert self.out is not None
        pq = importlib.import_module("pyarrow.parquet")
        try:
            table = pq.read_table(self.out)
        except (ValueError, OSError) as exc:  # (pyarrow's ArrowInvalid is a ValueError)
            raise SweepOutputError(
                f"{self.out} is not a Parquet file a sweep can resume ({exc}): write to a new file"
            ) from None
        if list(table.column_names) != columns():
            raise SweepOutputError(
                f"{self.out} has other columns than a sweep of this version: write to a new file"
            )
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows

    def open(self) -> None:
        if self.kind == "stdout":
            self._writer = csv.DictWriter(sys.stdout, fieldnames=columns())
            self._writer.writeheader()
        elif self.kind == "csv":
            assert self.out is not None
            fresh = not os.path.exists(self.out) or os.path.getsize(self.out) == 0
            self._file = open(self.out, "a", encoding="utf-8", newline="")  # noqa: SIM115
            self._writer = csv.DictWriter(self._file, fieldnames=columns())
            if fresh:
                self._writer.writeheader()
        elif self.kind == "parquet":
            os.makedirs(self.parts, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.writerow({k: escape_cell(row.get(k)) for k in columns()})
            if self._file is not None:
                self._file.flush()
            else:
                sys.stdout.flush()
        elif self.kind == "parquet":
            self.pending.append(row)
            if (
                len(self.pending) >= PARQUET_BATCH_ROWS
                or time.monotonic() - self.last_flush >= PARQUET_BATCH_SECONDS
            ):
                self.flush()

    def flush(self) -> None:
        if self.kind != "parquet" or not self.pending:
            return
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
        table = pa.Table.from_pylist(
            [{k: r.get(k) for k in columns()} for r in self.pending], schema=parquet_schema()
        )
        name = os.path.join(self.parts, f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet")
        pq.write_table(table, name + ".tmp")
        os.replace(name + ".tmp", name)  # a part is whole or absent
        self.pending.clear()
        self.last_flush = time.monotonic()

    def merge(self) -> None:
        """FILE.parquet + FILE.parquet.parts/* -> FILE.parquet (each key once), parts removed."""
        assert self.out is not None
        if not os.path.isdir(self.parts):
            return
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
        names = sorted(n for n in os.listdir(self.parts) if n.endswith(".parquet"))
        sources = ([self.out] if _nonempty(self.out) else []) + [
            os.path.join(self.parts, n) for n in names
        ]
        seen: set[str] = set()
        rows: list[dict[str, Any]] = []
        for path in sources:
            for row in pq.read_table(path).to_pylist():
                if row["key"] not in seen:
                    seen.add(row["key"])
                    rows.append(row)
        table = pa.Table.from_pylist(
            [{k: r.get(k) for k in columns()} for r in rows], schema=parquet_schema()
        )
        pq.write_table(table, self.out + ".tmp")
        os.replace(self.out + ".tmp", self.out)
        shutil.rmtree(self.parts, ignore_errors=True)

    def close(self) -> None:
        if self.kind == "parquet":
            self.flush()
            self.merge()
        if self._file is not None:
            self._file.close()
            self._file = None


# ------------------------------------------------------------------ engine
@dataclass
class _Todo:
    key: str
    settings: Settings


#: Bytes a peer may send in one message while it is probed (a scheduler's handshake and its
#: ``identity`` reply are a few hundred bytes; its worker list grows about 1 KiB per worker).
MAX_PROBE_MESSAGE_BYTES = 4 << 20
#: Frames in one probed message (a plain msgpack message has one or two).
MAX_PROBE_FRAMES = 64


def _recv_exact(sock: Any, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 16))
        except TimeoutError:
            raise TimeoutError("no complete answer in time") from None
        if not chunk:
            raise ConnectionError(f"the peer closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _read_dask_message(sock: Any, deadline: float) -> Any:
    """One message of Dask's TCP framing (distributed.comm.tcp: an 8-byte length, then a
    prelude of frame count and frame lengths, then the frames), every length checked against
    :data:`MAX_PROBE_MESSAGE_BYTES` *before* anything is allocated for it; the first frame
    decoded as plain msgpack (nothing unpickled: the peer is not trusted yet)."""
    import struct

    msgpack = importlib.import_module("msgpack")
    (nosplit,) = struct.unpack("<Q", _recv_exact(sock, 8, deadline))
    if nosplit < 8 or nosplit > MAX_PROBE_MESSAGE_BYTES:
        raise ValueError(f"it announced a message of {nosplit} bytes")
    body = _recv_exact(sock, nosplit, deadline)
    (nframes,) = struct.unpack_from("<Q", body)
    if nframes == 0 or nframes > MAX_PROBE_FRAMES or 8 + 8 * nframes > nosplit:
        raise ValueError(f"it announced {nframes} frames in a message of {nosplit} bytes")
    lengths = struct.unpack_from(f"<{nframes}Q", body, 8)
    total = 8 + 8 * nframes + sum(lengths)
    if total > MAX_PROBE_MESSAGE_BYTES or total < nosplit:
        raise ValueError(f"its frames add up to {total} bytes")
    body += _recv_exact(sock, total - nosplit, deadline)  # frames sent after the first read
    first = body[8 + 8 * nframes : 8 + 8 * nframes + lengths[0]]
    try:
        return msgpack.unpackb(first, raw=False, strict_map_key=False, use_list=False)
    except Exception as exc:
        raise ValueError(f"its first frame is not msgpack ({type(exc).__name__})") from None


def _dask_frames(msg: dict[str, Any]) -> bytes:
    import struct

    msgpack = importlib.import_module("msgpack")
    frame: bytes = msgpack.packb(msg, use_bin_type=True)
    packed = struct.pack("<QQ", 1, len(frame)) + frame
    return struct.pack("<Q", len(packed)) + packed


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`SchedulerUnreachable` unless a Dask scheduler answers at ``address``.

    The exchange is Dask's own (both sides send a handshake, then an ``identity`` call), done
    here on a plain socket with every length the peer announces checked before it is read: a
    peer that is not a Dask scheduler (a web server, one that sends garbage, one that claims an
    8 GiB frame) is named as such within ``timeout`` and without allocating what it claims,
    where distributed's own reader would allocate it (issue 29: "Unable to allocate 3.07 EiB").
    TLS addresses get only the TCP connect here; the Client's own handshake checks the rest.
    """
    import socket
    import sys as _sys

    addressing = importlib.import_module("distributed.comm.addressing")
    try:
        scheme, _ = addressing.parse_address(address, strict=True)
        host, port = addressing.get_address_host_port(address, strict=True)
    except Exception:
        raise SchedulerUnreachable(address, "not an address of the form tcp://HOST:PORT") from None
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise SchedulerUnreachable(
            address, exc.strerror or str(exc) or type(exc).__name__
        ) from None
    if scheme != "tcp":
        sock.close()
        return
    try:
        with sock:
            sock.sendall(
                _dask_frames(
                    {
                        "compression": None,
                        "python": tuple(_sys.version_info)[:3],
                        "pickle-protocol": pickle.HIGHEST_PROTOCOL,
                    }
                )
            )
            handshake = _read_dask_message(sock, deadline)
            if not isinstance(handshake, dict) or "pickle-protocol" not in handshake:
                raise ValueError("its first message is not a Dask handshake")
            sock.sendall(_dask_frames({"op": "identity", "reply": True}))
            reply = _read_dask_message(sock, deadline)
    except (OSError, ValueError, TimeoutError) as exc:
        raise SchedulerUnreachable(
            address, f"the peer is not a Dask scheduler: {exc}"[:300]
        ) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise SchedulerUnreachable(address, "the peer is not a Dask scheduler")


#: Signals that arrived while a LocalCluster was starting (see :func:`_signals_deferred`).
_DEFERRED: list[int] = []


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held while a LocalCluster starts, delivered once it is up.

    Interrupted inside ``LocalCluster.__init__``, the cluster object never reaches the ``with``
    that would close it: its worker processes are left to Dask's exit hook, which prints a
    traceback. Held until the ``with`` is entered, the signal then unwinds it and the cluster
    closes its workers like after any other interruption. Main thread only (a signal handler
    can be set nowhere else); elsewhere nothing changes.
    """
    import signal

    if not _main_thread():
        yield
        return
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in watched}
    for sig in watched:
        if previous[sig] not in (signal.SIG_IGN, None):
            signal.signal(sig, lambda signum, frame: _DEFERRED.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _deliver_deferred() -> None:
    """Send this process the signals held by :func:`_signals_deferred` (their handlers now the
    usual ones: KeyboardInterrupt, or the CLI's SIGTERM exit)."""
    import signal

    while _DEFERRED:
        signal.raise_signal(_DEFERRED.pop(0))


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler``, or to a new LocalCluster (closed on exit).

    Raises :class:`SchedulerUnreachable` when the scheduler does not answer within
    :data:`CONNECT_TIMEOUT_S` seconds.
    """
    distributed = importlib.import_module("distributed")
    if scheduler:
        probe_scheduler(scheduler)
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except Exception as exc:
            raise SchedulerUnreachable(scheduler, str(exc) or type(exc).__name__) from None
        try:
            yield client
        finally:
            client.close()
        return
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers}: a cluster needs at least one worker")
    n = workers or os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        with _signals_deferred():
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # no dashboard; the scheduler's small HTTP server on a free loopback port
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                    silence_logs=40,
                )
            )
            client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        try:
            _deliver_deferred()  # inside the stack: the cluster closes as the signal unwinds
            yield client
        except BaseException as exc:
            # Ctrl-C or SIGTERM (cli.main.Terminated), which only the main thread gets: never
            # an app's background sweep (its own thread) nor a generator closed unfinished
            if not isinstance(exc, Exception | GeneratorExit) and _main_thread():
                quiet_teardown_logs()
            raise


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


#: The loggers that report a cluster's teardown in this process: tornado's callbacks (the
#: scheduler's and nannies' comms, closed under a running task) and asyncio's unretrieved futures.
TEARDOWN_LOGGERS = ("tornado", "tornado.application", "tornado.general", "asyncio", "distributed")


def quiet_teardown_logs() -> None:
    """Silence :data:`TEARDOWN_LOGGERS` in this process. Called when an interrupt unwinds a
    LocalCluster mid-work: closing it then cancels the points in flight, and a comm closed under
    a running callback is logged by tornado's IOLoop as an error with its traceback (seen under
    load: a SIGINT'd ``sweep --workers 2`` printed one before "interrupted"). The user asked to
    stop; the command says "interrupted" or "terminated" and nothing else (issue 29). The
    levels stay so for the rest of the process: the command is ending."""
    import logging

    for name in TEARDOWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _next_done(ac: Any, cancel: CancelFn | None) -> Any:
    """The next finished future of ``ac``; None when every one was returned or ``cancel()``.

    Without ``cancel`` this is ``next(ac)`` (it blocks). With it, the wait is in
    :data:`CANCEL_POLL_S` steps, so a cancel is seen while a long point is still running
    rather than when it ends.
    """
    if cancel is None:
        return next(ac, None)
    while not ac.has_ready():
        if cancel() or ac.is_empty():
            return None
        time.sleep(CANCEL_POLL_S)
    return None if cancel() else next(ac, None)


def _dask_results(
    client: Any,
    events: Sequence[Event],
    digest: str,
    todo: list[_Todo],
    cancel: CancelFn | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of ``todo`` from the cluster, as they complete (a bounded window in flight).

    Once ``cancel()`` is true nothing more is submitted and the futures still in flight are
    cancelled (without ``force``: a task another client also wants keeps running for it).
    """
    distributed = importlib.import_module("distributed")
    blob = pickle.dumps(tuple(events), protocol=pickle.HIGHEST_PROTOCOL)
    [blob_future] = client.scatter([blob], broadcast=True, hash=False)
    nthreads = sum(client.nthreads().values()) or 1
    window = max(64, 8 * nthreads)
    pending = iter(todo)
    by_key = {t.key: t for t in todo}
    inflight: dict[str, Any] = {}  # key -> future, submitted and not yet returned

    def submit(t: _Todo) -> Any:
        future = client.submit(run_point, blob_future, digest, t.settings, t.key, key=t.key)
        inflight[t.key] = future
        return future

    ac = distributed.as_completed(
        [submit(t) for t in itertools.islice(pending, window)],
        loop=client.loop,
        raise_errors=False,
    )
    try:
        while (future := _next_done(ac, cancel)) is not None:
            inflight.pop(future.key, None)
            t = by_key[future.key]
            try:
                row: dict[str, Any] = future.result()
            except Exception as exc:  # KilledWorker, a lost scheduler: recorded, not fatal
                row = error_row(t.settings, digest, t.key, f"{type(exc).__name__}: {exc}")
            future.release()
            nxt = next(pending, None)
            if nxt is not None:
                ac.add(submit(nxt))
            yield row
    finally:
        ac.clear()
        with contextlib.suppress(Exception):
            client.cancel([*inflight.values(), blob_future])


def _serial_results(
    events: Sequence[Event], digest: str, todo: list[_Todo], cancel: CancelFn | None = None
) -> Iterator[dict[str, Any]]:
    for t in todo:
        if cancel is not None and cancel():
            return
        yield run_point(events, digest, t.settings, t.key)


def run_sweep(
    events: Sequence[Event],
    points: Sequence[Settings],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    out: str | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    trace: str = "",
    note: str = "",
) -> list[dict[str, Any]]:
    """Run every point; the rows (see the module docstring), one per point, in the points' order.

    ``client``: an existing ``distributed.Client`` (not closed here); else ``scheduler``
    ("tcp://HOST:PORT"); else a LocalCluster of ``workers`` processes (default: the CPU count);
    ``workers=1`` runs in this process. ``out``: a .parquet or .csv file to write (and resume
    from), ``-`` for CSV on stdout, None for no file. ``trace`` and ``note`` fill those columns.

    ``progress`` is called after each row; ``cancel``, when given, is asked between points (and
    while waiting for a cluster's result): once it returns True nothing more is submitted, the
    pending tasks are cancelled, and the rows finished so far (written to ``out`` too, so a
    rerun resumes) are returned -- the points' order, the points not run left out. The app's
    background runner (:mod:`explorer.sweeps.job`) uses both; the CLI neither cancels nor changes.
    """
    if len(points) > MAX_SWEEP_POINTS:
        raise SettingsError(
            Problem(
                "--vary",
                0,
                0,
                f"{len(points)} points is over the limit of {MAX_SWEEP_POINTS} (MAX_SWEEP_POINTS)",
            )
        )
    digest = trace_digest(events)
    keys = [point_key(digest, s) for s in points]
    sink = _Sink(out)
    done: dict[str, dict[str, Any]] = {}
    if sink.kind in ("csv", "parquet"):
        for row in sink.existing():
            if row.get("trace_digest") == digest:
                done.setdefault(row["key"], row)
    todo: list[_Todo] = []
    queued: set[str] = set()
    for key, s in zip(keys, points, strict=True):
        if key not in done and key not in queued:
            queued.add(key)
            todo.append(_Todo(key, s))
    unique = set(keys)
    already = sum(1 for k in unique if k in done)  # rows of this grid already in ``out``
    total = len(unique)
    start = time.monotonic()
    new = 0

    def report() -> None:
        if progress is None:
            return
        elapsed = max(time.monotonic() - start, 1e-9)
        rate = new / elapsed
        left = len(todo) - new
        eta = left / rate if rate > 0 else (0.0 if left == 0 else float("inf"))
        progress(already + new, total, rate, eta)

    sink.open()
    report()
    try:
        if todo and not (cancel is not None and cancel()):
            with contextlib.ExitStack() as stack:
                if client is None and (scheduler or (workers or 0) != 1):
                    client = stack.enter_context(dask_client(scheduler, workers))
                results = (
                    _dask_results(client, events, digest, todo, cancel)
                    if client is not None
                    else _serial_results(events, digest, todo, cancel)
                )
                start = time.monotonic()  # the rate counts from the first submission
                for result in results:
                    result.update(trace=trace, note=note)
                    row = {k: result.get(k) for k in columns()}
                    done[row["key"]] = row
                    sink.write(row)
                    new += 1
                    report()
    finally:
        sink.close()
    return [done[k] for k in keys if k in done]
