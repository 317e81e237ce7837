"""Numbers the kernel and the TDX module fix, named as the kernel names them.

Sources: the v6 Dynamic PAMT series (arch/x86/virt/vmx/tdx/tdx.c, arch/x86/kvm/vmx/tdx.c),
``include/linux/kvm_types.h`` (``KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE``) and
``arch/x86/kvm/mmu/mmu.c`` (``mmu_topup_memory_caches``).
"""

from __future__ import annotations

from typing import Final

PAGE_SIZE: Final = 4096
#: 4 KiB pages per 2 MiB region; region of a pfn is ``pfn >> PAGES_PER_REGION_SHIFT``.
PAGES_PER_REGION_SHIFT: Final = 9
PAGES_PER_REGION: Final = 512  # 1 << PAGES_PER_REGION_SHIFT
REGION_SIZE: Final = 2 * 1024 * 1024  # PAGE_SIZE * PAGES_PER_REGION

#: Pages handed to PAMT.ADD per 2 MiB region: 512 entries x 16 B = 8 KiB (v6 hard-codes 2).
TDX_DPAMT_ENTRY_PAGE_CNT: Final = 2
#: Bytes of one PAMT entry (any level).
PAMT_ENTRY_SIZE: Final = 16
#: KVM's page-table worst case per fault (the default ``min`` of its page caches).
PT64_ROOT_MAX_LEVEL: Final = 5
#: Capacity of a KVM MMU memory cache (``KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE``).
KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE: Final = 40
#: ``PTE_PREFETCH_NUM``: part of the pte_list_desc cache's min (1 + max level + prefetch).
PTE_PREFETCH_NUM: Final = 8
#: Default ``n`` passed to ``tdx_topup_pamt_cache`` by ``topup_external_cache`` (v6): 5 gets.
DPAMT_GETS_PER_FAULT: Final = 5

#: TDX 1.0 control structures: 4 TDCS pages per TD, TDVPS = 6 pages = TDVPR + 5 TDCX per vCPU.
DEFAULT_TDCS_PAGES: Final = 4
DEFAULT_TDCX_PAGES: Final = 5

#: Pages a guest-physical address space reaches: GPAW 48 (4-level EPT) or 57 (5-level).
GFN_LIMIT = {4: 1 << (48 - 12), 5: 1 << (57 - 12)}

#: Every mode the engine implements. The first three are the series' own get/put variants
#: (dpamt-model.md section 4); the rest are the rejected designs of section 11.
MODES = (
    "v6",
    "v6-locked",
    "v5-hint",
    "v5-topup-install",
    "v4-shared-list",
    "kvm-style-cache",
    "mempool",
    "atomic-under-lock",
    "sleeping-under-lock",
    "v6-no-recheck",
)
#: Modes broken on purpose (a check must catch them): named with :func:`mode_label` wherever a
#: mode is shown, so nobody mistakes one for a design.
BROKEN_MODES = frozenset({"v6-no-recheck"})


def mode_label(mode: str) -> str:
    """A mode as the app and the reports name it: a broken mode says so."""
    return f"{mode} (deliberately broken)" if mode in BROKEN_MODES else mode


ALLOCATORS = ("lowest", "spread", "random", "percpu")
SCHEDULES = ("sequential", "round-robin", "random")
INJECTIONS = ("alloc_fail", "pamt_add_fail", "pamt_remove_fail", "sept_add_busy", "page_aug_busy")
