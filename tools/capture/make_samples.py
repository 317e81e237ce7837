"""Write the sample captures of sample_traces/captures/ (their lessons: its README.md).

Run from the repository root: ``python tools/capture/make_samples.py``. Each sample is written
by :class:`explorer.conformance.synth.HostSim` (the kernel's rules, no TDX host here); the
divergent ones are a conforming run with one thing a differing kernel would do, written in by
hand below and named in the file's header.
"""

from __future__ import annotations

import sys
from pathlib import Path

from explorer.conformance.synth import HostSim, VmSim

OUT = Path(__file__).resolve().parent.parent.parent / "sample_traces" / "captures"


def two_tds() -> tuple[HostSim, VmSim, VmSim]:
    h = HostSim(seed=7)
    h.comment("conforming.txt: two TDs on one host (their S-EPT and control pages share 2 MiB")
    h.comment("regions: one refcount each), a non-TDX VM's faults as noise, a TD's shared-GPA")
    h.comment("fault, KVM_TDX_INIT_MEM_REGION on the VMM thread, a race, a local retry, a")
    h.comment("spurious fault, teardown of both TDs.")
    a = h.new_vm()
    h.new_vcpu(a, 0)
    h.new_vcpu(a, 1)
    h.init_mem_region(a, 0, 0x0, 0x30000)
    b = h.new_vm()
    h.new_vcpu(b, 0)
    other = h.new_vm(tdx=False)
    h.new_vcpu(other, 0)
    h.fault(other, 0, 0x100, 0x40100)
    h.fault(a, 0, 0x10, 0x30010)
    h.fault(other, 0, 0x101, 0x40101)
    h.fault(b, 0, 0x10, 0x30011)  # TD b's leaf in TD a's region: warm
    h.shared_fault(a, 1, 0x20, 0x50000)
    h.race(a, (0, 0x1000, 0x32000), (1, 0x1001, 0x32001))
    h.fault(a, 1, 0x1000)  # spurious: vCPU 1 faulted on the page vCPU 0 just mapped
    h.fault(b, 0, 0x2000, 0x34000, retries=1)  # a local retry: a second top-up, one record
    h.fault(other, 0, 0x102, 0x40102)
    h.teardown(b)
    h.teardown(a)
    return h, a, b


def zap_refault() -> HostSim:
    h = HostSim(seed=8)
    h.comment("zap_refault.txt: one TD; gfn 0x10 is zapped (present -> SHADOW_NONPRESENT_VALUE,")
    h.comment("then its put: region 0x180 back to 0, PAMT.REMOVE) and faulted again on a new")
    h.comment("page (a cold region again: PAMT.ADD); teardown prints its leaves -> FROZEN_SPTE.")
    a = h.new_vm()
    h.new_vcpu(a, 0)
    h.fault(a, 0, 0x10, 0x30000)
    h.fault(a, 0, 0x11, 0x30200)
    h.zap(a, 0x10)
    h.fault(a, 0, 0x10, 0x30400)
    h.teardown(a)
    return h


def teardown_elsewhere() -> HostSim:
    h = HostSim(seed=9)
    h.comment("teardown_other_thread.txt: the TD's last reference is dropped on a kworker")
    h.comment("(tid 4242, pid 2): kvm_arch_pre_destroy_vm gives that thread the TD's kvm=, and")
    h.comment("every frozen leaf, put and control-page free there belongs to the TD.")
    a = h.new_vm()
    h.new_vcpu(a, 0)
    h.new_vcpu(a, 1)
    h.fault(a, 0, 0x10, 0x30000)
    h.fault(a, 1, 0x11, 0x30001)
    h.teardown(a, tid=4242, pid=2)
    return h


def derived() -> HostSim:
    h = HostSim(seed=10, pamt_probes=False)
    h.comment("derived.txt: a host where tdh_phymem_pamt_add/remove were inlined (no probe):")
    h.comment("PAMT.ADD and PAMT.REMOVE are derived from the refcount the gets and puts imply.")
    h.lines.insert(4, "# probe_kprobe:tdh_phymem_pamt_add=absent")
    a = h.new_vm()
    h.new_vcpu(a, 0)
    h.fault(a, 0, 0x10, 0x30000)
    h.fault(a, 0, 0x11, 0x30001)
    h.zap(a, 0x10)
    h.teardown(a)
    return h


def divergent() -> HostSim:
    """A kernel that puts twice on a zap (an unbalanced put): the second put is unexplained and
    takes region 0x180 to 0 early; the next get there then takes the fast path on a region the
    rules say is at 0."""
    h = HostSim(seed=11)
    h.comment("divergent.txt: a kernel whose zap puts the page twice (an unbalanced put).")
    a = h.new_vm()
    h.new_vcpu(a, 0)
    h.fault(a, 0, 0x10, 0x30000)
    h.fault(a, 0, 0x11, 0x30001)
    h.zap(a, 0x10)
    h.ref[0x30000 >> 9] += 1  # the kernel's count is off by one from here
    h.put(a.vmm_tid, a.pid, 0x30000)
    h.fault(a, 0, 0x12, 0x30002)
    h.ref[0x30000 >> 9] -= 1
    h.teardown(a)
    return h


def leak() -> HostSim:
    """A kernel that forgets the put of a zapped page: the zap is reported as missing its put."""
    h = HostSim(seed=12)
    h.comment("divergent_leak.txt: a kernel that zaps gfn 0x11 without its tdx_pamt_put.")
    a = h.new_vm()
    h.new_vcpu(a, 0)
    h.fault(a, 0, 0x10, 0x30000)
    h.fault(a, 0, 0x11, 0x30001)
    pfn = a.leaves.pop(0x11)
    h.emit(
        a.vmm_tid,
        a.pid,
        "kvm_tdp_mmu_spte_changed",
        as_id=0,
        gfn=0x11,
        level=1,
        old_spte=(pfn << 12) | 0xE07,
        new_spte=1 << 63,
    )
    h.teardown(a)
    return h


def main() -> int:
    samples = {
        "conforming.txt": two_tds()[0],
        "zap_refault.txt": zap_refault(),
        "teardown_other_thread.txt": teardown_elsewhere(),
        "derived.txt": derived(),
        "divergent.txt": divergent(),
        "divergent_leak.txt": leak(),
    }
    for name, h in samples.items():
        (OUT / name).write_text(h.text())
        print(f"{name}: {sum(1 for x in h.lines if not x.startswith('#'))} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
