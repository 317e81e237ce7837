"""Issue 30: where KVM makes the stale check, the guest_memfd zap's window, teardown by function.

Each test pins the kernel's behaviour (mainline since 6.15, guest_memfd as of 6.18, DPAMT v6;
docs/engine.md, "Fidelity") so that going back to the old model fails it:

- ``kvm_mmu_faultin_pfn`` retries a fault whose gfn is being invalidated before it asks
  guest_memfd for the page and without taking ``mmu_lock``;
- ``kvm_gmem_punch_hole`` drops ``mmu_lock`` between ``kvm_mmu_invalidate_begin`` (with the
  PAGE.REMOVE and the DPAMT put) and ``kvm_mmu_invalidate_end``, and the page is freed in
  between, outside the lock: a fault on another gfn maps in that window;
- ``kvm_destroy_vm`` runs the functions in the kernel's order, and ``tdx_vcpu_free`` with the
  HKID still assigned leaks the vCPU's control pages.
"""

from itertools import pairwise
from pathlib import Path

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.model.constants import PAGES_PER_REGION_SHIFT
from explorer.model.events import (
    Event,
    Fault,
    Schedule,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    VcpuFree,
    Zap,
)
from explorer.model.machine import Machine
from explorer.model.records import Step
from explorer.model.settings import Settings

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"
BOOT: list[Event] = [
    TdCreate(td=0),
    VcpuCreate(td=0, vcpu=0),
    VcpuCreate(td=0, vcpu=1),
    TdFinalize(td=0),
]


def _run(events: list[Event], **kw: object) -> Machine:
    m = Machine(Settings(**kw), full_check=True)  # type: ignore[arg-type]
    m.run(events)
    assert m.stopped is None, m.stopped
    assert not [d for d in m.diagnostics if d.kind == "violation"]
    return m


def _index(steps: list[Step], cpu: str, label: str) -> int:
    (i,) = [k for k, s in enumerate(steps) if s.cpu == cpu and s.label == label]
    return i


def test_a_fault_during_an_invalidation_of_its_gfn_retries_before_mmu_lock() -> None:
    """Round-robin: the zap takes ``mmu_lock`` and begins the invalidation of gfn 0x10 before
    vCPU 0's refault of 0x10 reaches ``kvm_mmu_faultin_pfn``. Until ``kvm_mmu_invalidate_end``
    every try stops at ``mmu_invalidate_retry_gfn_unsafe``: no guest_memfd lookup, no
    ``mmu_lock`` (not even a spin on it); after it, the fault maps a fresh page."""
    m = _run([*BOOT, Fault(vcpu=0, gfn=0x10)])
    first = len(m.steps)
    m.run([Zap(td=0, gfn=0x10, t=1), Fault(vcpu=0, gfn=0x10, t=1)])
    steps = m.steps[first:]
    begin = _index(steps, "td0", "invalidate.begin")
    end = _index(steps, "td0", "invalidate.end")
    window = [s.label for s in steps[begin:end] if s.cpu == "vcpu0"]
    assert window.count("faultin.retry_early") >= 2
    assert not [x for x in window if x.startswith(("mmu_lock", "faultin.alloc", "fault.stale"))]
    (early, *_) = [s for s in steps if s.label == "faultin.retry_early"]
    assert early.function == "kvm_mmu_faultin_pfn" and "in progress" in early.narration
    after = [s.label for s in steps[end:] if s.cpu == "vcpu0"]
    assert "faultin.alloc" in after and after[-1] == "fault.done"
    assert m.tds[0].leaves[0x10] == m.tds[0].gmem[0x10]


def test_an_invalidation_ending_while_guest_memfd_gives_the_page_retries_after_it() -> None:
    """The second lockless check, after ``kvm_gmem_get_pfn``: vCPU 0's fault on a new gfn
    samples ``mmu_seq`` while a zap of another gfn is in its window (the first check passes:
    not its gfn), guest_memfd allocates the page, and the zap's ``kvm_mmu_invalidate_end``
    moves the sequence before the fault goes on: it puts the page reference and retries
    without taking ``mmu_lock``, then maps."""
    m = _run([*BOOT, Fault(vcpu=0, gfn=0x10), Fault(vcpu=0, gfn=0x20)])
    first = len(m.steps)
    # the zap up to the write_lock of its end (lock, begin, remove, put, unlock, truncate,
    # lock), the fault to its guest_memfd allocation, the zap's end, then the fault
    order = ("td0",) * 7 + ("vcpu0",) * 3 + ("td0", "vcpu0")
    m.run([Schedule(order=order, t=1), Zap(td=0, gfn=0x20, t=1), Fault(vcpu=0, gfn=0x30, t=1)])
    assert m.stopped is None
    vcpu0 = [s.label for s in m.steps[first:] if s.cpu == "vcpu0"]
    late = vcpu0.index("faultin.retry_late")
    assert vcpu0[late - 1] == "faultin.alloc" and vcpu0[late + 1] == "fault.retry"
    assert not [x for x in vcpu0[:late] if x.startswith("mmu_lock")]
    (step,) = [s for s in m.steps if s.label == "faultin.retry_late"]
    assert "mmu_invalidate_seq moved 0 -> 1" in step.narration
    assert vcpu0[-1] == "fault.done" and m.tds[0].leaves[0x30] == m.tds[0].gmem[0x30]


def test_a_fault_on_another_gfn_maps_during_a_zaps_window() -> None:
    """The sample ``stale_fault`` (its ``schedule`` event pins the start): the zap of gfn 0x10
    drops ``mmu_lock`` after PAGE.REMOVE and the put with the invalidation in progress;
    vCPU 0's fault on gfn 0x12, outside the range, takes ``mmu_lock`` and maps before
    ``kvm_mmu_invalidate_end``; guest_memfd frees the page in the same window, with no lock
    held; vCPU 1's fault on gfn 0x10 goes stale under ``mmu_lock`` (it passed the lockless
    checks before the invalidation began), then retries early, then maps."""
    trace = parse_trace((SAMPLES / "stale_fault.jsonl").read_bytes(), "stale_fault.jsonl")
    m = Machine(resolve_settings(trace, []), full_check=True)
    m.run(trace.events)
    assert m.stopped is None and not m.diagnostics
    steps = m.steps
    begin = _index(steps, "td0", "invalidate.begin")
    end = _index(steps, "td0", "invalidate.end")
    aug = [k for k, s in enumerate(steps) if s.cpu == "vcpu0" and s.label == "page.aug"]
    assert begin < aug[-1] < end and "gfn 0x12" in steps[aug[-1]].narration
    zap = [s.label for s in steps[begin:] if s.cpu == "td0"]
    put = zap.index("mmu_lock.write_unlock")
    assert "zap.page_remove" in zap[:put] and any(x.startswith("pamt_put") for x in zap[:put])
    assert zap[put : put + 2] == ["mmu_lock.write_unlock", "gmem.truncate"]  # no lock held
    rest = [x for x in zap[put + 2 :] if x != "mmu_lock.write_spin"]  # (vCPU 0 is mapping)
    assert rest[:3] == ["mmu_lock.write", "invalidate.end", "mmu_lock.write_unlock"]
    vcpu1 = [s.label for s in steps if s.cpu == "vcpu1" and s.event == 8]
    stale = vcpu1.index("fault.stale")
    assert "mmu_lock.read_spin" in vcpu1[:stale]
    assert "faultin.retry_early" in vcpu1[stale:] and vcpu1[-1] == "fault.done"
    td = m.tds[0]
    assert set(td.leaves) == {0x10, 0x11, 0x12} and td.leaves[0x10] == td.gmem[0x10]


def test_teardown_runs_the_kernels_functions_in_order() -> None:
    """``kvm_gmem_release`` (invalidate every gfn: PAGE.REMOVE and the put, the HKID held),
    ``tdx_mmu_release_hkid``, the notifier's ``kvm_tdp_mmu_zap_all`` (direct roots only),
    ``kvm_destroy_vcpus`` (17bcd7144263), ``kvm_mmu_uninit_vm``, and ``vm_destroy`` last
    (46c49372e10e); the guest pages go back to the allocator only at the end."""
    m = _run(
        [
            *BOOT,
            Fault(vcpu=0, gfn=1),
            Fault(vcpu=1, gfn=0x40000),
            Fault(vcpu=0, gfn=0x80000),
            TdDestroy(td=0),
        ]
    )
    steps = [s for s in m.steps if s.event == 7]
    phases = (
        "__kvm_gmem_invalidate_begin",
        "tdx_sept_remove_leaf_spte",
        "__kvm_gmem_invalidate_end",
        "tdx_mmu_release_hkid",
        "kvm_tdp_mmu_zap_all",
        "tdx_vcpu_free",
        "tdx_sept_free_private_spt",
        "tdx_vm_destroy",
    )
    where = [s.function for s in steps]
    assert [f for f in dict.fromkeys(where) if f in phases] == list(phases)
    last = {f: max(k for k, g in enumerate(where) if g == f) for f in phases}
    first = {f: where.index(f) for f in phases}
    for done, then in pairwise(phases[1:]):  # each over before the next (bar begin's unlock)
        assert last[done] < first[then], (done, then)
    assert [s.label for s in steps if s.label == "zap.page_remove"] == ["zap.page_remove"] * 3
    assert steps[-1].label == "td.destroyed" and steps[-1].function == "kvm_destroy_vm"
    guest = [e for s in steps for e in s.effects if e.kind == "page" and e.old == "guest"]
    assert len(guest) == 3 and all(e.new == "free" for e in guest)
    assert [e for e in steps[-1].effects if e.kind == "page" and e.old == "guest"] == guest
    assert m.page_summary()["free"] == m.mem.total_pages


def test_a_vcpu_freed_while_the_hkid_is_held_leaks_its_control_pages() -> None:
    """``tdx_vcpu_free`` returns early while the TD holds its HKID: the TDCX and TDVPR pages
    are never reclaimed, by that call or by the TD's teardown (which skips the freed vCPU):
    a warning names them, they stay the TDX module's with their DPAMT references."""
    m = _run([*BOOT, Fault(vcpu=1, gfn=0x40000), VcpuFree(vcpu=1), TdDestroy(td=0)])
    (warn,) = [d for d in m.diagnostics if d.code == "VCPU_FREE_HKID_ASSIGNED"]
    assert warn.kind == "warning" and "TDVPR" in warn.message
    free = [s for s in m.steps if s.event == 5]
    assert "vcpu.leak" in [s.label for s in free]
    assert not [s for s in free if s.label == "control.reclaim"]
    assert [s.label for s in free][-1] == "vcpu.freed"
    teardown = [s for s in m.steps if s.event == 6]
    reclaimed = [s.narration.split()[1] for s in teardown if s.label == "control.reclaim"]
    assert reclaimed.count("TDVPR") == 1  # vCPU 0's only
    v1 = m.vcpus[1]
    assert not v1.alive and len(v1.control) == 1 + m.settings.tdcx_pages
    for pfn, _kind in v1.control:
        assert m.mem.owner(pfn) == m.mem.owner(v1.control[0][0])
    regions = {pfn >> PAGES_PER_REGION_SHIFT for pfn, _ in v1.control}
    assert all(m.refcount.get(r, 0) > 0 for r in regions)  # their pairs stay
    assert m.page_summary()["control"] == len(v1.control)
