"""``import`` and ``conform``: a kernel capture as a trace, and the model checked against it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from typing import Any

from explorer.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_VIOLATIONS,
    atomic_output,
    check_trace_output,
    shown,
    trace_file_bytes,
)
from explorer.ingest.bounded import InputRefused, read_bounded
from explorer.ingest.gcpause import gc_paused
from explorer.model.errors import Problem, TraceError


def _read_capture(path: str) -> Any:
    """Read and parse a kernel capture (docs/capture.md); ``-`` for standard input.

    Through the bounded reader (:func:`explorer.ingest.bounded.read_bounded`): at most
    MAX_CAPTURE_BYTES + 1 bytes from any path (a device, a FIFO, /proc, standard input), so
    ``conform /dev/zero`` is refused at the limit instead of reading without end. A regular file
    over the limit is refused by its size before anything is read, and named by that size."""
    from explorer.ingest.capture import MAX_CAPTURE_BYTES, parse_capture

    # (escaped as a trace's name is: a newline or an escape in it must not forge message lines)
    name = "<stdin>" if path == "-" else shown(os.path.basename(path) or path)
    if path != "-":
        with contextlib.suppress(OSError):  # unreadable: read_bounded says why
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size > MAX_CAPTURE_BYTES:
                return parse_capture(b"", name, size=st.st_size)  # refused, with its real size
    try:
        data = read_bounded(path, MAX_CAPTURE_BYTES)
    except InputRefused as exc:
        raise TraceError(Problem(name, 0, 0, exc.reason)) from None
    return parse_capture(data, name)


def cmd_import(args: argparse.Namespace) -> int:
    """A kernel capture as a format-v1 trace (explorer/conformance/importer.py)."""
    from explorer.conformance.importer import import_capture
    from explorer.ingest.write import dump_trace

    check_trace_output(args.output, "-o", [args.capture])
    with gc_paused():  # as in cmd_conform
        cap = _read_capture(args.capture)
        imp = import_capture(cap)
    text = dump_trace(
        imp.events,
        title=f"imported from {cap.source}",
        settings=imp.settings.to_dict(),
    )
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with atomic_output(args.output) as f:
            f.write(trace_file_bytes(args.output, text))
    for note in (*cap.derived, *cap.unknown):
        print(f"# {note}", file=sys.stderr)
    for why, n in sorted(imp.ignored.items()):
        print(f"# {n} record(s) ignored: {why}", file=sys.stderr)
    return EXIT_OK


def cmd_conform(args: argparse.Namespace) -> int:
    """Replay a capture's imported trace and compare the kernel with the model."""
    from explorer.conformance.conform import conform

    # one pause for the whole command: each stage pauses the collector for its own work, and
    # re-enabled between them it would rescan the million records the parse left alive
    with gc_paused():
        cap = _read_capture(args.capture)
        result = conform(cap)
    for note in cap.derived:
        print(f"# {note}", file=sys.stderr)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for d in result.divergences:
            print(
                f"capture line {d.line}: {d.kind}: kernel {d.observed}, model {d.predicted} "
                f"(step {d.step})"
            )
        for u in result.unexplained:
            print(f"capture line {u['line']}: unexplained: {u['text']}")
        verdict = "conforms" if result.ok else f"{len(result.divergences)} divergence(s)"
        ignored = ", ".join(f"{n} {why}" for why, n in result.ignored.items()) or "none"
        print(f"# {cap.source}: {result.observations} observations, {verdict}; ignored: {ignored}")
    if result.stopped is not None:
        print(f"{cap.source}: the replay stopped: {result.stopped}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK if result.ok else EXIT_VIOLATIONS


def add_import_and_conform(sub: Any) -> None:
    """Register ``import`` and ``conform`` on the subcommand parsers ``sub``."""
    im = sub.add_parser("import", help="a kernel capture (tools/capture/dpamt.bt) as a trace")
    im.add_argument("capture", help="capture file, or - for stdin")
    im.add_argument("-o", "--output", default="-", help="trace file (.jsonl) or - (stdout)")
    im.set_defaults(func=cmd_import)
    cf = sub.add_parser("conform", help="compare a kernel capture with the model's replay of it")
    cf.add_argument("capture", help="capture file, or - for stdin")
    cf.add_argument("--json", action="store_true", help="print one JSON object (the contract)")
    cf.set_defaults(func=cmd_conform)
