"""The import's two-pass attribution decides every record as the rules read record by record do
(docs/capture.md, "Import"): a reference written straight from the rules, with the shared bit
revised after the fact, is compared with :func:`attribute` on seeded random captures, and the
cases the single forward pass must learn ahead (a TD's shared bit 51 seen on a later fault, a
TD known only by its process) are checked by name."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.conformance.importer import KVM_PROBES, TDX_PROBES, attribute, import_capture
from explorer.ingest import parse_trace
from explorer.ingest.capture import Capture, Record

_PROBES = [
    "kvm_page_fault",
    "kvm_mmu_page_fault",
    "kvm_tdp_mmu_spte_changed",
    "tdx_pamt_get.entry",
    "tdx_pamt_put.entry",
    "tdx_topup_pamt_cache.entry",
    "kvm_arch_pre_destroy_vm",
]


def _num(r: Record, key: str) -> int:
    v = r.fields.get(key)
    return v if isinstance(v, int) else 0


def _reference(records: list[Record]) -> tuple[list[int], list[str | None], dict[int, int]]:
    """vm_of, why and each VM's shared bit, by the rules as first written: the VM of every
    record, then the shared-GPA test with each VM's final shared bit."""
    order = sorted(records, key=lambda r: (r.ts, r.line))
    tdx = {_num(r, "kvm") for r in order if r.probe in TDX_PROBES} - {0}
    pid_only = {r.pid for r in order if r.probe in TDX_PROBES and not _num(r, "kvm")}
    tds_of: dict[int, set[int]] = {}
    for r in order:
        if _num(r, "kvm") in tdx:
            tds_of.setdefault(r.pid, set()).add(_num(r, "kvm"))
    bit: dict[int, int] = {}
    vm_of: list[int] = []
    why: list[str | None] = []
    for r in order:
        k = _num(r, "kvm")
        mine = tds_of.get(r.pid, set())
        reason: str | None = None
        if not k:
            if len(mine) == 1:
                k = min(mine)
            elif not mine and r.pid in pid_only:
                k = -r.pid
            else:
                reason = "non-tdx-vm" if not mine and r.probe in KVM_PROBES else "no-vm-context"
        if k:
            bit.setdefault(k, 47)
            if not (k in tdx or k < 0):
                reason = "non-tdx-vm"
            elif r.probe == "kvm_page_fault" and _num(r, "gpa") >> 51 & 1:
                bit[k] = 51
        vm_of.append(k if reason is None else 0)
        why.append(reason)
    for i, r in enumerate(order):
        if vm_of[i] and r.probe in KVM_PROBES:
            b = bit[vm_of[i]]
            gpa = _num(r, "gfn") << 12 if r.probe == "kvm_tdp_mmu_spte_changed" else _num(r, "gpa")
            if gpa >> b & 1:
                vm_of[i], why[i] = 0, "shared-gpa"
    return vm_of, why, bit


def _random_capture(seed: int, n: int) -> Capture:
    rng = random.Random(seed)
    kvms = [0, 0, 0xFFFF888100040000, 0xFFFF888100080000, 0xFFFF8881000C0000]
    records = []
    for line in range(1, n + 1):
        probe = rng.choice(_PROBES)
        fields: dict[str, int | str] = {}
        kvm = rng.choice(kvms)
        if kvm:
            fields["kvm"] = kvm
        if probe in ("kvm_page_fault", "kvm_mmu_page_fault"):
            fields["gpa"] = rng.randrange(1 << 20) << 12 | rng.choice([0, 0, 1 << 47, 1 << 51])
        elif probe == "kvm_tdp_mmu_spte_changed":
            fields["gfn"] = rng.randrange(1 << 20) | rng.choice([0, 0, 1 << 35, 1 << 39])
            fields["level"] = 1
        records.append(
            Record(
                line,
                rng.randrange(n // 2),
                0,
                rng.randrange(3),
                probe,
                fields,
                rng.choice([7, 8, 9]),
            )
        )
    return Capture(f"random-{seed}", tuple(records))


@pytest.mark.parametrize("seed", range(12))
def test_attribution_matches_the_rules(seed: int) -> None:
    """Every record's VM, reason and shared flag, and every VM's shared bit, as the reference."""
    cap = _random_capture(seed, 400)
    att = attribute(cap)
    vm_of, why, bit = _reference(list(cap.records))
    assert att.vm_of == vm_of
    assert att.why == why
    assert att.shared == [w == "shared-gpa" for w in why]
    assert {k: vm.shared_bit for k, vm in att.vms.items()} == bit


def _rec(line: int, probe: str, pid: int, **fields: int) -> Record:
    return Record(line, line * 10, 0, pid, probe, dict(fields), pid)


def test_a_later_bit_51_fault_makes_earlier_records_shared() -> None:
    """A TD whose shared bit shows only on a later fault (a 5-level EPT TD's GPA with bit 51):
    its earlier map under bit 51 is shared-GPA, known before the record pass reaches it."""
    kvm = 0xFFFF888100040000
    cap = Capture(
        "bit51",
        (
            _rec(1, "tdx_pamt_get.entry", 5, kvm=kvm, pfn=1),
            _rec(2, "kvm_tdp_mmu_spte_changed", 5, kvm=kvm, gfn=1 << 39 | 3, level=1),
            _rec(3, "kvm_page_fault", 5, kvm=kvm, gpa=1 << 51 | 0x3000),
            _rec(4, "kvm_page_fault", 5, kvm=kvm, gpa=1 << 47 | 0x3000),
        ),
    )
    att = attribute(cap)
    assert att.vms[kvm].shared_bit == 51
    assert att.why == [None, "shared-gpa", "shared-gpa", None]


def test_a_td_known_by_its_process_takes_its_shared_bit_too() -> None:
    """No ``kvm=`` anywhere: the TD is ``-pid``, and its bit-51 fault still widens its shared
    bit (the first pass resolves the fault's VM by the same rule as the second)."""
    cap = Capture(
        "pid-only",
        (
            _rec(1, "tdx_pamt_get.entry", 6, pfn=1),
            _rec(2, "kvm_page_fault", 6, gpa=1 << 47 | 0x5000),
            _rec(3, "kvm_page_fault", 6, gpa=1 << 51 | 0x5000),
        ),
    )
    att = attribute(cap)
    assert att.vms[-6].shared_bit == 51
    assert att.vm_of == [-6, -6, 0] and att.why == [None, None, "shared-gpa"]


def test_line_pos_is_built_on_demand() -> None:
    """``line_pos`` (no longer stored with the trace) still maps each line to its sorted place."""
    cap = _random_capture(3, 200)
    imp = import_capture(cap)
    order = sorted(cap.records, key=lambda r: (r.ts, r.line))
    assert imp.line_pos == {r.line: n for n, r in enumerate(order)}


def test_each_process_learns_its_td_even_right_after_another_process() -> None:
    """The first pass notes (process, ``kvm=``) once per run of records: a record of another
    process naming the same VM right after still counts, so that process's records without
    ``kvm=`` are the TD's (not ``no-vm-context``)."""
    kvm = 0xFFFF888100040000
    cap = Capture(
        "two-pids",
        (
            _rec(1, "tdx_pamt_get.entry", 7, kvm=kvm, pfn=1),
            _rec(2, "kvm_mmu_page_fault", 8, kvm=kvm, gpa=0x2000),
            _rec(3, "tdx_pamt_put.entry", 8, pfn=1),
        ),
    )
    att = attribute(cap)
    assert att.vm_of == [kvm, kvm, kvm] and att.why == [None, None, None]


def _races(n: int) -> str:
    from explorer.conformance.synth import HostSim

    h = HostSim(seed=1)
    vm = h.new_vm()
    h.new_vcpu(vm, 0)
    h.new_vcpu(vm, 1)
    for i in range(n):
        p = 0x400000 + i * 512
        h.race(vm, (0, 0x1000 + 2 * i, p), (1, 0x1001 + 2 * i, p + 1))
    return str(h.text())


def test_many_races_import_to_one_schedule_each_and_conform(tmp_path: Path) -> None:
    """The trace so far runs once for all the groups (it ran again for every fault of every
    group: quadratic, 400 races in 17.9 s), and each group still gets its kernel's order."""
    from tests.test_explore import ROOT

    cap = tmp_path / "races.txt"
    cap.write_text(_races(40))
    out = tmp_path / "races.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "explorer"]
    p = subprocess.run([*run, "import", str(cap), "-o", str(out)], env=env, capture_output=True)
    assert p.returncode == 0, p.stderr
    events = parse_trace(out.read_bytes(), "races.jsonl").events
    orders = [e.order for e in events if e.op == "schedule"]  # type: ignore[attr-defined]
    assert len(orders) == 40 and all(orders)
    p = subprocess.run([*run, "conform", str(cap)], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "conforms" in p.stdout, p.stdout + p.stderr


def test_a_group_after_an_impossible_record_gets_no_empty_schedule(tmp_path: Path) -> None:
    """A capture whose dry run stops before a group (here maps of a pfn past any host) gave
    the group a schedule with an empty order, which the trace format refuses: the import then
    wrote a trace ``check`` could not read. Now the group has no schedule event."""
    import re

    from tests.test_explore import ROOT

    text = (ROOT / "sample_traces" / "captures" / "conforming.txt").read_text()
    text = re.sub(r"new_spte=0x[0-9a-f]+", "new_spte=0xffffffffffffffff", text)
    cap = tmp_path / "weird.txt"
    cap.write_text(text)
    out = tmp_path / "weird.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "explorer", "import", str(cap), "-o", str(out)],
        env=env,
        capture_output=True,
    )
    assert p.returncode == 0, p.stderr
    events = parse_trace(out.read_bytes(), "weird.jsonl").events  # (the format holds)
    assert all(e.order for e in events if e.op == "schedule")  # type: ignore[attr-defined]


def test_conform_says_where_its_replay_stopped(tmp_path: Path) -> None:
    """An impossible event in the imported trace names its event and the capture lines."""
    import re

    from tests.test_explore import ROOT

    text = (ROOT / "sample_traces" / "captures" / "conforming.txt").read_text()
    cap = tmp_path / "weird.txt"
    cap.write_text(re.sub(r"new_spte=0x[0-9a-f]+", "new_spte=0xffffffffffffffff", text))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "explorer", "conform", str(cap)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert re.search(
        r"the replay stopped: .* \(imported event \d+, from capture line\(s\) \d+", p.stderr
    )
