"""The simulated machine: CPUs running kernel code as generators, and the scheduler.

Theory of operation
-------------------
Every kernel function the model follows (``tdx_pamt_get``, ``tdx_handle_ept_violation``, ...,
see :mod:`explorer.model.dpamt` and :mod:`explorer.model.kvm`) is a Python generator running on
a simulated CPU (a :class:`Thread`: each vCPU thread ``vcpuN`` and each VM thread ``tdN`` is a
CPU of its own). It ``yield``s at every point a reviewer would want to stop at: the fast-path
check, a pop from the cache, taking a lock, the recheck, each SEAMCALL, the unlock. A yield ends
one *step*; the value yielded names the function, a stable label, and a narration template with
its arguments (formatted only when steps are recorded).

Interleaving is nothing but choosing which generator to advance next (:meth:`Machine.run_batch`):
events with the same logical time ``t`` form a *batch* and run concurrently under the schedule
(``sequential``, ``round-robin``: one step per CPU in turn, ``random``: seeded). Races such as
two vCPUs taking the slow path on one cold region, or a put at refcount 1 racing a get, come out
of the real control flow, not out of special cases.

Every state change goes through the small API of :class:`Machine` (``set_owner``,
``set_refcount``, ``cache_push``/``cache_pop``, ``set_lock``, ...), which records
``(kind, key, old, new)`` :class:`~explorer.model.records.Effect`s for the current step and marks
the regions it touches, so that the invariants of dpamt-model.md section 10 are checked after
every step on exactly the regions that changed (:mod:`explorer.model.invariants`).

Determinism: no wall clock, seeded randomness only, no iteration over sets into output. The same
events and settings give the same steps, byte for byte.
"""

from __future__ import annotations

import struct
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from explorer.model.chunked import ChunkedDict, FrozenTable, ints, merge_deltas
from explorer.model.errors import ImpossibleEvent
from explorer.model.events import Event, Fault, Inject, Note, Schedule, TdDestroy
from explorer.model.invariants import check_global, check_quiescent, check_regions
from explorer.model.kvm import run_event
from explorer.model.memory import MemoryImage, PageDelta
from explorer.model.packed import Deflated, int32s, zpack_ints, zunpack_ints
from explorer.model.records import (
    CpuView,
    Diagnostic,
    Effect,
    KvmCacheView,
    Snapshot,
    Step,
    TdView,
    VcpuView,
)
from explorer.model.state import (
    GONE,
    KernelState,
    KvmCache,
    Td,
    Thread,
    TrackedDict,
    Vcpu,
    vcpu_thread,
)
from explorer.model.steps import (
    COUNTER_NAMES,
    MAX_SPIN_STEPS,
    MAX_STEPS_PER_BATCH,
    O_CONTROL,
    O_FREE,
    O_GUEST,
    O_IN_HAND,
    O_KVM_CACHE,
    O_LEAKED,
    O_MIRROR,
    O_PAIR,
    O_PAMT_CACHE,
    O_SEPT,
    KGen,
    StepInfo,
)
from explorer.model.tdx_module import ModuleDelta, ModuleImage

#: the guest mappings of every TD an image holds: one empty table, never written (an image's
#: TDs are only read, by ``restore``, which builds each TD's tables from the frozen ones). Two
#: empty tables per TD were a third of a keyframe's TDs (128 TDs: 150 KB per keyframe).
_IMAGE_MAPPINGS = ChunkedDict()


def _copy_td(
    t: Td,
    mappings: tuple[FrozenTable, FrozenTable, dict[Any, Any] | array[int]] | None = None,
) -> Td:
    """A copy of a quiescent TD (its dicts hold ints and tuples: shallow copies suffice). The
    guest mappings and S-EPT entries are not copied (a keyframe keeps them as tables of frozen
    chunks, see explorer.model.chunked, and as one packed array): the shared empty table and
    no entries in an image (no ``mappings``), or restored from ``mappings``."""
    if mappings is None:
        leaves, gmem = _IMAGE_MAPPINGS, _IMAGE_MAPPINGS
        entries = TrackedDict()
    else:
        leaves = ChunkedDict.from_table(mappings[0])
        gmem = ChunkedDict.from_table(mappings[1])
        entries = TrackedDict(_unpack_entries(mappings[2]))
    return Td(
        t.id,
        t.state,
        t.hkid,
        list(t.vcpus),
        list(t.control),
        t.mirror_root,
        entries,
        leaves,
        dict(t.leaf_frozen),
        gmem,
        list(t.mmu_readers),
        t.mmu_writer,
        t.mmu_invalidate_seq,
    )


def _copy_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of a design's extra state whose lists (a mempool's reserve) are not shared: the
    machine pops and pushes them in place, so a snapshot or checkpoint holding the live list
    would change after it was taken (found by the differential tests: a snapshot taken at
    ``mempool_create`` showed the reserve as it was after a later pop)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in extra.items()}


#: A TD without its big dicts, for a delta: (state, hkid, vCPUs, control pages, mirror root,
#: invalidation sequence). A tuple, not a Td: a Td carries empty dicts and tables (about a
#: kilobyte), and a delta holds one per TD its batches ran on.
SmallTd = tuple[str, int | None, tuple[int, ...], tuple[tuple[int, str], ...], int | None, int]
#: a TD's part of a delta: its small tuple (None: equal to the previous checkpoint's), its
#: mappings' and guest_memfd's changes, its S-EPT entries' changes
#: (the two changes typed Any: compiled, a field of a tuple type is stored unboxed and boxed
#: again on each read, so equal changes given as one pair would become two pair objects)
TdPart = tuple[SmallTd | None, Any, Any, "dict[Any, Any] | array[int]"]


def _small_td(t: Td) -> SmallTd:
    return (
        t.state,
        t.hkid,
        tuple(t.vcpus),
        tuple(t.control),
        t.mirror_root,
        t.mmu_invalidate_seq,
    )


#: a vCPU frozen for a checkpoint: (id, TD, alive, the caches' names and kinds, every count and
#: page number packed in one bytes object (:func:`_freeze_vcpu`), the control pages). One
#: bytes object, not arrays and tuples per cache: a delta holds a frozen vCPU for each vCPU its
#: batches ran changed (a host of 256 vCPUs: about 130 per delta), and the tuples' and arrays'
#: headers were two thirds of the 2.3 KB each one took.
FrozenVcpu = tuple[Any, ...]

#: the (name, objects) of a vCPU's caches, one shared tuple per distinct shape
_CACHE_SHAPES: dict[tuple[tuple[str, bool], ...], tuple[tuple[str, bool], ...]] = {}


def _varints(values: list[int]) -> bytes:
    """``values`` as zigzag LEB128 varints: 1 byte for -64..63, 2 up to +-8191, and so on."""
    out = bytearray()
    for v in values:
        z = v << 1 if v >= 0 else ((-v) << 1) - 1
        while z >= 0x80:
            out.append((z & 0x7F) | 0x80)
            z >>= 7
        out.append(z)
    return bytes(out)


def _from_varints(packed: bytes) -> list[int]:
    """The values :func:`_varints` packed."""
    out: list[int] = []
    z = shift = 0
    for byte in packed:
        z |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        out.append(z >> 1 if not z & 1 else -((z + 1) >> 1))
        z = shift = 0
    return out


def _freeze_vcpu(v: Vcpu) -> FrozenVcpu:
    """The caches' counts as they are and their pages as differences from the page before
    (across caches), packed as varints (:func:`_varints`). A cache is topped up from the page
    allocator in runs (``kvm_mmu_topup_memory_cache``, ``tdx_pamt_cache`` refills): a
    lowest-first or spread allocator hands out pages one or a fixed stride apart, so most
    differences take 1 or 2 bytes, and a random one's rarely more than 4. A frozen vCPU of a
    256-vCPU host took 324 bytes as 4-byte values (issue 28: bytes held per event)."""
    shape = tuple([(c.name, c.objects) for c in v.caches.values()])
    shape = _CACHE_SHAPES.setdefault(shape, shape)
    ints = [len(v.pamt_cache)]
    prev = 0
    for p in v.pamt_cache:
        ints.append(p - prev)
        prev = p
    for c in v.caches.values():
        ints += (c.min, c.capacity, c.nobjs, len(c.pfns))
        for p in c.pfns:
            ints.append(p - prev)
            prev = p
    return (v.id, v.td, v.alive, shape, _varints(ints), tuple(v.control))


def _pages(values: list[int], at: int, n: int, prev: int) -> list[int]:
    """``n`` pages from their differences at ``values[at:]``, after page ``prev``."""
    out = []
    for d in values[at : at + n]:
        prev += d
        out.append(prev)
    return out


def _thaw_vcpu(f: FrozenVcpu) -> Vcpu:
    values = _from_varints(f[4])
    n = values[0]
    pamt_cache = _pages(values, 1, n, 0)
    prev = pamt_cache[-1] if pamt_cache else 0
    at = 1 + n
    caches: dict[str, KvmCache] = {}
    for name, objects in f[3]:
        lo, cap, nobjs, npfns = values[at : at + 4]
        at += 4
        pfns = _pages(values, at, npfns, prev)
        if pfns:
            prev = pfns[-1]
        caches[name] = KvmCache(name, objects, lo, cap, pfns, nobjs)
        at += npfns
    return Vcpu(f[0], f[1], f[2], pamt_cache, caches, list(f[5]))


def _copy_vcpu(v: Vcpu) -> Vcpu:
    """A copy of ``v`` that shares nothing mutable with it: its page lists, caches and
    control pages copied (their items are ints, names and tuples)."""
    caches = {
        name: KvmCache(name, c.objects, c.min, c.capacity, list(c.pfns), c.nobjs)
        for name, c in v.caches.items()
    }
    return Vcpu(v.id, v.td, v.alive, list(v.pamt_cache), caches, list(v.control))


def _vcpu_pages(v: Vcpu) -> list[list[int]]:
    """A vCPU's page lists, in frozen order: the PAMT page cache, then each cache's pages."""
    return [v.pamt_cache, *[c.pfns for c in v.caches.values()]]


def _frozen_pages(f: FrozenVcpu) -> list[Sequence[int]]:
    """The page lists of a full frozen vCPU (:func:`_freeze_vcpu`), as :func:`_vcpu_pages`."""
    values = _from_varints(f[4])
    n = values[0]
    out: list[Sequence[int]] = [_pages(values, 1, n, 0)]
    prev = out[0][-1] if n else 0
    at = 1 + n
    for _ in f[3]:
        npfns = values[at + 3]
        at += 4
        pfns = _pages(values, at, npfns, prev)
        if pfns:
            prev = pfns[-1]
        out.append(pfns)
        at += npfns
    return out


def _vcpu_view(v: Vcpu) -> tuple[Any, ...]:
    """What :func:`_freeze_vcpu` encodes of ``v``, as plain tuples: equal views, equal frozen
    states. Comparing views tells an unchanged vCPU without encoding it (on 128 TDs x 2 vCPUs,
    three in four of those a delta's batches ran on), and a view's page lists are what a
    patch (:func:`_vcpu_patch`) is taken against, without decoding the frozen state."""
    return (
        v.td,
        v.alive,
        tuple(v.pamt_cache),
        tuple(
            [
                (c.name, c.objects, c.min, c.capacity, c.nobjs, tuple(c.pfns))
                for c in v.caches.values()
            ]
        ),
        tuple(v.control),
    )


def _view_pages(view: tuple[Any, ...]) -> list[Sequence[int]]:
    """A view's page lists, in frozen order (:func:`_vcpu_pages`)."""
    return [view[2], *[c[5] for c in view[3]]]


def _vcpu_patch(
    v: Vcpu, prev: FrozenVcpu | None, view: tuple[Any, ...] | None = None
) -> FrozenVcpu:
    """A vCPU for a delta: the frozen form's fields, its pages as a patch of its previous frozen
    state ``prev`` (the state it had at the previous checkpoint that froze it). Every cache is a
    LIFO stack topped up at its end (``kvm_mmu_topup_memory_cache``, ``tdx_pamt_cache``
    refills) and consumed from its end, so between two checkpoints most of a stack stays
    as it was: on 128 TDs x 2 vCPUs with a random allocator, 96% of the pages a delta's frozen
    vCPUs held were the same, at the bottom of the same stacks. Per page list the patch keeps
    the first ``keep`` pages of the previous state and lists the pages above them (as
    differences, :func:`_varints`); the caches' counts are given in full. ``keep`` is 0 for
    every list when there is no previous state (or its caches differ), so the patch stands
    alone. Applying a patch needs the vCPU's state at the previous checkpoint, which a
    restore and the deltas before it have set (:meth:`Machine.apply_delta`)."""
    shape = tuple([(c.name, c.objects) for c in v.caches.values()])
    shape = _CACHE_SHAPES.setdefault(shape, shape)
    lists = _vcpu_pages(v)
    base: list[Sequence[int]] | None = None
    if prev is not None and prev[3] == shape:
        base = _view_pages(view) if view is not None else _frozen_pages(prev)
    ints: list[int] = []
    prevp = 0
    caches = list(v.caches.values())
    for i, pages in enumerate(lists):
        keep = 0
        if base is not None:
            old = base[i]
            limit = min(len(old), len(pages))
            while keep < limit and old[keep] == pages[keep]:
                keep += 1
        if i:
            c = caches[i - 1]
            ints += (c.min, c.capacity, c.nobjs)
        ints += (keep, len(pages) - keep)
        for p in pages[keep:]:
            ints.append(p - prevp)
            prevp = p
    return (v.id, v.td, v.alive, shape, _varints(ints), tuple(v.control))


def _patched_vcpu(patches: Sequence[FrozenVcpu], base: Vcpu | None) -> Vcpu:
    """The vCPU after ``patches`` (:func:`_vcpu_patch`, consecutive deltas' in order) on
    ``base`` (its state before the first, None: a patch that stands alone). The page lists are
    patched in place of one another; one Vcpu is built, from the last patch."""
    lists = _vcpu_pages(base) if base is not None else []
    counts: list[int] = []
    for f in patches:
        values = _from_varints(f[4])
        at = 0
        prevp = 0
        out: list[list[int]] = []
        counts = []
        for i in range(1 + len(f[3])):
            if i:
                counts += values[at : at + 3]
                at += 3
            keep, n = values[at], values[at + 1]
            at += 2
            pages = lists[i][:keep] if keep else []
            for d in values[at : at + n]:
                prevp += d
                pages.append(prevp)
            at += n
            out.append(pages)
        lists = out
    last = patches[-1]
    caches: dict[str, KvmCache] = {}
    for j, (name, objects) in enumerate(last[3]):
        lo, cap, nobjs = counts[3 * j : 3 * j + 3]
        caches[name] = KvmCache(name, objects, lo, cap, lists[1 + j], nobjs)
    return Vcpu(last[0], last[1], last[2], lists[0], caches, list(last[5]))


def _small_ints(values: list[int]) -> array[int]:
    """``values`` in the narrowest array that holds them: 1 byte per value when all fit, else 2,
    else 4. A delta's region rows hold a refcount (at most 512: a 2 MiB region's 4 KiB pages),
    an orphan count and references held, most of them 0; as 4-byte ints they were a tenth of
    what a timeline holds per event on scattered hosts (issue 28), as 1 or 2 bytes a third
    of that. (``struct`` packs them natively, as :func:`int32s` does.)"""
    if not values:
        return array("b")
    lo, hi = min(values), max(values)
    if lo == hi == 0:
        return array("b", bytes(len(values)))
    if lo >= -128 and hi < 128:
        code = "b"
    elif lo >= -32768 and hi < 32768:
        code = "h"
    else:
        return int32s(values)
    out = array(code)
    out.frombytes(struct.pack(f"@{len(values)}{code}", *values))
    return out


def _pack_entries(delta: dict[Any, Any]) -> dict[Any, Any] | array[int]:
    """A TD's S-EPT entry changes (``TrackedDict.delta``) for a delta, as one array of ints,
    four per entry: level, index, then the S-EPT and mirror table pfns of a ``present`` entry
    (``kvm_tdp_mmu_map`` linking a table: ``tdh_mem_sept_add``), or -1 twice for an entry
    gone. Between batches no entry is ``frozen`` (a link is finished within its batch), so
    every change packs; a dict of tuples took about 370 bytes per entry, the array 16 (or 32
    when a value needs 8 bytes). Anything else (never seen between batches) stays a dict (a
    copy: a keyframe packs a TD's live entries). A keyframe's entries pack the same way."""
    out: list[int] = []
    for key, value in delta.items():
        if (
            type(key) is not tuple
            or len(key) != 2
            or type(key[0]) is not int
            or type(key[1]) is not int
        ):
            return dict(delta)
        if value is GONE:
            out += (key[0], key[1], -1, -1)
        elif (
            type(value) is tuple
            and len(value) == 3
            and value[0] == "present"
            and type(value[1]) is int
            and type(value[2]) is int
            and value[1] >= 0
        ):
            out += (key[0], key[1], value[1], value[2])
        else:
            return dict(delta)
    return ints(out)


def _unpack_entries(packed: dict[Any, Any] | array[int]) -> dict[Any, Any]:
    """The entry changes :func:`_pack_entries` packed, as ``TrackedDict.apply`` takes them."""
    if isinstance(packed, dict):
        return packed
    out: dict[Any, Any] = {}
    for i in range(0, len(packed), 4):
        spt = packed[i + 2]
        out[(packed[i], packed[i + 1])] = GONE if spt < 0 else ("present", spt, packed[i + 3])
    return out


#: the entries of a TD part of a delta with no S-EPT entry changed: one object for all of them
#: (read only: apply and apply_deltas only read a delta's entries)
_NO_ENTRIES: dict[Any, Any] = {}


def _resume(gen: KGen) -> StepInfo | None:
    """Run ``gen`` to its next step; None when its event is done. (A ``for`` loop, not
    ``next()``: compiled, it is a direct iterator call with no exception at the end; ``next``
    is a builtin looked up and called per step, and its StopIteration builds a traceback.)"""
    for info in gen:
        return info
    return None


def _by_key(d: dict[int, Any]) -> dict[int, Any]:
    """``d`` in key order. Sorting the keys (ints) and looking each up is several times cheaper
    than sorting the items (tuples compared element by element): a snapshot of a host whose
    allocations scatter sorts tens of thousands of regions."""
    return {k: d[k] for k in sorted(d)}


def thread_name(ev: Event) -> str:
    """vCPU work runs on that vCPU's thread; VM-wide work on the VM's thread."""
    vcpu = getattr(ev, "vcpu", None)
    if vcpu is not None and ev.op != "vcpu_create":
        return vcpu_thread(vcpu)
    return f"td{getattr(ev, 'td', 0)}"


def batches(events: Sequence[Event]) -> list[tuple[int, int]]:
    """Split events into batches ``[start, end)``: runs of consecutive events with one ``t``."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(events)
    while i < n:
        t = events[i].t
        j = i + 1
        if t is not None:
            while j < n and events[j].t == t:
                j += 1
        out.append((i, j))
        i = j
    return out


@dataclass(slots=True)
class MachineImage:
    """A quiescent checkpoint (between batches) of everything a replay depends on."""

    memory: MemoryImage
    module: ModuleImage
    #: region-keyed counts, deflated (:func:`explorer.model.packed.zpack_ints`)
    refcount: Deflated
    orphans: Deflated
    gotten: Deflated
    tds: dict[int, Td]  # without their guest mappings:
    #: (leaves, gmem, S-EPT entries packed by :func:`_pack_entries`) per TD
    mappings: dict[int, tuple[FrozenTable, FrozenTable, dict[Any, Any] | array[int]]]
    vcpus: dict[int, FrozenVcpu]
    counters: dict[str, int]
    injections: dict[str, int]
    nr_steps: int
    next_hkid: int
    sched_rng: int  # the random schedule's XorShift32 state
    extra: dict[str, Any]


@dataclass(slots=True)
class MachineDelta:
    """A delta checkpoint: the changes since the previous checkpoint (see Machine.delta)."""

    mem_pages: PageDelta  # the pages whose owner changed, and their owners
    mem_scalars: tuple[Any, ...]
    module: ModuleDelta
    #: the regions whose refcount, orphans or references held changed, and those (0: none)
    regions: tuple[array[int], array[int], array[int], array[int]]
    tds: dict[int, TdPart]  # (likewise)
    vcpus: dict[int, FrozenVcpu]  # the vCPUs its batches ran on (the others are unchanged)
    counters: array[int]  # in COUNTER_NAMES order
    injections: dict[str, int]
    nr_steps: int
    next_hkid: int
    sched_rng: int  # the random schedule's XorShift32 state
    extra: dict[str, Any]


def _tracked(d: Any) -> TrackedDict:
    assert isinstance(d, TrackedDict)
    return d


class StepReached(Exception):
    """Raised by a machine when it commits its ``stop_at`` step (a seek stops there)."""

    def __init__(self, event: int) -> None:
        super().__init__(event)
        self.event = event


class Machine(KernelState):
    """The kernel state of :class:`~explorer.model.state.KernelState` and the loop that runs
    events on simulated CPUs: batches, the schedule, spins, checkpoints and seeking."""

    def run_batch(self, items: Iterable[tuple[int, Event]]) -> None:
        """Run one batch of concurrent events to completion under the schedule.

        ``inject``, ``note`` and ``schedule`` events take effect when the batch starts (they
        are not kernel work). If an event turns out impossible when its CPU starts it, the
        replay stops: the CPUs already running finish their events, nothing after runs.

        This is the only way kernel code runs, recorded or not: a bulk replay runs exactly the
        generators a reviewer steps through, with the step records left out (``record``
        False) and the invariants checked on what each step touched.
        """
        order = self.begin_batch(items)
        if len(order) == 1:
            self._run_alone(order[0], order)
        elif order:
            self._run_interleaved(order)
        if self._pinned and self.stopped is None:
            name, idx, ev = self._pinned[0]
            self._stop(
                self.impossible(
                    ev,
                    idx,
                    f"the schedule names {name} for a turn after its group's work is done "
                    f"({len(self._pinned)} turn(s) left over)",
                )
            )
        self._pinned.clear()
        self.end_batch()

    def begin_batch(self, items: Iterable[tuple[int, Event]]) -> list[Thread]:
        """Start a batch: the instant events take effect (``inject``, ``note``, ``schedule``)
        and each CPU gets its queue of events; the CPUs, in order of first appearance."""
        threads: dict[str, Thread] = {}
        batch_vcpus = self._batch_vcpus
        batch_tds = self._batch_tds
        if batch_vcpus:  # (guarded: most batches are one fault, and a call is not free)
            batch_vcpus.clear()
        if batch_tds:
            batch_tds.clear()
        if self._batch_destroys:
            self._batch_destroys.clear()
        # the previous batch's CPUs are done: an inject or note step of this batch shows none
        # (as a machine restored at a checkpoint does), this batch's CPUs once they start
        self.threads = threads
        for idx, ev in items:
            if isinstance(ev, (Inject, Note, Schedule)):
                self._instant(idx, ev)
                continue
            if isinstance(ev, Fault):  # (the commonest event: its thread's name cached)
                name = self._vcpu_names.get(ev.vcpu)
                if name is None:
                    name = self._vcpu_names[ev.vcpu] = thread_name(ev)
                batch_vcpus.add(ev.vcpu)
            else:
                name = thread_name(ev)
                vcpu = getattr(ev, "vcpu", None)
                if vcpu is not None:
                    batch_vcpus.add(vcpu)
                td = getattr(ev, "td", None)
                if td is not None:
                    batch_tds.add(td)
                    if isinstance(ev, TdDestroy):
                        self._batch_destroys.add(td)
            th = threads.get(name)
            if th is None:
                th = self._thread(name)
                th.order = len(threads)
                threads[name] = th
            th.queue.append((idx, ev))
        return list(threads.values())

    def end_batch(self) -> None:
        """The checks between batches (:func:`explorer.model.invariants.check_quiescent`), and
        the TDs and vCPUs the batch ran on noted for the next delta checkpoint."""
        delta_tds = self._delta_tds
        delta_vcpus = self._delta_vcpus
        vcpus = self.vcpus
        for k in self._batch_vcpus:  # (plain loops: one fault per batch is the common case)
            delta_vcpus.add(k)
            v = vcpus.get(k)
            if v is not None:
                delta_tds.add(v.td)
        if self._batch_tds:  # (an empty set's iterator still costs a few hundred instructions)
            for k in self._batch_tds:
                delta_tds.add(k)
            for k in self._batch_destroys:
                t = self.tds.get(k)
                if t is not None:
                    delta_vcpus.update(t.vcpus)
        if self.check:
            check_quiescent(self)
            self._flush_diags()

    def batch_owners(self) -> tuple[set[int], set[int]]:
        """The TDs and vCPUs the current (or last) batch ran on, the only ones whose structures
        it can have changed: each vCPU an event of the batch names (a fault's, a
        ``vcpu_create``'s even when the creation failed) and its TD; each TD an event names;
        every vCPU of a TD the batch destroys (the teardown frees their caches and pages)."""
        q_tds: set[int] = set(self._batch_tds)
        q_vcpus: set[int] = set(self._batch_vcpus)
        for k in self._batch_vcpus:
            v = self.vcpus.get(k)
            if v is not None:
                q_tds.add(v.td)
        for k in self._batch_destroys:
            t = self.tds.get(k)
            if t is not None:
                q_vcpus.update(t.vcpus)
        return q_tds, q_vcpus

    def blocked(self, th: Thread) -> bool:
        """``th`` spins on a lock whose holder has not changed: its turn would repeat the spin
        step (``explorer.interleavings.search`` does not give it one)."""
        respin = th.respin
        return respin is not None and respin.blocker(self, respin.td) == respin.holder

    def turn(self, th: Thread, order: list[Thread]) -> StepInfo | None:
        """One turn of ``th``, as the schedulers give it: the spin step again if it is still
        blocked, else its generator to its next step (starting its next event if needed); the
        step, committed, or None if ``th`` had no step left (it is done)."""
        respin = th.respin
        info = respin.again(self) if respin is not None else None
        if info is None:
            th.respin = None
            info = self._advance(th, order)
        if info is not None:
            self._commit(th, info)
        return info

    def _pinned_thread(self, live: list[Thread]) -> Thread | None:
        """The CPU the trace's ``schedule`` names for this turn (None: no turn pinned, or the
        replay stopped because the named CPU has no work in this batch)."""
        name, idx, ev = self._pinned.popleft()
        for th in live:
            if th.name == name:
                return th
        self._stop(
            self.impossible(
                ev,
                idx,
                f"the schedule names {name}, which has no work left in its group "
                f"(CPUs with work: {', '.join(t.name for t in live) or 'none'})",
            )
        )
        return None

    def _thread(self, name: str) -> Thread:
        """The simulated CPU ``name``, idle: made once per machine and reused by every batch
        (a batch of one event is common: building a CPU for each cost a tenth of its time)."""
        th = self._threads_made.get(name)
        if th is None:
            th = self._threads_made[name] = Thread(name, deque(), 0)
            return th
        th.queue.clear()
        th.gen = None
        th.event = None
        th.line = 0
        th.stack.clear()
        th.holds.clear()
        th.spinning = None
        th.last = None
        th.softirq = False
        th.respin = None
        return th

    def _run_alone(self, th: Thread, order: list[Thread]) -> None:
        """One CPU in the batch: nothing to interleave, its steps run back to back."""
        batch_steps = spin_run = 0
        while True:
            if self._pinned and self._pinned_thread([th]) is None:
                self._close_all(order)
                return
            info = self._advance(th, order)
            if info is None:
                if th.done:
                    return
                continue
            self._commit(th, info)
            batch_steps += 1
            if th.spinning is not None:
                spin_run += 1
                if spin_run > MAX_SPIN_STEPS:
                    self._abort_batch(order, True)
                    return
            elif batch_steps > MAX_STEPS_PER_BATCH:
                self._abort_batch(order, False)
                return

    def _run_interleaved(self, order: list[Thread]) -> None:
        """Several CPUs: ``round-robin`` (one step per CPU in turn), ``random`` (a seeded CPU
        each step) or ``sequential`` (a CPU runs until it finishes or spins)."""
        schedule = self.settings.schedule
        rr_mode = schedule == "round-robin"
        random_mode = schedule == "random"
        rng = self.sched_rng
        live = list(order)
        rr = 0
        current: Thread | None = None
        batch_steps = spin_run = 0
        pinned = self._pinned
        while live:
            if pinned:  # the trace's schedule event names this turn's CPU
                chosen = self._pinned_thread(live)
                if chosen is None:
                    self._close_all(order)
                    return
                th = chosen
            elif rr_mode:
                if rr >= len(live):
                    rr = 0
                th = live[rr]
                rr += 1
            elif random_mode:
                th = live[rng.below(len(live))]
            else:  # sequential: keep the current CPU until it finishes or spins
                if current is None or current.done or current.spinning is not None:
                    ready = [t for t in live if t.spinning is None] or live
                    if current is not None and current.spinning is not None and len(ready) > 1:
                        ready = [t for t in ready if t is not current] or ready
                    current = ready[0]
                th = current
            respin = th.respin
            info = respin.again(self) if respin is not None else None
            if info is None:
                th.respin = None
                info = self._advance(th, order)
            if info is None:
                if th.done:  # keep round-robin's turn order: the next CPU moves into this slot
                    i = live.index(th)
                    del live[i]
                    if i < rr:
                        rr -= 1
                continue
            self._commit(th, info)
            batch_steps += 1
            spin_run = spin_run + 1 if th.spinning is not None else 0
            if spin_run > MAX_SPIN_STEPS or batch_steps > MAX_STEPS_PER_BATCH:
                self._abort_batch(order, spin_run > MAX_SPIN_STEPS)
                return

    def _advance(self, th: Thread, order: list[Thread]) -> StepInfo | None:
        """Run ``th`` to its next step, starting its next event if it has none running."""
        while True:
            gen = th.gen
            if gen is None:
                if not th.queue:
                    return None
                idx, ev = th.queue.popleft()
                th.event, th.line = idx, ev.line
                th.stack.clear()
                self.event_first_step.setdefault(idx, self.nr_steps)
                gen = th.gen = run_event(self, th, idx, ev)
            try:
                info = _resume(gen)
            except ImpossibleEvent as exc:
                th.gen = None
                self._stop(exc)
                for other in order:
                    other.queue.clear()
                return None
            if info is not None:
                return info
            th.gen = None

    def _abort_batch(self, order: list[Thread], deadlock: bool) -> None:
        reason = (
            f"every CPU spun for {MAX_SPIN_STEPS} steps: deadlock (the explorer's limit)"
            if deadlock
            else f"a batch ran past {MAX_STEPS_PER_BATCH:,} steps (MAX_STEPS_PER_BATCH, the "
            "explorer's limit on one batch; a fault retrying up to a large max_retries, or "
            "many injected failures, can reach it)"
        )
        th = next((t for t in order if t.gen is not None), order[0])
        self.stopped = Diagnostic(
            self.nr_steps - 1, th.event or 0, th.line, "error", "STEP_LIMIT", reason
        )
        self.diagnostics.append(self.stopped)
        self._close_all(order)

    def _close_all(self, order: list[Thread]) -> None:
        """The batch ends here: every CPU drops its event (the replay stops)."""
        for t in order:
            if t.gen is not None:
                t.gen.close()
            t.gen = None
            t.queue.clear()

    def _flush_diags(self) -> None:
        """Attach diagnostics raised between steps (batch-end checks) to the last step."""
        if not self._diags:
            return
        last = self.steps[-1] if self.record and self.steps else None
        ev = last.event if last else -1
        line = last.line if last else 0
        diags = tuple(Diagnostic(self.nr_steps - 1, ev, line, *d) for d in self._diags)
        self._diags.clear()
        self.diagnostics.extend(diags)
        if last is not None:
            self.steps[-1] = replace(last, diagnostics=last.diagnostics + diags)

    def _stop(self, exc: ImpossibleEvent) -> None:
        p = exc.problems[0]
        self.stopped = Diagnostic(
            self.nr_steps - 1, exc.event_index, p.line, "error", "IMPOSSIBLE_EVENT", p.reason
        )
        self.diagnostics.append(self.stopped)

    def _instant(self, idx: int, ev: Event) -> None:
        self.event_first_step.setdefault(idx, self.nr_steps)
        th = Thread("trace", deque(), 0, event=idx, line=ev.line)
        if isinstance(ev, Inject):
            old = self.injections[ev.what]
            self.injections[ev.what] = old + ev.count
            self._injecting += ev.count
            self.note("inject", ev.what, old, old + ev.count)
            info: StepInfo = (
                "trace",
                "trace.inject",
                "inject: the next {} {} will fail",
                (ev.count, ev.what),
            )
        elif isinstance(ev, Schedule):
            self._pinned.extend((name, idx, ev) for name in ev.order)
            shown = " ".join(ev.order[:24]) + (" ..." if len(ev.order) > 24 else "")
            info = (
                "trace",
                "trace.schedule",
                "schedule: the next {} turn(s) of this group go to {}",
                (len(ev.order), shown),
            )
        else:
            assert isinstance(ev, Note)
            info = ("trace", "trace.note", "{}", (ev.text,))
        self._commit(th, info)

    def _fp_held(self, held: set[int]) -> None:
        """The footprint of the checks the step that frees ``pamt_lock`` runs on the regions
        changed while it was held: a read of a region's refcount and pair only where they
        disagree (where the check reports). Where they agree the check reports nothing, and
        no order of this step with another CPU's independent step checks a state the other
        order does not: such a step, if it changes the region, is checked itself (the lock
        free) or, before the unlock, with it (docs/engine.md, "Every interleaving")."""
        pairs = self.module.pairs
        refcount = self.refcount
        for r in held:
            if (refcount.get(r, 0) > 0) != (r in pairs):
                self.fp_r.add(("Rz", r))
                self.fp_r.add(("Rp", r))
                self.fp_checked.add(r)

    def _commit(self, th: Thread, info: StepInfo) -> None:
        index = self.nr_steps
        self.nr_steps = index + 1
        th.last = info
        self.batch_labels.add(info[1])
        dirty = self._dirty
        if dirty:
            self.batch_regions |= dirty
        if self.check:
            if self.full_check:
                check_regions(self, set(self.refcount) | set(self.module.pairs) | dirty, True)
                check_global(self)
            else:
                if self.pamt_lock is not None:
                    if dirty:
                        self._held_dirty |= dirty
                elif self._held_dirty:  # the lock was freed: what changed while it was held
                    held = self._held_dirty - dirty
                    self._held_dirty = set()
                    if held:
                        if self.fp_on:
                            self._fp_held(held)
                        check_regions(self, held)
                if dirty:
                    check_regions(self, dirty)
                if self._pairs_changed:
                    check_global(self, False)
        self._pairs_changed = False
        if self.pair_dirty:
            self.pair_dirty.clear()
        diags: tuple[Diagnostic, ...] = ()
        if self._diags:
            ev = th.event if th.event is not None else -1
            diags = tuple(Diagnostic(index, ev, th.line, *d) for d in self._diags)
            self.diagnostics.extend(diags)
            self._diags.clear()
        if self.lean and self.record:
            self._lean_commit(th, index, info)
        elif self.record:
            fn, label, template, args = info
            step = Step(
                index,
                th.event if th.event is not None else -1,
                th.line,
                th.name,
                fn,
                label,
                template.format(*args),
                tuple(self._fx),
                tuple(self._changed_counters.items()),
                diags,
                tuple(self._counters_before.items()),
            )
            self.steps.append(step)
            self._fx.clear()
            self._changed_counters.clear()
            self._counters_before.clear()
            if self.on_step is not None:
                self.on_step(self, step)
        dirty.clear()
        if index == self.stop_at:
            raise StepReached(th.event if th.event is not None else -1)

    def _lean_commit(self, th: Thread, index: int, info: StepInfo) -> None:
        """The lean recording of a step (``record="lean"``): its fields to
        :attr:`on_lean_step`, the step's effect list handed over (a fresh one for the next
        step), no narration formatted and no :class:`Step` built (a replay of a million-record
        capture spent as long building them as running the kernel code)."""
        fx = self._fx
        effects: Sequence[Effect] = ()
        if fx:
            effects = fx
            self._fx = []
        receiver = self.on_lean_step
        if receiver is not None:
            receiver(
                index, th.event if th.event is not None else -1, th.name, info[0], info[1], effects
            )

    def run(self, events: Sequence[Event]) -> None:
        """Run every event, batch by batch, until the end or an impossible event."""
        for start, end in batches(events):
            if self.stopped is not None:
                break
            self.run_batch((i, events[i]) for i in range(start, end))

    # ================================================================ checkpoints
    def delta(self) -> MachineDelta:
        """What changed since the last checkpoint (``image`` or ``delta``): a delta checkpoint.

        Like :meth:`image`, only valid between batches. Applying the deltas in order to the
        image they follow (:meth:`apply_delta`) rebuilds the machine exactly."""
        mem = self.mem
        regions = self._ckpt_regions
        d = MachineDelta(
            mem_pages=mem.page_delta(),
            mem_scalars=mem.scalars(),
            module=self.module.delta(),
            regions=(
                int32s(list(regions)),  # (32-bit: a 4 TiB host has 2**21 regions)
                _small_ints([self.refcount.get(r, 0) for r in regions]),
                _small_ints([self.orphans.get(r, 0) for r in regions]),
                _small_ints([self.gotten.get(r, 0) for r in regions]),
            ),
            tds=self._tds_delta(),
            vcpus=self._vcpus_delta(),
            counters=array("q", self.cnt),
            injections=dict(self.injections),
            nr_steps=self.nr_steps,
            next_hkid=self.next_hkid,
            sched_rng=self.sched_rng.state,
            extra=_copy_extra(self.extra),
        )
        self._ckpt_regions = set()
        self._delta_tds = set()
        self._delta_vcpus = set()
        return d

    def _vcpus_delta(self) -> dict[int, FrozenVcpu]:
        """The frozen vCPUs of a delta: those the batches since the last checkpoint ran on,
        less those whose frozen state equals their state at that checkpoint. A vCPU that ran
        often tops its caches back up to the same pages (``kvm_mmu_topup_memory_cache``), so on
        a host of many vCPUs most of them end an interval as they began it: on 128 TDs x 2
        vCPUs, three in four. Left out, they cost nothing; a vCPU that did change shares its
        control pages' tuple with its previous frozen state when those are unchanged."""
        last = self._frozen_vcpus
        views = self._frozen_views
        out: dict[int, FrozenVcpu] = {}
        for k in sorted(self._delta_vcpus):
            v = self.vcpus.get(k)
            if v is None:
                continue
            prev = last.get(k)
            view = _vcpu_view(v)
            old_view = views.get(k) if prev is not None else None
            if old_view is not None and view == old_view:
                continue  # (equal views, equal frozen states: nothing encoded)
            f = _freeze_vcpu(v)
            if prev is not None:
                if f == prev:
                    views[k] = view
                    continue
                if f[5] == prev[5]:
                    f = (*f[:5], prev[5])
            patch = _vcpu_patch(v, prev, old_view)
            if patch[5] == f[5]:
                patch = (*patch[:5], f[5])
            out[k] = patch
            last[k] = f
            views[k] = view
        return out

    def _tds_delta(self) -> dict[int, TdPart]:
        """The TD parts of a delta, for the TDs the batches since the last checkpoint ran
        on; a TD with nothing changed since then is left out."""
        out = {}
        for k in sorted(self._delta_tds):
            t = self.tds.get(k)
            if t is None:
                continue
            part = self._td_delta(k, t)
            if part is not None:
                out[k] = part
        return out

    def _td_delta(self, k: int, t: Td) -> TdPart | None:
        """TD ``k``'s part of a delta (None: nothing changed). Faults map a gfn to the page
        guest_memfd gave it, so the mappings' and guest_memfd's changes are usually equal: then
        one object serves both. The small tuple (state, HKID, control pages) rarely changes
        after the TD is finalized (``tdh_mr_finalize``): when equal to the last one frozen it
        is None, and a TD without other changes is left out."""
        leaves: Any = t.leaves.delta()  # (boxed once: see TdPart)
        gmem: Any = t.gmem.delta()
        if gmem == leaves:
            gmem = leaves
        entries = _pack_entries(_tracked(t.entries).delta())
        small = _small_td(t)
        prev = self._small_tds.get(k)
        if prev is not None and small == prev:
            if not leaves[0] and not gmem[0] and not entries:
                return None
            return None, leaves, gmem, entries if entries else _NO_ENTRIES
        self._small_tds[k] = small
        return small, leaves, gmem, entries if entries else _NO_ENTRIES

    def apply_deltas(self, deltas: Sequence[MachineDelta]) -> None:
        """Apply consecutive deltas as one (a seek: the deltas between its keyframe and its
        checkpoint, up to a keyframe interval of them). Each table is merged first, the last
        value of each key winning, and then applied once: a page, a region's refcount, a guest
        mapping or a vCPU changed in several deltas is written once, not once per delta, and
        what each delta holds in full (the counters, the scalars) is taken from the last."""
        if len(deltas) <= 1:
            for d in deltas:
                self.apply_delta(d)
            return
        last = deltas[-1]
        self.mem.apply_many([d.mem_pages for d in deltas], last.mem_scalars)
        self.module.apply_many([d.module for d in deltas])
        self._apply_rows_many([d.regions for d in deltas])
        per_td: dict[int, list[TdPart]] = {}
        for d in deltas:
            for k, part in d.tds.items():
                per_td.setdefault(k, []).append(part)
        for k, parts in per_td.items():
            smalls = [p[0] for p in parts if p[0] is not None]
            td = self._td_for_delta(k, smalls[-1] if smalls else None)
            leaves = merge_deltas([p[1] for p in parts])
            td.leaves.apply(leaves)
            # a delta whose gmem changes equal its leaves' shares their arrays (:meth:`delta`;
            # compiled, the pair itself is re-boxed, so the arrays are what is compared): the
            # merge is then done once for both tables
            if all(p[2][0] is p[1][0] and p[2][1] is p[1][1] for p in parts):
                td.gmem.apply(leaves)
            else:
                td.gmem.apply(merge_deltas([p[2] for p in parts]))
            entries: dict[Any, Any] = {}
            for p in parts:
                entries.update(_unpack_entries(p[3]))
            _tracked(td.entries).apply(entries)
        patches: dict[int, list[FrozenVcpu]] = {}
        for d in deltas:
            for k, fv in d.vcpus.items():
                patches.setdefault(k, []).append(fv)
        for k, fvs in patches.items():  # (each a patch of the one before: see _vcpu_patch)
            self.vcpus[k] = _patched_vcpu(fvs, self.vcpus.get(k))
        self._apply_scalars(last, True)

    def _apply_rows(self, rows: dict[int, tuple[int, int, int]]) -> None:
        """Regions' refcounts, orphans and references held, as a delta holds them (0: none)."""
        refcount, orphans, gotten = self.refcount, self.orphans, self.gotten
        for r, (rc, orphan, held) in rows.items():
            if rc:
                refcount[r] = rc
            else:
                refcount.pop(r, None)
            if orphan:
                orphans[r] = orphan
            else:
                orphans.pop(r, None)
            if held:
                gotten[r] = held
            else:
                gotten.pop(r, None)

    def _apply_rows_many(
        self, parts: list[tuple[array[int], array[int], array[int], array[int]]]
    ) -> None:
        """Consecutive deltas' region rows (:meth:`_apply_rows`), each table updated in C from
        every delta in order (the last value of a region winning), then its regions at 0 taken
        out. On a host whose allocations scatter a seek merges tens of thousands of rows:
        building a 3-tuple per row and writing it through three branches was a fifth of
        applying the deltas."""
        tables = (self.refcount, self.orphans, self.gotten)
        for table, col in zip(tables, (1, 2, 3), strict=True):
            zeroed: set[int] = set()
            for part in parts:
                values = part[col]
                nr_zero = values.count(0)
                if nr_zero == len(values) and not table:
                    continue  # (a table left empty: orphans, on most traces)
                table.update(zip(part[0], values, strict=True))
                if nr_zero:
                    zeroed.update([r for r, v in zip(part[0], values, strict=True) if not v])
            for r in zeroed:
                if table.get(r) == 0:
                    del table[r]

    def _td_for_delta(self, k: int, small: SmallTd | None) -> Td:
        """TD ``k`` (created if the delta is its first), its small fields set from ``small``
        (None: unchanged since the previous checkpoint, where the TD already existed)."""
        td = self.tds.get(k)
        if td is None:
            td = self.tds[k] = Td(k)
        if small is None:
            return td
        state, hkid, vcpus, control, mirror_root, seq = small
        td.state, td.hkid, td.vcpus = state, hkid, list(vcpus)
        td.control, td.mirror_root = list(control), mirror_root
        td.mmu_invalidate_seq = seq
        return td

    def apply_delta(self, d: MachineDelta, *, last: bool = True) -> None:
        """Move a machine restored at the previous checkpoint forward to this one (``last``
        False: another delta follows, which replaces the counters anyway)."""
        self.mem.apply(d.mem_pages, d.mem_scalars)
        self.module.apply(d.module)
        keys, refcounts, orphans, gotten = d.regions
        self._apply_rows(dict(zip(keys, zip(refcounts, orphans, gotten, strict=True), strict=True)))
        for k, (small, leaves, gmem, entries) in d.tds.items():
            td = self._td_for_delta(k, small)
            td.leaves.apply(leaves)
            td.gmem.apply(gmem)
            _tracked(td.entries).apply(_unpack_entries(entries))
        for k, fv in d.vcpus.items():  # (the vCPUs the delta's batches changed)
            self.vcpus[k] = _patched_vcpu([fv], self.vcpus.get(k))
        self._apply_scalars(d, last)

    def _apply_scalars(self, d: MachineDelta, last: bool) -> None:
        """What a delta holds in full: counters, injections, the scheduler's state."""
        if last:
            self.cnt = list(d.counters)
        self.injections = dict(d.injections)
        self._injecting = sum(self.injections.values())
        self.nr_steps = d.nr_steps
        self.next_hkid = d.next_hkid
        self.sched_rng.state = d.sched_rng
        self.extra = _copy_extra(d.extra)
        self._ckpt_regions = set()
        self.q_all = True  # (the rows kept between batches are recounted at the next batch)
        self._delta_tds = set()
        self._delta_vcpus = set()
        self._frozen_vcpus = {}
        self._frozen_views = {}
        self._small_tds = {}
        self.gotten_total = sum(self.gotten.values())

    def image(self) -> MachineImage:
        """A checkpoint; only valid between batches (no CPU in the middle of kernel code).

        Shallow copies of int-keyed dicts of ints and tuples (C-speed), not deep copies: the
        big parts (guest mappings, S-EPT entries, page owners) are exactly those."""
        vcpus = self._image_vcpus()
        for k in self._delta_tds:  # (the others' small tuples are as last frozen)
            t = self.tds.get(k)
            if t is not None:
                self._small_tds[k] = _small_td(t)
        self._clear_tracking()
        return MachineImage(
            memory=self.mem.image(),
            module=self.module.image(),
            refcount=zpack_ints(self.refcount),
            orphans=zpack_ints(self.orphans),
            gotten=zpack_ints(self.gotten),
            tds={k: _copy_td(t) for k, t in self.tds.items()},
            mappings={
                k: (
                    t.leaves.frozen_table(),
                    t.gmem.frozen_table(like=t.leaves),
                    _pack_entries(t.entries),
                )
                for k, t in self.tds.items()
            },
            vcpus=vcpus,
            counters=self.counters,
            injections=dict(self.injections),
            nr_steps=self.nr_steps,
            next_hkid=self.next_hkid,
            sched_rng=self.sched_rng.state,
            extra=_copy_extra(self.extra),
        )

    def _image_vcpus(self) -> dict[int, FrozenVcpu]:
        """Every vCPU frozen, for an image: a vCPU unchanged since the last checkpoint froze
        it (at a checkpoint, the delta taken just before) shares that frozen state. They become
        the states the next delta compares with (the image is a checkpoint too)."""
        last = self._frozen_vcpus
        dirty = self._delta_vcpus
        views = self._frozen_views
        out: dict[int, FrozenVcpu] = {}
        for k, v in self.vcpus.items():
            f = last.get(k)
            if f is not None and k not in dirty:
                out[k] = f
            else:
                out[k] = _freeze_vcpu(v)
                views[k] = _vcpu_view(v)
        self._frozen_vcpus = dict(out)
        return out

    def _clear_tracking(self) -> None:
        self.mem.clear_dirty()
        self.module.clear_dirty()
        self._ckpt_regions = set()
        self._delta_tds = set()
        self._delta_vcpus = set()
        for t in self.tds.values():
            t.leaves.changed = {}
            t.gmem.changed = {}
            _tracked(t.entries).changed = set()

    def restore(self, img: MachineImage, *, reuse_vcpus: bool = False) -> None:
        """The machine's state set to ``img``'s. With ``reuse_vcpus`` (:meth:`reset`), the
        vCPUs are copied from those thawed at the last such restore when it was to this same
        image object, and thawed and kept for the next one otherwise."""
        self.mem.restore(img.memory)
        self.module.restore(img.module)
        self.refcount = zunpack_ints(img.refcount)
        self.orphans = zunpack_ints(img.orphans)
        self.gotten = zunpack_ints(img.gotten)
        self.gotten_total = sum(self.gotten.values())
        self.inflight = {}
        self.owed = {}
        self.v5_put_window = {}
        self.tds = {k: _copy_td(t, img.mappings[k]) for k, t in img.tds.items()}
        if not reuse_vcpus:
            self.vcpus = {k: _thaw_vcpu(v) for k, v in img.vcpus.items()}
        else:
            kept = self._thawed
            if kept is None or kept[0] is not img:
                kept = self._thawed = (img, {k: _thaw_vcpu(v) for k, v in img.vcpus.items()})
            self.vcpus = {k: _copy_vcpu(v) for k, v in kept[1].items()}
        self.cnt = [img.counters[k] for k in COUNTER_NAMES]
        self.injections = dict(img.injections)
        self._injecting = sum(self.injections.values())
        self.nr_steps = img.nr_steps
        self.next_hkid = img.next_hkid
        self.sched_rng.state = img.sched_rng
        self.extra = _copy_extra(img.extra)
        self.pamt_lock = None
        self.threads = {}
        self.stopped = None
        self._ckpt_regions = set()
        self._delta_tds = set()
        self._delta_vcpus = set()
        self._frozen_vcpus = {}
        self._frozen_views = {}
        self._small_tds = {}
        self.q_all = True

    def reset(self, img: MachineImage) -> None:
        """This machine as a new one restored at ``img`` would be: :meth:`restore`, plus what
        a run sets that a restore keeps (the record of the steps and diagnostics, the current
        step's notes, the batch's sets, the invariant totals, the footprints, the CPUs).

        The search re-executes a prefix of turns from a group's start thousands of times
        (``explorer.interleavings.search``): one machine reset each time instead of a new one
        built. The CPUs' generators still suspended in kernel code are closed FIRST: a
        ``tdx_pamt_get``/``tdx_pamt_put`` left mid-way runs its ``finally`` (``pamt_leave``)
        when closed, and a generator dropped later would run it on the reset state. What is
        configuration and not state stays: ``fp_on``, ``stop_at``, the step receivers, the
        memory's pinned pages, the vCPU names."""
        for th in self._threads_made.values():
            if th.gen is not None:
                th.gen.close()
                th.gen = None
        self.restore(img, reuse_vcpus=True)
        self._threads_made = {}
        self.steps = []
        self.diagnostics = []
        self.event_first_step = {}
        self.batch_labels = set()
        self.batch_regions = set()
        self._fx = []
        self._dirty = set()
        self._held_dirty = set()
        self.pair_dirty = set()
        self._batch_vcpus = set()
        self._batch_tds = set()
        self._batch_destroys = set()
        self._pairs_changed = False
        self._pinned = deque()
        self.caches_moved = False
        self.q_td_rows = {}
        self.q_vcpu_rows = {}
        self.q_total = [0] * 7
        self._changed_counters = {}
        self._counters_before = {}
        self._diags = []
        self.fp_r = set()
        self.fp_w = set()
        self.fp_a = set()
        self.fp_l = set()
        self.fp_checked = set()

    def canonical_state(self, ignore: Sequence[str] = ("spins",)) -> tuple[Any, ...]:
        """Everything the machine's future depends on, as one hashable value, equal for equal
        states whatever path led to them (``explorer.interleavings.search`` hashes it): page owners and the
        allocator's position, the module's pages and pairs, refcounts, references, locks, TDs
        (S-EPT entries, mappings, guest_memfd), vCPUs (caches) and counters. Not in it: the step
        count and the spin counter (a path that spun longer reaches the same state), the
        scheduler's random state (an exploration chooses every turn), step records. Counts
        derived from the maps (per-region owners, use counts) are left out too.

        ``ignore`` names the counters left out: an exploration also leaves out ``fault_retries``
        (a lap of a retry loop that changed nothing else comes back to the same state, so the
        loop is a cycle of the state graph, not a ladder of states)."""
        mem = self.mem
        # (the counters kept, found with sets: an exploration passes every counter's name, and
        # looking each up in COUNTER_NAMES was a quadratic scan per state)
        ignored = set(ignore)
        unknown = ignored.difference(COUNTER_NAMES)
        if unknown:
            raise ValueError(f"canonical_state: unknown counter {sorted(unknown)[0]!r}")
        tds = []
        for t in sorted(self.tds.values(), key=lambda t: t.id):
            tds.append(
                (
                    t.id,
                    t.state,
                    t.hkid,
                    tuple(t.vcpus),
                    tuple(t.control),
                    t.mirror_root,
                    tuple(sorted(t.entries.items())),
                    tuple(sorted(t.leaves.items())),
                    tuple(sorted(t.leaf_frozen.items())),
                    tuple(sorted(t.gmem.items())),
                    tuple(sorted(t.mmu_readers)),
                    t.mmu_writer,
                    t.mmu_invalidate_seq,
                )
            )
        vcpus = []
        for v in sorted(self.vcpus.values(), key=lambda v: v.id):
            caches = tuple(
                (name, c.objects, c.min, c.capacity, tuple(c.pfns), c.nobjs)
                for name, c in sorted(v.caches.items())
            )
            vcpus.append((v.id, v.td, v.alive, tuple(v.pamt_cache), caches, tuple(v.control)))
        return (
            tuple(sorted((r, bytes(b)) for r, b in mem.maps().items())),
            tuple(sorted(set(mem._heap))),
            mem._untouched,
            mem._spread_cursor,
            mem._rng.state,
            mem.percpu_key(),
            tuple(sorted((r, bytes(b)) for r, b in self.module.kind_maps().items())),
            tuple(sorted(self.module.pairs.items())),
            tuple(sorted(self.refcount.items())),
            tuple(sorted(self.orphans.items())),
            tuple(sorted(self.gotten.items())),
            tuple(sorted(self.inflight.items())),
            tuple(sorted(self.v5_put_window.items())),
            self.pamt_lock,
            tuple(tds),
            tuple(vcpus),
            tuple(
                [c for c, name in zip(self.cnt, COUNTER_NAMES, strict=True) if name not in ignored]
            ),
            tuple(sorted(self.injections.items())),
            tuple(sorted((k, repr(v)) for k, v in self.extra.items())),
            self.next_hkid,
        )

    # ================================================================ snapshots
    def page_summary(self) -> dict[str, int]:
        c = self.mem.counts
        out = {
            "total": self.mem.total_pages,
            "free": c[O_FREE],
            "pamt_pair": c[O_PAIR],
            "pamt_cache": c[O_PAMT_CACHE],
            "kvm_cache": c[O_KVM_CACHE],
            "sept": c[O_SEPT] + c[O_MIRROR],
            "control": c[O_CONTROL],
            "guest": c[O_GUEST],
            "leaked": c[O_LEAKED],
        }
        out["mirror"] = c[O_MIRROR]
        out["in_hand"] = c[O_IN_HAND]
        return out

    def snapshot(self, step: int | None = None, event: int = -1) -> Snapshot:
        s = self.settings
        target = 2 * s.dpamt_gets_per_fault
        vcpus = tuple(
            VcpuView(
                v.id,
                v.td,
                v.alive,
                tuple(v.pamt_cache),
                target,
                tuple(
                    KvmCacheView(c.name, c.objects, c.min, c.capacity, c.count, tuple(c.pfns))
                    for c in v.caches.values()
                ),
                tuple(p for p, _ in v.control),
            )
            for v in sorted(self.vcpus.values(), key=lambda v: v.id)
        )
        tds = tuple(
            TdView(
                t.id,
                t.state,
                t.hkid,
                tuple(t.vcpus),
                tuple(p for p, _ in t.control),
                len(t.leaves),
                [e[0] for e in t.entries.values()].count("present"),
                t.mmu_writer,
                tuple(t.mmu_readers),
            )
            for t in sorted(self.tds.values(), key=lambda t: t.id)
        )
        cpus = []
        for th in self.threads.values():
            info = th.last
            cpus.append(
                CpuView(
                    th.name,
                    th.event if th.gen is not None else None,
                    info[0] if info else None,
                    info[1] if info else None,
                    info[2].format(*info[3]) if info else "",
                    tuple(th.stack),
                    th.spinning,
                    tuple(th.holds),
                )
            )
        return Snapshot(
            step=self.nr_steps - 1 if step is None else step,
            event=event,
            settings=s,
            nr_regions=self.mem.nr_regions,
            region_owners=self.mem.region_table(),
            refcount=_by_key(self.refcount),
            pairs=_by_key(self.module.pairs),
            orphans=_by_key(self.orphans),
            vcpus=vcpus,
            tds=tds,
            cpus=tuple(cpus),
            pamt_lock=self.pamt_lock,
            mmu_lock_writer=next((t.mmu_writer for t in self.tds.values() if t.mmu_writer), None),
            mmu_lock_readers=tuple(r for t in self.tds.values() for r in t.mmu_readers),
            counters=self.counters,
            pages=self.page_summary(),
            injections=dict(self.injections),
            extra=_copy_extra(self.extra),  # (a mempool's reserve changes in place)
        )
