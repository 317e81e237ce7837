"""What every ``python -m explorer`` command shares: exit codes, usage errors, reading a trace and
resolving its settings.

Exit status (a contract, scripts rely on it): 0 replayed with no violation (or: valid, written;
or explored completely with no violation); 1 replayed (or explored) with violations; 2 invalid
trace, impossible event, or bad usage; 3 ``explore`` reached its state limit (or was stopped)
before the search completed (nothing claimed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from explorer.ingest import Trace, parse_trace
from explorer.ingest import limits as L
from explorer.model.errors import Problem, TraceError
from explorer.model.settings import Settings

EXIT_OK, EXIT_VIOLATIONS, EXIT_INVALID, EXIT_INCOMPLETE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad usage: printed as `usage error: ...`, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits with 2 too; keep our wording
        raise UsageError(message)


def read_trace(path: str) -> Trace:
    """Read and parse ``path`` (``-`` for standard input); size-checked before reading."""
    if path == "-":
        data = sys.stdin.buffer.read(L.MAX_UPLOAD_BYTES + 1)
        name = "<stdin>"
    else:
        name = os.path.basename(path)
        try:
            size = os.stat(path).st_size
            if size > L.MAX_UPLOAD_BYTES:
                raise TraceError(
                    Problem(
                        name,
                        0,
                        0,
                        f"the file is {size} bytes, over the limit of "
                        f"{L.MAX_UPLOAD_BYTES} bytes (MAX_UPLOAD_BYTES)",
                    )
                )
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise TraceError(Problem(name, 0, 0, f"cannot read the file: {exc.strerror}")) from None
    return parse_trace(data, name)


def resolve_settings(trace: Trace, assignments: Sequence[str]) -> Settings:
    """Defaults, then the trace header's settings, then ``--set key=value`` (last wins)."""
    settings = Settings().with_overrides(trace.settings, source=trace.source)
    if assignments:
        settings = settings.with_overrides(Settings.parse_assignments(list(assignments)), "--set")
    return settings


def print_problems(problems: Iterable[Problem], out: TextIO) -> None:
    for p in problems:
        print(p, file=out)
