"""What every ``python -m explorer`` command shares: exit codes, usage errors, reading a trace and
resolving its settings.

Exit status (a contract, scripts rely on it): 0 replayed with no violation (or: valid, written;
or explored completely with no violation); 1 replayed (or explored) with violations; 2 invalid
trace, impossible event, or bad usage; 3 ``explore`` reached its state limit (or was stopped)
before the search completed (nothing claimed); 130 interrupted (SIGINT, Ctrl-C) and 143
terminated (SIGTERM), after every process the command started has been ended.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, TextIO

from explorer.ingest import Trace, parse_trace
from explorer.ingest import limits as L
from explorer.ingest.bounded import InputRefused, read_bounded
from explorer.model.errors import Problem, TraceError
from explorer.model.settings import Settings

EXIT_OK, EXIT_VIOLATIONS, EXIT_INVALID, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class UsageError(Exception):
    """Bad usage: printed as `usage error: ...`, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits with 2 too; keep our wording
        raise UsageError(message)


def read_trace(path: str) -> Trace:
    """Read and parse ``path`` (``-`` for standard input) through the bounded reader: at most
    MAX_UPLOAD_BYTES + 1 bytes from any path (device, FIFO, /proc, stdin), then refused."""
    return read_trace_and_bytes(path)[0]


def read_trace_and_bytes(path: str) -> tuple[Trace, bytes]:
    """:func:`read_trace`, with the bytes it parsed (for a command that also needs the file's
    bytes: reading the path a second time would be unbounded, and a FIFO gives nothing twice)."""
    name = "<stdin>" if path == "-" else os.path.basename(path) or path
    try:
        data = read_bounded(path, L.MAX_UPLOAD_BYTES)
    except InputRefused as exc:
        reason = exc.reason
        if "over the limit" in reason:
            reason += " (MAX_UPLOAD_BYTES)"
        raise TraceError(Problem(name, 0, 0, reason)) from None
    return parse_trace(data, name), data


def check_output_path(path: str, what: str = "output") -> None:
    """Refuse, before any work starts, an output path that cannot be written as a regular file.

    Checked: the directory exists and is a directory, it is writable (``os.access``, so a
    read-only mount or another user's directory is caught), the path is not a directory, not a
    device, FIFO or socket, and not under /proc or /sys (their files take writes they do not
    keep). ``-`` (standard output) passes. Raises :class:`UsageError` naming the path and why.
    """
    if path == "-":
        return
    if not path:
        raise UsageError(f"{what}: an empty path")
    real = os.path.realpath(path)
    if real == "/proc" or real.startswith(("/proc/", "/sys/")) or real == "/sys":
        top = "/" + real.split("/")[1]
        raise UsageError(f"{what} {path}: under {top}, which does not keep the files written there")
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.exists(parent):
        raise UsageError(f"{what} {path}: the directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path}: {parent} is not a directory")
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise UsageError(f"{what} {path}: {exc.strerror}") from None
        if stat.S_ISDIR(mode):
            raise UsageError(f"{what} {path}: is a directory")
        if not stat.S_ISREG(mode):
            kind = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise UsageError(f"{what} {path}: is {kind}, not a file to write")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{what} {path}: the file is not writable")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: the directory {parent} is not writable")


#: ``--workers`` at most this many per CPU this process may run on. A worker is a whole
#: process (its own interpreter, numpy and the engine: about 100 MB resident before any work)
#: running one CPU-bound search or replay at a time (one thread each), so workers beyond the
#: CPUs only share them: more memory and more switching, never more throughput. Four per CPU
#: leaves room for a worker waiting on its disk or its scheduler, and refuses a typo such as
#: ``--workers 800`` (800 processes, tens of GB) before a single one starts.
MAX_WORKERS_PER_CPU = 4


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a container or ``taskset``
    narrows; ``os.cpu_count()`` counts the whole machine), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The most ``--workers`` a command accepts here: :data:`MAX_WORKERS_PER_CPU` per usable
    CPU."""
    return MAX_WORKERS_PER_CPU * usable_cpus()


def workers_problem(workers: int | None, flag: str = "--workers") -> str | None:
    """Why ``workers`` is refused (a message naming ``flag``, the value and the bound), or None
    when it is fine (None: the command's default, the CPU count)."""
    if workers is None:
        return None
    if workers < 1:
        return f"{flag} {workers}: must be 1 or more (1: run in this process)"
    top = max_workers()
    if workers > top:
        return (
            f"{flag} {workers}: at most {top} ({MAX_WORKERS_PER_CPU} per CPU, {usable_cpus()} "
            "CPUs here): each worker is a process of its own doing CPU-bound work, so more "
            "only add memory and switching"
        )
    return None


def check_workers(workers: int | None, flag: str = "--workers") -> None:
    """Raise :class:`UsageError` when :func:`workers_problem` refuses ``workers``."""
    problem = workers_problem(workers, flag)
    if problem is not None:
        raise UsageError(problem)


class OutputError(Exception):
    """A write that failed after the work started (disk full, removed directory): exit 2."""


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """A binary file object whose content appears at ``path`` only when the block ends without error:
    written to a temporary file in the same directory, flushed and fsynced, then renamed over
    ``path`` (so a failed or interrupted write leaves the old file, or none, never a partial
    one). An OSError while writing becomes :class:`OutputError` naming the path."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # what open() would have given, not mkstemp's 0600
        with os.fdopen(fd, "wb") as raw:
            try:
                yield raw
                raw.flush()
                os.fsync(raw.fileno())
            except OSError as exc:
                raise OutputError(f"{path}: the write failed: {exc.strerror}") from None
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def resolve_settings(trace: Trace, assignments: Sequence[str]) -> Settings:
    """Defaults, then the trace header's settings, then ``--set key=value`` (last wins)."""
    settings = Settings().with_overrides(trace.settings, source=trace.source)
    if assignments:
        settings = settings.with_overrides(Settings.parse_assignments(list(assignments)), "--set")
    return settings


def print_problems(problems: Iterable[Problem], out: TextIO) -> None:
    for p in problems:
        print(p, file=out)
