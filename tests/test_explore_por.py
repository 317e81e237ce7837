"""Property test of the partial-order reduction (issue 26): on small random traces the reduced
search (``explore(..., reduction=True)``) finds exactly the outcomes and findings of the full
one, and the comparison fails when the dependency relation is made too weak.

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

from tests.test_explore_fair_property import traces as _two_cpu_traces

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
#: State bounds of the full search (a trace it cannot finish within is skipped)
MAX_STATES = "3000"
MAX_STATES_3 = "8000"

#: The child: both searches on the trace read from stdin; argv: the state bound, then
#: optionally object kinds (comma-separated) and the access modes ("r", "w", "a") to leave out of every
#: footprint (a deliberately too weak dependency relation).
_SEARCH = """
import json, sys
import explorer.interleavings.search as search
from explorer.ingest import parse_trace
from explorer.model.settings import Settings
trace = parse_trace(sys.stdin.buffer.read(), "random.jsonl")
s = Settings().with_overrides(trace.settings)
limit = int(sys.argv[1])
full = search.explore(trace.events, s, max_states=limit, reduction=False)
if len(sys.argv) > 2:
    kinds, modes = sys.argv[2].split(","), sys.argv[3]
    exact = search._footprint
    def weak(m, *inflight):
        def drop(x):
            return frozenset(o for o in x if not (isinstance(o, tuple) and o[0] in kinds))
        r, w, a = exact(m, *inflight)
        return (drop(r) if "r" in modes else r, drop(w) if "w" in modes else w,
                drop(a) if "a" in modes else a)
    search._footprint = weak
reduced = search.explore(trace.events, s, max_states=limit, reduction=True)
json.dump([full, reduced], sys.stdout)
"""


#: The allocators the property draws: the global lowest free page (every allocation ordered)
#: and the search's default, per-CPU blocks (picks in a CPU's own blocks unordered)
ALLOCATORS = ["lowest", "percpu"]


@st.composite
def two_cpu_traces(draw: st.DrawFn) -> str:
    """The fair search's two-CPU traces (:func:`tests.test_explore_fair_property.traces`), their
    header naming an allocator of :data:`ALLOCATORS`."""
    first, _, rest = draw(_two_cpu_traces()).partition("\n")
    header = json.loads(first)
    header["settings"]["allocator"] = draw(st.sampled_from(ALLOCATORS))
    return json.dumps(header) + "\n" + rest


@st.composite
def three_cpu_traces(draw: st.DrawFn) -> str:
    """Three vCPUs of one or two TDs in one concurrent group, after a warm-up fault each (full
    caches, the upper tables present): faults next to the warm-ups (their level-1 table
    present) or on a fresh range (a table race), pages given in one cold region (a DPAMT race),
    in a cold region each (critical sections of ``pamt_lock`` with independent bodies: what the
    lock-aware relation does not order) or from the allocator (one of :data:`ALLOCATORS`), and
    maybe a zap of a mapped page instead of the first fault."""
    mode = draw(st.sampled_from(["v6", "v6-locked", "v5-hint", "v6-no-recheck"]))
    lines: list[dict[str, Any]] = [
        {
            "format": "dpamt-trace",
            "version": 1,
            "title": "random",
            "settings": {
                "mode": mode,
                "max_retries": 3,
                "allocator": draw(st.sampled_from(ALLOCATORS)),
            },
        },
        {"op": "td_create", "td": 0},
    ]
    two_tds = draw(st.booleans())
    if two_tds:
        lines.append({"op": "td_create", "td": 1})
    for v in range(3):
        lines.append({"op": "vcpu_create", "td": 1 if two_tds and v == 2 else 0, "vcpu": v})
    lines.append({"op": "td_finalize", "td": 0})
    if two_tds:
        lines.append({"op": "td_finalize", "td": 1})
    for v in range(3):
        lines.append({"op": "fault", "vcpu": v, "gfn": hex(0x400 + v)})
    zap = draw(st.booleans())
    if zap:
        lines.append({"op": "fault", "vcpu": 0, "gfn": "0x408", "pfn": "0x8000"})
    base = draw(st.sampled_from([0x410, 0x410, 0x0]))
    cold = draw(st.sampled_from(["", "one region", "a region each"]))
    for v in range(3):
        if zap and v == 0:
            lines.append({"op": "zap", "td": 0, "gfn": "0x408", "t": 1})
            continue
        ev: dict[str, Any] = {"op": "fault", "vcpu": v, "gfn": hex(base + v), "t": 1}
        if cold:
            ev["pfn"] = hex(0x8010 + v * (0x200 if cold == "a region each" else 1))
        lines.append(ev)
    return "\n".join(json.dumps(x) for x in lines) + "\n"


def _searches(
    text: str, *weaken: str, limit: str = MAX_STATES
) -> tuple[dict[str, Any], dict[str, Any]]:
    p = subprocess.run(
        [sys.executable, "-c", _SEARCH, limit, *weaken],
        input=text.encode(),
        capture_output=True,
        cwd=ROOT,
        env=dict(os.environ, DPAMT_PURE="1", PYTHONPATH=str(ROOT)),
        timeout=600,
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    full, reduced = json.loads(p.stdout)
    return full, reduced


def _outcomes(r: dict[str, Any]) -> set[tuple[Any, ...]]:
    """The outcomes as grouped (:func:`outcome_key`), but those the explorer's own
    ``max_retries`` bound ended: the fair search counts laps of a loop across states it
    otherwise merges, so which of them a search reaches depends on how many interleavings of
    the laps it takes; the loop itself is the ``LIVELOCK`` finding, compared below."""
    from explorer.interleavings.search import outcome_key

    return {
        outcome_key(o) for o in r["outcomes"] if not any("LIVELOCK" in d for d in o["diagnostics"])
    }


def _findings(r: dict[str, Any]) -> set[str]:
    return {v["code"] for v in r["violations"]}


def _same(full: dict[str, Any], reduced: dict[str, Any], text: str) -> None:
    """The reduced search claims what the full one claims: every outcome (as grouped, the
    counters included), every finding (violations, WARNs, deadlocks, real livelocks)."""
    assert reduced["complete"], text
    assert reduced["states"] <= full["states"], text
    assert _findings(reduced) == _findings(full), text
    assert _outcomes(reduced) == _outcomes(full), text
    assert reduced.get("impossible") == full.get("impossible"), text


def _check(text: str, limit: str = MAX_STATES) -> None:
    full, reduced = _searches(text, limit=limit)
    assume(full["complete"])
    _same(full, reduced, text)


_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@settings(max_examples=4, **_SETTINGS)  # type: ignore[arg-type]
@given(two_cpu_traces())
def test_the_reduced_search_finds_what_the_full_one_finds(text: str) -> None:
    _check(text)


@settings(max_examples=2, **_SETTINGS)  # type: ignore[arg-type]
@given(three_cpu_traces())
def test_the_reduced_search_finds_what_the_full_one_finds_on_three_cpus(text: str) -> None:
    _check(text, MAX_STATES_3)


@pytest.mark.slow
@settings(max_examples=100, **_SETTINGS)  # type: ignore[arg-type]
@given(two_cpu_traces())
def test_the_reduced_search_finds_what_the_full_one_finds_many(text: str) -> None:
    _check(text)


@pytest.mark.slow
@settings(max_examples=40, **_SETTINGS)  # type: ignore[arg-type]
@given(three_cpu_traces())
def test_the_reduced_search_finds_what_the_full_one_finds_on_three_cpus_many(text: str) -> None:
    _check(text, MAX_STATES_3)


@pytest.mark.parametrize(
    ("sample", "kind", "modes"),
    [
        # the walk's lock-free read of the level-1 entry: the table race goes unseen
        ("cold_race_2vcpu", "sept", "r"),
        # a region's DPAMT state (whether the refcount is zero, its value, the pair, and
        # invariant 2's quiescence): the DPAMT race goes unseen
        ("lost_race", "Rz,Rc,Rp,Qin,Qout", "rwa"),
    ],
)
def test_the_comparison_fails_when_the_relation_is_too_weak(
    sample: str, kind: str, modes: str
) -> None:
    """The property above can fail: leave an object out of the footprints and the reduced
    search misses outcomes the full one finds (both samples run under v6)."""
    text = (SAMPLES / f"{sample}.jsonl").read_text()
    full, exact = _searches(text)
    _same(full, exact, text)  # the exact relation: the same
    full, weak = _searches(text, kind, modes)
    assert full["complete"] and weak["complete"]
    assert _outcomes(weak) < _outcomes(full)
    with pytest.raises(AssertionError):
        _same(full, weak, text)


def test_the_reduced_search_searches_fewer_states_on_the_cold_range() -> None:
    """Not a timing: the reduction must take effect on the two-vCPU cold-range race."""
    text = (SAMPLES / "cold_race_2vcpu.jsonl").read_text()
    full, reduced = _searches(text)
    _same(full, reduced, text)
    assert reduced["reduction"] and not full["reduction"]
    assert reduced["states"] < 0.75 * full["states"]


#: Three vCPUs of three TDs, caches full, each faulting a page of its own cold region: three
#: PAMT.ADDs on three regions, which only the page accounting checks (``check_global``) once
#: ordered.
_A_REGION_EACH = "\n".join(
    json.dumps(x)
    for x in [
        {"format": "dpamt-trace", "version": 1, "title": "a region each", "settings": {}},
        *[
            e
            for v in range(3)
            for e in (
                {"op": "td_create", "td": v},
                {"op": "vcpu_create", "td": v, "vcpu": v},
                {"op": "td_finalize", "td": v},
            )
        ],
        *[{"op": "fault", "vcpu": v, "gfn": "0x400"} for v in range(3)],
        *[
            {"op": "fault", "vcpu": v, "gfn": "0x410", "pfn": hex(0x8000 + 0x200 * v), "t": 1}
            for v in range(3)
        ],
    ]
)


def test_pamt_adds_on_different_regions_commute() -> None:
    """Not a timing: the pair checks read sums each turn changes by its own amount
    (docs/engine.md, "Every interleaving", point 7), so three independent cold regions are
    searched in about one order, with the full search's outcomes (198 states when the checks
    ordered the three PAMT.ADDs; the full search has 4,589)."""
    full, reduced = _searches(_A_REGION_EACH + "\n", limit="10000")
    _same(full, reduced, _A_REGION_EACH)
    assert reduced["states"] * 50 < full["states"]


def test_acquisitions_of_pamt_lock_race_only_by_their_bodies() -> None:
    """The lock-aware relation (LAPOR): two turns that take or release ``pamt_lock`` do not
    conflict by the lock word; bodies do, and so does an invariant check's look at whether the
    lock is free by a CPU that does not hold it. The full relation (sleep sets) keeps them
    dependent."""
    from explorer.interleavings.search import _dependent, _lock_aware
    from explorer.model.machine import Machine
    from explorer.model.settings import Settings
    from explorer.model.state import FP_PAMT_LOCK

    m = Machine(Settings(), record=False, check=True)
    none: frozenset[object] = frozenset()
    acq = (none, frozenset({FP_PAMT_LOCK}), none)

    def aware(fp: Any, ops: set[str], cpu: str, holder: str | None) -> Any:
        m.fp_l = {(op, FP_PAMT_LOCK) for op in ops}
        m.pamt_lock = holder
        return _lock_aware(fp, m, cpu, False)

    a0 = aware(acq, {"test", "acq"}, "vcpu0", "vcpu0")
    r1 = aware(acq, {"rel"}, "vcpu1", None)
    assert _dependent(acq, acq)  # the full relation
    assert not _dependent(a0, r1)
    body = (none, frozenset({("Rc", 64)}), none)
    assert _dependent((a0[0], a0[1] | body[1], a0[2]), body)
    check = aware((frozenset({FP_PAMT_LOCK}), none, none), {"check"}, "vcpu1", "vcpu0")
    assert _dependent(check, a0)
    own = aware((frozenset({FP_PAMT_LOCK}), none, none), {"check"}, "vcpu0", "vcpu0")
    assert not _dependent(own, r1)


#: The child: the reduced search of the first concurrent group of the trace on stdin; then one
#: more plain walk over the final graph. Prints the walks the search took, its states, and
#: whether that extra walk executed or added anything.
_FIXPOINT = """
import json, sys
import explorer.interleavings.search as search
from explorer.ingest import parse_trace
from explorer.model.settings import Settings
trace = parse_trace(sys.stdin.buffer.read(), "sample.jsonl")
s = Settings().with_overrides(trace.settings)
groups = []
real = search._Reduced.run
def keep(self):
    real(self)
    groups.append(self)  # (a search the group was searched again after never returns)
search._Reduced.run = keep
search.explore(trace.events, s)
g = groups[-1]
states = len(g.nodes)
backtrack = sum(len(n.backtrack) for n in g.nodes.values())
g._summaries()
g.changed = False
g._walk()
grew = len(g.nodes) != states or backtrack != sum(len(n.backtrack) for n in g.nodes.values())
json.dump({"walks": g.walks, "changed": g.changed or grew}, sys.stdout)
"""


def test_the_walks_end_at_a_fixpoint_in_few_walks() -> None:
    """What the soundness argument needs of the walks (docs/engine.md, "Every interleaving",
    point 3): when the search stops, a plain walk over the final graph with its summaries
    executes nothing and adds nothing. And CPUs that woke in a state seen earlier in a walk
    are searched in that walk (the state is visited again from the stack that woke them), not
    left to the next: on cold_race_2vcpu the search takes 3 walks, 12 when they waited."""
    p = subprocess.run(
        [sys.executable, "-c", _FIXPOINT],
        input=(SAMPLES / "cold_race_2vcpu.jsonl").read_bytes(),
        capture_output=True,
        cwd=ROOT,
        env=dict(os.environ, DPAMT_PURE="1", PYTHONPATH=str(ROOT)),
        timeout=600,
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    r = json.loads(p.stdout)
    assert not r["changed"]
    assert r["walks"] <= 6, r


def test_the_access_bits_agree_with_the_relation() -> None:
    """The search finds races through access bits (``_Universe.conflicts`` of a turn on the
    stack against a later turn's ``step_bits``); they must say "dependent" exactly when
    :func:`_dependent` does, in both orders, for every pair of read / write / update sets.
    (They once missed an update after a read, e.g. a get's increment after a put's ``> 1``.)"""
    import itertools

    from explorer.interleavings.search import _dependent, _Universe

    objs = ("x", "y")
    sets = [frozenset(c) for k in range(3) for c in itertools.combinations(objs, k)]
    fps = [(r, w, a) for r in sets for w in sets for a in sets if not (r & w or r & a or w & a)]
    u = _Universe()
    for fp in fps:
        u.step_bits("p", fp)
        u.step_bits("q", fp)
    for x, y in itertools.product(fps, fps):
        uu = _Universe()
        by = uu.step_bits("q", y)
        assert bool(uu.conflicts("p", x) & by) is _dependent(x, y), (x, y)
        uu = _Universe()
        bx = uu.step_bits("p", x)
        assert bool(uu.conflicts("q", y) & bx) is _dependent(y, x), (x, y)
