"""Bulk replay: batches run back to back on the kernel generators, a few numbers kept per batch.

A timeline (:mod:`explorer.replay.timeline`) does not store steps: it keeps, per batch, where the batch
starts (its first event and first step), what happened in it (flag bits from its step labels
and diagnostics), the regions it touched, and the series the charts draw, and re-derives any
step on demand from a checkpoint. This module is that per-batch loop. It is part of the compiled
engine (:mod:`explorer.model.native`): for traces of one event per batch (events without ``t``)
the bookkeeping of a batch costs as much as the batch itself, and compiled it costs little.

Nothing here knows what the kernel does: a batch is :meth:`Machine.run_batch`, exactly what a
reviewer steps through, with ``record`` off.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import Final

from explorer.model.events import Event
from explorer.model.machine import (
    Machine,
)
from explorer.model.packed import int32s
from explorer.model.records import OWNER_CODE, Diagnostic
from explorer.model.steps import (
    K_FAULT_RETRIES,
    K_PAMT_LOST_RACE,
)

#: What happened in a batch (a bit per kind), from the labels of its steps.
FLAG_LABELS: Final[dict[str, tuple[str, ...]]] = {
    "lost_race": ("pamt_get.lost_race",),
    "cache_drained": (
        "pamt_get.partial",
        "pamt_get.lost_race",
        "pamt_get.pair_present",
        "pamt_get.add_fail",
        "pamt_cache.free",
    ),
    "refcount_zero": (
        "pamt_get.add",
        "pamt_get.add_hint",
        "pamt_put.remove",
        "pamt_put.dec",
        "pamt_put.dec_unlocked",
    ),
    "retry": ("fault.retry",),
    "livelock": ("fault.livelock",),
}
FLAG_BITS: Final[dict[str, int]] = {
    name: 1 << i for i, name in enumerate([*FLAG_LABELS, "violation", "warning"])
}
#: label -> the flag bits it sets (one lookup per label of a batch)
LABEL_BITS: Final[dict[str, int]] = {}
for _name, _labels in FLAG_LABELS.items():
    for _label in _labels:
        LABEL_BITS[_label] = LABEL_BITS.get(_label, 0) | FLAG_BITS[_name]
DIAG_BITS: Final[dict[str, int]] = {
    "violation": FLAG_BITS["violation"],
    "warning": FLAG_BITS["warning"],
}
#: The series a timeline keeps, one value per batch (the state after it).
SERIES: Final = ("pairs", "free_pages", "idle_pages", "retries", "lost_races", "leaked_pages")
_O_FREE: Final = OWNER_CODE["free"]
_O_LEAKED: Final = OWNER_CODE["leaked"]
_O_PAMT_CACHE: Final = OWNER_CODE["pamt_cache"]


def label_flags(labels: set[str] | frozenset[str]) -> int:
    """The flag bits of a batch whose steps had ``labels``."""
    flags = 0
    for label in labels:
        flags |= LABEL_BITS.get(label, 0)
    return flags


def diag_flags(diags: Sequence[Diagnostic]) -> int:
    flags = 0
    for d in diags:
        flags |= DIAG_BITS.get(d.kind, 0)
    return flags


def idle_pages(m: Machine) -> int:
    """Pages held idle in DPAMT caches right now: every live vCPU's ``tdx_pamt_cache``, plus a
    mempool design's shared reserve. Between batches these are exactly the pages owned as
    ``pamt_cache`` (invariant 5, checked there: a freed vCPU's cache went back to the page
    allocator), so the owner count answers in O(1), not a pass over every vCPU per batch."""
    return m.mem.counts[_O_PAMT_CACHE]


#: The largest value a 4-byte index holds. A log's step and offset arrays start 4 bytes wide
#: (every trace the app meets stays far below: 2**31 steps is hours of replay) and are widened
#: to 8 bytes the first time a value passes ``limit`` (a test lowers it to force the widening).
INDEX_LIMIT: Final = 2**31 - 1


class BatchLog:
    """What a bulk replay keeps per batch and per event: compact arrays (4 bytes per index, 8
    once a step number or an offset passes ``limit``; 4 per series value, 2 per flag word),
    appended batch by batch. The first step of each event is kept for every event, so its
    width is most of what the arrays cost per event (issue 28: <= 200 bytes per event)."""

    def __init__(self, nr_events: int, limit: int = INDEX_LIMIT) -> None:
        self.limit = limit
        self.wide = False  # the step and offset arrays hold 8-byte ints
        self.batch_event = array("i")  # first event of each batch (at most MAX_EVENTS)
        self.batch_step = array("i")  # first step of each batch
        self.batch_flags = array("H")
        self.region_offsets = array("i", [0])  # CSR: the regions touched by each batch
        self.region_values = array("i")  # (a 4 TiB host has 2**21 regions)
        self.event_step = array("i", [-1]) * nr_events  # first step of each event (-1: never)
        self.series: dict[str, array[int]] = {name: array("i") for name in SERIES}

    def widen(self) -> None:
        """Copy the step and offset arrays to 8-byte ints (once; new array objects: a holder
        of the old ones, such as a timeline, takes them again)."""
        if self.wide:
            return
        self.wide = True
        self.batch_step = array("q", self.batch_step)
        self.region_offsets = array("q", self.region_offsets)
        self.event_step = array("q", self.event_step)


def run_batches(
    m: Machine,
    events: Sequence[Event],
    spans: Sequence[tuple[int, int]],
    b0: int,
    b1: int,
    log: BatchLog,
    upto_event: int,
) -> int:
    """Run batches ``b0`` to ``b1 - 1`` (``spans[b]`` is batch b's ``[start, end)`` of events)
    on ``m``, appending to ``log``, until a batch ends at or past event ``upto_event``. Stops
    early when the replay stops (an impossible event, a step limit); returns the first batch
    not run."""
    event_step = log.event_step
    # (no value past ``limit`` can be written unwidened: every step number written is at most
    # the machine's step count, checked after each batch, before its steps are stored)
    limit = -1 if log.wide else log.limit
    # Per-batch values go to lists and into the arrays once per call: an array's append is a
    # method call through the C API (method lookup, argument parsing), about 800 instructions,
    # eleven of them per batch; a list append is a direct call.
    batch_event: list[int] = []
    batch_step: list[int] = []
    batch_flags: list[int] = []
    region_offsets: list[int] = []
    region_values: list[int] = []
    pairs: list[int] = []
    free: list[int] = []
    idle: list[int] = []
    retries: list[int] = []
    races: list[int] = []
    leaked: list[int] = []
    nr_regions = len(log.region_values)
    b = b0
    while b < b1:
        if m.stopped is not None:
            break
        start, end = spans[b]
        ndiag = len(m.diagnostics)
        batch_event.append(start)
        batch_step.append(m.nr_steps)
        m.event_first_step = {}
        m.batch_labels = set()
        m.batch_regions = set()
        m.run_batch([(i, events[i]) for i in range(start, end)])
        if limit >= 0 and m.nr_steps > limit:
            log.widen()
            event_step = log.event_step
            limit = -1
        for e, st in m.event_first_step.items():
            event_step[e] = st
        flags = label_flags(m.batch_labels)
        if len(m.diagnostics) > ndiag:
            flags |= diag_flags(m.diagnostics[ndiag:])
        batch_flags.append(flags)
        regions = m.batch_regions
        if regions:
            if len(regions) > 1:
                region_values.extend(sorted(regions))
            else:
                region_values.extend(regions)
        region_offsets.append(nr_regions + len(region_values))
        counts = m.mem.counts
        pairs.append(len(m.module.pairs))
        free.append(counts[_O_FREE])
        idle.append(idle_pages(m))
        retries.append(m.cnt[K_FAULT_RETRIES])
        races.append(m.cnt[K_PAMT_LOST_RACE])
        leaked.append(counts[_O_LEAKED])
        b += 1
        if end >= upto_event:
            break
    if not log.wide and (
        nr_regions + len(region_values) > log.limit or (batch_step and batch_step[-1] > log.limit)
    ):
        log.widen()
    log.batch_event.extend(int32s(batch_event))
    code = log.batch_step.typecode
    log.batch_step.frombytes(struct.pack(f"@{len(batch_step)}{code}", *batch_step))
    log.batch_flags.frombytes(struct.pack(f"@{len(batch_flags)}H", *batch_flags))
    log.region_offsets.frombytes(struct.pack(f"@{len(region_offsets)}{code}", *region_offsets))
    log.region_values.extend(int32s(region_values))
    s = log.series
    for name, values in (
        ("pairs", pairs),
        ("free_pages", free),
        ("idle_pages", idle),
        ("retries", retries),
        ("lost_races", races),
        ("leaked_pages", leaked),
    ):
        s[name].extend(int32s(values))
    return b
