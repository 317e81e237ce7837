"""arch/x86 Dynamic PAMT: ``tdx_pamt_get``/``tdx_pamt_put`` and ``struct tdx_pamt_cache``.

Follows arch/x86/virt/vmx/tdx/tdx.c of the v6 series (patches 05/11 "refcount and lock",
06/11 "lock-free fast path", 08/11 "Add APIs to support Dynamic PAMT ops from KVM's fault path",
the seed of this project) step for step, as restated in dpamt-model.md sections 3 to 5:

- ``v6`` (default): get takes the lock-free fast path ``atomic_inc_not_zero`` when the region
  already has a pair; otherwise it takes two pages (from the vCPU's cache, or from the page
  allocator when no cache is given), locks ``pamt_lock``, rechecks (a lost race frees both pages
  to the page allocator, not back to the cache), and issues PAMT.ADD. Put decrements without the
  lock unless the count is 1 (``atomic_add_unless(-1, 1)``), else locks, decrements, and issues
  PAMT.REMOVE at 0; a failed REMOVE leaves refcount 1 and leaks the pair (WARN).
- ``v6-locked``: patch 05 alone, no fast path: get allocates the pair first, then locks; put
  always locks.
- ``v5-hint`` (Sean's v5): put decrements without the lock and rechecks under it; get treats
  ``TDX_HPA_RANGE_NOT_FREE`` from PAMT.ADD as "a put has not removed the pair yet".

Each function is a generator: every ``yield`` is one step a reviewer can stop at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import explorer.model.tdx_module as tdx
from explorer.model.constants import PAGES_PER_REGION_SHIFT
from explorer.model.state import (
    FP_MEMPOOL,
    FP_PAMT_LOCK,
    KernelState,
    Spin,
    Td,
    Thread,
    Vcpu,
)
from explorer.model.steps import (
    K_PAMT_ADD,
    K_PAMT_ADD_FAILED,
    K_PAMT_GET,
    K_PAMT_GET_FAST,
    K_PAMT_GET_SLOW,
    K_PAMT_LOST_RACE,
    K_PAMT_PAGES_DRAINED,
    K_PAMT_PUT,
    K_PAMT_REMOVE,
    K_PAMT_REMOVE_FAILED,
    K_SPINS,
    O_IN_HAND,
    O_LEAKED,
    O_PAIR,
    O_PAMT_CACHE,
    KGen,
    StepInfo,
)

ENOMEM: Final = -12
EIO: Final = -5


# ============================================================================ locks
def _pamt_lock_holder(m: KernelState, td: Td | None) -> str | None:
    """Who holds ``pamt_lock`` (None: it is free)."""
    if m.fp_on:
        m.fp_read(FP_PAMT_LOCK)
        m.fp_l.add(("test", FP_PAMT_LOCK))
    return m.pamt_lock


def _mmu_writer(m: KernelState, td: Td | None) -> str | None:
    """What keeps a reader of the TD's ``mmu_lock`` out: a writer."""
    assert td is not None
    if m.fp_on:
        m.fp_read(("mmu", td.id))
    return td.mmu_writer


def _mmu_holders(m: KernelState, td: Td | None) -> str | None:
    """What keeps a writer of the TD's ``mmu_lock`` out: a writer or any reader (the readers
    by name: a rwlock's readers are a count, in no order, so two orders of taking the lock
    are one state of it, in a spin step's text and in the explorer's states alike)."""
    assert td is not None
    if m.fp_on:
        m.fp_read(("mmu", td.id))
        m.fp_read(("mmu_readers", td.id))
    if td.mmu_writer is not None:
        return td.mmu_writer
    return ", ".join(sorted(td.mmu_readers)) if td.mmu_readers else None


def _spin(
    m: KernelState,
    th: Thread,
    blocker: Callable[[KernelState, Td | None], str | None],
    td: Td | None,
    what: str,
    fn: str,
    label: str,
    template: str,
) -> KGen:
    """Spin while ``blocker`` names a holder: a visible step per turn (``template`` names the
    holder). Returns with the lock free for this CPU to take, in the same step."""
    while (holder := blocker(m, td)) is not None:
        th.spinning = what
        m.count(K_SPINS)
        info: StepInfo = (fn, label, template, (holder,) if td is None else (td.id, holder))
        th.respin = Spin(blocker, td, holder, info)
        yield info
    th.spinning = None
    th.respin = None


def spin_lock(m: KernelState, th: Thread, fn: str, label: str) -> KGen:
    """``spin_lock(&pamt_lock)``: a waiter spins, one visible step per turn."""
    if m.fp_on:
        m.fp_read(FP_PAMT_LOCK)
        m.fp_l.add(("test", FP_PAMT_LOCK))
    if m.pamt_lock is not None:
        yield from _spin(
            m,
            th,
            _pamt_lock_holder,
            None,
            "pamt_lock",
            fn,
            label + ".spin",
            "spin: pamt_lock is held by {}",
        )
    if th.softirq:
        m.diag(
            "violation",
            "LOCKDEP_PAMT_LOCK_SOFTIRQ",
            f"{th.name}: pamt_lock taken in softirq (RCU callback) and in process context: "
            "possible deadlock (the explorer's model of the lockdep report of the v5 review)",
        )
    if m.fp_on:
        m.fp_write(FP_PAMT_LOCK)
        m.fp_l.add(("acq", FP_PAMT_LOCK))
    m.pamt_lock = th.name
    th.holds.append("pamt_lock")
    if m.record:
        m.set_lock("pamt_lock", None, th.name)
    yield fn, label, "spin_lock(&pamt_lock)", ()


def spin_unlock(m: KernelState, th: Thread) -> None:
    if m.fp_on:
        m.fp_write(FP_PAMT_LOCK)
        m.fp_l.add(("rel", FP_PAMT_LOCK))
    m.pamt_lock = None
    th.holds.remove("pamt_lock")
    if m.record:
        m.set_lock("pamt_lock", th.name, None)


def read_lock_mmu(m: KernelState, th: Thread, fn: str, td: Td) -> KGen:
    """``read_lock(&kvm->mmu_lock)``: one rwlock per VM (x86's is a queued rwlock: a reader
    waits while a writer holds it). Readers commute with readers: the footprint reads the
    writer and updates the readers (two readers in either order leave the same set)."""
    if m.fp_on:
        m.fp_read(("mmu", td.id))
    if td.mmu_writer is not None:
        yield from _spin(
            m,
            th,
            _mmu_writer,
            td,
            "mmu_lock",
            fn,
            "mmu_lock.read_spin",
            "spin: TD {}'s mmu_lock is write-held by {}",
        )
    if m.fp_on:
        m.fp_add(("mmu_readers", td.id))
    td.mmu_readers.append(th.name)
    th.holds.append("mmu_lock(read)")
    if m.record:
        m.set_lock(f"mmu_lock/td{td.id}", None, f"read {th.name}")
    yield (
        fn,
        "mmu_lock.read",
        "read_lock(&kvm->mmu_lock) of TD {}: no sleeping allocation from here on",
        (td.id,),
    )


def read_unlock_mmu(m: KernelState, th: Thread, td: Td) -> None:
    """``read_unlock(&kvm->mmu_lock)``; the caller yields :data:`READ_UNLOCK_STEP` (a one-step
    unlock needs no generator of its own)."""
    if m.fp_on:
        m.fp_add(("mmu_readers", td.id))
    td.mmu_readers.remove(th.name)
    th.holds.remove("mmu_lock(read)")
    if m.record:
        m.set_lock(f"mmu_lock/td{td.id}", f"read {th.name}", None)


#: The step of ``read_unlock(&kvm->mmu_lock)`` (in kvm_tdp_mmu_map, whose step it is).
READ_UNLOCK_STEP: StepInfo = (
    "kvm_tdp_mmu_map",
    "mmu_lock.read_unlock",
    "read_unlock(&kvm->mmu_lock)",
    (),
)


def write_lock_mmu(m: KernelState, th: Thread, fn: str, td: Td) -> KGen:
    if m.fp_on:
        m.fp_write(("mmu", td.id))
        m.fp_read(("mmu_readers", td.id))
    if td.mmu_writer is not None or td.mmu_readers:
        yield from _spin(
            m,
            th,
            _mmu_holders,
            td,
            "mmu_lock",
            fn,
            "mmu_lock.write_spin",
            "spin: TD {}'s mmu_lock is held by {}",
        )
    if m.fp_on:
        m.fp_write(("mmu", td.id))
    td.mmu_writer = th.name
    th.holds.append("mmu_lock(write)")
    if m.record:
        m.set_lock(f"mmu_lock/td{td.id}", None, f"write {th.name}")
    yield fn, "mmu_lock.write", "write_lock(&kvm->mmu_lock) of TD {}", (td.id,)


def write_unlock_mmu(m: KernelState, th: Thread, fn: str, td: Td) -> KGen:
    if m.fp_on:
        m.fp_write(("mmu", td.id))
    td.mmu_writer = None
    th.holds.remove("mmu_lock(write)")
    if m.record:
        m.set_lock(f"mmu_lock/td{td.id}", f"write {th.name}", None)
    yield fn, "mmu_lock.write_unlock", "write_unlock(&kvm->mmu_lock)", ()


# ============================================================================ the cache
def fill_pamt_cache(m: KernelState, th: Thread, vcpu: Vcpu, target: int, what: str) -> KGen:
    """Push freshly allocated pages on the vCPU's list until it holds ``target``.

    This is v6's ``tdx_topup_pamt_cache(cache, n)`` with ``target = 2 * n`` (fill to exactly
    that; -ENOMEM keeps what was added; there is no larger capacity, unlike KVM's caches, filled
    to 40), and the v4 shared list and the KVM-style cache of the rejected designs, with their
    targets. ``what`` names the call in the narration."""
    fn = "tdx_topup_pamt_cache"
    old = len(vcpu.pamt_cache)
    failed = False
    if not m.record and old < target:
        # (no step record to keep the effects' order for: the loop's allocations at once,
        # KernelState.alloc_pages, the same pages, the same failure)
        vcpu.pamt_cache.extend(m.alloc_pages(th, O_PAMT_CACHE, target - old))
        failed = len(vcpu.pamt_cache) < target
    while not failed and len(vcpu.pamt_cache) < target:
        pfn = m.alloc_page(th, O_PAMT_CACHE, sleeping=True)
        if pfn is None:
            failed = True
        else:
            m.pamt_cache_push(vcpu, pfn)
    if failed:
        yield (
            fn,
            "pamt_cache.topup_fail",
            "{}: alloc_page failed at {} of {} pages: -ENOMEM",
            (what, len(vcpu.pamt_cache), target),
        )
        return ENOMEM
    if old >= target:
        yield fn, "pamt_cache.full", "{}: {} pages, target {}: nothing to do", (what, old, target)
    else:
        yield fn, "pamt_cache.topup", "{}: {} -> {} pages", (what, old, target)
    return 0


def tdx_free_pamt_cache(m: KernelState, th: Thread, vcpu: Vcpu) -> KGen:
    """``tdx_free_pamt_cache``: every cached page back to the page allocator (vCPU free)."""
    fn = "tdx_free_pamt_cache"
    n = 0
    while True:
        pfn = m.pamt_cache_pop(vcpu)
        if pfn is None:
            break
        m.free_page(pfn)
        n += 1
    yield fn, "pamt_cache.free", "tdx_free_pamt_cache: {} pages to the page allocator", (n,)


# ============================================================================ get
def _take_pamt_page(m: KernelState, th: Thread, vcpu: Vcpu | None, fn: str) -> KGen:
    """``alloc_dpamt_page``: where a pair page comes from, per mode.

    v6 (and the modes that keep its cache): pop from the vCPU's cache (never sleeps), or
    ``alloc_page`` (sleeps) when no cache is given. The strategies of dpamt-model.md section 11
    differ only here and in :func:`_free_pair` and the top-up: ``mempool`` tries a non-sleeping
    allocation first and dips into its reserve when it fails; ``atomic-under-lock`` allocates
    with GFP_ATOMIC under the MMU lock; ``sleeping-under-lock`` sleeps under it (invariant 6).
    """
    mode = m.mode
    if vcpu is None:
        pfn = m.alloc_page(th, O_IN_HAND, sleeping=True)
        if pfn is not None:
            yield (
                fn,
                "pamt_get.alloc",
                "no cache: alloc_page(GFP_KERNEL_ACCOUNT) -> {:#x} (region {})",
                (pfn, pfn >> PAGES_PER_REGION_SHIFT),
            )
        return pfn
    if mode in ("atomic-under-lock", "mempool"):
        pfn = m.alloc_page(th, O_IN_HAND, sleeping=False)
        if pfn is not None:
            yield (
                fn,
                "pamt_get.alloc_atomic",
                "alloc_page(GFP_ATOMIC/GFP_NOWAIT) under mmu_lock -> {:#x} (region {})",
                (pfn, pfn >> PAGES_PER_REGION_SHIFT),
            )
            return pfn
        if mode == "atomic-under-lock":
            return None
        if m.fp_on:
            m.fp_write(FP_MEMPOOL)
        pool: list[int] = m.extra.setdefault("mempool", [])
        if not pool:
            return None
        pfn = pool.pop()
        m.set_owner(pfn, O_IN_HAND)
        m.note("mempool", "reserve", len(pool) + 1, len(pool))
        yield (
            fn,
            "pamt_get.mempool",
            "GFP_NOWAIT failed: take {:#x} from the mempool reserve ({} left)",
            (pfn, len(pool)),
        )
        return pfn
    if mode == "sleeping-under-lock":
        pfn = m.alloc_page(th, O_IN_HAND, sleeping=True)
        if pfn is not None:
            yield (
                fn,
                "pamt_get.alloc_sleeping",
                "alloc_page(GFP_KERNEL) under mmu_lock -> {:#x}: may sleep in atomic context",
                (pfn,),
            )
        return pfn
    pfn = m.pamt_cache_pop(vcpu)
    if pfn is not None:
        yield (
            fn,
            "pamt_get.pop",
            "pop page {:#x} (region {}) from vCPU {}'s tdx_pamt_cache: {} left",
            (pfn, pfn >> PAGES_PER_REGION_SHIFT, vcpu.id, len(vcpu.pamt_cache)),
        )
    return pfn


def _free_pair(m: KernelState, pages: list[int], from_cache: bool) -> None:
    """Free pair pages to the page allocator; a mempool refills its reserve first."""
    target = 2 * m.settings.dpamt_gets_per_fault
    for p in pages:
        if m.mode == "mempool":
            if m.fp_on:
                m.fp_write(FP_MEMPOOL)
            pool: list[int] = m.extra.setdefault("mempool", [])
            if len(pool) < target:  # mempool_free(): below min_nr, the element goes back
                pool.append(p)
                m.set_owner(p, O_PAMT_CACHE)
                m.note("mempool", "reserve", len(pool) - 1, len(pool))
                continue
        m.free_page(p)
    if from_cache and m.mode not in ("mempool", "atomic-under-lock", "sleeping-under-lock"):
        m.count(K_PAMT_PAGES_DRAINED, len(pages))


def tdx_pamt_get(m: KernelState, th: Thread, pfn: int, vcpu: Vcpu | None) -> KGen:
    """``tdx_pamt_get(pfn, cache)``: returns 0, -ENOMEM or -EIO (dpamt-model.md section 3).

    The region's get is "in flight" from the call to the return: the caller counts its
    reference (``mark_gotten``) only once it has the result, so until then the get owes
    invariant 2 the increment it made (``KernelState.pamt_enter``/``pamt_leave``, here and in
    :func:`tdx_pamt_put` only)."""
    fn = "tdx_pamt_get"
    region = pfn >> PAGES_PER_REGION_SHIFT
    th.stack.append(fn)
    outer = m.pamt_enter(th, region, False)
    try:
        m.count(K_PAMT_GET)
        if m.mode != "v6-locked":
            if m.fp_on:  # atomic_inc_not_zero() reads whether the count is zero, lock-free
                m.fp_read(("Rz", region))
            old = m.refcount.get(region, 0)
            if old:
                m.set_refcount(region, old + 1, th)
                m.count(K_PAMT_GET_FAST)
                yield (
                    fn,
                    "pamt_get.fast",
                    "refcount[{}] {} -> {}: atomic_inc_not_zero, fast path, no lock",
                    (region, old, old + 1),
                )
                return 0
            m.count(K_PAMT_GET_SLOW)
            yield (
                fn,
                "pamt_get.slow",
                "refcount[{}] is 0: region {} needs a PAMT page pair",
                (region, region),
            )
        else:
            m.count(K_PAMT_GET_SLOW)
        return (yield from _pamt_get_slow(m, th, fn, region, vcpu))
    finally:
        th.stack.pop()
        m.pamt_leave(th, region, outer)


def _pamt_get_slow(m: KernelState, th: Thread, fn: str, region: int, vcpu: Vcpu | None) -> KGen:
    """The slow path: a pair of pages, ``pamt_lock``, the recheck, PAMT.ADD."""
    # alloc_pamt_array(): two pages, from the cache or the allocator
    pages: list[int] = []
    for _ in range(2):
        page = yield from _take_pamt_page(m, th, vcpu, fn)
        if page is None:
            if pages:
                _free_pair(m, pages, vcpu is not None)
                yield (
                    fn,
                    "pamt_get.partial",
                    "second page missing: free {:#x} to the page allocator (not the cache): -ENOMEM",
                    (pages[0],),
                )
            else:
                where = (
                    "vCPU's tdx_pamt_cache is empty" if vcpu is not None else "alloc_page failed"
                )
                yield fn, "pamt_get.enomem", "{}: -ENOMEM", (where,)
            return ENOMEM
        pages.append(page)
    yield from spin_lock(m, th, fn, "pamt_get.lock")
    if m.fp_on:  # the recheck: zero or not
        m.fp_read(("Rz", region))
    cur = m.refcount.get(region, 0)
    if cur and m.mode == "v6-no-recheck":
        # deliberately broken (explorer.interleavings.search's counterexample): the lost-race recheck under
        # pamt_lock is gone, so a CPU that lost the race issues a second PAMT.ADD
        yield (
            fn,
            "pamt_get.no_recheck",
            "(deliberately broken: no recheck) refcount[{}] is {} already, PAMT.ADD anyway",
            (region, cur),
        )
    elif cur:
        m.set_refcount(region, cur + 1, th)
        if m.mode == "v6-locked":
            # patch 05 alone has no lock-free check: finding the pair under the lock is the
            # ordinary path of every get but a region's first, not a race
            yield (
                fn,
                "pamt_get.pair_present",
                "pair already present: refcount[{}] {} -> {}, free the two pages",
                (region, cur, cur + 1),
            )
        else:
            # lost race: another CPU did 0 -> 1 since the lock-free check
            m.count(K_PAMT_LOST_RACE)
            yield (
                fn,
                "pamt_get.lost_race",
                "recheck: refcount[{}] is {} now (another CPU added the pair): lost race, {} -> {}",
                (region, cur, cur, cur + 1),
            )
        spin_unlock(m, th)
        yield fn, "pamt_get.unlock", "spin_unlock(&pamt_lock)", ()
        yield from free_pamt_array(m, fn, "pamt_get", pages, vcpu is not None)
        return 0
    pair = (pages[0], pages[1])
    if m.fp_on:  # PAMT.ADD: the region's pair, and the module's use of the two pages
        m.fp_write(("Rp", region))
        m.fp_write(("page", pair[0]))
        m.fp_write(("page", pair[1]))
    m.count(K_PAMT_ADD)
    status = (
        tdx.INJECTED_ERROR if m.take_injection("pamt_add_fail") else m.module.pamt_add(region, pair)
    )
    if status == tdx.SUCCESS:
        for p in pair:
            m.set_owner(p, O_PAIR)
        m.note_pair(region, None, pair)
        m.set_refcount(region, 1, th)
        yield (
            fn,
            "pamt_get.add",
            "TDH.PHYMEM.PAMT.ADD region {} pages {:#x}, {:#x}: TDX_SUCCESS; refcount 0 -> 1",
            (region, pair[0], pair[1]),
        )
        spin_unlock(m, th)
        yield fn, "pamt_get.unlock", "spin_unlock(&pamt_lock)", ()
        return 0
    if m.mode == "v5-hint" and status == tdx.HPA_RANGE_NOT_FREE:
        m.set_refcount(region, 1, th)
        yield (
            fn,
            "pamt_get.add_hint",
            "PAMT.ADD region {}: TDX_HPA_RANGE_NOT_FREE, a put has not removed the pair yet: refcount 0 -> 1",
            (region,),
        )
        spin_unlock(m, th)
        yield fn, "pamt_get.unlock", "spin_unlock(&pamt_lock)", ()
        yield from free_pamt_array(m, fn, "pamt_get", pages, vcpu is not None)
        return 0
    m.count(K_PAMT_ADD_FAILED)
    m.diag(
        "warning",
        "WARN_PAMT_ADD",
        f"TDH.PHYMEM.PAMT.ADD region {region} failed: {status} "
        "(the kernel's WARN_ON_ONCE in tdx_pamt_get)",
    )
    yield (
        fn,
        "pamt_get.add_fail",
        "TDH.PHYMEM.PAMT.ADD region {}: {}: WARN_ON_ONCE, -EIO",
        (region, status),
    )
    spin_unlock(m, th)
    yield fn, "pamt_get.unlock", "spin_unlock(&pamt_lock)", ()
    yield from free_pamt_array(m, fn, "pamt_get", pages, vcpu is not None)
    return EIO


def free_pamt_array(m: KernelState, fn: str, side: str, pages: list[int], from_cache: bool) -> KGen:
    """``free_pamt_array()`` (v6 04/11): each page is reset with ``tdx_quirk_reset_paddr()``
    ("unconditionally, to cover cases where they were passed to the TDX module"), then freed
    to the page allocator, never back to a cache. Two steps, the reset and the free (a lost
    race, a failed PAMT.ADD, a successful PAMT.REMOVE)."""
    yield (
        fn,
        f"{side}.reset_pair",
        "free_pamt_array: tdx_quirk_reset_paddr() on {:#x} and {:#x} (cleared of any TDX use)",
        (pages[0], pages[1]),
    )
    _free_pair(m, pages, from_cache)
    yield (
        fn,
        f"{side}.free_pair",
        "free_pamt_array: __free_page() both pages {:#x}, {:#x} to the page allocator "
        "(not back to the cache)",
        (pages[0], pages[1]),
    )


# ============================================================================ put
def tdx_pamt_put(m: KernelState, th: Thread, pfn: int) -> KGen:
    """``tdx_pamt_put(pfn)`` (dpamt-model.md section 4). The caller has dropped its reference."""
    fn = "tdx_pamt_put"
    region = pfn >> PAGES_PER_REGION_SHIFT
    th.stack.append(fn)
    outer = m.pamt_enter(th, region, True)
    try:
        yield from _pamt_put(m, th, fn, region)
    finally:
        th.stack.pop()
        m.pamt_leave(th, region, outer)


def _pamt_put(m: KernelState, th: Thread, fn: str, region: int) -> KGen:
    m.count(K_PAMT_PUT)
    mode = m.mode
    if mode == "v6-locked":
        yield from spin_lock(m, th, fn, "pamt_put.lock")
        if m.fp_on:  # refcount > 1: the count itself
            m.fp_read(("Rc", region))
        old = m.refcount.get(region, 0)
        if old > 1:
            m.set_refcount(region, old - 1, th)
            yield (
                fn,
                "pamt_put.dec",
                "refcount[{}] {} -> {} under pamt_lock",
                (region, old, old - 1),
            )
            spin_unlock(m, th)
            yield fn, "pamt_put.unlock", "spin_unlock(&pamt_lock)", ()
            return
        yield from _remove(m, th, fn, region, zero_on_success=True)
        return
    if mode == "v5-hint":
        if m.fp_on:  # atomic_dec_and_test: the count itself
            m.fp_read(("Rc", region))
        old = m.refcount.get(region, 0)
        m.set_refcount(region, old - 1, th)
        if old - 1:
            yield (
                fn,
                "pamt_put.fast",
                "atomic_dec_and_test: refcount[{}] {} -> {}, not zero: done",
                (region, old, old - 1),
            )
            return
        if m.fp_on:  # the window invariant 1 allows (0 with a pair)
            m.fp_write(("Rv", region))
        m.v5_put_window[region] = m.v5_put_window.get(region, 0) + 1
        yield (
            fn,
            "pamt_put.dec_unlocked",
            "atomic_dec_and_test: refcount[{}] {} -> 0 without the lock: recheck under it",
            (region, old),
        )
        yield from spin_lock(m, th, fn, "pamt_put.lock")
        if m.fp_on:  # the window closes; the recheck reads zero or not
            m.fp_write(("Rv", region))
            m.fp_read(("Rz", region))
        left = m.v5_put_window[region] - 1
        if left:
            m.v5_put_window[region] = left
        else:
            del m.v5_put_window[region]
            m.recheck(region)  # (0 with a pair is no longer allowed: checked at the unlock)
        cur = m.refcount.get(region, 0)
        if cur:
            yield (
                fn,
                "pamt_put.slipped",
                "recheck: refcount[{}] is {}: a get slipped in, keep the pair",
                (region, cur),
            )
            spin_unlock(m, th)
            yield fn, "pamt_put.unlock", "spin_unlock(&pamt_lock)", ()
            return
        yield from _remove(m, th, fn, region, zero_on_success=False)
        return
    # v6 and the strategies built on it
    if m.fp_on:  # atomic_dec_and_lock(): refcount > 1, the count itself
        m.fp_read(("Rc", region))
    old = m.refcount.get(region, 0)
    if old > 1:
        m.set_refcount(region, old - 1, th)
        yield (
            fn,
            "pamt_put.fast",
            "atomic_dec_and_lock(): refcount[{}] {} -> {}, not the last reference: no lock",
            (region, old, old - 1),
        )
        return
    yield (
        fn,
        "pamt_put.slow",
        "atomic_dec_and_lock(): refcount[{}] is {}: the last reference, take pamt_lock",
        (region, old),
    )
    yield from spin_lock(m, th, fn, "pamt_put.lock")
    if m.fp_on:
        m.fp_read(("Rc", region))
    old = m.refcount.get(region, 0)
    m.set_refcount(region, old - 1, th)
    if old - 1:
        yield (
            fn,
            "pamt_put.slipped",
            "atomic_dec_and_lock(): refcount[{}] {} -> {} under the lock: a get slipped in, "
            "keep the pair",
            (region, old, old - 1),
        )
        spin_unlock(m, th)
        yield fn, "pamt_put.unlock", "spin_unlock(&pamt_lock)", ()
        return
    yield (
        fn,
        "pamt_put.dec",
        "atomic_dec_and_lock(): refcount[{}] 1 -> 0 under pamt_lock: remove the pair",
        (region,),
    )
    yield from _remove(m, th, fn, region, zero_on_success=False)


def _remove(m: KernelState, th: Thread, fn: str, region: int, *, zero_on_success: bool) -> KGen:
    """PAMT.REMOVE under ``pamt_lock``; on failure refcount goes (back) to 1 and the pair leaks."""
    m.count(K_PAMT_REMOVE)
    if m.fp_on:  # PAMT.REMOVE: the pair, the region's pages in TD use, the pair's pages
        m.fp_write(("Rp", region))
        m.fp_read(("used", region))
        old_pair = m.module.pairs.get(region)
        if old_pair is not None:
            m.fp_write(("page", old_pair[0]))
            m.fp_write(("page", old_pair[1]))
    pair = m.module.pairs.get(region)
    if m.take_injection("pamt_remove_fail"):
        status, got = tdx.INJECTED_ERROR, None
    else:
        status, got = m.module.pamt_remove(region)
    if status == tdx.SUCCESS and got is not None:
        for p in got:
            m.set_owner(p, O_IN_HAND)
        m.note_pair(region, got, None)
        if zero_on_success:
            m.set_refcount(region, 0, th)
        yield (
            fn,
            "pamt_put.remove",
            "TDH.PHYMEM.PAMT.REMOVE region {}: TDX_SUCCESS, pages {:#x}, {:#x} returned",
            (region, got[0], got[1]),
        )
        spin_unlock(m, th)
        yield fn, "pamt_put.unlock", "spin_unlock(&pamt_lock)", ()
        yield from free_pamt_array(m, fn, "pamt_put", list(got), False)
        return
    m.count(K_PAMT_REMOVE_FAILED)
    m.set_refcount(region, 1, th)
    m.add_orphan(region, th)
    if pair is not None:
        for p in pair:
            m.set_owner(p, O_LEAKED)
    # (the pair the module holds is leaked; a REMOVE that failed because the module holds
    # none, as after a racing put removed it, leaks nothing but leaves the refcount at 1)
    leaked = "pair leaked" if pair is not None else "no pair to leak (the module holds none)"
    m.diag(
        "warning",
        "WARN_PAMT_REMOVE",
        f"TDH.PHYMEM.PAMT.REMOVE region {region} failed: {status}; refcount left at 1, "
        f"{leaked} (the kernel's WARN_ON_ONCE in tdx_pamt_put)",
    )
    yield (
        fn,
        "pamt_put.remove_fail",
        "TDH.PHYMEM.PAMT.REMOVE region {}: {}: WARN_ON_ONCE; refcount back to 1, {}",
        (
            region,
            status,
            "the pair stays with the TDX module (leaked)"
            if pair is not None
            else "and no pair: the module holds none for this region",
        ),
    )
    spin_unlock(m, th)
    yield fn, "pamt_put.unlock", "spin_unlock(&pamt_lock)", ()
