"""The timeline: a replay you can step through, back and forth, and jump anywhere in.

Two levels, both visible to users: **events** (trace lines) and **steps** (inside the kernel; an
event is a few to a few hundred steps, and the steps of concurrent events interleave).

How it stays cheap on long traces: the bulk replay runs with steps counted, not stored, and keeps
only compact per-batch arrays (first step and first event of each batch, flags of what happened in
it, the regions it touched, series for the charts) plus a checkpoint of the machine every few
batches (between batches no CPU is inside kernel code, so a checkpoint is plain data). The
micro-steps of any batch are re-derived on demand: restore the nearest checkpoint before it,
re-run the batches in between without recording, and record that one batch. The engine is
deterministic, so the re-derived steps are exactly the steps of the bulk replay. A small LRU keeps
recent batches, so stepping forward and back is instant.
"""

from __future__ import annotations

import bisect
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from explorer.ingest.gcpause import gc_paused
from explorer.model.bulk import FLAG_BITS, FLAG_LABELS, BatchLog, run_batches
from explorer.model.constants import PAGE_SIZE, PAGES_PER_REGION_SHIFT
from explorer.model.events import Event, reserved_pfns
from explorer.model.machine import Machine, MachineDelta, MachineImage, StepReached, batches
from explorer.model.records import Diagnostic, Snapshot, Step
from explorer.model.settings import Settings
from explorer.model.summary import summary

FIND_KINDS = ("op", "region", "label", *FLAG_BITS)

#: Events between checkpoints (at least; a checkpoint falls between batches). A checkpoint is a
#: delta (what changed since the previous one); every KEYFRAME_EVERY checkpoints it is also a
#: full keyframe of the machine. Counted in events, not batches: a trace of one event per batch
#: (no ``t``) paid a delta's fixed part (the vCPUs, the TDs) every 128 events, eight times as
#: often as a trace of eight concurrent vCPUs; now both pay it every 1,024 events, and a seek
#: re-runs at most that many events (on the generators, about 10 ms).
CHECKPOINT_EVERY = 1024
KEYFRAME_EVERY = 16
#: On a host whose touched regions are at most SMALL_HOST_REGIONS, a keyframe every
#: KEYFRAME_EVERY_SMALL checkpoints (if the caller's spacing is not closer already): an image
#: costs what its regions' maps cost to encode (80 ms for 28,000 regions), and a seek applies
#: on average half a spacing of deltas (a churn of zaps and refaults: 1 to 2 ms a delta, more
#: than half of its seek at 16; docs/performance.md, "Keyframes closer on small hosts"). The
#: memory budget still thins them (doubling the spacing) where their bytes do not fit.
KEYFRAME_EVERY_SMALL = 8
SMALL_HOST_REGIONS = 4096
#: Memory the keyframes may take, in bytes they really hold (:func:`_deep_size`, an object
#: shared with the previous keyframe counted again: on the safe side): at most the caller's
#: ``checkpoint_budget``, and at most what is left of TIMELINE_BYTES_PER_EVENT per event of the
#: trace once the deltas and the per-batch arrays are paid (projected over the whole trace from
#: what they took so far), but always KEYFRAME_MIN_BUDGET. Above it, every other keyframe is
#: dropped and their spacing doubles (the deltas chain from any earlier keyframe, so seeking
#: stays exact; it applies more deltas). Measured rather than estimated from the number of
#: entries: a keyframe's region tables are deflated (``zpack_ints``) and its page maps sparse,
#: so an estimate at 16 bytes an entry kept a scattered host to four keyframes where the bytes
#: allow twice as many (a seek merging half as many deltas), and the share left by the deltas
#: is what keeps every trace's timeline under its per-event target (issue 28).
CHECKPOINT_BUDGET_BYTES = 1 << 30
TIMELINE_BYTES_PER_EVENT = 188
KEYFRAME_MIN_BUDGET = 2 << 20
#: Re-derived batches kept in memory.
LRU_BATCHES = 16


class ReplayCancelled(Exception):
    """Raised by :func:`replay` when its ``cancel`` callback says so."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a step is: its batch, and its offset within the batch."""

    batch: int
    offset: int


class Timeline:
    """A replayed trace. Build it with :func:`replay`."""

    def __init__(self, events: Sequence[Event], settings: Settings) -> None:
        self.events = events
        self.settings = settings
        self.nr_steps = 0
        self.diagnostics: list[Diagnostic] = []
        self.stopped: Diagnostic | None = None
        self._summary: dict[str, Any] = {}
        # per batch (index b), plus a final sentinel where noted: see explorer.model.bulk
        self._adopt(BatchLog(len(events)))
        self._checkpoints: dict[int, MachineImage] = {}  # keyframes, by batch
        self._deltas: dict[int, MachineDelta] = {}  # every checkpoint, by batch
        self._ckpt_batches = array("q")  # batches with a checkpoint, ascending
        self._lru: OrderedDict[int, list[Step]] = OrderedDict()
        #: the pages every machine of this replay reserves (an imported capture's: reserved_pfns)
        self._pins: dict[int, frozenset[int]] = {}
        #: the app caches one Timeline per trace for every session, and Streamlit runs sessions
        #: in threads: re-derivations and the LRU are guarded by this lock
        self._lock = threading.RLock()

    def _adopt(self, log: BatchLog) -> None:
        """Take the per-batch arrays of a bulk replay's log."""
        self.batch_event = log.batch_event  # first event of batch b (+ sentinel: events run)
        self.batch_step = log.batch_step  # first step of batch b (+ sentinel: nr_steps)
        self.batch_flags = log.batch_flags
        self.region_offsets = log.region_offsets  # CSR: regions touched by batch b
        self.region_values = log.region_values
        self.event_step = log.event_step  # first step of each event (-1: never ran)
        self.series = log.series  # one value per batch (the state after it)
        self._touched_span: tuple[int, int] | None = None
        self._touched_known = False

    # ------------------------------------------------------------------ sizes
    @property
    def nr_events(self) -> int:
        return len(self.events)

    @property
    def nr_batches(self) -> int:
        return len(self.batch_step) - 1

    def summary(self) -> dict[str, Any]:
        """The JSON summary of the final state (``python -m explorer replay --json``)."""
        return self._summary

    # ------------------------------------------------------------------ positions
    def batch_of_step(self, i: int) -> int:
        if not 0 <= i < self.nr_steps:
            raise IndexError(f"step {i} is outside 0..{self.nr_steps - 1}")
        return bisect.bisect_right(self.batch_step, i) - 1

    def batch_of_event(self, e: int) -> int:
        return bisect.bisect_right(self.batch_event, e) - 1

    def first_step_of_event(self, e: int) -> int | None:
        """The step at which event ``e`` starts (None if it never ran, e.g. after a stop)."""
        if not 0 <= e < self.nr_events:
            raise IndexError(f"event {e} is outside 0..{self.nr_events - 1}")
        s = self.event_step[e] if e < len(self.event_step) else -1
        return None if s < 0 else s

    def event_of_step(self, i: int) -> int:
        return self.step(i).event

    # ------------------------------------------------------------------ steps
    def step(self, i: int) -> Step:
        b = self.batch_of_step(i)
        return self._batch_steps(b)[i - self.batch_step[b]]

    def steps_between(self, i: int, j: int) -> list[Step]:
        """Steps ``i`` to ``j - 1``."""
        i, j = max(i, 0), min(j, self.nr_steps)
        out: list[Step] = []
        while i < j:
            b = self.batch_of_step(i)
            steps = self._batch_steps(b)
            lo = i - self.batch_step[b]
            hi = min(j - self.batch_step[b], len(steps))
            out.extend(steps[lo:hi])
            i = self.batch_step[b] + hi
        return out

    def touched_span(self) -> tuple[int, int] | None:
        """The regions ``[lo, hi)`` from the first to the last one any step touches, or None
        (computed once: the views draw every step of a replay on this one span)."""
        if not self._touched_known:
            values = self.region_values
            self._touched_span = (min(values), max(values) + 1) if len(values) else None
            self._touched_known = True
        return self._touched_span

    def changed_regions(self, i: int) -> list[int]:
        """Regions whose refcount, pair, orphans or page owners changed at step ``i``."""
        regions: set[int] = set()
        for e in self.step(i).effects:
            if e.kind in ("refcount", "pair", "orphan"):
                regions.add(e.key)
            elif e.kind == "page":
                regions.add(e.key >> PAGES_PER_REGION_SHIFT)
        return sorted(regions)

    def _ckpt_ordinal(self, b: int) -> int:
        """The position of the checkpoint at batch ``b`` among all checkpoints."""
        return bisect.bisect_left(self._ckpt_batches, b)

    def _machine_at_batch(self, b: int, record: bool = True) -> Machine:
        """A machine (recording, unless ``record`` is False) in the state just before batch
        ``b``: the nearest keyframe, the deltas after it, then the batches since the last
        checkpoint."""
        m = Machine(self.settings, record=False, check=True)
        if self._pins:
            m.mem.use_pins(self._pins)
        ck = self._ckpt_batches
        c = ck[bisect.bisect_right(ck, b) - 1] if ck and ck[0] <= b else 0
        k = max((x for x in self._checkpoints if x <= c), default=None)
        if k is not None:
            m.restore(self._checkpoints[k])
            m.apply_deltas(
                [
                    self._deltas[cb]
                    for cb in ck[bisect.bisect_right(ck, k) : bisect.bisect_right(ck, c)]
                ]
            )
        else:
            c = 0
        self._run_batches(m, c, b)
        m.record = record
        return m

    def _run_batches(self, m: Machine, c: int, b: int) -> None:
        """Run batches ``c`` to ``b - 1`` (at most a checkpoint interval) on a machine that does
        not record, as the replay ran them."""
        for x in range(c, b):
            self._run_batch(m, x)

    def _run_batch(self, m: Machine, b: int) -> None:
        start, end = self.batch_event[b], self.batch_event[b + 1]
        m.run_batch((i, self.events[i]) for i in range(start, end))

    def _batch_steps(self, b: int) -> list[Step]:
        with self._lock, gc_paused():  # (as :meth:`state_at`)
            return self._batch_steps_locked(b)

    def _batch_steps_locked(self, b: int) -> list[Step]:
        steps = self._lru.get(b)
        if steps is not None:
            self._lru.move_to_end(b)
            return steps
        m = self._machine_at_batch(b)
        self._run_batch(m, b)
        steps = m.steps
        self._lru[b] = steps
        if len(self._lru) > LRU_BATCHES:
            self._lru.popitem(last=False)
        return steps

    # ------------------------------------------------------------------ state
    def state_at(self, i: int) -> Snapshot:
        """The machine after step ``i`` (``-1``: before the first step), CPUs mid-flight included."""
        if i < 0:
            m = Machine(self.settings, record=False)
            return m.snapshot(step=-1, event=-1)
        b = self.batch_of_step(i)
        # the checkpoints are read-only; the lock keeps seeks one at a time. The collector is
        # paused: a seek builds a machine of tens of thousands of containers (a host's TDs,
        # vCPUs and tables), and the full collections they set off rescanned every live object
        # of the process, the timelines and parsed traces included (a third of a seek's samples
        # on `fleet`, 128 TDs, in perf); a seek leaves no garbage cycle to collect (its machine's
        # suspended generators are let go: :func:`_let_go`)
        with self._lock, gc_paused():
            return self._state_at_locked(i, b)

    def _state_at_locked(self, i: int, b: int) -> Snapshot:
        # the target batch runs unrecorded up to step i: a seek into a long batch (a teardown
        # of thousands of pages) does not build the records of every step before it
        m = self._machine_at_batch(b, record=False)
        m.stop_at = i
        ev = -1
        try:
            self._run_batch(m, b)
        except StepReached as reached:
            ev = reached.event
        m.stop_at = -1
        snap = m.snapshot(step=i, event=ev)
        _let_go(m)
        return snap

    # ------------------------------------------------------------------ queries
    def find(self, kind: str, start: int, direction: int = 1, arg: Any = None) -> int | None:
        """The next (``direction`` 1) or previous (-1) step after/before ``start`` where ``kind``
        happens. Kinds: ``op`` (arg: op name; the step the event starts), ``region`` (arg: region
        index), ``label`` (arg: a step label), and the flags ``lost_race``, ``cache_drained``,
        ``refcount_zero``, ``retry``, ``livelock``, ``violation``, ``warning``."""
        if kind not in FIND_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(FIND_KINDS)}")
        if self.nr_steps == 0:
            return None
        if kind == "op":
            return self._find_op(str(arg), start, direction)
        nb = self.nr_batches
        b = self.batch_of_step(min(max(start, 0), self.nr_steps - 1))
        while 0 <= b < nb:
            if self._batch_may_have(kind, b, arg):
                steps = self._batch_steps(b)
                seq = steps if direction > 0 else list(reversed(steps))
                for s in seq:
                    if (s.index > start if direction > 0 else s.index < start) and self._matches(
                        kind, s, arg
                    ):
                        return s.index
            b += 1 if direction > 0 else -1
        return None

    def _find_op(self, op: str, start: int, direction: int) -> int | None:
        """The nearest step, after (or before) ``start``, at which an event of ``op`` starts.

        Batches are in order, but inside a concurrent batch events start in schedule order,
        not file order: take the nearest first step among the batch's matching events."""
        b = self.batch_of_step(min(max(start, 0), self.nr_steps - 1))
        batches_ = range(b, self.nr_batches) if direction > 0 else range(b, -1, -1)
        for bb in batches_:
            found = [
                s
                for k in range(self.batch_event[bb], self.batch_event[bb + 1])
                if self.events[k].op == op
                and (s := self.event_step[k]) >= 0
                and (s > start if direction > 0 else s < start)
            ]
            if found:
                return min(found) if direction > 0 else max(found)
        return None

    def _batch_may_have(self, kind: str, b: int, arg: Any) -> bool:
        if kind == "region":
            lo, hi = self.region_offsets[b], self.region_offsets[b + 1]
            return int(arg) in self.region_values[lo:hi]
        if kind == "label":
            return True
        return bool(self.batch_flags[b] & FLAG_BITS[kind])

    def _matches(self, kind: str, s: Step, arg: Any) -> bool:
        if kind == "region":
            r = int(arg)
            return any(
                (e.kind in ("refcount", "pair", "orphan") and e.key == r)
                or (e.kind == "page" and e.key >> PAGES_PER_REGION_SHIFT == r)
                for e in s.effects
            )
        if kind == "label":
            return bool(s.label == arg)
        if kind in ("violation", "warning"):
            return any(d.kind == kind for d in s.diagnostics)
        if kind == "refcount_zero":
            return any(e.kind == "refcount" and (e.old == 0) != (e.new == 0) for e in s.effects)
        return s.label in FLAG_LABELS[kind]

    # ------------------------------------------------------------------ series
    def series_x(self) -> array[int]:
        """The step index at which each series value holds (the end of each batch)."""
        return array("q", (max(s - 1, 0) for s in self.batch_step[1:]))

    def memory_bytes(self) -> dict[str, int]:
        """Bytes the timeline holds, by part: ``arrays`` (per-batch and per-event arrays,
        series), ``deltas`` and ``keyframes`` (checkpoints; an object shared by several
        checkpoints, such as a frozen chunk of guest mappings, is counted once). The events
        themselves are not counted (they belong to the parsed trace)."""
        seen: dict[int, Any] = {}
        arrays = [
            self.batch_event,
            self.batch_step,
            self.batch_flags,
            self.region_offsets,
            self.region_values,
            self.event_step,
            *self.series.values(),
        ]
        return {
            "arrays": sum(_deep_size(a, seen) for a in arrays),
            "deltas": _deep_size(self._deltas, seen),
            "keyframes": _deep_size(self._checkpoints, seen),
        }


def _deep_size(obj: Any, seen: dict[int, Any], known: dict[int, Any] | None = None) -> int:
    """``sys.getsizeof`` of ``obj`` and everything it holds, each object once.

    ``seen`` maps the id of each object counted to the object, keeping it alive: reading an
    attribute of a class compiled by mypyc can build a new object (a tuple field is stored
    unboxed), which dies once counted, and a later temporary can take its id; with ids alone,
    that one (and all it holds: a keyframe's owner maps) was skipped as already counted.
    ``known``: objects counted before (read only: what the keyframes kept hold)."""
    if known is None:
        known = {}
    total = 0
    stack = [obj]
    getsize = sys.getsizeof
    while stack:
        o = stack.pop()
        if id(o) in seen or id(o) in known:
            continue
        seen[id(o)] = o
        total += getsize(o)
        t = type(o)
        if t in _LEAVES:
            continue
        if t is dict:
            stack.extend(o.keys())
            stack.extend(o.values())
        elif t in _SEQUENCES:
            stack.extend(o)
        elif isinstance(o, (str, bytes, bytearray, int, float, bool, array)):
            continue
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        else:
            stack.extend(getattr(o, name) for name in _attrs(t) if hasattr(o, name))
            if hasattr(o, "__dict__"):
                stack.append(vars(o))
    return total


#: Types :func:`_deep_size` counts without looking inside, and the containers it walks (exact
#: types first: most of what a checkpoint holds; subclasses go through ``isinstance``).
_LEAVES: Final = frozenset({str, bytes, bytearray, int, float, bool, array, type(None)})
_SEQUENCES: Final = frozenset({list, tuple, set, frozenset})
_ATTRS: dict[type, tuple[str, ...]] = {}


def _attrs(t: type) -> tuple[str, ...]:
    """The attribute names of a class with slots (a class compiled by mypyc lists its own in
    ``__mypyc_attrs__``), over its bases; cached: a replay measures every checkpoint."""
    names = _ATTRS.get(t)
    if names is None:
        names = tuple(
            name
            for cls in t.__mro__
            for name in (*getattr(cls, "__slots__", ()), *getattr(cls, "__mypyc_attrs__", ()))
        )
        _ATTRS[t] = names
    return names


def replay(
    events: Sequence[Event],
    settings: Settings,
    *,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    keyframe_every: int = KEYFRAME_EVERY,
    checkpoint_budget: int = CHECKPOINT_BUDGET_BYTES,
    report_every: int = 2000,
) -> Timeline:
    """Replay ``events`` in bulk into a :class:`Timeline`: every batch on the kernel generators,
    steps counted, not stored (:mod:`explorer.model.bulk`), invariants checked at every step, a
    checkpoint every ``checkpoint_every`` events."""
    with gc_paused():  # no reference cycles are made; millions of live objects are not rescanned
        return _replay(
            events,
            settings,
            progress,
            cancel,
            checkpoint_every,
            keyframe_every,
            checkpoint_budget,
            report_every,
        )


def _replay(
    events: Sequence[Event],
    settings: Settings,
    progress: Callable[[float, str], None] | None,
    cancel: Callable[[], bool] | None,
    checkpoint_every: int,
    keyframe_every: int,
    checkpoint_budget: int,
    report_every: int,
) -> Timeline:
    tl = Timeline(events, settings)
    m = Machine(settings, record=False, check=True)
    reserved = reserved_pfns(events)
    if reserved:
        m.mem.pin(reserved)
    log = BatchLog(len(events))
    tl._adopt(log)
    tl._pins = m.mem.pin_table()
    n = len(events)
    since_report = 0
    last_end = 0
    spans = batches(events)
    nb = len(spans)
    b = 0
    since_ckpt = checkpoint_every  # events since the last checkpoint: one at batch 0
    delta_bytes = 0  # bytes the deltas hold so far
    # the objects the keyframes kept hold (each once: groups and chunks are shared), and their
    # bytes: a new keyframe is measured by what it adds, not by walking every keyframe again
    held: dict[int, Any] = {}
    held_bytes = 0
    # the keyframes' spacing in checkpoints: ``coarse`` on a large host, ``fine`` on a small
    # one (SMALL_HOST_REGIONS); thinning doubles both
    coarse = keyframe_every
    fine = min(keyframe_every, KEYFRAME_EVERY_SMALL)
    while b < nb and m.stopped is None:
        if since_ckpt >= checkpoint_every:
            since_ckpt = 0
            ordinal = len(tl._ckpt_batches)
            spacing = fine if len(m.mem.regions) <= SMALL_HOST_REGIONS else coarse
            delta = m.delta()
            tl._deltas[b] = delta
            delta_bytes += _deep_size(delta, {})
            tl._ckpt_batches.append(b)
            if ordinal % spacing == 0:
                image = m.image()
                budget = _keyframe_budget(tl, checkpoint_budget, delta_bytes, spans[b][0], n)
                fresh: dict[int, Any] = {}  # what the image holds that no kept keyframe does
                size = _deep_size(image, fresh, held)
                while len(tl._checkpoints) > 1 and held_bytes + size > budget:
                    spacing *= 2  # thin: keep the keyframes on the doubled spacing
                    coarse, fine = coarse * 2, fine * 2
                    tl._checkpoints = {
                        k: v
                        for k, v in tl._checkpoints.items()
                        if tl._ckpt_ordinal(k) % spacing == 0
                    }
                    held = {}
                    held_bytes = _deep_size(tl._checkpoints, held)
                    fresh = {}
                    size = _deep_size(image, fresh, held)
                if ordinal % spacing == 0:
                    tl._checkpoints[b] = image
                    held.update(fresh)
                    held_bytes += size
        # the batches up to the next checkpoint, run and logged by the compiled loop
        b0 = b
        b = run_batches(m, events, spans, b, nb, log, spans[b][0] + checkpoint_every)
        if tl.event_step is not log.event_step:  # (widened to 8-byte ints: new arrays)
            tl._adopt(log)
        if b == b0:
            break
        since_ckpt += spans[b - 1][1] - spans[b0][0]
        end = spans[b - 1][1]
        last_end = end
        since_report += end - spans[b0][0]
        if since_report >= report_every:
            since_report = 0
            if progress is not None:
                progress(end / n, f"{end:,} of {n:,} events, {m.nr_steps:,} steps")
            if cancel is not None and cancel():
                raise ReplayCancelled(f"cancelled after {end:,} of {n:,} events")
    tl.batch_event.append(last_end)
    tl.batch_step.append(m.nr_steps)
    tl.nr_steps = m.nr_steps
    tl.diagnostics = list(m.diagnostics)
    tl.stopped = m.stopped
    tl._summary = summary(m, n)
    if progress is not None:
        progress(1.0, f"{n:,} events, {m.nr_steps:,} steps")
    return tl


def _let_go(m: Machine) -> None:
    """Drop a seek's machine's CPUs: a seek that stops mid-batch leaves kernel generators
    suspended, each holding the machine in its frame while the machine holds them through its
    threads, so the whole machine (its TDs, vCPUs, caches and tables: 10,000 containers on
    `fleet`, 128 TDs) was a reference cycle left to the collector. Re-enabled after the seek, the
    collector traversed and freed it at its next young collection: 5.4 ms of collections per
    seek on `fleet` and on a scattered host (100 seeks), 0.4 ms on `fleet` without the cycle.
    Reference counting now frees the machine when the seek returns, so freeing it stays in the
    seek (the median moved 33.8 -> 32.8 ms), but no machine waits as garbage for a collection
    (a server stepping many sessions held one per seek until the collector ran)."""
    for th in m.threads.values():
        th.gen = None
        th.queue.clear()
    m.threads.clear()


def _keyframe_budget(tl: Timeline, cap: int, delta_bytes: int, done: int, n: int) -> int:
    """Bytes the keyframes may hold (see :data:`TIMELINE_BYTES_PER_EVENT`): the per-event
    target over ``n`` events less what the deltas (``delta_bytes`` over the first ``done``
    events) and the per-batch arrays take, projected to the whole trace (the per-event array of
    first steps is allocated whole at the start: taken as it is)."""
    growing = [
        tl.batch_event,
        tl.batch_step,
        tl.batch_flags,
        tl.region_offsets,
        tl.region_values,
        *tl.series.values(),
    ]
    spent = delta_bytes + sum(_deep_size(a, {}) for a in growing)
    others = (spent * n // done if done else 0) + _deep_size(tl.event_step, {})
    return min(cap, max(KEYFRAME_MIN_BUDGET, TIMELINE_BYTES_PER_EVENT * n - others))


def dpamt_bytes(pairs: int) -> int:
    """Bytes of PAMT pair pages for ``pairs`` installed pairs (2 x 4 KiB each)."""
    return pairs * 2 * PAGE_SIZE
