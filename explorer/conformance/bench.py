"""How long a large capture takes: generate, parse, import, conform (``make bench``).

The issue's target: import and conform of a 1,000,000-record capture in at most 10 s. The input
is :func:`explorer.conformance.synth.large_capture` (four TDs sharing regions, a non-TDX VM,
shared-GPA faults, local retries, zaps and refaults, teardown on another thread). Figures are
printed and returned, never asserted (timings depend on the machine).
"""

from __future__ import annotations

import sys
import time

from explorer.conformance.conform import conform
from explorer.conformance.importer import import_capture
from explorer.conformance.synth import large_capture
from explorer.ingest.capture import parse_capture


def bench_capture(records: int = 1_000_000) -> dict[str, float]:
    """Seconds per stage for a capture of about ``records`` records (``conform`` imports again
    and replays the trace: ``import_conform_s`` is what a user of ``conform`` waits for after
    parsing)."""
    t0 = time.perf_counter()
    text = large_capture(records).encode()
    t1 = time.perf_counter()
    c1 = time.process_time()
    cap = parse_capture(text, "bench.txt")
    t2 = time.perf_counter()
    imp = import_capture(cap)
    t3 = time.perf_counter()
    result = conform(cap)
    t4 = time.perf_counter()
    cpu = time.process_time() - c1
    return {
        "records": float(len(cap.records)),
        "events": float(len(imp.events)),
        "generate_s": t1 - t0,
        "parse_s": t2 - t1,
        "import_s": t3 - t2,
        "import_conform_s": t4 - t3,
        "total_s": t4 - t1,
        "total_cpu_s": cpu,
        "ok": float(result.ok),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 1_000_000
    r = bench_capture(n)
    print(
        f"capture bench: {int(r['records']):,} records, {int(r['events']):,} events: "
        f"parse {r['parse_s']:.2f} s, import {r['import_s']:.2f} s, conform (import + replay + "
        f"rules) {r['import_conform_s']:.2f} s, total {r['total_s']:.2f} s "
        f"(CPU {r['total_cpu_s']:.2f} s) "
        f"({'conforms' if r['ok'] else 'DIVERGES'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
