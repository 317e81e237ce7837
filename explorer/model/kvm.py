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
- ``kvm_mmu_faultin_pfn`` (mmu.c) samples ``mmu_invalidate_seq`` and checks
  ``mmu_invalidate_retry_gfn_unsafe`` before and after asking guest_memfd for the page: an
  invalidation covering the gfn ends the try with RET_PF_RETRY without taking ``mmu_lock``;
  ``is_page_fault_stale`` under ``mmu_lock`` is the last check.
- Control pages (``tdx_alloc_control_page``: allocate, ``tdx_pamt_get(pfn, NULL)``); a zap is a
  guest_memfd punch hole (``kvm_gmem_punch_hole``: invalidate begin and PAGE.REMOVE +
  ``tdx_pamt_put`` under write ``mmu_lock``, the page freed by truncation outside it, then
  invalidate end bumping the sequence); vCPU free (``tdx_free_pamt_cache``, then either the
  control pages or, with the HKID still held, an early return that leaks them; then KVM's
  caches); teardown by function in the order of mainline since 6.15 (:func:`kvm_destroy_vm`).

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
    vcpu_thread,
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
#: ``INVALID_GPA``: the range of an invalidation that has added none yet
INVALID_GFN: Final = -1


# ============================================================================ invalidations
def _invalidation_key(td: Td) -> str:
    return f"mmu_invalidate/td{td.id}"


def mmu_invalidation(m: KernelState, td: Td) -> tuple[int, int, int]:
    """``kvm->mmu_invalidate_in_progress`` and ``mmu_invalidate_range_start/_end`` of a TD's VM.

    Kept in ``m.extra`` (one immutable tuple per TD, present only while an invalidation is in
    progress) rather than in :class:`Td`: checkpoints, snapshots and the explorer's state hash
    already carry ``extra``, and between batches no invalidation is ever open, so a checkpoint
    holds none."""
    if m.fp_on:
        m.fp_read(("inval", td.id))
    got: tuple[int, int, int] | None = m.extra.get(_invalidation_key(td))
    return got if got is not None else (0, INVALID_GFN, INVALID_GFN)


def kvm_mmu_invalidate_begin(m: KernelState, td: Td, start: int, end: int) -> tuple[int, int]:
    """``kvm_mmu_invalidate_begin`` then ``kvm_mmu_invalidate_range_add`` (virt/kvm/kvm_main.c,
    both under write ``mmu_lock``): ``mmu_invalidate_in_progress++`` (the first one resets the
    range to ``INVALID_GPA``), then the range grows to cover ``[start, end)``. The sequence is
    not bumped here: ``kvm_mmu_invalidate_end`` does that. Returns the old and new count."""
    if m.fp_on:
        m.fp_write(("inval", td.id))
    n, lo, hi = mmu_invalidation(m, td)
    if n == 0:
        lo = hi = INVALID_GFN
    if lo == INVALID_GFN:
        lo, hi = start, end
    else:
        lo, hi = min(lo, start), max(hi, end)
    m.extra[_invalidation_key(td)] = (n + 1, lo, hi)
    return n, n + 1


def kvm_mmu_invalidate_end(m: KernelState, td: Td) -> tuple[int, int]:
    """``kvm_mmu_invalidate_end`` (virt/kvm/kvm_main.c, write ``mmu_lock`` held):
    ``mmu_invalidate_seq++``, then ``mmu_invalidate_in_progress--``. A fault that sampled the
    sequence before this point is stale from here on, whatever its gfn. Returns the old and
    new sequence."""
    if m.fp_on:
        m.fp_write(("inval", td.id))
    n, lo, hi = mmu_invalidation(m, td)
    key = _invalidation_key(td)
    if n <= 1:
        m.extra.pop(key, None)
    else:
        m.extra[key] = (n - 1, lo, hi)
    old = td.mmu_invalidate_seq
    td.mmu_invalidate_seq = old + 1
    return old, old + 1


def mmu_invalidate_retry_gfn(m: KernelState, td: Td, mmu_seq: int, gfn: int) -> str | None:
    """Why a fault that sampled ``mmu_seq`` must retry, or None: an invalidation in progress
    whose range covers ``gfn``, or the sequence moved since the sample.

    The test of ``mmu_invalidate_retry_gfn_unsafe`` (include/linux/kvm_host.h: the lockless
    pre-checks ``kvm_mmu_faultin_pfn`` makes, added by "KVM: x86/mmu: Retry fault before
    acquiring mmu_lock if mapping is changing") and of ``mmu_invalidate_retry_gfn`` (the same,
    under ``mmu_lock``, from ``is_page_fault_stale``). The engine's memory is sequentially
    consistent, so the lockless copy never sees stale values: the two agree."""
    if m.fp_on:  # (``not m.extra`` only skips lookups: the answer is this TD's state alone)
        m.fp_read(("inval", td.id))
    if not m.extra:  # (the usual case: no invalidation open anywhere, no design state)
        if td.mmu_invalidate_seq != mmu_seq:
            return f"mmu_invalidate_seq moved {mmu_seq} -> {td.mmu_invalidate_seq}"
        return None
    n, lo, hi = mmu_invalidation(m, td)
    if n and lo <= gfn < hi:
        return f"an invalidation of [{lo:#x}, {hi:#x}) is in progress"
    if td.mmu_invalidate_seq != mmu_seq:
        return f"mmu_invalidate_seq moved {mmu_seq} -> {td.mmu_invalidate_seq}"
    return None


# ============================================================================ dispatch
def run_event(m: KernelState, th: Thread, idx: int, ev: Event) -> KGen:
    """The kernel entry point for one trace event (raises ImpossibleEvent before any change)."""
    if isinstance(ev, Fault):
        return tdx_handle_ept_violation(m, th, idx, ev)
    if isinstance(ev, Zap):
        return kvm_gmem_punch_hole(m, th, idx, ev)
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
    if cache.objects:  # slab objects: no host page, no injected failure
        cache.nobjs = max(cache.nobjs, cache.capacity)
    elif m.mode != "v5-topup-install" or cache.name != "external_spt":
        # the loop's allocations at once (the same pages, in order; it stops at a failure)
        cache.pfns.extend(m.alloc_pages(th, O_KVM_CACHE, cache.capacity - cache.count))
    else:
        # DPAMT installed when the S-EPT page is allocated (v5): a get per cached page
        while cache.count < cache.capacity:
            pfn = m.alloc_page(th, O_IN_HAND, sleeping=True)
            if pfn is None:
                break
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
    if m.fp_on:
        m.fp_read(("tdstate", td.id))
        m.fp_read(("gmem", td.id, gfn))
        if given is not None:
            m.fp_read(("page", given))
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
    check_pins(m, ev, idx, "tables", ev.tables)
    th.stack.append(fn)
    m.count(K_FAULTS)
    yield fn, "fault.begin", "EPT violation: vCPU {} gfn {:#x} ({})", (vcpu.id, gfn, level)
    if m.fp_on:
        m.fp_read(("tdstate", td.id))
    if td.state == "bugged":
        m.count(K_FAULTS_FAILED)
        yield fn, "fault.vm_bugged", "the VM is bugged (KVM_BUG_ON earlier): -EIO", ()
        return
    # the capture's S-EPT table pages, last first (popped as the tables are linked)
    pins = list(reversed(ev.tables)) if ev.tables else None
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
        # kvm_mmu_faultin_pfn(): fault->mmu_seq first, then a lockless pre-check before
        # guest_memfd is asked for the page, and another after (both RET_PF_RETRY without
        # taking mmu_lock); is_page_fault_stale() under mmu_lock is the last check
        if m.fp_on:
            m.fp_read(("inval", td.id))
        mmu_seq = td.mmu_invalidate_seq
        why = mmu_invalidate_retry_gfn(m, td, mmu_seq, gfn)
        if why is not None:
            yield (
                "kvm_mmu_faultin_pfn",
                "faultin.retry_early",
                "mmu_invalidate_retry_gfn_unsafe(gfn {:#x}): {}: RET_PF_RETRY before "
                "guest_memfd, without taking mmu_lock",
                (gfn, why),
            )
            ret = RETRY
        else:
            got = yield from _kvm_gmem_get_pfn(m, th, td, gfn, given)
            if got is None:
                return
            pfn = got
            why = mmu_invalidate_retry_gfn(m, td, mmu_seq, gfn)
            if why is not None:
                yield (
                    "kvm_mmu_faultin_pfn",
                    "faultin.retry_late",
                    "mmu_invalidate_retry_gfn_unsafe(gfn {:#x}) after kvm_gmem_get_pfn: {}: "
                    "kvm_mmu_finish_page_fault() puts pfn {:#x}, RET_PF_RETRY without mmu_lock",
                    (gfn, why, pfn),
                )
                ret = RETRY
            else:
                ret = yield from kvm_tdp_mmu_map(
                    m, th, vcpu, td, gfn, pfn, level, mmu_seq, (ev, idx, pins)
                )
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
        if m.fp_on:
            m.fp_read(("tdstate", td.id))
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


def _kvm_gmem_get_pfn(m: KernelState, th: Thread, td: Td, gfn: int, given: int | None) -> KGen:
    """``__kvm_mmu_faultin_pfn`` -> ``kvm_gmem_get_pfn`` (virt/kvm/guest_memfd.c): the page
    guest_memfd holds for ``gfn``, allocated on first touch (``__filemap_get_folio`` with
    FGP_CREAT; no filemap invalidate lock is taken, so a punch hole does not block it: the
    pre-checks around it keep a fault off a gfn being invalidated). A trace's ``pfn`` names the
    page. Returns the pfn, or None when the fault failed (counted and narrated)."""
    if m.fp_on:
        m.fp_read(("gmem", td.id, gfn))
        if given is not None:
            m.fp_read(("page", given))
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
            return None
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
            return None
        _gmem_bind(m, td, gfn, pfn, owned=True)
        yield (
            "kvm_mmu_faultin_pfn",
            "faultin.alloc",
            "guest_memfd allocates pfn {:#x} (region {}) for gfn {:#x}",
            (pfn, pfn >> C.PAGES_PER_REGION_SHIFT, gfn),
        )
    return pfn


def _gmem_bind(m: KernelState, td: Td, gfn: int, pfn: int, owned: bool = False) -> None:
    if m.fp_on:
        m.fp_write(("gmem", td.id, gfn))
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
    pinned: tuple[Fault, int, list[int] | None] | None = None,
) -> KGen:
    """One try: walk the mirror page table under read_lock(mmu_lock) from the root down, link
    the missing non-root tables, map the leaf.

    First, as ``kvm_tdp_mmu_page_fault()`` does once it holds the lock,
    ``is_page_fault_stale()`` -> ``mmu_invalidate_retry_gfn()``, the last of the three checks
    (the two lockless ones are in ``kvm_mmu_faultin_pfn``): an invalidation covering ``gfn`` in
    progress, or one that ended since ``mmu_seq`` was sampled (``kvm->mmu_invalidate_seq``
    moved, whatever gfn it covered), means ``pfn`` may be going back to the page allocator, and
    the try ends with RET_PF_RETRY before touching the page table."""
    fn = "kvm_tdp_mmu_map"
    th.stack.append(fn)
    try:
        yield from read_lock_mmu(m, th, fn, td)
        if m.fp_on:
            m.fp_read(("tdstate", td.id))
        if td.state not in ALIVE_TD_STATES:
            read_unlock_mmu(m, th, td)
            yield READ_UNLOCK_STEP
            return EIO
        ret = DONE
        entries = td.entries
        why = mmu_invalidate_retry_gfn(m, td, mmu_seq, gfn)
        if why is not None:  # (counted as a retry by the caller)
            yield (
                fn,
                "fault.stale",
                "is_page_fault_stale() -> mmu_invalidate_retry_gfn(gfn {:#x}) under mmu_lock: "
                "{} since kvm_mmu_faultin_pfn gave pfn {:#x}: RET_PF_RETRY",
                (gfn, why, pfn),
            )
            ret = RETRY
        for k in range(m.ept_levels - 1, (1 if level == "4k" else 2) - 1, -1):
            if ret != DONE:
                break
            # k: the level of the table the walk needs next (the leaf sits in the level-1 or,
            # for a 2 MiB mapping, the level-2 table)
            key = (k, gfn >> (9 * k))
            if m.fp_on:
                m.fp_read(("sept", td.id, *key))
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
            ret = yield from _link_table(m, th, vcpu, td, key, pinned)
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


def _fp_give(m: KernelState, pfn: int) -> None:
    """The footprint of a SEAMCALL that gives the module a page (SEPT.ADD, PAGE.AUG/ADD): the
    page's use, its region's pair (checked: TDX_MISSING_PAMT_PAGE_PAIR), its region's count of
    pages in TD use (an addition)."""
    region = pfn >> C.PAGES_PER_REGION_SHIFT
    m.fp_write(("page", pfn))
    m.fp_read(("Rp", region))
    m.fp_add(("used", region))


def _free_sp(m: KernelState, sp: int | None, spt: int | None) -> None:
    """``tdp_mmu_free_sp``: the shadow page and its S-EPT page go to the page allocator."""
    for p in (sp, spt):
        if p is not None:
            m.free_page(p)


def check_pins(
    m: KernelState, ev: Event, idx: int, field: str, pfns: tuple[int, ...] | None
) -> None:
    """Before an event changes anything: every page it pins in ``field`` is in host memory,
    free and named once (the replay stops at the event, the state before it stays viewable)."""
    if pfns is None:
        return
    if len(set(pfns)) != len(pfns):
        raise m.impossible(ev, idx, f"{ev.op} {field}: a pfn is named twice", "distinct pfns")
    for i, pfn in enumerate(pfns):
        _check_pin(m, ev, idx, f"{field}[{i}]", pfn)


def _check_pin(m: KernelState, ev: Event, idx: int, field: str, pfn: int) -> None:
    if not 0 <= pfn < m.mem.total_pages:
        raise m.impossible(
            ev,
            idx,
            f"{ev.op} {field}: pfn {pfn:#x} is outside host memory ({m.mem.total_pages:#x} pages)",
            f"pfn < {m.mem.total_pages:#x}",
        )
    if not m.mem.is_free(pfn):
        raise m.impossible(
            ev,
            idx,
            f"{ev.op} {field}: pfn {pfn:#x} is already in use (it is {OWNERS[m.mem.owner(pfn)]})",
            "a free pfn",
        )


def take_pinned(m: KernelState, ev: Event, idx: int, field: str, pfn: int) -> None:
    """Check the page an event pins (``field`` names it, e.g. ``tables[1]``) and take it: it
    must be in host memory and free (the allocator never hands out a pinned page:
    ``HostMemory.pin``; a page some other path still holds cannot be the kernel's choice)."""
    _check_pin(m, ev, idx, field, pfn)
    m.set_owner(pfn, O_IN_HAND)


def _link_table(
    m: KernelState,
    th: Thread,
    vcpu: Vcpu,
    td: Td,
    key: tuple[int, int],
    pinned: tuple[Fault, int, list[int] | None] | None = None,
) -> KGen:
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
    pins = pinned[2] if pinned is not None and not preinstalled else None
    if pins and spt is not None and pinned is not None:
        # the capture names the table page: the cache's page goes back to the page allocator
        want = pins.pop()
        if want != spt:
            tables = pinned[0].tables or ()
            take_pinned(m, pinned[0], pinned[1], f"tables[{len(tables) - len(pins) - 1}]", want)
            m.free_page(spt)
            spt = want
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
    if m.fp_on:  # the cmpxchg on the entry (the walk read it in an earlier step)
        m.fp_write(("sept", td.id, *key))
    if key in td.entries:  # cmpxchg lost: another vCPU froze or linked it meanwhile
        if preinstalled:
            yield from _put_cache_page(m, th, spt, softirq=False)
        _free_sp(m, sp, spt)
        if pins is not None and m.mem.is_pinned(spt):
            pins.append(spt)  # no get on it: the next table this fault links takes it
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
            if m.fp_on:
                m.fp_write(("sept", td.id, *key))
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
            if m.fp_on:
                _fp_give(m, spt)
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
            if m.fp_on:
                m.fp_write(("sept", td.id, *key))
            del td.entries[key]
            if m.record:
                m.note("sept", (td.id, *key), "frozen", "absent")
            _free_sp(m, sp, spt)
            yield fn, "tdp.unwind", "restore the entry, free the shadow page: RET_PF_RETRY", ()
            return RETRY
        m.count(K_SEPT_ADD)
        m.set_owner(spt, O_SEPT)
        m.set_owner(sp, O_MIRROR)
        if m.fp_on:
            m.fp_write(("sept", td.id, *key))
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
        if m.fp_on:
            m.fp_write(("tdstate", td.id))
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
    if m.fp_on:  # the leaf SPTE (mapped, or frozen by a CPU installing it)
        m.fp_read(("leaf", td.id, gfn))
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
    if m.fp_on:
        m.fp_write(("leaf", td.id, gfn))
    td.leaf_frozen[gfn] = th.name
    if m.record:
        m.note("leaf", (td.id, gfn), "absent", "frozen")
    yield fn, "leaf.freeze", "freeze the leaf entry for gfn {:#x}", (gfn,)
    fn2 = "tdx_sept_map_leaf_spte"
    th.stack.append(fn2)
    try:
        ret = yield from tdx_pamt_get(m, th, pfn, vcpu)
        if ret:
            if m.fp_on:
                m.fp_write(("leaf", td.id, gfn))
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
            if m.fp_on:
                _fp_give(m, pfn)
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
            if m.fp_on:
                m.fp_write(("leaf", td.id, gfn))
            del td.leaf_frozen[gfn]
            if m.record:
                m.note("leaf", (td.id, gfn), "frozen", "absent")
            yield fn, "leaf.unwind", "restore the leaf entry: RET_PF_RETRY", ()
            return RETRY if status == tdx.OPERAND_BUSY else EIO
        if m.fp_on:
            m.fp_write(("leaf", td.id, gfn))
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
def kvm_gmem_punch_hole(m: KernelState, th: Thread, idx: int, ev: Zap) -> KGen:
    """A trace's ``zap``: ``fallocate(PUNCH_HOLE)`` of one page of the TD's guest_memfd,
    ``kvm_gmem_punch_hole`` (virt/kvm/guest_memfd.c) in its three parts:

    1. ``kvm_gmem_invalidate_begin`` -> ``__kvm_gmem_invalidate_begin``, under write
       ``mmu_lock``: ``kvm_mmu_invalidate_begin`` + ``kvm_mmu_invalidate_range_add`` (from
       ``kvm_mmu_unmap_gfn_range``), then the zap of the mirror leaf: TDX's
       ``tdx_sept_remove_leaf_spte`` (BLOCK, TRACK, PAGE.REMOVE, and v6 09/11's
       ``tdx_pamt_put`` after the page is reset). ``mmu_lock`` is then dropped with the
       invalidation still in progress.
    2. ``truncate_inode_pages_range``: guest_memfd drops the folio, which goes back to the page
       allocator, outside ``mmu_lock``.
    3. ``kvm_gmem_invalidate_end`` -> ``__kvm_gmem_invalidate_end``, under write ``mmu_lock``:
       ``kvm_mmu_invalidate_end`` bumps ``mmu_invalidate_seq``.

    Between 1 and 3 a fault on another gfn may take ``mmu_lock`` and map; a fault on this gfn
    retries in ``kvm_mmu_faultin_pfn`` without taking it. ``filemap_invalidate_lock``, which
    serialises punch holes of one file, is not modelled: two zaps of one TD in one batch nest
    (``mmu_invalidate_in_progress`` 2) as an MMU-notifier invalidation and a punch hole can."""
    td = _live_td(m, ev, idx, ev.td)
    if m.fp_on:
        m.fp_read(("tdstate", td.id))
        m.fp_read(("leaf", td.id, ev.gfn))
    if ev.gfn not in td.leaves:
        raise m.impossible(
            ev, idx, f"zap of gfn {ev.gfn:#x}, which TD {ev.td} has not mapped", "a mapped gfn"
        )
    gfn = ev.gfn
    th.stack.append("kvm_gmem_punch_hole")
    m.count(K_ZAPS)
    fn = "__kvm_gmem_invalidate_begin"
    yield from write_lock_mmu(m, th, fn, td)
    was, now = kvm_mmu_invalidate_begin(m, td, gfn, gfn + 1)
    _, lo, hi = mmu_invalidation(m, td)
    yield (
        fn,
        "invalidate.begin",
        "kvm_mmu_invalidate_begin(): mmu_invalidate_in_progress {} -> {}, range [{:#x}, {:#x}): "
        "faults on it now retry before mmu_lock",
        (was, now, lo, hi),
    )
    if m.fp_on:
        m.fp_read(("leaf", td.id, gfn))
    pfn = td.leaves.get(gfn)
    if pfn is None:
        yield fn, "zap.gone", "gfn {:#x} is no longer mapped: nothing to unmap", (gfn,)
    else:
        yield from _remove_leaf(m, th, td, gfn, pfn)
    yield from write_unlock_mmu(m, th, fn, td)
    fn = "kvm_gmem_punch_hole"
    if m.fp_on:
        m.fp_write(("gmem", td.id, gfn))
    held = td.gmem.get(gfn)
    if held is not None:
        del td.gmem[gfn]
        if m.record:
            m.note("gmem", (td.id, gfn), held, None)
        m.free_page(held)
        yield (
            fn,
            "gmem.truncate",
            "truncate_inode_pages_range(): guest_memfd drops pfn {:#x} (gfn {:#x}) to the page "
            "allocator, mmu_lock not held, the invalidation still in progress",
            (held, gfn),
        )
    else:
        yield (
            fn,
            "gmem.truncate",
            "truncate_inode_pages_range(): guest_memfd holds no page for gfn {:#x} any more",
            (gfn,),
        )
    fn = "__kvm_gmem_invalidate_end"
    yield from write_lock_mmu(m, th, fn, td)
    old, new = kvm_mmu_invalidate_end(m, td)
    yield (
        fn,
        "invalidate.end",
        "kvm_mmu_invalidate_end(): mmu_invalidate_seq {} -> {}, in_progress {} -> {}: faults "
        "that sampled the old sequence are stale",
        (old, new, now, now - 1),
    )
    yield from write_unlock_mmu(m, th, fn, td)


def _remove_leaf(m: KernelState, th: Thread, td: Td, gfn: int, pfn: int) -> KGen:
    """``tdx_sept_remove_leaf_spte`` under write ``mmu_lock``: TDH.MEM.RANGE.BLOCK,
    ``tdx_track`` (TDH.MEM.TRACK and a kick), TDH.MEM.PAGE.REMOVE, the page reset, then v6
    09/11's ``tdx_pamt_put(pfn)``. KVM does not free the page: guest_memfd owns it."""
    fn = "tdx_sept_remove_leaf_spte"
    if m.fp_on:
        m.fp_write(("page", pfn))
        m.fp_add(("used", pfn >> C.PAGES_PER_REGION_SHIFT))
        m.fp_write(("leaf", td.id, gfn))
    status = m.module.take_page(pfn)
    m.count(K_PAGE_REMOVE)
    del td.leaves[gfn]
    if m.record:
        m.note("leaf", (td.id, gfn), pfn, "absent")
    # (one step: nothing else can look between BLOCK and REMOVE, both under write mmu_lock)
    yield (
        fn,
        "zap.page_remove",
        "TDH.MEM.RANGE.BLOCK, TDH.MEM.TRACK + kick, TDH.MEM.PAGE.REMOVE gfn {:#x} pfn {:#x}: {}",
        (gfn, pfn, status),
    )
    m.mark_gotten(pfn, -1)
    yield from tdx_pamt_put(m, th, pfn)


# ============================================================================ control pages
def tdx_alloc_control_page(
    m: KernelState, th: Thread, pinned: tuple[Event, int, str, int] | None = None
) -> KGen:
    """``tdx_alloc_control_page``: allocate, then ``tdx_pamt_get(pfn, NULL)`` (pair from the
    page allocator: this runs outside spinlocks, so it may sleep). ``pinned``: the event, its
    index, the field and the pfn a capture names for this page (taken as guest_memfd's page is
    for a fault's leaf)."""
    fn = "tdx_alloc_control_page"
    th.stack.append(fn)
    try:
        if pinned is not None:
            ev, idx, field, pfn = pinned
            take_pinned(m, ev, idx, field, pfn)
        else:
            got = m.alloc_page(th, O_IN_HAND, sleeping=True)
            if got is None:
                yield fn, "control.enomem", "alloc_page failed: -ENOMEM", ()
                return None
            pfn = got
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
    m: KernelState,
    th: Thread,
    out: list[tuple[int, str]],
    plan: list[tuple[str, str]],
    fn: str,
    pinned: tuple[Event, int, tuple[int, ...] | None, int] | None = None,
) -> KGen:
    """Each control page of ``plan``; ``pinned``: the event, its index, its ``control`` pfns
    and the index of this plan's first page in them (None or past its end: allocated)."""
    for i, (kind, call) in enumerate(plan):
        pin = None
        if pinned is not None and pinned[2] is not None and pinned[3] + i < len(pinned[2]):
            at = pinned[3] + i
            pin = (pinned[0], pinned[1], f"control[{at}]", pinned[2][at])
        pfn = yield from tdx_alloc_control_page(m, th, pin)
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
    check_pins(m, ev, idx, "control", ev.control)
    fn = "tdx_td_init"
    th.stack.append(fn)
    td = m.tds[ev.td] = Td(ev.td)
    m.note("td", td.id, None, "creating")
    yield fn, "td.begin", "create TD {}: TDR, HKID, {} TDCS pages", (td.id, m.settings.tdcs_pages)
    pins = (ev, idx, ev.control, 0)
    ok = yield from _add_control_pages(m, th, td.control, [("tdr", "TDH.MNG.CREATE")], fn, pins)
    if ok:
        td.hkid = m.next_hkid
        m.next_hkid += 1
        m.note("hkid", td.id, None, td.hkid)
        yield fn, "td.hkid", "TDH.MNG.KEY.CONFIG: TD {} gets HKID {}", (td.id, td.hkid)
        plan = [("tdcs", "TDH.MNG.ADDCX")] * m.settings.tdcs_pages
        ok = yield from _add_control_pages(m, th, td.control, plan, fn, (ev, idx, ev.control, 1))
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
    check_pins(m, ev, idx, "control", ev.control)
    fn = "tdx_vcpu_create"
    th.stack.append(fn)
    vcpu = m.vcpus[ev.vcpu] = Vcpu(ev.vcpu, td.id)
    vcpu.caches = new_kvm_caches(m)
    m.stock_cpu(vcpu_thread(vcpu.id))
    td.vcpus.append(vcpu.id)
    m.note("vcpu", vcpu.id, None, f"td{td.id}")
    yield (
        fn,
        "vcpu.begin",
        "create vCPU {} in TD {}: TDVPR + {} TDCX pages; tdx_init_pamt_cache",
        (vcpu.id, td.id, m.settings.tdcx_pages),
    )
    plan = [("tdvpr", "TDH.VP.CREATE")] + [("tdcx", "TDH.VP.ADDCX")] * m.settings.tdcx_pages
    ok = yield from _add_control_pages(m, th, vcpu.control, plan, fn, (ev, idx, ev.control, 0))
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
    """``kvm_arch_vcpu_destroy``: ``vt_vcpu_free`` -> ``tdx_vcpu_free`` (arch/x86/kvm/vmx/tdx.c),
    then ``kvm_mmu_destroy`` -> ``mmu_free_memory_caches`` (KVM's own caches).

    ``tdx_vcpu_free`` in the kernel's order: v6 09/11's ``tdx_free_pamt_cache`` first; then,
    if the TD's HKID is still assigned, it returns at once: the TDX module cannot reclaim a
    vCPU's pages while the HKID is held ("the kernel failed to free the HKID" or vCPU creation
    failed), so the TDCX and TDVPR pages are never reclaimed: leaked, still the module's, with
    their DPAMT references, so their regions keep their pairs. Nobody frees them later (the
    TD's teardown does not come back to a freed vCPU). A trace's ``vcpu_free`` before
    ``td_destroy`` is that case, reported as a warning (``VCPU_FREE_HKID_ASSIGNED``); the
    leaked pages stay listed with the freed vCPU. Otherwise (``kvm_destroy_vcpus``, after
    ``tdx_mmu_release_hkid``) the TDCX pages in index order, then the TDVPR, each through
    ``tdx_reclaim_control_page`` (reclaim, ``tdx_free_control_page``: put, free)."""
    fn = "tdx_vcpu_free"
    th.stack.append(fn)
    try:
        td = m.tds.get(vcpu.td)
        yield from tdx_free_pamt_cache(m, th, vcpu)
        if td is not None and td.hkid is not None and vcpu.control:
            pages = ", ".join(f"{kind.upper()} {pfn:#x}" for pfn, kind in vcpu.control)
            m.diag(
                "warning",
                "VCPU_FREE_HKID_ASSIGNED",
                f"vCPU {vcpu.id} freed while TD {td.id} still holds HKID {td.hkid}: "
                f"tdx_vcpu_free() returns early and never reclaims its {len(vcpu.control)} "
                f"control pages ({pages}): leaked, with their DPAMT references (the kernel "
                "only frees vCPUs after tdx_mmu_release_hkid, or on a failed creation)",
            )
            yield (
                fn,
                "vcpu.leak",
                "is_hkid_assigned(): HKID {} still held: return early; TDVPR and {} TDCX "
                "pages are never reclaimed (leaked)",
                (td.hkid, len(vcpu.control) - 1),
            )
        elif vcpu.control:
            yield from _reclaim_control(m, th, vcpu.control, fn)
        yield from mmu_free_memory_caches(m, th, vcpu)
        vcpu.alive = False
        m.note("vcpu", vcpu.id, f"td{vcpu.td}", "freed")
        yield fn, "vcpu.freed", "vCPU {} freed", (vcpu.id,)
    finally:
        th.stack.pop()


def kvm_destroy_vm(m: KernelState, th: Thread, idx: int, ev: TdDestroy) -> KGen:
    """TD teardown by function, in the order of mainline since 6.15 with DPAMT v6
    (docs/engine.md, "Teardown"):

    1. ``kvm_gmem_release`` (the guest_memfd file's release: it holds a reference to the VM,
       so it runs before ``kvm_destroy_vm``) -> ``__kvm_gmem_invalidate_begin`` over every
       gfn: each private page is removed (``tdx_sept_remove_leaf_spte``: PAGE.REMOVE,
       ``tdx_pamt_put``) while the TD still holds its HKID; then ``__kvm_gmem_invalidate_end``.
       guest_memfd frees no page here ("lifetime is associated with the inode");
    2. ``kvm_arch_pre_destroy_vm`` -> ``vt_vm_pre_destroy`` -> ``tdx_mmu_release_hkid``;
    3. ``mmu_notifier_unregister`` -> ``kvm_mmu_notifier_release`` -> ``kvm_tdp_mmu_zap_all``:
       direct roots only ("KVM: x86/tdp_mmu: Don't zap valid mirror roots in
       kvm_tdp_mmu_zap_all()"): no S-EPT page is freed there;
    4. ``kvm_arch_destroy_vm``: ``kvm_destroy_vcpus`` first (17bcd7144263, "KVM: x86: Free
       vCPUs before freeing VM state"): each live vCPU's ``tdx_vcpu_free`` (DPAMT cache, TDCX
       pages, TDVPR) then KVM's caches;
    5. ``kvm_mmu_uninit_vm`` -> ``kvm_mmu_uninit_tdp_mmu``: every S-EPT table through
       ``tdx_sept_free_private_spt`` (reclaim, ``tdx_pamt_put``, freed at once, not from an RCU
       callback), and the mirror root;
    6. ``kvm_x86_call(vm_destroy)`` last (46c49372e10e, "KVM: x86: move vm_destroy callback at
       end of kvm_arch_destroy_vm") -> ``tdx_vm_destroy`` -> ``tdx_reclaim_td_control_pages``:
       the TDCS pages, then the TDR;
    7. the guest_memfd inode's pages go back to the page allocator (its eviction, once the
       file's last reference is gone).

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
    # 1. kvm_gmem_release: every private page removed and put under write mmu_lock, the HKID
    # still assigned; guest_memfd keeps the pages
    fn = "__kvm_gmem_invalidate_begin"
    yield from write_lock_mmu(m, th, fn, td)
    was, now = kvm_mmu_invalidate_begin(m, td, 0, m.gfn_limit)
    yield (
        fn,
        "invalidate.begin",
        "kvm_gmem_release(): kvm_mmu_invalidate_begin(): mmu_invalidate_in_progress {} -> {}, "
        "every gfn; unmap every private page, free none (guest_memfd's inode owns them)",
        (was, now),
    )
    for gfn in sorted(td.leaves):
        yield from _remove_leaf(m, th, td, gfn, td.leaves[gfn])
    yield from write_unlock_mmu(m, th, fn, td)
    fn = "__kvm_gmem_invalidate_end"
    yield from write_lock_mmu(m, th, fn, td)
    old, new = kvm_mmu_invalidate_end(m, td)
    yield (
        fn,
        "invalidate.end",
        "kvm_mmu_invalidate_end(): mmu_invalidate_seq {} -> {}, in_progress {} -> {}",
        (old, new, now, now - 1),
    )
    yield from write_unlock_mmu(m, th, fn, td)
    # 2. kvm_arch_pre_destroy_vm: the HKID released
    m.note("hkid", td.id, td.hkid, None)
    yield (
        "tdx_mmu_release_hkid",
        "td.hkid_release",
        "TDH.PHYMEM.CACHE.WB + TDH.MNG.KEY.FREEID: HKID {} released",
        (td.hkid,),
    )
    td.hkid = None
    # 3. mmu_notifier_unregister: the notifier's release zaps direct roots only
    yield (
        "kvm_tdp_mmu_zap_all",
        "td.notifier_release",
        "mmu_notifier_unregister() -> kvm_tdp_mmu_zap_all(): direct roots only; the mirror "
        "root and its {} S-EPT tables stay for kvm_mmu_uninit_vm",
        (len(td.entries),),
    )
    # 4. kvm_destroy_vcpus: each live vCPU (a vCPU freed earlier leaked its control pages)
    for vid in td.vcpus:
        vcpu = m.vcpus[vid]
        if vcpu.alive:
            yield from tdx_vcpu_free(m, th, vcpu)
    # 5. kvm_mmu_uninit_vm: the S-EPT tables and their mirror pages, then the mirror root
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
    # 6. vm_destroy, last: the TD's control pages: TDCS, then TDR
    yield from _reclaim_control(m, th, td.control, "tdx_vm_destroy")
    # 7. the guest_memfd inode's pages, to the page allocator
    for gfn in sorted(td.gmem):
        pfn = td.gmem[gfn]
        del td.gmem[gfn]
        m.free_page(pfn)
    td.state = "destroyed"
    m.note("td", td.id, "destroying", "destroyed")
    yield (
        "kvm_destroy_vm",
        "td.destroyed",
        "TD {} destroyed; guest_memfd's inode frees its pages",
        (td.id,),
    )
