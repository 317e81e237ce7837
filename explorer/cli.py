"""``python -m explorer``: check, replay, explore, generate and sweep traces.

Exit status (a contract, scripts rely on it): 0 replayed with no violation (or: valid, written;
or explored completely with no violation); 1 replayed (or explored) with violations; 2 invalid
trace, impossible event, or bad usage; 3 ``explore`` reached its state limit (or was stopped)
before the search completed (nothing claimed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from explorer.model.errors import ImpossibleEvent, Problem, TraceError
from explorer.model.machine import Machine, batches
from explorer.model.settings import Settings
from explorer.model.summary import summary
from explorer.render import format_steps
from explorer.trace import Trace, parse_trace
from explorer.trace import limits as L
from explorer.trace.generate import WORKLOADS

EXIT_OK, EXIT_VIOLATIONS, EXIT_INVALID, EXIT_INCOMPLETE = 0, 1, 2, 3


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits with 2 too; keep our wording
        raise _UsageError(message)


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


def _print_problems(problems: Iterable[Problem], out: TextIO) -> None:
    for p in problems:
        print(p, file=out)


# ------------------------------------------------------------------ check
def cmd_check(args: argparse.Namespace) -> int:
    """Validate: the file's syntax and schema, then a dry run for events impossible in context."""
    trace = read_trace(args.trace)
    settings = resolve_settings(trace, args.set or [])
    m = Machine(settings, record=False, check=False)
    m.run(trace.events)
    if m.stopped is not None:
        d = m.stopped
        print(f"{trace.source}:{d.line}:1: {d.message} (event {d.event + 1})")
        return EXIT_INVALID
    print(f"OK: {trace.source}: {len(trace.events)} events, {m.nr_steps} steps")
    return EXIT_OK


# ------------------------------------------------------------------ replay
def cmd_replay(args: argparse.Namespace) -> int:
    trace = read_trace(args.trace)
    settings = resolve_settings(trace, args.set or [])
    events = trace.events
    m = Machine(settings, record=not args.json, check=True)
    out = sys.stdout
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


# ------------------------------------------------------------------ import / conform
def _read_capture(path: str) -> Any:
    """Read and parse a kernel capture (docs/capture.md); ``-`` for standard input."""
    from explorer.capture import parse_capture

    if path == "-":
        data, name = sys.stdin.buffer.read(L.MAX_UPLOAD_BYTES + 1), "<stdin>"
    else:
        name = os.path.basename(path)
        try:
            with open(path, "rb") as f:
                data = f.read(L.MAX_UPLOAD_BYTES + 1)
        except OSError as exc:
            raise TraceError(Problem(name, 0, 0, f"cannot read the file: {exc.strerror}")) from None
    return parse_capture(data, name)


def cmd_import(args: argparse.Namespace) -> int:
    """A kernel capture as a format-v1 trace (explorer/capture_import.py)."""
    from explorer.capture_import import import_capture
    from explorer.trace.write import dump_trace

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
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    for note in cap.unknown:
        print(f"# {note}", file=sys.stderr)
    for probe, n in sorted(imp.unused.items()):
        print(f"# {n} {probe} record(s) not used", file=sys.stderr)
    return EXIT_OK


def cmd_conform(args: argparse.Namespace) -> int:
    """Replay a capture's imported trace and compare the kernel with the model."""
    from explorer.capture_import import conform

    cap = _read_capture(args.capture)
    result = conform(cap)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for d in result.divergences:
            print(
                f"capture line {d.line}: {d.kind}: kernel {d.observed}, model {d.predicted} "
                f"(step {d.step})"
            )
        verdict = "conforms" if result.ok else f"{len(result.divergences)} divergence(s)"
        print(f"# {cap.source}: {result.observations} observations, {verdict}")
    if result.stopped is not None:
        print(f"{cap.source}: the replay stopped: {result.stopped}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK if result.ok else EXIT_VIOLATIONS


# ------------------------------------------------------------------ explore
def cmd_explore(args: argparse.Namespace) -> int:
    """Every interleaving of the trace's concurrent groups (explorer.explore). Needs generator
    frames, which the compiled engine does not have: under it, the search runs in a child
    process on the pure Python engine (same code, same results; the exit status and output
    passed through)."""
    from explorer.model import NATIVE

    if args.max_states < 1:
        raise _UsageError(f"--max-states must be at least 1, got {args.max_states}")
    if args.trace == "-":
        raise _UsageError("explore reads a trace file, not standard input: save it to a file")
    trace = read_trace(args.trace)
    settings = resolve_settings(trace, args.set or [])
    if NATIVE:
        import subprocess

        env = dict(os.environ, DPAMT_PURE="1")
        rest = sys.argv[1:] if args.argv is None else args.argv
        argv = [sys.executable, "-m", "explorer", *rest]
        return subprocess.run(argv, env=env, check=False).returncode
    from explorer.explore import explore

    progress = None
    if args.progress:  # for programs (the app): one line per 1,000 states

        def progress(states: int, text: str) -> None:
            print(f"progress states={states} {text}", file=sys.stderr, flush=True)

    elif not args.json and sys.stderr.isatty():

        def progress(states: int, text: str) -> None:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)

    result = explore(trace.events, settings, max_states=args.max_states, progress=progress)
    if args.write_pinned:
        _write_pinned(trace, settings, result, args.write_pinned)
    out = sys.stdout
    if args.json:
        json.dump(result, out, indent=None if args.compact else 2)
        out.write("\n")
    else:
        _print_exploration(result, out)
    if not result["complete"]:
        return EXIT_INCOMPLETE
    return EXIT_OK if result["ok"] else EXIT_VIOLATIONS


def _write_pinned(trace: Trace, settings: Settings, r: dict[str, Any], path: str) -> None:
    """The trace with the schedule of the first finding (else of the first outcome) pinned by
    ``schedule`` events: open it in the app, or replay it, to see that interleaving."""
    from explorer.explore import pin
    from explorer.trace.write import dump_trace

    if r["violations"]:
        orders, what = r["violations"][0]["orders"], f"finding {r['violations'][0]['code']}"
    elif r["outcomes"]:
        orders, what = r["outcomes"][0]["orders"], "outcome 1"
    else:
        print("nothing to pin: the search found no schedule", file=sys.stderr)
        return
    text = dump_trace(
        pin(trace.events, orders),
        title=f"{trace.title} (pinned: {what})",
        description=trace.description,
        settings=settings.to_dict(),
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path}: the trace pinned to the schedule of {what}", file=sys.stderr)


def _print_exploration(r: dict[str, Any], out: TextIO) -> None:
    state = "complete" if r["complete"] else "INCOMPLETE: " + r.get("stopped", "")
    out.write(
        f"# {r['groups']} concurrent group(s), {r['states']:,} states, {r['schedules']:,} "
        f"schedules, {r['end_states']} distinct outcome(s) in {r['seconds']:.2f} s ({state})\n"
    )
    for i, o in enumerate(r["outcomes"], 1):
        c = o["counters"]
        regions = ", ".join(
            f"r{k}: refcount {v['refcount']}{' pair' if v['pair'] else ''}"
            for k, v in o["regions"].items()
        )
        out.write(
            f"outcome {i}: {o['schedules']:,} schedule(s); lost races {c['pamt_lost_race']}, "
            f"PAMT.ADD {c['pamt_add']} (failed {c['pamt_add_failed']}), cache pages "
            f"{sum(o['pamt_cache'].values())}; {regions or 'no region'}"
            + (f"; {', '.join(o['diagnostics'])}" if o["diagnostics"] else "")
            + "\n"
        )
        out.write(f"  e.g. {' '.join(o['example'])}\n")
    for v in r["violations"]:
        out.write(
            f"{v['kind'].upper()} {v['code']} at step {v['step']} (group {v['group'] + 1}): "
            f"{v['message']}\n"
            f"  schedule: {' '.join(v['schedule'])}\n"
        )
    if "impossible" in r:
        out.write(f"# an event is impossible under some interleaving: {r['impossible']}\n")


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
    if args.workload == "boot":
        kwargs["teardown"] = args.teardown
    else:
        kwargs["zap_ratio"] = args.zap_ratio
    try:
        lines = WORKLOADS[args.workload](**kwargs)
        first = next(lines)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if args.output == "-":
        _write_lines(sys.stdout, first, lines)
    elif args.output.endswith(".gz"):
        with gzip.open(args.output, "wt", encoding="utf-8", compresslevel=6) as gz:
            _write_lines(gz, first, lines)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            _write_lines(f, first, lines)
    return EXIT_OK


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


# ------------------------------------------------------------------ sweep
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

    from explorer.sweep import (
        SchedulerUnreachable,
        SweepOutputError,
        grid_points,
        parse_vary,
        run_sweep,
    )

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
        fig.write_html(args.plot, include_plotlyjs=True)
        print(f"wrote the plot to {args.plot}", file=sys.stderr)
    return EXIT_VIOLATIONS if any(r["violations"] for r in rows) else EXIT_OK


def cmd_explore_grid(args: argparse.Namespace) -> int:
    """Every interleaving of several traces x a grid of settings, one Dask task per search
    (explorer.explore_grid): the race catalogue of every mode in one run."""
    from explorer.explore_grid import run_grid, write_rows
    from explorer.sweep import SchedulerUnreachable, grid_points, parse_vary

    if args.max_states < 1:
        raise _UsageError(f"--max-states must be at least 1, got {args.max_states}")
    traces = []
    grid = parse_vary(args.vary) if args.vary else {}
    for path in args.traces:
        if path == "-":
            raise _UsageError("explore-grid reads trace files, not standard input")
        trace = read_trace(path)
        base = resolve_settings(trace, args.set or [])  # each trace's own header, then --set
        with open(path, "rb") as f:
            traces.append((trace.source, f.read(), grid_points(base, grid) if grid else [base]))
    scheduler = args.scheduler or os.environ.get("DPAMT_SCHEDULER") or None

    def progress(done: int, total: int) -> None:
        print(f"\r{done} of {total} searches", end="", file=sys.stderr, flush=True)

    try:
        rows = run_grid(
            traces,
            max_states=args.max_states,
            scheduler=scheduler,
            workers=args.workers,
            progress=progress,
        )
    except SchedulerUnreachable as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    print(file=sys.stderr)
    write_rows(rows, args.out)
    for r in rows:
        print(
            f"{r['trace']} mode={r['mode']}: {r['status']}, {r['states'] or 0:,} states, "
            f"{r['end_states'] or 0} outcomes, findings {r['findings'] or 'none'}"
            + (f" ({r['error']})" if r["error"] else ""),
            file=sys.stderr,
        )
    if any(r["status"] == "error" for r in rows):
        return EXIT_INVALID
    if any(r["findings"] for r in rows):
        return EXIT_VIOLATIONS
    return EXIT_INCOMPLETE if any(r["status"] != "done" for r in rows) else EXIT_OK


# ------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m explorer",
        description="DPAMT Explorer: check, replay, "
        "generate and sweep Dynamic PAMT fault-path traces.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
        type=int,
        default=1_000_000,
        help="stop (exit 3, nothing claimed) past this many states (default 1,000,000)",
    )
    x.add_argument(
        "--write-pinned",
        metavar="FILE",
        help="write the trace with the first finding's schedule (else outcome 1's) pinned",
    )
    x.add_argument(
        "--progress",
        action="store_true",
        help="print 'progress states=N ...' lines on stderr every 1,000 states (for programs)",
    )
    x.set_defaults(func=cmd_explore, argv=None)
    xg = sub.add_parser(
        "explore-grid",
        help="explore several traces x a grid of settings, one Dask task per search",
    )
    xg.add_argument("traces", nargs="+", help="trace files")
    xg.add_argument("--vary", action="append", metavar="KEY=A..B|KEY=A,B")
    xg.add_argument("--set", action="append", metavar="KEY=VALUE")
    xg.add_argument("--max-states", type=int, default=1_000_000)
    xg.add_argument("--out", default="-", help="FILE.parquet or FILE.csv, or - (CSV on stdout)")
    xg.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="Dask scheduler")
    xg.add_argument(
        "--workers", type=int, default=None, help="local cluster workers (1: no cluster)"
    )
    xg.set_defaults(func=cmd_explore_grid)
    g = sub.add_parser("generate", help="write a synthetic workload trace")
    g.add_argument("workload", choices=sorted(WORKLOADS))
    g.add_argument("--tds", type=int, default=1)
    g.add_argument("--vcpus", type=int, default=2)
    g.add_argument("--faults", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--add-pages", type=int, default=16, help="PAGE.ADD faults per TD before finalize"
    )
    g.add_argument(
        "--host-memory-mib", type=int, default=4096, help="setting written in the header"
    )
    g.add_argument("--teardown", action="store_true", help="boot: destroy the TDs at the end")
    g.add_argument("--zap-ratio", type=float, default=0.3, help="churn: zaps per round")
    g.add_argument("-o", "--output", default="-", help="file (.jsonl or .jsonl.gz) or - (stdout)")
    g.set_defaults(func=cmd_generate)
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
        type=int,
        default=None,
        help="local cluster: worker processes (default: CPUs; 1: run in this process)",
    )
    s.add_argument("--note", help="free text written in the note column of every row")
    s.set_defaults(func=cmd_sweep)
    im = sub.add_parser("import", help="a kernel capture (tools/capture/dpamt.bt) as a trace")
    im.add_argument("capture", help="capture file, or - for stdin")
    im.add_argument("-o", "--output", default="-", help="trace file (.jsonl) or - (stdout)")
    im.set_defaults(func=cmd_import)
    cf = sub.add_parser("conform", help="compare a kernel capture with the model's replay of it")
    cf.add_argument("capture", help="capture file, or - for stdin")
    cf.add_argument("--json", action="store_true", help="print one JSON object (the contract)")
    cf.set_defaults(func=cmd_conform)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if argv is not None and hasattr(args, "argv"):
            args.argv = list(argv)
        code: int = args.func(args)
        return code
    except _UsageError as exc:
        print(f"usage error: {exc} (see python -m explorer --help)", file=sys.stderr)
        return EXIT_INVALID
    except ImpossibleEvent as exc:
        _print_problems(exc.problems, sys.stderr)
        return EXIT_INVALID
    except TraceError as exc:
        _print_problems(exc.problems, sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        return EXIT_OK
