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
from collections.abc import Callable, Iterable, Sequence
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
from explorer.model.summary import summary

#: Default bound on the states visited (all groups together): past it the search stops, claims
#: nothing, and says how far it got.
MAX_STATES = 1_000_000

Digest = bytes
#: The diagnostics an exploration reports as findings (exit status 1): invariant violations and
#: the kernel's own WARNs (a WARN_ON_ONCE that fires under some schedule is a bug it found).
FINDINGS = ("violation", "warning")


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
        progress: Callable[[int, str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> None:
        self.events = events
        self.settings = settings
        self.max_states = max_states
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
        spans = batches(self.events)
        m = self._machine()
        concurrent = [b for b, span in enumerate(spans) if self._is_concurrent(span)]
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
        outcomes = [self._outcome(e) for e in ends] if complete else []
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
                key = _digest((m.canonical_state(), end.diag_codes))
                seen = merged.get(key)
                if seen is None:
                    merged[key] = _End(key, m.image(), end.orders, end.schedules, end.diag_codes)
                else:
                    seen.schedules += end.schedules
        return list(merged.values())

    def _search(self, k: int, span: tuple[int, int], start: _End) -> list[_End]:
        """Every interleaving of group ``k`` from ``start``: its distinct end states, each with
        the number of turn orders that reach it and one of them."""
        items = self._items(span)
        edges: dict[Digest, list[Digest]] = {}
        ends: dict[Digest, tuple[list[str], MachineImage, tuple[str, ...]]] = {}
        visited: set[Digest] = set()
        root: Digest | None = None
        # (turns taken, the state they come from); the first child of a state runs on in place
        stack: list[tuple[tuple[str, ...], Digest | None]] = [((), None)]
        while stack:
            prefix, parent = stack.pop()
            m, threads = self._replay(start.image, items, prefix)
            if m is None:
                continue
            while True:
                codes = _diag_codes(m)
                key = _digest((m.canonical_state(), _threads_state(m, threads), codes))
                if parent is None:
                    root = key
                else:
                    edges.setdefault(parent, []).append(key)
                if key in visited:
                    break
                visited.add(key)
                self.states += 1
                self._check_limits(k)
                self._note_violations(m, k, start, prefix)
                if m.stopped is not None:
                    self.stopped = m.stopped.message
                    break
                live = [th for th in threads if not th.done]
                enabled = [th for th in live if not m.blocked(th)]
                if not live:
                    m.end_batch()
                    self._note_violations(m, k, start, prefix)
                    ends[key] = (list(prefix), m.image(), _diag_codes(m))
                    break
                if not enabled:
                    self._deadlock(m, k, start, prefix, live)
                    break
                for th in reversed(enabled[1:]):
                    stack.append(((*prefix, th.name), key))
                th = enabled[0]
                m.turn(th, threads)
                prefix = (*prefix, th.name)
                parent = key
        counts = _count_paths(root, edges, set(ends))
        out = []
        for key, (turns, image, codes) in ends.items():
            out.append(
                _End(key, image, [*start.orders, turns], start.schedules * counts[key], codes)
            )
        return out

    def _replay(
        self, image: MachineImage, items: list[tuple[int, Event]], prefix: Sequence[str]
    ) -> tuple[Machine | None, list[Thread]]:
        """A machine at the group's start with ``prefix``'s turns taken."""
        m = self._machine()
        m.restore(image)
        threads = m.begin_batch(items)
        by_name = {th.name: th for th in threads}
        for name in prefix:
            m.turn(by_name[name], threads)
            if m.stopped is not None:
                return m, threads
        return m, threads

    def _check_limits(self, k: int) -> None:
        if self.states > self.max_states:
            raise SearchLimit(
                f"the limit of {self.max_states:,} states was reached in group {k + 1} "
                "(--max-states): nothing is claimed"
            )
        if self.states % 1000 == 0:
            if self.progress is not None:
                self.progress(self.states, f"group {k + 1}: {self.states:,} states")
            if self.cancel is not None and self.cancel():
                raise SearchLimit(f"cancelled after {self.states:,} states")

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
        }


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


def _threads_state(m: Machine, threads: list[Thread]) -> tuple[Any, ...]:
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
                _frames(th.gen, ids),
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


def _frames(gen: Any, ids: dict[int, Any]) -> tuple[Any, ...]:
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
        out.append(
            (
                gen.gi_code.co_qualname,
                frame.f_lasti,
                # (a frame's locals come in its code's variable order: no sort needed)
                tuple([(k, _canon(v, ids, 1)) for k, v in frame.f_locals.items()]),
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
    """Paths from ``root`` to each node of a graph without cycles (Kahn's order)."""
    if root is None:
        return {}
    indeg: dict[Digest, int] = {root: 0}
    for src, dsts in edges.items():
        indeg.setdefault(src, 0)
        for d in dsts:
            indeg[d] = indeg.get(d, 0) + 1
    paths: dict[Digest, int] = dict.fromkeys(indeg, 0)
    paths[root] = 1
    ready = deque(n for n, d in indeg.items() if d == 0)
    while ready:
        n = ready.popleft()
        for d in edges.get(n, ()):
            paths[d] += paths[n]
            indeg[d] -= 1
            if indeg[d] == 0:
                ready.append(d)
    return {e: paths.get(e, 0) for e in ends}


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
    progress: Callable[[int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Search every interleaving of ``events``' concurrent groups (see the module docstring)."""
    return Explorer(events, settings, max_states=max_states, progress=progress, cancel=cancel).run()
