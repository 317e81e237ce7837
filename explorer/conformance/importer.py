"""Turn a kernel capture into a format-v1 trace, one TD per TDX VM (docs/capture.md, "Import").

A capture (:mod:`explorer.ingest.capture`) says what a v6 kernel did; a trace
(docs/trace-format.md) says what to ask the model to do. :func:`attribute` decides, for every
record, which VM it belongs to or why it is ignored; :func:`import_capture` then derives each TD's
life (``td_create``, ``vcpu_create``, ``fault``, ``zap``, ``td_destroy``) from the kernel's own
records:

- **VM identity**: the ``kvm=`` a record carries (the ``struct kvm *`` its thread last entered
  KVM for: ``kvm_vcpu_ioctl`` / ``kvm_vm_ioctl`` / ``kvm_arch_pre_destroy_vm``), else the only
  TDX VM of its process (``pid``, the tgid). A VM is TDX when any ``tdx_*`` record names it:
  ``tdx_pamt_get`` and friends run only for TDs (``KVM_X86_TDX_VM``), so no module BTF is needed
  to read ``kvm->arch.vm_type``.
- **What each record means** follows the tracepoints' producers: ``kvm_page_fault`` is emitted
  once per EPT violation by ``tdx_handle_ept_violation`` before its local-retry loop
  (``arch/x86/kvm/vmx/tdx.c``); ``kvm_tdp_mmu_spte_changed`` by ``handle_changed_spte``
  (``arch/x86/kvm/mmu/tdp_mmu.c``) once per change: a map ``SHADOW_NONPRESENT_VALUE -> present``
  after the get and the SEAMCALL, a runtime zap ``present -> SHADOW_NONPRESENT_VALUE`` before
  its put, a leaf under a removed table (teardown) ``present -> FROZEN_SPTE``.
- **Ignored, with a reason each**: a non-TDX VM's records (``non-tdx-vm``), a TD's shared-GPA
  faults and their direct-root SPTE changes (``shared-gpa``), ``KVM_TDX_INIT_MEM_REGION`` maps
  (``init-mem-region``: ``kvm_tdp_mmu_map_private_pfn`` without a ``kvm_page_fault``, the model builds its TD
  without them) and records no VM can be told for (``no-vm-context``). The conformance check
  still counts every get and put host-wide (the refcount is per 2 MiB region, shared by TDs).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter

from explorer.ingest.capture import Capture, Record
from explorer.ingest.gcpause import gc_paused
from explorer.model.events import (
    Event,
    Fault,
    Schedule,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    Zap,
    pinned_pfns,
)
from explorer.model.settings import MAX_HOST_MEMORY_MIB, Settings

#: ``SHADOW_NONPRESENT_VALUE`` on x86-64 (``arch/x86/kvm/mmu/spte.h``): bit 63, what a TDP-MMU
#: SPTE holds when nothing is mapped (never 0 on x86-64).
SHADOW_NONPRESENT = 1 << 63
#: ``FROZEN_SPTE`` = ``SHADOW_NONPRESENT_VALUE | 0x5a0``: what ``handle_removed_pt`` writes into
#: each child of a removed table (the only frozen value the tracepoint prints).
FROZEN_SPTE = SHADOW_NONPRESENT | 0x5A0
#: ``SPTE_MMU_PRESENT_MASK`` (bit 11): set in every present SPTE, clear in both values above.
SPTE_PRESENT = 1 << 11
#: The host-pfn bits of an SPTE (``SPTE_BASE_ADDR_MASK`` for 52-bit physical addresses).
SPTE_PFN_MASK = 0x000FFFFFFFFFF000
#: ``-ENOMEM``, ``-EIO``: what a failed ``tdx_pamt_get`` returns.
ENOMEM, EIO = -12, -5
#: ``sizeof(struct page)`` when the header does not say (64 on common x86-64 configs).
PAGE_STRUCT = 64
#: Probes only TDs reach (their ``kvm=`` marks the VM as a TD).
TDX_PROBES = frozenset(
    p
    for p in [
        "tdx_pamt_get.entry",
        "tdx_pamt_get.return",
        "tdx_pamt_put.entry",
        "tdx_pamt_put.return",
        "tdx_topup_pamt_cache.entry",
        "tdx_topup_pamt_cache.return",
        "tdx_free_pamt_cache.entry",
        "tdx_free_pamt_cache.return",
        "tdh_phymem_pamt_add.entry",
        "tdh_phymem_pamt_add.return",
        "tdh_phymem_pamt_remove.entry",
        "tdh_phymem_pamt_remove.return",
        "tdx_alloc_control_page.entry",
        "tdx_alloc_control_page.return",
        "tdx_free_control_page.entry",
        "tdx_free_control_page.return",
    ]
)
#: Records that are only KVM's (a VM of any type prints them).
KVM_PROBES = frozenset(("kvm_page_fault", "kvm_mmu_page_fault", "kvm_tdp_mmu_spte_changed"))
#: The records :func:`import_capture` derives events and control-page counts from (beside
#: each TD's first record).
_EVENT_PROBES = frozenset(
    (
        "kvm_page_fault",
        "kvm_arch_pre_destroy_vm",
        "kvm_tdp_mmu_spte_changed",
        "tdx_topup_pamt_cache.entry",
        "tdx_pamt_get.entry",
        "tdx_alloc_control_page.entry",
    )
)


def field_int(rec: Record, key: str) -> int:
    v = rec.fields.get(key)
    return v if isinstance(v, int) else 0


def is_present(spte: int) -> bool:
    return bool(spte & SPTE_PRESENT)


def spte_pfn(spte: int) -> int:
    return (spte & SPTE_PFN_MASK) >> 12


def spte_kind(old: int, new: int) -> str:
    """``map``, ``zap`` (runtime: to ``SHADOW_NONPRESENT_VALUE``), ``frozen`` (a child of a
    removed table: to ``FROZEN_SPTE``) or ``other`` (a change no TD's mirror SPTE makes)."""
    if not old & SPTE_PRESENT:
        return "map" if new & SPTE_PRESENT else "other"
    if new == SHADOW_NONPRESENT:
        return "zap"
    if new & ~0xFFF == SHADOW_NONPRESENT and new & 0xFFF in (0x5A0, 0x498):
        return "frozen"  # 0x498: a proposed FROZEN_SPTE value (docs/capture.md, unverified)
    return "other"


@dataclass
class Vm:
    """One VM seen in the capture: its key (the ``struct kvm *``, or ``-pid`` when only the
    process is known), whether it is a TD, its shared-GPA bit."""

    key: int
    pid: int
    tdx: bool = False
    td: int = -1
    shared_bit: int = 47
    first: int = 0  # position of its first record


@dataclass
class Attribution:
    """Per record (in ``order``): its VM key (0: none) and, when ignored, why."""

    order: list[Record]  # sorted by (ts, line)
    vm_of: list[int]
    why: list[str | None]
    vms: dict[int, Vm]
    shared: list[bool]

    def ignored(self) -> dict[str, int]:
        counts = Counter(self.why)  # counted in C: a million records
        return {w: counts[w] for w in sorted(w for w in counts if w is not None)}


def by_time(records: Sequence[Record]) -> list[Record]:
    """``records`` (in file order, as :class:`Capture` holds them) by timestamp, then file line:
    a stable sort by timestamp alone keeps file order among equal timestamps."""
    return sorted(records, key=attrgetter("ts"))


def attribute(capture: Capture) -> Attribution:
    """Which VM each record belongs to, or why it is ignored (the module docstring's rules).

    Two passes over the records, not four: the first learns which ``struct kvm *`` are TDs, each
    process's TDs and which VMs fault on a GPA with bit 51 set (the shared bit of a 5-level
    EPT TD, ``kvm_gfn_direct_bits``); the second then decides every record, its shared-GPA
    test included, with nothing left to revise."""
    order = by_time(capture.records)
    n = len(order)
    tdx_kvms: set[int] = set()
    pid_kvm: set[tuple[int, int]] = set()  # (process, struct kvm *) pairs seen on any record
    pid_tdx_records: set[int] = set()
    bit51: set[tuple[int, int]] = set()  # (kvm= or 0, process) of faults with GPA bit 51 set
    kvms: list[int] = [0] * n
    last_pid, last_k = 0, 0
    for i in range(n):
        r = order[i]
        kv = r.fields.get("kvm", 0)
        k = kv if isinstance(kv, int) else 0
        p = r.probe
        if k:
            kvms[i] = k
            if k != last_k or r.pid != last_pid:  # runs of one thread: one set insert per run
                last_pid, last_k = r.pid, k
                pid_kvm.add((last_pid, k))
        if p in TDX_PROBES:
            if k:
                tdx_kvms.add(k)
            else:
                pid_tdx_records.add(r.pid)
        elif p == "kvm_page_fault" and field_int(r, "gpa") >> 51 & 1:
            bit51.add((k, r.pid))
    pid_tdx: dict[int, set[int]] = {}  # a process's TDs, also known from KVM records
    for pid, k in pid_kvm:
        if k in tdx_kvms:
            pid_tdx.setdefault(pid, set()).add(k)
    none: set[int] = set()

    def resolve(k: int, pid: int) -> int:
        """The VM a record of process ``pid`` with ``kvm=k`` (0: none) is, 0 when no TD."""
        if k:
            return k if k in tdx_kvms or k < 0 else 0
        mine = pid_tdx.get(pid, none)
        if len(mine) == 1:
            return next(iter(mine))
        return -pid if not mine and pid in pid_tdx_records else 0

    wide = {v for v in (resolve(k, pid) for k, pid in bit51) if v}  # TDs with a 51 shared bit
    vms: dict[int, Vm] = {}
    vm_of: list[int] = [0] * n
    why: list[str | None] = [None] * n
    shared = [False] * n
    one: dict[int, int] = {}  # process -> its only TD, or 0 (the no-kvm= records' rule)
    for pid, mine in pid_tdx.items():
        if len(mine) == 1:
            one[pid] = next(iter(mine))
    vm: Vm | None = None
    for i in range(n):
        r = order[i]
        k = kvms[i]
        p = r.probe
        if not k:
            k = one.get(r.pid, 0)
            if not k:
                if r.pid not in pid_tdx and r.pid in pid_tdx_records:
                    k = -r.pid  # a TD known by its process only (no kvm= probe attached)
                elif r.pid not in pid_tdx and p in KVM_PROBES:
                    why[i] = "non-tdx-vm"
                    continue
                else:
                    why[i] = "no-vm-context"
                    continue
        if vm is None or vm.key != k:
            vm = vms.get(k)
            if vm is None:
                vm = vms[k] = Vm(k, r.pid, k in tdx_kvms or k < 0, first=i)
                if k in wide:
                    vm.shared_bit = 51
        if not vm.tdx:
            why[i] = "non-tdx-vm"
            continue
        if p in KVM_PROBES:
            if p == "kvm_tdp_mmu_spte_changed":
                s = field_int(r, "gfn") >> (vm.shared_bit - 12) & 1
            else:
                s = field_int(r, "gpa") >> vm.shared_bit & 1
            if s:
                shared[i] = True
                why[i] = "shared-gpa"
                continue
        vm_of[i] = k
    td = 0
    for v in sorted(vms.values(), key=lambda v: v.first):
        if v.tdx:
            v.td, td = td, td + 1
    return Attribution(order, vm_of, why, vms, shared)


@dataclass(frozen=True)
class ImportedTrace:
    """A capture as a trace: ``events`` with ``settings``; ``lines[i]`` the capture lines event
    ``i`` came from; ``ignored`` the records no TD explains, counted per reason; ``positions``
    the sorted position of each event's first record (for placing any line on the replay)."""

    source: str
    events: tuple[Event, ...]
    settings: Settings
    lines: tuple[tuple[int, ...], ...]
    ignored: dict[str, int] = field(default_factory=dict)
    vcpus: dict[tuple[int, int], int] = field(default_factory=dict)  # (td, kernel id) -> vCPU
    tds: dict[int, int] = field(default_factory=dict)  # VM key -> td
    positions: tuple[int, ...] = ()
    #: what :func:`attribute` decided for every record (``conform`` reuses it)
    attribution: Attribution | None = field(default=None, repr=False, compare=False)
    #: a vCPU's PAMT cache address -> the vCPU, as its gets show it
    caches: dict[int, int] = field(default_factory=dict)
    #: the first line of each ``KVM_TDX_INIT_MEM_REGION`` page -> the vCPU whose fault it is
    #: (it runs on the VMM thread with that vCPU's cache: the records from there are its)
    init_at: dict[int, int] = field(default_factory=dict)
    #: the events that are ``KVM_TDX_INIT_MEM_REGION`` (faults before the TD's finalize)
    init_faults: frozenset[int] = frozenset()

    @property
    def unused(self) -> dict[str, int]:
        """The ignored records per reason (the name the app's earlier pages used)."""
        return self.ignored

    @property
    def line_pos(self) -> dict[int, int]:
        """Capture line -> its record's sorted position, built when asked: a million-entry
        dict that no import or conform reads, so it is not kept with every trace."""
        att = self.attribution
        return {} if att is None else {r.line: n for n, r in enumerate(att.order)}

    def event_at(self, line: int) -> int:
        """The event whose records a capture line falls among (the last event begun by then)."""
        pos = self.line_pos.get(line, 0)
        return max(0, bisect_right(self.positions, pos) - 1)


def import_capture(capture: Capture, att: Attribution | None = None) -> ImportedTrace:
    """Derive the trace of ``capture`` (docs/capture.md, "Import"); ``att``: its
    :func:`attribute`, when the caller already has it."""
    with gc_paused():  # a million records' attribution, no reference cycles in it
        return _import(capture, att if att is not None else attribute(capture))


def _import(capture: Capture, att: Attribution) -> ImportedTrace:
    order = att.order
    events: list[tuple[int, Event, list[int]]] = []  # (position, event, lines)
    vcpus: dict[tuple[int, int], int] = {}
    tds: dict[int, int] = {vm.key: vm.td for vm in att.vms.values() if vm.tdx}
    ignored = att.ignored()
    window: dict[int, tuple[int, int, int]] = {}  # tid -> (position, td, gfn) of its open fault
    window_lines: dict[int, list[int]] = {}
    destroyed: set[int] = set()
    nfaults = 0
    top_pfn = 0
    spans: list[tuple[int, int, int, int]] = []  # (first ts, map ts, tid, fault position)
    vm_of = att.vm_of
    first: dict[int, int] = {}  # td -> the position of its first record
    for k in dict.fromkeys(vm_of):  # each TD made at its first record, in record order
        if k:
            first[tds[k]] = i = vm_of.index(k)
            events.append((i, TdCreate(td=tds[k]), [order[i].line]))
    first_fault: dict[int, int] = {}  # td -> the position of its first kvm_page_fault
    cache_vcpu: dict[int, tuple[int, int]] = {}  # a vCPU's PAMT cache -> (td, kernel vCPU id)
    init_open: dict[int, list[int]] = {}  # tid -> [position, td, cache, line, cache from a get]
    inits: list[tuple[int, int, int, int, int, list[int]]] = []  # pos, td, cache, gfn, pfn, lines
    init_lines: dict[int, int] = {}  # the first line of each INIT_MEM_REGION page -> its cache
    # pins (docs/capture.md, "Pinned pages"): the pfns of the gets a fault's thread made before
    # its leaf's map (its S-EPT table pages), and of each thread's control pages' gets
    gets: dict[int, list[int]] = {}  # tid -> pfns got in its open fault or INIT_MEM_REGION
    tables: dict[int, tuple[int, ...]] = {}  # fault position -> its table pages
    control: dict[tuple[int, int], list[int]] = {}  # (td, tid) -> control pages, in order
    vcpu_tid: dict[tuple[int, int], int] = {}  # (td, kernel vCPU id) -> its thread

    def spurious(w: tuple[int, int, int], lines: list[int]) -> None:
        """A fault that mapped nothing (``kvm_page_fault`` with no leaf map before the thread's
        next fault): the model runs it too, with no page given: a spurious fault if the gfn is
        mapped (``kvm_tdp_mmu_map``), and whatever else the engine decides otherwise."""
        vcpu = vcpus[(w[1], field_int(order[w[0]], "vcpu"))]
        events.append((w[0], Fault(vcpu=vcpu, gfn=w[2]), lines))
        got = gets.pop(order[w[0]].tid, None)
        if got:
            tables[w[0]] = tuple(got)

    # tdx_td_init: TDR + TDCS pages on one thread; tdx_td_vcpu_init: TDVPR + TDCX pages on the
    # vCPU ioctl's thread: the model allocates as many (Settings.tdcs_pages / tdcx_pages)
    allocs: dict[tuple[int, int], int] = {}
    # only a TD's KVM records, top-ups and control-page allocations are visited here (one pass
    # over the records): most tdx_* records are not
    for i in [i for i, r in enumerate(order) if r.probe in _EVENT_PROBES and vm_of[i]]:
        r = order[i]
        td = tds[vm_of[i]]
        p = r.probe
        if p == "tdx_alloc_control_page.entry":
            allocs[(td, r.tid)] = allocs.get((td, r.tid), 0) + 1
            continue
        if td in destroyed:
            continue
        if p == "tdx_topup_pamt_cache.entry" or p == "tdx_pamt_get.entry":
            w = window.get(r.tid)
            cache = field_int(r, "cache")
            if not cache:
                if p == "tdx_pamt_get.entry" and w is None:  # a control page's get
                    control.setdefault((td, r.tid), []).append(field_int(r, "pfn"))
                continue
            if w is not None:
                if p == "tdx_pamt_get.entry":  # the cache a vCPU's fault consumes is its own
                    cache_vcpu.setdefault(cache, (w[1], field_int(order[w[0]], "vcpu")))
            elif r.tid not in init_open:  # a vCPU's cache outside any fault: INIT_MEM_REGION
                init_open[r.tid] = [i, td, cache, r.line, p == "tdx_pamt_get.entry"]
                gets[r.tid] = []
            elif p == "tdx_pamt_get.entry" and not init_open[r.tid][4]:
                init_open[r.tid][2] = cache  # the vCPU is the one whose cache its gets take
                init_open[r.tid][4] = True
            if p == "tdx_pamt_get.entry":
                gets.setdefault(r.tid, []).append(field_int(r, "pfn"))
        elif p == "kvm_page_fault":
            if r.tid in window:
                spurious(window.pop(r.tid), window_lines[r.tid])
            vid = (td, field_int(r, "vcpu"))
            first_fault.setdefault(td, i)
            if vid not in vcpus:
                vcpus[vid] = len(vcpus)
            vcpu_tid.setdefault(vid, r.tid)
            gets[r.tid] = []
            vm = att.vms[att.vm_of[i]]
            gfn = (field_int(r, "gpa") >> 12) & ~(1 << (vm.shared_bit - 12))
            window[r.tid] = (i, td, gfn)
            window_lines[r.tid] = [r.line]
            init_open.pop(r.tid, None)
        elif p == "kvm_arch_pre_destroy_vm":
            for tid in [t for t, w in window.items() if w[1] == td]:
                spurious(window.pop(tid), window_lines[tid])
            destroyed.add(td)
            events.append((i, TdDestroy(td=td), [r.line]))
        elif p == "kvm_tdp_mmu_spte_changed" and field_int(r, "level") == 1:
            kind = spte_kind(field_int(r, "old_spte"), field_int(r, "new_spte"))
            w = window.get(r.tid)
            init = init_open.get(r.tid)
            if kind == "map" and w is not None and w[1] == td and w[2] == field_int(r, "gfn"):
                fr = order[w[0]]
                vcpu = vcpus[(td, field_int(fr, "vcpu"))]
                pfn = spte_pfn(field_int(r, "new_spte"))  # the kernel's page: pinned
                top_pfn = max(top_pfn, pfn)
                got = [g for g in gets.pop(r.tid, ()) if g != pfn]
                if got:
                    tables[w[0]] = tuple(got)
                events.append(
                    (
                        w[0],
                        Fault(vcpu=vcpu, gfn=w[2], pfn=pfn),
                        [*window_lines.get(r.tid, []), r.line],
                    )
                )
                spans.append((fr.ts, order[i].ts, r.tid, w[0]))
                nfaults += 1
                del window[r.tid]
            elif kind == "map" and w is None and init is not None and init[1] == td:
                pfn = spte_pfn(field_int(r, "new_spte"))
                top_pfn = max(top_pfn, pfn)
                got = [g for g in gets.pop(r.tid, ()) if g != pfn]
                if got:
                    tables[init[0]] = tuple(got)
                inits.append((init[0], td, init[2], field_int(r, "gfn"), pfn, [init[3], r.line]))
                init_lines[init[3]] = init[2]
                nfaults += 1
                del init_open[r.tid]
            elif kind == "map":
                ignored["init-mem-region"] = ignored.get("init-mem-region", 0) + 1
            elif kind == "zap":
                events.append((i, Zap(td=td, gfn=field_int(r, "gfn")), [r.line]))
            elif kind == "frozen":
                destroyed.add(td)
                events.append((i, TdDestroy(td=td), [r.line]))
    for tid, w in list(window.items()):
        if w[1] not in destroyed:
            spurious(w, window_lines[tid])
    # KVM_TDX_INIT_MEM_REGION (tdx_vcpu_init_mem_region: kvm_tdp_mmu_map_private_pfn with the vCPU's
    # caches, before KVM_TDX_FINALIZE_VM): a fault of that vCPU before the TD's finalize, which
    # the model runs as TDH.MEM.PAGE.ADD (kvm.py). The vCPU is the one whose own faults top up
    # that cache; a cache no fault uses is a vCPU of its own.
    caches: dict[int, int] = {}
    last_init: dict[int, int] = {}
    for pos, td, cache, gfn, pfn, ls in inits:
        vid = cache_vcpu.get(cache, (td, -1 - cache))
        if vid not in vcpus:
            vcpus[vid] = len(vcpus)
        caches[cache] = vcpus[vid]
        events.append((pos, Fault(vcpu=vcpus[vid], gfn=gfn, pfn=pfn), ls))
        last_init[td] = pos
    for c, vid in cache_vcpu.items():
        caches.setdefault(c, vcpus[vid])
    init_at = {line: caches[c] for line, c in init_lines.items()}
    for td, pos in first.items():
        # KVM_TDX_FINALIZE_VM has no record: after the TD's initial image, before its first
        # fault (with no image: at the TD's creation, as before)
        at = pos if td not in last_init else first_fault.get(td, last_init[td] + 1)
        events.append((at, TdFinalize(td=td), []))
    events.sort(key=lambda e: (e[0], _rank(e[1])))
    # vCPUs right after their TD's creation: the model cannot fault on a vCPU it has not made
    out: list[tuple[int, Event, list[int]]] = []
    for pos, ev, ls in events:
        out.append((pos, ev, ls))
        if isinstance(ev, TdCreate):
            for (t, _), v in sorted(
                vcpus.items()
            ):  # kernel index order (kvm_destroy_vcpus frees so)
                if t == ev.td:
                    out.append((pos, VcpuCreate(td=t, vcpu=v), []))
    groups = _race_groups(spans, order)
    for pfns in [*tables.values(), *control.values()]:  # the pinned pages must fit too
        top_pfn = max(top_pfn, *pfns)
    mib = max(256, -(-(nfaults * 3 + 8192) // 256), (top_pfn >> 8) + 64)
    mib = min(MAX_HOST_MEMORY_MIB, mib + mib % 2)
    base = Settings()
    tdcs, tdcx = base.tdcs_pages, base.tdcx_pages
    firsts = sorted({td for td, _ in allocs})
    if firsts:
        per_td = [n for (td, _), n in allocs.items() if td == firsts[0]]
        tdcs = max(0, per_td[0] - 1)
        if len(per_td) > 1:
            tdcx = max(0, min(per_td[1:]) - 1)
    settings = Settings(mode="v6", host_memory_mib=mib, tdcs_pages=tdcs, tdcx_pages=tdcx)
    out = _pinned(out, tables, control, vcpu_tid, vcpus, first, order, tdcs, tdcx)
    if groups:
        out = _pin_races(out, groups, settings)
    td_of_vcpu = {v: t for (t, _), v in vcpus.items()}
    finalized: set[int] = set()
    init_faults: set[int] = set()
    for n, (_, ev, _) in enumerate(out):
        if isinstance(ev, TdFinalize):
            finalized.add(ev.td)
        elif isinstance(ev, Fault) and td_of_vcpu.get(ev.vcpu) not in finalized:
            init_faults.add(n)
    return ImportedTrace(
        capture.source,
        tuple(e for _, e, _ in out),
        settings,
        tuple(tuple(sorted(ls)) for _, _, ls in out),
        dict(sorted(ignored.items())),
        vcpus,
        tds,
        tuple(p for p, _, _ in out),
        att,
        caches,
        init_at,
        frozenset(init_faults),
    )


def _pinned(
    out: list[tuple[int, Event, list[int]]],
    tables: dict[int, tuple[int, ...]],
    control: dict[tuple[int, int], list[int]],
    vcpu_tid: dict[tuple[int, int], int],
    vcpus: dict[tuple[int, int], int],
    first: dict[int, int],
    order: Sequence[Record],
    tdcs: int,
    tdcx: int,
) -> list[tuple[int, Event, list[int]]]:
    """The events of ``out`` with the pages the kernel chose pinned (docs/capture.md, "Pinned
    pages"): a fault's ``tables`` (the ``tdx_pamt_get`` pfns its thread asked for before the
    leaf's, i.e. ``tdx_sept_map_nonleaf_spte``'s table pages), a TD's ``control`` (the first
    ``1 + tdcs`` control-page gets, ``tdx_alloc_control_page``, on the thread of its first
    record) and a vCPU's (the next ``1 + tdcx`` on its fault thread). A control list whose length
    is not what the model allocates is not pinned (the allocator picks, as without the probe)."""
    td_ctl: dict[int, tuple[int, ...]] = {}
    taken: dict[tuple[int, int], int] = {}
    for td, pos in first.items():
        key = (td, order[pos].tid)
        got = control.get(key, [])
        if len(got) >= 1 + tdcs:
            td_ctl[td] = tuple(got[: 1 + tdcs])
            taken[key] = 1 + tdcs
    vcpu_ctl: dict[int, tuple[int, ...]] = {}
    for (td, kid), v in vcpus.items():
        tid = vcpu_tid.get((td, kid))
        if tid is None:
            continue
        got = control.get((td, tid), [])[taken.get((td, tid), 0) :]
        if len(got) == 1 + tdcx:
            vcpu_ctl[v] = tuple(got)
    res: list[tuple[int, Event, list[int]]] = []
    for pos, ev, ls in out:
        if isinstance(ev, Fault) and pos in tables:
            ev = replace(ev, tables=tables[pos])
        elif isinstance(ev, TdCreate) and ev.td in td_ctl:
            ev = replace(ev, control=td_ctl[ev.td])
        elif isinstance(ev, VcpuCreate) and ev.vcpu in vcpu_ctl:
            ev = replace(ev, control=vcpu_ctl[ev.vcpu])
        res.append((pos, ev, ls))
    return res


def _race_groups(
    spans: list[tuple[int, int, int, int]], order: Sequence[Record]
) -> list[tuple[list[tuple[int, int]], int]]:
    """Faults of different threads whose records overlap in time (``kvm_page_fault`` to the
    map) ran concurrently: each such group as its faults (position of the ``kvm_page_fault``,
    tid) and the tid that won (the first ``tdh_phymem_pamt_add`` among the group's threads,
    else the thread whose fault came first)."""
    spans.sort()
    groups: list[list[tuple[int, int, int, int]]] = []
    end = -1
    for sp in spans:
        if groups and sp[0] <= end and all(g[2] != sp[2] for g in groups[-1]):
            groups[-1].append(sp)
            end = max(end, sp[1])
        else:
            groups.append([sp])
            end = sp[1]
    out: list[tuple[list[tuple[int, int]], int]] = []
    for g in groups:
        if len(g) < 2:
            continue
        tids = {sp[2] for sp in g}
        lo, hi = min(sp[3] for sp in g), max(sp[1] for sp in g)
        winner = g[0][2]
        for r in order[lo:]:  # (a group spans few records)
            if r.ts > hi:
                break
            if r.tid in tids and r.probe == "tdh_phymem_pamt_add.entry":
                winner = r.tid
                break
        out.append(([(sp[3], sp[2]) for sp in g], winner))
    return out


def _pin_races(
    out: list[tuple[int, Event, list[int]]],
    groups: list[tuple[list[tuple[int, int]], int]],
    settings: Settings,
) -> list[tuple[int, Event, list[int]]]:
    """Each concurrent group as one batch (one ``t``) led by a ``schedule`` event pinning the
    kernel's order (docs/trace-format.md): the winner runs up to its last ``pamt_get.lock``
    before its PAMT.ADD, then each other fault up to its last lock-free check
    (``pamt_get.slow``), as the kernel's did before the winner's PAMT.ADD; the configured
    schedule goes on from there (with no PAMT.ADD in the group: the first fault runs whole).
    Turns are counted on the model's own steps (a dry run of the trace so far plus that fault
    alone): the engine, not the import, decides every path. The trace so far runs once, on one
    machine carried from group to group, and each fault alone runs from its image (a dry run of
    the whole prefix per fault made the import quadratic in the groups: 400 races, 17.9 s).
    Every page the capture pins is reserved from the start, as every replay of the imported
    trace reserves them (it names control pages: docs/trace-format.md)."""
    from explorer.model.machine import Machine, MachineImage

    tid_of: dict[int, tuple[int, int]] = {}  # fault position -> (group, tid)
    for n, (group, _) in enumerate(groups):
        for pos, tid in group:
            tid_of[pos] = (n, tid)
    new: list[tuple[int, Event, list[int]]] = []
    held: dict[int, list[tuple[int, Event, list[int], int]]] = {}
    left = {n: len(group) for n, (group, _) in enumerate(groups)}
    base = Machine(settings, record=False, check=False)  # the trace so far, run once
    base.mem.pin(pinned_pfns([e for _, e, _ in out]))
    pins = base.mem.pin_table()
    ran = 0  # the events of ``new`` the base machine has run
    for pos, ev, ls in out:
        g = tid_of.get(pos) if isinstance(ev, Fault) else None
        if g is None:
            new.append((pos, ev, ls))
            continue
        n, tid = g
        held.setdefault(n, []).append((pos, ev, ls, tid))
        left[n] -= 1
        if left[n]:
            continue
        members = held.pop(n)
        base.run([e for _, e, _ in new[ran:]])
        ran = len(new)
        image = base.image() if base.stopped is None else None

        def alone(f: Event, image: MachineImage | None = image) -> list[str]:
            assert isinstance(f, Fault)
            if image is None:  # (an impossible event before: the fault never runs)
                return []
            m = Machine(settings, record=True, check=False)
            m.mem.use_pins(pins)
            m.restore(image)
            m.run([replace(f, t=None)])
            return [s.label for s in m.steps]

        # the winner by its position, never by identity: compiled with mypyc, a tuple taken
        # from ``members`` twice is two objects (``is`` was False for the winner itself)
        w = next((i for i, x in enumerate(members) if x[3] == groups[n][1]), 0)
        winner = members[w]
        name = f"vcpu{getattr(winner[1], 'vcpu', 0)}"
        labels = alone(winner[1])
        if "pamt_get.add" not in labels:
            turns = [name] * len(labels)
        else:
            add_at = labels.index("pamt_get.add")
            locks = [j for j in range(add_at) if labels[j] == "pamt_get.lock"]
            turns = [name] * (locks[-1] + 1 if locks else add_at)
            for i, x in enumerate(members):
                if i == w:
                    continue
                ls2 = alone(x[1])
                stop = ls2.index("pamt_get.add") if "pamt_get.add" in ls2 else len(ls2)
                slows = [j for j in range(stop) if ls2[j] == "pamt_get.slow"]
                if slows:
                    turns += [f"vcpu{getattr(x[1], 'vcpu', 0)}"] * (slows[-1] + 1)
        t = n + 1
        if turns:  # (no turn to pin, as when the fault alone takes no step: no schedule event,
            # whose order may not be empty; the configured schedule runs the group)
            new.append((members[0][0], Schedule(order=tuple(turns), t=t), []))
        for p, ev2, ls2_, _ in members:
            assert isinstance(ev2, Fault)
            new.append((p, replace(ev2, t=t), ls2_))
    return new


#: Among the events of one record: the TD, its vCPUs, its finalize, then the rest.
_RANK: dict[type, int] = {TdCreate: 0, VcpuCreate: 1, TdFinalize: 2}


def _rank(ev: Event) -> int:
    return _RANK.get(type(ev), 3)


def records_of(capture: Capture) -> Sequence[Record]:
    """The records in the order every rule reads them: by timestamp, then file line."""
    return sorted(capture.records, key=lambda r: (r.ts, r.line))
