"""``python -m explorer``: check, replay, explore, generate and sweep traces; import and conform
kernel captures.

The commands live with their capability (:mod:`explorer.cli.traces`,
:mod:`explorer.interleavings.command`, :mod:`explorer.sweeps.command`,
:mod:`explorer.conformance.command`); this module only assembles the parser and maps errors to
the exit codes of :mod:`explorer.cli.common` (a contract, scripts rely on it).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import threading
from typing import Any

from explorer.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_TERMINATED,
    OutputError,
    Parser,
    UsageError,
    print_problems,
)
from explorer.cli.common import resolve_settings as resolve_settings  # re-exported for callers
from explorer.cli.traces import add_check_and_replay, add_generate
from explorer.conformance.command import add_import_and_conform
from explorer.interleavings.command import add_explore_and_grid
from explorer.model.errors import ImpossibleEvent, TraceError
from explorer.sweeps.command import add_sweep


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m explorer",
        description="DPAMT Explorer: check, replay, "
        "generate and sweep Dynamic PAMT fault-path traces.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_check_and_replay(sub)
    add_explore_and_grid(sub)
    add_generate(sub)
    add_sweep(sub)
    add_import_and_conform(sub)
    return p


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every ``with`` block unwinds: a sweep's
    LocalCluster closes its nannies and worker processes (issue 29: no orphans), a file
    written through a temporary is removed. A BaseException, so ``except Exception`` in the
    commands does not swallow it."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one command; SIGTERM and SIGINT end it cleanly (exit 143 and 130, every process it
    started ended by the unwinding), never with a traceback."""
    closed = _occupy_closed_std_fds()
    if 1 in closed:
        print(
            "error: standard output is closed: the command could print nothing "
            "(redirect it to a file or to /dev/null)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("\nterminated", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _occupy_closed_std_fds() -> set[int]:
    """Which of file descriptors 0, 1 and 2 the command was started without (``>&-``,
    ``<&-``), each now opened on /dev/null.

    Why (round 9): Python leaves ``sys.stdout`` as None for a closed descriptor, so the first
    print was an AttributeError traceback; and the next file the command opened took the free
    number, so output meant for the terminal could land in an output file. A closed standard
    input then reads as empty (refused as an empty trace), a closed standard error discards
    the messages; a closed standard output is refused by :func:`main` (exit 2)."""
    closed: set[int] = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if fd == 0:
            sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        elif fd == 1:
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False))
        else:
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    return closed


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null after a failed write to it, so that the
    interpreter's own flush at exit does not fail again (an 'Exception ignored' trace)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if argv is not None and hasattr(args, "argv"):
            args.argv = list(argv)
        code: int = args.func(args)
        sys.stdout.flush()  # a write error still buffered is reported here, not at exit
        return code
    except UsageError as exc:
        print(f"usage error: {exc} (see python -m explorer --help)", file=sys.stderr)
        return EXIT_INVALID
    except ImpossibleEvent as exc:
        print_problems(exc.problems, sys.stderr)
        return EXIT_INVALID
    except TraceError as exc:
        print_problems(exc.problems, sys.stderr)
        return EXIT_INVALID
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_OK
    except OSError as exc:
        # a write to standard output that failed (/dev/full: ENOSPC; a terminal gone: EIO):
        # the commands' own files are checked up front and written through atomic_output
        if exc.filename is None:
            _discard_stdout()
            print(f"error: writing standard output: {exc.strerror}", file=sys.stderr)
        else:
            print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
