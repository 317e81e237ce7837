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
outcome and no violation: that is why hashing is sound. Reading frames needs the kernel's
generators in Python (a compiled generator has no frame): the CLI runs the search with
``DPAMT_PURE=search``, the search's build (:data:`explorer.model.native.SEARCH`: this module and
the engine's modules without generators compiled, the generators Python; ``DPAMT_PURE=1``: all
Python).

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

**The reduction is the default** (``reduction=True``; ``--no-reduction`` on the CLI): turns of
different CPUs whose footprints are disjoint commute, so the search runs one schedule per class
of schedules that differ only in the order of such turns (:class:`_Reduced`). It finds the same
outcomes and violations; its ``states`` and ``schedules`` count what it searched, not every
interleaving (the result's ``reduction`` says which). The full search (``reduction=False``)
counts every schedule exactly: the reference the property test compares with, and what hand
counts (lost_race's 540 states) are of.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import pickle
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from explorer.model.events import Event, Fault, Zap, pinned_pfns, reserved_pfns
from explorer.model.machine import (
    Machine,
    MachineImage,
    batches,
)
from explorer.model.settings import Settings
from explorer.model.state import (
    FP_PAMT_LOCK,
    Thread,
)
from explorer.model.steps import COUNTER_NAMES
from explorer.model.summary import summary

#: Default bound on the states visited (all groups together): past it the search stops, claims
#: nothing, and says how far it got.
MAX_STATES = 1_000_000
#: The garbage collector's thresholds during a search (Python's default: 700, 10, 10).
SEARCH_GC = (50_000, 20, 100)
#: Seconds between two progress reports.
PROGRESS_SECONDS = 0.5
#: Seconds a stopped search spends at most summarising the end states it had reached
#: (:meth:`Explorer._reached`)
REACHED_SECONDS = 2.0
#: The most turns of one CPU the reduced search fuses into one edge (turns that touch no
#: shared object: :meth:`_Reduced._execute`); a bound, so that a CPU looping on its own can
#: not run away from the search's budget checks
MAX_FUSED_TURNS = 64
#: The step that ends a lap of a fault's retry loop (``tdx_handle_ept_violation()``'s
#: RET_PF_RETRY): a fused edge ends there, so that the state at the loop's head is a state of
#: the graph in every lap and a lap that changed nothing comes back to it (the fair search's
#: cycles), instead of the explorer's ``max_retries`` bound firing inside one edge
_LAP_ENDS = frozenset({"fault.retry"})

Digest = bytes
#: An end state as a group's search records it: the turns that reach it, the machine there
#: and the diagnostics' codes
_EndSoFar = tuple[list[str], "MachineImage", tuple[str, ...]]
#: The edges of the reduced search that are several turns of one CPU (its turns that touch no
#: shared object, fused with the turn after them: :meth:`_Reduced._execute`), by (the state
#: they leave, the CPU): how many turns
Fused = dict[tuple[Digest, str], int]
#: An edge's step label, or the labels of a fused edge's turns
Label = str | tuple[str, ...]
#: The diagnostics an exploration reports as findings (exit status 1): invariant violations and
#: the kernel's own WARNs (a WARN_ON_ONCE that fires under some schedule is a bug it found).
FINDINGS = ("violation", "warning")
#: The kernel's bug checks among the engine's "error" diagnostics, findings too: KVM_BUG_ON is a
#: WARN_ON_ONCE that also marks the VM bugged, BUG_ON would crash the host (the explorer's own
#: errors, an impossible event or the step limit, are not findings of the kernel)
FINDING_ERRORS = frozenset({"KVM_BUG_ON", "BUG_ON"})


def _finding(kind: str, code: str) -> bool:
    return kind in FINDINGS or (kind == "error" and code in FINDING_ERRORS)


#: Counters left out of a state (Machine.canonical_state): the spin count, and the retry count,
#: so that a lap of a retry loop that changed nothing else comes back to the state it left.
_IGNORED_COUNTERS = ("spins", "fault_retries")
#: The indices of the counters a state keeps.
_COUNTED = tuple(i for i, name in enumerate(COUNTER_NAMES) if name not in _IGNORED_COUNTERS)
_ALL_BUT_SPINS = tuple(i for i, name in enumerate(COUNTER_NAMES) if name != "spins")
#: The search's machines' ``max_retries`` under the fair search (:meth:`Explorer._search_machine`).
_NO_RETRY_BOUND = 1 << 62
#: Locals of kernel frames left out of a state for the same reason: the lap counter of
#: tdx_handle_ept_violation()'s local retry loop. It only decides when the explorer's own
#: ``max_retries`` bound fires, which the fair search's machines do not have
#: (``_NO_RETRY_BOUND``): the search finds the loop as a cycle and reports it only when it is
#: fair (_livelocks). (With a bound, a state first reached a lap before it ran into the bound
#: where the same state reached sooner closes its loop: which one the search kept decided.)
_ABSTRACT_LOCALS: dict[str, frozenset[str]] = {
    "tdx_handle_ept_violation": frozenset({"attempt"}),
}
#: Locals of kernel frames that are dead at every point the frame can be suspended (each read
#: follows an assignment with no yield between), left out of a state as if unbound: they
#: cannot change what the CPU does next. tdx_handle_ept_violation()'s ``ret`` is the result of
#: the lap before, RET_PF_RETRY, at every turn of a later lap, and unbound at every turn of the
#: first: with it, a vCPU back at the top of the loop after a lost race was a new state, not
#: the state of its first lap, and every state it met again in its second lap was searched
#: twice (tests/test_explore_keys.py checks the claim against the function's bytecode).
_DEAD_LOCALS: dict[str, frozenset[str]] = {
    "tdx_handle_ept_violation": frozenset({"ret"}),
}


class SearchLimit(Exception):
    """The state bound or a cancel stopped the search before it was complete."""


class _Refuse(Exception):
    """A turn fused on the assumption that no other CPU's turn conflicts with it met one: the
    objects (``shared``) whose accesses broke the assumption (:meth:`_Reduced._fusable`)."""

    def __init__(self, shared: set[Any]) -> None:
        super().__init__(sorted(map(repr, shared)))
        self.shared = shared


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
        reduction: bool = True,
    ) -> None:
        self.events = events
        self._pins: dict[int, frozenset[int]] | None = None
        #: the pins every machine of the search takes (``_pins``: with the current group's
        #: own pages, :meth:`_pin_group`)
        self._base_pins: dict[int, frozenset[int]] | None = None
        #: True (the default): the partial-order reduction (:class:`_Reduced`): one schedule
        #: per class of schedules that differ only in the order of independent turns, so
        #: ``states`` and ``schedules`` count those searched, not all. False: every enabled
        #: CPU's turn in every state (the reference the reduced search is tested against;
        #: exact state and schedule counts)
        self.reduction = reduction
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
        self._replayer: Machine | None = None  # the machine _replay resets and returns
        self.progress = progress
        self.cancel = cancel
        self.states = 0
        self.groups: list[_Group] = []
        self.violations: dict[str, Violation] = {}
        self.deadlocks = 0
        self.stopped: str | None = None  # an impossible event under some interleaving
        #: where the first impossible event was met: its line, event, the schedule reaching it
        self.stopped_at: dict[str, Any] | None = None
        #: the group being searched: each start's end states reached so far (the dict the
        #: search fills), for what a stopped search can still show (:meth:`_reached`)
        self._in_group: list[tuple[_End, dict[Digest, _EndSoFar]]] = []

    # ------------------------------------------------------------------ machines
    def _machine(self) -> Machine:
        m = Machine(self.settings, record=False, check=True)
        m.fp_on = self.reduction
        if self._pins is None:  # (an imported capture's pages, reserved as conform replays)
            m.mem.pin(reserved_pfns(self.events))
            self._pins = self._base_pins = m.mem.pin_table()
        else:
            m.mem.use_pins(self._pins)
        return m

    def _pin_group(self, span: tuple[int, int]) -> None:
        """Reserve, for the search of the group ``span``, the pages its own events name. A
        hand-written fault's pfn is taken when its fault comes (a replay reserves nothing
        else): in the replay's one order it is free then, but among every order another CPU
        of the group (a cache top-up from its per-CPU block) could take it first, and the
        trace's own page would make its fault impossible under those orders. The batches
        before the group ran as a replay runs them, without this reservation, so a trace the
        replay refuses there is refused here too."""
        if self._base_pins is None:
            self._machine()
        base = self._base_pins
        assert base is not None
        pfns = pinned_pfns([self.events[i] for i in range(*span)])
        if pfns:
            m = Machine(self.settings, record=False, check=False)
            m.mem.use_pins(base)
            m.mem.pin(pfns)
            self._pins = m.mem.pin_table()
        else:
            self._pins = base
        if self._replayer is not None:
            self._replayer.mem.use_pins(self._pins)

    def _search_machine(self) -> Machine:
        """The machine the searches of the groups run on (re-executed to each state): under
        the fair search without a ``max_retries`` bound. The lap counter is no part of a state
        (``_ABSTRACT_LOCALS``), so a state is kept with whichever count its first path had,
        and a bound would fire on that count, not the state's: a loop met first a lap before
        the bound never closed, and its LIVELOCK was missed. Laps close as cycles."""
        m = self._machine()
        if self.fair:
            m.max_retries = _NO_RETRY_BOUND
        return m

    def _items(self, span: tuple[int, int]) -> list[tuple[int, Event]]:
        return [(i, self.events[i]) for i in range(*span)]

    def _run_plain(self, m: Machine, spans: Iterable[tuple[int, int]]) -> None:
        for span in spans:
            if m.stopped is not None:
                return
            m.run_batch(self._items(span))

    # ------------------------------------------------------------------ the search
    def run(self) -> dict[str, Any]:
        """Search every concurrent group in trace order; the JSON result (``--json``).

        The cyclic garbage collector runs less often meanwhile (:data:`SEARCH_GC`): the
        search's graph is tens of thousands of long-lived nodes, and every older-generation
        collection walked all of them (8 % of a three-vCPU search's time in perf); the search
        makes little cyclic garbage (the same peak memory with the collector off)."""
        before = gc.get_threshold()
        gc.set_threshold(*SEARCH_GC)
        try:
            return self._run()
        finally:
            gc.set_threshold(*before)

    def _run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._t0 = time.monotonic()
        spans = batches(self.events)
        m = self._machine()
        concurrent = [b for b, span in enumerate(spans) if self._is_concurrent(span)]
        self._groups_total = len(concurrent)
        complete = True
        ends: list[_End]
        first = concurrent[0] if concurrent else len(spans)
        reached: list[dict[str, Any]] = []
        found = summarised = 0  # end states a stopped search had found, and summarised
        self._run_plain(m, spans[:first])
        # the batches before the first group run in one order: their findings have no schedule
        self._note_plain(m, -1, [])
        ends = [_End(b"", m.image(), [], 1, _diag_codes(m))] if m.stopped is None else []
        if m.stopped is not None:
            self._impossible(m, -1, [])
        try:
            for k, b in enumerate(concurrent):
                span = spans[b]
                self.groups.append(_Group(k, self.events[span[0]].t, span))
                nxt = concurrent[k + 1] if k + 1 < len(concurrent) else len(spans)
                ends = self._group(k, span, ends, spans[b + 1 : nxt])
        except SearchLimit as exc:
            complete = False
            reason = str(exc)
            if concurrent and len(self.groups) == len(concurrent):
                reached, found, summarised = self._reached(spans[concurrent[-1] + 1 :])
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
            "reduction": self.reduction,
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
            result["reached"] = reached
            result["covered"]["end_states_found"] = found
            result["covered"]["end_states_summarised"] = summarised
        if self.stopped is not None:
            result["impossible"] = self.stopped
            result["impossible_at"] = self.stopped_at
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
        search = self._search_reduced if self.reduction else self._search
        self._in_group = []
        self._pin_group(span)
        for start in starts:
            for end in search(k, span, start):
                m = self._machine()
                m.restore(end.image)
                self._run_plain(m, after)
                # the single-CPU batches after the group run in one order from its end state:
                # their findings are reached by the schedule that reached that state
                self._note_plain(m, k, end.orders)
                if m.stopped is not None:
                    self._impossible(m, k, end.orders)
                    continue
                codes = _merge_codes(end.diag_codes, _diag_codes(m))
                key = _digest(
                    (m.canonical_state(_IGNORED_COUNTERS if self.fair else ("spins",)), codes)
                )
                seen = merged.get(key)
                if seen is None:
                    merged[key] = _End(key, m.image(), end.orders, end.schedules, codes, end.paths)
                else:
                    seen.schedules += end.schedules
                    seen.paths = _cap(seen.paths | end.paths)
        return list(merged.values())

    def _search(self, k: int, span: tuple[int, int], start: _End) -> list[_End]:
        """Every interleaving of group ``k`` from ``start``: its distinct end states, each with
        the number of turn orders that reach it and one of them."""
        items = self._items(span)
        edges: dict[Digest, list[tuple[str, Digest]]] = {}
        labels: dict[Digest, list[Label]] = {}  # each edge's step label, as edges[...] lists them
        enabled_at: dict[Digest, tuple[str, ...]] = {}
        parent_of: dict[Digest, tuple[Digest, str]] = {}
        ends: dict[Digest, _EndSoFar] = {}
        self._in_group.append((start, ends))
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
                key, lap_key = _keys(bare, counted, ts, codes)
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
                    self._impossible(m, k, [*start.orders, list(prefix)])
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
        return self._finish(k, start, items, root, edges, labels, enabled_at, parent_of, ends)

    def _finish(
        self,
        k: int,
        start: _End,
        items: list[tuple[int, Event]],
        root: Digest | None,
        edges: dict[Digest, list[tuple[str, Digest]]],
        labels: dict[Digest, list[Label]],
        enabled_at: dict[Digest, tuple[str, ...]],
        parent_of: dict[Digest, tuple[Digest, str]],
        ends: dict[Digest, _EndSoFar],
        fused: Fused | None = None,
    ) -> list[_End]:
        """A group's searched graph to its end states: the livelock check, the schedules
        reaching each end state and its kernel paths."""
        if self.fair:
            self._livelocks(k, start, items, edges, enabled_at, parent_of, fused)
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
                    _merge_codes(start.diag_codes, codes),
                    _join_paths(start.paths, paths.get(key, set())),
                )
            )
        return out

    def _search_reduced(self, k: int, span: tuple[int, int], start: _End) -> list[_End]:
        """Group ``k`` from ``start`` with partial-order reduction (:class:`_Reduced`): one
        schedule per class of schedules that differ only in the order of independent turns."""
        items = self._items(span)
        shared: set[Any] = set()
        states, deadlocks, violations = self.states, self.deadlocks, dict(self.violations)
        while True:
            g = _Reduced(self, k, start, items, shared)
            self._in_group = [e for e in self._in_group if e[0] is not start]
            self._in_group.append((start, g.ends))
            try:
                g.run()
                break
            except _Refuse as again:  # search the group again without those fusions
                shared |= again.shared
                self.states, self.deadlocks = states, deadlocks
                self.violations = dict(violations)
        return self._finish(
            k, start, items, g.root, g.edges, g.labels, g.enabled_at, g.parent_of, g.ends, g.fused
        )

    def _livelocks(
        self,
        k: int,
        start: _End,
        items: list[tuple[int, Event]],
        edges: dict[Digest, list[tuple[str, Digest]]],
        enabled_at: dict[Digest, tuple[str, ...]],
        parent_of: dict[Digest, tuple[Digest, str]],
        fused: Fused | None = None,
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
            prefix = _path_to(entry, parent_of, fused)
            lap = _lap(entry, cycle, edges, fused)
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
        # one machine for every replay, reset (Machine.reset): a new one cost as much again
        # as the restore (the previous replay's machine is not used after this call)
        m = self._replayer
        if m is None:
            m = self._replayer = self._search_machine()
        m.reset(image)
        threads = m.begin_batch(items)
        by_name = {th.name: th for th in threads}
        info = None
        # the prefix's turns were recorded when first taken: re-executing them needs no
        # footprints (the next turn taken starts from empty sets, :meth:`_Reduced._execute`)
        m.fp_on = False
        for name in prefix:
            info = m.turn(by_name[name], threads)
            if m.stopped is not None:
                break
        m.fp_on = self.reduction
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
            f"group {k + 1} of {self._groups_total}: {self.states:,} states"
            f"{' (reduced)' if self.reduction else ''}, "
            f"{rate:,.0f} states/s, {elapsed:.1f} s",
        )

    def _note_violations(self, m: Machine, k: int, start: _End, prefix: Sequence[str]) -> None:
        """Findings of a state of group ``k``, reached from ``start`` by the turns ``prefix``
        (called at every state: the schedule is built only when there is a diagnostic)."""
        if m.diagnostics:
            self._note_plain(m, k, [*start.orders, list(prefix)])

    def _note_plain(self, m: Machine, k: int, orders: list[list[str]]) -> None:
        """Findings the machine has raised, reached by the turn orders ``orders`` of the groups
        up to ``k``: a group's state, or its single-CPU batches run in their one order after
        (-1: before the first group, no schedule)."""
        for d in m.diagnostics:
            if _finding(d.kind, d.code) and d.code not in self.violations:
                self.violations[d.code] = Violation(
                    d.kind,
                    d.code,
                    d.message,
                    d.step,
                    k,
                    [name for order in orders for name in order],
                    [list(order) for order in orders],
                )

    def _impossible(self, m: Machine, k: int, orders: list[list[str]]) -> None:
        """Note the first impossible event met (an event the engine refuses in the state a
        schedule brought it to): its message, line and the schedule that reaches it (``orders``:
        the turn orders of the groups up to ``k``; -1: before the first group, no schedule)."""
        stop = m.stopped
        if stop is None or self.stopped is not None:
            return
        self.stopped = stop.message
        self.stopped_at = {
            "line": stop.line,
            "event": stop.event + 1,
            "group": k,
            "schedule": [name for order in orders for name in order],
            "orders": orders,
        }

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

    def _reached(self, after: Sequence[tuple[int, int]]) -> tuple[list[dict[str, Any]], int, int]:
        """What a search stopped in the trace's last concurrent group had reached: the end
        states found so far (each by a schedule that reaches it, run on through the batches
        ``after`` it, as :meth:`_group` does), grouped as outcomes are; and how many end states
        were found and how many of them are summarised. Not every outcome: the search did not
        finish, so nothing is claimed about the others, nor about how many schedules reach
        these (no ``schedules``, no kernel paths).

        Summarising takes about 0.1 ms an end state (a restore and a summary), and a search
        stopped late may hold tens of thousands: it stops after :data:`REACHED_SECONDS`, in the
        order the end states were found, so a budget or a stop signal is not overrun by more
        than that (the app's Stop kills a child that has not answered in 5 s)."""
        found = [(start, e) for start, ends in self._in_group for e in list(ends.values())]
        deadline = time.monotonic() + REACHED_SECONDS
        out = []
        done = 0
        for start, (turns, image, codes) in found:
            if time.monotonic() > deadline:
                break
            done += 1
            m = self._machine()
            m.restore(image)
            self._run_plain(m, after)
            if m.stopped is None:
                codes = _merge_codes(_merge_codes(start.diag_codes, codes), _diag_codes(m))
                end = _End(b"", image, [*start.orders, turns], 0, codes, frozenset())
                out.append(self._outcome(end, m))
        grouped = _group_outcomes(out)
        for o in grouped:
            del o["schedules"], o["paths"]
        return grouped, len(found), done

    def _outcome(self, end: _End, m: Machine | None = None) -> dict[str, Any]:
        """``end`` as an outcome for the result; ``m``: a machine already in its state."""
        if m is None:
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


#: The pickle opcodes :func:`_keys` assembles a tuple's pickle from (``pickle``'s names).
_PROTO = b"\x80" + bytes([pickle.HIGHEST_PROTOCOL])
_FRAME = b"\x95"
_MARK, _TUPLE, _TUPLE3, _STOP = b"(", b"t", b"\x87", b"."
#: A pickle whose body (and STOP) is shorter than this is one frame (CPython's
#: ``FRAME_SIZE_TARGET``); it is framed only from ``FRAME_SIZE_MIN`` bytes on.
_FRAME_TARGET = 64 * 1024
_FRAME_MIN = 4


def _pickled_body(obj: Any) -> bytes | None:
    """``obj``'s pickle (as :func:`_digest` makes it) without its protocol header, frame
    header and STOP: the bytes it contributes inside a tuple's pickle (no memo, so they do
    not depend on what is pickled around them). None if the pickle is not one frame."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.fast = True
    p.dump(obj)
    data = buf.getvalue()
    n = len(data)
    if n - 2 < _FRAME_MIN:  # (too short to be framed)
        return data[2:-1]
    if data[2:3] == _FRAME and int.from_bytes(data[3:11], "little") == n - 11:
        return data[11:-1]
    return None


def _framed_digest(body: bytes) -> Digest | None:
    """:func:`_digest` of the object whose pickle's body is ``body``, if that pickle is one
    frame (else None)."""
    size = len(body) + 1
    if size >= _FRAME_TARGET:
        return None
    head = _PROTO + _FRAME + size.to_bytes(8, "little") if size >= _FRAME_MIN else _PROTO
    h = hashlib.blake2b(head, digest_size=16)
    h.update(body)
    h.update(_STOP)
    return h.digest()


#: The opcode that ends a tuple of 0 to 3 items (pickled without MARK; more: MARK ... TUPLE).
_TUPLE_OF = (b")", b"\x85", b"\x86", b"\x87")


def _tuple_body(bodies: Sequence[bytes]) -> bytes:
    """The pickle body (as :func:`_pickled_body` gives it) of the tuple whose items' bodies
    are ``bodies`` (no memo: an item's bytes do not depend on its neighbours)."""
    n = len(bodies)
    if n <= 3:
        return b"".join((*bodies, _TUPLE_OF[n]))
    return b"".join((_MARK, *bodies, _TUPLE))


def _keys(
    bare: Any, counted: Any, ts: Any, codes: Any, ts_body: bytes | None = None
) -> tuple[Digest, Digest]:
    """A state's key and its key without the counters (``lap_key``, see :func:`_lap_back`).
    Their values order the fair-cycle search (``_fair_cycles`` sorts states), so they stay
    the digests of these tuples (:func:`_digest`): a livelock's example schedule does not move.

    The two tuples share ``bare`` and ``ts``, the bulk of a state: each part is pickled once
    and the two tuples' pickles are assembled from the parts (a 4-tuple is MARK, items,
    TUPLE; a 3-tuple items, TUPLE3; without a memo an item's bytes do not depend on its
    neighbours), the same bytes as pickling each tuple whole. A state too large for one
    pickle frame takes the plain way. ``ts_body``: ``ts``' pickle body if the caller has it
    (:meth:`_Reduced._threads_part` assembles it from each CPU's, and passes ``ts`` None)."""
    b, c, d = _pickled_body(bare), _pickled_body(counted), _pickled_body(codes)
    t = ts_body if ts_body is not None else _pickled_body(ts)
    if b is not None and c is not None and t is not None and d is not None:
        key = _framed_digest(b"".join((_MARK, b, c, t, d, _TUPLE)))
        lap_key = _framed_digest(b"".join((b, t, d, _TUPLE3)))
        if key is not None and lap_key is not None:
            return key, lap_key
    if ts is None:  # (only its body given: the tuple it pickles, equal to the one pickled)
        assert ts_body is not None
        ts = pickle.loads(b"".join((_PROTO, ts_body, _STOP)))
    return _digest((bare, counted, ts, codes)), _digest((bare, ts, codes))


def _diag_codes(m: Machine) -> tuple[str, ...]:
    return tuple(sorted({f"{d.kind}:{d.code}" for d in m.diagnostics}))


def _merge_codes(before: tuple[str, ...], now: tuple[str, ...]) -> tuple[str, ...]:
    """The diagnostics of a run so far: those of the groups and batches before (a machine's
    own list starts empty at each group) and those since, sorted, each once."""
    return tuple(sorted(set(before) | set(now))) if before else now


def _threads_state(m: Machine, threads: list[Thread], abstract: bool = True) -> tuple[Any, ...]:
    """Each CPU's part of the state (:func:`_thread_state`)."""
    ids = _identities(m, threads)
    return tuple([_thread_state(th, ids, abstract) for th in threads])


def _thread_state(th: Thread, ids: dict[int, Any], abstract: bool) -> tuple[Any, ...]:
    """One CPU's part of the state: its queue, stack, locks, spin, and its generators'
    frames. It changes only when the CPU takes a turn: all of it is the CPU's own, and what
    its frames hold is a scalar, a frozen value, an object named in ``ids`` (named, not
    read), or a container of the CPU's own making (tests/test_explore_keys.py checks the
    reduced search's copies of it, :meth:`_Reduced._threads_part`, against this at every
    state of several searches)."""
    return (
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
        # (KVM's caches by name: a fault's frames hold the dict, and reading it out, its four
        # caches' reprs sorted, was half the cost of such a frame)
        ids[id(v.caches)] = ("caches", v.id)
        for name, c in v.caches.items():
            ids[id(c)] = ("cache", v.id, name)
            ids[id(c.pfns)] = ("cache.pfns", v.id, name)
    for name, value in m.extra.items():
        ids[id(value)] = ("extra", name)
    return ids


def _chain(gen: Any) -> Iterator[tuple[Any, Any]]:
    """A generator chain, ``yield from`` followed down (at most 64 deep): each generator and
    its frame; the last one's frame is None when the chain ends in a finished or compiled
    generator."""
    depth = 0
    while gen is not None and depth < 64:
        frame = getattr(gen, "gi_frame", None)
        yield gen, frame
        if frame is None:
            return
        gen = gen.gi_yieldfrom
        depth += 1


def _frames(gen: Any, ids: dict[int, Any], abstract: bool = True) -> tuple[Any, ...]:
    """A generator chain's frames: code, position, locals (``yield from`` followed down)."""
    out: list[tuple[Any, ...]] = []
    scalars = _SCALARS
    get = ids.get  # (every value in ids is a non-empty str or tuple: never falsy)
    for g, frame in _chain(gen):
        if frame is None:  # finished, or a compiled generator (no frame: see the docstring)
            if not isinstance(g, types.GeneratorType):
                raise TypeError(
                    "explore reads generator frames: run it with the kernel's generators in "
                    "Python (DPAMT_PURE=search, or DPAMT_PURE=1)"
                )
            out.append(("done",))
            break
        code = g.gi_code
        name = code.co_qualname
        hidden = _ABSTRACT_LOCALS.get(name) if abstract else None
        # The locals in the code's variable order, not in ``f_locals``' order: that dict is
        # kept on the frame between reads, a local enters it when a read first finds it bound
        # and leaves it when a read finds it unbound, so its order is the history of when the
        # frame was read (a generator read at every state of a path, or first read after a
        # re-execution). Equal states then had two keys (a duplicate state, and one more
        # re-execution). The stand-in of each local is _canon's, with its two commonest cases
        # (a scalar, an object named in ``ids``) taken here: this runs for every local of
        # every frame of every state.
        f_locals = frame.f_locals
        names = _varnames(code, abstract)
        if hidden is None:
            locs = tuple(
                [
                    (k, v if type(v) in scalars else (get(id(v)) or _canon(v, ids, 1)))
                    for k in names
                    if (v := f_locals.get(k, _UNBOUND)) is not _UNBOUND
                ]
            )
        else:
            locs = tuple(
                [
                    (
                        k,
                        "*"
                        if k in hidden
                        else (v if type(v) in scalars else (get(id(v)) or _canon(v, ids, 1))),
                    )
                    for k in names
                    if (v := f_locals.get(k, _UNBOUND)) is not _UNBOUND
                ]
            )
        out.append((name, frame.f_lasti, locs))
    return tuple(out)


_SCALARS = frozenset({int, str, bool, float, bytes, type(None)})
#: (a local's value is never this object: the marker of a local not bound in a frame)
_UNBOUND = object()


def _varnames(code: types.CodeType, abstract: bool = False) -> tuple[str, ...]:
    """Every local a frame of ``code`` can have, in the code's order (arguments and locals,
    then cells, then free variables: what ``f_locals`` holds when all are bound), without its
    dead locals (:data:`_DEAD_LOCALS`) if ``abstract``. Kept per code object by its id, the
    object held with it so the id stays its own: a code object's hash digests its bytecode
    and constants, a third of a microsecond at every frame read."""
    hit = _VARNAMES.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[2] if abstract else hit[1]
    names = code.co_varnames + code.co_cellvars + code.co_freevars
    dead = _DEAD_LOCALS.get(code.co_qualname, frozenset())
    live = tuple([k for k in names if k not in dead])
    _VARNAMES[id(code)] = (code, names, live)
    return live if abstract else names


_VARNAMES: dict[int, tuple[types.CodeType, tuple[str, ...], tuple[str, ...]]] = {}


@functools.lru_cache(maxsize=1 << 16)
def _event_canon(ev: Event) -> tuple[str, int, str]:
    """A trace event held by a frame: its line and text. Events are frozen values, so equal
    events have equal stand-ins and one computed per event serves every state."""
    return ("event", ev.line, ev.describe())


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
        items = tuple(v)
        if _SCALARS.issuperset(map(type, items)):  # (a list of pfns: no per-item call)
            return (type(v).__name__, items)
        return (
            type(v).__name__,
            tuple([x if type(x) in _SCALARS else _canon(x, ids, depth + 1) for x in items]),
        )
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
        return _event_canon(v)
    if isinstance(v, types.GeneratorType):
        return ("gen", _frames(v, ids))
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return ("fn", getattr(v, "__qualname__", repr(v)))
    fields = _fields(type(v))
    if fields is not None:  # a small value object of the engine (Spin, ...)
        return (
            type(v).__qualname__,
            tuple(_canon(getattr(v, s, None), ids, depth + 1) for s in fields),
        )
    raise TypeError(f"explore: cannot canonicalize a local of type {type(v).__qualname__}")


def _fields(cls: type) -> tuple[str, ...] | None:
    """The fields of a small value object of the engine, sorted: its ``__slots__`` in Python,
    its ``__mypyc_attrs__`` compiled (the search's build compiles the machine's module, whose
    native classes have no ``__slots__``), the same names either way. None: not such a class."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    names = getattr(cls, "__slots__", None)
    if names is None:
        names = getattr(cls, "__mypyc_attrs__", None)
    got = _FIELDS[cls] = None if names is None else tuple(sorted(names))
    return got


_FIELDS: dict[type, tuple[str, ...] | None] = {}


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
    labels: dict[Digest, list[Label]],
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
        told = [x for x in ((label,) if isinstance(label, str) else label) if x and _telling(x)]
        new = set()
        for s in here:
            for x in told:
                s = _extend(s, k, cpu, x)
            new.add(s)
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


def _path_to(
    n: Digest, parent_of: dict[Digest, tuple[Digest, str]], fused: Fused | None = None
) -> list[str]:
    """The turns of the first path the search took to state ``n`` (an edge that is several
    turns of one CPU, ``fused``, as that many turns)."""
    turns: list[str] = []
    while n in parent_of:
        parent, cpu = parent_of[n]
        turns.extend([cpu] * (fused.get((parent, cpu), 1) if fused else 1))
        n = parent
    turns.reverse()
    return turns


def _apart(access: tuple[frozenset[str], frozenset[str]]) -> bool:
    """Whether the accesses of an object (the CPUs, the modes) conflict with none of each other:
    one CPU's, or reads only, or updates only."""
    cpus, modes = access
    return len(cpus) == 1 or modes in (_READ_ONLY, _UPDATE_ONLY)


_READ_ONLY = frozenset("r")
_UPDATE_ONLY = frozenset("a")


def _lap(
    entry: Digest,
    cycle: set[Digest],
    edges: dict[Digest, list[tuple[str, Digest]]],
    fused: Fused | None = None,
) -> list[str]:
    """A shortest loop of turns from ``entry`` back to it inside ``cycle`` (a ``fused`` edge as
    its turns)."""
    back: dict[Digest, tuple[Digest, str]] = {}
    queue = deque([entry])
    seen = {entry}
    while queue:
        n = queue.popleft()
        for cpu, d in edges.get(n, ()):
            if d not in cycle:
                continue
            if d == entry:
                turns = [cpu] * (fused.get((n, cpu), 1) if fused else 1)
                while n != entry:
                    n, c = back[n]
                    turns.extend([c] * (fused.get((n, c), 1) if fused else 1))
                turns.reverse()
                return turns
            if d not in seen:
                seen.add(d)
                back[d] = (n, cpu)
                queue.append(d)
    return []


# ---------------------------------------------------------------------- partial-order reduction
#: A turn's footprint: the objects it read, wrote, and changed by commutative updates
#: (:meth:`explorer.model.state.KernelState.fp_read`).
Footprint = tuple[frozenset[Any], frozenset[Any], frozenset[Any]]
#: The footprint of a turn of an event the kernel code does not annotate (TD and vCPU creation,
#: vCPU free, TD teardown): it conflicts with every turn of every other CPU.
_STAR: Footprint = (frozenset(), frozenset({"*"}), frozenset())
#: The events whose kernel code records what it reads and writes.
_ANNOTATED = (Fault, Zap)


def _footprint(m: Machine) -> Footprint:
    """The recorder's sets after a turn, normalised: an object both read and updated is
    written; a written object is neither read nor updated.

    With them, what the invariant checks after the turn read of each region it dirtied
    (:func:`explorer.model.invariants.check_regions`): whether ``pamt_lock`` is free matters
    only when the region's refcount and pair disagree, its pages in TD use only when it has no
    pair; both conditions are the region's own state after the turn, which the turn read.
    Invariant 2 reads nothing a footprint needs (docs/engine.md, point 6): every change of its
    terms is an addition that keeps the identity (``KernelState.pamt_enter``)."""
    r = m.fp_r
    if m.fp_checked:
        pairs = m.module.pairs
        for region in m.fp_checked:
            pair = pairs.get(region)
            if (m.refcount.get(region, 0) > 0) != (pair is not None):
                r.add(FP_PAMT_LOCK)
                m.fp_l.add(("check", FP_PAMT_LOCK))
            if pair is None:
                r.add(("used", region))
    w = frozenset(m.fp_w)
    both = m.fp_r & m.fp_a
    if both:
        w = w | both
    return (frozenset(m.fp_r) - w, w, frozenset(m.fp_a) - w)


def _dependent(x: Footprint, y: Footprint) -> bool:
    """Two turns of different CPUs are dependent when one writes an object the other reads,
    writes or updates, or one updates an object the other reads. Updates of one object
    (additions, frees to the allocator) commute with each other, reads with reads."""
    xr, xw, xa = x
    yr, yw, ya = y
    if "*" in xw or "*" in yw:
        return True
    return not (
        xw.isdisjoint(yr)
        and xw.isdisjoint(yw)
        and xw.isdisjoint(ya)
        and yw.isdisjoint(xr)
        and yw.isdisjoint(xa)
        and xa.isdisjoint(yr)
        and ya.isdisjoint(xr)
    )


#: The lock word of ``pamt_lock`` in the lock-aware relation: acquisitions and releases update it
#: (commuting with each other), a look at it by a CPU that does not hold it reads it.
_LOCK_WORD = ("LW", "pamt_lock")


def _lock_aware(fp: Footprint, m: Machine, cpu: str, held_before: bool) -> Footprint:
    """The footprint a turn of ``cpu`` has in the race relation (LAPOR: Kokologiannakis, Raad
    and Vafeiadis, OOPSLA 2019): ``pamt_lock``'s acquisitions, releases and a spinner's looks
    at its holder do not conflict with each other, so two critical sections are not a race by
    their lock alone; their bodies' accesses are, and a race with a turn taken while another
    CPU holds the lock is placed at that CPU's acquisition as well (:meth:`_Reduced._lift`).
    The lock word is still read by the invariant checks of a CPU that does not hold it after
    the turn (whether it is free is what they check), and updated by acquisitions and
    releases: those conflict. The lock word stays a plain write (the relation of sleep sets)
    when this turn takes another lock while holding ``pamt_lock`` (then ``pamt_lock`` is not
    a leaf of the lock order and a deadlock could depend on the order of its holders)."""
    r, w, a = fp
    if FP_PAMT_LOCK not in r and FP_PAMT_LOCK not in w:
        return fp
    if held_before and any(isinstance(o, tuple) and o[0] == "mmu" for o in (*r, *w)):
        return fp
    ops = {op for op, lock in m.fp_l if lock == FP_PAMT_LOCK}
    r = r - {FP_PAMT_LOCK}
    w = w - {FP_PAMT_LOCK}
    if "acq" in ops or "rel" in ops:
        a = a | {_LOCK_WORD}
    if "check" in ops and m.pamt_lock != cpu:
        r = r | {_LOCK_WORD}
    if _LOCK_WORD in r and _LOCK_WORD in a:
        r, w, a = r - {_LOCK_WORD}, w | {_LOCK_WORD}, a - {_LOCK_WORD}
    return (r, w, a)


def _racing(stack: list[list[Any]], j: int, pi: int, bits: int, mask: int, star: int) -> list[int]:
    """The indices below ``j`` of the stack's turns that a turn of CPU ``pi`` with access
    ``bits`` and conflict mask ``mask`` (:meth:`_Universe.conflicts` of its footprint) is
    dependent on, in the lock-aware relation: those whose own bits (frame slot 10) meet
    ``mask``. The relation is symmetric access by access, so this equals testing each turn's
    conflict mask against ``bits``, without a mask per stack turn recomputed whenever the
    universe grows (it was a scan of every frame, per turn). Two cases are not symmetric in
    the masks and are taken as the masks have them: a turn with no access conflicts with
    nothing, and an unannotated turn (``_STAR``, its bits in ``star``) with every turn of
    another CPU, accesses or not."""
    if not bits:
        return []
    if bits & star:
        return [i for i in range(j) if stack[i][3] != pi]
    return [i for i in range(j) if stack[i][10] & mask]


def _goes_on(m: Machine, th: Thread, labels: list[str]) -> bool:
    """Whether an edge of ``th``'s turns (their step labels ``labels``) may take its next
    turn: not past the end of a retry lap (``_LAP_ENDS``), the CPU's end, a wait, a stopped
    replay or ``MAX_FUSED_TURNS``."""
    return (
        labels[-1] not in _LAP_ENDS
        and not th.done
        and not m.blocked(th)
        and m.stopped is None
        and len(labels) < MAX_FUSED_TURNS
    )


def _lock_op(m: Machine, op: str) -> bool:
    """Whether the turn just taken acquired (``op`` "acq") or released ("rel") ``pamt_lock``.
    The lock-aware relation has acquisitions and releases commute (:func:`_lock_aware`), but
    as movers they differ (Lipton): an acquisition is no left-mover (taken earlier, it makes
    another CPU's acquisition in between wait instead: a lost race becomes a won one), a
    release no right-mover (taken later, it keeps a waiting CPU waiting past the turns fused
    after it). An edge's turns before its conflicting turn must be right-movers and those
    after it left-movers (:meth:`_Reduced._execute`, :meth:`_Reduced._trail`), so an
    acquisition never extends an edge past its conflicting turn and a release ends the
    turns that lead up to it (it is then the edge's turn in the relations)."""
    return any(o == op for o, _lock in m.fp_l)


class _Universe:
    """One bit per access (object, mode, CPU) seen so far, so that the set of accesses of a
    whole searched subgraph (a *summary*) is one int and unions are single operations."""

    __slots__ = ("bit", "cpu", "om", "star")

    def __init__(self) -> None:
        self.bit: dict[tuple[Any, str, str], int] = {}
        self.om: dict[tuple[Any, str], int] = {}  # (object, mode) -> its bits, every CPU
        self.cpu: dict[str, int] = {}  # CPU -> the bits of its accesses
        self.star = 0  # the bits of unannotated turns

    def _reg(self, obj: Any, mode: str, cpu: str) -> int:
        key = (obj, mode, cpu)
        b = self.bit.get(key)
        if b is None:
            b = self.bit[key] = 1 << len(self.bit)
            self.om[(obj, mode)] = self.om.get((obj, mode), 0) | b
            self.cpu[cpu] = self.cpu.get(cpu, 0) | b
            if obj == "*":
                self.star |= b
        return b

    def step_bits(self, cpu: str, fp: Footprint) -> int:
        r, w, a = fp
        bits = 0
        for o in r:
            bits |= self._reg(o, "r", cpu)
        for o in w:
            bits |= self._reg(o, "w", cpu)
        for o in a:
            bits |= self._reg(o, "a", cpu)
        return bits

    def conflicts(self, cpu: str, fp: Footprint) -> int:
        """The bits of other CPUs' accesses (so far) that a turn ``fp`` of ``cpu`` depends on
        (:func:`_dependent`, access by access)."""
        own = self.cpu.get(cpu, 0)
        r, w, a = fp
        if "*" in w:
            return ((1 << len(self.bit)) - 1) & ~own
        om = self.om
        mask = self.star
        for o in r:  # (a read conflicts with a write and with an update: a count's > 1)
            mask |= om.get((o, "w"), 0) | om.get((o, "a"), 0)
        for o in w:
            mask |= om.get((o, "r"), 0) | om.get((o, "w"), 0) | om.get((o, "a"), 0)
        for o in a:
            mask |= om.get((o, "w"), 0) | om.get((o, "r"), 0)
        return mask & ~own


#: A searched turn from a state (:attr:`_Node.out`): its footprint in the full relation (sleep
#: sets), its footprint in the lock-aware one (races, :func:`_lock_aware`), who holds
#: ``pamt_lock`` after it, its access bits (:class:`_Universe`) and the state it leads to. One
#: tuple per turn, not one dict per field per state (a node 1,721 -> 1,115 B on
#: ``fresh_td_3vcpu``).
_Out = tuple[Footprint, Footprint, str | None, int, Digest]


class _Node:
    """A state of the reduced search: its enabled CPUs, the CPUs to search from it
    (``backtrack``), those searched (``done``, in order) with each turn's record (``out``,
    :data:`_Out`), its sleep set (CPU -> the footprint of its turn here), and the summary of
    the accesses of every turn searched from it and below."""

    __slots__ = (
        "backtrack",
        "done",
        "enabled",
        "index",
        "lap_key",
        "out",
        "sleep",
        "summary",
    )

    def __init__(self, index: int, lap_key: Digest) -> None:
        self.index = index
        self.lap_key = lap_key
        self.enabled: tuple[str, ...] = ()
        self.backtrack: set[str] = set()
        self.done: list[str] = []
        self.out: dict[str, _Out] = {}
        self.sleep: dict[str, Footprint] = {}
        self.summary = -1  # (unknown: the state is new since the last summaries)

    def next_cpu(self) -> str | None:
        for x in self.enabled:
            if x in self.backtrack and x not in self.sleep and x not in self.out:
                return x
        return None


class _Reduced:
    """The reduced search of one group (see docs/engine.md, "Every interleaving").

    Stateful dynamic partial-order reduction on turn footprints, in *walks*: each walk is a
    depth-first traversal of the graph searched so far from the group's start, which takes the
    turns already searched from their records and executes (by re-execution to the state) only
    those a state's backtrack set gained. A new state gets one turn; others are added where a
    race demands it. A walk keeps, for the turns on its stack, vector clocks of the
    happens-before order (program order and dependent turns):

    - **A turn on the stack** (searched or executed) is checked against the stack's turns of
      other CPUs it races with (dependent, and not ordered by another turn in between:
      source-DPOR, Abdulla et al. 2014); for each race the state before the earlier turn gets an
      *initial* of the turns that could reverse it, unless one is there already or asleep.
    - **A turn into a state the walk has seen** (state hashing) is checked as if every turn
      searched from that state followed (its *summary*, Yang et al. 2008): each turn on the stack
      that conflicts with a summarised access of a CPU it does not happen before gets that CPU,
      or every enabled CPU if it is not enabled there (Flanagan and Godefroid 2005).
    - **Sleep sets** (Godefroid): a CPU searched from a state sleeps in the states reached by
      turns independent of its turn; a state met with a smaller sleep set wakes the CPUs that
      dropped out of it and searches them.
    - **Cycle proviso**: a turn back to a state on the stack fully expands its state.
    - **Fused turns**: a turn no other CPU's turn conflicts with (its objects one CPU's, only
      read or only updated, over every turn taken) is not a scheduling point; the CPU goes on
      (:meth:`_execute`). What that relied on is watched, and the group searched again without
      it when a later turn breaks it (:class:`_Refuse`). A state whose enabled CPUs are all
      asleep wakes one, so that a CPU looping alone once the others are done is searched.

    The walks repeat until one executes nothing and adds nothing: then every path of the
    searched graph satisfies the conditions with summaries of the final graph.
    """

    #: whether an edge is extended past its conflicting turn by the independent turns after it
    #: (:meth:`_trail`; off only to compare, in tests)
    trail = True

    def __init__(
        self,
        ex: Explorer,
        k: int,
        start: _End,
        items: list[tuple[int, Event]],
        shared: set[Any] | None = None,
    ) -> None:
        self.ex = ex
        self.k = k
        self.start = start
        self.items = items
        self.nodes: dict[Digest, _Node] = {}
        self.edges: dict[Digest, list[tuple[str, Digest]]] = {}
        self.labels: dict[Digest, list[Label]] = {}
        #: the edges that are several turns of one CPU (see :meth:`_execute`)
        self.fused: Fused = {}
        #: whether turns no other CPU's turn conflicts with are fused with the turns after
        #: them (:meth:`_execute`): only when every event of the group records its accesses
        #: (an unannotated one, a TD's or vCPU's creation or teardown, may touch what a fault
        #: keeps to itself)
        self.fuse = all(isinstance(ev, _ANNOTATED) for _, ev in items)
        #: every object a turn of the group accessed: the CPUs that did, and how (r, w, a)
        self.seen: dict[Any, tuple[frozenset[str], frozenset[str]]] = {}
        #: the objects a fusion relied on being independent (see :meth:`_fusable`)
        self.relied: set[Any] = set()
        #: the objects a fusion may not rely on (an earlier search of the group found them
        #: accessed in conflicting ways after a fusion had relied on them)
        self.shared: set[Any] = shared or set()
        self.enabled_at: dict[Digest, tuple[str, ...]] = {}
        self.parent_of: dict[Digest, tuple[Digest, str]] = {}
        self.ends: dict[Digest, _EndSoFar] = {}
        self.lap_keys: set[Digest] = set()
        self.root: Digest | None = None
        self.u = _Universe()
        self.changed = False
        self.walks = 0
        # the machine, the state it is in (None: somewhere no node stands for) and its turns
        self.m: Machine | None = None
        self.threads: list[Thread] = []
        self.by_name: dict[str, Thread] = {}
        self.cur: Digest | None = None
        self.prefix: list[str] = []
        self.cpus: list[str] = []
        self.cpu_index: dict[str, int] = {}
        self.root_holder: str | None = None
        #: where the turn after an edge's conflicting turn was found to conflict too:
        #: (CPU, its kernel functions, the step it last took)
        self.no_trail: set[tuple[str, tuple[str, ...], str]] = set()
        self.trail_misses = 0
        #: each CPU's part of the state where it was last computed (:meth:`_threads_part`):
        #: (its generator then, the part's pickle body)
        self.th_parts: dict[str, tuple[Any, bytes]] = {}
        #: each state's CPUs' parts' pickle bodies (in thread order), given to the CPUs a
        #: re-execution or forward turns put in that state (:meth:`_known_parts`)
        self.parts_at: dict[Digest, tuple[bytes, ...]] = {}
        #: the current walk's stack and the index of each state on it (:meth:`_forward`)
        self.stack: list[list[Any]] = []
        self.on_stack: dict[Digest, int] = {}
        self.forwards = 0
        #: each distinct footprint kept once (:meth:`_execute`)
        self.interned: dict[Footprint, Footprint] = {}

    # -------------------------------------------------------------- driving
    def run(self) -> None:
        self.ex._progress(self.k, force=True)  # (from the start: before the first state)
        self._goto(None)
        assert self.m is not None
        self.root_holder = self.m.pamt_lock
        self.cpus = [th.name for th in self.threads]
        self.cpu_index = {name: i for i, name in enumerate(self.cpus)}
        root = self._arrive(None, "", "", None)[0]
        node = self.nodes[root]
        if node.enabled:
            node.backtrack.add(node.enabled[0])
        while True:
            self._summaries()
            self.changed = False
            self._walk()
            self.walks += 1
            if not self.changed:
                return

    def _goto(self, key: Digest | None) -> None:
        """Put the machine in state ``key`` (the group's start for None) by re-execution."""
        self._reach(_path_to(key, self.parent_of, self.fused) if key is not None else [])
        self.cur = key
        if key is not None:
            self._known_parts(key)

    def _known_parts(self, key: Digest) -> None:
        """The CPUs' parts of state ``key``, where the machine now is, as computed when the
        state was first reached (a state's key is the digest of its parts too, so another
        way to it has the same): a re-execution makes new generators, whose parts would
        otherwise be computed again, all of them, at the next state."""
        parts = self.parts_at.get(key)
        if parts is None:
            return
        kept = self.th_parts
        for th, body in zip(self.threads, parts, strict=True):
            kept[th.name] = (th.gen, body)

    def _forward(self, key: Digest) -> bool:
        """Put the machine in state ``key``, the top of the walk's stack, by taking the
        turns of the stack's edges from the state the machine is in, if that state is on the
        stack below it; whether it was. A walk that goes down edges searched before (it takes
        them from their records) to a state that needs a new turn finds the machine where its
        last turn left it, often a state on the stack: the turns from there cost what the
        edges between cost, not a re-execution of the whole path from the group's start
        (a generator cannot be copied, so the machine only ever goes forward)."""
        j = self.on_stack.get(self.cur) if self.cur is not None else None
        stack = self.stack
        if j is None or stack[-1][0] != key:
            return False
        m = self.m
        assert m is not None
        threads, by_name, fused = self.threads, self.by_name, self.fused
        m.fp_on = False  # (as in a re-execution: these turns were recorded when first taken)
        for fr in stack[j:-1]:
            p = fr[2]
            self.th_parts.pop(p, None)
            for _ in range(fused.get((fr[0], p), 1)):
                m.turn(by_name[p], threads)
                self.prefix.append(p)
        m.fp_on = self.ex.reduction
        self.cur = key
        self._known_parts(key)
        self.forwards += 1
        return True

    def _reach(self, turns: list[str]) -> None:
        """Put the machine where ``turns`` (each the CPU that took it) lead from the group's
        start, by re-execution; the state is no node's yet (``cur`` None)."""
        m, threads = self.ex._replay(self.start.image, self.items, turns)
        assert m is not None
        self.m, self.threads = m, threads
        self.by_name = {th.name: th for th in threads}
        self.prefix = turns
        self.cur = None
        self.th_parts.clear()

    def _trail(self, p: str, labels: list[str]) -> list[str]:
        """``p``'s edge, which ends in a turn that may conflict, extended by the
        turns after it that no turn of another CPU conflicts with (unlocks, the end of a
        fault, the step that ends a retry lap): they commute with every turn of every other
        CPU, so they move left to the conflicting turn (Lipton's left-movers) and the state
        between is no scheduling point. Without this a CPU that has just taken its
        conflicting turn and one that has also unlocked were two states for every position
        of the other CPUs (40 % of the states of three vCPUs racing for a range's tables).

        A turn is only known to be independent once taken: one that is not ends the edge
        before it, and the machine is put back there by re-execution (:meth:`_reach`). Where
        that happened (the CPU's kernel functions and the step it last took) the next edge
        there is not extended (``no_trail``), so a position whose next turn conflicts costs
        one re-execution, not one per visit. The watch on what the fusion relied on is
        :meth:`_execute`'s."""
        m = self.m
        assert m is not None
        th = self.by_name[p]
        while _goes_on(m, th, labels):
            where = (p, tuple(th.stack), labels[-1])
            if where in self.no_trail:
                break
            step, _fp, lfp = self._turn(m, th)
            if not self._fusable(p, lfp) or _lock_op(m, "acq"):
                self.no_trail.add(where)
                self.trail_misses += 1
                self._reach(self.prefix[:-1])
                break
            self.relied.update(o for part in lfp for o in part)
            labels.append(step)
        return labels

    def _annotated(self, th: Thread) -> bool:
        return th.event is None or isinstance(self.ex.events[th.event], _ANNOTATED)

    def _note(self, p: str, lfp: Footprint) -> None:
        """Record ``p``'s accesses ``lfp``; a search again (:class:`_Refuse`) if an object a
        fusion relied on is now accessed in conflicting ways."""
        seen = self.seen
        broken: set[Any] = set()
        for mode, part in zip("rwa", lfp, strict=True):
            for o in part:
                was = seen.get(o)
                if was is None:
                    seen[o] = (frozenset((p,)), frozenset(mode))
                    continue
                cpus, modes = was
                if p in cpus and mode in modes:
                    continue
                now = (cpus | {p}, modes | {mode})
                seen[o] = now
                if o in self.relied and not _apart(now):
                    broken.add(o)
        if broken:
            raise _Refuse(broken)

    def _fusable(self, p: str, lfp: Footprint) -> bool:
        """Whether no turn of another CPU has conflicted with ``p``'s accesses ``lfp`` so far:
        each object is ``p``'s alone, or only read, or only updated (additions commute), by
        every CPU that accessed it. The search relies on it staying so (``relied``): when a
        later turn breaks it, the group is searched again without fusing on that object
        (:meth:`_note`). Every turn of a conflicting kind is met in some searched schedule
        (a class of schedules has the same turns), so what the final search did not break
        holds in every schedule."""
        if "*" in lfp[1]:
            return False
        seen, shared = self.seen, self.shared
        for part in lfp:
            for o in part:
                if o in shared:
                    return False
                was = seen.get(o)
                if was is not None and not _apart(was):
                    return False
        return True

    def _arrive(
        self, parent: Digest | None, cpu: str, label: Label, path: _Path | None
    ) -> tuple[Digest, bool]:
        """The node of the machine's state, reached from ``parent`` by ``cpu``'s turn (the
        plain search's bookkeeping: edge, lap-back, violations, end states, deadlocks);
        whether it is new."""
        ex, m, threads = self.ex, self.m, self.threads
        assert m is not None
        codes = _diag_codes(m)
        ts, ts_body = self._threads_part()
        bare = m.canonical_state(COUNTER_NAMES)
        counted = tuple([m.cnt[i] for i in (_COUNTED if ex.fair else _ALL_BUT_SPINS)])
        key, lap_key = _keys(bare, counted, ts, codes, ts_body)
        self.cur = key
        if ex.fair and key not in self.nodes and lap_key in self.lap_keys:
            back = _lap_back(lap_key, path)
            if back is not None:
                key = back
                self.cur = None  # (the machine's counters are not the node's)
        if parent is None:
            self.root = key
        else:
            self.edges.setdefault(parent, []).append((cpu, key))
            self.labels.setdefault(parent, []).append(label)
        if key in self.nodes:
            return key, False
        node = self.nodes[key] = _Node(len(self.nodes), lap_key)
        if self.cur == key and ts_body is not None:  # (in it: not a lap back to an earlier one)
            kept = self.th_parts
            self.parts_at[key] = tuple([kept[th.name][1] for th in threads])
        self.lap_keys.add(lap_key)
        if parent is not None:
            self.parent_of[key] = (parent, cpu)
        ex.states += 1
        ex._check_limits(self.k)
        ex._note_violations(m, self.k, self.start, self.prefix)
        if m.stopped is not None:
            ex._impossible(m, self.k, [*self.start.orders, list(self.prefix)])
            self.cur = None
            return key, True
        live = [th for th in threads if not th.done]
        enabled = tuple(th.name for th in live if not m.blocked(th))
        self.enabled_at[key] = enabled
        if not live:
            m.end_batch()
            ex._note_violations(m, self.k, self.start, self.prefix)
            self.ends[key] = (list(self.prefix), m.image(), _diag_codes(m))
            self.cur = None
        elif not enabled:
            ex._deadlock(m, self.k, self.start, self.prefix, live)
        node.enabled = enabled
        return key, True

    def _threads_part(self) -> tuple[tuple[Any, ...] | None, bytes | None]:
        """The threads' part of the machine's state (:func:`_threads_state`) as its pickle
        body, the part itself None; or, if a CPU's part is too large for one pickle frame,
        the part and None. Each CPU's pickle body is kept from the last state it was computed
        in until the CPU takes a turn (``th_parts``: :meth:`_turn`, :meth:`_forward`; a
        re-execution drops them all): a turn moves one CPU, so two of three CPUs' frames were
        canonicalised and pickled again for nothing. Only the bytes are kept, not the part
        they pickle: a state's key is their digest, and ``parts_at`` holds them for every
        state (the parts themselves were 4.1 of a state's 9 KB)."""
        m = self.m
        assert m is not None
        parts = self.th_parts
        ids: dict[int, Any] | None = None
        bodies: list[bytes] = []
        abstract = self.ex.fair
        for th in self.threads:
            kept = parts.get(th.name)
            if kept is None or kept[0] is not th.gen:
                if ids is None:
                    ids = _identities(m, self.threads)
                body = _pickled_body(_thread_state(th, ids, abstract))
                if body is None:  # (a part too large for one frame: the plain way, whole)
                    return _threads_state(m, self.threads, abstract), None
                kept = parts[th.name] = (th.gen, body)
            bodies.append(kept[1])
        return None, _tuple_body(bodies)

    def _turn(self, m: Machine, th: Thread) -> tuple[str, Footprint, Footprint]:
        """Take ``th``'s turn with its footprint recorded and noted (:meth:`_note`): its step
        label ("" when it only finished its CPU's event), its footprint and the lock-aware one."""
        p = th.name
        annotated = self._annotated(th)
        m.fp_r.clear()
        m.fp_w.clear()
        m.fp_a.clear()
        m.fp_checked.clear()
        m.fp_l.clear()
        held_before = m.pamt_lock == p
        self.th_parts.pop(p, None)
        info = m.turn(th, self.threads)
        fp = _footprint(m) if annotated and self._annotated(th) else _STAR
        lfp = _lock_aware(fp, m, p, held_before) if fp is not _STAR else fp
        self._note(p, lfp)
        self.prefix.append(p)
        return (info[1] if info is not None else ""), fp, lfp

    def _execute(self, key: Digest, node: _Node, p: str, path: _Path | None) -> bool:
        """Take ``p``'s turn from state ``key`` (re-executing to it if the machine is
        elsewhere); record its footprint and successor; whether the successor is new."""
        if self.cur != key and not self._forward(key):
            self._goto(key)
        m = self.m
        assert m is not None
        th = self.by_name[p]
        first, fp, lfp = self._turn(m, th)
        labels: list[str] = [first]
        if self.fuse and first not in _LAP_ENDS:
            # A turn that no turn of another CPU conflicts with commutes with all of them
            # (Lipton's both-mover), so the state after it need not be a scheduling point: it
            # is fused with the CPU's next turns up to the first that may conflict (or until
            # the CPU is done or waits), and with the independent turns that follow that one
            # (:meth:`_trail`). The fused edge's turns are counted (``fused``) and its labels
            # kept, for re-execution, schedules and kernel paths; its footprint in the race
            # and sleep relations is its one turn that may conflict (or its last turn).
            while True:
                leads = self._fusable(p, lfp) and not _lock_op(m, "rel")
                if not leads or not _goes_on(m, th, labels):
                    break
                self.relied.update(o for part in lfp for o in part)
                step, fp, lfp = self._turn(m, th)
                labels.append(step)
            if self.trail and not leads:  # (the edge's turn that may conflict is its last)
                labels = self._trail(p, labels)
                m = self.m
                assert m is not None
        label: Label = first
        if len(labels) > 1:
            self.fused[(key, p)] = len(labels)
            label = tuple(labels)
        # (one object per distinct footprint: each searched turn kept its own six frozensets,
        # where fresh_td_3vcpu's 34,000 searched turns have 85 distinct footprints)
        interned = self.interned
        fp = interned.setdefault(fp, fp)
        lfp = interned.setdefault(lfp, lfp)
        holder, bits = m.pamt_lock, self.u.step_bits(p, lfp)
        node.done.append(p)
        node.backtrack.add(p)
        c, new = self._arrive(key, p, label, path)
        node.out[p] = (fp, lfp, holder, bits, c)
        self.changed = True
        return new

    # -------------------------------------------------------------- a walk
    def _walk(self) -> None:
        """One depth-first walk of the searched graph (see the class docstring)."""
        nodes = self.nodes
        assert self.root is not None
        n_cpu = len(self.cpus)
        none = (-1,) * n_cpu
        #: each CPU's clock: the vector clock of its last turn on the stack
        clock: list[tuple[int, ...]] = [none] * n_cpu
        seen: set[Digest] = set()
        on_stack = self.on_stack = {}
        root = self.root
        # frame: [state, next index into done, out CPU, out CPU's index, its vector clock,
        #         conflict bits of the out turn, the universe size they were computed at,
        #         path (for _lap_back), (CPU index, clock) to restore when popped,
        #         (pamt_lock's holder in the state, the stack index of its acquisition or -1),
        #         the out turn's own access bits (_direct_races)]
        stack: list[list[Any]] = [
            [
                root,
                0,
                None,
                -1,
                none,
                0,
                -1,
                (root, nodes[root].lap_key, None),
                None,
                (self.root_holder, -1),
                0,
            ]
        ]
        self.stack = stack
        seen.add(root)
        on_stack[root] = 0
        while stack:
            fr = stack[-1]
            key = fr[0]
            node = nodes[key]
            i = fr[1]
            if i == len(node.done):
                p = node.next_cpu()
                if p is None:
                    stack.pop()
                    del on_stack[key]
                    if fr[8] is not None:
                        clock[fr[8][0]] = fr[8][1]
                    if stack:
                        stack[-1][2] = None
                    continue
                new = self._execute(key, node, p, fr[7])
            else:
                p = node.done[i]
                new = False
            fr[1] = i + 1
            fp, lfp, h, bits, c = node.out[p]
            pi = self.cpu_index[p]
            vc = self._direct_races(stack, p, pi, bits, lfp, clock)
            sleep = {x: f for x, f in node.sleep.items() if not _dependent(f, fp)}
            for x in node.done[:i]:
                f = node.out[x][0]
                if not _dependent(f, fp):
                    sleep[x] = f
            cn = nodes[c]
            if new:
                first = p if p in cn.enabled and p not in sleep else None
                if first is None:
                    first = next((x for x in cn.enabled if x not in sleep), None)
                if first is None and cn.enabled:
                    # Every enabled CPU asleep: a state sleep sets would leave without a
                    # successor. Its runs are equivalent to runs searched elsewhere, which is
                    # enough for what states and end states are reached, not for which loops
                    # a fair run can stay in: a CPU looping on its own once the others are
                    # done (a real LIVELOCK) would never be searched there. One CPU wakes.
                    first = cn.enabled[0]
                    sleep = {x: f for x, f in sleep.items() if x != first}
                cn.sleep = sleep
                if first is not None:
                    cn.backtrack.add(first)
            else:
                woke = [x for x in cn.sleep if x not in sleep]
                if woke:  # reached with a smaller sleep set: search what woke up (Godefroid)
                    cn.sleep = {x: f for x, f in cn.sleep.items() if x in sleep}
                    cn.backtrack.update(x for x in woke if x in cn.enabled)
                    self.changed = True
                    if c in seen and c not in on_stack and cn.next_cpu() is not None:
                        # visit c again from here, in this walk, rather than leave the CPUs
                        # that woke to the next walk: its turns are checked against this
                        # stack as on a first visit (extra checks of a real path of the
                        # graph; the walk that ends the search has no wake-up, so it is a
                        # plain walk: docs/engine.md, "Every interleaving", point 3)
                        seen.discard(c)
            if c in on_stack:  # a cycle: this state is fully expanded (the proviso)
                self._expand(node)
                continue
            if c in seen:
                # the stack's turns and this one against those searched from c
                fr[2], fr[3], fr[4], fr[6], fr[10] = p, pi, vc, -1, bits
                saved = clock[pi]
                clock[pi] = vc
                if cn.summary >= 0:
                    self._summary_races(stack, cn.summary, clock)
                else:  # (c is new in this walk: its summary is for the next one)
                    self.changed = True
                clock[pi] = saved
                fr[2] = None
                continue
            seen.add(c)
            on_stack[c] = len(stack)
            fr[2], fr[3], fr[4], fr[6], fr[10] = p, pi, vc, -1, bits
            hold = fr[9] if h == fr[9][0] else (h, len(stack) - 1 if h is not None else -1)
            path = (c, cn.lap_key, fr[7])
            stack.append([c, 0, None, -1, none, 0, -1, path, (pi, clock[pi]), hold, 0])
            clock[pi] = vc

    def _direct_races(
        self,
        stack: list[list[Any]],
        p: str,
        pi: int,
        bits: int,
        lfp: Footprint,
        clock: list[tuple[int, ...]],
    ) -> tuple[int, ...]:
        """The races of ``p``'s turn (accesses ``bits``, lock-aware footprint ``lfp``) from
        the top of the stack with the stack's turns (source-DPOR); its vector clock."""
        j = len(stack) - 1
        mine = clock[pi]
        dep = _racing(stack, j, pi, bits, self.u.conflicts(p, lfp) if bits else 0, self.u.star)
        vc = list(mine)
        for i in dep:
            vci = stack[i][4]
            for y in range(len(vc)):
                if vci[y] > vc[y]:
                    vc[y] = vci[y]
        vc[pi] = j
        later = [-1] * len(vc)  # what the conflicting turns after i know
        for i in reversed(dep):
            fr = stack[i]
            qi = fr[3]
            if qi != pi and mine[qi] < i and later[qi] < i:
                self._reverse(stack, i, j, p, pi, tuple(vc))
                a = self._lift(stack, i, p)
                if a >= 0:
                    self._reverse(stack, a, j, p, pi, tuple(vc))
            vci = fr[4]
            for y in range(len(later)):
                if vci[y] > later[y]:
                    later[y] = vci[y]
        return tuple(vc)

    def _lift(self, stack: list[list[Any]], i: int, x: str) -> int:
        """The stack index of the acquisition of ``pamt_lock`` by a CPU other than ``x`` that
        holds it in the state before turn ``i`` (-1: none, or taken before the group). A race
        of turn ``i`` with a turn of ``x`` may need ``x`` to pass ``pamt_lock`` first, which it
        cannot while the holder holds it: the holder's critical section and ``x``'s are then
        the conflicting pair, and the reversal goes before the acquisition too (LAPOR's race of
        two critical sections whose bodies conflict)."""
        holder, a = stack[i][9]
        if holder is None or holder == x:
            return -1
        return int(a)

    def _reverse(
        self,
        stack: list[list[Any]],
        i: int,
        j: int,
        p: str,
        pi: int,
        vcj: tuple[int, ...],
    ) -> None:
        """A race of the stack's turn ``i`` with ``p``'s turn ``j``: the state before ``i``
        must search an initial of ``v`` = the turns after ``i`` that do not happen after it,
        then ``j`` (one whose first turn in ``v`` nothing in ``v`` happens before)."""
        qi = stack[i][3]
        initials: list[str] = []
        first: set[int] = set()
        in_v: list[int] = []
        for k in range(i + 1, j):
            fk = stack[k]
            vck = fk[4]
            if vck[qi] >= i:
                continue
            in_v.append(k)
            x = fk[3]
            if x in first:
                continue
            first.add(x)
            if all(vck[y] <= i for y in range(len(vck)) if y != x):
                initials.append(fk[2])
        if pi not in first and not any(vcj[stack[k][3]] >= k for k in in_v):
            initials.append(p)
        node = self.nodes[stack[i][0]]
        if any(x in node.backtrack or x in node.sleep for x in initials):
            return
        pick = [x for x in initials if x in node.enabled]
        if pick:
            node.backtrack.add(p if p in pick else pick[0])
            self.changed = True
        else:  # (no initial enabled there: every enabled CPU)
            self._require_all(node)

    def _summary_races(
        self, stack: list[list[Any]], summary: int, clock: list[tuple[int, ...]]
    ) -> None:
        """Each turn on the stack against the summarised accesses of every other CPU that
        it does not happen before (the CPU's clock is before it)."""
        u, nodes = self.u, self.nodes
        size = len(u.bit)
        # each CPU with a summarised access, its bits and its clock (hoisted out of the
        # stack loop: the loop runs per stack frame, ~56 frames per call)
        cpus = [(x, xm, clock[self.cpu_index[x]]) for x, xm in u.cpu.items() if xm & summary]
        if not cpus:
            return
        for i, fr in enumerate(stack):
            if fr[2] is None:
                continue
            node = nodes[fr[0]]
            if len(node.backtrack) >= len(node.enabled) and (fr[9][0] is None or fr[9][1] < 0):
                continue  # (nothing to add here, and no acquisition to lift to)
            if fr[6] != size:  # (as in _direct_races)
                fr[5] = u.conflicts(fr[2], node.out[fr[2]][1])
                fr[6] = size
            hit = fr[5] & summary
            if not hit:
                continue
            qi = fr[3]
            for x, xm, xc in cpus:
                if not hit & xm:
                    continue
                if xc[qi] >= i:  # i happens before x's next turn
                    continue
                self._add(node, x)
                a = self._lift(stack, i, x)
                if a >= 0:
                    self._add(nodes[stack[a][0]], x)

    def _add(self, node: _Node, x: str) -> None:
        """Search ``x`` from ``node`` (unless it is there or asleep), or every enabled CPU if
        ``x`` is not enabled there."""
        if x in node.enabled:
            if x not in node.backtrack and x not in node.sleep:
                node.backtrack.add(x)
                self.changed = True
        else:
            self._require_all(node)

    def _require_all(self, node: _Node) -> None:
        more = [y for y in node.enabled if y not in node.backtrack and y not in node.sleep]
        if more:
            node.backtrack.update(more)
            self.changed = True

    def _expand(self, node: _Node) -> None:
        """Search every enabled CPU's turn from ``node``, asleep or not (the cycle proviso)."""
        if node.sleep:
            node.sleep = {}
            self.changed = True
        if len(node.backtrack) < len(node.enabled):
            node.backtrack.update(node.enabled)
            self.changed = True

    def _summaries(self) -> None:
        """Each state's summary: the accesses of every turn searched from it and below (one
        value per strongly connected part of the graph)."""
        nodes = self.nodes
        assert self.root is not None

        def succ(n: Digest) -> list[Digest]:
            node = nodes[n]
            return [node.out[x][4] for x in node.done]

        comps = _sccs([self.root], succ)
        comp_of = {n: i for i, c in enumerate(comps) for n in c}
        summaries = [0] * len(comps)
        for i, comp in enumerate(comps):  # (sinks first)
            s = 0
            for n in comp:
                node = nodes[n]
                for x in node.done:
                    _fp, _lfp, _h, bits, c = node.out[x]
                    s |= bits
                    j = comp_of[c]
                    if j != i:
                        s |= summaries[j]
            summaries[i] = s
        for n, node in nodes.items():
            node.summary = summaries[comp_of[n]] if n in comp_of else -1


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
    reduction: bool = True,
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
        reduction=reduction,
    ).run()
