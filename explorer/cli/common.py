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
import gzip
import math
import os
import re
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


def check_compact(args: argparse.Namespace) -> None:
    """``--compact`` only shapes ``--json``'s output (one line); alone it was ignored without a
    word, and the user got the text output they had not asked to change."""
    if getattr(args, "compact", False) and not getattr(args, "json", False):
        raise UsageError("--compact prints --json's object on one line: add --json, or drop it")


def read_trace(path: str) -> Trace:
    """Read and parse ``path`` (``-`` for standard input) through the bounded reader: at most
    MAX_UPLOAD_BYTES + 1 bytes from any path (device, FIFO, /proc, stdin), then refused."""
    return read_trace_and_bytes(path)[0]


def read_trace_and_bytes(path: str) -> tuple[Trace, bytes]:
    """:func:`read_trace`, with the bytes it parsed (for a command that also needs the file's
    bytes: reading the path a second time would be unbounded, and a FIFO gives nothing twice)."""
    name = "<stdin>" if path == "-" else shown(os.path.basename(path) or path)
    try:
        data = read_bounded(path, L.MAX_UPLOAD_BYTES)
    except InputRefused as exc:
        reason = exc.reason
        if "over the limit" in reason:
            reason += " (MAX_UPLOAD_BYTES)"
        raise TraceError(Problem(name, 0, 0, reason)) from None
    return parse_trace(data, name), data


def shown(path: str) -> str:
    """``path`` as a message may print it: as is when every character is printable, else its
    Python repr (a newline, escape or NUL in a name must not forge or garble the lines of a
    message: round 9), and ``''`` for the empty path (which would otherwise print as nothing)."""
    return path if path and path.isprintable() else repr(path)


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file: the same inode when both exist (a symlink or
    a hard link to the input is caught), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return os.path.realpath(a) == os.path.realpath(b)
        except (OSError, ValueError):
            return False


def check_trace_output(path: str, what: str, inputs: Sequence[str] = ()) -> None:
    """:func:`check_output_path` for a trace the command writes (``generate``, ``import``,
    ``explore --write-pinned``): JSON Lines, so a name the readers take for CSV (``.csv``,
    ``.csv.gz``: they choose the format by the name) is refused before any work; the file
    would be read back as a CSV whose header is the JSON header line."""
    check_output_path(path, what, inputs)
    if path.lower().endswith((".csv", ".csv.gz")):
        raise UsageError(
            f"{what} {shown(path)}: this command writes a trace as JSON Lines, which a reader "
            "would take for CSV by its name: name it .jsonl (or .jsonl.gz, compressed)"
        )


def trace_file_bytes(path: str, text: str) -> bytes:
    """The bytes of a trace written to ``path``: gzip-compressed when its name ends in
    ``.gz`` (as ``generate`` writes it, and the readers expect), else the UTF-8 text."""
    data = text.encode("utf-8")
    return gzip.compress(data, 6) if path.lower().endswith(".gz") else data


def check_output_path(path: str, what: str = "output", inputs: Sequence[str] = ()) -> None:
    """Refuse, before any work starts, an output path that cannot be written as a regular file.

    Checked: the directory exists and is a directory, it is writable (``os.access``, so a
    read-only mount or another user's directory is caught), the path is not a directory, not a
    device, FIFO or socket, and not under /proc or /sys (their files take writes they do not
    keep). ``-`` (standard output) passes. Also refused (round 9): an output that is one of the
    command's ``inputs`` (the write would replace the trace being read: ``explore-grid --out``
    and ``sweep --plot`` replaced it with their results), a NUL in the path, and a name or
    path longer than the file system takes (``NAME_MAX``, ``PATH_MAX``: else the work ran
    first and the write failed at its end). Raises :class:`UsageError` naming the path and why.
    """
    if path == "-":
        return
    if not path:
        raise UsageError(f"{what}: an empty path")
    if "\0" in path:
        raise UsageError(f"{what} {shown(path)}: a path cannot hold a NUL character")
    for source in inputs:
        if source != "-" and same_file(path, source):
            raise UsageError(
                f"{what} {shown(path)}: is the input {shown(source)}; writing it would replace "
                "the input (choose another file)"
            )
    _check_name_length(path, what)
    real = os.path.realpath(path)
    if real == "/proc" or real.startswith(("/proc/", "/sys/")) or real == "/sys":
        top = "/" + real.split("/")[1]
        raise UsageError(
            f"{what} {shown(path)}: under {top}, which does not keep the files written there"
        )
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.exists(parent):
        raise UsageError(f"{what} {shown(path)}: the directory {shown(parent)} does not exist")
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {shown(path)}: {shown(parent)} is not a directory")
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise UsageError(f"{what} {shown(path)}: {exc.strerror}") from None
        if stat.S_ISDIR(mode):
            raise UsageError(f"{what} {shown(path)}: is a directory")
        if not stat.S_ISREG(mode):
            kind = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise UsageError(f"{what} {shown(path)}: is {kind}, not a file to write")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{what} {shown(path)}: the file is not writable")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {shown(path)}: the directory {shown(parent)} is not writable")


#: The longest temporary name :func:`atomic_output` adds to an output's name: ``.`` before it,
#: ``.`` and mkstemp's 8 random characters and ``.tmp`` after it.
_TEMP_EXTRA = 14


def _check_name_length(path: str, what: str) -> None:
    """Refuse a name over ``NAME_MAX`` or a path over ``PATH_MAX`` of the output's file system
    (255 and 4096 bytes on Linux when it cannot be asked) before any work."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    name_max, path_max = 255, 4096
    with contextlib.suppress(OSError, ValueError, AttributeError):
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        path_max = os.pathconf(parent, "PC_PATH_MAX")
    name = len(os.fsencode(os.path.basename(path)))
    if name > name_max:
        raise UsageError(
            f"{what} {shown(path)[:80]}...: the file name is {name} bytes, over the {name_max} "
            "the file system takes (NAME_MAX)"
        )
    full = len(os.fsencode(os.path.abspath(path)))
    if full >= path_max:
        raise UsageError(
            f"{what} {shown(path)[:80]}...: the path is {full} bytes, over the {path_max - 1} "
            "the system takes (PATH_MAX)"
        )


_INT = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")


def ascii_int(text: str) -> int:
    """An argparse ``type`` for integer flags: ASCII decimal digits only, at most 30 of them.

    Python's ``int()`` also takes Arabic-Indic or fullwidth digits, ``_`` separators and
    surrounding spaces, so ``--workers ٣`` ran three workers (round 9); flags now read like the
    URL parameters and ``--set`` values (decimal digits, a sign)."""
    if not _INT.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer (ASCII decimal digits, at most 30, an optional sign)"
        )
    return int(text)


def ascii_float(text: str) -> float:
    """An argparse ``type`` for number flags: an ASCII decimal number, finite (``inf``, ``nan``,
    ``1e309`` and non-ASCII digits are refused: round 9, ``--max-seconds inf`` was taken as no
    limit at all)."""
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finite decimal number (ASCII digits, e.g. 2.5 or 1e3)"
        )
    return value


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
    # the temporary's name stays within NAME_MAX however long the output's name is (round 9)
    stem = os.fsencode(os.path.basename(path))[: 255 - _TEMP_EXTRA].decode(errors="ignore")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputError(f"{shown(path)}: cannot write: {exc.strerror}") from None
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
                raise OutputError(f"{shown(path)}: the write failed: {exc.strerror}") from None
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
