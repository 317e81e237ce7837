"""All kernel and TDX-module state, and the small API every kernel function changes it through.

:class:`KernelState` holds host memory, the TDX module's PAMT, DPAMT refcounts and
``pamt_lock``, the TDs (their ``mmu_lock``, S-EPT entries, guest mappings) and vCPUs (their
``tdx_pamt_cache`` and KVM MMU caches), and the CPUs (:class:`Thread`). Every state change goes
through its methods (``set_owner``, ``set_refcount``, ``pamt_cache_push``/``pamt_cache_pop``,
``set_lock``, ...), which record ``(kind, key, old, new)`` effects for the current step and mark
the regions touched, so the invariants are checked on exactly those (see
:mod:`explorer.model.machine`, which subclasses this with the scheduler).

The kernel code (:mod:`explorer.model.dpamt`, :mod:`explorer.model.kvm`) is written against this
class, not against the scheduler: that keeps the model's imports one way (machine -> kvm ->
dpamt -> state -> steps), with no import inside a function to hide a circle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import explorer.model.constants as C
from explorer.model.chunked import ChunkedDict
from explorer.model.errors import ImpossibleEvent, Problem
from explorer.model.events import Event
from explorer.model.memory import HostMemory
from explorer.model.prng import XorShift32
from explorer.model.records import (
    OWNERS,
    Diagnostic,
    Effect,
    Step,
)
from explorer.model.settings import Settings
from explorer.model.steps import (
    COUNTER_NAMES,
    K_ALLOC_FAILED,
    K_ALLOCS_ATOMIC,
    K_ALLOCS_SLEEPING,
    K_ALLOCS_UNDER_LOCK,
    K_SPINS,
    K_VIOLATIONS,
    K_WARNINGS,
    O_FREE,
    O_IN_HAND,
    O_KVM_CACHE,
    O_LEAKED,
    O_PAIR,
    O_PAMT_CACHE,
    KGen,
    StepInfo,
)
from explorer.model.tdx_module import TdxModule

#: The lean recording's receiver (``Machine(record="lean")``), called once per committed step
#: with the fields of its :class:`~explorer.model.records.Step` that a bulk reader needs:
#: ``(index, event, cpu, function, label, effects)``, each equal to the full recording's (-1
#: for no event). ``effects`` is handed over, not copied: the receiver may keep it but must not
#: change it.
LeanStep = Callable[[int, int, str, str, str, Sequence[Effect]], None]


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


#: Footprint objects shared by every CPU (see :meth:`KernelState.fp_read`); the others are
#: tuples naming a region's DPAMT state: whether its refcount is zero ``("Rz", r)``, the
#: refcount ``("Rc", r)``, its pair ``("Rp", r)``, v5-hint's put window ``("Rv", r)`` (the
#: references held, the orphans and what gets and puts in flight owe are read only by
#: invariant 2, which needs no object: docs/engine.md); a page ``("page", pfn)`` (its owner and
#: the module's use of it), a TD's ``mmu_lock`` ``("mmu", td)``, an S-EPT entry
#: ``("sept", td, level, index)``, a leaf ``("leaf", td, gfn)``, guest_memfd's page for a gfn
#: ``("gmem", td, gfn)``, a TD's invalidation state ``("inval", td)``, its life-cycle state
#: ``("tdstate", td)`` and a region's pages in TD use ``("used", r)``.
FP_PAMT_LOCK: Final = ("L", "pamt_lock")
FP_ALLOC: Final = ("alloc",)
FP_INJECT: Final = ("inject",)
FP_MEMPOOL: Final = ("mempool",)


class Spin:
    """A CPU spinning on a lock: its next spin step, if the lock's holders stay the same, is the
    same step again. The scheduler repeats it (:meth:`again`) without resuming the spinner's
    generator: a contended lock costs a spin step per turn of every waiter (a third of the steps
    of a contended batch), and each spin step is the lock's spin loop (``explorer.model.dpamt
    ._spin``, which makes these, with the lock's own ``blocker``) one more time."""

    __slots__ = ("blocker", "holder", "info", "td")

    def __init__(
        self,
        blocker: Callable[[KernelState, Td | None], str | None],
        td: Td | None,
        holder: str,
        info: StepInfo,
    ) -> None:
        self.blocker = blocker
        self.td = td
        self.holder = holder
        self.info = info

    def again(self, m: KernelState) -> StepInfo | None:
        """The spin step once more (counted), or None when the holders changed: the spinner
        then runs its own code (it takes the lock, or spins on someone else)."""
        if self.blocker(m, self.td) != self.holder:
            return None
        m.count(K_SPINS)
        return self.info


def vcpu_thread(vcpu: int) -> str:
    """The name of the simulated CPU that runs vCPU ``vcpu``'s work (each vCPU on its own)."""
    return f"vcpu{vcpu}"


@dataclass(slots=True, eq=False)
class Thread:
    """A simulated CPU running one event's kernel code at a time.

    Compared by identity (``eq=False``): a CPU is itself, not the value of its fields, and the
    generated field-by-field ``__eq__`` (a Python function even in the compiled engine) ran
    for every CPU ahead of a finished one in the scheduler's ``live.index(th)``: 64,190 calls
    in a 100,000-fault replay of ``bursty`` (about 2 % of it, within this VM's noise)."""

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
    #: what this CPU's ``tdx_pamt_get``/``tdx_pamt_put`` in flight owes its region's
    #: invariant 2: the changes it made to the refcount and the orphans so far, plus 1 for a
    #: put (whose caller already dropped its reference): :meth:`KernelState.pamt_enter`.
    #: A function of the frames (their positions and locals), so not part of a state's key.
    owe: int = 0

    @property
    def done(self) -> bool:
        return self.gen is None and not self.queue


class KernelState:
    """All kernel and TDX-module state, and the effects API the kernel code changes it through."""

    def __init__(
        self,
        settings: Settings,
        *,
        record: bool | str = True,
        check: bool = True,
        full_check: bool = False,
    ) -> None:
        if isinstance(record, str) and record != "lean":
            raise ValueError(f"record={record!r}: expected True, False or 'lean'")
        self.settings = settings
        self.mode = settings.mode
        # settings the kernel code reads on every fault, as plain attributes
        self.ept_levels = settings.ept_levels
        self.gfn_limit: int = C.GFN_LIMIT[settings.ept_levels]
        self.max_retries = settings.max_retries
        self.gets_per_fault = settings.dpamt_gets_per_fault
        #: how the DPAMT top-up is named in its narration (v6: 2 x dpamt_gets_per_fault pages)
        self.pamt_topup_what = f"tdx_topup_pamt_cache (2 x {settings.dpamt_gets_per_fault})"
        #: steps are recorded: their effects noted (``True`` or ``"lean"``)
        self.record = bool(record)
        #: the lean recording (``record="lean"``): each step's index, event, CPU, function,
        #: label and effects handed to :attr:`on_lean_step`, no :class:`Step` built, no
        #: narration formatted, no counters noted, nothing kept in :attr:`steps`. For a caller
        #: that reads only those fields of every step of a long replay (``conform``: a million
        #: kernel records), where building each step's record cost more than running it.
        self.lean = record == "lean"
        self.check = check
        self.full_check = full_check
        self.mem = HostMemory(settings.total_pages, settings.allocator, settings.seed)
        self.module = TdxModule()
        # arch/x86 DPAMT state
        self.refcount: dict[int, int] = {}
        self.orphans: dict[int, int] = {}
        self.pamt_lock: str | None = None
        # engine bookkeeping (not kernel state): references held by callers, per region,
        # regions with a get/put in flight, and what those owe invariant 2 (:meth:`pamt_enter`)
        self.gotten: dict[int, int] = {}
        self.owed: dict[int, int] = {}
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
        self.on_step: Callable[[KernelState, Step], None] | None = None
        #: the lean recording's receiver, called as each step is committed (:data:`LeanStep`)
        self.on_lean_step: LeanStep | None = None
        #: a step at which to stop (StepReached), mid-batch: a seek's target (-1: none)
        self.stop_at = -1
        self._fx: list[Effect] = []
        self._dirty: set[int] = set()
        #: regions changed in steps taken while ``pamt_lock`` was held: invariant 1 holds only
        #: with the lock free, so they are checked again at the step that frees it (a region a
        #: put left at refcount 1 without a pair under the lock is a violation at the unlock,
        #: not at whichever later step touches the region)
        self._held_dirty: set[int] = set()
        #: regions whose pair was added or removed in this step (invariant 4 checks them)
        self.pair_dirty: set[int] = set()
        self._ckpt_regions: set[int] = set()  # refcount/orphans/gotten keys since a checkpoint
        #: the TDs and vCPUs batches ran on since the last checkpoint: a delta holds those only
        #: (a delta of every TD and vCPU cost O(TDs + vCPUs) each time, and as much memory)
        self._delta_tds: set[int] = set()
        self._delta_vcpus: set[int] = set()
        #: each vCPU's and TD's frozen state at the last checkpoint that froze it (a delta, or
        #: an image: all of them): a delta leaves out a vCPU whose frozen state equals it and
        #: shares the TD's small tuple when equal (explorer.model.machine.Machine.delta).
        #: Emptied wherever the machine's state is set from outside (restore, apply_delta).
        self._frozen_vcpus: dict[int, tuple[Any, ...]] = {}
        #: the same states as plain tuples (``machine._vcpu_view``): compared without encoding
        #: a vCPU, and the page lists a delta's patch is taken against
        self._frozen_views: dict[int, tuple[Any, ...]] = {}
        self._small_tds: dict[int, tuple[Any, ...]] = {}
        #: (the image last ``Machine.reset`` to, its vCPUs thawed): a reset to the SAME image
        #: object copies these instead of decoding the frozen vCPUs' varints again (the
        #: search resets to one group start thousands of times). Held with the image itself,
        #: so its identity cannot be taken by another image; the copies are what the machine
        #: changes, these never.
        self._thawed: tuple[Any, dict[int, Vcpu]] | None = None
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
        #: the footprint recorder of the partial-order reduction
        #: (``explorer.interleavings.search``): while ``fp_on``, every access to shared state
        #: is noted as an object read (``fp_r``), written (``fp_w``) or changed by a commutative
        #: update (``fp_a``: an addition, a free to the allocator); the search empties the sets
        #: before a turn and reads them after it. Off (replays, bulk runs), a hook costs one
        #: attribute test.
        self.fp_on = False
        self.fp_r: set[Any] = set()
        self.fp_w: set[Any] = set()
        self.fp_a: set[Any] = set()
        #: the lock operations of the step, (operation, lock word) with the operation "test"
        #: (a spinner's look at the holder), "acq", "rel", or "check" (the invariant checks'
        #: look at whether it is free): the lock word is in ``fp_r``/``fp_w`` as well, and the
        #: search's lock-aware relation replaces those accesses by these (LAPOR:
        #: ``explorer.interleavings.search._lock_aware``)
        self.fp_l: set[tuple[str, Any]] = set()
        #: the regions the invariant checks after this step look at (``_dirty``): what those
        #: checks read depends on the regions' state after the step, so the search adds it
        #: then (``explorer.interleavings.search._check_reads``)
        self.fp_checked: set[int] = set()

    # ================================================================ footprints
    def fp_read(self, obj: Any) -> None:
        """The current step reads ``obj`` (call only under ``if m.fp_on``)."""
        self.fp_r.add(obj)

    def fp_write(self, obj: Any) -> None:
        """The current step writes ``obj`` (call only under ``if m.fp_on``)."""
        self.fp_w.add(obj)

    def fp_add(self, obj: Any) -> None:
        """The current step changes ``obj`` by an update that commutes with every other update
        of the same kind (counts kept per owner, references held, frees): two such updates in
        either order leave the same state; a read of ``obj`` still conflicts with them."""
        self.fp_a.add(obj)

    def _fp_checked(self, region: int) -> None:
        """``check_regions`` runs on ``region`` after this step. Invariant 1 reads whether the
        refcount is zero, the pair, v5-hint's put window and (depending on the state after the
        step) whether ``pamt_lock`` is free; invariant 3 the region's pages in TD use when it
        has no pair. Invariant 2 (the refcount against the references held, the orphans and
        what the gets and puts in flight owe) reads nothing a footprint needs: every change
        of its terms is an addition (:meth:`pamt_enter`), so a step here records only that the
        region changed (``fp_checked``)."""
        self.fp_r.add(("Rz", region))
        self.fp_r.add(("Rp", region))
        if self.mode == "v5-hint":
            self.fp_r.add(("Rv", region))
        self.fp_checked.add(region)

    def _fp_pair_check(self, pair: Any) -> None:
        """Invariant 4 on the pair's two pages (their owners and the module's use of them).

        ``check_global`` runs after the step too, and reads nothing a footprint needs: what it
        compares (the pages owned as pair and leaked pages against twice the pairs and the
        leaked pairs; the sum of all owners against the host's pages) are sums that every
        turn changes by an amount of its own, whatever the order, and it runs after every turn
        that changes them, so two turns that are otherwise independent leave the same
        findings in either order (docs/engine.md, "Every interleaving", point 7)."""
        if isinstance(pair, tuple):
            for p in pair:
                self.fp_r.add(("page", p))

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
        self._owner_changed(pfn, self.mem.set_owner(pfn, code), code)

    def _owner_changed(self, pfn: int, old: int, code: int) -> None:
        """What the machine notes when ``pfn``'s owner went from ``old`` to ``code``
        (:meth:`set_owner`; :meth:`alloc_pages`, whose pages the memory gave at once)."""
        if self.fp_on:
            self._fp_owner(pfn, old, code)
        self.batch_regions.add(pfn >> C.PAGES_PER_REGION_SHIFT)
        if old in (O_PAIR, O_LEAKED) or code in (O_PAIR, O_LEAKED):
            self._pairs_changed = True
        elif old in (O_PAMT_CACHE, O_KVM_CACHE) or code in (O_PAMT_CACHE, O_KVM_CACHE):
            self.caches_moved = True
        if self.record and old != code:
            self._effect("page", pfn, OWNERS[old], OWNERS[code])

    def _fp_owner(self, pfn: int, old: int, code: int) -> None:
        """A page changed owner: the page, the per-owner counts (an addition), and the
        allocator's free set when the page left it (a write: the next allocation takes
        another page) or joined it (a free: frees commute with each other)."""
        if old == code:
            return
        self.fp_w.add(("page", pfn))
        self.fp_a.add(("counts", old))
        self.fp_a.add(("counts", code))
        if (code == O_FREE or old == O_FREE) and not self.mem.is_pinned(pfn):
            # a page joins or leaves the free set: frees and takings of named pages commute
            # with each other; a pick (alloc_page: "the lowest free page") reads the set and
            # writes it. A page the trace names (``pfn``) is pinned: the allocator never
            # picks it, so whether it is free is nothing a pick reads (its page object
            # orders the turns that take and free it)
            cpu = self.mem.block_cpu(pfn) if self.mem.per_cpu else None
            self.fp_a.add(FP_ALLOC if cpu is None else ("alloc", cpu))
        if old in (O_PAIR, O_LEAKED) or code in (O_PAIR, O_LEAKED):
            self._fp_pair_check(None)

    def pamt_enter(self, th: Thread, region: int, put: bool) -> int:
        """``th`` enters ``tdx_pamt_get``/``tdx_pamt_put`` on ``region``; returns what an outer
        get or put of ``th`` owed (restored by :meth:`pamt_leave`).

        Invariant 2 is exact at every step: refcount = references held + orphans + what the
        gets and puts in flight owe. A get's increment is counted as its caller's reference
        only when the get returns (``mark_gotten`` in the same turn as the return); a put's
        caller drops its reference in the turn that calls it, before the put decrements. So
        each get or put in flight owes the changes it made to the refcount and the orphans,
        plus one for a put, and gives them back when it returns. Every change of the four
        counts is then an addition that leaves the identity as it was (docs/engine.md, "Every
        interleaving", point 6): the check orders no turns in a search, where checking only at
        quiescent regions made every entry of a get or put dependent on every exit."""
        self.inflight[region] = self.inflight.get(region, 0) + 1
        outer = th.owe
        th.owe = 0
        if put:
            self._owe(th, region, 1)
        return outer

    def pamt_leave(self, th: Thread, region: int, outer: int) -> None:
        """``th``'s get or put on ``region`` returns: what it owed moves to its caller's
        references (a get's ``mark_gotten(+1)``) or is settled (a put), in this turn."""
        left = self.inflight[region] - 1
        if left:
            self.inflight[region] = left
        else:
            del self.inflight[region]
        if th.owe:
            self._owe(th, region, -th.owe)
        th.owe = outer

    def _owe(self, th: Thread, region: int, delta: int) -> None:
        n = self.owed.get(region, 0) + delta
        if n:
            self.owed[region] = n
        else:
            self.owed.pop(region, None)
        th.owe += delta
        self._dirty.add(region)  # (every change of invariant 2's terms is checked)
        if self.fp_on:  # (read by invariant 2 only, which needs no footprint: see above)
            self._fp_checked(region)

    def recheck(self, region: int) -> None:
        """Check ``region``'s invariants after this step: its state changed in a way the
        setters below do not record (v5-hint's put window closing, which ends invariant 1's
        allowance of 0 with a pair)."""
        self._dirty.add(region)
        if self.fp_on:
            self._fp_checked(region)

    def set_refcount(self, region: int, new: int, th: Thread) -> None:
        """``th``'s get or put in flight on ``region`` sets its refcount (and owes the change:
        :meth:`pamt_enter`)."""
        if self.fp_on:
            if new and self.refcount.get(region, 0):
                # an increment or decrement that keeps the count above zero (the get's
                # atomic_inc_not_zero, a lost race, a put that is not the last): additions
                # commute; what the kernel reads of the count is whether it is zero or > 1
                self.fp_a.add(("Rc", region))
            else:  # to or from zero (PAMT.ADD's 1, the last put's 0): both objects
                self.fp_w.add(("Rc", region))
                self.fp_w.add(("Rz", region))
            self._fp_checked(region)
        old = self.refcount.get(region, 0)
        if new:
            self.refcount[region] = new
        else:
            self.refcount.pop(region, None)
        if new != old:
            self._owe(th, region, new - old)
        self._dirty.add(region)
        self._ckpt_regions.add(region)
        if self.record:
            self._effect("refcount", region, old, new)

    def add_orphan(self, region: int, th: Thread) -> None:
        """``th``'s failed PAMT.REMOVE leaves an orphan reference on ``region`` (the owed
        count gives it back: :meth:`pamt_enter`)."""
        if self.fp_on:
            self._fp_checked(region)
        old = self.orphans.get(region, 0)
        self.orphans[region] = old + 1
        self._owe(th, region, -1)
        self._dirty.add(region)
        self._ckpt_regions.add(region)
        if self.record:
            self._effect("orphan", region, old, old + 1)

    def mark_gotten(self, pfn: int, delta: int) -> None:
        """The caller now holds (+1) or dropped (-1) a DPAMT reference on pfn's region."""
        region = pfn >> C.PAGES_PER_REGION_SHIFT
        if self.fp_on:  # (read by invariant 2 only: see _fp_checked)
            self._fp_checked(region)
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
        if self.fp_on:
            self.fp_w.add(("Rp", region))
            self._fp_checked(region)
            self._fp_pair_check(old)
            self._fp_pair_check(new)
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
        if self.record and not self.lean:  # (a lean step has no counters)
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
        mem = self.mem
        pfn = mem.pick_free(th.name)
        if self.fp_on:
            shared = mem.picked_shared
            self._fp_picks(
                th.name, shared, shared and (pfn is None or mem.block_cpu(pfn) != th.name)
            )
        if pfn is None:
            self.count(K_ALLOC_FAILED)
            return None
        self.set_owner(pfn, owner)
        return pfn

    def _fp_picks(self, cpu: str, shared: bool, foreign: bool) -> None:
        """The footprint of ``cpu``'s picks from the allocator (:meth:`alloc_page`, or a run
        of them, :meth:`alloc_pages`): "the lowest free page", so allocations in either order
        differ. Under ``percpu`` a pick from the CPU's own blocks reads and writes that CPU's
        free set only; a claim of a block (``shared``) writes the shared claim table, and a
        full host's fallback (``foreign``: a page of another CPU's block, or none at all)
        reads every CPU's free set, so it is ordered against everything."""
        if not self.mem.per_cpu:
            self.fp_w.add(FP_ALLOC)
            return
        self.fp_w.add(("alloc", cpu))
        if shared:
            self.fp_w.add(FP_ALLOC)
            if foreign:
                self.fp_w.add("*")

    def alloc_pages(self, th: Thread, owner: int, n: int) -> list[int]:
        """``n`` sleeping allocations in a row (a cache top-up's loop), stopping at the first
        that fails: the same pages, counters, footprint and effects as :meth:`alloc_page`
        called until it gives None or ``n`` pages, in one call to the memory
        (:meth:`HostMemory.take_free`). Under a lock or with an injected failure pending,
        one :meth:`alloc_page` per page (each may fire a diagnostic or use the injection)."""
        if th.holds or self._injecting:
            out: list[int] = []
            while len(out) < n:
                pfn = self.alloc_page(th, owner, sleeping=True)
                if pfn is None:
                    break
                out.append(pfn)
            return out
        if n <= 0:
            return []
        mem = self.mem
        got, shared = mem.take_free(th.name, n, owner)
        tries = len(got) + (len(got) < n)
        self.count(K_ALLOCS_SLEEPING, tries)
        if len(got) < n:
            self.count(K_ALLOC_FAILED)
        if self.fp_on:
            self.fp_r.add(FP_INJECT)  # (each try's look for an injected failure)
            foreign = shared and (len(got) < n or any(mem.block_cpu(p) != th.name for p in got))
            self._fp_picks(th.name, shared, foreign)
        if self.fp_on or self.record:
            for pfn in got:
                self._owner_changed(pfn, O_FREE, owner)
        elif got:  # (a re-execution's fill: _owner_changed's notes for the run at once)
            lo, hi = got[0], got[-1]
            if hi - lo == len(got) - 1 and got == list(range(lo, hi + 1)):  # (one run)
                shift = C.PAGES_PER_REGION_SHIFT
                self.batch_regions.update(range(lo >> shift, (hi >> shift) + 1))
            else:
                self.batch_regions.update({pfn >> C.PAGES_PER_REGION_SHIFT for pfn in got})
            if owner in (O_PAIR, O_LEAKED):
                self._pairs_changed = True
            elif owner in (O_PAMT_CACHE, O_KVM_CACHE):
                self.caches_moved = True
        return got

    def stock_cpu(self, cpu: str) -> None:
        """``percpu``: stock ``cpu``'s page list with its first block
        (:meth:`HostMemory.stock_cpu`): a claim writes the shared claim table, so it is ordered
        against other claims."""
        if self.mem.stock_cpu(cpu) and self.fp_on:
            self.fp_w.add(FP_ALLOC)

    def free_page(self, pfn: int) -> None:
        self.set_owner(pfn, O_FREE)

    def take_injection(self, what: str) -> bool:
        """Whether an injected failure of ``what`` is pending (and use it up)."""
        if self.fp_on:
            self.fp_r.add(FP_INJECT)
        if not self._injecting:  # none pending at all: the usual case, no lookup
            return False
        left = self.injections[what]
        if left:
            self.injections[what] = left - 1
            self._injecting -= 1
            if self.fp_on:
                self.fp_w.add(FP_INJECT)
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
