"""KVM/TDX: vCPUs, KVM's MMU caches, the S-EPT fault path, zap, and TD teardown.

Follows upstream KVM and the v6 series as restated in dpamt-model.md sections 6 to 8:

- ``kvm_mmu_topup_memory_cache`` (virt/kvm/kvm_main.c): no-op when the cache holds at least
  ``min``; otherwise fill to capacity 40; a failed allocation is tolerated when ``min`` is held.
  ``kvm_mmu_memory_cache_alloc`` pops the last object; an empty cache WARNs and falls back to a
  GFP_ATOMIC allocation (BUG_ON if that fails).
- ``mmu_topup_memory_caches`` (arch/x86/kvm/mmu/mmu.c) in the kernel's order: pte_list_desc,
  mmu_external_spt_cache, v6's ``topup_external_cache`` -> ``tdx_topup_pamt_cache``,
  mmu_shadow_page_cache, mmu_page_header_cache. The first failure ends the fault with -ENOMEM.
- ``tdx_handle_ept_violation`` (arch/x86/kvm/vmx/tdx.c) retries RET_PF_RETRY locally; each try
  walks the mirror page table under ``read_lock(mmu_lock)`` (``kvm_tdp_mmu_map``), links missing
  non-root S-EPT tables (freeze the entry, ``tdx_pamt_get`` on the table page, TDH.MEM.SEPT.ADD,
  unwind on error) and installs the 4 KiB leaf (``tdx_pamt_get`` on the guest page, TDH.MEM.PAGE.ADD
  while the TD is being built, TDH.MEM.PAGE.AUG once it runs; ``tdx_pamt_put`` on failure).
  The S-EPT root comes with the TD and takes no DPAMT get at fault time.
- Control pages (``tdx_alloc_control_page``: allocate, ``tdx_pamt_get(pfn, NULL)``), zap
  (``tdx_sept_remove_leaf_spte``: PAGE.REMOVE then ``tdx_pamt_put``), vCPU free
  (``tdx_free_pamt_cache``, then KVM's caches) and teardown in the kernel's order: leaves zapped
  and put, HKID released, S-EPT tables reclaimed, put and freed, control pages reclaimed, put and
  freed, caches freed.

Effects of KVM state (S-EPT entries, mappings, guest_memfd) are noted only for a recorded step
(``if m.record``): a bulk replay would build their key tuples millions of times for nothing.
"""

from __future__ import annotations

from typing import Final

import explorer.model.constants as C
import explorer.model.tdx_module as tdx
from explorer.model.dpamt import (
    EIO,
    ENOMEM,
    READ_UNLOCK_STEP,
    fill_pamt_cache,
    read_lock_mmu,
    read_unlock_mmu,
    tdx_free_pamt_cache,
    tdx_pamt_get,
    tdx_pamt_put,
    write_lock_mmu,
    write_unlock_mmu,
)
from explorer.model.events import (
    Event,
    Fault,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    VcpuFree,
    Zap,
)
from explorer.model.records import OWNERS
from explorer.model.state import (
    KernelState,
    KvmCache,
    Td,
    Thread,
    Vcpu,
)
from explorer.model.steps import (
    K_ALLOCS_ATOMIC,
    K_ALLOCS_UNDER_LOCK,
    K_FAULT_RETRIES,
    K_FAULTS,
    K_FAULTS_FAILED,
    K_FAULTS_SPURIOUS,
    K_KVM_CACHE_EMPTY,
    K_LIVELOCKS,
    K_PAGE_ADD,
    K_PAGE_AUG,
    K_PAGE_AUG_FAILED,
    K_PAGE_REMOVE,
    K_SEPT_ADD,
    K_SEPT_ADD_FAILED,
    K_ZAPS,
    O_CONTROL,
    O_GUEST,
    O_IN_HAND,
    O_KVM_CACHE,
    O_MIRROR,
    O_PAMT_CACHE,
    O_SEPT,
    KGen,
)

DONE: Final = 0
RETRY: Final = 1
ALIVE_TD_STATES: Final = ("created", "finalized", "bugged")


# ============================================================================ dispatch
def run_event(m: KernelState, th: Thread, idx: int, ev: Event) -> KGen:
    """The kernel entry point for one trace event (raises ImpossibleEvent before any change)."""
    if isinstance(ev, Fault):
        return tdx_handle_ept_violation(m, th, idx, ev)
    if isinstance(ev, Zap):
        return zap_private_page(m, th, idx, ev)
    if isinstance(ev, TdCreate):
        return tdx_td_create(m, th, idx, ev)
    if isinstance(ev, VcpuCreate):
        return tdx_vcpu_create(m, th, idx, ev)
    if isinstance(ev, TdFinalize):
        return tdx_td_finalize(m, th, idx, ev)
    if isinstance(ev, VcpuFree):
        return tdx_vcpu_free_event(m, th, idx, ev)
    if isinstance(ev, TdDestroy):
        return kvm_destroy_vm(m, th, idx, ev)
    raise m.impossible(ev, idx, f"op {ev.op!r} is not kernel work")


def _live_td(m: KernelState, ev: Event, idx: int, td_id: int) -> Td:
    td = m.tds.get(td_id)
    if td is None:
        raise m.impossible(ev, idx, f"unknown TD {td_id}", "a td_create for it earlier")
    if td.state not in ALIVE_TD_STATES:
        raise m.impossible(ev, idx, f"TD {td_id} is {td.state}")
    return td


# ============================================================================ KVM caches
def new_kvm_caches(m: KernelState) -> dict[str, KvmCache]:
    """The vCPU's MMU caches; ``worst_case_tables`` is the ``min`` of the page-table caches."""
    wct = m.settings.worst_case_tables
    return {
        "pte_list_desc": KvmCache("pte_list_desc", True, 1 + wct + C.PTE_PREFETCH_NUM),
        "external_spt": KvmCache("external_spt", False, wct),
        "shadow_page": KvmCache("shadow_page", False, wct),
        "page_header": KvmCache("page_header", True, wct),
    }


def kvm_mmu_topup_memory_cache(
    m: KernelState, th: Thread, vcpu: Vcpu, cache: KvmCache
) -> KGen | None:
    """Fill to capacity when below ``min``; tolerate a failure once ``min`` is held.

    A cache holding at least ``min`` objects needs nothing: that top-up is silent (no step, to
    keep faults short), so it returns None instead of a generator with nothing to run (every
    fault tops up four caches, nearly always for nothing)."""
    if cache.count >= cache.min:
        return None
    return _fill_kvm_cache(m, th, vcpu, cache)


def _fill_kvm_cache(m: KernelState, th: Thread, vcpu: Vcpu, cache: KvmCache) -> KGen:
    fn = "kvm_mmu_topup_memory_cache"
    old = cache.count
    while cache.count < cache.capacity:
        if cache.objects:  # slab objects: no host page, no injected failure
            cache.nobjs += 1
            continue
        install = m.mode == "v5-topup-install" and cache.name == "external_spt"
        pfn = m.alloc_page(th, O_IN_HAND if install else O_KVM_CACHE, sleeping=True)
        if pfn is None:
            break
        if install:
            # DPAMT installed when the S-EPT page is allocated (v5): a get per cached page.
            if (yield from tdx_pamt_get(m, th, pfn, None)):
                m.free_page(pfn)
                break
            m.mark_gotten(pfn, +1)
            m.set_owner(pfn, O_KVM_CACHE)
        cache.pfns.append(pfn)
    m.kvm_cache_changed(vcpu, cache, old)
    if cache.count < cache.min:
        yield (
            fn,
            "kvm_topup.fail",
            "{}: allocation failed at {}, below min {}: -ENOMEM",
            (cache.name, cache.count, cache.min),
        )
        return ENOMEM
    yield (
        fn,
        "kvm_topup.fill",
        "{}: {} < min {}: filled {} -> {} (capacity {})",
        (cache.name, old, cache.min, old, cache.count, cache.capacity),
    )
    return 0


def kvm_mmu_memory_cache_alloc(
    m: KernelState, th: Thread, vcpu: Vcpu, cache: KvmCache
) -> int | None:
    """Pop the last object; an empty cache WARNs and falls back to GFP_ATOMIC under the lock.

    Returns the pfn (page caches), 0 (object caches) or None when the atomic fallback failed
    (the kernel's BUG_ON, reported as an error diagnostic).
    """
    old = cache.count
    if cache.objects:
        if cache.nobjs:
            cache.nobjs -= 1
        else:
            m.count(K_KVM_CACHE_EMPTY)
            m.diag(
                "warning",
                "WARN_CACHE_EMPTY",
                f"vCPU {vcpu.id}: {cache.name} cache empty: GFP_ATOMIC fallback "
                "(the kernel's WARN_ON_ONCE in kvm_mmu_memory_cache_alloc)",
            )
            m.count(K_ALLOCS_ATOMIC)
            if th.holds:
                m.count(K_ALLOCS_UNDER_LOCK)
        m.kvm_cache_changed(vcpu, cache, old)
        return 0
    if cache.pfns:
        pfn = cache.pfns.pop()
        m.set_owner(pfn, O_IN_HAND)
        m.kvm_cache_changed(vcpu, cache, old)
        return pfn
    m.count(K_KVM_CACHE_EMPTY)
    m.diag(
        "warning",
        "WARN_CACHE_EMPTY",
        f"vCPU {vcpu.id}: {cache.name} cache empty: GFP_ATOMIC fallback "
        "(the kernel's WARN_ON_ONCE in kvm_mmu_memory_cache_alloc)",
    )
    got = m.alloc_page(th, O_IN_HAND, sleeping=False)
    if got is None:
        m.diag(
            "error",
            "BUG_ON",
            f"vCPU {vcpu.id}: GFP_ATOMIC fallback for {cache.name} failed (the kernel's BUG_ON "
            "in kvm_mmu_memory_cache_alloc: it would crash)",
        )
    if got is not None and m.mode == "v5-topup-install" and cache.name == "external_spt":
        m.diag(
            "warning",
            "V5_UNINSTALLED_SEPT_PAGE",
            f"{got:#x}: GFP_ATOMIC S-EPT page without DPAMT from top-up (the explorer's note "
            "on the v5 design)",
        )
    return got


def mmu_topup_memory_caches(m: KernelState, th: Thread, vcpu: Vcpu) -> KGen:
    """x86's ``mmu_topup_memory_caches`` in the kernel's order; the first failure aborts."""
    caches = vcpu.caches
    th.stack.append("mmu_topup_memory_caches")
    try:
        names = (
            ("pte_list_desc",) if m.mode == "v4-shared-list" else ("pte_list_desc", "external_spt")
        )
        for name in names:
            fill = kvm_mmu_topup_memory_cache(m, th, vcpu, caches[name])
            if fill is not None and (yield from fill):
                return ENOMEM
        if (yield from topup_external_cache(m, th, vcpu)):
            return ENOMEM
        for name in ("shadow_page", "page_header"):
            fill = kvm_mmu_topup_memory_cache(m, th, vcpu, caches[name])
            if fill is not None and (yield from fill):
                return ENOMEM
        return 0
    finally:
        th.stack.pop()


def topup_external_cache(m: KernelState, th: Thread, vcpu: Vcpu) -> KGen:
    """v6's ``topup_external_cache(vcpu, 5)`` -> ``tdx_topup_pamt_cache(cache, n)``; the
    strategies of dpamt-model.md section 11 replace it:

    - ``v5-topup-install``: S-EPT pages got their DPAMT at KVM's top-up; only the 4 KiB leaf
      needs pages here: ``tdx_topup_pamt_cache(cache, 1)``.
    - ``v4-shared-list``: one list for S-EPT pages and DPAMT pages: filled to
      ``worst_case_tables + 2 * n`` (5 + 2 x 5 = 15).
    - ``kvm-style-cache``: KVM's rule: nothing when at least ``2 * n`` are held, else fill to 40.
    - ``mempool``, ``atomic-under-lock``, ``sleeping-under-lock``: no top-up before the lock.
    """
    mode = m.mode
    if mode in ("mempool", "atomic-under-lock", "sleeping-under-lock"):
        return 0
    n = m.settings.dpamt_gets_per_fault
    th.stack.append("tdx_topup_pamt_cache")
    try:
        if mode == "v5-topup-install":
            return (yield from fill_pamt_cache(m, th, vcpu, 2, "tdx_topup_pamt_cache (2 x 1)"))
        if mode == "v4-shared-list":
            target = m.settings.worst_case_tables + 2 * n
            return (yield from fill_pamt_cache(m, th, vcpu, target, f"v4 shared list ({target})"))
        if mode == "kvm-style-cache":
            if len(vcpu.pamt_cache) >= 2 * n:
                return 0
            cap = C.KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE
            return (
                yield from fill_pamt_cache(m, th, vcpu, cap, f"KVM-style cache (fill to {cap})")
            )
        return (yield from fill_pamt_cache(m, th, vcpu, 2 * n, m.pamt_topup_what))
    finally:
        th.stack.pop()


def _put_cache_page(m: KernelState, th: Thread, pfn: int, softirq: bool) -> KGen:
    """v5-topup-install: a cached S-EPT page carries a DPAMT reference; dropping the page drops
    it (from an RCU callback, in softirq context, when KVM frees page tables)."""
    m.mark_gotten(pfn, -1)
    th.softirq = softirq
    try:
        yield from tdx_pamt_put(m, th, pfn)
    finally:
        th.softirq = False


def mmu_free_memory_caches(m: KernelState, th: Thread, vcpu: Vcpu) -> KGen:
    fn = "mmu_free_memory_caches"
    pages = 0
    for cache in vcpu.caches.values():
        old = cache.count
        while cache.pfns:
            pfn = cache.pfns.pop()
            if m.mode == "v5-topup-install" and cache.name == "external_spt":
                m.set_owner(pfn, O_IN_HAND)
                yield from _put_cache_page(m, th, pfn, softirq=False)
            m.free_page(pfn)
            pages += 1
        cache.nobjs = 0
        m.kvm_cache_changed(vcpu, cache, old)
    yield (
        fn,
        "kvm_caches.free",
        "mmu_free_memory_caches: {} cached pages to the page allocator",
        (pages,),
    )


# ============================================================================ fault path
def tdx_handle_ept_violation(m: KernelState, th: Thread, idx: int, ev: Fault) -> KGen:
    """An EPT violation on a private gfn, retried locally until it maps or gives up."""
    fn = "tdx_handle_ept_violation"
    gfn, given, level = ev.gfn, ev.pfn, ev.level  # (read once: events are Python objects)
    vcpu = m.vcpus.get(ev.vcpu)
    if vcpu is None or not vcpu.alive:
        what = "unknown" if vcpu is None else "freed"
        raise m.impossible(
            ev, idx, f"fault on {what} vCPU {ev.vcpu}", "a vcpu_create for it earlier"
        )
    td = _live_td(m, ev, idx, vcpu.td)
    limit = m.gfn_limit
    if gfn >= limit:
        raise m.impossible(
            ev,
            idx,
            f"gfn {gfn:#x} is beyond the reach of {m.settings.ept_levels}-level EPT",
            f"gfn < {limit:#x}",
        )
    bound = td.gmem.get(gfn)
    if given is not None:
        if given >= m.mem.total_pages:
            raise m.impossible(
                ev,
                idx,
                f"pfn {given:#x} is outside host memory ({m.mem.total_pages:#x} pages)",
                f"pfn < {m.mem.total_pages:#x}",
            )
        if bound is not None and bound != given:
            raise m.impossible(ev, idx, f"gfn {gfn:#x} is already backed by pfn {bound:#x}")
        if bound is None and not m.mem.is_free(given):
            raise m.impossible(
                ev,
                idx,
                f"pfn {given:#x} is not free (it is {OWNERS[m.mem.owner(given)]})",
                "a free pfn",
            )
    th.stack.append(fn)
    m.count(K_FAULTS)
    yield fn, "fault.begin", "EPT violation: vCPU {} gfn {:#x} ({})", (vcpu.id, gfn, level)
    if td.state == "bugged":
        m.count(K_FAULTS_FAILED)
        yield fn, "fault.vm_bugged", "the VM is bugged (KVM_BUG_ON earlier): -EIO", ()
        return
    attempt = 0
    while True:
        if (yield from mmu_topup_memory_caches(m, th, vcpu)):
            m.count(K_FAULTS_FAILED)
            yield (
                fn,
                "fault.enomem",
                "topping up the caches failed: -ENOMEM, the fault exits to userspace",
                (),
            )
            return
        # kvm_mmu_faultin_pfn(): the page comes from guest_memfd after the top-ups, as in
        # kvm_tdp_mmu_page_fault(); the invalidation sequence is read first (fault->mmu_seq),
        # so a zap that frees the page before this fault takes mmu_lock makes it stale
        mmu_seq = td.mmu_invalidate_seq
        pfn = td.gmem.get(gfn)
        if pfn is None and given is not None:  # the trace names the page guest_memfd holds
            pfn = given
            if not m.mem.is_free(pfn):  # another CPU of the batch was given it meanwhile
                m.count(K_FAULTS_FAILED)
                m.diag(
                    "error",
                    "FAULTIN_PFN_TAKEN",
                    f"pfn {pfn:#x}, the trace's page for gfn {gfn:#x}, was allocated by "
                    "another CPU of the batch before this fault reached kvm_mmu_faultin_pfn "
                    "(the explorer's report: give the pfn to an earlier event)",
                )
                yield (
                    "kvm_mmu_faultin_pfn",
                    "faultin.taken",
                    "pfn {:#x} is no longer free: -ENOMEM",
                    (pfn,),
                )
                return
            _gmem_bind(m, td, gfn, pfn)
            yield (
                "kvm_mmu_faultin_pfn",
                "faultin.given",
                "guest_memfd gives pfn {:#x} (region {}) for gfn {:#x} (the trace's page)",
                (pfn, pfn >> C.PAGES_PER_REGION_SHIFT, gfn),
            )
        elif pfn is None:
            pfn = m.alloc_page(th, O_GUEST, sleeping=True)
            if pfn is None:
                m.count(K_FAULTS_FAILED)
                yield (
                    "kvm_mmu_faultin_pfn",
                    "faultin.enomem",
                    "guest_memfd could not allocate a page: -ENOMEM",
                    (),
                )
                return
            _gmem_bind(m, td, gfn, pfn, owned=True)
            yield (
                "kvm_mmu_faultin_pfn",
                "faultin.alloc",
                "guest_memfd allocates pfn {:#x} (region {}) for gfn {:#x}",
                (pfn, pfn >> C.PAGES_PER_REGION_SHIFT, gfn),
            )
        ret = yield from kvm_tdp_mmu_map(m, th, vcpu, td, gfn, pfn, level, mmu_seq)
        if ret == DONE:
            return
        if ret != RETRY:
            m.count(K_FAULTS_FAILED)
            yield fn, "fault.eio", "the fault failed: -EIO", ()
            return
        attempt += 1
        m.count(K_FAULT_RETRIES)
        if attempt > m.max_retries:
            m.count(K_FAULTS_FAILED)
            m.count(K_LIVELOCKS)
            m.diag(
                "livelock",
                "LIVELOCK",
                f"vCPU {vcpu.id} gfn {gfn:#x}: still RET_PF_RETRY after {m.max_retries} "
                "retries (max_retries): the explorer's diagnostic, not the kernel's: "
                "tdx_handle_ept_violation() has no limit and prints nothing, the vCPU would "
                "spin until a signal or a pending event",
            )
            yield (
                fn,
                "fault.livelock",
                "gave up after {} retries: livelock (the kernel would spin until a signal)",
                (m.max_retries,),
            )
            return
        if td.state not in ALIVE_TD_STATES:
            m.count(K_FAULTS_FAILED)
            yield fn, "fault.eio", "the TD is being destroyed: -EIO", ()
            return
        yield (
            fn,
            "fault.retry",
            "RET_PF_RETRY: retry the fault locally (retry {}), topping up again",
            (attempt,),
        )


def _gmem_bind(m: KernelState, td: Td, gfn: int, pfn: int, owned: bool = False) -> None:
    if not owned:
        m.set_owner(pfn, O_GUEST)
    td.gmem[gfn] = pfn
    if m.record:
        m.note("gmem", (td.id, gfn), None, pfn)


def kvm_tdp_mmu_map(
    m: KernelState,
    th: Thread,
    vcpu: Vcpu,
    td: Td,
    gfn: int,
    pfn: int,
    level: str,
    mmu_seq: int,
) -> KGen:
    """One try: walk the mirror page table under read_lock(mmu_lock) from the root down, link
    the missing non-root tables, map the leaf.

    First, as ``kvm_tdp_mmu_page_fault()`` does once it holds the lock,
    ``is_page_fault_stale()``: if a zap ran since ``kvm_mmu_faultin_pfn()`` read ``mmu_seq``
    (``kvm->mmu_invalidate_seq`` moved), ``pfn`` may have gone back to the page allocator, and
    the try ends with RET_PF_RETRY before touching the page table."""
    fn = "kvm_tdp_mmu_map"
    th.stack.append(fn)
    try:
        yield from read_lock_mmu(m, th, fn, td)
        if td.state not in ALIVE_TD_STATES:
            read_unlock_mmu(m, th, td)
            yield READ_UNLOCK_STEP
            return EIO
        ret = DONE
        entries = td.entries
        if td.mmu_invalidate_seq != mmu_seq:  # (counted as a retry by the caller)
            yield (
                fn,
                "fault.stale",
                "is_page_fault_stale(): a zap ran since kvm_mmu_faultin_pfn gave pfn {:#x} "
                "for gfn {:#x} (mmu_invalidate_seq {} -> {}): RET_PF_RETRY",
                (pfn, gfn, mmu_seq, td.mmu_invalidate_seq),
            )
            ret = RETRY
        for k in range(m.ept_levels - 1, (1 if level == "4k" else 2) - 1, -1):
            if ret != DONE:
                break
            # k: the level of the table the walk needs next (the leaf sits in the level-1 or,
            # for a 2 MiB mapping, the level-2 table)
            key = (k, gfn >> (9 * k))
            entry = entries.get(key)
            if entry is not None and entry[0] == "present":
                continue
            if entry is not None:
                yield (
                    fn,
                    "walk.frozen",
                    "the entry for the level-{} table is frozen by {}: RET_PF_RETRY",
                    (k, entry[1]),
                )
                ret = RETRY
                break
            ret = yield from _link_table(m, th, vcpu, td, key)
            if ret != DONE:
                break
        if ret == DONE:
            ret = yield from _map_leaf(m, th, vcpu, td, gfn, pfn, level)
        read_unlock_mmu(m, th, td)
        yield READ_UNLOCK_STEP
        if ret == DONE:
            yield (
                "tdx_handle_ept_violation",
                "fault.done",
                "gfn {:#x} -> pfn {:#x}: fault resolved",
                (gfn, pfn),
            )
        return ret
    finally:
        th.stack.pop()


def _free_sp(m: KernelState, sp: int | None, spt: int | None) -> None:
    """``tdp_mmu_free_sp``: the shadow page and its S-EPT page go to the page allocator."""
    for p in (sp, spt):
        if p is not None:
            m.free_page(p)


def _link_table(m: KernelState, th: Thread, vcpu: Vcpu, td: Td, key: tuple[int, int]) -> KGen:
    fn = "kvm_tdp_mmu_map"
    k = key[0]
    caches = vcpu.caches
    kvm_mmu_memory_cache_alloc(m, th, vcpu, caches["page_header"])
    sp = kvm_mmu_memory_cache_alloc(m, th, vcpu, caches["shadow_page"])
    preinstalled = False
    if m.mode == "v4-shared-list":  # v4: S-EPT pages come from the same list as DPAMT pages
        spt = m.pamt_cache_pop(vcpu)
        if spt is None:
            spt = kvm_mmu_memory_cache_alloc(m, th, vcpu, caches["external_spt"])
    else:
        # v5-topup-install: a page from the cache already carries its DPAMT reference
        preinstalled = m.mode == "v5-topup-install" and bool(caches["external_spt"].pfns)
        spt = kvm_mmu_memory_cache_alloc(m, th, vcpu, caches["external_spt"])
    if sp is None or spt is None:
        _free_sp(m, sp, spt)
        yield fn, "tdp.alloc_bug", "GFP_ATOMIC fallback failed: BUG_ON (the kernel would crash)", ()
        return EIO
    yield (
        "tdp_mmu_alloc_sp",
        "tdp.alloc_sp",
        "level-{} table: shadow page {:#x} and S-EPT page {:#x} (region {}) from vCPU {}'s caches",
        (k, sp, spt, spt >> C.PAGES_PER_REGION_SHIFT, vcpu.id),
    )
    if key in td.entries:  # cmpxchg lost: another vCPU froze or linked it meanwhile
        if preinstalled:
            yield from _put_cache_page(m, th, spt, softirq=False)
        _free_sp(m, sp, spt)
        yield (
            fn,
            "tdp.freeze_lost",
            "another vCPU changed the level-{} entry first: free the shadow page, RET_PF_RETRY",
            (k,),
        )
        return RETRY
    td.entries[key] = ("frozen", th.name)
    if m.record:
        m.note("sept", (td.id, *key), "absent", "frozen")
    yield fn, "tdp.freeze", "freeze the entry for the level-{} table (FROZEN_SPTE)", (k,)
    th.stack.append("tdx_sept_map_nonleaf_spte")
    try:
        ret = 0 if preinstalled else (yield from tdx_pamt_get(m, th, spt, vcpu))
        if ret:
            del td.entries[key]
            if m.record:
                m.note("sept", (td.id, *key), "frozen", "absent")
            _free_sp(m, sp, spt)
            yield (
                fn,
                "tdp.unwind",
                "tdx_pamt_get failed ({}): restore the entry, free the shadow page, RET_PF_RETRY",
                (ret,),
            )
            return RETRY
        if not preinstalled:
            m.mark_gotten(spt, +1)
        if m.take_injection("sept_add_busy"):
            status = tdx.OPERAND_BUSY
        else:
            status = m.module.give_page(spt, tdx.K_SEPT)
        if status != tdx.SUCCESS:
            m.count(K_SEPT_ADD_FAILED)
            if status == tdx.MISSING_PAMT_PAGE_PAIR:
                m.diag("violation", "INV3_MISSING_PAIR", f"TDH.MEM.SEPT.ADD {spt:#x}: {status}")
            yield (
                "tdx_sept_map_nonleaf_spte",
                "sept.add_fail",
                "TDH.MEM.SEPT.ADD level {} table {:#x}: {}",
                (k, spt, status),
            )
            m.mark_gotten(spt, -1)
            yield from tdx_pamt_put(m, th, spt)
            del td.entries[key]
            if m.record:
                m.note("sept", (td.id, *key), "frozen", "absent")
            _free_sp(m, sp, spt)
            yield fn, "tdp.unwind", "restore the entry, free the shadow page: RET_PF_RETRY", ()
            return RETRY
        m.count(K_SEPT_ADD)
        m.set_owner(spt, O_SEPT)
        m.set_owner(sp, O_MIRROR)
        td.entries[key] = ("present", spt, sp)
        if m.record:
            m.note("sept", (td.id, *key), "frozen", "present")
        yield (
            "tdx_sept_map_nonleaf_spte",
            "sept.add",
            "TDH.MEM.SEPT.ADD level {} table {:#x}: TDX_SUCCESS, linked",
            (k, spt),
        )
        return DONE
    finally:
        th.stack.pop()


def _map_leaf(
    m: KernelState, th: Thread, vcpu: Vcpu, td: Td, gfn: int, pfn: int, level: str
) -> KGen:
    fn = "kvm_tdp_mmu_map"
    if level != "4k":
        td.state = "bugged"
        m.note("td", td.id, "running", "bugged")
        m.diag(
            "error",
            "KVM_BUG_ON",
            f"TD {td.id}: 2 MiB mapping of gfn {gfn:#x}: v6 supports 4 KiB only",
        )
        yield (
            "tdx_sept_map_leaf_spte",
            "leaf.kvm_bug",
            "KVM_BUG_ON(level != PG_LEVEL_4K): v6 maps 4 KiB only; the VM is bugged, -EIO",
            (),
        )
        return EIO
    if gfn in td.leaves:
        m.count(K_FAULTS_SPURIOUS)
        yield fn, "leaf.spurious", "gfn {:#x} is already mapped: spurious fault", (gfn,)
        return DONE
    if gfn in td.leaf_frozen:
        yield (
            fn,
            "leaf.frozen",
            "the leaf for gfn {:#x} is frozen by {}: RET_PF_RETRY",
            (gfn, td.leaf_frozen[gfn]),
        )
        return RETRY
    td.leaf_frozen[gfn] = th.name
    if m.record:
        m.note("leaf", (td.id, gfn), "absent", "frozen")
    yield fn, "leaf.freeze", "freeze the leaf entry for gfn {:#x}", (gfn,)
    fn2 = "tdx_sept_map_leaf_spte"
    th.stack.append(fn2)
    try:
        ret = yield from tdx_pamt_get(m, th, pfn, vcpu)
        if ret:
            del td.leaf_frozen[gfn]
            if m.record:
                m.note("leaf", (td.id, gfn), "frozen", "absent")
            yield (
                fn,
                "leaf.unwind",
                "tdx_pamt_get failed ({}): restore the leaf entry, RET_PF_RETRY",
                (ret,),
            )
            return RETRY
        m.mark_gotten(pfn, +1)
        aug = td.state == "finalized"
        call = "TDH.MEM.PAGE.AUG" if aug else "TDH.MEM.PAGE.ADD"
        if aug and m.take_injection("page_aug_busy"):
            status = tdx.OPERAND_BUSY
        else:
            status = m.module.give_page(pfn, tdx.K_GUEST)
        if status != tdx.SUCCESS:
            m.count(K_PAGE_AUG_FAILED)
            if status == tdx.MISSING_PAMT_PAGE_PAIR:
                m.diag("violation", "INV3_MISSING_PAIR", f"{call} {pfn:#x}: {status}")
            yield (
                fn2,
                "leaf.aug_fail",
                "{} gfn {:#x} -> pfn {:#x}: {}: tdx_pamt_put",
                (call, gfn, pfn, status),
            )
            m.mark_gotten(pfn, -1)
            yield from tdx_pamt_put(m, th, pfn)
            del td.leaf_frozen[gfn]
            if m.record:
                m.note("leaf", (td.id, gfn), "frozen", "absent")
            yield fn, "leaf.unwind", "restore the leaf entry: RET_PF_RETRY", ()
            return RETRY if status == tdx.OPERAND_BUSY else EIO
        del td.leaf_frozen[gfn]
        td.leaves[gfn] = pfn
        if m.record:
            m.note("leaf", (td.id, gfn), "frozen", pfn)
        m.count(K_PAGE_AUG if aug else K_PAGE_ADD)
        yield (
            fn2,
            "page.aug" if aug else "page.add",
            "{} gfn {:#x} -> pfn {:#x}: TDX_SUCCESS",
            (call, gfn, pfn),
        )
        return DONE
    finally:
        th.stack.pop()


# ============================================================================ zap
def zap_private_page(m: KernelState, th: Thread, idx: int, ev: Zap) -> KGen:
    """Zap one private page: PAGE.REMOVE under write_lock(mmu_lock), then ``tdx_pamt_put``."""
    td = _live_td(m, ev, idx, ev.td)
    if ev.gfn not in td.leaves:
        raise m.impossible(
            ev, idx, f"zap of gfn {ev.gfn:#x}, which TD {ev.td} has not mapped", "a mapped gfn"
        )
    fn = "tdx_sept_remove_leaf_spte"
    th.stack.append(fn)
    m.count(K_ZAPS)
    yield from write_lock_mmu(m, th, fn, td)
    pfn = td.leaves.get(ev.gfn)
    if pfn is None:
        yield fn, "zap.gone", "gfn {:#x} is no longer mapped: nothing to do", (ev.gfn,)
    else:
        yield from _zap_leaf(m, th, td, ev.gfn, pfn)
    # kvm_mmu_invalidate_end(): a fault that read guest_memfd before this point is now stale
    td.mmu_invalidate_seq += 1
    yield from write_unlock_mmu(m, th, fn, td)


def _zap_leaf(m: KernelState, th: Thread, td: Td, gfn: int, pfn: int) -> KGen:
    fn = "tdx_sept_remove_leaf_spte"
    yield fn, "zap.block", "TDH.MEM.RANGE.BLOCK + TDH.MEM.TRACK for gfn {:#x}, kick vCPUs", (gfn,)
    status = m.module.take_page(pfn)
    m.count(K_PAGE_REMOVE)
    del td.leaves[gfn]
    if m.record:
        m.note("leaf", (td.id, gfn), pfn, "absent")
    yield fn, "zap.page_remove", "TDH.MEM.PAGE.REMOVE gfn {:#x} pfn {:#x}: {}", (gfn, pfn, status)
    m.mark_gotten(pfn, -1)
    yield from tdx_pamt_put(m, th, pfn)
    del td.gmem[gfn]
    if m.record:
        m.note("gmem", (td.id, gfn), pfn, None)
    m.free_page(pfn)
    yield fn, "zap.free", "guest_memfd releases pfn {:#x} to the page allocator", (pfn,)


# ============================================================================ control pages
def tdx_alloc_control_page(m: KernelState, th: Thread) -> KGen:
    """``tdx_alloc_control_page``: allocate, then ``tdx_pamt_get(pfn, NULL)`` (pair from the
    page allocator: this runs outside spinlocks, so it may sleep)."""
    fn = "tdx_alloc_control_page"
    th.stack.append(fn)
    try:
        pfn = m.alloc_page(th, O_IN_HAND, sleeping=True)
        if pfn is None:
            yield fn, "control.enomem", "alloc_page failed: -ENOMEM", ()
            return None
        yield (
            fn,
            "control.alloc",
            "alloc_page(GFP_KERNEL_ACCOUNT) -> {:#x} (region {})",
            (pfn, pfn >> C.PAGES_PER_REGION_SHIFT),
        )
        ret = yield from tdx_pamt_get(m, th, pfn, None)
        if ret:
            m.free_page(pfn)
            yield fn, "control.get_fail", "tdx_pamt_get failed ({}): free {:#x}", (ret, pfn)
            return None
        m.mark_gotten(pfn, +1)
        return pfn
    finally:
        th.stack.pop()


def _give_control(m: KernelState, th: Thread, pfn: int, kind: str, call: str, fn: str) -> KGen:
    status = m.module.give_page(pfn, tdx.KIND_CODE[kind])
    if status != tdx.SUCCESS:
        if status == tdx.MISSING_PAMT_PAGE_PAIR:
            m.diag("violation", "INV3_MISSING_PAIR", f"{call} {pfn:#x}: {status}")
        yield fn, "control.seamcall_fail", "{} {} page {:#x}: {}", (call, kind.upper(), pfn, status)
        m.mark_gotten(pfn, -1)
        yield from tdx_pamt_put(m, th, pfn)
        m.free_page(pfn)
        return False
    m.set_owner(pfn, O_CONTROL)
    yield fn, "control.seamcall", "{} {} page {:#x}: TDX_SUCCESS", (call, kind.upper(), pfn)
    return True


def _add_control_pages(
    m: KernelState, th: Thread, out: list[tuple[int, str]], plan: list[tuple[str, str]], fn: str
) -> KGen:
    for kind, call in plan:
        pfn = yield from tdx_alloc_control_page(m, th)
        if pfn is None:
            return False
        if not (yield from _give_control(m, th, pfn, kind, call, fn)):
            return False
        out.append((pfn, kind))
    return True


def _reclaim_control(m: KernelState, th: Thread, pages: list[tuple[int, str]], fn: str) -> KGen:
    """``tdx_reclaim_control_page`` for each page, in the kernel's order: the TDCX (or TDCS)
    pages in index order, then the TDVPR (or TDR) page, which was added first and goes last.
    Each: TDH.PHYMEM.PAGE.RECLAIM (and its reset), then ``tdx_free_control_page``:
    ``tdx_pamt_put``, ``__free_page``."""
    order = pages[1:] + pages[:1]
    pages.clear()
    for pfn, kind in order:
        status = m.module.take_page(pfn)
        m.set_owner(pfn, O_IN_HAND)
        yield (
            fn,
            "control.reclaim",
            "TDH.PHYMEM.PAGE.RECLAIM {} page {:#x}: {}",
            (kind.upper(), pfn, status),
        )
        m.mark_gotten(pfn, -1)
        yield from tdx_pamt_put(m, th, pfn)
        m.free_page(pfn)
        yield fn, "control.free", "free {} page {:#x} to the page allocator", (kind.upper(), pfn)


def tdx_td_create(m: KernelState, th: Thread, idx: int, ev: TdCreate) -> KGen:
    """KVM_CREATE_VM + KVM_TDX_INIT_VM: TDR, HKID, TDCS pages (the S-EPT root is in the TDCS),
    and KVM's mirror root page."""
    if ev.td in m.tds:
        raise m.impossible(ev, idx, f"TD {ev.td} already exists", "a new TD id")
    fn = "tdx_td_init"
    th.stack.append(fn)
    td = m.tds[ev.td] = Td(ev.td)
    m.note("td", td.id, None, "creating")
    yield fn, "td.begin", "create TD {}: TDR, HKID, {} TDCS pages", (td.id, m.settings.tdcs_pages)
    ok = yield from _add_control_pages(m, th, td.control, [("tdr", "TDH.MNG.CREATE")], fn)
    if ok:
        td.hkid = m.next_hkid
        m.next_hkid += 1
        m.note("hkid", td.id, None, td.hkid)
        yield fn, "td.hkid", "TDH.MNG.KEY.CONFIG: TD {} gets HKID {}", (td.id, td.hkid)
        plan = [("tdcs", "TDH.MNG.ADDCX")] * m.settings.tdcs_pages
        ok = yield from _add_control_pages(m, th, td.control, plan, fn)
    if ok:
        root = m.alloc_page(th, O_MIRROR, sleeping=True)
        ok = root is not None
        if root is not None:
            td.mirror_root = root
            yield (
                "kvm_tdp_mmu_alloc_root",
                "td.mirror_root",
                "mirror root page {:#x} (the S-EPT root is a TDCS page: no DPAMT get at fault time)",
                (root,),
            )
    if not ok:
        m.diag(
            "error",
            "TD_CREATE_ENOMEM",
            f"TD {td.id}: creation failed (-ENOMEM); unwound (the explorer's report: the ioctl returns -ENOMEM)",
        )
        yield fn, "td.fail", "TD {} creation failed: -ENOMEM, unwind", (td.id,)
        td.hkid = None
        yield from _reclaim_control(m, th, td.control, fn)
        td.state = "failed"
        m.note("td", td.id, "creating", "failed")
        yield fn, "td.failed", "TD {} is gone", (td.id,)
        return
    td.state = "created"
    m.note("td", td.id, "creating", "created")
    yield (
        fn,
        "td.ready",
        "TDH.MNG.INIT: TD {} is being built (faults use TDH.MEM.PAGE.ADD)",
        (td.id,),
    )


def tdx_vcpu_create(m: KernelState, th: Thread, idx: int, ev: VcpuCreate) -> KGen:
    """KVM_CREATE_VCPU + KVM_TDX_INIT_VCPU: TDVPR + TDCX pages, an empty tdx_pamt_cache."""
    td = _live_td(m, ev, idx, ev.td)
    if ev.vcpu in m.vcpus:
        raise m.impossible(
            ev, idx, f"vCPU {ev.vcpu} already exists (ids are unique across TDs)", "a new vCPU id"
        )
    fn = "tdx_vcpu_create"
    th.stack.append(fn)
    vcpu = m.vcpus[ev.vcpu] = Vcpu(ev.vcpu, td.id)
    vcpu.caches = new_kvm_caches(m)
    td.vcpus.append(vcpu.id)
    m.note("vcpu", vcpu.id, None, f"td{td.id}")
    yield (
        fn,
        "vcpu.begin",
        "create vCPU {} in TD {}: TDVPR + {} TDCX pages; tdx_init_pamt_cache",
        (vcpu.id, td.id, m.settings.tdcx_pages),
    )
    plan = [("tdvpr", "TDH.VP.CREATE")] + [("tdcx", "TDH.VP.ADDCX")] * m.settings.tdcx_pages
    ok = yield from _add_control_pages(m, th, vcpu.control, plan, fn)
    if ok and m.mode == "mempool" and "mempool" not in m.extra:
        yield from _mempool_create(m, th)
    if not ok:
        m.diag(
            "error",
            "VCPU_CREATE_ENOMEM",
            f"vCPU {vcpu.id}: creation failed (-ENOMEM); unwound (the explorer's report: the ioctl returns -ENOMEM)",
        )
        yield from _reclaim_control(m, th, vcpu.control, fn)
        vcpu.alive = False
        td.vcpus.remove(vcpu.id)
        m.note("vcpu", vcpu.id, f"td{td.id}", "failed")
        yield fn, "vcpu.failed", "vCPU {} creation failed: -ENOMEM", (vcpu.id,)
        return
    yield fn, "vcpu.ready", "TDH.VP.INIT: vCPU {} ready", (vcpu.id,)


def _mempool_create(m: KernelState, th: Thread) -> KGen:
    """``mempool_create(min_nr = 2 * n)``: the reserve is filled once, then only refilled by
    frees (``mempool_free``), never topped up before a fault."""
    pool: list[int] = m.extra.setdefault("mempool", [])
    target = 2 * m.settings.dpamt_gets_per_fault
    while len(pool) < target:
        pfn = m.alloc_page(th, O_IN_HAND, sleeping=True)
        if pfn is None:
            break
        m.set_owner(pfn, O_PAMT_CACHE)
        pool.append(pfn)
    m.note("mempool", "reserve", 0, len(pool))
    yield (
        "mempool_create",
        "mempool.create",
        "mempool_create: reserve of {} pages (2 x {})",
        (len(pool), m.settings.dpamt_gets_per_fault),
    )


def tdx_td_finalize(m: KernelState, th: Thread, idx: int, ev: TdFinalize) -> KGen:
    td = _live_td(m, ev, idx, ev.td)
    if td.state != "created":
        raise m.impossible(
            ev, idx, f"TD {td.id} is {td.state}, not being built", "a TD being built"
        )
    td.state = "finalized"
    m.note("td", td.id, "created", "finalized")
    yield (
        "tdx_td_finalize",
        "td.finalize",
        "TDH.MR.FINALIZE: TD {} runs; later faults use TDH.MEM.PAGE.AUG",
        (td.id,),
    )


def tdx_vcpu_free_event(m: KernelState, th: Thread, idx: int, ev: VcpuFree) -> KGen:
    vcpu = m.vcpus.get(ev.vcpu)
    if vcpu is None or not vcpu.alive:
        raise m.impossible(
            ev,
            idx,
            f"vCPU {ev.vcpu} is {'unknown' if vcpu is None else 'already freed'}",
            "a live vCPU",
        )
    yield from tdx_vcpu_free(m, th, vcpu)


def tdx_vcpu_free(m: KernelState, th: Thread, vcpu: Vcpu) -> KGen:
    """``kvm_arch_vcpu_destroy``: ``tdx_vcpu_free`` (v6: ``tdx_free_pamt_cache`` first; the
    TDCX pages, then the TDVPR, only once the TD's HKID is released: at teardown), then
    ``kvm_mmu_destroy`` -> ``mmu_free_memory_caches`` (KVM's own caches). A trace's
    ``vcpu_free`` runs it while the TD still holds its HKID: the control pages then wait for
    the TD's teardown, which reclaims them in this vCPU's turn."""
    fn = "tdx_vcpu_free"
    th.stack.append(fn)
    try:
        td = m.tds.get(vcpu.td)
        hkid_released = td is not None and td.hkid is None
        if vcpu.alive:
            yield from tdx_free_pamt_cache(m, th, vcpu)
        if hkid_released and vcpu.control:
            yield from _reclaim_control(m, th, vcpu.control, fn)
        if not vcpu.alive:
            return
        yield from mmu_free_memory_caches(m, th, vcpu)
        vcpu.alive = False
        m.note("vcpu", vcpu.id, f"td{vcpu.td}", "freed")
        if vcpu.control:
            yield (
                fn,
                "vcpu.freed",
                "vCPU {} freed; its {} control pages wait for the TD's teardown (HKID still assigned)",
                (vcpu.id, len(vcpu.control)),
            )
        else:
            yield fn, "vcpu.freed", "vCPU {} freed", (vcpu.id,)
    finally:
        th.stack.pop()


def kvm_destroy_vm(m: KernelState, th: Thread, idx: int, ev: TdDestroy) -> KGen:
    """TD teardown in the order of the kernel v6 is based on (docs/engine.md, "Teardown"):

    1. the guest's private pages are removed (PAGE.REMOVE, ``tdx_pamt_put``) while the TD
       still holds its HKID (``tdx_sept_remove_leaf_spte``: "HKID is released after all
       private pages have been removed");
    2. ``kvm_arch_pre_destroy_vm`` -> ``tdx_mmu_release_hkid``: the HKID is released;
    3. ``kvm_destroy_vcpus``, each vCPU: ``tdx_vcpu_free`` (``tdx_free_pamt_cache``, TDCX
       pages, TDVPR) then ``kvm_mmu_destroy`` (KVM's caches);
    4. ``kvm_mmu_uninit_vm`` -> ``kvm_mmu_uninit_tdp_mmu``: the mirror root and every S-EPT
       table, each through ``tdx_sept_free_private_spt`` (reclaim, ``tdx_pamt_put``, freed at
       once, not from an RCU callback);
    5. ``vm_destroy`` -> ``tdx_vm_destroy``: the TDCS pages, then the TDR.

    With an injected PAMT.REMOVE failure, which region leaks depends on this order.
    """
    td = m.tds.get(ev.td)
    if td is None or td.state in ("destroyed", "destroying", "failed", "creating"):
        what = "unknown" if td is None else td.state
        raise m.impossible(ev, idx, f"TD {ev.td} is {what}", "a live TD")
    fn = "kvm_destroy_vm"
    th.stack.append(fn)
    old_state = td.state
    td.state = "destroying"
    m.note("td", td.id, old_state, "destroying")
    yield (
        fn,
        "td.destroy",
        "destroy TD {}: {} mapped pages, {} S-EPT tables",
        (td.id, len(td.leaves), len(td.entries)),
    )
    # 1. private pages removed and put (mmu_lock held for write), the HKID still assigned
    yield from write_lock_mmu(m, th, fn, td)
    for gfn in sorted(td.leaves):
        yield from _zap_leaf(m, th, td, gfn, td.leaves[gfn])
    yield from write_unlock_mmu(m, th, fn, td)
    # 2. the HKID released
    m.note("hkid", td.id, td.hkid, None)
    yield (
        "tdx_mmu_release_hkid",
        "td.hkid_release",
        "TDH.PHYMEM.CACHE.WB + TDH.MNG.KEY.FREEID: HKID {} released",
        (td.hkid,),
    )
    td.hkid = None
    # 3. the vCPUs: DPAMT cache, TDCX and TDVPR pages, KVM's caches
    for vid in td.vcpus:
        yield from tdx_vcpu_free(m, th, m.vcpus[vid])
    # 4. the S-EPT tables and their mirror pages, then the mirror root
    for key in sorted(td.entries, key=lambda k: (k[0], k[1])):
        entry = td.entries.pop(key)
        if entry[0] != "present":
            continue
        spt, sp = entry[1], entry[2]
        status = m.module.take_page(spt)
        m.set_owner(spt, O_IN_HAND)
        if m.record:
            m.note("sept", (td.id, *key), "present", "absent")
        yield (
            "tdx_sept_free_private_spt",
            "sept.reclaim",
            "TDH.PHYMEM.PAGE.RECLAIM level-{} S-EPT table {:#x}: {}",
            (key[0], spt, status),
        )
        if m.mode == "v5-topup-install":  # freed through call_rcu(): put in softirq context
            yield from _put_cache_page(m, th, spt, softirq=True)
        else:
            m.mark_gotten(spt, -1)
            yield from tdx_pamt_put(m, th, spt)
        m.free_page(spt)
        m.free_page(sp)
        yield (
            "tdx_sept_free_private_spt",
            "sept.free",
            "free S-EPT page {:#x} and its mirror page {:#x}",
            (spt, sp),
        )
    if td.mirror_root is not None:
        m.free_page(td.mirror_root)
        td.mirror_root = None
    # 5. the TD's control pages: TDCS, then TDR (last)
    yield from _reclaim_control(m, th, td.control, "tdx_vm_destroy")
    for gfn in sorted(td.gmem):
        pfn = td.gmem[gfn]
        del td.gmem[gfn]
        m.free_page(pfn)
    td.state = "destroyed"
    m.note("td", td.id, "destroying", "destroyed")
    yield fn, "td.destroyed", "TD {} destroyed: mirror root and guest_memfd pages freed", (td.id,)
