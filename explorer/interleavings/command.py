"""``explore`` and ``explore-grid``: every interleaving of a trace, or of many traces x settings."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from explorer.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_VIOLATIONS,
    UsageError,
    ascii_float,
    ascii_int,
    atomic_output,
    check_compact,
    check_output_path,
    check_trace_output,
    check_workers,
    read_trace,
    read_trace_and_bytes,
    resolve_settings,
    trace_file_bytes,
)
from explorer.ingest import Trace
from explorer.interleavings.allocator import EXPLORE_ALLOCATOR, explore_settings, named_keys
from explorer.model.settings import Settings


def cmd_explore(args: argparse.Namespace) -> int:
    """Every interleaving of the trace's concurrent groups (explorer.interleavings.search). Needs generator
    frames, which the compiled engine does not have: under it, the search runs in a child
    process on the search's engine (``DPAMT_PURE=search``: the kernel's generators in Python,
    the search compiled; same code, same results; the exit status and output passed
    through)."""
    from explorer.model import NATIVE

    check_compact(args)
    if args.max_states < 1:
        raise UsageError(f"--max-states must be at least 1, got {args.max_states}")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise UsageError(f"--max-seconds must be more than 0, got {args.max_seconds}")
    if args.trace == "-":
        raise UsageError("explore reads a trace file, not standard input: save it to a file")
    if args.write_pinned:
        check_trace_output(args.write_pinned, "--write-pinned", [args.trace])
    trace = read_trace(args.trace)
    named = named_keys(trace.settings, args.set or [])
    settings = explore_settings(resolve_settings(trace, args.set or []), named)
    if NATIVE:
        from explorer.interleavings.child import run_forwarding, search_env

        env = search_env()
        rest = sys.argv[1:] if args.argv is None else args.argv
        return run_forwarding([sys.executable, "-m", "explorer", *rest], env)
    from explorer.interleavings.child import cancel_on_signals
    from explorer.interleavings.search import explore

    if args.progress:  # for programs (the app): a line every half second, from the start

        def progress(states: int, text: str) -> None:
            print(f"progress states={states} {text}", file=sys.stderr, flush=True)

    elif sys.stderr.isatty():

        def progress(states: int, text: str) -> None:
            print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)

    else:  # a log: a plain line every half second

        def progress(states: int, text: str) -> None:
            print(text, file=sys.stderr, flush=True)

    result = explore(
        trace.events,
        settings,
        max_states=args.max_states,
        max_seconds=args.max_seconds,
        progress=progress,
        cancel=cancel_on_signals(),
        fair=not args.unfair,
        reduction=not args.no_reduction,
    )
    if sys.stderr.isatty() and not args.progress:
        print(file=sys.stderr)
    if args.write_pinned:
        _write_pinned(trace, settings, result, args.write_pinned)
    out = sys.stdout
    if args.json:
        # the settings the search ran with (the allocator its default when none was named)
        json.dump(
            {**result, "settings": settings.to_dict()}, out, indent=None if args.compact else 2
        )
        out.write("\n")
    else:
        if settings.allocator == EXPLORE_ALLOCATOR and "allocator" not in named:
            out.write(
                f"# allocator {EXPLORE_ALLOCATOR}: the search's default (per-CPU page lists, as "
                "the kernel's; --set allocator=lowest searches the global allocator's orders)\n"
            )
        _print_exploration(result, out)
    if "impossible" in result:  # an event the engine refuses where a schedule brings it
        at = result["impossible_at"]
        print(
            f"{trace.source}:{at['line']}:1: {result['impossible']} ({_impossible_where(at)})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if not result["complete"]:
        return EXIT_INCOMPLETE
    return EXIT_OK if result["ok"] else EXIT_VIOLATIONS


def _write_pinned(trace: Trace, settings: Settings, r: dict[str, Any], path: str) -> None:
    """The trace with the schedule of the first finding (else of the first outcome) pinned by
    ``schedule`` events: open it in the app, or replay it, to see that interleaving."""
    from explorer.ingest.write import dump_trace
    from explorer.interleavings.search import pin

    if r["violations"]:
        orders, what = r["violations"][0]["orders"], f"finding {r['violations'][0]['code']}"
    elif r["outcomes"]:
        orders, what = r["outcomes"][0]["orders"], "outcome 1"
    elif r.get("reached"):  # a stopped search: an end state it had reached
        orders, what = r["reached"][0]["orders"], "the first outcome reached before the stop"
    else:
        print("nothing to pin: the search found no schedule", file=sys.stderr)
        return
    text = dump_trace(
        pin(trace.events, orders),
        title=f"{trace.title} (pinned: {what})",
        description=trace.description,
        settings=settings.to_dict(),
    )
    with atomic_output(path) as f:
        f.write(trace_file_bytes(path, text))
    print(f"wrote {path}: the trace pinned to the schedule of {what}", file=sys.stderr)


def _print_exploration(r: dict[str, Any], out: TextIO) -> None:
    if r["complete"]:
        state = "complete"
    else:
        c = r["covered"]
        state = (
            f"INCOMPLETE: {r.get('stopped', '')}; covered {c['groups_done']} of "
            f"{c['groups_total']} group(s) before it"
        )
    searched = "searched (reduced)" if r.get("reduction") else "(full search)"
    out.write(
        f"# {r['groups']} concurrent group(s), {r['states']:,} states {searched}, "
        f"{r['schedules']:,} schedules {searched}, {len(r['outcomes'])} distinct outcome(s) "
        f"({r['end_states']} end state(s)) in {r['seconds']:.2f} s ({state})\n"
    )
    for i, o in enumerate(r["outcomes"], 1):
        _print_outcome(
            f"outcome {i}: {o['schedules']:,} schedule(s)"
            + (" searched" if r.get("reduction") else ""),
            o,
            out,
        )
    reached = r.get("reached", [])
    if reached:
        ends = sum(o.get("variants", 1) for o in reached)
        c = r["covered"]
        of = (
            f", of the first {c['end_states_summarised']:,} of {c['end_states_found']:,} end "
            "states found (the rest not summarised: a time bound)"
            if c["end_states_summarised"] < c["end_states_found"]
            else ""
        )
        out.write(
            f"# reached before the stop: {len(reached)} distinct outcome(s) ({ends} end "
            f"state(s){of}), each with a schedule that reaches it; not every outcome (the "
            "search did not finish), and no schedule counts\n"
        )
        for i, o in enumerate(reached, 1):
            _print_outcome(f"reached {i}", o, out)
    for v in r["violations"]:
        out.write(
            f"{v['kind'].upper()} {v['code']} at step {v['step']} ({_where(v['group'])}): "
            f"{v['message']}\n"
            f"  schedule: {' '.join(v['schedule'])}\n"
        )
    if "impossible" in r:
        at = r["impossible_at"]
        out.write(
            f"# line {at['line']} (event {at['event']}) is impossible "
            f"{_impossible_where(at)}: {r['impossible']}\n"
        )


def _impossible_where(at: dict[str, Any]) -> str:
    """Where an impossible event was met (the result's ``impossible_at``): in the trace's one
    order before any group, or under the schedule that reaches it."""
    if at["group"] < 0:
        return "before any concurrent group"
    return f"under the schedule {' '.join(at['schedule'])} (group {at['group'] + 1})"


def _where(group: int) -> str:
    """A finding's place: in (or in the single-CPU batches after) group ``group + 1``, or in
    those before the first group (-1), which run in one order."""
    return "before the first concurrent group" if group < 0 else f"group {group + 1}"


def _print_outcome(head: str, o: dict[str, Any], out: TextIO) -> None:
    """One outcome (or one reached before a stop): what it leaves, its end states, kernel
    paths and a schedule that reaches it."""
    c = o["counters"]
    regions = ", ".join(
        f"r{k}: refcount {v['refcount']}{' pair' if v['pair'] else ''}"
        for k, v in o["regions"].items()
    )
    out.write(
        f"{head}; lost races {c['pamt_lost_race']}, "
        f"PAMT.ADD {c['pamt_add']} (failed {c['pamt_add_failed']}), cache pages "
        f"{sum(o['pamt_cache'].values())}; {regions or 'no region'}"
        + (f"; {', '.join(o['diagnostics'])}" if o["diagnostics"] else "")
        + "\n"
    )
    if o.get("variants", 1) > 1:
        out.write(f"  {o['variants']} end states (apart in page numbers or counts of retries)\n")
    for p in o.get("paths", [])[:4]:
        out.write("  path: " + "; ".join(f"{c}: {' > '.join(q)}" for c, q in p.items()) + "\n")
    if len(o.get("paths", [])) > 4:
        out.write(f"  ... {len(o['paths']) - 4} more path(s)\n")
    out.write(f"  e.g. {' '.join(o['example'])}\n")


def cmd_explore_grid(args: argparse.Namespace) -> int:
    """Every interleaving of several traces x a grid of settings, one Dask task per search
    (explorer.interleavings.grid): the race catalogue of every mode in one run."""
    from explorer.interleavings.grid import run_grid, write_rows
    from explorer.sweeps.sweep import SchedulerUnreachable, grid_points, parse_vary

    if args.max_states < 1:
        raise UsageError(f"--max-states must be at least 1, got {args.max_states}")
    check_workers(args.workers)
    check_output_path(args.out, "--out", args.traces)
    traces = []
    grid = parse_vary(args.vary) if args.vary else {}
    for path in args.traces:
        if path == "-":
            raise UsageError("explore-grid reads trace files, not standard input")
        # the bytes the parse read (a second open would be unbounded, and a FIFO is empty twice)
        trace, data = read_trace_and_bytes(path)
        base = resolve_settings(trace, args.set or [])  # each trace's own header, then --set
        named = named_keys([*trace.settings, *grid], args.set or [])
        points = grid_points(base, grid) if grid else [base]
        traces.append((trace.source, data, [explore_settings(p, named) for p in points]))
    scheduler = args.scheduler or os.environ.get("DPAMT_SCHEDULER") or None

    def progress(done: int, total: int) -> None:
        print(f"\r{done} of {total} searches", end="", file=sys.stderr, flush=True)

    try:
        rows = run_grid(
            traces,
            max_states=args.max_states,
            reduction=not args.no_reduction,
            scheduler=scheduler,
            workers=args.workers,
            progress=progress,
        )
    except SchedulerUnreachable as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(file=sys.stderr)
    if args.out == "-":
        write_rows(rows, None, parquet=False)
    else:
        with atomic_output(args.out) as f:
            write_rows(rows, f, parquet=args.out.endswith(".parquet"))
    for r in rows:
        print(
            f"{r['trace']} mode={r['mode']}: {r['status']}, {r['states'] or 0:,} states "
            f"{'searched (reduced)' if r['reduction'] else '(full search)'}, "
            f"{r['end_states'] or 0} outcomes, findings {r['findings'] or 'none'}"
            + (f" ({r['error']})" if r["error"] else ""),
            file=sys.stderr,
        )
    if any(r["status"] == "error" for r in rows):
        return EXIT_INVALID
    if any(r["findings"] for r in rows):
        return EXIT_VIOLATIONS
    return EXIT_INCOMPLETE if any(r["status"] != "done" for r in rows) else EXIT_OK


def add_explore_and_grid(sub: Any) -> None:
    """Register ``explore`` and ``explore-grid`` on the subcommand parsers ``sub``."""
    x = sub.add_parser(
        "explore",
        help="every interleaving of the trace's concurrent groups: outcomes and violations",
    )
    x.add_argument("trace", help="trace file (.jsonl, .jsonl.gz, .csv)")
    x.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    x.add_argument("--json", action="store_true", help="print one JSON object (the contract)")
    x.add_argument("--compact", action="store_true", help="with --json: on one line")
    x.add_argument(
        "--max-states",
        type=ascii_int,
        default=1_000_000,
        help="stop (exit 3, nothing claimed) past this many states (default 1,000,000)",
    )
    x.add_argument(
        "--max-seconds",
        type=ascii_float,
        default=None,
        metavar="S",
        help="stop (exit 3, nothing claimed, what was covered printed) after S seconds",
    )
    x.add_argument(
        "--unfair",
        action="store_true",
        help="the plain search: every lap of a retry loop a state, max_retries ends the loops "
        "(no fair-cycle livelock check; the reference the fair search is tested against)",
    )
    x.add_argument(
        "--no-reduction",
        action="store_true",
        help="the full search: every order of independent turns too (exact state and schedule "
        "counts; by default the partial-order reduction searches one order per class)",
    )
    x.add_argument(
        "--write-pinned",
        metavar="FILE",
        help="write the trace with the first finding's schedule (else outcome 1's; of a search "
        "stopped by a limit, the first outcome it reached) pinned",
    )
    x.add_argument(
        "--progress",
        action="store_true",
        help="print 'progress states=N ...' lines on stderr every half second (for programs)",
    )
    x.set_defaults(func=cmd_explore, argv=None)
    xg = sub.add_parser(
        "explore-grid",
        help="explore several traces x a grid of settings, one Dask task per search",
    )
    xg.add_argument("traces", nargs="+", help="trace files")
    xg.add_argument("--vary", action="append", metavar="KEY=A..B|KEY=A,B")
    xg.add_argument("--set", action="append", metavar="KEY=VALUE")
    xg.add_argument("--max-states", type=ascii_int, default=1_000_000)
    xg.add_argument(
        "--no-reduction",
        action="store_true",
        help="the full search: every order of independent turns too (exact state and schedule "
        "counts; by default the partial-order reduction searches one order per class)",
    )
    xg.add_argument("--out", default="-", help="FILE.parquet or FILE.csv, or - (CSV on stdout)")
    xg.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="Dask scheduler")
    xg.add_argument(
        "--workers", type=ascii_int, default=None, help="local cluster workers (1: no cluster)"
    )
    xg.set_defaults(func=cmd_explore_grid)
