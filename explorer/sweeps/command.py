"""``sweep``: replay a trace over a grid of settings, on Dask."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from explorer.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_VIOLATIONS,
    UsageError,
    ascii_int,
    atomic_output,
    check_output_path,
    check_workers,
    read_trace,
    resolve_settings,
    same_file,
)


def _progress_bar(done: int, total: int, rate: float, eta: float) -> str:
    width = 30
    filled = width * done // total if total else width
    eta_text = "--" if eta == float("inf") else f"{eta:,.0f} s"
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} points"
        f"  {rate:,.1f} points/s  ETA {eta_text}  "
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """Replay a trace over a grid of settings on Dask (a scheduler, or a LocalCluster)."""
    import time

    from explorer.sweeps.sweep import (
        SchedulerUnreachable,
        SweepOutputError,
        grid_points,
        parse_vary,
        run_sweep,
    )

    check_workers(args.workers)
    check_output_path(args.out, "--out", [args.trace])
    if args.plot is not None:
        check_output_path(args.plot, "--plot", [args.trace])
    if (
        args.out != "-"
        and args.plot is not None
        and same_file(args.out, args.plot)  # a link to --out too (round 9)
    ):
        raise UsageError(f"--out and --plot are the same file: {args.out}")
    trace = read_trace(args.trace)
    base = resolve_settings(trace, args.set or [])
    grid = parse_vary(args.vary)
    points = grid_points(base, grid)
    scheduler = args.scheduler or os.environ.get("DPAMT_SCHEDULER") or None
    last = [0.0]

    def progress(done: int, total: int, rate: float, eta: float) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 0.2:
            last[0] = now
            print(_progress_bar(done, total, rate, eta), end="", file=sys.stderr, flush=True)

    try:
        rows = run_sweep(
            trace.events,
            points,
            scheduler=scheduler,
            workers=args.workers,
            out=args.out,
            progress=progress,
            trace=trace.title or trace.source,
            note=args.note or "",
        )
    except SchedulerUnreachable as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except SweepOutputError as exc:
        print(f"\nusage error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # a write that failed after the start (disk full, directory removed)
        where = exc.filename or args.out
        print(f"\nerror: writing {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    print(file=sys.stderr)
    errors = sum(1 for r in rows if r["status"] != "ok")
    if args.out != "-":
        print(
            f"{len(rows)} points ({errors} with an error) in {args.out}",
            file=sys.stderr,
        )
    if args.plot:
        from explorer.views.sweep import sweep_figure

        keys = list(grid)
        fig = sweep_figure(
            rows, x=f"setting.{keys[0]}", group=f"setting.{keys[1]}" if len(keys) > 1 else None
        )
        with atomic_output(args.plot) as f:
            f.write(fig.to_html(include_plotlyjs=True).encode("utf-8"))
        print(f"wrote the plot to {args.plot}", file=sys.stderr)
    return EXIT_VIOLATIONS if any(r["violations"] for r in rows) else EXIT_OK


def add_sweep(sub: Any) -> None:
    """Register ``sweep`` on the subcommand parsers ``sub``."""
    s = sub.add_parser("sweep", help="replay a trace over a grid of settings")
    s.add_argument("trace")
    s.add_argument("--vary", action="append", required=True, metavar="KEY=A..B|KEY=A,B")
    s.add_argument("--set", action="append", metavar="KEY=VALUE")
    s.add_argument(
        "--out",
        default="-",
        help="FILE.parquet or FILE.csv (written as points finish; a rerun resumes), "
        "or - (CSV on stdout)",
    )
    s.add_argument("--plot", help="write an HTML chart of the sweep")
    s.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="Dask scheduler to submit to (default: $DPAMT_SCHEDULER, else a local cluster)",
    )
    s.add_argument(
        "--workers",
        type=ascii_int,
        default=None,
        help="local cluster: worker processes (default: CPUs; 1: run in this process; "
        "at most 4 per CPU: each is a process doing CPU-bound work)",
    )
    s.add_argument("--note", help="free text written in the note column of every row")
    s.set_defaults(func=cmd_sweep)
