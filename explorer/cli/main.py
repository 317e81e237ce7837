"""``python -m explorer``: check, replay, explore, generate and sweep traces; import and conform
kernel captures.

The commands live with their capability (:mod:`explorer.cli.traces`,
:mod:`explorer.interleavings.command`, :mod:`explorer.sweeps.command`,
:mod:`explorer.conformance.command`); this module only assembles the parser and maps errors to
the exit codes of :mod:`explorer.cli.common` (a contract, scripts rely on it).
"""

from __future__ import annotations

import argparse
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


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if argv is not None and hasattr(args, "argv"):
            args.argv = list(argv)
        code: int = args.func(args)
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
        return EXIT_OK
