"""Every interleaving of a trace's concurrent groups: ``python -m explorer explore``.

A replay answers "what happens under this schedule". This module answers "what can happen under
any schedule": for each group of concurrent events (a batch with two CPUs or more), it runs every
order of their CPUs' turns on the engine's own generators (no second model), from the state the
trace reaches before the group, and reports the distinct outcomes, how many schedules reach each,
and every invariant violation with a schedule that reproduces it.

**The search is over states, not paths.** Generators cannot be copied, so a state is reached by
re-execution: restore the group's start (a checkpoint), then replay the turns of a prefix
(stateless model checking, as in CHESS). Each state reached is hashed; a state seen before is
not expanded again. A state is everything the future depends on:

- the machine (:meth:`explorer.model.machine.Machine.canonical_state`: page owners and kinds,
  pairs, refcounts, references, locks, caches, S-EPT entries, mappings, the allocator's cursor
  and random state, counters, injections);
- each CPU: its queue of events, its kernel stack and held locks, whether it spins and on what,
  and its generators, frame by frame: the code position (``f_lasti``) and every local variable,
  canonically (a vCPU, a TD or a cache by its id, a page by its number);
- the diagnostics raised so far in the group (paths that saw a violation are never merged with
  paths that did not).

Two prefixes that reach equal states have equal futures (the generators are deterministic
functions of their frames and the machine: nothing else is read), so merging them loses no
outcome and no violation: that is why hashing is sound. Reading frames needs the pure Python
engine (a compiled generator has no frame): the CLI runs the search with ``DPAMT_PURE=1``.

**Which CPU may take a turn.** Any CPU with work left, except one spinning on a lock whose
holder has not changed: its turn would repeat the same spin step and change nothing but a
counter (the kernel's ``cpu_relax()`` loop), so it is *blocked*, as a lock acquisition is in
TLA+ or SPIN. When every CPU with work left is blocked the group has deadlocked: an outcome of
its own, reported as a violation. A turn that only finishes a CPU's event (no step) is a turn
all the same: ``order`` in a trace counts it (:class:`explorer.model.events.Schedule`).

**Counting schedules.** The states and their turns form a graph without cycles (every turn
moves a generator on); the schedules reaching an outcome are the paths from the group's start to
it, counted once the search is complete. Across groups, each distinct end state of a group is a
start of the next (the single-CPU batches between them run as the replay runs them), and the
counts multiply.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from explorer.model.events import Event
from explorer.model.machine import (
    Machine,
    MachineImage,
    batches,
)
from explorer.model.settings import Settings
from explorer.model.state import (
    Thread,
)
from explorer.model.steps import COUNTER_NAMES
from explorer.model.summary import summary

#: Default bound on the states visited (all groups together): past it the search stops, claims
#: nothing, and says how far it got.
MAX_STATES = 1_000_000
#: Seconds between two progress reports.
PROGRESS_SECONDS = 0.5

Digest = bytes
#: The diagnostics an exploration reports as findings (exit status 1): invariant violations and
#: the kernel's own WARNs (a WARN_ON_ONCE that fires under some schedule is a bug it found).
FINDINGS = ("violation", "warning")


#: Counters left out of a state (Machine.canonical_state): the spin count, and the retry count,
#: so that a lap of a retry loop that changed nothing else comes back to the state it left.
_IGNORED_COUNTERS = ("spins", "fault_retries")
#: The indices of the counters a state keeps.
_COUNTED = tuple(i for i, name in enumerate(COUNTER_NAMES) if name not in _IGNORED_COUNTERS)
_ALL_BUT_SPINS = tuple(i for i, name in enumerate(COUNTER_NAMES) if name != "spins")
#: Locals of kernel frames left out of a state for the same reason: the lap counter of
#: tdx_handle_ept_violation()'s local retry loop. It only decides when the explorer's own
#: ``max_retries`` bound fires, which a loop that comes back to its state never reaches: the
#: search finds the loop as a cycle and reports it only when it is fair (_livelocks).
_ABSTRACT_LOCALS: dict[str, frozenset[str]] = {
    "tdx_handle_ept_violation": frozenset({"attempt"}),
}


class SearchLimit(Exception):
    """The state bound or a cancel stopped the search before it was complete."""


@dataclass
class Violation:
    """A finding: an invariant violation, a kernel WARN (``WARN_ON_ONCE`` fired: the kernel's own
    bug check), or a deadlock, with the first schedule found that reproduces it."""

    kind: str
    code: str
    message: str
    step: int
    group: int
    schedule: list[str]
    orders: list[list[str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "code": self.code,
            "message": self.message,
            "step": self.step,
            "group": self.group,
            "schedule": self.schedule,
            "orders": self.orders,
        }


@dataclass
class _End:
    """A distinct end state of one group: a machine image there and how to reach it."""

    key: Digest
    image: MachineImage
    orders: list[list[str]]  # one turn order per group so far
    schedules: int
    diag_codes: tuple[str, ...]
    #: the kernel paths that reach it (see _kernel_paths), at most MAX_PATHS
    paths: frozenset[Signature] = frozenset({()})


@dataclass
class _Group:
    index: int
    t: int | None
    span: tuple[int, int]
    threads: list[str] = field(default_factory=list)


class Explorer:
    """The search over one trace and settings (see the module docstring)."""

    def __init__(
        self,
        events: Sequence[Event],
        settings: Settings,
        *,
        max_states: int = MAX_STATES,
        max_seconds: float | None = None,
        progress: Callable[[int, str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        fair: bool = True,
    ) -> None:
        self.events = events
        #: False: the plain search, every lap of a retry loop a state of its own and the
        #: explorer's max_retries bound ending the loops (the reference the property tests
        #: compare the fair search with; ``--unfair``)
        self.fair = fair
        self.settings = settings
        self.max_states = max_states
        self.max_seconds = max_seconds
        self._t0 = time.monotonic()
        self._next_report = 0.0
        self._groups_total = 0
        self._replay_label = ""
        self.progress = progress
        self.cancel = cancel
        self.states = 0
        self.groups: list[_Group] = []
        self.violations: dict[str, Violation] = {}
        self.deadlocks = 0
        self.stopped: str | None = None  # an impossible event under some interleaving

    # ------------------------------------------------------------------ machines
    def _machine(self) -> Machine:
        return Machine(self.settings, record=False, check=True)

    def _items(self, span: tuple[int, int]) -> list[tuple[int, Event]]:
        return [(i, self.events[i]) for i in range(*span)]

    def _run_plain(self, m: Machine, spans: Iterable[tuple[int, int]]) -> None:
        for span in spans:
            if m.stopped is not None:
                return
            m.run_batch(self._items(span))

    # ------------------------------------------------------------------ the search
    def run(self) -> dict[str, Any]:
        """Search every concurrent group in trace order; the JSON result (``--json``)."""
        t0 = time.perf_counter()
        self._t0 = time.monotonic()
        spans = batches(self.events)
        m = self._machine()
        concurrent = [b for b, span in enumerate(spans) if self._is_concurrent(span)]
        self._groups_total = len(concurrent)
        complete = True
        ends: list[_End]
        first = concurrent[0] if concurrent else len(spans)
        self._run_plain(m, spans[:first])
        ends = [_End(b"", m.image(), [], 1, ())] if m.stopped is None else []
        if m.stopped is not None:
            self.stopped = m.stopped.message
        try:
            for k, b in enumerate(concurrent):
                span = spans[b]
                self.groups.append(_Group(k, self.events[span[0]].t, span))
                nxt = concurrent[k + 1] if k + 1 < len(concurrent) else len(spans)
                ends = self._group(k, span, ends, spans[b + 1 : nxt])
        except SearchLimit as exc:
            complete = False
            reason = str(exc)
        else:
            reason = ""
            if not concurrent and m.stopped is None:
                self._run_plain(m, spans[first:])
        outcomes = _group_outcomes([self._outcome(e) for e in ends]) if complete else []
        result: dict[str, Any] = {
            "ok": complete and not self.violations and self.stopped is None,
            "complete": complete,
            "groups": len(self.groups),
            "states": self.states,
            "schedules": sum(e.schedules for e in ends) if complete else 0,
            "end_states": len(ends) if complete else 0,
            "outcomes": outcomes,
            "violations": [v.to_json() for v in self.violations.values()],
            "seconds": round(time.perf_counter() - t0, 3),
            "covered": {
                "states": self.states,
                "groups": len(self.groups),
                "groups_done": len(self.groups) if complete else max(len(self.groups) - 1, 0),
                "groups_total": self._groups_total,
                "seconds": round(time.perf_counter() - t0, 3),
            },
        }
        if reason:
            result["stopped"] = reason
        if self.stopped is not None:
            result["impossible"] = self.stopped
        return result

    def _is_concurrent(self, span: tuple[int, int]) -> bool:
        from explorer.model.events import Inject, Note, Schedule
        from explorer.model.machine import thread_name

        names = {
            thread_name(e)
            for e in self.events[span[0] : span[1]]
            if not isinstance(e, (Inject, Note, Schedule))
        }
        return len(names) > 1

    def _group(
        self,
        k: int,
        span: tuple[int, int],
        starts: list[_End],
        after: Sequence[tuple[int, int]],
    ) -> list[_End]:
        """Explore group ``k`` from each of ``starts``; the distinct end states after it (and
        after the single-CPU batches that follow it, ``after``)."""
        merged: dict[Digest, _End] = {}
        for start in starts:
            for end in self._search(k, span, start):
                m = self._machine()
                m.restore(end.image)
                self._run_plain(m, after)
                if m.stopped is not None:
                    self.stopped = m.stopped.message
                    continue
                key = _digest(
                    (
                        m.canonical_state(_IGNORED_COUNTERS if self.fair else ("spins",)),
                        end.diag_codes,
                    )
                )
                seen = merged.get(key)
                if seen is None:
                    merged[key] = _End(
                        key, m.image(), end.orders, end.schedules, end.diag_codes, end.paths
                    )
                else:
                    seen.schedules += end.schedules
                    seen.paths = _cap(seen.paths | end.paths)
        return list(merged.values())

    def _search(self, k: int, span: tuple[int, int], start: _End) -> list[_End]:
        """Every interleaving of group ``k`` from ``start``: its distinct end states, each with
        the number of turn orders that reach it and one of them."""
        items = self._items(span)
        edges: dict[Digest, list[tuple[str, Digest]]] = {}
        labels: dict[Digest, list[str]] = {}  # each edge's step label, as edges[...] lists them
        enabled_at: dict[Digest, tuple[str, ...]] = {}
        parent_of: dict[Digest, tuple[Digest, str]] = {}
        ends: dict[Digest, tuple[list[str], MachineImage, tuple[str, ...]]] = {}
        visited: set[Digest] = set()
        lap_keys: set[Digest] = set()  # the states' keys without counters (see _lap_back)
        root: Digest | None = None
        # (turns taken, the state they come from, the path to it); the first child of a state
        # runs on in place
        stack: list[tuple[tuple[str, ...], Digest | None, _Path | None]] = [((), None, None)]
        self._progress(k, force=True)
        while stack:
            prefix, parent, path = stack.pop()
            m, threads = self._replay(start.image, items, prefix)
            label = self._replay_label
            if m is None:
                continue
            while True:
                codes = _diag_codes(m)
                ts = _threads_state(m, threads, self.fair)
                bare = m.canonical_state(COUNTER_NAMES)  # (the counters apart: see _lap_back)
                counted = tuple([m.cnt[i] for i in (_COUNTED if self.fair else _ALL_BUT_SPINS)])
                key = _digest((bare, counted, ts, codes))
                lap_key = _digest((bare, ts, codes))
                if self.fair and key not in visited and lap_key in lap_keys:
                    key = _lap_back(lap_key, path) or key
                if parent is None:
                    root = key
                else:
                    edges.setdefault(parent, []).append((prefix[-1], key))
                    labels.setdefault(parent, []).append(label)
                if key in visited:
                    break
                visited.add(key)
                lap_keys.add(lap_key)
                path = (key, lap_key, path)
                if parent is not None:
                    parent_of[key] = (parent, prefix[-1])
                self.states += 1
                self._check_limits(k)
                self._note_violations(m, k, start, prefix)
                if m.stopped is not None:
                    self.stopped = m.stopped.message
                    break
                live = [th for th in threads if not th.done]
                enabled = [th for th in live if not m.blocked(th)]
                enabled_at[key] = tuple(th.name for th in enabled)
                if not live:
                    m.end_batch()
                    self._note_violations(m, k, start, prefix)
                    ends[key] = (list(prefix), m.image(), _diag_codes(m))
                    break
                if not enabled:
                    self._deadlock(m, k, start, prefix, live)
                    break
                for th in reversed(enabled[1:]):
                    stack.append(((*prefix, th.name), key, path))
                th = enabled[0]
                info = m.turn(th, threads)
                label = info[1] if info is not None else ""
                prefix = (*prefix, th.name)
                parent = key
        if self.fair:
            self._livelocks(k, start, items, edges, enabled_at, parent_of)
        plain = {src: [d for _, d in out] for src, out in edges.items()}
        counts = _count_paths(root, plain, set(ends))
        paths = _kernel_paths(root, edges, labels, set(ends), k)
        out = []
        for key, (turns, image, codes) in ends.items():
            out.append(
                _End(
                    key,
                    image,
                    [*start.orders, turns],
                    start.schedules * counts[key],
                    codes,
                    _join_paths(start.paths, paths.get(key, set())),
                )
            )
        return out

    def _livelocks(
        self,
        k: int,
        start: _End,
        items: list[tuple[int, Event]],
        edges: dict[Digest, list[tuple[str, Digest]]],
        enabled_at: dict[Digest, tuple[str, ...]],
        parent_of: dict[Digest, tuple[Digest, str]],
    ) -> None:
        """Report a real livelock: a cycle of the state graph some *fair* run never leaves.

        Laps of a retry loop that change nothing but the retry count come back to the same
        state (the count is left out of it), so every retry loop is a cycle. Most are unfair:
        one CPU retries on another's frozen entry while the scheduler never lets the holder
        move, which no real machine does. A run is strongly fair when every CPU that can move
        infinitely often does move infinitely often; a strongly connected set of states C holds
        such a run iff every CPU enabled somewhere in C has a turn inside C. When some CPU is
        starved, the states where it is enabled are removed and what is left is split again
        (Emerson and Lei's refinement). What survives is a loop that repeats even when every
        other CPU ran to completion or waits on the looping ones: a real livelock
        (``dpamt_gets_per_fault=0``: the fault's get fails at every lap)."""
        if "LIVELOCK" in self.violations:
            return
        nodes = list(enabled_at)
        for cycle in _fair_cycles(nodes, edges, enabled_at):
            entry = min(cycle, key=lambda n: _depth(n, parent_of))
            prefix = _path_to(entry, parent_of)
            lap = _lap(entry, cycle, edges)
            m, threads = self._replay(start.image, items, (*prefix, *lap))
            if m is None:
                continue
            cpus = sorted({cpu for n in cycle for cpu, d in edges.get(n, ()) if d in cycle})
            labels = sorted({th.last[1] for th in threads if th.last is not None})
            self.violations["LIVELOCK"] = Violation(
                "livelock",
                "LIVELOCK",
                f"{', '.join(cpus)} retr{'ies' if len(cpus) == 1 else 'y'} forever: a loop of "
                f"{len(cycle)} state(s) that every fair schedule can stay in (each CPU that can "
                f"move there moves, the others are done or wait), ending a lap at "
                f"{', '.join(labels)}: RET_PF_RETRY that no other CPU's progress ends",
                m.nr_steps - 1,
                k,
                [name for order in start.orders for name in order] + [*prefix, *lap],
                [*start.orders, [*prefix, *lap]],
            )
            return

    def _replay(
        self, image: MachineImage, items: list[tuple[int, Event]], prefix: Sequence[str]
    ) -> tuple[Machine | None, list[Thread]]:
        """A machine at the group's start with ``prefix``'s turns taken (the label of the last
        turn's step in ``_replay_label``: "" when it only finished its CPU's event)."""
        m = self._machine()
        m.restore(image)
        threads = m.begin_batch(items)
        by_name = {th.name: th for th in threads}
        info = None
        for name in prefix:
            info = m.turn(by_name[name], threads)
            if m.stopped is not None:
                break
        self._replay_label = info[1] if info is not None else ""
        return m, threads

    def _check_limits(self, k: int) -> None:
        """The state bound, the time budget, the cancel callback, and progress every half
        second (time based: at 200 states/s a count-based report was 5 s of silence)."""
        if self.states > self.max_states:
            raise SearchLimit(
                f"the limit of {self.max_states:,} states was reached in group {k + 1} "
                "(--max-states): nothing is claimed"
            )
        now = time.monotonic()
        if self.max_seconds is not None and now - self._t0 > self.max_seconds:
            raise SearchLimit(
                f"the time budget of {self.max_seconds:g} s was reached in group {k + 1} of "
                f"{self._groups_total} after {self.states:,} states (--max-seconds): nothing "
                "is claimed"
            )
        if now >= self._next_report:
            self._progress(k)
            if self.cancel is not None and self.cancel():
                raise SearchLimit(
                    f"cancelled in group {k + 1} of {self._groups_total} after "
                    f"{self.states:,} states: nothing is claimed"
                )

    def _progress(self, k: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_report:
            return
        self._next_report = now + PROGRESS_SECONDS
        if self.progress is None:
            return
        elapsed = now - self._t0
        rate = self.states / elapsed if elapsed > 0 else 0.0
        self.progress(
            self.states,
            f"group {k + 1} of {self._groups_total}: {self.states:,} states, "
            f"{rate:,.0f} states/s, {elapsed:.1f} s",
        )

    def _note_violations(self, m: Machine, k: int, start: _End, prefix: Sequence[str]) -> None:
        for d in m.diagnostics:
            if d.kind in FINDINGS and d.code not in self.violations:
                self.violations[d.code] = Violation(
                    d.kind,
                    d.code,
                    d.message,
                    d.step,
                    k,
                    [name for order in start.orders for name in order] + list(prefix),
                    [*start.orders, list(prefix)],
                )

    def _deadlock(
        self, m: Machine, k: int, start: _End, prefix: Sequence[str], live: list[Thread]
    ) -> None:
        self.deadlocks += 1
        if "DEADLOCK" not in self.violations:
            who = ", ".join(f"{th.name} on {th.spinning}" for th in live)
            self.violations["DEADLOCK"] = Violation(
                "violation",
                "DEADLOCK",
                f"every CPU with work left spins on a lock no runnable CPU holds ({who})",
                m.nr_steps - 1,
                k,
                [name for order in start.orders for name in order] + list(prefix),
                [*start.orders, list(prefix)],
            )

    def _outcome(self, end: _End) -> dict[str, Any]:
        m = self._machine()
        m.restore(end.image)
        s = summary(m, len(self.events))
        lost = s["counters"]["pamt_lost_race"]
        return {
            "schedules": end.schedules,
            "example": [name for order in end.orders for name in order],
            "orders": end.orders,
            "counters": s["counters"],
            "regions": s["regions"],
            "pamt_cache": s["pamt_cache"],
            "pages": s["pages"],
            "lost_races": lost,
            "diagnostics": list(end.diag_codes),
            "variants": 1,
            "paths": [_path_json(sig, len(end.orders)) for sig in sorted(end.paths)],
        }


#: Counters an outcome is not told apart by: the retries, which the search counts up to futile
#: laps (a state reached with and without one is one state), so the value an outcome shows is
#: that of one schedule reaching it.
_LOOSE_COUNTERS = frozenset({"fault_retries"})


def outcome_key(o: dict[str, Any]) -> tuple[Any, ...]:
    """What an outcome is to a reviewer: the counters, each region's refcount and whether it
    has a pair, each vCPU's cache count, the page totals by kind and the diagnostics. Not the
    page numbers: which free page the allocator gave (and so which pages became a region's
    pair) is not a different outcome (v6-locked used to split on it)."""
    return (
        tuple(sorted((k, v) for k, v in o["counters"].items() if k not in _LOOSE_COUNTERS)),
        tuple(sorted((r, v["refcount"], v["pair"] is not None) for r, v in o["regions"].items())),
        tuple(sorted(o["pamt_cache"].items())),
        tuple(sorted(o["pages"].items())),
        tuple(o["diagnostics"]),
    )


def _group_outcomes(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outcomes grouped by :func:`outcome_key`: schedules summed, ``variants`` the distinct end
    states merged, ``paths`` the union of their kernel paths; the example is the first's."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for o in outcomes:
        key = outcome_key(o)
        g = groups.get(key)
        if g is None:
            groups[key] = dict(o, paths=list(o["paths"]))
            continue
        g["schedules"] += o["schedules"]
        g["variants"] += o["variants"]
        for p in o["paths"]:
            if p not in g["paths"] and len(g["paths"]) < MAX_PATHS:
                g["paths"].append(p)
    return sorted(groups.values(), key=lambda g: (-g["schedules"], outcome_key(g)))


def _path_json(sig: Signature, groups: int) -> dict[str, list[str]]:
    """A kernel path for the JSON result: CPU -> its telling step labels (``g2:vcpu0`` when the
    trace has several concurrent groups)."""
    return {(cpu if groups <= 1 else f"g{k + 1}:{cpu}"): list(seq) for k, cpu, seq in sorted(sig)}


# ---------------------------------------------------------------------- canonical states
def _digest(obj: Any) -> Digest:
    """128 bits of BLAKE2b over the state's pickle, without the pickler's memo (which would
    make equal states with differently shared objects pickle differently): C speed, and
    deterministic for the tuples, ints, strings and bytes a canonical state is made of."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.fast = True  # no memo: the state is a tree, each equal value pickles the same
    p.dump(obj)
    return hashlib.blake2b(buf.getbuffer(), digest_size=16).digest()


def _diag_codes(m: Machine) -> tuple[str, ...]:
    return tuple(sorted({f"{d.kind}:{d.code}" for d in m.diagnostics}))


def _threads_state(m: Machine, threads: list[Thread], abstract: bool = True) -> tuple[Any, ...]:
    """Each CPU's part of the state: its queue, stack, locks, spin, and its generators' frames."""
    ids = _identities(m, threads)
    out = []
    for th in threads:
        out.append(
            (
                th.name,
                tuple(i for i, _ in th.queue),
                th.event,
                tuple(th.stack),
                tuple(th.holds),
                th.spinning,
                th.softirq,
                _canon(th.respin, ids, 0),
                _frames(th.gen, ids, abstract),
            )
        )
    return tuple(out)


def _identities(m: Machine, threads: list[Thread]) -> dict[int, Any]:
    """The objects a frame may hold by reference, named by what identifies them."""
    ids: dict[int, Any] = {id(m): "machine", id(m.mem): "mem", id(m.module): "module"}
    for th in threads:
        ids[id(th)] = ("cpu", th.name)
    for t in m.tds.values():
        ids[id(t)] = ("td", t.id)
        ids[id(t.entries)] = ("entries", t.id)
        ids[id(t.leaves)] = ("leaves", t.id)
        ids[id(t.gmem)] = ("gmem", t.id)
        ids[id(t.control)] = ("td.control", t.id)
    for v in m.vcpus.values():
        ids[id(v)] = ("vcpu", v.id)
        ids[id(v.pamt_cache)] = ("pamt_cache", v.id)
        ids[id(v.control)] = ("vcpu.control", v.id)
        for name, c in v.caches.items():
            ids[id(c)] = ("cache", v.id, name)
            ids[id(c.pfns)] = ("cache.pfns", v.id, name)
    for name, value in m.extra.items():
        ids[id(value)] = ("extra", name)
    return ids


def _frames(gen: Any, ids: dict[int, Any], abstract: bool = True) -> tuple[Any, ...]:
    """A generator chain's frames: code, position, locals (``yield from`` followed down)."""
    out: list[tuple[Any, ...]] = []
    depth = 0
    while gen is not None and depth < 64:
        frame = getattr(gen, "gi_frame", None)
        if frame is None:  # finished, or a compiled generator (no frame: see the docstring)
            if not isinstance(gen, types.GeneratorType):
                raise TypeError(
                    "explore reads generator frames: run it on the pure Python engine "
                    "(DPAMT_PURE=1)"
                )
            out.append(("done",))
            break
        name = gen.gi_code.co_qualname
        hidden = _ABSTRACT_LOCALS.get(name, ()) if abstract else ()
        out.append(
            (
                name,
                frame.f_lasti,
                # (a frame's locals come in its code's variable order: no sort needed)
                tuple(
                    [
                        (k, "*" if k in hidden else _canon(v, ids, 1))
                        for k, v in frame.f_locals.items()
                    ]
                ),
            )
        )
        gen = gen.gi_yieldfrom
        depth += 1
    return tuple(out)


_SCALARS = frozenset({int, str, bool, float, bytes, type(None)})


def _canon(v: Any, ids: dict[int, Any], depth: int) -> Any:
    """A hashable, repr-stable stand-in for a local variable's value."""
    if type(v) in _SCALARS:
        return v
    ref = ids.get(id(v))
    if ref is not None:
        return ref
    if depth > 12:
        raise TypeError(f"explore: a local nested too deep to canonicalize ({type(v).__name__})")
    if isinstance(v, (tuple, list, deque)):
        return (type(v).__name__, tuple(_canon(x, ids, depth + 1) for x in v))
    if isinstance(v, (set, frozenset)):
        return ("set", tuple(sorted(repr(_canon(x, ids, depth + 1)) for x in v)))
    if isinstance(v, dict):
        return (
            "dict",
            tuple(
                sorted(
                    (repr(_canon(k, ids, depth + 1)), _canon(x, ids, depth + 1))
                    for k, x in v.items()
                )
            ),
        )
    if isinstance(v, Event):
        return ("event", v.line, v.describe())
    if isinstance(v, types.GeneratorType):
        return ("gen", _frames(v, ids))
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return ("fn", getattr(v, "__qualname__", repr(v)))
    slots = getattr(type(v), "__slots__", None)
    if slots is not None:  # a small value object of the engine (Spin, ...)
        return (
            type(v).__qualname__,
            tuple(_canon(getattr(v, s, None), ids, depth + 1) for s in slots),
        )
    raise TypeError(f"explore: cannot canonicalize a local of type {type(v).__qualname__}")


def _count_paths(
    root: Digest | None, edges: dict[Digest, list[Digest]], ends: set[Digest]
) -> dict[Digest, int]:
    """Paths from ``root`` to each end state. On a graph without cycles, exactly the turn
    orders. Retry loops are cycles (see :meth:`Explorer._livelocks`): they are counted on the
    graph's condensation (each loop's states one node, each turn into or out of it an edge),
    so "schedules" counts turn orders up to repetitions of a retry loop."""
    if root is None:
        return {}
    comps = _sccs([root], lambda n: edges.get(n, ()))
    comp_of = {n: i for i, c in enumerate(comps) for n in c}
    paths = [0] * len(comps)
    paths[comp_of[root]] = 1
    for i in range(len(comps) - 1, -1, -1):  # Tarjan lists sinks first: reversed is topological
        here = paths[i]
        if not here:
            continue
        for n in comps[i]:
            for d in edges.get(n, ()):
                j = comp_of[d]
                if j != i:
                    paths[j] += here
    return {e: paths[comp_of[e]] if e in comp_of else 0 for e in ends}


def _sccs(
    starts: Iterable[Digest], succ: Callable[[Digest], Iterable[Digest]]
) -> list[list[Digest]]:
    """The strongly connected components reachable from ``starts`` (Tarjan's algorithm, without
    recursion: a group's graph can be deeper than Python's stack), sinks first."""
    index: dict[Digest, int] = {}
    low: dict[Digest, int] = {}
    on_stack: set[Digest] = set()
    stack: list[Digest] = []
    out: list[list[Digest]] = []
    for s in starts:
        if s in index:
            continue
        index[s] = low[s] = len(index)
        stack.append(s)
        on_stack.add(s)
        work: list[tuple[Digest, Iterator[Digest]]] = [(s, iter(succ(s)))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ(w))))
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            else:
                work.pop()
                if work:
                    u = work[-1][0]
                    if low[v] < low[u]:
                        low[u] = low[v]
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
    return out


def _fair_cycles(
    nodes: Sequence[Digest],
    edges: dict[Digest, list[tuple[str, Digest]]],
    enabled_at: dict[Digest, tuple[str, ...]],
) -> list[set[Digest]]:
    """The sets of states a strongly fair run can stay in forever (see
    :meth:`Explorer._livelocks`): strongly connected, with a turn inside for every CPU enabled
    in one of their states."""
    out: list[set[Digest]] = []
    work: list[set[Digest]] = [set(nodes)]
    while work:
        allowed = work.pop()

        def succ(n: Digest, allowed: set[Digest] = allowed) -> list[Digest]:
            return [d for _, d in edges.get(n, ()) if d in allowed]

        for comp in _sccs(sorted(allowed), succ):
            c = set(comp)
            moves = {cpu for n in c for cpu, d in edges.get(n, ()) if d in c}
            if not moves:  # one state without a turn back to itself: no cycle
                continue
            starved = {cpu for n in c for cpu in enabled_at.get(n, ())} - moves
            if not starved:
                out.append(c)
            else:
                keep = {n for n in c if not starved.intersection(enabled_at.get(n, ()))}
                if keep:
                    work.append(keep)
    return out


#: A kernel path: per group and CPU, the labels of the steps that tell paths apart.
Signature = tuple[tuple[int, str, tuple[str, ...]], ...]
#: Kernel paths listed per outcome at most.
MAX_PATHS = 16
#: Step labels that tell kernel paths apart (the others: lock steps, pops, top-ups, ... are
#: the same on every path, or follow from these).
_PATH_PREFIXES = ("pamt_get.", "pamt_put.", "tdp.", "walk.", "leaf.", "zap.")
_PATH_LABELS = frozenset({"fault.retry", "fault.stale", "fault.eio", "fault.enomem"})
_PATH_NOISE = frozenset(
    {
        "pamt_get.pop",
        "pamt_get.lock",
        "pamt_get.unlock",
        "pamt_put.lock",
        "pamt_put.unlock",
        "pamt_get.alloc",
        "leaf.freeze",
    }
)


def _telling(label: str) -> bool:
    if label in _PATH_LABELS:
        return True
    return (
        label.startswith(_PATH_PREFIXES)
        and label not in _PATH_NOISE
        and not label.endswith(".spin")  # (whether a lock was contended: every path may)
    )


def _cap(paths: frozenset[Signature] | set[Signature]) -> frozenset[Signature]:
    if len(paths) <= MAX_PATHS:
        return frozenset(paths)
    return frozenset(sorted(paths)[:MAX_PATHS])


def _extend(sig: Signature, k: int, cpu: str, label: str) -> Signature:
    """``sig`` with CPU ``cpu`` of group ``k`` having taken a step ``label``; a run of one
    label is kept as ``label xN``."""
    entries = list(sig)
    for i, (g, c, seq) in enumerate(entries):
        if g == k and c == cpu:
            if seq and seq[-1].split(" x")[0] == label:
                head, _, n = seq[-1].partition(" x")
                seq = (*seq[:-1], f"{head} x{int(n or 1) + 1}")
            else:
                seq = (*seq, label)
            entries[i] = (g, c, seq)
            return tuple(entries)
    entries.append((k, cpu, (label,)))
    return tuple(sorted(entries))


def _kernel_paths(
    root: Digest | None,
    edges: dict[Digest, list[tuple[str, Digest]]],
    labels: dict[Digest, list[str]],
    ends: set[Digest],
    k: int = 0,
) -> dict[Digest, set[Signature]]:
    """The kernel paths reaching each end state: along every turn order, each CPU's sequence of
    telling step labels (a put's fast path and the path where a get slipped in end in the same
    state, but are different lessons). Propagated over the graph in topological order of its
    condensation; inside a retry loop along a breadth-first tree (paths without repeated laps),
    at most MAX_PATHS per state."""
    if root is None:
        return {}
    comps = _sccs([root], lambda n: [d for _, d in edges.get(n, ())])
    comp_of = {n: i for i, c in enumerate(comps) for n in c}
    sigs: dict[Digest, set[Signature]] = {root: {()}}

    def push(n: Digest, i: int, d: Digest) -> None:
        cpu, label = edges[n][i][0], labels[n][i]
        here = sigs.get(n, set())
        new = {(_extend(s, k, cpu, label) if label and _telling(label) else s) for s in here}
        got = sigs.setdefault(d, set())
        for s in sorted(new):
            if len(got) >= MAX_PATHS:
                break
            got.add(s)

    for c in range(len(comps) - 1, -1, -1):
        members = comps[c]
        if len(members) > 1:  # a loop: inside it along a breadth-first tree from its entries
            inside = set(members)
            queue = deque(n for n in members if sigs.get(n))
            seen = set(queue)
            while queue:
                n = queue.popleft()
                for i, (_, d) in enumerate(edges.get(n, ())):
                    if d in inside and d not in seen:
                        push(n, i, d)
                        seen.add(d)
                        queue.append(d)
        for n in members:
            for i, (_, d) in enumerate(edges.get(n, ())):
                if comp_of[d] != c:
                    push(n, i, d)
    return {e: sigs.get(e, set()) for e in ends}


def _join_paths(before: frozenset[Signature], now: set[Signature]) -> frozenset[Signature]:
    """The paths of the groups so far followed by this group's."""
    return _cap({tuple(sorted((*a, *b))) for a in sorted(before) for b in sorted(now)})


#: The states on the search's current path, newest first: (key, key without counters, the rest).
_Path = tuple[Digest, Digest, Any]


def _lap_back(lap_key: Digest, path: _Path | None) -> Digest | None:
    """The state on the current path that this one repeats but for its counters, if any.

    A lap of a retry loop that fails the same way each time (the fault's get fails for want
    of cache pages, ``dpamt_gets_per_fault=0``) changes the counters it bumps (gets, slow
    paths) and nothing else. No kernel code reads a counter, so from the repeated state the
    machine can do exactly what it could do from the earlier one, with the counters further
    on: the turn goes back to the earlier state (a cycle: :meth:`Explorer._livelocks` decides
    whether a fair run stays in it), and the outcomes keep the counters of the shortest lap.
    Only an ancestor qualifies: two states on different paths with different counters
    (a lost race counted on one) stay apart."""
    while path is not None:
        key, lk, path = path
        if lk == lap_key:
            return key
    return None


def _depth(n: Digest, parent_of: dict[Digest, tuple[Digest, str]]) -> int:
    d = 0
    while n in parent_of:
        n = parent_of[n][0]
        d += 1
    return d


def _path_to(n: Digest, parent_of: dict[Digest, tuple[Digest, str]]) -> list[str]:
    """The turns of the first path the search took to state ``n``."""
    turns: list[str] = []
    while n in parent_of:
        n, cpu = parent_of[n]
        turns.append(cpu)
    turns.reverse()
    return turns


def _lap(
    entry: Digest, cycle: set[Digest], edges: dict[Digest, list[tuple[str, Digest]]]
) -> list[str]:
    """A shortest loop of turns from ``entry`` back to it inside ``cycle``."""
    back: dict[Digest, tuple[Digest, str]] = {}
    queue = deque([entry])
    seen = {entry}
    while queue:
        n = queue.popleft()
        for cpu, d in edges.get(n, ()):
            if d not in cycle:
                continue
            if d == entry:
                turns = [cpu]
                while n != entry:
                    n, c = back[n]
                    turns.append(c)
                turns.reverse()
                return turns
            if d not in seen:
                seen.add(d)
                back[d] = (n, cpu)
                queue.append(d)
    return []


def pin(events: Sequence[Event], orders: Sequence[Sequence[str]]) -> list[Event]:
    """``events`` with each concurrent group's turn order pinned: ``orders[k]`` becomes a
    ``schedule`` event at the head of the k-th concurrent group (replacing any it had), so a
    replay (and the app) runs exactly that interleaving. ``orders`` is an outcome's or a
    finding's ``orders``."""
    from explorer.model.events import Schedule

    out: list[Event] = []
    k = 0
    probe = Explorer(events, Settings())
    for start, end in batches(events):
        group = list(events[start:end])
        if probe._is_concurrent((start, end)) and k < len(orders):
            group = [e for e in group if not isinstance(e, Schedule)]
            out.append(Schedule(t=group[0].t, order=tuple(orders[k])))
            k += 1
        out.extend(group)
    if k < len(orders):
        raise ValueError(f"{len(orders)} turn orders for {k} concurrent group(s)")
    return out


def explore(
    events: Sequence[Event],
    settings: Settings,
    *,
    max_states: int = MAX_STATES,
    max_seconds: float | None = None,
    progress: Callable[[int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    fair: bool = True,
) -> dict[str, Any]:
    """Search every interleaving of ``events``' concurrent groups (see the module docstring)."""
    return Explorer(
        events,
        settings,
        max_states=max_states,
        max_seconds=max_seconds,
        progress=progress,
        cancel=cancel,
        fair=fair,
    ).run()
