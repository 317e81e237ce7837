"""A run of allocations at once (``KernelState.alloc_pages``, ``HostMemory.take_free``: a KVM
cache top-up's loop, and ``tdx_topup_pamt_cache``'s when no step is recorded) against the same allocations one by one (``alloc_page``): the same pages
in the same order, the same memory, counters, footprint and recorded effects, under every
allocator policy, with pins, frees into the blocks, claims of new blocks, a host that fills
up, a pending injected failure and a CPU holding a lock."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from explorer.model.dpamt import fill_pamt_cache
from explorer.model.machine import Machine
from explorer.model.memory import PCP_BLOCK_PAGES
from explorer.model.prng import XorShift32
from explorer.model.records import OWNER_CODE
from explorer.model.settings import Settings
from explorer.model.state import Thread, Vcpu

CACHE = OWNER_CODE["kvm_cache"]
GUEST = OWNER_CODE["guest"]
FREE = OWNER_CODE["free"]


def _machine(policy: str, mib: int, pins: set[int], noted: bool = True) -> Machine:
    """A machine of ``mib`` MiB whose three vCPUs' CPUs are stocked; ``noted``: footprints
    and records on (the search's own turns), else off (a re-execution)."""
    m = Machine(Settings(allocator=policy, host_memory_mib=mib, seed=7))
    m.mem.pin(pins)
    for v in range(3):
        m.mem.stock_cpu(f"vcpu{v}")
    m.fp_on = noted
    m.record = noted
    return m


def _one_by_one(m: Machine, th: Thread, n: int) -> list[int]:
    """The reference: ``alloc_page`` until it fails or ``n`` pages are taken."""
    out: list[int] = []
    for _ in range(n):
        pfn = m.alloc_page(th, CACHE, sleeping=True)
        if pfn is None:
            return out
        out.append(pfn)
    return out


def _state(m: Machine) -> tuple[Any, ...]:
    return (
        m.canonical_state(),
        list(m.cnt),
        set(m.fp_r),
        set(m.fp_w),
        set(m.fp_a),
        sorted(m.batch_regions),
        list(m._fx),
        dict(m._changed_counters),
        m.mem.picked_shared,
        m.caches_moved,
        m._pairs_changed,
        list(m.mem.journal),
        m.mem.counts[:],
        {r: list(c) for r, c in m.mem.rcounts.items()},
    )


def _clear(m: Machine) -> None:
    """What each run is compared on afresh (the regions it noted, its footprint)."""
    m.fp_r.clear()
    m.fp_w.clear()
    m.fp_a.clear()
    m.batch_regions.clear()


@pytest.mark.parametrize("noted", [True, False], ids=["noted", "re-executed"])
@pytest.mark.parametrize("policy", ["percpu", "lowest", "spread", "random"])
@pytest.mark.parametrize("mib", [2, 4])
def test_a_run_takes_what_one_by_one_takes(policy: str, mib: int, noted: bool) -> None:
    """Runs of 0 to 45 pages by three CPUs (and a fourth with no block of its own), with
    frees in between, until the host is full: after every run both machines are equal."""
    pins = {3, 4, 130, 131, 132} | set(range(2 * PCP_BLOCK_PAGES + 5, 2 * PCP_BLOCK_PAGES + 40))
    a, b = _machine(policy, mib, pins, noted), _machine(policy, mib, pins, noted)
    rng = XorShift32(11, 0)
    cpus = [Thread(f"vcpu{i}", deque(), i) for i in range(4)]
    taken: list[int] = []
    full = False
    for _ in range(120):
        th = cpus[rng.below(4)]
        n = rng.below(46)
        _clear(a)
        _clear(b)
        got_a = _one_by_one(a, th, n)
        got_b = b.alloc_pages(th, CACHE, n)
        assert got_b == got_a
        assert _state(b) == _state(a)
        full = full or len(got_a) < n
        taken.extend(got_a)
        for _ in range(rng.below(6)):  # some pages back to the allocator, in both
            if taken:
                pfn = taken.pop(rng.below(len(taken)))
                a.free_page(pfn)
                b.free_page(pfn)
    assert full  # (the host filled up: the failing pick is compared too)


def test_a_pending_injection_or_a_held_lock_takes_the_one_by_one_path() -> None:
    """An injected failure fires at its allocation, and a sleeping allocation under a lock is
    invariant 6's violation for each page: both as one by one."""
    for how in ("inject", "lock"):
        a, b = _machine("percpu", 4, set()), _machine("percpu", 4, set())
        th = Thread("vcpu0", deque(), 0)
        for m in (a, b):
            if how == "inject":
                m.injections["alloc_fail"] = 1
                m._injecting = 1
            else:
                th.holds.append("pamt_lock")
        got_a = _one_by_one(a, th, 40)
        th.holds.clear()
        if how == "lock":
            th.holds.append("pamt_lock")
        got_b = b.alloc_pages(th, CACHE, 40)
        assert got_b == got_a
        assert _state(b) == _state(a)
        assert [d[1] for d in b._diags] == [d[1] for d in a._diags]
        th.holds.clear()


@pytest.mark.parametrize("free", [600, 7, 0], ids=["room", "runs-out", "full"])
def test_a_pamt_cache_top_up_unrecorded_matches_the_recorded_loop(free: int) -> None:
    """``tdx_topup_pamt_cache`` of 16 pages, recorded (page by page, for the step's effects)
    and not (one run): the same pages on the list, memory, counters and step, with room, with
    the host running out in the middle, and with none left (one failed try, not two)."""
    got = []
    for record in (True, False):
        m = _machine("percpu", 4, set(), noted=False)
        th = Thread("vcpu0", deque(), 0)
        while m.mem.counts[FREE] > free:  # take pages until ``free`` are left
            m.alloc_page(Thread("vcpu9", deque(), 9), GUEST, sleeping=True)
        m.record = record
        vcpu = Vcpu(0, 0)
        steps = list(fill_pamt_cache(m, th, vcpu, 16, "test"))
        got.append((steps, list(vcpu.pamt_cache), m.canonical_state(), list(m.cnt)))
    assert got[0] == got[1]
