"""The simulated machine: kernel state, CPUs running kernel code as generators, the scheduler.

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

from array import array
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from explorer.model import constants as C
from explorer.model.chunked import ChunkedDelta, ChunkedDict, FrozenTable
from explorer.model.errors import ImpossibleEvent, Problem
from explorer.model.events import Event, Fault, Inject, Note, Schedule, TdDestroy
from explorer.model.invariants import check_global, check_quiescent, check_regions
from explorer.model.memory import FREE, HostMemory, MemoryImage, PageDelta
from explorer.model.packed import PackedInts, int32s, pack_ints, unpack_ints
from explorer.model.prng import XorShift32
from explorer.model.records import (
    OWNER_CODE,
    OWNERS,
    CpuView,
    Diagnostic,
    Effect,
    KvmCacheView,
    Snapshot,
    Step,
    TdView,
    VcpuView,
)
from explorer.model.settings import Settings
from explorer.model.tdx_module import ModuleDelta, ModuleImage, TdxModule

#: What a kernel generator yields at the end of a step: (function, label, template, args).
#: (A variable-length tuple type: compiled, a fixed-length one is unboxed into a C struct and
#: boxed again, a new tuple per step, wherever it is stored.)
StepInfo = tuple[Any, ...]
KGen = Generator[StepInfo, None, Any]

O_FREE: Final = FREE
O_PAIR: Final = OWNER_CODE["pamt_pair"]
O_PAMT_CACHE: Final = OWNER_CODE["pamt_cache"]
O_KVM_CACHE: Final = OWNER_CODE["kvm_cache"]
O_SEPT: Final = OWNER_CODE["sept"]
O_MIRROR: Final = OWNER_CODE["mirror"]
O_CONTROL: Final = OWNER_CODE["control"]
O_GUEST: Final = OWNER_CODE["guest"]
O_LEAKED: Final = OWNER_CODE["leaked"]
O_IN_HAND: Final = OWNER_CODE["in_hand"]

#: Hard limits of one replay (named so messages can cite them).
MAX_STEPS_PER_BATCH: Final = 5_000_000
MAX_SPIN_STEPS: Final = 100_000

COUNTER_NAMES: Final = (
    "faults",
    "fault_retries",
    "faults_failed",
    "faults_spurious",
    "livelocks",
    "pamt_get",
    "pamt_get_fast",
    "pamt_get_slow",
    "pamt_lost_race",
    "pamt_add",
    "pamt_add_failed",
    "pamt_put",
    "pamt_remove",
    "pamt_remove_failed",
    "pamt_pages_drained",
    "sept_add",
    "sept_add_failed",
    "page_aug",
    "page_add",
    "page_aug_failed",
    "page_remove",
    "alloc_failed",
    "allocs_sleeping",
    "allocs_atomic",
    "allocs_under_lock",
    "kvm_cache_empty",
    "spins",
    "zaps",
    "violations",
    "warnings",
)

#: Each counter's index in :attr:`Machine.cnt` (the kernel code counts by index: a list
#: store, where a dict of names cost a string lookup per count).
K_FAULTS: Final = 0
K_FAULT_RETRIES: Final = 1
K_FAULTS_FAILED: Final = 2
K_FAULTS_SPURIOUS: Final = 3
K_LIVELOCKS: Final = 4
K_PAMT_GET: Final = 5
K_PAMT_GET_FAST: Final = 6
K_PAMT_GET_SLOW: Final = 7
K_PAMT_LOST_RACE: Final = 8
K_PAMT_ADD: Final = 9
K_PAMT_ADD_FAILED: Final = 10
K_PAMT_PUT: Final = 11
K_PAMT_REMOVE: Final = 12
K_PAMT_REMOVE_FAILED: Final = 13
K_PAMT_PAGES_DRAINED: Final = 14
K_SEPT_ADD: Final = 15
K_SEPT_ADD_FAILED: Final = 16
K_PAGE_AUG: Final = 17
K_PAGE_ADD: Final = 18
K_PAGE_AUG_FAILED: Final = 19
K_PAGE_REMOVE: Final = 20
K_ALLOC_FAILED: Final = 21
K_ALLOCS_SLEEPING: Final = 22
K_ALLOCS_ATOMIC: Final = 23
K_ALLOCS_UNDER_LOCK: Final = 24
K_KVM_CACHE_EMPTY: Final = 25
K_SPINS: Final = 26
K_ZAPS: Final = 27
K_VIOLATIONS: Final = 28
K_WARNINGS: Final = 29


@dataclass(slots=True)
class KvmCache:
    """A ``struct kvm_mmu_memory_cache``: pages (``pfns``, LIFO at the end) or slab objects."""

    name: str
    objects: bool
    min: int
    capacity: int = C.KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE
    pfns: list[int] = field(default_factory=list)
    nobjs: int = 0

    @property
    def count(self) -> int:
        return self.nobjs if self.objects else len(self.pfns)


@dataclass(slots=True)
class Vcpu:
    id: int
    td: int
    alive: bool = True
    #: ``struct tdx_pamt_cache``: the list head is the END of this list (push/pop there).
    pamt_cache: list[int] = field(default_factory=list)
    caches: dict[str, KvmCache] = field(default_factory=dict)
    control: list[tuple[int, str]] = field(default_factory=list)  # (pfn, "tdvpr"|"tdcx")


class _Gone:
    """The value of a key deleted since the last delta checkpoint (TrackedDict's deltas)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "GONE"


GONE: Any = _Gone()


class TrackedDict(dict[Any, Any]):
    """A dict that remembers which keys changed since the last checkpoint, so a checkpoint
    copies the changes (guest mappings, S-EPT entries), not the whole dict."""

    __slots__ = ("changed",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.changed: set[Any] = set()

    def __setitem__(self, key: Any, value: Any) -> None:
        self.changed.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.changed.add(key)
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self.changed.add(key)
        return super().pop(key, *default)

    def delta(self) -> dict[Any, Any]:
        """{key: value, or GONE} for every key changed since the last call."""
        out = {k: self.get(k, GONE) for k in self.changed}
        self.changed = set()
        return out

    def apply(self, delta: dict[Any, Any]) -> None:
        for k, v in delta.items():
            if v is GONE:
                super().pop(k, None)
            else:
                super().__setitem__(k, v)
        self.changed = set()


@dataclass(slots=True)
class Td:
    id: int
    state: str = "creating"  # creating | created | finalized | bugged | failed | destroyed
    hkid: int | None = None
    vcpus: list[int] = field(default_factory=list)
    control: list[tuple[int, str]] = field(default_factory=list)  # (pfn, "tdr"|"tdcs")
    mirror_root: int | None = None
    #: S-EPT entries pointing at non-root tables, keyed (level of the table, gfn >> 9*level):
    #: ("frozen", cpu) while being linked, ("present", sept_pfn, mirror_pfn) once linked.
    entries: dict[tuple[int, int], tuple[Any, ...]] = field(default_factory=TrackedDict)
    #: the two big dicts (one entry per faulted page) share chunks with checkpoints
    leaves: ChunkedDict = field(default_factory=ChunkedDict)  # mapped gfn -> pfn
    leaf_frozen: dict[int, str] = field(default_factory=dict)  # gfn -> cpu
    gmem: ChunkedDict = field(default_factory=ChunkedDict)  # guest_memfd: gfn -> pfn held
    #: ``kvm->mmu_lock``: one rwlock per VM (``pamt_lock`` is the only global lock)
    mmu_readers: list[str] = field(default_factory=list)
    mmu_writer: str | None = None
    #: ``kvm->mmu_invalidate_seq``: bumped by every zap (``kvm_mmu_invalidate_end``); a fault
    #: that read guest_memfd under an older value is stale (``is_page_fault_stale``)
    mmu_invalidate_seq: int = 0


class Spin:
    """A CPU spinning on a lock: its next spin step, if the lock's holders stay the same, is the
    same step again. The scheduler repeats it (:meth:`again`) without resuming the spinner's
    generator: a contended lock costs a spin step per turn of every waiter (a third of the steps
    of a contended batch), and each spin step is the lock's spin loop (``explorer.model.dpamt
    ._spin``, which makes these, with the lock's own ``blocker``) one more time."""

    __slots__ = ("blocker", "holder", "info", "td")

    def __init__(
        self,
        blocker: Callable[[Machine, Td | None], str | None],
        td: Td | None,
        holder: str,
        info: StepInfo,
    ) -> None:
        self.blocker = blocker
        self.td = td
        self.holder = holder
        self.info = info

    def again(self, m: Machine) -> StepInfo | None:
        """The spin step once more (counted), or None when the holders changed: the spinner
        then runs its own code (it takes the lock, or spins on someone else)."""
        if self.blocker(m, self.td) != self.holder:
            return None
        m.count(K_SPINS)
        return self.info


@dataclass(slots=True)
class Thread:
    """A simulated CPU running one event's kernel code at a time."""

    name: str
    queue: deque[tuple[int, Event]]
    order: int
    gen: KGen | None = None
    event: int | None = None
    line: int = 0
    stack: list[str] = field(default_factory=list)
    holds: list[str] = field(default_factory=list)
    spinning: str | None = None
    last: StepInfo | None = None
    softirq: bool = False  # running an RCU callback (v5-topup-install frees S-EPT pages so)
    #: while spinning: how to repeat the spin step without resuming the generator
    #: (:class:`explorer.model.dpamt.Spin`)
    respin: Spin | None = None

    @property
    def done(self) -> bool:
        return self.gen is None and not self.queue


_RUN_EVENT: Callable[[Machine, Thread, int, Event], KGen] | None = None


def _run_event() -> Callable[[Machine, Thread, int, Event], KGen]:
    """``explorer.model.kvm.run_event`` (imported late: the kernel code imports this module)."""
    global _RUN_EVENT
    if _RUN_EVENT is None:
        from explorer.model.kvm import run_event

        _RUN_EVENT = run_event
    return _RUN_EVENT


def _copy_td(t: Td, mappings: tuple[FrozenTable, FrozenTable] | None = None) -> Td:
    """A copy of a quiescent TD (its dicts hold ints and tuples: shallow copies suffice). The
    guest mappings are not copied (a keyframe keeps them as tables of frozen chunks, see
    explorer.model.chunked): empty, or restored from ``mappings``."""
    leaves, gmem = (
        (ChunkedDict(), ChunkedDict())
        if mappings is None
        else (ChunkedDict.from_table(mappings[0]), ChunkedDict.from_table(mappings[1]))
    )
    return Td(
        t.id,
        t.state,
        t.hkid,
        list(t.vcpus),
        list(t.control),
        t.mirror_root,
        TrackedDict(t.entries),
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
#: page number packed as 32-bit ints in one bytes object, the control pages). One bytes object,
#: not arrays and tuples per cache: a delta holds a frozen vCPU for each vCPU its batches ran on
#: (a host of 256 vCPUs: 252 per delta), and the tuples' and arrays' headers were two thirds of
#: the 2.3 KB each one took.
FrozenVcpu = tuple[Any, ...]

#: the (name, objects) of a vCPU's caches, one shared tuple per distinct shape
_CACHE_SHAPES: dict[tuple[tuple[str, bool], ...], tuple[tuple[str, bool], ...]] = {}


def _freeze_vcpu(v: Vcpu) -> FrozenVcpu:
    """(A pfn of the largest host, 4 TiB, fits in 32 bits.)"""
    shape = tuple([(c.name, c.objects) for c in v.caches.values()])
    shape = _CACHE_SHAPES.setdefault(shape, shape)
    ints = [len(v.pamt_cache), *v.pamt_cache]
    for c in v.caches.values():
        ints += (c.min, c.capacity, c.nobjs, len(c.pfns))
        ints += c.pfns
    return (v.id, v.td, v.alive, shape, int32s(ints).tobytes(), tuple(v.control))


def _thaw_vcpu(f: FrozenVcpu) -> Vcpu:
    ints = array("i")
    ints.frombytes(f[4])
    values = ints.tolist()
    n = values[0]
    at = 1 + n
    pamt_cache = values[1:at]
    caches: dict[str, KvmCache] = {}
    for name, objects in f[3]:
        lo, cap, nobjs, npfns = values[at : at + 4]
        at += 4
        caches[name] = KvmCache(name, objects, lo, cap, values[at : at + npfns], nobjs)
        at += npfns
    return Vcpu(f[0], f[1], f[2], pamt_cache, caches, list(f[5]))


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
        return f"vcpu{vcpu}"
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
    refcount: PackedInts
    orphans: PackedInts
    gotten: PackedInts
    tds: dict[int, Td]  # without their guest mappings:
    mappings: dict[int, tuple[FrozenTable, FrozenTable]]  # (leaves, gmem) per TD
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
    tds: dict[int, tuple[SmallTd, ChunkedDelta, ChunkedDelta, dict[Any, Any]]]  # (likewise)
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


class Machine:
    """All kernel and TDX-module state, and the loop that runs events on simulated CPUs."""

    def __init__(
        self,
        settings: Settings,
        *,
        record: bool = True,
        check: bool = True,
        full_check: bool = False,
    ) -> None:
        self.settings = settings
        self.mode = settings.mode
        # settings the kernel code reads on every fault, as plain attributes
        self.ept_levels = settings.ept_levels
        self.gfn_limit: int = C.GFN_LIMIT[settings.ept_levels]
        self.max_retries = settings.max_retries
        self.gets_per_fault = settings.dpamt_gets_per_fault
        #: how the DPAMT top-up is named in its narration (v6: 2 x dpamt_gets_per_fault pages)
        self.pamt_topup_what = f"tdx_topup_pamt_cache (2 x {settings.dpamt_gets_per_fault})"
        self.record = record
        self.check = check
        self.full_check = full_check
        self.mem = HostMemory(settings.total_pages, settings.allocator, settings.seed)
        self.module = TdxModule()
        # arch/x86 DPAMT state
        self.refcount: dict[int, int] = {}
        self.orphans: dict[int, int] = {}
        self.pamt_lock: str | None = None
        # engine bookkeeping (not kernel state): references held by callers, per region, and
        # regions with a get/put in flight (invariant 2 is checked only when none is).
        self.gotten: dict[int, int] = {}
        #: the sum of ``gotten`` (metrics read it after every batch: a sum over every region
        #: was O(regions) per batch)
        self.gotten_total = 0
        self.inflight: dict[int, int] = {}
        self.v5_put_window: dict[int, int] = {}
        # KVM state
        self.tds: dict[int, Td] = {}
        self.vcpus: dict[int, Vcpu] = {}
        self.next_hkid = 1
        self.injections: dict[str, int] = dict.fromkeys(C.INJECTIONS, 0)
        self._injecting = 0  # injected failures pending, all kinds together
        #: the counters, by index (K_FAULTS, ...; :attr:`counters` names them)
        self.cnt: list[int] = [0] * len(COUNTER_NAMES)
        self.extra: dict[str, Any] = {}
        # stepping
        self.sched_rng = XorShift32(settings.seed, 2)  # the random schedule's draws
        self.nr_steps = 0
        self.steps: list[Step] = []
        self.diagnostics: list[Diagnostic] = []
        self.stopped: Diagnostic | None = None
        self.threads: dict[str, Thread] = {}
        self._threads_made: dict[str, Thread] = {}  # every CPU made so far, by name
        self._vcpu_names: dict[int, str] = {}  # vCPU id -> its thread's name
        self.event_first_step: dict[int, int] = {}
        self.batch_labels: set[str] = set()
        self.batch_regions: set[int] = set()
        self.on_step: Callable[[Machine, Step], None] | None = None
        #: a step at which to stop (StepReached), mid-batch: a seek's target (-1: none)
        self.stop_at = -1
        self._fx: list[Effect] = []
        self._dirty: set[int] = set()
        #: regions whose pair was added or removed in this step (invariant 4 checks them)
        self.pair_dirty: set[int] = set()
        self._ckpt_regions: set[int] = set()  # refcount/orphans/gotten keys since a checkpoint
        #: the TDs and vCPUs batches ran on since the last checkpoint: a delta holds those only
        #: (a delta of every TD and vCPU cost O(TDs + vCPUs) each time, and as much memory)
        self._delta_tds: set[int] = set()
        self._delta_vcpus: set[int] = set()
        #: the vCPUs and TDs the current batch's events name (``batch_owners``)
        self._batch_vcpus: set[int] = set()
        self._batch_tds: set[int] = set()
        self._batch_destroys: set[int] = set()
        self._pairs_changed = False  # a pair page moved: invariant 5's pair counts then
        #: turns pinned by the trace's ``schedule`` events for this batch: (CPU, event index,
        #: the schedule event), consumed first to last before the configured schedule
        self._pinned: deque[tuple[str, int, Event]] = deque()
        #: a page entered or left a cache in this batch: the caches are counted after it
        self.caches_moved = False
        #: the pages each TD and vCPU holds, per owner, as of the last batch, and their sum
        #: (``invariants.quiescent_totals``): recounted for the TDs and vCPUs a batch ran on
        #: (``batch_owners``), all of them after a restore or a small machine's batch (``q_all``)
        self.q_all = True
        self.q_td_rows: dict[int, tuple[int, int, int, int, int]] = {}
        self.q_vcpu_rows: dict[int, tuple[int, int, int]] = {}
        self.q_total: list[int] = [0] * 7
        self._changed_counters: dict[str, int] = {}
        self._counters_before: dict[str, int] = {}  # their values before the step
        self._diags: list[tuple[str, str, str]] = []

    # ================================================================ effects API
    def _effect(self, kind: str, key: Any, old: Any, new: Any) -> None:
        fx = self._fx
        if kind in (
            "pamt_cache",
            "kvm_cache",
        ):  # one effect per cache per step: first old, last new
            for i in range(len(fx) - 1, -1, -1):
                if fx[i][0] == kind and fx[i][1] == key:
                    fx[i] = Effect(kind, key, fx[i][2], new)
                    return
        fx.append(Effect(kind, key, old, new))

    def set_owner(self, pfn: int, code: int) -> None:
        """Give ``pfn`` a new owner. A page's owner alone cannot break invariants 1 to 4 of its
        region (refcounts, references and pairs can): the region is noted as touched by the
        batch, and the pair-page counts of invariant 5 are checked after the step when a pair
        page moved."""
        old = self.mem.set_owner(pfn, code)
        self.batch_regions.add(pfn >> C.PAGES_PER_REGION_SHIFT)
        if old in (O_PAIR, O_LEAKED) or code in (O_PAIR, O_LEAKED):
            self._pairs_changed = True
        elif old in (O_PAMT_CACHE, O_KVM_CACHE) or code in (O_PAMT_CACHE, O_KVM_CACHE):
            self.caches_moved = True
        if self.record and old != code:
            self._effect("page", pfn, OWNERS[old], OWNERS[code])

    def set_refcount(self, region: int, new: int) -> None:
        old = self.refcount.get(region, 0)
        if new:
            self.refcount[region] = new
        else:
            self.refcount.pop(region, None)
        self._dirty.add(region)
        self._ckpt_regions.add(region)
        if self.record:
            self._effect("refcount", region, old, new)

    def add_orphan(self, region: int) -> None:
        old = self.orphans.get(region, 0)
        self.orphans[region] = old + 1
        self._dirty.add(region)
        self._ckpt_regions.add(region)
        if self.record:
            self._effect("orphan", region, old, old + 1)

    def mark_gotten(self, pfn: int, delta: int) -> None:
        """The caller now holds (+1) or dropped (-1) a DPAMT reference on pfn's region."""
        region = pfn >> C.PAGES_PER_REGION_SHIFT
        n = self.gotten.get(region, 0) + delta
        self.gotten_total += delta
        if n:
            self.gotten[region] = n
        else:
            self.gotten.pop(region, None)
        self._dirty.add(region)
        self._ckpt_regions.add(region)

    def set_lock(self, lock: str, old: Any, new: Any) -> None:
        if self.record:
            self._effect("lock", lock, old, new)

    def note_pair(self, region: int, old: Any, new: Any) -> None:
        self._dirty.add(region)
        self.pair_dirty.add(region)
        self._pairs_changed = True
        if self.record:
            self._effect("pair", region, old, new)

    def note(self, kind: str, key: Any, old: Any, new: Any) -> None:
        """Record a change of KVM state (S-EPT entry, mapping, TD/vCPU state) as an effect."""
        if self.record:
            self._effect(kind, key, old, new)

    @property
    def counters(self) -> dict[str, int]:
        """The counters by name (a fresh dict: for reports, not for the kernel code)."""
        return dict(zip(COUNTER_NAMES, self.cnt, strict=True))

    def counter(self, name: str) -> int:
        return self.cnt[COUNTER_NAMES.index(name)]

    def count(self, k: int, n: int = 1) -> None:
        """Add ``n`` to counter ``k`` (an index: K_FAULTS, ...)."""
        value = self.cnt[k] + n
        self.cnt[k] = value
        if self.record:
            name = COUNTER_NAMES[k]
            self._changed_counters[name] = value
            self._counters_before.setdefault(name, value - n)

    def diag(self, kind: str, code: str, message: str) -> None:
        """Raise a diagnostic at the current step (violation | warning | livelock | error)."""
        self._diags.append((kind, code, message))
        if kind == "violation":
            self.cnt[K_VIOLATIONS] += 1
        elif kind == "warning":
            self.cnt[K_WARNINGS] += 1

    # ================================================================ pages
    def alloc_page(self, th: Thread, owner: int, *, sleeping: bool) -> int | None:
        """``alloc_page(GFP_KERNEL_ACCOUNT)`` (sleeping) or ``GFP_ATOMIC``; None on failure.

        Injected ``alloc_fail`` applies to every host-page allocation. A sleeping allocation
        while this CPU holds a spinlock is invariant 6's violation.
        """
        under_lock = bool(th.holds)
        if sleeping:
            self.count(K_ALLOCS_SLEEPING)
            if under_lock:
                self.diag(
                    "violation",
                    "INV6_SLEEP_UNDER_LOCK",
                    f"{th.name}: sleeping allocation (GFP_KERNEL) while holding "
                    f"{', '.join(th.holds)} (explorer invariant 6; the kernel's might_sleep() "
                    "says 'BUG: sleeping function called from invalid context')",
                )
        else:
            self.count(K_ALLOCS_ATOMIC)
        if under_lock:
            self.count(K_ALLOCS_UNDER_LOCK)
        if self.take_injection("alloc_fail"):
            self.count(K_ALLOC_FAILED)
            return None
        pfn = self.mem.pick_free()
        if pfn is None:
            self.count(K_ALLOC_FAILED)
            return None
        self.set_owner(pfn, owner)
        return pfn

    def free_page(self, pfn: int) -> None:
        self.set_owner(pfn, O_FREE)

    def take_injection(self, what: str) -> bool:
        """Whether an injected failure of ``what`` is pending (and use it up)."""
        if not self._injecting:  # none pending at all: the usual case, no lookup
            return False
        left = self.injections[what]
        if left:
            self.injections[what] = left - 1
            self._injecting -= 1
            self.note("inject", what, left, left - 1)
            return True
        return False

    def pamt_cache_push(self, vcpu: Vcpu, pfn: int) -> None:
        """``list_add`` of a page owned as ``pamt_cache`` (allocated so) on the vCPU's list."""
        old = len(vcpu.pamt_cache)
        vcpu.pamt_cache.append(pfn)
        if self.record:
            self._effect("pamt_cache", vcpu.id, old, old + 1)

    def pamt_cache_pop(self, vcpu: Vcpu) -> int | None:
        if not vcpu.pamt_cache:
            return None
        old = len(vcpu.pamt_cache)
        pfn = vcpu.pamt_cache.pop()
        self.set_owner(pfn, O_IN_HAND)
        if self.record:
            self._effect("pamt_cache", vcpu.id, old, old - 1)
        return pfn

    def kvm_cache_changed(self, vcpu: Vcpu, cache: KvmCache, old: int) -> None:
        if self.record:
            self._effect("kvm_cache", f"{vcpu.id}/{cache.name}", old, cache.count)

    # ================================================================ running events
    def impossible(self, ev: Event, idx: int, reason: str, expected: str = "") -> ImpossibleEvent:
        return ImpossibleEvent(
            Problem("trace", ev.line, 1, reason, ev.describe(), expected), event_index=idx
        )

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
        step (``explorer.explore`` does not give it one)."""
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
                gen = th.gen = _run_event()(self, th, idx, ev)
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
            else f"a batch ran past {MAX_STEPS_PER_BATCH} steps (the explorer's limit)"
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
        if self.record:
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
                int32s(list(regions)),  # (32-bit: regions, refcounts, references)
                int32s([self.refcount.get(r, 0) for r in regions]),
                int32s([self.orphans.get(r, 0) for r in regions]),
                int32s([self.gotten.get(r, 0) for r in regions]),
            ),
            tds={k: self._td_delta(self.tds[k]) for k in sorted(self._delta_tds) if k in self.tds},
            vcpus={
                k: _freeze_vcpu(self.vcpus[k]) for k in sorted(self._delta_vcpus) if k in self.vcpus
            },
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

    def _td_delta(self, t: Td) -> tuple[SmallTd, ChunkedDelta, ChunkedDelta, dict[Any, Any]]:
        """A TD's part of a delta. Faults map a gfn to the page guest_memfd gave it, so the
        mappings' and guest_memfd's changes are usually equal: then one object serves both."""
        leaves, gmem = t.leaves.delta(), t.gmem.delta()
        if gmem == leaves:
            gmem = leaves
        return _small_td(t), leaves, gmem, _tracked(t.entries).delta()

    def apply_deltas(self, deltas: Sequence[MachineDelta]) -> None:
        """Apply consecutive deltas; what each delta holds in full (the counters) is copied from
        the last one only."""
        for d in deltas[:-1]:
            self.apply_delta(d, last=False)
        if deltas:
            self.apply_delta(deltas[-1])

    def apply_delta(self, d: MachineDelta, *, last: bool = True) -> None:
        """Move a machine restored at the previous checkpoint forward to this one (``last``
        False: another delta follows, which replaces the counters anyway)."""
        self.mem.apply(d.mem_pages, d.mem_scalars)
        self.module.apply(d.module)
        keys, *values = d.regions
        for table, column in zip((self.refcount, self.orphans, self.gotten), values, strict=True):
            for r, value in zip(keys, column, strict=True):
                if value:
                    table[r] = value
                else:
                    table.pop(r, None)
        for k, (small, leaves, gmem, entries) in d.tds.items():
            td = self.tds.get(k)
            if td is None:
                td = self.tds[k] = Td(k)
            state, hkid, vcpus, control, mirror_root, seq = small
            td.state, td.hkid, td.vcpus = state, hkid, list(vcpus)
            td.control, td.mirror_root = list(control), mirror_root
            td.mmu_invalidate_seq = seq
            td.leaves.apply(leaves)
            td.gmem.apply(gmem)
            _tracked(td.entries).apply(entries)
        for k, fv in d.vcpus.items():  # (the vCPUs the delta's batches ran on)
            self.vcpus[k] = _thaw_vcpu(fv)
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
        self.gotten_total = sum(self.gotten.values())

    def image(self) -> MachineImage:
        """A checkpoint; only valid between batches (no CPU in the middle of kernel code).

        Shallow copies of int-keyed dicts of ints and tuples (C-speed), not deep copies: the
        big parts (guest mappings, S-EPT entries, page owners) are exactly those."""
        self._clear_tracking()
        return MachineImage(
            memory=self.mem.image(),
            module=self.module.image(),
            refcount=pack_ints(self.refcount),
            orphans=pack_ints(self.orphans),
            gotten=pack_ints(self.gotten),
            tds={k: _copy_td(t) for k, t in self.tds.items()},
            mappings={
                k: (t.leaves.frozen_table(), t.gmem.frozen_table(like=t.leaves))
                for k, t in self.tds.items()
            },
            vcpus={k: _freeze_vcpu(v) for k, v in self.vcpus.items()},
            counters=self.counters,
            injections=dict(self.injections),
            nr_steps=self.nr_steps,
            next_hkid=self.next_hkid,
            sched_rng=self.sched_rng.state,
            extra=_copy_extra(self.extra),
        )

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

    def restore(self, img: MachineImage) -> None:
        self.mem.restore(img.memory)
        self.module.restore(img.module)
        self.refcount = unpack_ints(img.refcount)
        self.orphans = unpack_ints(img.orphans)
        self.gotten = unpack_ints(img.gotten)
        self.gotten_total = sum(self.gotten.values())
        self.inflight = {}
        self.v5_put_window = {}
        self.tds = {k: _copy_td(t, img.mappings[k]) for k, t in img.tds.items()}
        self.vcpus = {k: _thaw_vcpu(v) for k, v in img.vcpus.items()}
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
        self.q_all = True

    def canonical_state(self) -> tuple[Any, ...]:
        """Everything the machine's future depends on, as one hashable value, equal for equal
        states whatever path led to them (``explorer.explore`` hashes it): page owners and the
        allocator's position, the module's pages and pairs, refcounts, references, locks, TDs
        (S-EPT entries, mappings, guest_memfd), vCPUs (caches) and counters. Not in it: the step
        count and the spin counter (a path that spun longer reaches the same state), the
        scheduler's random state (an exploration chooses every turn), step records. Counts
        derived from the maps (per-region owners, use counts) are left out too."""
        mem = self.mem
        spins = COUNTER_NAMES.index("spins")
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
            tuple(sorted((r, bytes(b)) for r, b in mem.regions.items())),
            tuple(sorted(set(mem._heap))),
            mem._untouched,
            mem._spread_cursor,
            mem._rng.state,
            tuple(sorted((r, bytes(b)) for r, b in self.module.pages.items())),
            tuple(sorted(self.module.pairs.items())),
            tuple(sorted(self.refcount.items())),
            tuple(sorted(self.orphans.items())),
            tuple(sorted(self.gotten.items())),
            tuple(sorted(self.inflight.items())),
            tuple(sorted(self.v5_put_window.items())),
            self.pamt_lock,
            tuple(tds),
            tuple(vcpus),
            tuple(c for i, c in enumerate(self.cnt) if i != spins),
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
            region_owners=self.mem.all_region_counts(),
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
