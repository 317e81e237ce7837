"""The exploration benchmark: each sample search's states, states per second and time
(``make bench`` prints it; issue 26's speed targets are read off it, never asserted).

Each search runs as ``python -m explorer explore SAMPLE --json`` in a child on the search's
engine, as ``explore`` runs it (``DPAMT_PURE=search``: the kernel's generators in Python, whose
frames the search reads; the search and the engine's other modules compiled), with a time budget
so that the benchmark ends even where a search cannot: such a row says ``complete: False`` and
how far it got.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from explorer.interleavings import child

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
#: (sample, mode): the cold-range races the speed targets name, then the warm-cache races.
BENCH_SEARCHES: tuple[tuple[str, str], ...] = (
    ("cold_race_2vcpu", "v6"),
    ("cold_race_3vcpu", "v6"),
    ("cold_race_20vcpu_independent", "v6"),
    ("lost_race", "v6"),
    ("race_three_cpus", "v6"),
)
#: Budget of one search, in seconds.
BENCH_SECONDS = 60.0


def bench_explore(
    searches: Sequence[tuple[str, str]] = BENCH_SEARCHES, max_seconds: float = BENCH_SECONDS
) -> list[dict[str, Any]]:
    """One row per search (the default search: the partial-order reduction): ``sample``,
    ``mode``, ``complete``, ``reduction``, ``states``, ``states_per_s``,
    ``seconds`` (the search's own time, without the child's start), ``outcomes``,
    ``findings``."""
    rows = []
    env = child.search_env()
    for sample, mode in searches:
        argv = [
            sys.executable,
            "-m",
            "explorer",
            "explore",
            str(SAMPLES / f"{sample}.jsonl"),
            "--set",
            f"mode={mode}",
            "--json",
            "--compact",
            "--max-seconds",
            str(max_seconds),
        ]
        p = child.popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        out, _ = p.communicate()
        try:
            r = json.loads(out)
        except ValueError:
            raise RuntimeError(f"explore {sample} (mode {mode}) exited {p.returncode}") from None
        seconds = float(r["seconds"])
        rows.append(
            {
                "sample": sample,
                "mode": mode,
                "complete": bool(r["complete"]),
                "reduction": bool(r.get("reduction", False)),
                "states": int(r["states"]),
                "states_per_s": round(r["states"] / seconds) if seconds > 0 else 0,
                "seconds": seconds,
                "outcomes": len(r["outcomes"]),
                "findings": [v["code"] for v in r["violations"]],
            }
        )
    return rows


def main() -> None:
    """Print the table (``python -m explorer.interleavings.bench``)."""
    for row in bench_explore():
        state = "complete" if row["complete"] else "INCOMPLETE (budget)"
        print(
            f"explore {row['sample']:<30} {row['mode']:<6} {row['states']:>9,} states"
            f"{' (reduced)' if row['reduction'] else ' (full)   '} "
            f"{row['states_per_s']:>7,} states/s {row['seconds']:>7.2f} s  {state}"
        )


if __name__ == "__main__":
    main()
