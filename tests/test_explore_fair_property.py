"""Property test: on small random traces, the fair search (retry loops as cycles, livelocks only
where fair) finds exactly the outcomes and findings of the plain search, in which every lap of
a retry loop is a state and ``max_retries`` ends the loops (``--unfair``), but for the plain
search's unfair livelocks.

Both searches run in a child on the pure engine (the search reads generator frames)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
#: Counters an outcome is compared by: those a futile lap cannot bump (a lap that fails a get
#: counts a get; which schedule an outcome's counters come from is one of several).
COMPARED = ("faults", "pamt_lost_race", "pamt_add", "pamt_remove")
MAX_STATES = "6000"
MAX_RETRIES = 3

_SEARCH = """
import json, sys
from explorer.ingest import parse_trace
from explorer.interleavings.search import explore
from explorer.model.settings import Settings
trace = parse_trace(sys.stdin.buffer.read(), "random.jsonl")
s = Settings().with_overrides(trace.settings)
out = [
    explore(trace.events, s, max_states=int(sys.argv[1]), fair=f, reduction=False)
    for f in (True, False)
]
json.dump(out, sys.stdout)
"""


@st.composite
def traces(draw: st.DrawFn) -> str:
    """1 or 2 TDs, two CPUs in one concurrent group: faults on fresh or warm ranges, pages
    given in cold regions or from the allocator, and a zap of a mapped page."""
    ncpu = 2
    two_tds = draw(st.booleans())
    mode = draw(st.sampled_from(["v6", "v6-locked", "v5-hint", "v6-no-recheck"]))
    gets = draw(st.sampled_from([0, 1, 5]))
    header = {
        "format": "dpamt-trace",
        "version": 1,
        "title": "random",
        "settings": {"mode": mode, "dpamt_gets_per_fault": gets, "max_retries": MAX_RETRIES},
    }
    lines: list[dict[str, Any]] = [header, {"op": "td_create", "td": 0}]
    td_of = {}
    for v in range(ncpu):
        td = 1 if two_tds and v == ncpu - 1 else 0
        if td == 1 and {"op": "td_create", "td": 1} not in lines:
            lines.append({"op": "td_create", "td": 1})
        td_of[v] = td
        lines.append({"op": "vcpu_create", "td": td, "vcpu": v})
    for td in sorted(set(td_of.values())):
        lines.append({"op": "td_finalize", "td": td})
    if draw(st.booleans()):  # warm-ups: full caches, upper tables present
        for v in range(ncpu):
            lines.append({"op": "fault", "vcpu": v, "gfn": hex(0x400 + v)})
    mapped = draw(st.booleans())
    if mapped:  # a page of TD 0 in region 64, to zap
        lines.append({"op": "fault", "vcpu": 0, "gfn": "0x1000", "pfn": "0x8000"})
    zapped = False
    for v in range(ncpu):
        if mapped and not zapped and v == 0 and draw(st.booleans()):
            lines.append({"op": "zap", "td": 0, "gfn": "0x1000", "t": 1})
            zapped = True
            continue
        ev: dict[str, Any] = {
            "op": "fault",
            "vcpu": v,
            "gfn": hex(draw(st.sampled_from([0x0, 0x1, 0x11, 0x2000])) + v),
            "t": 1,
        }
        pfn = draw(st.sampled_from([None, 0x8001, 0x8200]))
        if pfn is not None:
            ev["pfn"] = hex(pfn + v)
        lines.append(ev)
    return "\n".join(json.dumps(x) for x in lines) + "\n"


def _key(o: dict[str, Any]) -> tuple[Any, ...]:
    return (
        tuple(o["counters"][k] for k in COMPARED),
        tuple(sorted((r, v["refcount"], v["pair"] is not None) for r, v in o["regions"].items())),
        tuple(sorted(o["pamt_cache"].items())),
        tuple(sorted(o["pages"].items())),
        tuple(o["diagnostics"]),
    )


def _livelocked(o: dict[str, Any]) -> bool:
    return any("LIVELOCK" in d for d in o["diagnostics"])


def _findings(r: dict[str, Any]) -> set[str]:
    return {v["code"] for v in r["violations"] if v["kind"] in ("violation", "warning")}


def _check(text: str) -> None:
    p = subprocess.run(
        [sys.executable, "-c", _SEARCH, MAX_STATES],
        input=text.encode(),
        capture_output=True,
        cwd=ROOT,
        env=dict(os.environ, DPAMT_PURE="1", PYTHONPATH=str(ROOT)),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    fair, plain = json.loads(p.stdout)
    assume(fair["complete"] and plain["complete"])
    assume("impossible" not in fair and "impossible" not in plain)
    assert _findings(fair) == _findings(plain), text
    assert {_key(o) for o in fair["outcomes"] if not _livelocked(o)} == {
        _key(o) for o in plain["outcomes"] if not _livelocked(o)
    }, text
    # a real livelock is one the plain search runs into too (at its max_retries bound)
    if any(v["code"] == "LIVELOCK" for v in fair["violations"]):
        assert any(_livelocked(o) for o in plain["outcomes"]), text


_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@settings(max_examples=6, **_SETTINGS)  # type: ignore[arg-type]
@given(traces())
def test_the_fair_search_finds_what_the_plain_one_finds(text: str) -> None:
    _check(text)


@pytest.mark.slow
@settings(max_examples=100, **_SETTINGS)  # type: ignore[arg-type]
@given(traces())
def test_the_fair_search_finds_what_the_plain_one_finds_many(text: str) -> None:
    _check(text)
