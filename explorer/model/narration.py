"""Short pseudocode of each kernel function the engine runs, with the step labels per line.

Written for this project (not kernel source): enough for the code panel to highlight where each
CPU is. Each entry of :data:`PSEUDOCODE` is a list of lines ``(labels, text)`` or
``(labels, text, modes)``: the labels a step may carry while that line runs (empty for context
lines), and, for a line that only some designs run, the modes whose code it is. The panel shows
a mode's own code only (:func:`pseudocode`): in ``v6`` no line of the rejected designs appears.
:data:`SOURCES` names the file and function each entry follows, in the tree v6 is based on
(Yan Zhao's MMU refactor v2, on which TDX's S-EPT hooks are ``tdx_sept_set_private_spte``
dispatching to ``tdx_sept_map_nonleaf_spte``, ``tdx_sept_map_leaf_spte`` and
``tdx_sept_remove_leaf_spte``; ``link_external_spt`` and ``remove_external_spte`` are gone).
A test checks that every label the engine yields appears here, for the modes that yield it.
"""

from __future__ import annotations

Line = tuple[tuple[str, ...], str] | tuple[tuple[str, ...], str, frozenset[str]]

V6_FAMILY = frozenset(
    {
        "v6",
        "v5-hint",
        "v5-topup-install",
        "v4-shared-list",
        "kvm-style-cache",
        "mempool",
        "v6-no-recheck",
    }
)
NO_CACHE = frozenset({"mempool", "atomic-under-lock", "sleeping-under-lock"})


def only(*modes: str) -> frozenset[str]:
    return frozenset(modes)


TDX_C = "arch/x86/virt/vmx/tdx/tdx.c"
KVM_TDX_C = "arch/x86/kvm/vmx/tdx.c"
MMU_C = "arch/x86/kvm/mmu/mmu.c"
TDP_MMU_C = "arch/x86/kvm/mmu/tdp_mmu.c"
KVM_MAIN_C = "virt/kvm/kvm_main.c"
GMEM_C = "virt/kvm/guest_memfd.c"
X86_C = "arch/x86/kvm/x86.c"

#: function -> where it lives (v6 and the tree it is based on)
SOURCES: dict[str, str] = {
    "tdx_handle_ept_violation": f"{KVM_TDX_C}: tdx_handle_ept_violation()",
    "mmu_topup_memory_caches": f"{MMU_C}: mmu_topup_memory_caches()",
    "kvm_mmu_topup_memory_cache": f"{KVM_MAIN_C}: __kvm_mmu_topup_memory_cache()",
    "tdx_topup_pamt_cache": f"{TDX_C}: tdx_topup_pamt_cache() (v6 08/11)",
    "tdx_free_pamt_cache": f"{TDX_C}: tdx_free_pamt_cache() (v6 08/11)",
    "mmu_free_memory_caches": f"{MMU_C}: mmu_free_memory_caches() (from kvm_mmu_destroy())",
    "kvm_mmu_faultin_pfn": (
        f"{MMU_C}: kvm_mmu_faultin_pfn() -> mmu_invalidate_retry_gfn_unsafe(), kvm_gmem_get_pfn()"
    ),
    "kvm_tdp_mmu_map": f"{TDP_MMU_C}: kvm_tdp_mmu_map() (via kvm_tdp_mmu_page_fault())",
    "tdp_mmu_alloc_sp": f"{TDP_MMU_C}: tdp_mmu_alloc_sp()",
    "tdx_sept_map_nonleaf_spte": (
        f"{KVM_TDX_C}: tdx_sept_set_private_spte() -> tdx_sept_map_nonleaf_spte()"
    ),
    "tdx_sept_map_leaf_spte": f"{KVM_TDX_C}: tdx_sept_set_private_spte() -> tdx_sept_map_leaf_spte()",
    "tdx_pamt_get": f"{TDX_C}: tdx_pamt_get() (v6 05, 06, 08/11)",
    "tdx_pamt_put": f"{TDX_C}: tdx_pamt_put() (v6 05, 06/11)",
    "tdx_alloc_control_page": f"{TDX_C}: tdx_alloc_control_page() (v6)",
    "tdx_td_init": f"{KVM_TDX_C}: __tdx_td_init()",
    "kvm_tdp_mmu_alloc_root": f"{TDP_MMU_C}: kvm_tdp_mmu_alloc_root()",
    "tdx_vcpu_create": f"{KVM_TDX_C}: tdx_td_vcpu_init()",
    "mempool_create": "mm/mempool.c: mempool_create() (a rejected design)",
    "tdx_td_finalize": f"{KVM_TDX_C}: tdx_td_finalize()",
    "tdx_vcpu_free": f"{KVM_TDX_C}: tdx_vcpu_free() (from kvm_arch_vcpu_destroy())",
    "tdx_sept_remove_leaf_spte": (
        f"{KVM_TDX_C}: tdx_sept_remove_leaf_spte() (v6 09/11: tdx_pamt_put after PAGE.REMOVE)"
    ),
    "kvm_gmem_punch_hole": f"{GMEM_C}: kvm_gmem_punch_hole() (fallocate PUNCH_HOLE)",
    "__kvm_gmem_invalidate_begin": (
        f"{GMEM_C}: __kvm_gmem_invalidate_begin() -> {KVM_MAIN_C}: kvm_mmu_invalidate_begin()"
    ),
    "__kvm_gmem_invalidate_end": (
        f"{GMEM_C}: __kvm_gmem_invalidate_end() -> {KVM_MAIN_C}: kvm_mmu_invalidate_end()"
    ),
    "kvm_destroy_vm": (
        f"{KVM_MAIN_C}: kvm_destroy_vm(), {X86_C}: kvm_arch_destroy_vm() (mainline >= 6.15)"
    ),
    "kvm_tdp_mmu_zap_all": f"{TDP_MMU_C}: kvm_tdp_mmu_zap_all() (from the MMU notifier's release)",
    "tdx_mmu_release_hkid": f"{KVM_TDX_C}: tdx_mmu_release_hkid()",
    "tdx_sept_free_private_spt": f"{KVM_TDX_C}: tdx_sept_free_private_spt()",
    "tdx_vm_destroy": f"{KVM_TDX_C}: tdx_vm_destroy() -> tdx_reclaim_td_control_pages()",
    "trace": "the trace itself (not kernel code)",
}

PSEUDOCODE: dict[str, list[Line]] = {
    "tdx_handle_ept_violation": [
        (("fault.begin",), "tdx_handle_ept_violation(vcpu, gpa):"),
        (("fault.vm_bugged",), "  if VM bugged: return -EIO"),
        ((), "  loop:"),
        (("fault.enomem",), "    if mmu_topup_memory_caches(vcpu): return -ENOMEM"),
        ((), "    ret = kvm_mmu_faultin_pfn(gfn)       # guest_memfd, after the top-ups"),
        ((), "    if ret == CONTINUE: read_lock(mmu_lock); ret = kvm_tdp_mmu_map(vcpu, gfn, pfn)"),
        (("fault.done",), "    if ret != RET_PF_RETRY: return ret"),
        (("fault.eio",), "    if error or TD going away: return -EIO"),
        (
            ("fault.livelock",),
            "    (explorer: after max_retries, report a livelock; the kernel retries until a signal)",
        ),
        (("fault.retry",), "    cond_resched(); retry locally, without re-entering the guest"),
    ],
    "mmu_topup_memory_caches": [
        ((), "mmu_topup_memory_caches(vcpu):        # sleepable, before mmu_lock"),
        ((), "  topup(pte_list_desc,  1 + PT64_ROOT_MAX_LEVEL + PTE_PREFETCH_NUM)"),
        (
            (),
            "  topup(mmu_external_spt_cache, PT64_ROOT_MAX_LEVEL)",
            V6_FAMILY - {"v4-shared-list"} | NO_CACHE | {"v6-locked"},
        ),
        (
            (),
            "  topup_external_cache(vcpu, PT64_ROOT_MAX_LEVEL)   # -> tdx_topup_pamt_cache",
            V6_FAMILY | {"v6-locked"},
        ),
        ((), "  topup(mmu_shadow_page_cache, PT64_ROOT_MAX_LEVEL)"),
        ((), "  topup(mmu_page_header_cache, PT64_ROOT_MAX_LEVEL)"),
        ((), "  the first failure returns -ENOMEM (nothing rolled back)"),
    ],
    "kvm_mmu_topup_memory_cache": [
        ((), "__kvm_mmu_topup_memory_cache(mc, capacity 40, min):"),
        ((), "  if mc->nobjs >= min: return 0"),
        ((), "  while mc->nobjs < capacity:"),
        ((), "    obj = alloc(GFP_KERNEL_ACCOUNT)"),
        (
            (),
            "    (v5 design: tdx_pamt_get(page, NULL) for each S-EPT page)",
            only("v5-topup-install"),
        ),
        (("kvm_topup.fail",), "    if !obj: return mc->nobjs >= min ? 0 : -ENOMEM"),
        (("kvm_topup.fill",), "    mc->objects[mc->nobjs++] = obj"),
    ],
    "tdx_topup_pamt_cache": [
        (
            (),
            "tdx_topup_pamt_cache(cache, npages):",
            V6_FAMILY - {"kvm-style-cache"} | {"v6-locked"},
        ),
        (
            (),
            "  npages *= TDX_DPAMT_ENTRY_PAGE_CNT     # 2 pages per get",
            V6_FAMILY | {"v6-locked"},
        ),
        (
            (),
            "  (v4 design: one list for S-EPT and DPAMT pages: fill to tables + 2n)",
            only("v4-shared-list"),
        ),
        (
            (),
            "  (KVM-style design: nothing if >= 2n, else fill to capacity 40)",
            only("kvm-style-cache"),
        ),
        (("pamt_cache.full",), "  while cache->cnt < npages:"),
        ((), "    page = alloc_page(GFP_KERNEL_ACCOUNT)"),
        (("pamt_cache.topup_fail",), "    if !page: return -ENOMEM"),
        (("pamt_cache.topup",), "    list_add(&page->lru, &cache->page_list); cache->cnt++"),
    ],
    "tdx_free_pamt_cache": [
        ((), "tdx_free_pamt_cache(cache):"),
        (("pamt_cache.free",), "  while (page = pop(cache)): __free_page(page)"),
    ],
    "mmu_free_memory_caches": [
        ((), "mmu_free_memory_caches(vcpu):          # from kvm_mmu_destroy()"),
        (("kvm_caches.free",), "  kvm_mmu_free_memory_cache() for each MMU cache"),
    ],
    "kvm_mmu_faultin_pfn": [
        ((), "kvm_mmu_faultin_pfn(vcpu, fault):"),
        ((), "  fault->mmu_seq = kvm->mmu_invalidate_seq; smp_rmb()"),
        (
            ("faultin.retry_early",),
            "  if mmu_invalidate_retry_gfn_unsafe(kvm, mmu_seq, gfn): return RET_PF_RETRY",
        ),
        ((), "    # an invalidation of gfn in progress: retry now, without mmu_lock"),
        (("faultin.alloc",), "  pfn = kvm_gmem_get_pfn(gfn)         # allocates on first touch"),
        (("faultin.given",), "  (the trace names the page guest_memfd holds for the gfn)"),
        (("faultin.enomem", "faultin.taken"), "  if !pfn: return -ENOMEM"),
        (
            ("faultin.retry_late",),
            "  if mmu_invalidate_retry_gfn_unsafe(...): kvm_mmu_finish_page_fault(); RET_PF_RETRY",
        ),
        ((), "  return RET_PF_CONTINUE"),
    ],
    "kvm_tdp_mmu_map": [
        (("mmu_lock.read", "mmu_lock.read_spin"), "read_lock(&kvm->mmu_lock)"),
        (
            ("fault.stale",),
            "if is_page_fault_stale(): RET_PF_RETRY  # mmu_invalidate_retry_gfn, the last check",
        ),
        ((), "for each level from the root down to the goal:"),
        (("walk.frozen",), "  if entry frozen by another vCPU: RET_PF_RETRY"),
        ((), "  if entry not present:"),
        ((), "    sp = tdp_mmu_alloc_sp(vcpu)       # header + shadow page + S-EPT page"),
        (("tdp.freeze_lost",), "    if !cmpxchg(entry, 0, FROZEN): free sp; RET_PF_RETRY"),
        (("tdp.freeze",), "    entry = FROZEN_SPTE"),
        ((), "    set_external_spte -> tdx_sept_map_nonleaf_spte(sp)"),
        (("tdp.unwind",), "    on error: restore entry, free sp, RET_PF_RETRY"),
        (("tdp.alloc_bug",), "    (cache empty and GFP_ATOMIC failed: BUG_ON)"),
        (("leaf.spurious",), "at the goal: if the leaf is present: spurious, done"),
        (("leaf.frozen",), "  if the leaf is frozen by another vCPU: RET_PF_RETRY"),
        (("leaf.freeze",), "  freeze the leaf"),
        ((), "  set_external_spte -> tdx_sept_map_leaf_spte(gfn, pfn)"),
        (("leaf.unwind",), "  on error: restore the leaf, RET_PF_RETRY"),
        (("mmu_lock.read_unlock",), "read_unlock(&kvm->mmu_lock)"),
    ],
    "tdp_mmu_alloc_sp": [
        ((), "tdp_mmu_alloc_sp(vcpu):"),
        ((), "  sp = kvm_mmu_memory_cache_alloc(mmu_page_header_cache)"),
        ((), "  sp->spt = kvm_mmu_memory_cache_alloc(mmu_shadow_page_cache)"),
        (
            ("tdp.alloc_sp",),
            "  sp->external_spt = kvm_mmu_memory_cache_alloc(mmu_external_spt_cache)",
        ),
        (
            (),
            "  (v4 design: the S-EPT page comes off the shared per-vCPU list first)",
            only("v4-shared-list"),
        ),
        ((), "  (an empty cache WARNs and falls back to GFP_ATOMIC)"),
    ],
    "tdx_sept_map_nonleaf_spte": [
        ((), "tdx_sept_map_nonleaf_spte(kvm, gfn, level, spte):"),
        ((), "  if tdx_pamt_get(pfn(sept_pt), &tdx->pamt_cache): return error"),
        (
            (),
            "  (v5 design: the page came with its reference from the top-up)",
            only("v5-topup-install"),
        ),
        (("sept.add_fail",), "  err = TDH.MEM.SEPT.ADD(gpa, level, sept_pt)"),
        ((), "  if err: tdx_pamt_put(pfn); return -EBUSY or TDX_BUG_ON"),
        (("sept.add",), "  return 0                                # table linked"),
    ],
    "tdx_sept_map_leaf_spte": [
        ((), "tdx_sept_map_leaf_spte(kvm, gfn, level, spte):"),
        (("leaf.kvm_bug",), "  if KVM_BUG_ON(level != PG_LEVEL_4K): return -EIO"),
        ((), "  if tdx_pamt_get(pfn, &tdx->pamt_cache): return error"),
        (("page.add",), "  TD being built: TDH.MEM.PAGE.ADD(gpa, pfn)"),
        (("page.aug",), "  TD running:     TDH.MEM.PAGE.AUG(gpa, pfn)"),
        (("leaf.aug_fail",), "  on error: tdx_pamt_put(pfn); return -EBUSY/-EIO"),
    ],
    "tdx_pamt_get": [
        ((), "tdx_pamt_get(pfn, cache):"),
        ((), "  refcount = tdx_find_pamt_refcount(pfn)   # &pamt_refcounts[pfn >> 9]"),
        (
            ("pamt_get.fast",),
            "  if atomic_inc_not_zero(refcount): return 0      # fast path",
            V6_FAMILY | NO_CACHE,
        ),
        (
            ("pamt_get.slow",),
            "  # refcount was 0: this region needs a PAMT page pair",
            V6_FAMILY | NO_CACHE,
        ),
        ((), "  alloc_pamt_array(pages, cache):"),
        (
            ("pamt_get.pop",),
            "    pages[i] = cache ? pop(cache) : alloc_page()  # never sleeps with a cache",
            V6_FAMILY - {"mempool"} | {"v6-locked"},
        ),
        (("pamt_get.alloc",), "    (no cache: alloc_page(GFP_KERNEL_ACCOUNT))"),
        (
            ("pamt_get.alloc_atomic",),
            "    (design: alloc_page(GFP_ATOMIC/GFP_NOWAIT) under mmu_lock)",
            only("mempool", "atomic-under-lock"),
        ),
        (
            ("pamt_get.mempool",),
            "    (mempool design: GFP_NOWAIT failed, take from the reserve)",
            only("mempool"),
        ),
        (
            ("pamt_get.alloc_sleeping",),
            "    (rejected design: GFP_KERNEL under mmu_lock: may sleep!)",
            only("sleeping-under-lock"),
        ),
        (
            ("pamt_get.partial", "pamt_get.enomem"),
            "    if a page is missing: __free_page() the other; return -ENOMEM",
        ),
        (("pamt_get.lock", "pamt_get.lock.spin"), "  spin_lock(&pamt_lock)"),
        (
            ("pamt_get.lost_race",),
            "  if atomic_read(refcount): atomic_inc(refcount); goto out_free  # lost race",
            (V6_FAMILY | NO_CACHE) - {"v6-no-recheck"},
        ),
        (
            ("pamt_get.no_recheck",),
            "  (deliberately broken: the lost-race recheck is missing)",
            only("v6-no-recheck"),
        ),
        (
            ("pamt_get.pair_present",),
            "  if atomic_read(refcount): atomic_inc(refcount); goto out_free  # pair present",
            only("v6-locked"),
        ),
        (
            ("pamt_get.add",),
            "  if TDH.PHYMEM.PAMT.ADD(pfn, pages) == TDX_SUCCESS: atomic_set(refcount, 1)",
        ),
        (
            ("pamt_get.add_hint",),
            "  else if TDX_HPA_RANGE_NOT_FREE: atomic_set(refcount, 1)  # v5: a put is pending",
            only("v5-hint"),
        ),
        (("pamt_get.add_fail",), "  else: WARN_ON_ONCE(1); ret = -EIO"),
        (("pamt_get.unlock",), "  spin_unlock(&pamt_lock)"),
        (
            ("pamt_get.reset_pair",),
            "out_free: free_pamt_array(pages): tdx_quirk_reset_paddr() each page,",
        ),
        (("pamt_get.free_pair",), "          then __free_page() (to the page allocator)"),
    ],
    "tdx_pamt_put": [
        ((), "tdx_pamt_put(pfn):"),
        ((), "  refcount = tdx_find_pamt_refcount(pfn)"),
        (
            ("pamt_put.fast", "pamt_put.slow"),
            "  if !atomic_dec_and_lock(refcount, &pamt_lock): return   # not the last",
            V6_FAMILY - {"v5-hint"} | NO_CACHE,
        ),
        (
            ("pamt_put.fast", "pamt_put.dec_unlocked"),
            "  if !atomic_dec_and_test(refcount): return   # v5: no lock",
            only("v5-hint"),
        ),
        (("pamt_put.lock", "pamt_put.lock.spin"), "  spin_lock(&pamt_lock)"),
        (
            ("pamt_put.dec",),
            "  if atomic_read(refcount) > 1: atomic_dec(refcount); unlock; return",
            only("v6-locked"),
        ),
        (
            ("pamt_put.dec", "pamt_put.slipped"),
            "  (atomic_dec_and_lock: the count reached 0 under the lock, else a get slipped in)",
            V6_FAMILY - {"v5-hint"} | NO_CACHE,
        ),
        (
            ("pamt_put.slipped",),
            "  if atomic_read(refcount): unlock; return   # v5: a get slipped in",
            only("v5-hint"),
        ),
        (("pamt_put.remove",), "  TDH.PHYMEM.PAMT.REMOVE(pfn) -> pages"),
        (
            ("pamt_put.remove_fail",),
            "  if WARN_ON_ONCE(err): atomic_set(refcount, 1); unlock; return  # pair leaked",
        ),
        (("pamt_put.unlock",), "  spin_unlock(&pamt_lock)"),
        (("pamt_put.reset_pair",), "  free_pamt_array(pages): tdx_quirk_reset_paddr() each page,"),
        (("pamt_put.free_pair",), "          then __free_page() (to the page allocator)"),
    ],
    "tdx_alloc_control_page": [
        ((), "tdx_alloc_control_page():"),
        (("control.alloc",), "  page = alloc_page(GFP_KERNEL_ACCOUNT)"),
        (("control.enomem",), "  if !page: return NULL"),
        (("control.get_fail",), "  if tdx_pamt_get(pfn, NULL): __free_page(page); return NULL"),
        ((), "  return page"),
    ],
    "tdx_td_init": [
        (("td.begin",), "create the TD:"),
        (
            ("control.seamcall", "control.seamcall_fail"),
            "  TDR = tdx_alloc_control_page(); TDH.MNG.CREATE",
        ),
        (("td.hkid",), "  TDH.MNG.KEY.CONFIG                   # the TD gets its HKID"),
        ((), "  for each TDCS page: tdx_alloc_control_page(); TDH.MNG.ADDCX"),
        (
            ("td.fail", "td.failed", "control.reclaim", "control.free"),
            "  on error: reclaim, put, free",
        ),
        (("td.ready",), "  TDH.MNG.INIT"),
    ],
    "kvm_tdp_mmu_alloc_root": [
        (("td.mirror_root",), "allocate KVM's mirror root page (the S-EPT root lives in the TDCS)"),
    ],
    "tdx_vcpu_create": [
        (("vcpu.begin",), "create the vCPU: tdx_init_pamt_cache(&tdx->pamt_cache)"),
        (
            ("control.seamcall", "control.seamcall_fail"),
            "  TDVPR: tdx_alloc_control_page(); TDH.VP.CREATE",
        ),
        ((), "  for each TDCX page: tdx_alloc_control_page(); TDH.VP.ADDCX"),
        (("vcpu.failed", "control.reclaim", "control.free"), "  on error: reclaim, put, free"),
        (("vcpu.ready",), "  TDH.VP.INIT"),
    ],
    "mempool_create": [
        (
            ("mempool.create",),
            "mempool_create(min_nr = 2 * n): fill the reserve once",
            only("mempool"),
        ),
    ],
    "tdx_td_finalize": [
        (("td.finalize",), "TDH.MR.FINALIZE: the TD runs; faults now use TDH.MEM.PAGE.AUG"),
    ],
    "tdx_vcpu_free": [
        ((), "tdx_vcpu_free(vcpu):"),
        ((), "  tdx_free_pamt_cache(&tdx->pamt_cache)"),
        (("vcpu.leak",), "  if is_hkid_assigned(kvm_tdx): return   # pages never reclaimed"),
        (("control.reclaim",), "  reclaim each TDCX page, then the TDVPR"),
        (("control.free",), "    tdx_free_control_page(): tdx_pamt_put(pfn); __free_page(page)"),
        ((), "then kvm_mmu_destroy() -> mmu_free_memory_caches(vcpu)"),
        (("vcpu.freed",), "the vCPU is gone"),
    ],
    "kvm_gmem_punch_hole": [
        ((), "kvm_gmem_punch_hole(inode, offset, len):"),
        ((), "  filemap_invalidate_lock(mapping)"),
        ((), "  kvm_gmem_invalidate_begin()      # write mmu_lock: begin, unmap, unlock"),
        (
            ("gmem.truncate",),
            "  truncate_inode_pages_range()     # the page to the allocator, no mmu_lock",
        ),
        ((), "  kvm_gmem_invalidate_end()        # write mmu_lock: mmu_invalidate_seq++"),
        ((), "  filemap_invalidate_unlock(mapping)"),
    ],
    "__kvm_gmem_invalidate_begin": [
        ((), "__kvm_gmem_invalidate_begin(f, start, end):"),
        (("mmu_lock.write", "mmu_lock.write_spin"), "  KVM_MMU_LOCK(kvm)         # write_lock"),
        (
            ("invalidate.begin",),
            "  kvm_mmu_invalidate_begin(kvm)  # in_progress++; range_add(start, end)",
        ),
        (("zap.gone",), "  kvm_mmu_unmap_gfn_range()  # the mirror leaf, if still mapped:"),
        ((), "    -> tdx_sept_remove_leaf_spte(gfn, pfn)"),
        (("mmu_lock.write_unlock",), "  KVM_MMU_UNLOCK(kvm)       # in_progress stays > 0"),
    ],
    "tdx_sept_remove_leaf_spte": [
        ((), "tdx_sept_remove_leaf_spte(kvm, gfn, pfn):   # write mmu_lock held"),
        ((), "  TDH.MEM.RANGE.BLOCK; tdx_track(): TDH.MEM.TRACK, kick vCPUs"),
        (("zap.page_remove",), "  TDH.MEM.PAGE.REMOVE(gpa); tdx_quirk_reset_paddr()"),
        ((), "  tdx_pamt_put(pfn)             # guest_memfd still owns the page"),
    ],
    "__kvm_gmem_invalidate_end": [
        ((), "__kvm_gmem_invalidate_end(f, start, end):"),
        (("mmu_lock.write", "mmu_lock.write_spin"), "  KVM_MMU_LOCK(kvm)"),
        (
            ("invalidate.end",),
            "  kvm_mmu_invalidate_end(kvm)    # mmu_invalidate_seq++; in_progress--",
        ),
        (("mmu_lock.write_unlock",), "  KVM_MMU_UNLOCK(kvm)"),
    ],
    "kvm_destroy_vm": [
        (("td.destroy",), "destroy the TD:"),
        ((), "  kvm_gmem_release(): invalidate every gfn: PAGE.REMOVE + put, HKID held"),
        ((), "  kvm_arch_pre_destroy_vm() -> tdx_mmu_release_hkid()"),
        ((), "  mmu_notifier_unregister() -> kvm_tdp_mmu_zap_all()   # direct roots only"),
        ((), "  kvm_arch_destroy_vm():"),
        ((), "    kvm_destroy_vcpus(): tdx_vcpu_free() (cache, TDCX, TDVPR), KVM's caches"),
        ((), "    kvm_mmu_uninit_vm(): each S-EPT table: tdx_sept_free_private_spt()"),
        ((), "    kvm_x86_call(vm_destroy) -> tdx_vm_destroy(): TDCS pages, then the TDR"),
        (("td.destroyed",), "  guest_memfd's inode frees its pages"),
    ],
    "kvm_tdp_mmu_zap_all": [
        (
            ("td.notifier_release",),
            "kvm_tdp_mmu_zap_all(kvm): zap KVM_DIRECT_ROOTS | KVM_INVALID_ROOTS (no mirror)",
        ),
    ],
    "tdx_mmu_release_hkid": [
        (("td.hkid_release",), "TDH.PHYMEM.CACHE.WB; TDH.MNG.KEY.FREEID: release the HKID"),
    ],
    "tdx_sept_free_private_spt": [
        (("sept.reclaim",), "TDH.PHYMEM.PAGE.RECLAIM(S-EPT page)"),
        ((), "tdx_free_control_page(): tdx_pamt_put(pfn) (immediately, not from RCU)"),
        (("sept.free",), "__free_page(S-EPT page); free the mirror page"),
    ],
    "tdx_vm_destroy": [
        (("control.reclaim",), "tdx_reclaim_td_control_pages(): each TDCS page, then the TDR"),
        (("control.free",), "  tdx_free_control_page(): tdx_pamt_put(pfn); __free_page(page)"),
    ],
    "trace": [
        (("trace.inject",), "inject: make the next N operations fail"),
        (("trace.note",), "note"),
    ],
}


def pseudocode(function: str, mode: str | None = None) -> list[tuple[tuple[str, ...], str]]:
    """The lines of ``function`` that ``mode`` runs (every line with ``mode`` None)."""
    out: list[tuple[tuple[str, ...], str]] = []
    for line in PSEUDOCODE.get(function, []):
        if mode is not None and len(line) == 3 and mode not in line[2]:
            continue
        out.append((line[0], line[1]))
    return out


def line_of(function: str, label: str, mode: str | None = None) -> int | None:
    """Index of the line of ``pseudocode(function, mode)`` that ``label`` highlights."""
    for i, (labels, _text) in enumerate(pseudocode(function, mode)):
        if label in labels:
            return i
    return None


def all_labels() -> set[str]:
    return {label for lines in PSEUDOCODE.values() for line in lines for label in line[0]}
