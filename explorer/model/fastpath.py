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
  (:func:`_plan`): every event a 4 KiB ``fault`` with no explicit pfn, on a live vCPU of a
  created or finalized TD whose ``mmu_lock`` no writer holds; distinct gfns, none mapped; every
  ``tdx_pamt_get`` on a region whose refcount is already above zero (``atomic_inc_not_zero``
  succeeds: ``pamt_lock`` is never taken) and that has a pair; KVM's page caches at ``min``
  (a top-up that allocates goes through the generators) and not empty where a table is linked;
  every table linked by one CPU only; no injected failure pending, no violation so far; all the
  pages the batch allocates in the region the lowest-pfn allocator is filling.
- The steps each event takes are the generators' steps (the label lists below mirror
  :func:`explorer.model.kvm.tdx_handle_ept_violation` and what it calls). Under ``sequential``
  CPUs run one after another; under ``round-robin`` the k-th step of every CPU runs in CPU order
  before any (k+1)-th: that fixes each event's first step and the order of the allocations.
- ``tests/test_fastpath.py`` replays traces both ways and compares the machines (pages, owners,
  refcounts, pairs, mappings, caches, counters, checkpoints), the steps and the batch labels.

Where a precondition fails nothing has changed and the batch runs on the generators, as before.
Steps are never recorded here: a recording machine (a reviewer stepping through a batch) always
runs the generators, so every step shown is a step that ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from explorer.model import constants as C
from explorer.model.events import Event, Fault

if TYPE_CHECKING:
    from explorer.model.machine import Machine, Td

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
_LINK_LABELS = ("tdp.alloc_sp", "tdp.freeze", "pamt_get.fast", "sept.add")
#: Fast batches between two checks of page conservation (invariant 5) over the whole machine.
GLOBAL_CHECK_EVERY = 32
#: allocation kinds
_PAMT, _GUEST = 0, 1

#: a link: (S-EPT entry key, shadow page, S-EPT page)
Link = tuple[tuple[int, int], int, int]


class _Plan:
    """What one batch will do, computed without changing the machine."""

    __slots__ = ("allocs", "faults", "labels", "lengths", "links", "pfns", "starts")

    def __init__(self) -> None:
        #: (event index, thread, thread-local first step)
        self.starts: list[tuple[int, int, int]] = []
        #: per thread, its number of steps
        self.lengths: list[int] = []
        #: allocations: (thread-local step, thread, sequence, kind, vCPU or TD, pages or gfn)
        self.allocs: list[tuple[int, int, int, int, Any, int]] = []
        #: the pages they get, in allocation order (from HostMemory.peek_lowest)
        self.pfns: list[int] = []
        #: faults: (TD, gfn, its guest page if already backed, links)
        self.faults: list[tuple[Td, int, int | None, list[Link]]] = []
        #: links, per vCPU: (vCPU, links made by its events, objects filled)
        self.links: list[tuple[Any, int, int, int]] = []
        self.labels: set[str] = set(_BASE_LABELS)


def run_fast_batch(m: Machine, items: list[tuple[int, Event]]) -> bool:
    """Run the batch ``items`` if it qualifies; False (and nothing changed) if it does not."""
    if not _machine_qualifies(m):
        return False
    plan = _plan(m, items)
    if plan is None:
        return False
    _apply(m, plan)
    return True


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


def _plan(m: Machine, items: list[tuple[int, Event]]) -> _Plan | None:
    """Each thread's steps and allocations, or None if the batch does not qualify."""
    vcpus, tds = m.vcpus, m.tds
    refcount, pairs, kind = m.refcount, m.module.pairs, m.module.kind
    settings = m.settings
    levels = settings.ept_levels
    limit = C.GFN_LIMIT[levels]
    walk = [(lv, 9 * lv) for lv in range(levels - 1, 0, -1)]
    # the DPAMT top-up before mmu_lock: (fills to, steps when full, steps when filling)
    mode = m.mode
    n = settings.dpamt_gets_per_fault
    if mode in _NO_TOPUP_MODES:
        low, target, full_step = -1, 0, 0
    elif mode == "kvm-style-cache":  # nothing at >= 2n, else fill to KVM's capacity
        low, target, full_step = 2 * n, C.KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE, 0
    else:  # v6, v5-hint: tdx_topup_pamt_cache(cache, n) fills to exactly 2n, a step either way
        low, target, full_step = 2 * n, 2 * n, 1
    threads: dict[int, int] = {}  # vCPU id -> thread order
    queues: list[list[tuple[int, Fault]]] = []
    for idx, ev in items:
        if type(ev) is not Fault or ev.pfn is not None or ev.level != "4k":
            return None
        k = threads.get(ev.vcpu)
        if k is None:
            k = threads[ev.vcpu] = len(queues)
            queues.append([])
        queues[k].append((idx, ev))
    plan = _Plan()
    labels = plan.labels
    starts, allocs, faults = plan.starts, plan.allocs, plan.faults
    seen: set[tuple[int, int]] = set()
    linked: dict[tuple[int, int, int], int] = {}  # (TD, level, index) -> thread linking it
    for k, queue in enumerate(queues):
        vcpu = vcpus.get(queue[0][1].vcpu)
        if vcpu is None or not vcpu.alive:
            return None
        td = tds.get(vcpu.td)
        if td is None or td.state not in _LIVE_TD or td.mmu_writer is not None:
            return None
        tid = td.id
        caches = vcpu.caches
        pte, ext, shp, phd = (
            caches["pte_list_desc"],
            caches["external_spt"],
            caches["shadow_page"],
            caches["page_header"],
        )
        ext_n, shp_n = len(ext.pfns), len(shp.pfns)
        if ext_n < ext.min or shp_n < shp.min:
            return None  # a top-up that allocates KVM cache pages: the generators do it
        pte_n, pte_min, phd_n, phd_min = pte.nobjs, pte.min, phd.nobjs, phd.min
        have = len(vcpu.pamt_cache)
        entries, leaves, gmem, frozen = td.entries, td.leaves, td.gmem, td.leaf_frozen
        step = seq = nlinks = filled = 0
        for idx, ev in queue:
            gfn = ev.gfn
            if gfn >= limit or gfn in leaves or gfn in frozen or (tid, gfn) in seen:
                return None
            seen.add((tid, gfn))
            bound = gmem.get(gfn)
            if bound is not None:  # backed earlier (an explicit pfn): its get must be fast too
                r = bound >> _SHIFT
                if not refcount.get(r) or r not in pairs or kind(bound):
                    return None
            starts.append((idx, k, step))
            step += 1  # fault.begin
            if pte_n < pte_min:  # kvm_mmu_topup_memory_cache(pte_list_desc): objects, no pages
                pte_n = pte.capacity
                step += 1
                filled += 1
            if have < low:
                allocs.append((step, k, seq, _PAMT, vcpu, target - have))
                seq += 1
                have = target
                step += 1
                labels.add("pamt_cache.topup")
            elif full_step:
                step += 1
                labels.add("pamt_cache.full")
            if phd_n < phd_min:
                phd_n = phd.capacity
                step += 1
                filled += 1
            if bound is None:
                allocs.append((step, k, seq, _GUEST, td, gfn))
                seq += 1
                step += 1
            step += 1  # mmu_lock.read
            links: list[Link] = []
            l1 = entries.get((1, gfn >> 9))
            if l1 is not None and l1[0] == "present":
                # the walk finds every level present: tables are linked top-down and a present
                # entry goes only with its TD (td_destroy), so a present level-1 entry implies
                # present entries above it (tests/test_fastpath.py checks the outcome)
                step += 5  # leaf.freeze, pamt_get.fast, page.aug|add, read_unlock, fault.done
                faults.append((td, gfn, bound, links))
                continue
            for lv, shift in walk:
                key = (lv, gfn >> shift)
                entry = entries.get(key)
                if entry is not None:
                    if entry[0] != "present":
                        return None  # frozen by a CPU mid-link: RET_PF_RETRY
                    continue
                owner = linked.get((tid, *key))
                if owner is not None:
                    if owner != k:
                        return None  # two CPUs race for one table: the generators decide
                    continue  # linked by an earlier event of this CPU
                linked[(tid, *key)] = k
                # tdp_mmu_alloc_sp: a page_header object, a shadow page, an S-EPT page
                if phd_n == 0 or shp_n == 0 or ext_n == 0:
                    return None  # an empty cache WARNs and allocates GFP_ATOMIC
                phd_n -= 1
                shp_n -= 1
                ext_n -= 1
                spt = ext.pfns[ext_n]
                r = spt >> _SHIFT
                if not refcount.get(r) or r not in pairs or kind(spt):
                    return None
                links.append((key, shp.pfns[shp_n], spt))
                step += 4
            nlinks += len(links)
            step += 5  # leaf.freeze, pamt_get.fast, page.aug|add, read_unlock, fault.done
            faults.append((td, gfn, bound, links))
        labels.add("page.aug" if td.state == "finalized" else "page.add")
        if filled:
            labels.add("kvm_topup.fill")
        if nlinks or filled:
            plan.links.append((vcpu, nlinks, pte_n, phd_n))
        plan.lengths.append(step)
    if any(links for _, _, _, links in faults):
        labels.update(_LINK_LABELS)
    if any(a[3] == _GUEST for a in allocs):
        labels.add("faultin.alloc")
    from explorer.model.machine import MAX_STEPS_PER_BATCH

    if sum(plan.lengths) > MAX_STEPS_PER_BATCH:
        return None
    if allocs and not _allocations_fit(m, plan):
        return None
    return plan


def _allocations_fit(m: Machine, plan: _Plan) -> bool:
    """Order the allocations as the schedule runs them, and check the pages they will get: none
    used by the module, every guest page on a region with a refcount above zero and a pair (its
    get takes the fast path)."""
    allocs = plan.allocs
    if m.settings.schedule == "round-robin":  # step k of every CPU before step k + 1
        allocs.sort(key=lambda a: (a[0], a[1], a[2]))
    else:  # sequential, or one CPU: CPU after CPU
        allocs.sort(key=lambda a: (a[1], a[2]))
    need = sum(a[5] if a[3] == _PAMT else 1 for a in allocs)
    pfns = m.mem.peek_lowest(need)
    if pfns is None:
        return False
    refcount, pairs, pages = m.refcount, m.module.pairs, m.module.pages
    i = 0
    for a in allocs:
        if a[3] == _PAMT:
            i += a[5]
            continue
        region = pfns[i] >> _SHIFT
        if not refcount.get(region) or region not in pairs:
            return False
        i += 1
    for region in {p >> _SHIFT for p in pfns}:
        kinds = pages.get(region)
        if kinds is not None and any(kinds[p & _MASK] for p in pfns if p >> _SHIFT == region):
            return False
    plan.pfns = pfns
    return True


def _apply(m: Machine, plan: _Plan) -> None:
    """Make the batch's changes: the same final state as the generators' steps."""
    from explorer.model.machine import O_GUEST, O_MIRROR, O_PAMT_CACHE, O_SEPT, _tracked

    counters = m.counters
    dirty, ckpt = m._dirty, m._ckpt_regions
    start = m.nr_steps
    # 1. the allocations, in schedule order: DPAMT cache top-ups and guest_memfd pages
    guest: dict[tuple[int, int], int] = {}
    pfns = plan.pfns
    if pfns:
        codes: list[int] = []
        i = 0
        for _step, _k, _seq, what, who, arg in plan.allocs:
            if what == _PAMT:
                who.pamt_cache.extend(pfns[i : i + arg])
                codes += [O_PAMT_CACHE] * arg
                i += arg
            else:
                guest[(who.id, arg)] = pfns[i]
                codes.append(O_GUEST)
                i += 1
        m.mem.take_planned(pfns, codes)
        dirty.update({p >> _SHIFT for p in pfns})
        m._owners_changed = True
        counters["allocs_sleeping"] += len(pfns)
    # 2. links: pages from the vCPU's caches become a linked S-EPT table and its mirror page
    gets: dict[int, int] = {}  # region -> references taken
    module = m.module
    for vcpu, nlinks, pte_n, phd_n in plan.links:
        caches = vcpu.caches
        caches["pte_list_desc"].nobjs = pte_n
        caches["page_header"].nobjs = phd_n
        if nlinks:
            del caches["shadow_page"].pfns[-nlinks:]
            del caches["external_spt"].pfns[-nlinks:]
    nlinks = 0
    for td, _gfn, _bound, links in plan.faults:
        for key, sp, spt in links:
            r = spt >> _SHIFT
            gets[r] = gets.get(r, 0) + 1
            assert module.give_page(spt, "sept") == "TDX_SUCCESS"
            m.set_owner(spt, O_SEPT)
            m.set_owner(sp, O_MIRROR)
            td.entries[key] = ("present", spt, sp)
            nlinks += 1
    # 3. the leaves: a DPAMT reference (fast path) and PAGE.AUG / PAGE.ADD per fault
    leaves: dict[int, dict[int, int]] = {}
    gmem: dict[int, dict[int, int]] = {}
    by_region: dict[int, list[int]] = {}
    aug = add = 0
    for td, gfn, bound, _links in plan.faults:
        tid = td.id
        pfn = bound
        if pfn is None:
            pfn = guest[(tid, gfn)]
            gmem.setdefault(tid, {})[gfn] = pfn
        leaves.setdefault(tid, {})[gfn] = pfn
        r = pfn >> _SHIFT
        gets[r] = gets.get(r, 0) + 1
        by_region.setdefault(r, []).append(pfn & _MASK)
        if td.state == "finalized":
            aug += 1
        else:
            add += 1
    for r, offsets in by_region.items():
        assert module.give_pages(r, offsets, "guest")
    for tid, items in gmem.items():
        _tracked(m.tds[tid].gmem).set_many(items)
    for tid, items in leaves.items():
        _tracked(m.tds[tid].leaves).set_many(items)
    refcount, gotten = m.refcount, m.gotten
    for r, k in gets.items():
        refcount[r] += k
        gotten[r] = gotten.get(r, 0) + k
        dirty.add(r)
        ckpt.add(r)
    nfaults = len(plan.faults)
    counters["faults"] += nfaults
    counters["pamt_get"] += nfaults + nlinks
    counters["pamt_get_fast"] += nfaults + nlinks
    counters["sept_add"] += nlinks
    counters["page_aug"] += aug
    counters["page_add"] += add
    # 4. where each event starts, and the step count
    first = m.event_first_step
    lengths = plan.lengths
    if m.settings.schedule == "round-robin" and len(lengths) > 1:
        for idx, k, j in plan.starts:
            if j == 0:  # every CPU's first step comes in CPU order
                first.setdefault(idx, start + k)
            else:
                before = sum(min(j, n) for n in lengths)
                before += sum(1 for kk in range(k) if lengths[kk] > j)
                first.setdefault(idx, start + before)
    else:  # one CPU after the other
        bases = [start]
        for n in lengths:
            bases.append(bases[-1] + n)
        for idx, k, j in plan.starts:
            first.setdefault(idx, bases[k] + j)
    m.nr_steps = start + sum(lengths)
    m.batch_labels |= plan.labels
    m.batch_regions |= dirty
    m.threads = {}
    if m.check:
        # invariants 1 to 4 on the regions the batch touched, every batch; invariant 5 (page
        # conservation, a walk over every cache and TD) every GLOBAL_CHECK_EVERY fast batches
        from explorer.model.invariants import check_global, check_quiescent, check_regions

        check_regions(m, dirty)
        m.fast_batches += 1
        if m.fast_batches % GLOBAL_CHECK_EVERY == 0:
            check_global(m)
            check_quiescent(m)
        m._flush_diags()
    m._owners_changed = False
    dirty.clear()
