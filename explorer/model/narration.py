"""Short pseudocode of each kernel function the engine runs, with the step labels per line.

Written for this project (not kernel source): enough for the code panel to highlight where each
CPU is. Each entry of :data:`PSEUDOCODE` is a list of ``(labels, text)``: the labels a step may
carry while that line runs (empty for context lines). A test checks that every label the engine
yields appears here, so the panel never shows a step without its line.
"""

from __future__ import annotations

Line = tuple[tuple[str, ...], str]

PSEUDOCODE: dict[str, list[Line]] = {
    "tdx_handle_ept_violation": [
        (("fault.begin",), "tdx_handle_ept_violation(vcpu, gpa):"),
        (("fault.vm_bugged",), "  if VM bugged: return -EIO"),
        ((), "  loop:"),
        (("fault.enomem",), "    if mmu_topup_memory_caches(vcpu): return -ENOMEM"),
        ((), "    pfn = kvm_faultin_pfn(gfn)            # guest_memfd"),
        ((), "    ret = kvm_tdp_mmu_map(vcpu, gfn, pfn)"),
        (("fault.done",), "    if ret != RET_PF_RETRY: return ret"),
        (("fault.eio",), "    if error or TD going away: return -EIO"),
        (("fault.livelock",), "    if ++retries > max_retries: livelock (spins until a signal)"),
        (("fault.retry",), "    retry locally, without re-entering the guest"),
    ],
    "mmu_topup_memory_caches": [
        ((), "mmu_topup_memory_caches(vcpu):        # sleepable, before mmu_lock"),
        ((), "  topup(pte_list_desc,  1 + PT64_ROOT_MAX_LEVEL + PTE_PREFETCH_NUM)"),
        ((), "  topup(mmu_external_spt_cache, PT64_ROOT_MAX_LEVEL)"),
        ((), "  topup_external_cache(vcpu, 5)        # v6: tdx_topup_pamt_cache"),
        ((), "  topup(mmu_shadow_page_cache, PT64_ROOT_MAX_LEVEL)"),
        ((), "  topup(mmu_page_header_cache, PT64_ROOT_MAX_LEVEL)"),
        ((), "  the first failure returns -ENOMEM (nothing rolled back)"),
    ],
    "kvm_mmu_topup_memory_cache": [
        ((), "kvm_mmu_topup_memory_cache(mc, min):"),
        ((), "  if mc->nobjs >= min: return 0"),
        ((), "  while mc->nobjs < capacity (40):"),
        ((), "    obj = alloc(GFP_KERNEL_ACCOUNT)"),
        (("kvm_topup.fail",), "    if !obj: return mc->nobjs >= min ? 0 : -ENOMEM"),
        (("kvm_topup.fill",), "    mc->objects[mc->nobjs++] = obj"),
    ],
    "tdx_topup_pamt_cache": [
        ((), "tdx_topup_pamt_cache(cache, n):"),
        ((), "  npages = n * TDX_DPAMT_ENTRY_PAGE_CNT     # 2 pages per get"),
        (("pamt_cache.full",), "  while cache->cnt < npages:"),
        ((), "    page = alloc_page(GFP_KERNEL_ACCOUNT)"),
        (("pamt_cache.topup_fail",), "    if !page: return -ENOMEM"),
        (("pamt_cache.topup",), "    list_add(page, &cache->page_list); cache->cnt++"),
    ],
    "tdx_free_pamt_cache": [
        ((), "tdx_free_pamt_cache(cache):"),
        (("pamt_cache.free",), "  while (page = pop(cache)): __free_page(page)"),
    ],
    "kvm_mmu_free_memory_caches": [
        ((), "kvm_mmu_free_memory_caches(vcpu):"),
        (("kvm_caches.free",), "  free every object of every MMU cache"),
    ],
    "kvm_faultin_pfn": [
        ((), "kvm_faultin_pfn(vcpu, fault):"),
        (("faultin.alloc",), "  pfn = kvm_gmem_get_pfn(gfn)         # allocates on first touch"),
        (("faultin.enomem",), "  if !pfn: return -ENOMEM"),
    ],
    "kvm_tdp_mmu_map": [
        (("mmu_lock.read", "mmu_lock.read_spin"), "read_lock(&kvm->mmu_lock)"),
        ((), "for each level from the root down to the goal:"),
        (("walk.frozen",), "  if entry frozen by another vCPU: RET_PF_RETRY"),
        ((), "  if entry not present:"),
        ((), "    sp = tdp_mmu_alloc_sp(vcpu)       # header + shadow page + S-EPT page"),
        (("tdp.freeze_lost",), "    if !cmpxchg(entry, 0, FROZEN): free sp; RET_PF_RETRY"),
        (("tdp.freeze",), "    entry = FROZEN_SPTE"),
        ((), "    tdx_sept_link_private_spt(sp)      # tdx_pamt_get + SEPT.ADD"),
        (("tdp.unwind",), "    on error: restore entry, free sp, RET_PF_RETRY"),
        (("tdp.alloc_bug",), "    (cache empty and GFP_ATOMIC failed: BUG_ON)"),
        (("leaf.spurious",), "at the goal: if the leaf is present: spurious, done"),
        (("leaf.frozen",), "  if the leaf is frozen by another vCPU: RET_PF_RETRY"),
        (("leaf.freeze",), "  freeze the leaf"),
        ((), "  tdx_sept_set_private_spte(gfn, pfn)   # tdx_pamt_get + AUG/ADD"),
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
        ((), "  (an empty cache WARNs and falls back to GFP_ATOMIC)"),
    ],
    "tdx_sept_link_private_spt": [
        ((), "tdx_sept_link_private_spt(level, external_spt):"),
        ((), "  if tdx_pamt_get(pfn(external_spt), &vcpu->pamt_cache): return error"),
        (("sept.add_fail",), "  err = TDH.MEM.SEPT.ADD(gpa, level, external_spt)"),
        ((), "  if err: tdx_pamt_put(pfn); return -EBUSY/-EIO"),
        (("sept.add",), "  return 0                                # table linked"),
    ],
    "tdx_sept_set_private_spte": [
        ((), "tdx_sept_set_private_spte(gfn, level, pfn):"),
        (("leaf.kvm_bug",), "  if KVM_BUG_ON(level != PG_LEVEL_4K): return -EIO"),
        ((), "  if tdx_pamt_get(pfn, &vcpu->pamt_cache): return error"),
        (("page.add",), "  TD being built: TDH.MEM.PAGE.ADD(gpa, pfn)"),
        (("page.aug",), "  TD running:     TDH.MEM.PAGE.AUG(gpa, pfn)"),
        (("leaf.aug_fail",), "  on error: tdx_pamt_put(pfn); return -EBUSY/-EIO"),
    ],
    "tdx_pamt_get": [
        ((), "tdx_pamt_get(pfn, cache):"),
        ((), "  refcount = &pamt_refcounts[pfn >> 9]"),
        (("pamt_get.fast",), "  if atomic_inc_not_zero(refcount): return 0      # fast path"),
        (("pamt_get.slow",), "  # refcount was 0: this region needs a PAMT page pair"),
        (("pamt_get.pop",), "  pages = 2 x (cache ? pop(cache) : ...)          # never sleeps"),
        (("pamt_get.alloc",), "          (no cache: alloc_page(GFP_KERNEL_ACCOUNT))"),
        (
            ("pamt_get.alloc_atomic",),
            "          (atomic/mempool designs: GFP_ATOMIC under mmu_lock)",
        ),
        (
            ("pamt_get.mempool",),
            "          (mempool design: GFP_NOWAIT failed, take from the reserve)",
        ),
        (
            ("pamt_get.alloc_sleeping",),
            "          (rejected design: GFP_KERNEL under mmu_lock: may sleep!)",
        ),
        (
            ("pamt_get.partial", "pamt_get.enomem"),
            "  if a page is missing: free the other to the allocator; -ENOMEM",
        ),
        (("pamt_get.lock", "pamt_get.lock.spin"), "  spin_lock(&pamt_lock)"),
        (("pamt_get.lost_race",), "  if atomic_read(refcount): atomic_inc(refcount)  # lost race"),
        (
            ("pamt_get.add",),
            "  else if TDH.PHYMEM.PAMT.ADD(pfn, pages) ok: atomic_set(refcount, 1)",
        ),
        (("pamt_get.add_hint",), "  else if HPA_RANGE_NOT_FREE (v5): atomic_set(refcount, 1)"),
        (("pamt_get.add_fail",), "  else: WARN, ret = -EIO"),
        (("pamt_get.unlock",), "  spin_unlock(&pamt_lock)"),
        (("pamt_get.free_pair",), "  if lost race or error: free both pages to the page allocator"),
    ],
    "tdx_pamt_put": [
        ((), "tdx_pamt_put(pfn):"),
        (("pamt_put.fast",), "  if atomic_add_unless(refcount, -1, 1): return  # fast path"),
        (("pamt_put.dec_unlocked",), "  (v5: atomic_dec_and_test without the lock)"),
        (("pamt_put.slow",), "  # refcount is 1: the last user"),
        (("pamt_put.lock", "pamt_put.lock.spin"), "  spin_lock(&pamt_lock)"),
        (("pamt_put.dec",), "  if !atomic_dec_and_test(refcount):"),
        (("pamt_put.slipped",), "    unlock; return                  # a get slipped in"),
        (("pamt_put.remove",), "  TDH.PHYMEM.PAMT.REMOVE(pfn) -> pages"),
        (("pamt_put.remove_fail",), "  on error: WARN; atomic_set(refcount, 1)   # pair leaked"),
        (("pamt_put.unlock",), "  spin_unlock(&pamt_lock)"),
        (("pamt_put.free_pair",), "  free both pages to the page allocator"),
    ],
    "tdx_alloc_control_page": [
        ((), "tdx_alloc_control_page():"),
        (("control.alloc",), "  page = alloc_page(GFP_KERNEL_ACCOUNT)"),
        (("control.enomem",), "  if !page: return NULL"),
        (("control.get_fail",), "  if tdx_pamt_get(pfn, NULL): free page; return NULL"),
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
        (("mempool.create",), "mempool_create(min_nr = 2 * n): fill the reserve once"),
    ],
    "tdx_td_finalize": [
        (("td.finalize",), "TDH.MR.FINALIZE: the TD runs; faults now use TDH.MEM.PAGE.AUG"),
    ],
    "tdx_vcpu_free": [
        ((), "tdx_vcpu_free(vcpu):"),
        ((), "  tdx_free_pamt_cache(&tdx->pamt_cache)"),
        ((), "  kvm_mmu_free_memory_caches(vcpu)"),
        (("control.reclaim",), "  if the HKID is released: reclaim TDCX, TDVPR pages"),
        (("control.free",), "    tdx_pamt_put(pfn); __free_page(page)"),
        (("vcpu.freed",), "  the vCPU is gone"),
    ],
    "tdx_sept_remove_private_spte": [
        (("mmu_lock.write", "mmu_lock.write_spin"), "write_lock(&kvm->mmu_lock)"),
        (("zap.gone",), "if the gfn is not mapped: nothing to do"),
        (("zap.block",), "TDH.MEM.RANGE.BLOCK; TDH.MEM.TRACK; kick vCPUs"),
        (("zap.page_remove",), "TDH.MEM.PAGE.REMOVE(gpa)"),
        ((), "tdx_pamt_put(pfn)"),
        (("zap.free",), "guest_memfd releases the page"),
        (("mmu_lock.write_unlock",), "write_unlock(&kvm->mmu_lock)"),
    ],
    "tdx_td_destroy": [
        (("td.destroy",), "destroy the TD:"),
        (
            ("mmu_lock.write", "mmu_lock.write_spin", "mmu_lock.write_unlock"),
            "  under write_lock(mmu_lock): zap every leaf (PAGE.REMOVE, tdx_pamt_put)",
        ),
        ((), "  tdx_mmu_release_hkid()"),
        ((), "  for each S-EPT table: RECLAIM, tdx_pamt_put, free (not via RCU)"),
        ((), "  for each vCPU: reclaim TDCX, TDVPR; then TDCS, TDR last"),
        ((), "  free the vCPUs' caches"),
        (("td.destroyed",), "  free the mirror root and guest_memfd pages"),
    ],
    "tdx_mmu_release_hkid": [
        (("td.hkid_release",), "TDH.PHYMEM.CACHE.WB; TDH.MNG.KEY.FREEID: release the HKID"),
    ],
    "tdx_sept_free_private_spt": [
        (("sept.reclaim",), "TDH.PHYMEM.PAGE.RECLAIM(S-EPT page)"),
        ((), "tdx_pamt_put(pfn)"),
        (("sept.free",), "free the S-EPT page and its mirror page"),
    ],
    "tdx_td_free": [
        (("control.reclaim",), "reclaim each TDCS page, then the TDR"),
        (("control.free",), "  tdx_pamt_put(pfn); __free_page(page)"),
    ],
    "trace": [
        (("trace.inject",), "inject: make the next N operations fail"),
        (("trace.note",), "note"),
    ],
}


def line_of(function: str, label: str) -> int | None:
    """Index of the pseudocode line of ``function`` that ``label`` highlights, if any."""
    for i, (labels, _text) in enumerate(PSEUDOCODE.get(function, [])):
        if label in labels:
            return i
    return None


def all_labels() -> set[str]:
    return {label for lines in PSEUDOCODE.values() for labels, _ in lines for label in labels}
