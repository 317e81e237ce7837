"""Every step the engine takes has a line in the code panel's pseudocode."""

import pytest

from explorer.model.constants import MODES, SCHEDULES
from explorer.model.events import (
    Fault,
    Inject,
    Note,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    VcpuFree,
    Zap,
)
from explorer.model.machine import Machine
from explorer.model.narration import PSEUDOCODE, SOURCES, all_labels, line_of, pseudocode
from explorer.model.settings import Settings

# Concurrency, injections of every kind, a 2 MiB leaf, a livelock-prone cold region, teardown.
EVENTS = (
    [TdCreate(td=0), VcpuCreate(td=0, vcpu=0), VcpuCreate(td=0, vcpu=1), Note(text="go")]
    + [Fault(vcpu=i % 2, gfn=0x1000 * i + j, t=10 * i + j) for i in range(4) for j in range(2)]
    + [TdFinalize(td=0), Inject(what="sept_add_busy"), Fault(vcpu=0, gfn=0x70000)]
    + [Inject(what="page_aug_busy"), Fault(vcpu=1, gfn=0x70001)]
    + [Inject(what="alloc_fail", count=1), Fault(vcpu=0, gfn=0x90000)]
    + [Inject(what="pamt_add_fail"), Fault(vcpu=0, gfn=0x90001, pfn=0x3FFFF)]
    + [Inject(what="pamt_remove_fail"), Zap(td=0, gfn=0x90001)]
    + [Zap(td=0, gfn=0x1000, t=99), Fault(vcpu=1, gfn=0x1001, t=99)]
    + [Fault(vcpu=0, gfn=0x200, level="2m"), Fault(vcpu=1, gfn=0x5)]
    + [VcpuFree(vcpu=1), TdDestroy(td=0)]
)


def _labels_of_run(mode: str, schedule: str) -> set[tuple[str, str]]:
    """(function, label) of every step, under both a packing and a scattering allocator."""
    seen: set[tuple[str, str]] = set()
    for allocator in ("lowest", "spread"):
        settings = Settings(mode=mode, schedule=schedule, allocator=allocator, host_memory_mib=1024)
        m = Machine(settings, full_check=True)
        m.run(EVENTS)
        assert m.stopped is None, m.stopped
        flagged_by_design = ("sleeping-under-lock", "v5-topup-install")
        if mode not in flagged_by_design:
            assert not [d for d in m.diagnostics if d.kind == "violation"]
        seen |= {(s.function, s.label) for s in m.steps}
    return seen


@pytest.mark.parametrize("mode", MODES)
def test_every_step_of_every_mode_has_a_pseudocode_line(mode: str) -> None:
    seen: set[tuple[str, str]] = set()
    for schedule in SCHEDULES:
        seen |= _labels_of_run(mode, schedule)
    missing = sorted(p for p in seen if line_of(*p, mode) is None)
    assert not missing, f"steps without a pseudocode line in {mode}: {missing}"


@pytest.mark.parametrize("mode", ["v6", "v6-locked"])
def test_each_mode_shows_its_own_code_only(mode: str) -> None:
    """In v6 no line of a rejected design (mempool, GFP_KERNEL under the lock, v5's hint, the v4
    list) shows; v6-locked has no lock-free check and calls a found pair "present", not a
    race."""
    texts = [text for function in PSEUDOCODE for _, text in pseudocode(function, mode)]
    for foreign in ("design", "v5", "v4", "mempool", "HPA_RANGE_NOT_FREE"):
        assert not [t for t in texts if foreign in t], (mode, foreign)
    get = [text for _, text in pseudocode("tdx_pamt_get", mode)]
    if mode == "v6":
        assert any("atomic_inc_not_zero" in t for t in get)
        assert any("lost race" in t for t in get)
    else:
        assert not any("atomic_inc_not_zero" in t for t in get)
        assert any("pair present" in t for t in get) and not any("lost race" in t for t in get)


def test_pseudocode_labels_are_ones_the_engine_uses() -> None:
    seen = set()
    for mode in ("v6", "v5-hint", "mempool", "sleeping-under-lock", "atomic-under-lock"):
        seen |= {label for _, label in _labels_of_run(mode, "round-robin")}
    # labels only reachable by rarer paths, checked by the engine tests instead
    rare = {
        "control.enomem",
        "control.get_fail",
        "control.seamcall_fail",
        "td.fail",
        "td.failed",
        "vcpu.failed",
        "tdp.alloc_bug",
        "kvm_topup.fail",
        "pamt_cache.topup_fail",
        "faultin.enomem",
        "tdp.freeze_lost",
        "walk.frozen",
        "fault.stale",  # a zap between faultin and mmu_lock: tests/test_engine.py
        "faultin.retry_early",  # a fault on a gfn being invalidated: tests/test_fidelity.py
        "faultin.retry_late",  # an invalidation ends during kvm_gmem_get_pfn: the same
        "leaf.frozen",
        "zap.gone",
        "fault.eio",
        "fault.enomem",
        "fault.livelock",
        "fault.vm_bugged",
        "pamt_get.add_hint",
        "pamt_get.partial",
        "pamt_put.slipped",
        "pamt_get.lost_race",
        "pamt_get.pair_present",
        "faultin.taken",
        "leaf.spurious",
        "pamt_get.lock.spin",
        "pamt_put.lock.spin",
        "mmu_lock.read_spin",
        "mmu_lock.write_spin",
        "pamt_get.mempool",
        "pamt_get.enomem",
        "pamt_get.no_recheck",  # a race in a broken mode: tests/test_explore.py finds it
    }
    unused = sorted(all_labels() - seen - rare)
    assert not unused, f"pseudocode labels no run produced: {unused}"


def test_every_function_has_a_header_or_a_labelled_line_and_a_source() -> None:
    for function in PSEUDOCODE:
        lines = pseudocode(function)
        assert lines, function
        assert all(isinstance(text, str) and text for _, text in lines)
        assert SOURCES.get(function), f"{function} cites no file and function"


def test_the_names_are_the_v6_trees() -> None:
    """The S-EPT hooks v6 is based on (no link_external_spt / remove_external_spte any more),
    atomic_dec_and_lock in the put, the refcount lookup helper, free_pamt_array's reset."""
    functions = set(PSEUDOCODE)
    assert {"tdx_sept_map_nonleaf_spte", "tdx_sept_map_leaf_spte"} <= functions
    assert "tdx_sept_remove_leaf_spte" in functions
    assert not {"tdx_sept_link_private_spt", "tdx_sept_remove_private_spte"} & functions
    text = "\n".join(t for f in PSEUDOCODE for _, t in pseudocode(f, "v6"))
    for name in ("atomic_dec_and_lock", "tdx_find_pamt_refcount", "tdx_quirk_reset_paddr"):
        assert name in text, name
