"""``make bench``: the timeline's speed and memory, figures printed.

Two parts: the generator's ``boot`` workload at 100k and 1M faults, and a **matrix** of workload
shapes the generator does not write (:mod:`explorer.ingest.shapes`: other key orders and integer
notations, runs without ``t``, bursts, zaps, teardown, TD lifecycles) crossed with the settings a
reviewer picks (allocator, schedule, mode, EPT levels) and the input classes (JSON Lines, CSV,
gzip: :data:`INPUTS`), each cell 100k faults by default. Every cell prints the parse against its
floor (decoding the lines alone) as well as parse + replay.

Never asserted in tests (shared machines are noisy); compare timings as ratios within one run.
``python -m explorer.bench [--quick] [--matrix-faults N] [--only matrix|boot|capture] [--write FILE]``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from typing import Any

from explorer.ingest import parse_trace
from explorer.ingest.generate import boot
from explorer.ingest.shapes import write as write_shape
from explorer.model import NATIVE
from explorer.model.constants import MODES
from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline, replay
from explorer.views.region_map import region_map_stats

TARGETS = {
    "replay_events_per_s": 100_000,
    "parse_replay_ratio": 3.0,
    "state_at_median_ms": 20.0,
    "bytes_per_event": 200,
    "region_map_524288_ms": 300.0,
    "parse_replay_vs_json": 6.0,
    "parse_vs_floor": 1.5,
}

#: How a cell's trace is handed to the parser (``"input"`` in a cell's settings, default
#: ``jsonl``): the shape's JSON Lines as written, the same gzipped (``.jsonl.gz``: the parser
#: decompresses as it reads), or the same events as CSV (:func:`csv_trace`). Each has its floor,
#: what merely decoding its lines costs (:func:`floor`).
INPUTS = ("jsonl", "gzip", "csv")

#: The matrix: (workload shape, settings on top of the trace's header). Every shape with the
#: defaults, then each allocator, schedule, mode and EPT depth on the shapes where it changes the
#: most, and mixtures (the acceptance matrix is not ours: this covers the class, not cells).
#: 1 TiB of host memory, in MiB (a host_memory_mib override).
TIB_MIB = 1 << 20
#: Pages of a 2 MiB region (the unit a refault cell zaps to 0 and faults again).
_REGION = 512


def refault_trace(faults: int, seed: int = 1, vcpus: int = 8, tds: int = 2) -> bytes:
    """Refault churn, a class the shapes do not write: each vCPU in turn faults a whole 2 MiB
    region of its range (its pages in a shuffled order), zaps every page of it (the region's
    DPAMT refcount falls to 0 and its PAMT pages are freed, ``tdx_pamt_put``) and faults it
    again (``tdx_pamt_get`` allocates them anew), so DPAMT pages come and go all the time;
    ``t`` advances every 8 events (concurrent groups). Integers in decimal or hex by a seeded
    coin, as uploads from other tools write them. ``faults`` counts the faults written."""
    rng = random.Random(seed)
    lines = [
        json.dumps(
            {
                "format": "dpamt-trace",
                "version": 1,
                "title": "refault",
                "settings": {"host_memory_mib": 65536},
            }
        )
    ]
    lines += [json.dumps({"op": "td_create", "td": td}) for td in range(tds)]
    lines += [json.dumps({"op": "vcpu_create", "td": v % tds, "vcpu": v}) for v in range(vcpus)]
    lines += [json.dumps({"op": "td_finalize", "td": td}) for td in range(tds)]
    done = n = 0
    while done < faults:
        v = rng.randrange(vcpus)
        base = (v << 20) + rng.randrange((1 << 20) // _REGION) * _REGION
        pages = list(range(base, base + _REGION))
        for phase in ("fault", "zap", "fault"):
            rng.shuffle(pages)
            for gfn in pages:
                g: int | str = hex(gfn) if rng.random() < 0.5 else gfn
                obj: dict[str, Any] = {"op": phase, "gfn": g, "t": n // 8}
                obj["vcpu" if phase == "fault" else "td"] = v if phase == "fault" else v % tds
                lines.append(json.dumps(obj))
                n += 1
                done += phase == "fault"
                if done >= faults:
                    break
            if done >= faults:
                break
    return ("\n".join(lines) + "\n").encode()


#: Cell shapes the bench writes itself (the others are :mod:`explorer.ingest.shapes`).
BENCH_SHAPES = {"refault": refault_trace}

MATRIX: tuple[tuple[str, dict[str, Any]], ...] = (
    ("runs", {}),
    ("runs", {"allocator": "random"}),
    ("runs", {"allocator": "spread", "ept_levels": 5}),
    ("concurrent", {}),
    ("concurrent", {"schedule": "random"}),
    ("concurrent", {"schedule": "sequential"}),
    ("concurrent", {"allocator": "random", "schedule": "random"}),
    ("concurrent", {"allocator": "spread", "ept_levels": 5}),
    *(("concurrent", {"mode": m}) for m in MODES if m not in ("v6", "sleeping-under-lock")),
    ("bursty", {}),
    ("bursty", {"allocator": "random", "ept_levels": 5, "schedule": "random"}),
    ("churn", {}),
    ("churn", {"mode": "v6-locked"}),
    ("churn", {"allocator": "spread", "schedule": "random"}),
    ("lifecycle", {}),
    ("lifecycle", {"allocator": "random", "mode": "v5-hint"}),
    ("fleet", {}),
    ("fleet", {"allocator": "spread", "schedule": "random"}),
    # input classes (issue 28): the same shapes read from CSV and from gzip
    ("runs", {"input": "csv"}),
    ("churn", {"input": "csv"}),
    ("fleet", {"input": "csv", "allocator": "random"}),
    ("concurrent", {"input": "gzip"}),
    ("lifecycle", {"input": "gzip", "allocator": "random"}),
    ("churn", {"input": "gzip", "mode": "v6-locked"}),
    # 1 TiB hosts: the allocators' structures must not cost what the host memory is
    ("runs", {"host_memory_mib": TIB_MIB}),
    ("runs", {"host_memory_mib": TIB_MIB, "allocator": "random"}),
    ("concurrent", {"host_memory_mib": TIB_MIB, "allocator": "spread"}),
    # refault churn: whole 2 MiB regions faulted, zapped to 0 pages and faulted again
    ("refault", {}),
    ("refault", {"allocator": "random"}),
    ("refault", {"input": "csv", "mode": "v6-locked"}),
)


def seek_latencies(tl: Timeline, samples: int, budget_s: float) -> list[float]:
    """``state_at`` of up to ``samples`` random steps (seeded: the same steps every run) within
    ``budget_s`` seconds, in ms, sorted."""
    rng = random.Random(7)
    lat: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(lat) < samples and time.perf_counter() < deadline:
        i = rng.randrange(tl.nr_steps)
        t = time.perf_counter()
        tl.state_at(i)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return lat


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def machine_facts() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def bench_trace(faults: int, state_at_samples: int, state_at_budget_s: float) -> dict[str, Any]:
    text = "\n".join(boot(tds=2, vcpus=8, faults=faults, seed=1, host_memory_mib=65536)) + "\n"
    data = text.encode()
    gc.collect()
    rss0 = _rss()
    t0 = time.perf_counter()
    trace = parse_trace(data, "bench.jsonl")
    t_parse = time.perf_counter() - t0
    gc.collect()
    rss1 = _rss()
    settings = Settings().with_overrides(trace.settings)
    t0 = time.perf_counter()
    tl = replay(trace.events, settings)
    t_replay = time.perf_counter() - t0
    gc.collect()
    rss2 = _rss()
    lat = seek_latencies(tl, state_at_samples, state_at_budget_s)
    n_events = tl.nr_events
    parts = tl.memory_bytes()
    held = sum(parts.values())
    return {
        "faults": faults,
        "events": n_events,
        "steps": tl.nr_steps,
        "parse_s": t_parse,
        "replay_s": t_replay,
        "parse_replay_s": t_parse + t_replay,
        "parse_replay_ratio": (t_parse + t_replay) / t_parse,
        "replay_events_per_s": faults / t_replay,
        "state_at_samples": len(lat),
        "state_at_median_ms": statistics.median(lat) if lat else float("nan"),
        "state_at_p95_ms": lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
        "events_bytes": rss1 - rss0,
        "timeline_bytes": held,
        "bytes_per_event": held / n_events,
        "bytes_per_step": held / max(tl.nr_steps, 1),
        "held": parts,
        "rss_bytes_per_event": (rss2 - rss1) / n_events,
        "event_objects_bytes_per_event": (rss1 - rss0) / n_events,
        "checkpoints": f"{len(tl._checkpoints)} keyframes, {len(tl._deltas)} deltas",
    }


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _json_lines(data: bytes) -> int:
    n = 0
    loads = json.loads
    for line in data.splitlines():
        loads(line)
        n += 1
    return n


#: The columns of :func:`csv_trace` (every field the shapes write).
_CSV_COLUMNS = ("op", "td", "vcpu", "gfn", "t")


def csv_trace(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """A shape's JSON Lines as CSV (docs/trace-format.md: a header row, one event per row,
    integers in decimal, hex kept where the line had it) and the settings of its header line,
    which CSV has no place for."""
    lines = data.decode().splitlines()
    settings: dict[str, Any] = json.loads(lines[0]).get("settings", {})
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(_CSV_COLUMNS)
    for line in lines[1:]:
        obj = json.loads(line)
        w.writerow(["" if obj.get(c) is None else obj[c] for c in _CSV_COLUMNS])
    return out.getvalue().encode(), settings


def _csv_rows(data: bytes) -> int:
    return sum(1 for _ in csv.reader(io.StringIO(data.decode())))


def _gzip_lines(data: bytes) -> int:
    return _json_lines(gzip.decompress(data))


def floor(kind: str) -> Any:
    """What merely decoding a trace's lines costs, per input: ``json.loads`` of every line;
    gunzip then the same; the ``csv`` module's reader over the text."""
    return {"jsonl": _json_lines, "gzip": _gzip_lines, "csv": _csv_rows}[kind]


def cell_input(shape: str, faults: int, kind: str) -> tuple[bytes, str, dict[str, Any]]:
    """The bytes of a cell's trace as its input class gives them, their file name, and the
    settings the header carries when the format has no header (CSV)."""
    data = BENCH_SHAPES[shape](faults) if shape in BENCH_SHAPES else write_shape(shape, faults)
    if kind == "csv":
        data, settings = csv_trace(data)
        return data, f"{shape}.csv", settings
    if kind == "gzip":
        return gzip.compress(data, 6), f"{shape}.jsonl.gz", {}
    return data, f"{shape}.jsonl", {}


def bench_cell(
    shape: str, overrides: dict[str, Any], faults: int, samples: int, budget_s: float
) -> dict[str, Any]:
    """One matrix cell: the floor of reading the file (decoding its lines: :func:`floor`), the
    parser, the bulk replay, the timeline's memory and ``state_at`` at random steps.
    ``overrides["input"]`` (one of :data:`INPUTS`) says how the trace is given."""
    overrides = dict(overrides)
    kind = overrides.pop("input", "jsonl")
    data, name, header = cell_input(shape, faults, kind)
    _, t_json = _timed(floor(kind), data)
    trace, t_parse = _timed(parse_trace, data, name)
    settings = Settings().with_overrides({**header, **trace.settings, **overrides})
    tl, t_replay = _timed(replay, trace.events, settings)
    lat = seek_latencies(tl, samples, budget_s)
    n_faults = sum(1 for e in trace.events if e.op == "fault")
    held = sum(tl.memory_bytes().values())
    shown = {"input": kind, **overrides} if kind != "jsonl" else overrides
    return {
        "cell": shape + (" " + " ".join(f"{k}={v}" for k, v in shown.items()) if shown else ""),
        "input": kind,
        "faults": n_faults,
        "events": tl.nr_events,
        "steps": tl.nr_steps,
        "diagnostics": len(tl.diagnostics),
        "stopped": None
        if tl.stopped is None
        else f"event {tl.stopped.event + 1}: {tl.stopped.message}",
        "json_s": t_json,  # the floor: json.loads of the lines, or the csv module's reader
        "parse_s": t_parse,
        "replay_s": t_replay,
        "faults_per_s": n_faults / t_replay,
        "parse_replay_ratio": (t_parse + t_replay) / t_parse,
        "parse_replay_vs_json": (t_parse + t_replay) / t_json,
        "parse_vs_floor": t_parse / t_json,
        "bytes_per_event": held / tl.nr_events,
        "state_at_samples": len(lat),
        "state_at_median_ms": statistics.median(lat) if lat else float("nan"),
        "state_at_p95_ms": lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
    }


#: The shapes :func:`bench_csv_parse` reads as CSV.
CSV_SHAPES = ("runs", "churn", "fleet")


def bench_csv_parse(faults: int, repeats: int = 5) -> list[dict[str, Any]]:
    """CSV parse against the ``csv`` module's reader over the same bytes, per shape, in one run
    (best of ``repeats`` CPU times each, interleaved so that load on the machine hits all
    alike): the column reader, the batches alone (``COLUMNAR`` off), and the construction of
    the events alone (``object.__new__`` and one slot store per field: a lower bound of any
    parser that returns these event objects)."""
    import explorer.ingest.parse as P
    from explorer.model.events import slot_setters

    out = []
    for shape in CSV_SHAPES:
        data, name, _ = cell_input(shape, faults, "csv")
        best = {"floor": 1e9, "columnar": 1e9, "batches": 1e9, "events": 1e9}
        trace = parse_trace(data, name)
        by_type: dict[type, list[Any]] = {}
        for e in trace.events:
            by_type.setdefault(type(e), []).append(e)
        columns = [
            (
                cls,
                len(evs),
                [(setter, [getattr(e, f) for e in evs]) for f, setter in slot_setters(cls).items()],
            )
            for cls, evs in by_type.items()
        ]
        for _ in range(repeats):
            for key in best:
                gc.collect()
                t0 = time.process_time()
                if key == "floor":
                    _csv_rows(data)
                elif key == "events":
                    for cls, k, fields in columns:
                        new: list[Any] = list(map(object.__new__, repeat(cls, k)))
                        for setter, col in fields:
                            deque(map(setter, new, col), 0)
                else:
                    P.COLUMNAR = key == "columnar"
                    try:
                        parse_trace(data, name)
                    finally:
                        P.COLUMNAR = True
                best[key] = min(best[key], time.process_time() - t0)
        out.append({"shape": shape, "rows": len(trace.events), **best})
    return out


def csv_parse_line(r: dict[str, Any]) -> str:
    f = r["floor"]
    return (
        f"CSV parse, {r['shape']:<10} {r['rows']:>7,} rows: csv.reader {f * 1000:5.0f} ms, parse "
        f"{r['columnar'] * 1000:5.0f} ms = {r['columnar'] / f:4.2f}x (target <= "
        f"{TARGETS['parse_vs_floor']}x {_mark(r['columnar'] / f <= TARGETS['parse_vs_floor'])}); "
        f"batches alone {r['batches'] / f:4.2f}x; building the events alone {r['events'] / f:4.2f}x"
    )


#: The searches ``make bench`` times: (sample, mode), with the issue's targets where it has one.
EXPLORE_CASES: tuple[tuple[str, str, float | None], ...] = (
    ("lost_race", "v6", 2.0),
    ("lost_race", "v6-no-recheck", 2.0),
    ("put_vs_get", "v6", None),
    ("race_three_cpus", "v6", 10.0),
    ("race_three_cpus", "v6-locked", 10.0),
    # issue 26: the first faults of a fresh 2 MiB range (the S-EPT table race and the DPAMT race)
    ("cold_race_2vcpu", "v6", 2.0),
    ("fresh_td_race", "v6", 2.0),  # the same with no warm-up: empty caches, every level
    ("cold_race_3vcpu", "v6", 10.0),
    # three vCPUs racing for more than one table: a fresh TD (every level), and a range whose
    # level-2 table is missing too (warm-ups in another GiB)
    ("fresh_td_3vcpu", "v6", 10.0),
    ("table_race_3vcpu", "v6", 10.0),
    ("cold_race_20vcpu_independent", "v6", 10.0),
)
#: a search's budget in the bench (``--max-seconds``): one that does not finish says so
EXPLORE_BUDGET_S = 60


def bench_explore(sample: str, mode: str) -> dict[str, Any]:
    """One search of ``python -m explorer explore`` (in a child process on the search's
    engine, as the command runs it): states, outcomes, findings, seconds, states per second."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "sample_traces", f"{sample}.jsonl")
    cmd = [sys.executable, "-m", "explorer", "explore", path, "--set", f"mode={mode}", "--json"]
    cmd += ["--max-seconds", str(EXPLORE_BUDGET_S)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=False)
    wall = time.perf_counter() - t0
    r = json.loads(p.stdout)
    return {
        "sample": sample,
        "mode": mode,
        "states": r["states"],
        "outcomes": len(r["outcomes"]),
        "end_states": r["end_states"],
        "findings": [v["code"] for v in r["violations"]],
        "complete": r["complete"],
        "seconds": r["seconds"],
        "wall_seconds": wall,
        "states_per_s": r["states"] / max(r["seconds"], 1e-9),
    }


def bench_browser() -> dict[str, Any]:
    """Step latency in Chromium (``tools/step_latency.py``, in its own process: Playwright and a
    server); empty, with a message, when Chromium is missing."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(
        [sys.executable, os.path.join(root, "tools", "step_latency.py"), "--json"],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    if p.returncode != 0:
        print(f"step latency: not measured ({p.stderr.strip().splitlines()[-1:]})", flush=True)
        return {}
    result: dict[str, Any] = json.loads(p.stdout)
    return result


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def matrix_line(r: dict[str, Any]) -> str:
    T = TARGETS
    return (
        f"{r['cell']:<52} {r['faults_per_s']:>9,.0f} f/s {_mark(r['faults_per_s'] >= T['replay_events_per_s']):4} "
        f"p+r/p {r['parse_replay_ratio']:4.1f} {_mark(r['parse_replay_ratio'] <= T['parse_replay_ratio']):4} "
        f"p+r/floor {r['parse_replay_vs_json']:4.1f} {_mark(r['parse_replay_vs_json'] <= T['parse_replay_vs_json']):4} "
        f"parse/floor {r['parse_vs_floor']:4.2f} {_mark(r['parse_vs_floor'] <= T['parse_vs_floor']):4} "
        f"{r['bytes_per_event']:4.0f} B/ev {_mark(r['bytes_per_event'] <= T['bytes_per_event']):4} "
        f"state_at {r['state_at_median_ms']:6.1f} ms (p95 {r['state_at_p95_ms']:6.1f}) "
        f"{_mark(r['state_at_median_ms'] <= T['state_at_median_ms'])}"
        + (f" [{r['diagnostics']} diagnostics]" if r["diagnostics"] else "")
        + (f" [STOPPED at {r['stopped']}: figures of a partial replay]" if r["stopped"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m explorer.bench")
    p.add_argument(
        "--quick",
        action="store_true",
        help="boot at 10k and 100k faults instead of 100k and 1M, matrix cells at 20k",
    )
    p.add_argument("--write", metavar="FILE", help="also write the figures as Markdown to FILE")
    p.add_argument(
        "--only",
        choices=("boot", "matrix", "csv", "explore", "browser", "capture"),
        help="run one part (default: all)",
    )
    p.add_argument(
        "--matrix-faults",
        type=int,
        default=None,
        help="faults per matrix cell (default 100,000; 20,000 with --quick)",
    )
    p.add_argument(
        "--state-at-budget",
        type=float,
        default=120.0,
        help="seconds of state_at sampling per boot trace at most (default 120)",
    )
    p.add_argument(
        "--cell-budget",
        type=float,
        default=10.0,
        help="seconds of state_at sampling per matrix cell at most (default 10; 200 samples)",
    )
    args = p.parse_args(argv)
    sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    cell_faults = args.matrix_faults or (20_000 if args.quick else 100_000)
    facts = machine_facts()
    facts["engine"] = "compiled (mypyc)" if NATIVE else "pure Python"
    from explorer import conformance  # (its package activates the compiled capture path)

    facts["capture path"] = "compiled (mypyc)" if conformance.NATIVE else "pure Python"
    print("machine:", ", ".join(f"{k} {v}" for k, v in facts.items()))
    rows = []
    if args.only in (None, "boot"):
        for n in sizes:
            r = bench_trace(n, 1000, args.state_at_budget)
            rows.append(r)
            print(
                f"{n:>9,} faults: parse {r['parse_s']:.2f} s, parse+replay {r['parse_replay_s']:.2f} s "
                f"(x{r['parse_replay_ratio']:.1f}), replay {r['replay_events_per_s']:,.0f} faults/s, "
                f"{r['steps']:,} steps; state_at median {r['state_at_median_ms']:.1f} ms, p95 "
                f"{r['state_at_p95_ms']:.1f} ms ({r['state_at_samples']} samples); timeline "
                f"{r['bytes_per_event']:.0f} B/event held ("
                + ", ".join(f"{k} {v / r['events']:.0f}" for k, v in r["held"].items())
                + f"), {r['bytes_per_step']:.1f} B/step; process growth during the replay "
                f"{r['rss_bytes_per_event']:.0f} B/event; parsed events "
                f"{r['event_objects_bytes_per_event']:.0f} B/event; {r['checkpoints']} checkpoints",
                flush=True,
            )
    cells = []
    if args.only in (None, "matrix"):
        print(f"matrix: {len(MATRIX)} cells of {cell_faults:,} faults", flush=True)
        for shape, overrides in MATRIX:
            c = bench_cell(shape, overrides, cell_faults, 200, args.cell_budget)
            cells.append(c)
            print(matrix_line(c), flush=True)
        print(matrix_summary(cells), flush=True)
    if args.only in (None, "csv"):
        for r in bench_csv_parse(cell_faults):
            print(csv_parse_line(r), flush=True)
    searches = []
    if args.only in (None, "explore"):
        for sample, mode, target in EXPLORE_CASES:
            e = bench_explore(sample, mode)
            e["target_s"] = target
            searches.append(e)
            print(
                f"explore {sample} --set mode={mode}: {e['states']:,} states, "
                f"{e['outcomes']} outcomes ({e['end_states']} end states), findings "
                f"{e['findings'] or 'none'}, "
                + ("" if e["complete"] else f"INCOMPLETE at the {EXPLORE_BUDGET_S} s budget, ")
                + f"{e['seconds']:.2f} s ({e['states_per_s']:,.0f} states/s; "
                f"{e['wall_seconds']:.2f} s with the interpreter's start)"
                + (
                    f" target <= {target:.0f} s {_mark(e['complete'] and e['seconds'] <= target)}"
                    if target
                    else ""
                ),
                flush=True,
            )
    latency: dict[str, Any] = {}
    if args.only in (None, "browser"):
        latency = bench_browser()
        for sample, r in latency.items():
            print(
                f"step latency in Chromium, {sample}: p50 {r['p50_ms']:.0f} ms, p95 "
                f"{r['p95_ms']:.0f} ms ({r['presses']} Right-arrow steps; target p50 <= 150 ms "
                f"and p95 <= 250 ms {_mark(r['p50_ms'] <= 150 and r['p95_ms'] <= 250)})",
                flush=True,
            )
    if args.only in (None, "capture"):
        from explorer.conformance.bench import bench_capture, summary

        print(summary(bench_capture(100_000 if args.quick else 1_000_000)), flush=True)
    maps = [region_map_stats(n) for n in (32_768, 524_288)]
    for m in maps:
        print(
            f"region map {m['regions']:>7,} regions: built in {m['build_s'] * 1000:.0f} ms, "
            f"JSON {m['json_bytes'] / 1024:,.0f} KiB"
        )
    if args.write:
        write_figures(args.write, render(facts, rows, cells, maps, args.quick, searches, latency))
        print("wrote", args.write)
    return 0


def matrix_summary(cells: list[dict[str, Any]]) -> str:
    """One line: how many cells meet each target, and the worst cell of each."""
    if not cells:
        return "matrix: no cells"
    T = TARGETS
    # (label, key, target, higher is better)
    checks: tuple[tuple[str, str, float, bool], ...] = (
        ("faults/s", "faults_per_s", T["replay_events_per_s"], True),
        ("parse+replay/parse", "parse_replay_ratio", T["parse_replay_ratio"], False),
        ("parse+replay/floor", "parse_replay_vs_json", T["parse_replay_vs_json"], False),
        ("parse/floor", "parse_vs_floor", T["parse_vs_floor"], False),
        ("B/event", "bytes_per_event", T["bytes_per_event"], False),
        ("state_at median", "state_at_median_ms", T["state_at_median_ms"], False),
    )
    parts = []
    for label, key, target, higher in checks:
        met = sum(1 for c in cells if (c[key] >= target if higher else c[key] <= target))
        ranked = sorted(cells, key=lambda c: c[key])
        w = ranked[0] if higher else ranked[-1]
        parts.append(f"{label} {met}/{len(cells)} (worst {w[key]:,.1f}: {w['cell']})")
    return "matrix meets: " + "; ".join(parts)


#: Where the generated figures end in docs/performance.md: what follows is written by hand (the
#: verdicts, the history, where the time goes) and ``--write`` keeps it.
HAND_WRITTEN = "<!-- Above: written by make bench. Below: written by hand, kept by --write. -->"


def write_figures(path: str, figures: str) -> None:
    """Write ``figures`` to ``path``, keeping the hand-written part of an existing file (from
    the :data:`HAND_WRITTEN` marker on): regenerating the tables never loses the analysis."""
    rest = ""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    at = old.find(HAND_WRITTEN)
    if at >= 0:
        rest = old[at + len(HAND_WRITTEN) :]
    with open(path, "w") as f:
        f.write(figures.rstrip("\n") + "\n\n" + HAND_WRITTEN + rest)


def render(
    facts: dict[str, str],
    rows: list[dict[str, Any]],
    cells: list[dict[str, Any]],
    maps: list[dict[str, float]],
    quick: bool,
    searches: Sequence[dict[str, Any]] = (),
    latency: dict[str, Any] | None = None,
) -> str:
    out = [
        "# Performance",
        "",
        "Measured by `make bench` (`python -m explorer.bench"
        + (" --quick" if quick else "")
        + "`), figures below from one run on:",
        "",
        *[f"- {k}: {v}" for k, v in facts.items()],
        "",
        "Traces: `generate boot --tds 2 --vcpus 8 --faults N --seed 1`, host memory 64 GiB.",
        "",
        "| figure | " + " | ".join(f"{r['faults']:,} faults" for r in rows) + " | target |",
        "|---|" + "---|" * len(rows) + "---|",
    ]

    def line(label: str, key: str, fmt: str, target: str) -> None:
        out.append(
            f"| {label} | " + " | ".join(fmt.format(r[key]) for r in rows) + f" | {target} |"
        )

    line("events", "events", "{:,}", "")
    line("steps", "steps", "{:,}", "")
    line("parse only (s)", "parse_s", "{:.2f}", "")
    line("parse + replay (s)", "parse_replay_s", "{:.2f}", "1M in <= 10 s")
    line("parse + replay / parse only", "parse_replay_ratio", "{:.1f}", "<= 3")
    line("replay throughput (fault events/s)", "replay_events_per_s", "{:,.0f}", ">= 100,000")
    line("state_at median (ms)", "state_at_median_ms", "{:.1f}", "<= 20")
    line("state_at p95 (ms)", "state_at_p95_ms", "{:.1f}", "")
    line("state_at samples", "state_at_samples", "{}", "1,000")
    line("timeline bytes per event (held)", "bytes_per_event", "{:.0f}", "<= 200")
    for part in ("arrays", "deltas", "keyframes"):
        out.append(
            f"| - of which {part} | "
            + " | ".join(f"{r['held'][part] / r['events']:.0f}" for r in rows)
            + " |  |"
        )
    line("process growth during the replay, bytes per event", "rss_bytes_per_event", "{:.0f}", "")
    line("timeline bytes per step", "bytes_per_step", "{:.1f}", "")
    line("parsed events, bytes per event", "event_objects_bytes_per_event", "{:.0f}", "")
    line("checkpoints", "checkpoints", "{}", "")
    if cells:
        out += [
            "",
            f"Matrix ({len(cells)} cells of {cells[0]['faults']:,} faults, shapes from "
            "`explorer/ingest/shapes.py`, settings on top of the trace's; targets: >= 100,000 "
            "faults/s, parse + replay <= 3x parse and <= 6x the floor (decoding the lines: "
            "`json.loads` of each, after gunzip for gzip input, or the `csv` module's reader), "
            "parse <= 1.5x the floor, <= 200 B/event, `state_at` median <= 20 ms):",
            "",
            "| cell | faults/s | parse+replay / parse | parse+replay / floor | parse / floor "
            "| B/event | state_at median (p95) ms | steps/fault |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in cells:
            out.append(
                f"| {c['cell']} | {c['faults_per_s']:,.0f} | {c['parse_replay_ratio']:.1f} | "
                f"{c['parse_replay_vs_json']:.1f} | {c['parse_vs_floor']:.2f} | "
                f"{c['bytes_per_event']:.0f} | "
                f"{c['state_at_median_ms']:.1f} ({c['state_at_p95_ms']:.1f}) | "
                f"{c['steps'] / c['faults']:.1f} |"
            )
        out += ["", matrix_summary(cells)]
    if searches:
        out += [
            "",
            "Every interleaving (`python -m explorer explore SAMPLE --set mode=M`, on the "
            "search's engine as the command runs it: the search compiled, the kernel's "
            "generators in Python; in its own process):",
            "",
            "| sample | mode | states | outcomes (end states) | findings | seconds | states/s "
            "| target |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in searches:
            target = f"<= {e['target_s']:.0f} s" if e.get("target_s") else ""
            out.append(
                f"| {e['sample']} | {e['mode']} | {e['states']:,} | {e['outcomes']} "
                f"({e['end_states']}) | "
                f"{', '.join(e['findings']) or 'none'} | {e['seconds']:.2f} | "
                f"{e['states_per_s']:,.0f} | {target} |"
            )
    if latency:
        out += [
            "",
            "Step latency in a real browser (`tools/step_latency.py`: Debian's Chromium at "
            "1440x900, instant steps on (`--server-drawn` times the fallback), a Right-arrow "
            "press until the new step is shown):",
            "",
            "| sample | steps | p50 (ms) | p95 (ms) | target |",
            "|---|---|---|---|---|",
        ]
        for sample, r in latency.items():
            out.append(
                f"| {sample} | {r['presses']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                "p50 <= 150, p95 <= 250 |"
            )
    out += ["", "| region map | build (ms) | JSON (KiB) | target |", "|---|---|---|---|"]
    for m in maps:
        target = "<= 300 ms" if m["regions"] == 524_288 else ""
        out.append(
            f"| {m['regions']:,} regions | {m['build_s'] * 1000:.0f} | "
            f"{m['json_bytes'] / 1024:,.0f} | {target} |"
        )
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
