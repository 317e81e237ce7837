"""The batch fast path: uncontended faults run without generators, with the same result.

Why it exists: a warm fault is nine kernel steps, and running each as a generator resume with
its bookkeeping costs about 7 us, 70 us per fault: a million-fault boot trace took 70 s to
replay (issue 4 asks for 10 s). But more than nine batches in ten of such a trace are faults of
distinct gfns on distinct vCPUs that take no lock but ``mmu_lock`` for read and find every DPAMT
refcount above zero: nothing in them depends on how their steps interleave, except which page
the allocator hands to whom, and that is fixed by the schedule. This module computes such a
batch's outcome directly and applies it through the machine's effects API.

Exactness, by construction and by test:

- It applies only where the outcome is order-independent, checked before anything changes
  (:meth:`_Planner.add`, :meth:`_Planner.fit`): every event a 4 KiB ``fault`` with no explicit
  pfn, on a live vCPU of a created or finalized TD whose ``mmu_lock`` no writer holds; distinct
  gfns, none mapped; every ``tdx_pamt_get`` on a region whose refcount is already above zero
  (``atomic_inc_not_zero`` succeeds: ``pamt_lock`` is never taken) and that has a pair; KVM's
  page caches at ``min`` (a top-up that allocates goes through the generators) and not empty
  where a table is linked; every table linked by one CPU only; no injected failure pending, no
  violation so far; every page the batch allocates from a touched region (the lowest-pfn
  allocator's holes, then the region it is filling: :meth:`HostMemory.peek_lowest`).
- The steps each event takes are the generators' steps: the step counts in
  :meth:`_Planner.add` follow :func:`explorer.model.kvm.tdx_handle_ept_violation` and what it
  calls, one by one. Under ``sequential`` CPUs run one after another; under ``round-robin`` the
  k-th step of every CPU runs in CPU order before any (k+1)-th: that fixes each event's first
  step and the order of the allocations.
- ``tests/test_fastpath.py`` replays traces both ways and compares the machines (pages, owners,
  refcounts, pairs, mappings, caches, counters, checkpoints), the steps and the batch labels.

Where a precondition fails nothing has changed and the batch runs on the generators, as before.
Steps are never recorded here: a recording machine (a reviewer stepping through a batch) always
runs the generators, so every step shown is a step that ran.

A *run* of consecutive qualifying batches is planned and applied at once
(:func:`run_fast_batches`): the per-CPU set-up, the page allocations and the dict updates are
paid once per run instead of once per batch, and each batch still gets its own outcome (its
steps, labels, regions, allocations) for the timeline. The batches of a run are planned in
order, each against the state the earlier ones leave; a run ends before the first batch that
does not qualify.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from explorer.model import constants as C
from explorer.model.chunked import CHUNK_SHIFT
from explorer.model.events import Event, Fault

if TYPE_CHECKING:
    from explorer.model.machine import Machine, Td, Vcpu

#: Modes whose uncontended fault is the v6 fault: the same get fast path; they differ only in
#: the DPAMT top-up before ``mmu_lock`` (``topup_external_cache``).
FAST_MODES = frozenset(
    {"v6", "v5-hint", "kvm-style-cache", "mempool", "atomic-under-lock", "sleeping-under-lock"}
)
_NO_TOPUP_MODES = frozenset({"mempool", "atomic-under-lock", "sleeping-under-lock"})
_LIVE_TD = ("created", "finalized")
_SHIFT = C.PAGES_PER_REGION_SHIFT
_MASK = C.PAGES_PER_REGION - 1
_BASE_LABELS = frozenset(
    {
        "fault.begin",
        "mmu_lock.read",
        "leaf.freeze",
        "pamt_get.fast",
        "mmu_lock.read_unlock",
        "fault.done",
    }
)
_LINK_LABELS = frozenset({"tdp.alloc_sp", "tdp.freeze", "pamt_get.fast", "sept.add"})
_NO_LINKS: list[Link] = []  # shared by the faults that link nothing (never appended to)
#: allocation kinds
_PAMT, _GUEST = 0, 1

#: a link: (S-EPT entry key, shadow page, S-EPT page)
Link = tuple[tuple[int, int], int, int]
#: an allocation: (thread-local step, thread, sequence, kind, vCPU or TD, pages or gfn)
Alloc = tuple[int, int, int, int, Any, int]


@dataclass(slots=True)
class BatchOutcome:
    """What one batch of a run did, for the timeline's per-batch arrays."""

    steps: int
    labels: frozenset[str]
    regions: list[int]  # regions it touched, ascending
    allocated: int  # host pages it allocated
    topups: dict[int, int]  # vCPU -> pages added to its DPAMT cache
    starts: Sequence[int]  # the step each of its events starts at, in the order they were given


class _Batch:
    """The plan of one batch: its threads' steps, events, allocations and faults."""

    __slots__ = ("allocs", "caches", "faults", "labels", "lengths", "links", "starts")

    def __init__(self) -> None:
        self.starts: list[tuple[int, int, int]] = []  # (event index, thread, local first step)
        self.lengths: list[int] = []  # per thread, its steps
        self.allocs: list[Alloc] = []  # in the order the schedule runs them
        self.faults: list[tuple[Td, int, int | None, list[Link]]] = []  # (TD, gfn, bound, links)
        self.caches: list[tuple[Vcpu, int, int, int]] = []  # (vCPU, links, pte_n, phd_n after)
        self.labels: set[str] = set(_BASE_LABELS)
        self.links = 0


class _Shadow:
    """A vCPU as the planned batches leave it: its caches' counts (nothing changes until the
    run is applied), what its faults look up, and its place in the batch being planned."""

    __slots__ = (
        "batch",
        "entries",
        "ext",
        "ext_min",
        "ext_n",
        "filled",
        "frozen",
        "gmem_chunk",
        "gmem_chunks",
        "have",
        "k",
        "leaf_chunk",
        "leaf_chunks",
        "links",
        "phd",
        "phd_min",
        "phd_n",
        "pte",
        "pte_min",
        "pte_n",
        "seen",
        "seq",
        "shp",
        "shp_min",
        "shp_n",
        "step",
        "td",
        "tid",
        "vcpu",
    )

    def __init__(self, vcpu: Vcpu, td: Td) -> None:
        caches = vcpu.caches
        self.vcpu, self.td, self.tid = vcpu, td, td.id
        self.pte, self.ext = caches["pte_list_desc"], caches["external_spt"]
        self.shp, self.phd = caches["shadow_page"], caches["page_header"]
        self.pte_n, self.phd_n = self.pte.nobjs, self.phd.nobjs
        self.ext_n, self.shp_n = len(self.ext.pfns), len(self.shp.pfns)
        self.pte_min, self.phd_min = self.pte.min, self.phd.min
        self.ext_min, self.shp_min = self.ext.min, self.shp.min
        self.have = len(vcpu.pamt_cache)
        self.entries, self.frozen = td.entries, td.leaf_frozen
        self.leaf_chunk, self.gmem_chunk = td.leaves.chunk, td.gmem.chunk
        # the chunk tables, read directly (a frozen chunk is a tuple: thawed through chunk())
        self.leaf_chunks: dict[int, Any] = td.leaves._chunks
        self.gmem_chunks: dict[int, Any] = td.gmem._chunks
        # per batch: the batch it last ran in, its thread order, steps, allocations, links
        self.batch, self.k, self.step, self.seq, self.links, self.filled = -1, 0, 0, 0, 0, False
        self.seen: set[int] = set()  # the run's gfns of this TD (shared by its vCPUs)


def run_fast_batches(
    m: Machine, batches: Iterable[Iterable[tuple[int, Event]]], *, note_starts: bool = True
) -> list[BatchOutcome]:
    """Run the longest prefix of ``batches`` (each an iterable of ``(index, event)``) that
    qualifies, as one run; returns the outcome of each batch run (empty: nothing changed).
    ``note_starts``: also record each event's first step in ``m.event_first_step`` (the
    timeline takes them from the outcomes instead)."""
    if not _machine_qualifies(m):
        return []
    planner = _Planner(m)
    for items in batches:
        if not planner.add(items):
            break
    n = planner.fit()
    if not n:
        return []
    outcomes = planner.apply(n)
    if note_starts:
        first = m.event_first_step
        for batch, o in zip(planner.batches, outcomes, strict=True):
            for (idx, _k, _j), st in zip(batch.starts, o.starts, strict=True):
                first.setdefault(idx, st)
    return outcomes


def _machine_qualifies(m: Machine) -> bool:
    s = m.settings
    return (
        m.mode in FAST_MODES
        and s.allocator == "lowest"
        and s.schedule != "random"
        and m.stopped is None
        and not m.full_check
        and m.pamt_lock is None
        and not m.inflight
        and not m.counters["violations"]
        and not any(m.injections.values())
        and not m._diags
    )


class _Planner:
    """Plans batches one after another against the state the earlier ones leave."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        settings = m.settings
        levels = settings.ept_levels
        self.limit = C.GFN_LIMIT[levels]
        self.walk = [(lv, 9 * lv) for lv in range(levels - 1, 0, -1)]
        # the DPAMT top-up before mmu_lock: top up below `low`, to `target`; a step when full?
        n = settings.dpamt_gets_per_fault
        if m.mode in _NO_TOPUP_MODES:
            self.low, self.target, self.full_step = -1, 0, 0
        elif m.mode == "kvm-style-cache":  # nothing at >= 2n, else fill to KVM's capacity
            self.low, self.target, self.full_step = 2 * n, C.KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE, 0
        else:  # v6, v5-hint: tdx_topup_pamt_cache(cache, n) fills to exactly 2n, a step always
            self.low, self.target, self.full_step = 2 * n, 2 * n, 1
        self.round_robin = settings.schedule == "round-robin"
        from explorer.model.machine import MAX_STEPS_PER_BATCH  # (machine imports this module)

        self.max_steps = MAX_STEPS_PER_BATCH
        self.shadows: dict[int, _Shadow] = {}
        self.seen: dict[int, set[int]] = {}  # TD -> gfns faulted in the run
        self.linked: dict[tuple[int, int, int], tuple[int, int]] = {}  # key -> (batch, thread)
        self.batches: list[_Batch] = []
        self.pfns: list[int] = []

    # ------------------------------------------------------------------ planning
    def add(self, items: Iterable[tuple[int, Event]]) -> bool:
        """Plan one more batch; False (the run ends before it) if it does not qualify.

        Events are planned in file order; each vCPU is one thread (in order of first
        appearance) whose steps continue from its previous event in the batch. Nothing here
        depends on the order of threads but the allocations, which are sorted afterwards."""
        m = self.m
        refcount, pairs, kind = m.refcount, m.module.pairs, m.module.kind
        limit, walk, low, target, full_step = (
            self.limit,
            self.walk,
            self.low,
            self.target,
            self.full_step,
        )
        shadows, seen, linked = self.shadows, self.seen, self.linked
        bno = len(self.batches)
        batch = _Batch()
        labels, starts, allocs, faults = batch.labels, batch.starts, batch.allocs, batch.faults
        threads: list[_Shadow] = []
        topups = 0  # events that top up their DPAMT cache
        full_steps = 0  # events whose top-up found the cache full
        # a failed batch ends the run: keys it marked seen or linked are never looked at again
        for idx, ev in items:
            if type(ev) is not Fault or ev.pfn is not None or ev.level != "4k":
                return False
            vid = ev.vcpu
            sh = shadows.get(vid)
            if sh is None:
                vcpu = m.vcpus.get(vid)
                if vcpu is None or not vcpu.alive:
                    return False
                td = m.tds.get(vcpu.td)
                if td is None or td.state not in _LIVE_TD or td.mmu_writer is not None:
                    return False
                sh = shadows[vid] = _Shadow(vcpu, td)
                sh.seen = seen.setdefault(td.id, set())
            if sh.batch != bno:  # the vCPU's first event in this batch: a new thread
                sh.batch, sh.k, sh.step, sh.seq, sh.links, sh.filled = (
                    bno,
                    len(threads),
                    0,
                    0,
                    0,
                    False,
                )
                threads.append(sh)
            k = sh.k
            td, tid = sh.td, sh.tid
            gfn = ev.gfn
            lc = sh.leaf_chunks.get(gfn >> 9)
            if lc.__class__ is tuple:  # frozen (a restored machine): thaw it
                lc = sh.leaf_chunk(gfn)
            if gfn >= limit or (lc is not None and gfn in lc) or gfn in sh.frozen or gfn in sh.seen:
                return False
            sh.seen.add(gfn)
            gc = sh.gmem_chunks.get(gfn >> 9)
            if gc.__class__ is tuple:
                gc = sh.gmem_chunk(gfn)
            bound = None if gc is None else gc.get(gfn)
            if bound is not None:  # backed earlier (explicit pfn): its get must be fast too
                r = bound >> _SHIFT
                if not refcount.get(r) or r not in pairs or kind(bound):
                    return False
            ext_n, shp_n = sh.ext_n, sh.shp_n
            if ext_n < sh.ext_min or shp_n < sh.shp_min:
                return False  # the page caches' top-up allocates: the generators do it
            step = sh.step
            starts.append((idx, k, step))
            step += 1  # fault.begin
            if sh.pte_n < sh.pte_min:  # kvm_mmu_topup_memory_cache(pte_list_desc): objects
                sh.pte_n = sh.pte.capacity
                step += 1
                sh.filled = True
            if sh.have < low and sh.have < target:
                topups += 1
                allocs.append((step, k, sh.seq, _PAMT, vid, target - sh.have))
                sh.seq += 1
                sh.have = target
                step += 1
                labels.add("pamt_cache.topup")
            elif full_step or sh.have < low:
                # (the KVM-style cache below 2n but at its capacity of 40 already: filling to
                # 40 adds nothing, and fill_pamt_cache reports it full)
                step += 1
                full_steps += 1
            phd_n = sh.phd_n
            if phd_n < sh.phd_min:
                phd_n = sh.phd.capacity
                step += 1
                sh.filled = True
            if bound is None:
                allocs.append((step, k, sh.seq, _GUEST, len(faults), 0))
                sh.seq += 1
                step += 1
            step += 1  # mmu_lock.read
            links: list[Link] = _NO_LINKS
            entries = sh.entries
            l1 = entries.get((1, gfn >> 9))
            if l1 is None or l1[0] != "present":
                links = []
                # (a present level-1 entry implies present entries above it: tables are linked
                # top-down and a present entry goes only with its TD)
                for lv, shift in walk:
                    key = (lv, gfn >> shift)
                    entry = entries.get(key)
                    if entry is not None:
                        if entry[0] != "present":
                            return False  # frozen by a CPU mid-link: RET_PF_RETRY
                        continue
                    owner = linked.get((tid, *key))
                    if owner is not None:
                        if owner[0] == bno and owner[1] != k:
                            return False  # two CPUs race for one table: the generators decide
                        continue  # linked earlier in the run, or by this CPU
                    linked[(tid, *key)] = (bno, k)
                    # tdp_mmu_alloc_sp: a page_header object, a shadow page, an S-EPT page
                    if phd_n == 0 or shp_n == 0 or ext_n == 0:
                        return False  # an empty cache WARNs and allocates GFP_ATOMIC
                    phd_n -= 1
                    shp_n -= 1
                    ext_n -= 1
                    spt = sh.ext.pfns[ext_n]
                    r = spt >> _SHIFT
                    if not refcount.get(r) or r not in pairs or kind(spt):
                        return False
                    links.append((key, sh.shp.pfns[shp_n], spt))
                    step += 4  # tdp.alloc_sp, tdp.freeze, pamt_get.fast, sept.add
                sh.links += len(links)
                sh.ext_n, sh.shp_n = ext_n, shp_n
            sh.phd_n = phd_n
            sh.step = step + 5  # leaf.freeze, pamt_get.fast, page.aug|add, unlock, fault.done
            faults.append((td, gfn, bound, links))
        if not threads:
            return False
        aug = False
        for sh in threads:
            batch.lengths.append(sh.step)
            if sh.td.state == "finalized":
                aug = True
            else:
                labels.add("page.add")
            if sh.links or sh.filled:
                batch.caches.append((sh.vcpu, sh.links, sh.pte_n, sh.phd_n))
                batch.links += sh.links
            if sh.filled:
                labels.add("kvm_topup.fill")
        if aug:
            labels.add("page.aug")
        if full_steps:
            labels.add("pamt_cache.full")
        if batch.links:
            labels.update(_LINK_LABELS)
        if allocs:
            if len(allocs) > topups:  # the others are guest pages
                labels.add("faultin.alloc")
            if self.round_robin:  # step j of every CPU before step j + 1
                allocs.sort()  # by (step, thread, sequence): unique, later fields never compared
            else:  # sequential, or one CPU: CPU after CPU
                allocs.sort(key=lambda a: (a[1], a[2]))
        if sum(batch.lengths) > self.max_steps:
            return False
        self.batches.append(batch)
        return True

    def fit(self) -> int:
        """How many of the planned batches get pages that keep their gets on the fast path:
        their allocations must come from touched regions, every guest page on a region with a
        refcount above zero and a pair, no page used by the module. Drops the others."""
        m = self.m
        need = sum(a[5] if a[3] == _PAMT else 1 for b in self.batches for a in b.allocs)
        pfns = m.mem.peek_lowest(need) if need else []
        refcount, pairs, pages = m.refcount, m.module.pairs, m.module.pages
        if len(pfns) == need:  # the usual case: every page fits, one or two regions to check
            regions = {p >> _SHIFT for p in pfns}
            if all(refcount.get(r) and r in pairs for r in regions) and not any(
                (kinds := pages.get(p >> _SHIFT)) is not None and kinds[p & _MASK] for p in pfns
            ):
                self.pfns = pfns
                return len(self.batches)
        i = 0
        for n, batch in enumerate(self.batches):
            at_start = i
            for a in batch.allocs:
                count = a[5] if a[3] == _PAMT else 1
                ok = i + count <= len(pfns)
                if ok:
                    for p in pfns[i : i + count]:
                        kinds = pages.get(p >> _SHIFT)
                        if kinds is not None and kinds[p & _MASK]:
                            ok = False
                if ok and a[3] == _GUEST:
                    region = pfns[i] >> _SHIFT
                    ok = bool(refcount.get(region)) and region in pairs
                if not ok:
                    del self.batches[n:]
                    self.pfns = pfns[:at_start]
                    return n
                i += count
        self.pfns = pfns[:i]
        return len(self.batches)

    # ------------------------------------------------------------------ applying
    def apply(self, n: int) -> list[BatchOutcome]:
        """Make the changes of the planned batches: the generators' final state, and each
        batch's outcome; the invariants of the touched regions are checked at the end."""
        from explorer.model.machine import O_GUEST, O_PAMT_CACHE

        m = self.m
        counters, module = m.counters, m.module
        refcount, gotten = m.refcount, m.gotten
        vcpus, tds = m.vcpus, m.tds
        pfns = self.pfns
        outcomes: list[BatchOutcome] = []
        codes: list[int] = []
        gets: dict[int, int] = {}  # region -> references taken
        leaves: dict[int, dict[int, int]] = {}
        gmem: dict[int, dict[int, int]] = {}
        by_region: dict[int, list[int]] = {}
        all_regions: set[int] = set()
        step0 = m.nr_steps
        i = 0
        nfaults = nlinks = aug = add = 0
        for batch in self.batches:
            regions: set[int] = set()
            faults = batch.faults
            guest: list[int | None] = [None] * len(faults)  # fault -> its new guest page
            topups: dict[int, int] = {}
            allocated = 0
            for _step, _k, _seq, what, who, arg in batch.allocs:
                if what == _PAMT:
                    got = pfns[i : i + arg]
                    vcpus[who].pamt_cache.extend(got)
                    topups[who] = topups.get(who, 0) + arg
                    codes += [O_PAMT_CACHE] * arg
                    regions.update(p >> _SHIFT for p in got)
                    i += arg
                    allocated += arg
                else:
                    guest[who] = pfns[i]
                    codes.append(O_GUEST)
                    i += 1
                    allocated += 1
            for vcpu, links_made, pte_n, phd_n in batch.caches:
                caches = vcpu.caches
                caches["pte_list_desc"].nobjs = pte_n
                caches["page_header"].nobjs = phd_n
                if links_made:
                    del caches["shadow_page"].pfns[-links_made:]
                    del caches["external_spt"].pfns[-links_made:]
            last_tid, lv, gm = -1, {}, {}
            for j, (td, gfn, bound, links) in enumerate(faults):
                tid = td.id
                if tid != last_tid:
                    lv, gm, last_tid = leaves.setdefault(tid, {}), gmem.setdefault(tid, {}), tid
                for key, sp, spt in links:
                    r = spt >> _SHIFT
                    gets[r] = gets.get(r, 0) + 1
                    regions.add(r)
                    regions.add(sp >> _SHIFT)
                    _install_table(m, td, key, sp, spt)
                    nlinks += 1
                pfn = bound
                if pfn is None:
                    pfn = guest[j]
                    assert pfn is not None
                    gm[gfn] = pfn
                lv[gfn] = pfn
                r = pfn >> _SHIFT
                gets[r] = gets.get(r, 0) + 1
                regions.add(r)
                by_region.setdefault(r, []).append(pfn & _MASK)
                if td.state == "finalized":
                    aug += 1
                else:
                    add += 1
            nfaults += len(faults)
            # where each event starts
            lengths = batch.lengths
            if self.round_robin and len(lengths) > 1:
                starts = []
                for _idx, k, j in batch.starts:
                    if j == 0:  # every CPU's first step comes in CPU order
                        starts.append(step0 + k)
                    else:
                        before = sum(min(j, x) for x in lengths)
                        before += sum(1 for kk in range(k) if lengths[kk] > j)
                        starts.append(step0 + before)
            else:  # one CPU after the other
                base = step0
                bases = []
                for x in lengths:
                    bases.append(base)
                    base += x
                starts = [bases[k] + j for _idx, k, j in batch.starts]
            steps = sum(lengths)
            step0 += steps
            all_regions |= regions
            outcomes.append(
                BatchOutcome(
                    steps, frozenset(batch.labels), sorted(regions), allocated, topups, starts
                )
            )
        if pfns:
            m.mem.take_planned(pfns, codes)
            m._owners_changed = True
            counters["allocs_sleeping"] += len(pfns)
        for r, offsets in by_region.items():
            given = module.give_pages(r, offsets, "guest")
            assert given, r  # (the plan checked the region's pair and pages)
        for tid, items in gmem.items():
            tds[tid].gmem.set_many(items)
        for tid, items in leaves.items():
            tds[tid].leaves.set_many(items)
        ckpt = m._ckpt_regions
        for r, k in gets.items():
            refcount[r] += k
            gotten[r] = gotten.get(r, 0) + k
            ckpt.add(r)
        counters["faults"] += nfaults
        counters["pamt_get"] += nfaults + nlinks
        counters["pamt_get_fast"] += nfaults + nlinks
        counters["sept_add"] += nlinks
        counters["page_aug"] += aug
        counters["page_add"] += add
        m.nr_steps = step0
        _finish_run(m, outcomes, all_regions)
        return outcomes


# ============================================================================ simple runs
@dataclass(frozen=True, slots=True)
class FaultColumns:
    """The trace's faults as two columns, for the simple runs' checks: each event's vCPU (-1
    where the event is not a plain 4 KiB fault with no pfn, which no simple run takes) and gfn.
    Built per checkpoint interval by the replay, per seek for the batches it re-runs (:meth:`of`,
    two list comprehensions), so that the check of an event reads two list items instead of
    four attributes and a type."""

    vcpu: list[int]
    gfn: list[int]
    base: int = 0  # the index of the first event the columns hold

    @classmethod
    def of(cls, events: Sequence[Event], base: int = 0) -> FaultColumns:
        """The columns of ``events`` (a slice of the trace that starts at event ``base``)."""
        vcpu = [
            ev.vcpu if type(ev) is Fault and ev.pfn is None and ev.level == "4k" else -1
            for ev in events
        ]
        gfn = [ev.gfn if type(ev) is Fault else -1 for ev in events]
        return cls(vcpu, gfn, base)


def run_simple_batches(
    m: Machine, events: Sequence[Event], spans: Sequence[tuple[int, int]], cols: FaultColumns
) -> list[BatchOutcome]:
    """The commonest case of :func:`run_fast_batches`, at a fraction of its cost: batches in
    which every CPU takes one warm fault and nothing else happens. Runs the longest prefix of
    ``spans`` (batches ``events[start:end]``; ``cols``: the events' columns) in which every
    batch is *simple*: one fault per vCPU; every vCPU's KVM caches at or above ``min`` and its
    DPAMT cache full, or (v6, v5-hint) topped up to 2n in its first fault of the run, in the
    step the "full" check takes otherwise; every gfn new, not backed yet, under a present
    level-1 table or one the fault can link alone (:class:`_RunLinks`); every page from a
    touched region with a pair and a refcount above zero. Then every event is the same nine
    (eight without the DPAMT "full" step) steps, four more where it links a table; under either
    schedule the CPUs' first steps are in CPU order and the guest pages are allocated in event
    order (a link allocates nothing; a top-up's pages come first, :func:`_take_topups`), so the
    run is computed with a few list operations per event.
    Returns the outcomes (empty: nothing ran, nothing changed); a batch that is not simple is
    left to :func:`run_fast_batches`.

    The pages come first: how many the allocator can hand out on paired regions bounds the
    run before any event is looked at (a run usually ends where the allocator reaches a fresh
    region), so no event is checked for a batch that could not run anyway."""
    if not spans or not _machine_qualifies(m):
        return []
    settings = m.settings
    limit = C.GFN_LIMIT[settings.ept_levels]
    full_step = 0 if m.mode in _NO_TOPUP_MODES or m.mode == "kvm-style-cache" else 1
    low = -1 if m.mode in _NO_TOPUP_MODES else 2 * settings.dpamt_gets_per_fault
    per_event = 8 + full_step
    from explorer.model.machine import MAX_STEPS_PER_BATCH as max_steps

    first = spans[0][0]
    base = cols.base
    segments = _pages_fit(m, m.mem.peek_lowest_segments(spans[-1][1] - first))
    fits = sum(len(offs) for _r, offs in segments)
    vc, gf = cols.vcpu, cols.gfn
    state: dict[int, _SimpleVcpu] = {}
    links = _RunLinks(m)
    # v6, v5-hint: a vCPU whose DPAMT cache is short tops it up in its first fault of the run,
    # in the step the "full" check takes otherwise (its pages come before the guest pages)
    topup_low = low if full_step else -1
    topups: list[tuple[int, int, int]] = []  # (event, vCPU, pages)
    extra = 0  # pages the top-ups take
    taken = 0  # batches accepted
    for start, end in spans:
        if end - first + extra > fits:
            break
        if len(set(vc[start - base : end - base])) != end - start:
            break  # two events of one vCPU (or of no vCPU: -1)
        links.batch = taken
        nlinks = len(links.made)
        bad = -1
        for i in range(start - base, end - base):
            vid = vc[i]
            st = state.get(vid)
            if st is None:
                td = _simple_vcpu(m, vid, low, topup_low) if vid >= 0 else None
                if td is None:
                    bad = i
                    break
                st = state[vid] = _SimpleVcpu(td, m.vcpus[vid])
                short = topup_low - len(m.vcpus[vid].pamt_cache)
                if short > 0:
                    topups.append((base + i, vid, short))
                    extra += short
            g = gf[i]
            if g >> CHUNK_SHIFT != st.chunk and not st.enter(g, links, base + i):
                bad = i
                break
            if g in st.mapped or g in st.backed or g >= limit:
                bad = i
                break
        if (
            bad >= 0
            or (end - start) * per_event + 4 * (len(links.made) - nlinks) > max_steps
            or end - first + extra > fits
        ):
            break
        taken += 1
    if not taken:
        return []
    end = spans[taken - 1][1]
    tids = [state[v].tid for v in vc[first - base : end - base]]
    gfns = gf[first - base : end - base]
    again = _first_repeat(tids, gfns)  # a gfn faulted twice in the run: the later one stops it
    if again is not None:
        taken = bisect_right([e for _s, e in spans[:taken]], first + again)
        if not taken:
            return []
        end = spans[taken - 1][1]
        del tids[end - first :], gfns[end - first :]
    # (a rejected batch's links and top-ups go)
    made = [link for link in links.made if link[0] < end]
    tops = [top for top in topups if top[0] < end]
    return _apply_simple(m, spans[:taken], tids, gfns, segments, per_event, full_step, made, tops)


_EMPTY: dict[int, int] = {}  # (never written)


class _RunLinks:
    """The level-1 tables a simple run links: a fault on a 2 MiB guest chunk with no level-1
    table links one (``tdp_mmu_alloc_sp`` from the vCPU's caches, a fast ``tdx_pamt_get`` on
    the S-EPT page's region, ``TDH.MEM.SEPT.ADD``: four more steps, no page from the
    allocator), which keeps the batch simple when the tables above are present, no other CPU
    of the batch links the same table, the caches hold the pages and the S-EPT page's region
    has a pair and a refcount above zero. Beyond that the general fast path or the generators
    decide (a race for one table, a top-up, a fresh region)."""

    __slots__ = ("batch", "kind", "linked", "made", "pairs", "refcount", "upper")

    def __init__(self, m: Machine) -> None:
        self.refcount, self.pairs, self.kind = m.refcount, m.module.pairs, m.module.kind
        levels = m.settings.ept_levels
        self.upper = [(lv, 9 * lv) for lv in range(levels - 1, 1, -1)]  # the tables above
        self.linked: dict[tuple[int, int], int] = {}  # (TD, chunk) -> the batch that links it
        self.made: list[tuple[int, int, int, int]] = []  # (event, vCPU, TD, chunk), in order
        self.batch = 0  # the batch being checked (its number in the run)


class _SimpleVcpu:
    """What a simple run's check keeps of a vCPU: its TD, the 2 MiB guest chunk its last fault
    fell in (its mappings and guest_memfd bindings), re-read only when its gfns move on to
    another chunk, and the counts its table links leave in its page-table caches."""

    __slots__ = (
        "backed",
        "chunk",
        "entries",
        "ext",
        "ext_n",
        "gmem",
        "leaves",
        "low",
        "mapped",
        "mins",
        "phd_n",
        "shp_n",
        "tid",
        "vid",
    )

    def __init__(self, td: Td, vcpu: Vcpu) -> None:
        self.tid, self.vid = td.id, vcpu.id
        self.leaves, self.gmem, self.entries = td.leaves, td.gmem, td.entries
        self.chunk = -1
        self.mapped = self.backed = _EMPTY
        caches = vcpu.caches
        self.ext = caches["external_spt"].pfns
        self.ext_n, self.shp_n = len(self.ext), len(caches["shadow_page"].pfns)
        self.phd_n = caches["page_header"].nobjs
        self.mins = (
            caches["external_spt"].min,
            caches["shadow_page"].min,
            caches["page_header"].min,
        )
        self.low = False  # a link took a cache below min: the next fault tops it up

    def enter(self, gfn: int, links: _RunLinks, event: int) -> bool:
        """Move to ``gfn``'s chunk, linking its level-1 table if it has none; False if the fault
        is not simple (see :class:`_RunLinks`)."""
        if self.low:
            return False
        c = gfn >> CHUNK_SHIFT
        l1 = self.entries.get((1, c))
        if l1 is None:
            by = links.linked.get((self.tid, c))
            if by is None:
                if not self._link(gfn, c, links, event):
                    return False
            elif by == links.batch:
                return False  # two CPUs race for one table: the generators decide
        elif l1[0] != "present":
            return False  # frozen by a CPU mid-link: RET_PF_RETRY
        self.chunk = -1 if self.low else c  # (low: its next fault comes back here, and stops)
        self.mapped = self.leaves.chunk(gfn) or _EMPTY
        self.backed = self.gmem.chunk(gfn) or _EMPTY
        return True

    def _link(self, gfn: int, c: int, links: _RunLinks, event: int) -> bool:
        entries = self.entries
        for lv, shift in links.upper:
            entry = entries.get((lv, gfn >> shift))
            if entry is None or entry[0] != "present":
                return False  # more than one table to link: the general fast path does it
        if not (self.ext_n and self.shp_n and self.phd_n):
            return False  # an empty cache WARNs and allocates GFP_ATOMIC
        spt = self.ext[self.ext_n - 1]
        r = spt >> _SHIFT
        if not links.refcount.get(r) or r not in links.pairs or links.kind(spt):
            return False
        self.ext_n -= 1
        self.shp_n -= 1
        self.phd_n -= 1
        e_min, s_min, p_min = self.mins
        if self.ext_n < e_min or self.shp_n < s_min or self.phd_n < p_min:
            self.low = True
        links.linked[(self.tid, c)] = links.batch
        links.made.append((event, self.vid, self.tid, c))
        return True


def _first_repeat(tids: list[int], gfns: list[int]) -> int | None:
    """The index of the first (TD, gfn) seen before in the lists, or None (the usual case,
    told by one set's size)."""
    pairs = list(zip(tids, gfns, strict=True))
    if len(set(pairs)) == len(pairs):
        return None
    seen: set[tuple[int, int]] = set()
    for i, p in enumerate(pairs):
        if p in seen:
            return i
        seen.add(p)
    return None  # (unreachable: the sizes differed)


def _pages_fit(
    m: Machine, segments: list[tuple[int, Sequence[int]]]
) -> list[tuple[int, Sequence[int]]]:
    """The prefix of the allocator's next pages (``segments``: region, offsets) a simple run
    can take: on regions with a refcount above zero and a pair, pages the module does not use
    yet."""
    refcount, pairs, pages = m.refcount, m.module.pairs, m.module.pages
    out: list[tuple[int, Sequence[int]]] = []
    for r, offs in segments:
        if not refcount.get(r) or r not in pairs:
            break
        kinds = pages.get(r)
        if kinds is not None and not (  # (a range is checked with one byte count)
            type(offs) is range and kinds.count(0, offs.start, offs.stop) == len(offs)
        ):
            used = next((i for i, off in enumerate(offs) if kinds[off]), -1)
            if used >= 0:
                out.append((r, offs[:used]))
                break
        out.append((r, offs))
    return [(r, offs) for r, offs in out if len(offs)]


def _simple_vcpu(m: Machine, vid: int, low: int, topup_low: int = -1) -> Td | None:
    """The vCPU's TD if its faults can be simple: nothing frozen, KVM's caches at ``min``, the
    DPAMT cache at ``low`` or, with ``topup_low`` (v6's 2n), anywhere below it (its first
    fault of the run tops it up to 2n in the step it takes anyway)."""
    vcpu = m.vcpus.get(vid)
    if vcpu is None or not vcpu.alive:
        return None
    td = m.tds.get(vcpu.td)
    if td is None or td.state not in _LIVE_TD or td.mmu_writer is not None or td.leaf_frozen:
        return None
    if len(vcpu.pamt_cache) < low and topup_low < 0:
        return None
    for cache in vcpu.caches.values():
        if cache.count < cache.min:
            return None
    return td


def _apply_simple(
    m: Machine,
    spans: Sequence[tuple[int, int]],
    tids: list[int],
    gfns: list[int],
    segments: list[tuple[int, Sequence[int]]],
    per_event: int,
    full_step: int,
    links: list[tuple[int, int, int, int]],
    topups: list[tuple[int, int, int]],
) -> list[BatchOutcome]:
    """Apply a simple run (see :func:`run_simple_batches`; ``tids``, ``gfns``: each event's TD
    and gfn, in event order; ``segments``: the allocator's next pages by region, enough for
    every event and top-up; ``links``: the level-1 tables it links, as (event, vCPU, TD,
    chunk); ``topups``: the DPAMT cache top-ups, as (event, vCPU, pages)): the same state
    changes as :meth:`_Planner.apply` for these batches, in bulk."""
    from explorer.model.machine import O_GUEST

    tds, counters, module = m.tds, m.counters, m.module
    nfaults = len(gfns)
    total = nfaults + sum(n for _e, _v, n in topups)
    by_region: dict[int, Sequence[int]] = {}  # region -> page offsets, in allocation order
    pfns: list[int] = []
    for r, offs in segments:
        if len(pfns) == total:
            break
        offs = offs[: total - len(pfns)]
        by_region[r] = offs
        base = r << _SHIFT
        if type(offs) is range:
            pfns.extend(range(base + offs.start, base + offs.stop))
        else:
            pfns.extend([base | off for off in offs])
    m.mem.take_regions(by_region, O_GUEST)
    topped: dict[int, tuple[int, list[int]]] = {}  # event -> (vCPU, its top-up's pages)
    if topups:
        pfns, by_region, topped = _take_topups(m, spans, pfns, topups, by_region)
    # the mappings by TD and chunk, each chunk's items in event order: one grouping, two dicts
    groups: dict[int, dict[int, dict[int, int]]] = {t: {} for t in set(tids)}
    for t, g, p in zip(tids, gfns, pfns, strict=True):
        by_chunk = groups[t]
        sub = by_chunk.get(g >> CHUNK_SHIFT)
        if sub is None:
            sub = by_chunk[g >> CHUNK_SHIFT] = {}
        sub[g] = p
    aug = add = 0
    for t, by_chunk in groups.items():
        td = tds[t]
        td.gmem.set_grouped(by_chunk)
        td.leaves.set_grouped(by_chunk)
        k = sum(map(len, by_chunk.values()))
        if td.state == "finalized":
            aug += k
        else:
            add += k
    refcount, gotten, ckpt = m.refcount, m.gotten, m._ckpt_regions
    for r, offs in by_region.items():
        given = module.give_pages(r, offs, "guest")
        assert given, r  # (the plan checked the region's pair and pages)
        refcount[r] += len(offs)
        gotten[r] = gotten.get(r, 0) + len(offs)
        ckpt.add(r)
    for name in ("faults", "pamt_get", "pamt_get_fast"):
        counters[name] += nfaults
    counters["allocs_sleeping"] += total
    counters["page_aug"] += aug
    counters["page_add"] += add
    linked = _apply_links(m, links) if links else _NO_LINKED
    # per batch: steps, event starts, labels, regions
    base_labels = set(_BASE_LABELS)
    base_labels.add("faultin.alloc")
    if full_step:
        base_labels.add("pamt_cache.full")
    finalized = {t: tds[t].state == "finalized" for t in groups}
    labels_of: dict[frozenset[int], frozenset[str]] = {}
    round_robin = m.settings.schedule == "round-robin"
    outcomes: list[BatchOutcome] = []
    step0 = m.nr_steps
    i = 0
    single_region = len(by_region) == 1
    only_region = list(by_region)
    top_events, link_events = sorted(topped), sorted(linked)
    ti, ntop, li, nlink = 0, len(top_events), 0, len(link_events)
    for start, end in spans:
        k = end - start
        batch_tds = frozenset(tids[i : i + k])
        labels = labels_of.get(batch_tds)
        if labels is None:
            ls = set(base_labels)
            ls.update("page.aug" if finalized[t] else "page.add" for t in batch_tds)
            labels = labels_of[batch_tds] = frozenset(ls)
        regions = only_region if single_region else sorted({p >> _SHIFT for p in pfns[i : i + k]})
        steps = k * per_event
        tops = _NO_TOPUPS
        at = []  # its events that top up (the lists are in event order: no scan per batch)
        while ti < ntop and top_events[ti] < end:
            at.append(top_events[ti])
            ti += 1
        if at:
            tops = {topped[e][0]: len(topped[e][1]) for e in at}
            regions = sorted({*regions, *(p >> _SHIFT for e in at for p in topped[e][1])})
            labels = labels | {"pamt_cache.topup"}
            if len(at) == k:  # (no CPU of the batch found its cache full)
                labels = labels - {"pamt_cache.full"}
        made = []  # its events that link a table
        while li < nlink and link_events[li] < end:
            made.append(link_events[li])
            li += 1
        if made:
            # a fault that links a table takes 4 more steps; the CPUs' first steps are still
            # in CPU order under round-robin (no allocation comes after a link)
            labels = labels | _LINK_LABELS
            regions = sorted({*regions, *(r for e in made for r in linked[e])})
            steps += 4 * len(made)
            if round_robin and k > 1:
                starts: Sequence[int] = range(step0, step0 + k)
            else:
                starts = list(
                    accumulate(
                        (per_event + 4 * (e in linked) for e in range(start, end - 1)),
                        initial=step0,
                    )
                )
        elif round_robin and k > 1:
            starts = range(step0, step0 + k)
        else:
            starts = range(step0, step0 + k * per_event, per_event)
        outcomes.append(BatchOutcome(steps, labels, regions, k + sum(tops.values()), tops, starts))
        step0 += steps
        i += k
    m.nr_steps = step0
    touched = set(by_region)
    for rs in linked.values():
        touched.update(rs)
    _finish_run(m, outcomes, touched)
    return outcomes


_NO_LINKED: dict[int, tuple[int, int]] = {}  # (never written)
_NO_TOPUPS: dict[int, int] = {}  # (never written)


def _take_topups(
    m: Machine,
    spans: Sequence[tuple[int, int]],
    pfns: list[int],
    topups: list[tuple[int, int, int]],
    by_region: dict[int, Sequence[int]],
) -> tuple[list[int], dict[int, Sequence[int]], dict[int, tuple[int, list[int]]]]:
    """Split a simple run's pages (``pfns``, in allocation order, all taken as guest pages)
    between its DPAMT cache top-ups and its guest pages, in the order the schedule allocates
    them: under round-robin every top-up of a batch (each CPU's second step) before any guest
    page (its third), else CPU after CPU, each one's top-up before its guest page. The top-up
    pages become ``pamt_cache`` pages, pushed on their vCPU's cache (what
    :func:`explorer.model.dpamt.fill_pamt_cache` leaves). Returns the guest pages (one per
    event, in event order), the guest pages by region (``by_region``: all the run's pages),
    and each topping-up event's pages. A vCPU tops up in its first fault of the run, so only
    the first batches are walked; the rest of the pages are guest pages, in order."""
    from explorer.model.machine import O_PAMT_CACHE

    at = {e: (vid, n) for e, vid, n in topups}
    round_robin = m.settings.schedule == "round-robin"
    guest: list[int] = []
    topped: dict[int, tuple[int, list[int]]] = {}
    pos = 0
    last = max(at)
    for start, end in spans:
        if start > last:
            break
        k = end - start
        tops = [e for e in range(start, end) if e in at]
        if not tops:
            guest += pfns[pos : pos + k]
            pos += k
            continue
        if round_robin and k > 1:
            for e in tops:
                vid, n = at[e]
                topped[e] = (vid, pfns[pos : pos + n])
                pos += n
            guest += pfns[pos : pos + k]
            pos += k
        else:
            for e in range(start, end):
                if e in at:
                    vid, n = at[e]
                    topped[e] = (vid, pfns[pos : pos + n])
                    pos += n
                guest.append(pfns[pos])
                pos += 1
    guest += pfns[pos:]
    mem, vcpus = m.mem, m.vcpus
    dropped: dict[int, set[int]] = {}  # region -> offsets of top-up pages
    for vid, pages in topped.values():
        for p in pages:
            mem.set_owner(p, O_PAMT_CACHE)
            dropped.setdefault(p >> _SHIFT, set()).add(p & _MASK)
        vcpus[vid].pamt_cache.extend(pages)
    guest_by_region: dict[int, Sequence[int]] = {}
    for r, offs in by_region.items():
        drop = dropped.get(r)
        kept = offs if drop is None else [off for off in offs if off not in drop]
        if kept:
            guest_by_region[r] = kept
    return guest, guest_by_region, topped


def _install_table(m: Machine, td: Td, key: tuple[int, int], sp: int, spt: int) -> None:
    """What a successful :func:`explorer.model.kvm._link_table` leaves for the table ``key``:
    the S-EPT page given to the module (``TDH.MEM.SEPT.ADD``; the caller checked it is free and
    on a paired region), the shadow page held as its mirror, the entry present."""
    from explorer.model.machine import O_MIRROR, O_SEPT

    status = m.module.give_page(spt, "sept")
    assert status == "TDX_SUCCESS", status
    m.set_owner(spt, O_SEPT)
    m.set_owner(sp, O_MIRROR)
    td.entries[key] = ("present", spt, sp)


def _apply_links(m: Machine, links: list[tuple[int, int, int, int]]) -> dict[int, tuple[int, int]]:
    """Link the level-1 tables of a simple run (what :func:`explorer.model.kvm._link_table`
    leaves: the shadow and S-EPT pages popped from the vCPU's caches, a ``page_header`` object
    used, the S-EPT page given to the module and its region's refcount up by one, the entry
    present); returns each linking event's regions (S-EPT page's, shadow page's)."""
    refcount, gotten, ckpt = m.refcount, m.gotten, m._ckpt_regions
    out: dict[int, tuple[int, int]] = {}
    for event, vid, tid, chunk in links:
        caches = m.vcpus[vid].caches
        sp = caches["shadow_page"].pfns.pop()
        spt = caches["external_spt"].pfns.pop()
        caches["page_header"].nobjs -= 1
        _install_table(m, m.tds[tid], (1, chunk), sp, spt)
        r = spt >> _SHIFT
        refcount[r] += 1
        gotten[r] = gotten.get(r, 0) + 1
        ckpt.add(r)
        out[event] = (r, sp >> _SHIFT)
    n = len(links)
    m.counters["pamt_get"] += n
    m.counters["pamt_get_fast"] += n
    m.counters["sept_add"] += n
    return out


def _finish_run(m: Machine, outcomes: list[BatchOutcome], regions: set[int]) -> None:
    """What every fast run ends with: the batch bookkeeping, and the invariants: the touched
    regions (1 to 4) and page conservation (5), once per run (a violation here is reported at
    the run's last step)."""
    from explorer.model.invariants import check_global, check_quiescent, check_regions

    m.batch_labels |= set().union(*{o.labels for o in outcomes})  # (few distinct sets)
    m.batch_regions |= regions
    m.threads = {}
    m.fast_batches += len(outcomes)
    if m.check:
        check_regions(m, regions)
        check_global(m)
        check_quiescent(m)
        m._flush_diags()
    m._owners_changed = False
    m._dirty.clear()


# ============================================================================ region crossings
#: A crossing thread's phases (one step each, but LOCK, which spins while pamt_lock is held):
#: the v6 warm fault of :func:`explorer.model.kvm.tdx_handle_ept_violation`, with the slow
#: path of :func:`explorer.model.dpamt.tdx_pamt_get` where its region has no pair yet.
(_BEGIN, _FULL, _ALLOC, _MMU, _FREEZE, _GET, _POP1, _POP2, _LOCK, _DECIDE) = range(10)
(_UNLOCK, _FREE, _AUG, _MMU_UNLOCK, _DONE, _FINISHED) = range(10, 16)
_CROSS_LABELS = {
    _BEGIN: "fault.begin",
    _FULL: "pamt_cache.full",
    _ALLOC: "faultin.alloc",
    _MMU: "mmu_lock.read",
    _FREEZE: "leaf.freeze",
    _POP1: "pamt_get.pop",
    _POP2: "pamt_get.pop",
    _UNLOCK: "pamt_get.unlock",
    _FREE: "pamt_get.free_pair",
    _MMU_UNLOCK: "mmu_lock.read_unlock",
    _DONE: "fault.done",
}


class _Crossing:
    """One CPU of a crossing batch, as the schedule runs it (no machine state changes here)."""

    __slots__ = ("aug", "first", "gfn", "idx", "lost", "pfn", "phase", "region", "td", "vcpu")

    def __init__(self, idx: int, vcpu: Vcpu, td: Td, gfn: int) -> None:
        self.idx, self.vcpu, self.td, self.gfn = idx, vcpu, td, gfn
        self.aug = td.state == "finalized"  # PAGE.AUG, else PAGE.ADD (before TD finalize)
        self.phase, self.first, self.lost = _BEGIN, -1, False
        self.pfn = self.region = -1


def run_crossing_batch(m: Machine, items: Sequence[tuple[int, Event]]) -> bool:
    """A region crossing without the generators: every CPU of the batch takes one warm 4 KiB
    fault (as in a simple batch: nothing to top up or link, its DPAMT cache full) and at
    least one guest page lands on a region with no PAMT pair yet, so its ``tdx_pamt_get``
    takes the slow path: two pages popped from the vCPU's ``tdx_pamt_cache``, ``pamt_lock``
    (the other CPUs of the region spin), PAMT.ADD by the first CPU to take the lock, a lost
    race (refcount already up, the pair freed to the allocator) for the others. This is the
    batch a boot trace hits each time the allocator moves on to a fresh 2 MiB region (1.7 % of
    its batches; on the generators they took a fifth of the replay's time).

    The schedule is run on a small model of the threads' phases first, with nothing changed
    (the steps, labels, event starts, which CPU adds the pair, the order of the frees); then
    the outcome is applied through the machine's primitives, in the order that matters (the
    guest pages, all allocated before any pair is freed, then the pops, the PAMT.ADDs, the
    frees in schedule order). v6 only, round-robin or sequential. Returns False, with nothing
    changed, where anything else could happen (the generators run the batch then); the
    invariants are checked at the end, as for the other fast runs. ``tests/test_fastpath.py``
    compares it with the generators batch by batch."""
    if m.mode != "v6" or not items or m.record or not _machine_qualifies(m):
        return False
    settings = m.settings
    limit = C.GFN_LIMIT[settings.ept_levels]
    low = 2 * settings.dpamt_gets_per_fault
    threads: list[_Crossing] = []
    seen: set[tuple[int, int]] = set()
    vids: set[int] = set()
    for idx, ev in items:
        if type(ev) is not Fault or ev.pfn is not None or ev.level != "4k" or ev.vcpu in vids:
            return False
        vids.add(ev.vcpu)
        td = _simple_vcpu(m, ev.vcpu, low)
        gfn = ev.gfn
        if td is None or gfn >= limit or (td.id, gfn) in seen or low < 2:
            return False
        seen.add((td.id, gfn))
        l1 = td.entries.get((1, gfn >> CHUNK_SHIFT))
        if l1 is None or l1[0] != "present" or gfn in td.leaves or gfn in td.gmem:
            return False
        threads.append(_Crossing(idx, m.vcpus[ev.vcpu], td, gfn))
    k = len(threads)
    pfns = m.mem.peek_lowest_into_untouched(k)
    if pfns is None:
        return False
    refcount, pairs, pages = m.refcount, m.module.pairs, m.module.pages
    rc: dict[int, int] = {}  # the batch's regions: their refcounts as the schedule runs
    fresh = False
    for th, p in zip(threads, pfns, strict=True):
        r = p >> _SHIFT
        kinds = pages.get(r)
        if kinds is not None and kinds[p & _MASK]:
            return False
        n = refcount.get(r, 0)
        if (n > 0) != (r in pairs):
            return False
        fresh = fresh or not n
        th.pfn, th.region = p, r
        rc[r] = n
    if not fresh:
        return False  # every get is fast: a simple batch, for the other fast paths
    plan = _schedule_crossing(m, threads, rc)
    if plan is None:
        return False
    steps, labels, adds, frees, spins = plan
    # the pairs the winners install: their cache's last two pages, free in the module
    kind = m.module.kind
    for th in adds:
        cache = th.vcpu.pamt_cache
        if cache[-1] == cache[-2] or kind(cache[-1]) or kind(cache[-2]):
            return False
    touched = _apply_crossing(m, threads, pfns, adds, frees, rc, spins)
    first = m.event_first_step
    for th in threads:
        first.setdefault(th.idx, th.first)
    m.nr_steps += steps
    starts = [th.first for th in threads]
    outcome = BatchOutcome(steps, frozenset(labels), sorted(touched), k, {}, starts)
    _finish_run(m, [outcome], touched)
    return True


def _schedule_crossing(
    m: Machine, threads: list[_Crossing], rc: dict[int, int]
) -> tuple[int, set[str], list[_Crossing], list[_Crossing], int] | None:
    """Run the crossing batch's schedule on the threads' phases (``rc``: the refcounts, updated
    as the gets run): the batch's steps, labels, the CPUs that add a pair (in order), those
    that lose the race (in the order they free their pair) and the spin steps; None where the
    schedule leaves the pattern (a spin under ``sequential``, a free before an allocation) or
    the batch would hit a step limit (the generators report that)."""
    from explorer.model.machine import MAX_SPIN_STEPS, MAX_STEPS_PER_BATCH

    step = m.nr_steps
    labels: set[str] = set()
    adds: list[_Crossing] = []
    frees: list[_Crossing] = []
    holder: _Crossing | None = None  # pamt_lock's
    spins = spin_run = allocs = 0
    k = len(threads)
    round_robin = m.settings.schedule == "round-robin" and k > 1
    # round-robin: one step per unfinished CPU in turn; else each CPU to its end in turn
    live = list(threads)
    cur = 0
    while live:
        th = live[cur]  # (always the first under sequential: it runs to its end)
        phase = th.phase
        if phase == _BEGIN:
            th.first = step
        if phase == _GET:
            r = th.region
            if rc[r]:
                rc[r] += 1
                label = "pamt_get.fast"
                th.phase = _AUG
            else:
                label = "pamt_get.slow"
                th.phase = _POP1
        elif phase == _LOCK:
            if holder is not None:
                if not round_robin:
                    return None
                label = "pamt_get.lock.spin"
                spins += 1
            else:
                holder = th
                label = "pamt_get.lock"
                th.phase = _DECIDE
        elif phase == _DECIDE:
            r = th.region
            if rc[r]:
                rc[r] += 1
                th.lost = True
                frees.append(th)
                label = "pamt_get.lost_race"
            else:
                rc[r] = 1
                adds.append(th)
                label = "pamt_get.add"
            th.phase = _UNLOCK
        elif phase == _UNLOCK:
            holder = None
            label = "pamt_get.unlock"
            th.phase = _FREE if th.lost else _AUG
        elif phase == _AUG:
            label = "page.aug" if th.aug else "page.add"
            th.phase = _MMU_UNLOCK
        else:
            label = _CROSS_LABELS[phase]
            if phase == _ALLOC:
                allocs += 1
            elif phase == _FREE and allocs < k:
                return None  # (a pair freed before every guest page is allocated)
            th.phase = phase + 1
        labels.add(label)
        step += 1
        spin_run = spin_run + 1 if label == "pamt_get.lock.spin" else 0
        if spin_run > MAX_SPIN_STEPS or step - m.nr_steps > MAX_STEPS_PER_BATCH:
            return None
        if th.phase == _FINISHED:
            live.remove(th)
            if round_robin and live:
                cur %= len(live)  # (the next CPU moved into this slot)
        elif round_robin:
            cur = (cur + 1) % len(live)
    return step - m.nr_steps, labels, adds, frees, spins


def _apply_crossing(
    m: Machine,
    threads: list[_Crossing],
    pfns: list[int],
    adds: list[_Crossing],
    frees: list[_Crossing],
    rc: dict[int, int],
    spins: int,
) -> set[int]:
    """Make the crossing batch's changes, through the machine's primitives where the order
    shows (the allocator's heap): the guest pages, the pops, the PAMT.ADDs, the frees in the
    schedule's order, then the mappings, the module's guest pages, the refcounts and the
    counters. Returns the regions it touched (the guest pages', the popped pages')."""
    from explorer.model.machine import O_GUEST, O_PAIR

    mem = m.mem
    for p in pfns:  # the allocator's own picks (a fresh region is touched on the way)
        got = mem.pick_free()
        assert got == p, (got, p)  # (peek_lowest_into_untouched told them)
        m.set_owner(p, O_GUEST)
    m.counters["allocs_sleeping"] += len(pfns)
    touched = set(rc)
    popped: dict[int, tuple[int, int]] = {}  # alloc_pamt_array(): the cache's last page first
    for th in (*adds, *frees):  # (each from its own vCPU's cache: their order does not show)
        cache = th.vcpu.pamt_cache
        popped[th.idx] = (cache[-1], cache[-2])
        touched.update((cache[-1] >> _SHIFT, cache[-2] >> _SHIFT))
        m.pamt_cache_pop(th.vcpu)
        m.pamt_cache_pop(th.vcpu)
    module = m.module
    for th in adds:
        pair = popped[th.idx]
        status = module.pamt_add(th.region, pair)
        assert status == "TDX_SUCCESS", status  # (the plan checked the region and the pages)
        for p in pair:
            m.set_owner(p, O_PAIR)
        m.note_pair(th.region, None, pair)
    for th in frees:
        for p in popped[th.idx]:
            m.free_page(p)
    leaves: dict[int, dict[int, int]] = {}
    aug = add = 0
    for th in threads:
        leaves.setdefault(th.td.id, {})[th.gfn] = th.pfn
        status = module.give_page(th.pfn, "guest")
        assert status == "TDX_SUCCESS", status
        if th.aug:
            aug += 1
        else:
            add += 1
    for tid, items in leaves.items():
        m.tds[tid].gmem.set_many(items)
        m.tds[tid].leaves.set_many(items)
    refcount, gotten, ckpt = m.refcount, m.gotten, m._ckpt_regions
    for th in threads:
        gotten[th.region] = gotten.get(th.region, 0) + 1
    for r, n in rc.items():
        refcount[r] = n
        ckpt.add(r)
    counters = m.counters
    nslow = len(adds) + len(frees)
    counters["faults"] += len(threads)
    counters["pamt_get"] += len(threads)
    counters["pamt_get_fast"] += len(threads) - nslow
    counters["pamt_get_slow"] += nslow
    counters["spins"] += spins
    counters["pamt_lost_race"] += len(frees)
    counters["pamt_add"] += len(adds)
    counters["pamt_pages_drained"] += 2 * len(frees)
    counters["page_aug"] += aug
    counters["page_add"] += add
    return touched
