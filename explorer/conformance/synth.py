"""Captures a v6 host would print, made by rule (samples, tests, the benchmark).

There is no TDX host here, so the sample captures and the large benchmark captures are written
by :class:`HostSim`, a small simulation of what the v6 kernel does on the DPAMT paths and what
``tools/capture/dpamt.bt`` prints for it: the refcount per 2 MiB region shared by every TD
(``tdx_pamt_get`` / ``tdx_pamt_put``, v6 06/11), the per-vCPU ``tdx_pamt_cache`` topped up to
10 pages on every fault attempt (``tdx_topup_external_pamt_cache(vcpu, PT64_ROOT_MAX_LEVEL)``,
09/11), S-EPT tables got per level, the SPTE records as ``handle_changed_spte`` traces them
(one ``SHADOW_NONPRESENT_VALUE -> present`` per map after its get; ``present ->
SHADOW_NONPRESENT_VALUE`` per runtime zap before its put; ``present -> FROZEN_SPTE`` for leaves
under a removed table at teardown). It is the rules' author writing examples: a capture it makes
proves the checker consistent with this module, not with a kernel (docs/capture.md says what
stays unverified).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from explorer.conformance.importer import FROZEN_SPTE, SHADOW_NONPRESENT

#: An SPTE's low bits as the TDP MMU writes them for a present entry (present bit 11, RWX).
_LEAF_BITS = 0x800 | 0x600 | 0x7  # present, memtype WB (6 << 3 = 0x30 folded in the mask), RWX
_TABLE_BITS = 0x800 | 0x7
VMEMMAP_BASE = 0xFFFFEA0000000000
_HEX = frozenset(
    ["pfn", "cache", "kvm", "gpa", "rip", "gfn", "old_spte", "new_spte", "page", "error_code"]
)


@dataclass
class VmSim:
    kvm: int
    pid: int
    vmm_tid: int
    tdx: bool
    shared_bit: int = 47
    vcpus: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (tid, cache)
    tables: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    leaves: dict[int, int] = field(default_factory=dict)  # gfn -> pfn
    control: list[int] = field(default_factory=list)  # pfns
    vcpu_control: dict[int, list[int]] = field(default_factory=dict)  # vCPU tid -> pfns


class HostSim:
    """Emit records (``lines``) for the operations of a host running TDs and other VMs."""

    def __init__(self, *, pamt_probes: bool = True, header: bool = True, seed: int = 0) -> None:
        self.lines: list[str] = []
        self.ts = 1_000_000_000
        self.ref: dict[int, int] = {}
        self.cache: dict[int, int] = {}
        self.pamt_probes = pamt_probes
        self.next_kernel_pfn = 0x100000
        self.next_vm = 0
        self.rng = random.Random(seed)
        self.ctx: dict[int, int] = {}  # tid -> kvm context
        if header:
            self.lines += [
                "# dpamt-capture v2: <timestamp_ns> <cpu> <tid> <pid> <probe> key=value ...",
                "# vms_at_start=0",
                "# page_size=64",
                f"# vmemmap_base={VMEMMAP_BASE:#x}",
            ]

    # ---------------------------------------------------------------- output
    def emit(self, tid: int, pid: int, probe: str, **kv: int) -> None:
        self.ts += 700 + self.rng.randrange(600)
        kv.setdefault("kvm", self.ctx.get(tid, 0))
        parts = [f"{self.ts} {tid % 8} {tid} {pid} {probe}"]
        for k, v in kv.items():
            parts.append(f"{k}={v:#x}" if k in _HEX else f"{k}={v}")
        self.lines.append(" ".join(parts))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def comment(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def kernel_page(self) -> int:
        pfn = self.next_kernel_pfn
        self.next_kernel_pfn += 1
        return pfn

    # ---------------------------------------------------------------- DPAMT
    def get(self, tid: int, pid: int, pfn: int, cache: int = 0, lose_to: int | None = None) -> None:
        region = pfn >> 9
        before = self.cache.get(cache, -1) if cache else -1
        self.emit(tid, pid, "tdx_pamt_get.entry", pfn=pfn, cache=cache, cache_count=before)
        if self.ref.get(region, 0) == 0:
            if cache:
                self.cache[cache] = before - 2
            if self.pamt_probes:
                self.emit(tid, pid, "tdh_phymem_pamt_add.entry", pfn=pfn)
                self.emit(tid, pid, "tdh_phymem_pamt_add.return", ret=0)
            self.ref[region] = 1
        else:
            self.ref[region] += 1
        self.emit(
            tid,
            pid,
            "tdx_pamt_get.return",
            ret=0,
            cache_count=self.cache.get(cache, -1) if cache else -1,
        )

    def put(self, tid: int, pid: int, pfn: int) -> None:
        region = pfn >> 9
        self.emit(tid, pid, "tdx_pamt_put.entry", pfn=pfn)
        self.ref[region] -= 1
        if self.ref[region] == 0 and self.pamt_probes:
            self.emit(tid, pid, "tdh_phymem_pamt_remove.entry", pfn=pfn)
            self.emit(tid, pid, "tdh_phymem_pamt_remove.return", ret=0)
        self.emit(tid, pid, "tdx_pamt_put.return", ret=0)

    def topup(self, tid: int, pid: int, cache: int) -> None:
        c = self.cache.get(cache, 0)
        self.emit(tid, pid, "tdx_topup_pamt_cache.entry", cache=cache, npages=5, cache_count=c)
        self.cache[cache] = max(c, 10)
        self.emit(tid, pid, "tdx_topup_pamt_cache.return", ret=0, cache_count=self.cache[cache])

    def control_alloc(self, vm: VmSim, tid: int) -> None:
        pfn = self.kernel_page()
        self.emit(tid, vm.pid, "tdx_alloc_control_page.entry")
        self.get(tid, vm.pid, pfn)
        self.emit(tid, vm.pid, "tdx_alloc_control_page.return", ret=0, page=VMEMMAP_BASE + pfn * 64)
        vm.control.append(pfn)
        if tid != vm.vmm_tid:
            vm.vcpu_control.setdefault(tid, []).append(pfn)

    def control_free(self, vm: VmSim, tid: int, pfn: int) -> None:
        self.emit(tid, vm.pid, "tdx_free_control_page.entry", page=VMEMMAP_BASE + pfn * 64)
        self.put(tid, vm.pid, pfn)
        self.emit(tid, vm.pid, "tdx_free_control_page.return", ret=0)

    # ---------------------------------------------------------------- VMs
    def new_vm(
        self, *, tdx: bool = True, pid: int | None = None, vmm_tid: int | None = None
    ) -> VmSim:
        self.next_vm += 1
        n = self.next_vm
        vm = VmSim(0xFFFF888100000000 + n * 0x40000, pid or 1000 * n, vmm_tid or 1000 * n, tdx)
        self.ctx[vm.vmm_tid] = vm.kvm
        if tdx:
            for _ in range(1 + 4):  # tdx_td_init: TDR + TDCS pages
                self.control_alloc(vm, vm.vmm_tid)
        return vm

    def new_vcpu(self, vm: VmSim, vcpu: int, tid: int | None = None) -> None:
        tid = tid or vm.vmm_tid + 1 + vcpu
        cache = 0xFFFF888200000000 + (vm.kvm & 0xFFFFFF) * 0x100 + vcpu * 0x40 + 0x10
        vm.vcpus[vcpu] = (tid, cache)
        self.ctx[tid] = vm.kvm
        if vm.tdx:
            self.cache[cache] = 0
            for _ in range(1 + 3):  # tdx_td_vcpu_init: TDVPR + TDCX pages (vCPU ioctl thread)
                self.control_alloc(vm, tid)

    def _tables(self, vm: VmSim, tid: int, cache: int, gfn: int) -> None:
        for level in (4, 3, 2):
            key = (level, gfn >> (9 * (level - 1)))
            if key in vm.tables:
                continue
            external, mirror = self.kernel_page(), self.kernel_page()
            self.get(tid, vm.pid, external, cache)
            base = (gfn >> (9 * (level - 1))) << (9 * (level - 1))
            self.emit(
                tid,
                vm.pid,
                "kvm_tdp_mmu_spte_changed",
                as_id=0,
                gfn=base,
                level=level,
                old_spte=SHADOW_NONPRESENT,
                new_spte=(mirror << 12) | _TABLE_BITS,
            )
            vm.tables[key] = (external, mirror)

    def _map_leaf(self, vm: VmSim, tid: int, cache: int, gfn: int, pfn: int) -> None:
        self.get(tid, vm.pid, pfn, cache)
        self.emit(
            tid,
            vm.pid,
            "kvm_tdp_mmu_spte_changed",
            as_id=0,
            gfn=gfn,
            level=1,
            old_spte=SHADOW_NONPRESENT,
            new_spte=(pfn << 12) | _LEAF_BITS,
        )
        vm.leaves[gfn] = pfn

    def fault(
        self, vm: VmSim, vcpu: int, gfn: int, pfn: int | None = None, retries: int = 0
    ) -> None:
        """A private EPT violation: one ``kvm_page_fault``, one attempt per local retry (each
        tops up again), tables as needed, the leaf's get, its map. ``pfn`` None: spurious
        (already mapped, e.g. the other vCPU won)."""
        tid, cache = vm.vcpus[vcpu]
        gpa = gfn << 12
        code = 0x2 if vm.tdx else 0x182
        self.emit(
            tid,
            vm.pid,
            "kvm_page_fault",
            vcpu=vcpu,
            rip=0xFFFFFFFF81000000 + gfn % 4096,
            gpa=gpa,
            error_code=code,
        )
        for _ in range(retries + 1):
            self.emit(tid, vm.pid, "kvm_mmu_page_fault", gpa=gpa, error_code=code)
            if vm.tdx:
                self.topup(tid, vm.pid, cache)
        if pfn is None:
            return
        if not vm.tdx:
            for level in (4, 3, 2):
                key = (level, gfn >> (9 * (level - 1)))
                if key not in vm.tables:
                    base = (gfn >> (9 * (level - 1))) << (9 * (level - 1))
                    m = self.kernel_page()
                    self.emit(
                        tid,
                        vm.pid,
                        "kvm_tdp_mmu_spte_changed",
                        as_id=0,
                        gfn=base,
                        level=level,
                        old_spte=SHADOW_NONPRESENT,
                        new_spte=(m << 12) | _TABLE_BITS,
                    )
                    vm.tables[key] = (0, m)
            self.emit(
                tid,
                vm.pid,
                "kvm_tdp_mmu_spte_changed",
                as_id=0,
                gfn=gfn,
                level=1,
                old_spte=SHADOW_NONPRESENT,
                new_spte=(pfn << 12) | _LEAF_BITS,
            )
            vm.leaves[gfn] = pfn
            return
        self._tables(vm, tid, cache, gfn)
        self._map_leaf(vm, tid, cache, gfn, pfn)

    def shared_fault(self, vm: VmSim, vcpu: int, gfn: int, pfn: int) -> None:
        """A TD's fault on a shared GPA: the direct root, no S-EPT, no DPAMT get."""
        tid, cache = vm.vcpus[vcpu]
        sgfn = gfn | 1 << (vm.shared_bit - 12)
        self.emit(
            tid,
            vm.pid,
            "kvm_page_fault",
            vcpu=vcpu,
            rip=0xFFFFFFFF81000000,
            gpa=sgfn << 12,
            error_code=0x182,
        )
        self.emit(tid, vm.pid, "kvm_mmu_page_fault", gpa=sgfn << 12, error_code=0x182)
        self.topup(tid, vm.pid, cache)
        self.emit(
            tid,
            vm.pid,
            "kvm_tdp_mmu_spte_changed",
            as_id=0,
            gfn=sgfn,
            level=1,
            old_spte=SHADOW_NONPRESENT,
            new_spte=(pfn << 12) | _LEAF_BITS,
        )

    def init_mem_region(self, vm: VmSim, vcpu: int, gfn: int, pfn: int) -> None:
        """``KVM_TDX_INIT_MEM_REGION`` on the VMM thread with vCPU ``vcpu``'s cache and no
        ``kvm_page_fault`` (``kvm_tdp_mmu_map_private_pfn``)."""
        _, cache = vm.vcpus[vcpu]
        tid = vm.vmm_tid
        self.topup(tid, vm.pid, cache)
        self._tables(vm, tid, cache, gfn)
        self._map_leaf(vm, tid, cache, gfn, pfn)

    def race(self, vm: VmSim, a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
        """Two vCPUs fault on two pages of one cold region at once: ``a`` wins (PAMT.ADD), ``b``
        pops two pages, finds the count above 0 under ``pamt_lock`` and frees them."""
        (va, ga, pa), (vb, gb, pb) = a, b
        ta, ca = vm.vcpus[va]
        tb, cb = vm.vcpus[vb]
        for v, g, t in ((va, ga, ta), (vb, gb, tb)):
            self.emit(
                t,
                vm.pid,
                "kvm_page_fault",
                vcpu=v,
                rip=0xFFFFFFFF81000000,
                gpa=g << 12,
                error_code=0x2,
            )
        for g, t, c in ((ga, ta, ca), (gb, tb, cb)):
            self.emit(t, vm.pid, "kvm_mmu_page_fault", gpa=g << 12, error_code=0x2)
            self.topup(t, vm.pid, c)
            self._tables(vm, t, c, g)
        region = pa >> 9
        assert self.ref.get(region, 0) == 0 and pb >> 9 == region
        self.emit(ta, vm.pid, "tdx_pamt_get.entry", pfn=pa, cache=ca, cache_count=self.cache[ca])
        self.emit(tb, vm.pid, "tdx_pamt_get.entry", pfn=pb, cache=cb, cache_count=self.cache[cb])
        if self.pamt_probes:
            self.emit(ta, vm.pid, "tdh_phymem_pamt_add.entry", pfn=pa)
            self.emit(ta, vm.pid, "tdh_phymem_pamt_add.return", ret=0)
        self.cache[ca] -= 2
        self.cache[cb] -= 2
        self.ref[region] = 2
        self.emit(tb, vm.pid, "tdx_pamt_get.return", ret=0, cache_count=self.cache[cb])
        self.emit(ta, vm.pid, "tdx_pamt_get.return", ret=0, cache_count=self.cache[ca])
        for g, p, t in ((gb, pb, tb), (ga, pa, ta)):
            self.emit(
                t,
                vm.pid,
                "kvm_tdp_mmu_spte_changed",
                as_id=0,
                gfn=g,
                level=1,
                old_spte=SHADOW_NONPRESENT,
                new_spte=(p << 12) | _LEAF_BITS,
            )
            vm.leaves[g] = p

    def zap(self, vm: VmSim, gfn: int, tid: int | None = None) -> None:
        """A runtime zap (``tdp_mmu_zap_leafs``): the SPTE record, then the put (v6 09/11)."""
        tid = tid or vm.vmm_tid
        pfn = vm.leaves.pop(gfn)
        self.emit(
            tid,
            vm.pid,
            "kvm_tdp_mmu_spte_changed",
            as_id=0,
            gfn=gfn,
            level=1,
            old_spte=(pfn << 12) | _LEAF_BITS,
            new_spte=SHADOW_NONPRESENT,
        )
        if vm.tdx:
            self.put(tid, vm.pid, pfn)

    def teardown(self, vm: VmSim, tid: int | None = None, pid: int | None = None) -> None:
        """The last reference dropped on thread ``tid`` (any thread): in ``kvm_destroy_vm``'s order as the
        engine runs it (explorer/model/kvm.py): leaves under removed tables print ``->
        FROZEN_SPTE`` and are put, then each vCPU's cache and control pages, then each table's
        entry is zapped and its S-EPT page freed, then the TD's control pages."""
        tid = tid or vm.vmm_tid
        if pid is not None:
            vm = VmSim(**{**vm.__dict__, "pid": pid})
        self.ctx[tid] = vm.kvm
        self.emit(tid, vm.pid, "kvm_arch_pre_destroy_vm", kvm=vm.kvm)
        for gfn, pfn in sorted(vm.leaves.items()):
            self.emit(
                tid,
                vm.pid,
                "kvm_tdp_mmu_spte_changed",
                as_id=0,
                gfn=gfn,
                level=1,
                old_spte=(pfn << 12) | _LEAF_BITS,
                new_spte=FROZEN_SPTE,
            )
            if vm.tdx:
                self.put(tid, vm.pid, pfn)
        vm.leaves.clear()
        if vm.tdx:  # kvm_destroy_vcpus: each vCPU's cache, then its TDVPR and TDCX pages
            for _, (vtid, cache) in sorted(vm.vcpus.items()):
                self.emit(
                    tid,
                    vm.pid,
                    "tdx_free_pamt_cache.entry",
                    cache=cache,
                    cache_count=self.cache[cache],
                )
                self.cache[cache] = 0
                self.emit(tid, vm.pid, "tdx_free_pamt_cache.return", ret=0, cache_count=0)
                for pfn in vm.vcpu_control.get(vtid, []):
                    self.control_free(vm, tid, pfn)
        for (level, idx), (external, mirror) in sorted(vm.tables.items()):
            self.emit(
                tid,
                vm.pid,
                "kvm_tdp_mmu_spte_changed",
                as_id=0,
                gfn=idx << (9 * (level - 1)),
                level=level,
                old_spte=(mirror << 12) | _TABLE_BITS,
                new_spte=SHADOW_NONPRESENT,
            )
            if vm.tdx:
                self.control_free(vm, tid, external)
        vm.tables.clear()
        if not vm.tdx:
            return
        vcpu_pages = {p for ps in vm.vcpu_control.values() for p in ps}
        for pfn in vm.control:  # tdx_vm_free: TDR and TDCS pages
            if pfn not in vcpu_pages:
                self.control_free(vm, tid, pfn)
        vm.control.clear()


def large_capture(records: int, *, seed: int = 1, at_least: bool = True) -> str:
    """A realistic capture of at least ``records`` records: four TDs of four vCPUs sharing the
    host's regions, a non-TDX VM's faults, shared-GPA faults, local retries, zaps and refaults,
    then every TD torn down on another thread (the benchmark's input).

    The teardown's size is only estimated while the capture grows (it comes out ~7% short), so
    a capture that comes out short is made again (same seed: the same operations, more of them)
    aiming higher by the shortfall, until it has at least ``records``: a benchmark of a million
    records times a million, never fewer. ``at_least=False``: the first capture as it comes (the
    estimate alone; what the tests of that estimate look at)."""
    if records < 1:
        raise ValueError(f"large_capture: records must be at least 1, got {records}")
    target = records
    for _ in range(_REMAKES):
        h = _large(target, seed)
        got = sum(1 for line in h.lines if not line.startswith("#"))
        if got >= records or not at_least:
            return h.text()
        target += records - got + (records - got) // 8
    raise RuntimeError(f"large_capture: {records} records not reached in {_REMAKES} attempts")


#: How many times :func:`large_capture` remakes a short capture (two suffice: the first comes
#: out ~7% short, the second aims ~8% higher; the bound only keeps a bad estimate from looping).
_REMAKES = 8


def _large(records: int, seed: int) -> HostSim:
    h = HostSim(seed=seed)
    rng = h.rng
    tds = [h.new_vm() for _ in range(4)]
    for vm in tds:
        for v in range(4):
            h.new_vcpu(vm, v)
    other = h.new_vm(tdx=False)
    h.new_vcpu(other, 0)
    next_pfn = 0x400000
    gfn_next = {vm.kvm: 0x1000 for vm in tds}

    def left() -> int:  # what the teardowns will print: ~4 records a leaf, ~7 a table
        return sum(4 * len(vm.leaves) + 7 * len(vm.tables) for vm in tds)

    while len(h.lines) + left() < records:
        vm = tds[rng.randrange(4)]
        r = rng.random()
        if r < 0.05:
            g = rng.randrange(0x100000)
            if g not in other.leaves:
                h.fault(other, 0, g, 0x900000 + g)
        elif r < 0.08:
            h.shared_fault(vm, rng.randrange(4), rng.randrange(0x1000), 0x880000)
        elif r < 0.14 and vm.leaves:
            g = rng.choice(list(vm.leaves)[-64:])
            h.zap(vm, g)
            h.fault(vm, rng.randrange(4), g, next_pfn)
            next_pfn += 1
        else:
            g = gfn_next[vm.kvm]
            gfn_next[vm.kvm] += 1
            h.fault(vm, rng.randrange(4), g, next_pfn, retries=1 if r > 0.97 else 0)
            next_pfn += 1 + (rng.randrange(700) if r > 0.9 else 0)
    for vm in tds:
        h.teardown(vm, tid=77)
    return h
