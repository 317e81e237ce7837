"""``make bench``: the timeline's speed and memory on generated traces, figures printed.

Never asserted in tests (shared machines are noisy); compare timings as ratios within one run.
``python -m explorer.bench [--quick] [--write docs/performance.md]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from typing import Any

from explorer.model.settings import Settings
from explorer.timeline import replay
from explorer.trace import parse_trace
from explorer.trace.generate import boot
from explorer.views.region_map import region_map_stats

TARGETS = {
    "replay_events_per_s": 100_000,
    "parse_replay_ratio": 3.0,
    "state_at_median_ms": 20.0,
    "bytes_per_event": 200,
    "region_map_524288_ms": 300.0,
}


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
    rng = random.Random(7)
    lat: list[float] = []
    deadline = time.perf_counter() + state_at_budget_s
    while len(lat) < state_at_samples and time.perf_counter() < deadline:
        i = rng.randrange(tl.nr_steps)
        t = time.perf_counter()
        tl.state_at(i)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m explorer.bench")
    p.add_argument(
        "--quick", action="store_true", help="10k and 100k faults instead of 100k and 1M"
    )
    p.add_argument("--write", metavar="FILE", help="also write the figures as Markdown to FILE")
    p.add_argument(
        "--state-at-budget",
        type=float,
        default=120.0,
        help="seconds of state_at sampling per trace at most (default 120)",
    )
    args = p.parse_args(argv)
    sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    facts = machine_facts()
    print("machine:", ", ".join(f"{k} {v}" for k, v in facts.items()))
    rows = []
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
            f"{r['event_objects_bytes_per_event']:.0f} B/event; {r['checkpoints']} checkpoints"
        )
    maps = [region_map_stats(n) for n in (32_768, 524_288)]
    for m in maps:
        print(
            f"region map {m['regions']:>7,} regions: built in {m['build_s'] * 1000:.0f} ms, "
            f"JSON {m['json_bytes'] / 1024:,.0f} KiB"
        )
    if args.write:
        write_figures(args.write, render(facts, rows, maps, args.quick))
        print("wrote", args.write)
    return 0


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
    facts: dict[str, str], rows: list[dict[str, Any]], maps: list[dict[str, float]], quick: bool
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
