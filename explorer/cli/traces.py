"""``check``, ``replay`` and ``generate``: the commands on a trace itself (no analysis)."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from explorer.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_VIOLATIONS,
    UsageError,
    ascii_float,
    ascii_int,
    atomic_output,
    check_compact,
    check_trace_output,
    read_trace,
    resolve_settings,
)
from explorer.ingest import limits as L
from explorer.ingest.generate import WORKLOADS
from explorer.model.errors import TraceError
from explorer.model.events import reserved_pfns
from explorer.model.machine import Machine, batches
from explorer.model.records import Step
from explorer.model.settings import Settings
from explorer.model.state import KernelState
from explorer.model.summary import summary
from explorer.replay.render import format_steps


# ------------------------------------------------------------------ check
def cmd_check(args: argparse.Namespace) -> int:
    """Validate: the file's syntax and schema, then a dry run for events impossible in context."""
    trace = read_trace(args.trace)
    settings = resolve_settings(trace, args.set or [])
    m = Machine(settings, record=False, check=False)
    m.mem.pin(reserved_pfns(trace.events))  # (an imported capture's pages: as conform replays)
    m.run(trace.events)
    if m.stopped is not None:
        d = m.stopped
        print(f"{trace.source}:{d.line}:1: {d.message} (event {d.event + 1})")
        return EXIT_INVALID
    print(f"OK: {trace.source}: {len(trace.events)} events, {m.nr_steps} steps")
    return EXIT_OK


# ------------------------------------------------------------------ replay
def cmd_replay(args: argparse.Namespace) -> int:
    check_compact(args)
    trace = read_trace(args.trace)
    settings = resolve_settings(trace, args.set or [])
    events = trace.events
    m = Machine(settings, record=not args.json, check=True)
    m.mem.pin(reserved_pfns(events))
    out = sys.stdout
    if not args.json:
        # each step's line as it is taken, not a batch's steps held until its end (a batch of
        # millions of retries held them all: 1.3 GB for a 265-byte trace); the last step stays
        # until the batch ends, which may add diagnostics to it
        def emit(machine: KernelState, step: Step) -> None:
            held = machine.steps
            if len(held) > 1:
                for line in format_steps(held[:-1]):
                    out.write(line + "\n")
                del held[:-1]

        m.on_step = emit
    for start, end in batches(events):
        if m.stopped is not None:
            break
        m.run_batch((i, events[i]) for i in range(start, end))
        if not args.json:
            for line in format_steps(m.steps):
                out.write(line + "\n")
            m.steps.clear()
    result = summary(m, len(events))
    if args.json:
        json.dump(result, out, indent=None if args.compact else 2, sort_keys=False)
        out.write("\n")
    else:
        c = result["counters"]
        out.write(
            f"# {len(events)} events, {m.nr_steps} steps; "
            + " ".join(f"{k}={v}" for k, v in c.items())
            + "\n"
        )
        for d in result["diagnostics"]:
            out.write(
                f"# {d['kind']} {d['code']} at step {d['step']} (line {d['line']}): {d['message']}\n"
            )
    if m.stopped is not None:
        print(f"{trace.source}:{m.stopped.line}:1: {m.stopped.message}", file=sys.stderr)
        return EXIT_INVALID
    return (
        EXIT_VIOLATIONS if any(d["kind"] == "violation" for d in result["diagnostics"]) else EXIT_OK
    )


# ------------------------------------------------------------------ generate
def cmd_generate(args: argparse.Namespace) -> int:
    kwargs: dict[str, Any] = {
        "tds": args.tds,
        "vcpus": args.vcpus,
        "faults": args.faults,
        "seed": args.seed,
        "add_pages": args.add_pages,
        "host_memory_mib": args.host_memory_mib,
    }
    # (each workload's own option, refused on the other: it was ignored without a word)
    if args.workload == "boot":
        if args.zap_ratio is not None:
            raise UsageError("--zap-ratio is churn's (zaps per round): boot maps, it does not zap")
        kwargs["teardown"] = args.teardown
    else:
        if args.teardown:
            raise UsageError(
                "--teardown is boot's (destroy the TDs at the end): churn ends with its TDs "
                "alive; use boot --teardown, or add td_destroy lines"
            )
        kwargs["zap_ratio"] = 0.3 if args.zap_ratio is None else args.zap_ratio
    _check_generate_sizes(args)
    check_trace_output(args.output, "-o")
    try:
        lines = WORKLOADS[args.workload](**kwargs)
        first = next(lines)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.output == "-":
        _write_lines(sys.stdout, first, lines)
        return EXIT_OK
    with atomic_output(args.output) as raw:
        if args.output.endswith(".gz"):
            with (
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz,
                io.TextIOWrapper(gz, encoding="utf-8") as text,
            ):
                _write_lines(text, first, lines)
        else:
            plain = io.TextIOWrapper(raw, encoding="utf-8")
            _write_lines(plain, first, lines)
            plain.flush()
            plain.detach()  # the raw file stays open for atomic_output to sync and rename
    return EXIT_OK


def _check_generate_sizes(args: argparse.Namespace) -> None:
    """Refuse, before writing a line, a workload whose trace ``check`` would refuse anyway.

    Round 9: ``--faults``, ``--vcpus`` or ``--add-pages`` of 10**22 wrote without end (the
    generator streams, so nothing bounded it), a negative ``--add-pages`` was silently 0, and a
    ``--host-memory-mib`` of -1 was written into the header of a trace every command then
    refused. The bounds are the trace format's (:mod:`explorer.ingest.limits`): ids up to
    MAX_ID, events up to MAX_EVENTS (setup, faults and at most one zap per round), the
    setting's own range (:class:`explorer.model.settings.Settings`)."""
    for flag, value in (("--tds", args.tds), ("--vcpus", args.vcpus)):
        if value > L.MAX_ID + 1:
            raise UsageError(f"{flag} {value}: at most {L.MAX_ID + 1} (ids up to MAX_ID)")
    if args.add_pages < 0:
        raise UsageError(f"--add-pages {args.add_pages}: cannot be negative")
    if args.faults < 0:
        raise UsageError(f"--faults {args.faults}: cannot be negative")
    vcpus = max(1, args.vcpus)
    events = args.tds * (args.add_pages + 3) + vcpus + args.faults
    events += args.faults // vcpus + 1  # churn: a zap at most per round
    if events > L.MAX_EVENTS:
        raise UsageError(
            f"the workload would have up to {events:,} events, over the limit of "
            f"{L.MAX_EVENTS:,} a trace may hold (MAX_EVENTS): fewer --faults, --add-pages or --tds"
        )
    try:
        Settings().with_overrides({"host_memory_mib": args.host_memory_mib}, "--host-memory-mib")
    except TraceError as exc:
        raise UsageError("; ".join(str(p) for p in exc.problems)) from None


def _write_lines(out: TextIO, first: str, lines: Iterable[str]) -> None:
    out.write(first + "\n")
    buf: list[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= 4096:
            out.write("\n".join(buf) + "\n")
            buf.clear()
    if buf:
        out.write("\n".join(buf) + "\n")


def add_check_and_replay(sub: Any) -> None:
    """Register ``check`` and ``replay`` on the subcommand parsers ``sub``."""
    c = sub.add_parser("check", help="validate a trace (schema, then a dry run)")
    c.add_argument("trace", help="trace file (.jsonl, .jsonl.gz, .csv) or - for stdin")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    c.set_defaults(func=cmd_check)
    r = sub.add_parser("replay", help="replay a trace: one line per step, or --json")
    r.add_argument("trace")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    r.add_argument("--json", action="store_true", help="print one JSON summary of the final state")
    r.add_argument("--compact", action="store_true", help="with --json: on one line")
    r.set_defaults(func=cmd_replay)


def add_generate(sub: Any) -> None:
    """Register ``generate`` on the subcommand parsers ``sub``."""
    g = sub.add_parser("generate", help="write a synthetic workload trace")
    g.add_argument("workload", choices=sorted(WORKLOADS))
    g.add_argument("--tds", type=ascii_int, default=1)
    g.add_argument("--vcpus", type=ascii_int, default=2)
    g.add_argument("--faults", type=ascii_int, default=1000)
    g.add_argument("--seed", type=ascii_int, default=0)
    g.add_argument(
        "--add-pages", type=ascii_int, default=16, help="PAGE.ADD faults per TD before finalize"
    )
    g.add_argument(
        "--host-memory-mib", type=ascii_int, default=4096, help="setting written in the header"
    )
    g.add_argument("--teardown", action="store_true", help="boot: destroy the TDs at the end")
    g.add_argument(
        "--zap-ratio", type=ascii_float, default=None, help="churn: zaps per round (default 0.3)"
    )
    g.add_argument("-o", "--output", default="-", help="file (.jsonl or .jsonl.gz) or - (stdout)")
    g.set_defaults(func=cmd_generate)
