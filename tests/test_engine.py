"""The engine, branch by branch, named for the behaviour; and a stateful test against a naive model.

Every Machine here runs with ``full_check=True``: the invariants of dpamt-model.md section 10 are
checked on every region after every step, and any violation fails the test.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from explorer.model.constants import PAGES_PER_REGION
from explorer.model.events import (
    Event,
    Fault,
    Inject,
    Schedule,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    VcpuFree,
    Zap,
)
from explorer.model.machine import (
    Machine,
)
from explorer.model.settings import Settings

BOOT: list[Event] = [
    TdCreate(td=0),
    VcpuCreate(td=0, vcpu=0),
    VcpuCreate(td=0, vcpu=1),
    TdFinalize(td=0),
]
COLD = 64 * PAGES_PER_REGION  # first pfn of region 64, which nothing else uses


def run(events: list[Event], **kw: object) -> Machine:
    m = Machine(Settings(**kw), full_check=True)  # type: ignore[arg-type]
    m.run(events)
    assert m.stopped is None, m.stopped
    bad = [d for d in m.diagnostics if d.kind == "violation"]
    assert not bad, bad
    return m


def labels(m: Machine, cpu: str | None = None) -> list[str]:
    return [s.label for s in m.steps if cpu is None or s.cpu == cpu]


def test_a_cold_get_pops_the_last_pushed_pages_first() -> None:
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10)])  # warm: the cache is full again after the next topup
    cache_before = list(m.vcpus[0].pamt_cache)
    m.run([Fault(vcpu=0, gfn=0x11, pfn=COLD)])
    pops = [s for s in m.steps if s.label == "pamt_get.pop"][-2:]
    popped = [int(s.narration.split()[2], 16) for s in pops]
    assert popped == [cache_before[-1], cache_before[-2]]  # LIFO: the head of the list first
    assert m.module.pairs[64] == (popped[0], popped[1])
    assert m.refcount[64] == 1


def test_control_pages_take_their_pair_from_the_page_allocator() -> None:
    m = run([TdCreate(td=0)])
    assert labels(m)[1:6] == [
        "control.alloc",
        "pamt_get.slow",
        "pamt_get.alloc",
        "pamt_get.alloc",
        "pamt_get.lock",
    ]
    assert m.counters["pamt_get_fast"] == 4  # the 4 TDCS pages share region 0 with the TDR


def test_a_lost_race_leaves_the_losers_cache_two_pages_shorter_and_refcount_2() -> None:
    warm = [*BOOT, Fault(vcpu=0, gfn=0x10), Fault(vcpu=1, gfn=0x11)]
    m = run(
        [*warm, Fault(vcpu=0, gfn=0x12, pfn=COLD, t=1), Fault(vcpu=1, gfn=0x13, pfn=COLD + 1, t=1)]
    )
    assert m.counters["pamt_lost_race"] == 1 and m.refcount[64] == 2
    assert [len(v.pamt_cache) for v in m.vcpus.values()] == [8, 8]
    loser = next(s for s in m.steps if s.label == "pamt_get.lost_race").cpu
    freed = next(s for s in m.steps if s.label == "pamt_get.free_pair" and s.cpu == loser)
    assert all(e.new == "free" for e in freed.effects if e.kind == "page")  # to the allocator
    assert m.counters["pamt_pages_drained"] == 2


def test_a_partial_pop_frees_the_first_page_to_the_allocator() -> None:
    """v6's top-ups keep the cache even and each get pops a pair, so the fault path never pops
    half a pair; the kernel code handles it anyway. Drive tdx_pamt_get on an odd cache."""
    from explorer.model.dpamt import ENOMEM, tdx_pamt_get
    from explorer.model.state import Thread

    m = run([*BOOT, Fault(vcpu=0, gfn=0x10)])
    vcpu = m.vcpus[0]
    while len(vcpu.pamt_cache) > 1:
        m.free_page(m.pamt_cache_pop(vcpu) or 0)
    only = vcpu.pamt_cache[0]
    gen = tdx_pamt_get(m, Thread("vcpu0", __import__("collections").deque(), 0), COLD, vcpu)
    steps = []
    try:
        while True:
            steps.append(next(gen)[1])
    except StopIteration as done:
        assert done.value == ENOMEM
    assert steps == ["pamt_get.slow", "pamt_get.pop", "pamt_get.partial"]
    assert m.mem.owner(only) == 0 and not vcpu.pamt_cache  # to the allocator, not the cache
    assert m.counters["pamt_pages_drained"] == 1


def test_the_v4_shared_list_pops_half_pairs() -> None:
    # v4's list (5 S-EPT pages + 2 x n) is odd, and S-EPT pages pop one at a time
    seen = set()
    for n in range(1, 4):
        m = run(
            [*BOOT] + [Fault(vcpu=0, gfn=0x40000 * i) for i in range(6)],
            mode="v4-shared-list",
            dpamt_gets_per_fault=n,
            allocator="spread",
            host_memory_mib=1024,
        )
        seen |= set(labels(m))
    assert "pamt_get.partial" in seen


def test_pamt_add_failure_warns_frees_the_pair_and_the_fault_retries() -> None:
    m = run([*BOOT, Inject(what="pamt_add_fail"), Fault(vcpu=0, gfn=0x10, pfn=COLD)])
    assert m.counters["pamt_add_failed"] == 1 and m.counters["fault_retries"] == 1
    assert [d.code for d in m.diagnostics] == ["WARN_PAMT_ADD"]
    assert m.refcount[64] == 1 and 0x10 in m.tds[0].leaves


def test_put_decrements_without_the_lock_above_1_and_removes_at_0() -> None:
    m = run(
        [
            *BOOT,
            Fault(vcpu=0, gfn=0x10, pfn=COLD),
            Fault(vcpu=0, gfn=0x11, pfn=COLD + 1),
            Zap(td=0, gfn=0x10),
        ]
    )
    assert "pamt_put.fast" in labels(m, "td0") and m.refcount[64] == 1
    m.run([Zap(td=0, gfn=0x11)])
    tail = labels(m, "td0")[-13:]
    assert tail[:8] == [
        "zap.page_remove",
        "pamt_put.slow",
        "pamt_put.lock",
        "pamt_put.dec",
        "pamt_put.remove",
        "pamt_put.unlock",
        "pamt_put.reset_pair",  # free_pamt_array: tdx_quirk_reset_paddr, then free
        "pamt_put.free_pair",
    ]
    # the put under the write mmu_lock of the invalidation's begin; the page freed outside it
    assert tail[8:] == [
        "mmu_lock.write_unlock",
        "gmem.truncate",
        "mmu_lock.write",
        "invalidate.end",
        "mmu_lock.write_unlock",
    ]
    assert "atomic_dec_and_lock" in m.steps[-12].narration  # pamt_put.slow
    assert 64 not in m.refcount and 64 not in m.module.pairs


def test_remove_failure_leaves_refcount_1_and_a_leaked_pair_later_gets_are_fast() -> None:
    m = run(
        [
            *BOOT,
            Fault(vcpu=0, gfn=0x10, pfn=COLD),
            Inject(what="pamt_remove_fail"),
            Zap(td=0, gfn=0x10),
            Fault(vcpu=0, gfn=0x11, pfn=COLD + 1),
        ]
    )
    assert m.orphans == {64: 1} and m.refcount[64] == 2
    assert m.page_summary()["leaked"] == 2
    last_get = [s.label for s in m.steps if s.function == "tdx_pamt_get"][-1]
    assert last_get == "pamt_get.fast"


def test_v6_locked_has_no_fast_path_and_always_allocates_the_pair_first() -> None:
    m = run(
        [
            *BOOT,
            Fault(vcpu=0, gfn=0x10, pfn=COLD),
            Fault(vcpu=0, gfn=0x11, pfn=COLD + 1),
            Zap(td=0, gfn=0x11),
        ],
        mode="v6-locked",
    )
    assert "pamt_get.fast" not in labels(m) and "pamt_put.fast" not in labels(m)
    # finding the pair under the lock is v6-locked's ordinary path, not a race
    assert m.counters["pamt_lost_race"] == 0 and "pamt_get.lost_race" not in labels(m)
    present = [s for s in m.steps if s.label == "pamt_get.pair_present"]
    assert any("pair already present: refcount[64] 1 -> 2" in s.narration for s in present)
    assert m.refcount[64] == 1


def test_v6_locked_one_vcpu_three_pages_of_one_region_has_no_lost_race() -> None:
    """Issue 14: one vCPU faulting three pages of one region reported pamt_lost_race=4."""
    m = run(
        [*BOOT, *(Fault(vcpu=0, gfn=0x10 + i, pfn=COLD + i) for i in range(3))],
        mode="v6-locked",
    )
    assert m.counters["pamt_lost_race"] == 0
    # every get that did not add the pair found it present (control pages included)
    c = m.counters
    assert labels(m).count("pamt_get.pair_present") == c["pamt_get"] - c["pamt_add"] > 0


def test_v5_hint_put_decrements_unlocked_and_a_racing_get_sees_hpa_range_not_free() -> None:
    # a put at refcount 1 (TD 0) and a get on the same region (TD 1) at the same time
    events: list[Event] = [
        TdCreate(td=0),
        VcpuCreate(td=0, vcpu=0),
        TdFinalize(td=0),
        TdCreate(td=1),
        VcpuCreate(td=1, vcpu=1),
        TdFinalize(td=1),
        Fault(vcpu=1, gfn=0x10),
        Fault(vcpu=0, gfn=0x1000, pfn=COLD),
        Zap(td=0, gfn=0x1000, t=1),
        Fault(vcpu=1, gfn=0x11, pfn=COLD + 5, t=1),
    ]
    seen: set[str] = set()
    for seed in range(120):  # the outcome depends on the interleaving: try random schedules
        m = run(events, mode="v5-hint", schedule="random", seed=seed)
        assert m.refcount[64] == 1 and 64 in m.module.pairs  # whatever the order
        seen |= set(labels(m))
    assert "pamt_put.dec_unlocked" in seen  # the put's decrement without the lock
    assert "pamt_get.add_hint" in seen  # the get found the pair a put had not removed yet


def test_topup_fills_exactly_2n_and_kvm_caches_fill_to_40_below_min() -> None:
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10)], dpamt_gets_per_fault=3)
    v = m.vcpus[0]
    assert len(v.pamt_cache) + 0 <= 6
    assert {c.name: c.count for c in v.caches.values()} == {
        "pte_list_desc": 40,
        "external_spt": 37,
        "shadow_page": 37,
        "page_header": 37,
    }
    m.run([Fault(vcpu=0, gfn=0x11)])
    assert [s.label for s in m.steps if s.function == "kvm_mmu_topup_memory_cache"].count(
        "kvm_topup.fill"
    ) == 4  # only the first fault filled KVM's caches: >= min is a no-op


def test_topup_order_is_the_kernels() -> None:
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10)])
    order = [
        s.narration.split(":")[0].split(" ")[0]
        for s in m.steps
        if s.label in ("kvm_topup.fill", "pamt_cache.topup")
    ]
    assert order == [
        "pte_list_desc",
        "external_spt",
        "tdx_topup_pamt_cache",
        "shadow_page",
        "page_header",
    ]


def test_an_empty_kvm_cache_warns_and_falls_back_to_gfp_atomic() -> None:
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10)], worst_case_tables=0)
    assert m.counters["kvm_cache_empty"] >= 3 and m.counters["allocs_under_lock"] >= 3
    assert {d.code for d in m.diagnostics} == {"WARN_CACHE_EMPTY"}


def test_a_failed_topup_ends_the_fault_with_enomem() -> None:
    m = run(
        [
            TdCreate(td=0),
            VcpuCreate(td=0, vcpu=0),
            Inject(what="alloc_fail"),
            Fault(vcpu=0, gfn=0x10),
        ]
    )
    assert labels(m)[-2:] == ["kvm_topup.fail", "fault.enomem"]
    assert m.counters["faults_failed"] == 1


@pytest.mark.parametrize(("levels", "pages"), [(4, 8), (5, 10)])
def test_a_fully_cold_first_fault_uses_2_pages_per_level_plus_the_leaf(
    levels: int, pages: int
) -> None:
    m = run(
        [*BOOT, Fault(vcpu=0, gfn=0x1000)],
        ept_levels=levels,
        allocator="spread",
        host_memory_mib=4096,
    )
    assert 10 - len(m.vcpus[0].pamt_cache) == pages
    assert len(m.tds[0].entries) == levels - 1


def test_too_few_gets_complete_through_retries_and_zero_livelocks() -> None:
    kw = {"ept_levels": 5, "allocator": "spread", "host_memory_mib": 4096, "max_retries": 6}
    m = run([*BOOT, Fault(vcpu=0, gfn=0x1000)], dpamt_gets_per_fault=2, **kw)
    assert m.counters["fault_retries"] > 0 and 0x1000 in m.tds[0].leaves
    m = run([*BOOT, Fault(vcpu=0, gfn=0x1000)], dpamt_gets_per_fault=0, **kw)
    assert m.counters["livelocks"] == 1 and m.counters["fault_retries"] == 7
    assert [d.code for d in m.diagnostics] == ["LIVELOCK"]


def test_page_add_before_finalize_page_aug_after_and_2m_is_a_kvm_bug() -> None:
    m = run(
        [
            TdCreate(td=0),
            VcpuCreate(td=0, vcpu=0),
            Fault(vcpu=0, gfn=1),
            TdFinalize(td=0),
            Fault(vcpu=0, gfn=2),
            Fault(vcpu=0, gfn=0x200, level="2m"),
            Fault(vcpu=0, gfn=3),
        ]
    )
    assert m.counters["page_add"] == 1 and m.counters["page_aug"] == 1
    assert m.tds[0].state == "bugged" and "fault.vm_bugged" in labels(m)
    assert [d.code for d in m.diagnostics] == ["KVM_BUG_ON"]


@pytest.mark.parametrize("what", ["sept_add_busy", "page_aug_busy"])
def test_busy_seamcalls_put_unwind_and_retry(what: str) -> None:
    m = run([*BOOT, Inject(what=what), Fault(vcpu=0, gfn=0x10)])
    assert m.counters["fault_retries"] == 1 and 0x10 in m.tds[0].leaves
    assert m.counters["pamt_put"] == 1


def test_teardown_in_the_kernels_order_frees_every_page() -> None:
    m = run(
        [
            *BOOT,
            Fault(vcpu=0, gfn=1),
            Fault(vcpu=1, gfn=0x40000, pfn=COLD),
            TdDestroy(td=0),
        ]
    )
    steps = [s for s in m.steps if s.event == 6]  # the td_destroy event
    seq = [s.label for s in steps]
    first = {label: seq.index(label) for label in dict.fromkeys(seq)}
    # kvm_destroy_vm: private pages, the HKID, each vCPU (tdx_vcpu_free: DPAMT cache, TDCX,
    # TDVPR; then KVM's caches), the S-EPT tables, then tdx_vm_destroy: TDCS, TDR last
    assert first["zap.page_remove"] < first["td.hkid_release"] < first["pamt_cache.free"]
    assert first["pamt_cache.free"] < first["control.reclaim"] < first["kvm_caches.free"]
    assert first["kvm_caches.free"] < first["sept.reclaim"]
    # "TDH.PHYMEM.PAGE.RECLAIM <KIND> page ...": TDCX pages then TDVPR per vCPU, TDCS then TDR
    reclaimed = [s.narration.split()[1] for s in steps if s.label == "control.reclaim"]
    vcpu0 = reclaimed[: reclaimed.index("TDVPR") + 1]
    assert vcpu0 == ["TDCX"] * (len(vcpu0) - 1) + ["TDVPR"]
    assert reclaimed[-1] == "TDR" and set(reclaimed[-5:-1]) == {"TDCS"}
    assert m.page_summary()["free"] == m.mem.total_pages
    assert not m.refcount and not m.module.pairs


def test_teardown_order_decides_which_region_a_failed_remove_leaks() -> None:
    """Every page in a region of its own (the spread allocator), no private page left, one
    PAMT.REMOVE failing at teardown: in the kernel's order the first region to reach 0 is a
    page of vCPU 0's (tdx_vcpu_free reclaims its TDCX pages before kvm_mmu_uninit_vm frees the
    S-EPT tables), so that region leaks, not an S-EPT table's."""
    m = Machine(Settings(allocator="spread", host_memory_mib=4096), full_check=True)
    m.run(
        [
            *BOOT,
            Fault(vcpu=0, gfn=1),
            Zap(td=0, gfn=1),
            Inject(what="pamt_remove_fail"),
            TdDestroy(td=0),
        ]
    )
    assert m.stopped is None
    (leak,) = [d for d in m.diagnostics if d.code == "WARN_PAMT_REMOVE"]
    assert "WARN_ON_ONCE in tdx_pamt_put" in leak.message
    before = [s for s in m.steps[: leak.step] if s.event == 7]
    reclaims = [s for s in before if s.label in ("control.reclaim", "sept.reclaim")]
    assert reclaims[-1].function == "tdx_vcpu_free" and "TDCX" in reclaims[-1].narration
    assert not any(s.label == "sept.reclaim" for s in before)
    assert len(m.orphans) == 1 and m.page_summary()["leaked"] == 2


def test_impossible_events_stop_the_replay_and_keep_what_came_before() -> None:
    m = Machine(Settings(), full_check=True)
    m.run([*BOOT, Fault(vcpu=0, gfn=1), Zap(td=0, gfn=2, line=9), Fault(vcpu=0, gfn=3)])
    assert m.stopped is not None and m.stopped.line == 9
    assert list(m.tds[0].leaves) == [1]


@pytest.mark.parametrize("schedule", ["sequential", "round-robin", "random"])
def test_contention_spins_visibly_under_every_schedule(schedule: str) -> None:
    m = run(
        [
            *BOOT,
            Fault(vcpu=0, gfn=0x10),
            Fault(vcpu=1, gfn=0x11),
            Zap(td=0, gfn=0x10, t=1),
            Fault(vcpu=1, gfn=0x12, t=1),
            Fault(vcpu=0, gfn=0x20, pfn=COLD, t=2),
            Fault(vcpu=1, gfn=0x21, pfn=COLD + 1, t=2),
        ],
        schedule=schedule,
        seed=4,
    )
    if schedule == "round-robin":
        assert any(label.endswith(".spin") for label in labels(m))
    assert {0x11, 0x12, 0x20, 0x21} <= set(m.tds[0].leaves)


@pytest.mark.parametrize("schedule", ["sequential", "round-robin", "random"])
@pytest.mark.parametrize("allocator", ["lowest", "spread", "random"])
def test_same_inputs_same_steps(schedule: str, allocator: str) -> None:
    events = [*BOOT] + [Fault(vcpu=i % 2, gfn=0x300 * i, t=i // 2) for i in range(12)]
    a = run(events, schedule=schedule, allocator=allocator, seed=9, host_memory_mib=512)
    b = run(events, schedule=schedule, allocator=allocator, seed=9, host_memory_mib=512)
    assert a.steps == b.steps


def test_checkpoint_restore_reproduces_the_rest() -> None:
    head = [*BOOT, Fault(vcpu=0, gfn=1), Fault(vcpu=1, gfn=2)]
    tail = [Fault(vcpu=i % 2, gfn=0x500 + i, t=i // 2) for i in range(8)] + [Zap(td=0, gfn=1)]
    whole = run(head + tail, allocator="random", schedule="random", seed=3)
    m = Machine(Settings(allocator="random", schedule="random", seed=3), full_check=True)
    m.run(head)
    image = m.image()
    again = Machine(Settings(allocator="random", schedule="random", seed=3), full_check=True)
    again.restore(image)
    again.run(tail)

    def key(steps):  # type: ignore[no-untyped-def]
        return [
            (s.index, s.cpu, s.function, s.label, s.narration, s.effects, s.counters) for s in steps
        ]

    assert key(again.steps) == key(whole.steps[len(m.steps) :])


# ---------------------------------------------------------------- the stateful test
MODES_UNDER_TEST = (
    "v6",
    "v6-locked",
    "v5-hint",
    "v4-shared-list",
    "kvm-style-cache",
    "mempool",
    "atomic-under-lock",
)


class EngineVsNaive(RuleBasedStateMachine):
    """Random TD/vCPU/fault/zap/free/teardown/injection sequences, concurrent batches included,
    on the real machine; after every rule the machine is compared with a naive model of what
    must be mapped and of where references must be."""

    @initialize(
        mode=st.sampled_from(MODES_UNDER_TEST),
        schedule=st.sampled_from(("sequential", "round-robin", "random")),
        allocator=st.sampled_from(("lowest", "spread", "random")),
        seed=st.integers(0, 1000),
    )
    def start(self, mode: str, schedule: str, allocator: str, seed: int) -> None:
        self.m = Machine(
            Settings(
                mode=mode,
                schedule=schedule,
                allocator=allocator,
                seed=seed,
                host_memory_mib=512,
                max_retries=8,
            ),
            full_check=True,
        )
        self.tds: dict[int, set[int]] = {}  # live TD -> gfns the naive model says are mapped
        self.vcpus: dict[int, int] = {}  # live vCPU -> TD
        self.next_td = self.next_vcpu = 0
        self.t = 0

    def _run(self, events: list[Event]) -> None:
        self.m.run(events)
        assert self.m.stopped is None, self.m.stopped

    @rule()
    def create_td(self) -> None:
        td = self.next_td
        self.next_td += 1
        self._run([TdCreate(td=td)])
        if self.m.tds[td].state == "created":  # an injected allocation failure can fail it
            self.tds[td] = set()

    @precondition(
        lambda self: any(self.m.tds[t].state in ("created", "finalized") for t in self.tds)
    )
    @rule(data=st.data())
    def create_vcpu(self, data: st.DataObject) -> None:
        td = data.draw(
            st.sampled_from(
                sorted(t for t in self.tds if self.m.tds[t].state in ("created", "finalized"))
            )
        )
        v = self.next_vcpu
        self.next_vcpu += 1
        self._run([VcpuCreate(td=td, vcpu=v)])
        if self.m.vcpus[v].alive:
            self.vcpus[v] = td

    @precondition(lambda self: self.vcpus)
    @rule(data=st.data(), n=st.integers(1, 4))
    def faults(self, data: st.DataObject, n: int) -> None:
        """``n`` faults at one logical time (concurrent when on different vCPUs)."""
        self.t += 1
        events: list[Event] = []
        for _ in range(n):
            v = data.draw(st.sampled_from(sorted(self.vcpus)))
            gfn = data.draw(st.integers(0, 4096) | st.integers(0, 1 << 30))
            events.append(Fault(vcpu=v, gfn=gfn, t=self.t))
        failed = self.m.counters["faults_failed"]
        self._run(events)
        if self.m.counters["faults_failed"] == failed:
            for ev in events:
                assert isinstance(ev, Fault)
                self.tds[self.vcpus[ev.vcpu]].add(ev.gfn)
        else:  # some fault failed (injected failure, livelock): believe the machine for these
            for ev in events:
                assert isinstance(ev, Fault)
                td = self.vcpus[ev.vcpu]
                if ev.gfn in self.m.tds[td].leaves:
                    self.tds[td].add(ev.gfn)

    @precondition(lambda self: any(self.tds.values()))
    @rule(data=st.data())
    def zap(self, data: st.DataObject) -> None:
        td = data.draw(st.sampled_from(sorted(t for t, g in self.tds.items() if g)))
        gfn = data.draw(st.sampled_from(sorted(self.tds[td])))
        self._run([Zap(td=td, gfn=gfn)])
        self.tds[td].discard(gfn)

    @rule(
        what=st.sampled_from(
            ("alloc_fail", "pamt_add_fail", "pamt_remove_fail", "sept_add_busy", "page_aug_busy")
        )
    )
    def inject(self, what: str) -> None:
        self._run([Inject(what=what)])

    @precondition(lambda self: self.tds)
    @rule(data=st.data())
    def finalize(self, data: st.DataObject) -> None:
        td = data.draw(st.sampled_from(sorted(self.tds)))
        if self.m.tds[td].state == "created":
            self._run([TdFinalize(td=td)])

    @precondition(lambda self: self.vcpus)
    @rule(data=st.data())
    def free_vcpu(self, data: st.DataObject) -> None:
        v = data.draw(st.sampled_from(sorted(self.vcpus)))
        self._run([VcpuFree(vcpu=v)])
        del self.vcpus[v]

    @precondition(lambda self: self.tds)
    @rule(data=st.data())
    def destroy_td(self, data: st.DataObject) -> None:
        td = data.draw(st.sampled_from(sorted(self.tds)))
        self._run([TdDestroy(td=td)])
        del self.tds[td]
        self.vcpus = {v: t for v, t in self.vcpus.items() if t != td}

    @invariant()
    def no_violation(self) -> None:
        if hasattr(self, "m"):
            bad = [d for d in self.m.diagnostics if d.kind == "violation"]
            assert not bad, bad

    @invariant()
    def mappings_match_the_naive_model(self) -> None:
        if hasattr(self, "m"):
            for td, gfns in self.tds.items():
                assert set(self.m.tds[td].leaves) == gfns

    @invariant()
    def refcounts_match_the_tdx_modules_pages(self) -> None:
        """From scratch: each region's refcount is its pages in TD use (the module's truth)
        plus orphans; no page in a CPU's hands; page accounting sums to the host."""
        if not hasattr(self, "m"):
            return
        m = self.m
        used = Counter({r: n for r, n in m.module.used.items()})
        for r in set(used) | set(m.refcount):
            assert m.refcount.get(r, 0) == used[r] + m.orphans.get(r, 0), r
        pages = m.page_summary()
        assert pages["in_hand"] == 0
        assert (
            sum(v for k, v in pages.items() if k not in ("total", "mirror", "in_hand"))
            == pages["total"]
        )
        if not self.tds:  # nothing alive: every page is back but leaked pairs, the mempool,
            # and what a vCPU freed while its TD held the HKID leaked (tdx_vcpu_free returned
            # early): its control pages, and the pairs of their regions
            lost = sum(len(v.control) for v in m.vcpus.values() if not v.alive)
            assert pages["control"] == lost
            if not lost:
                assert pages["pamt_pair"] == 0
            held = pages["leaked"] + len(m.extra.get("mempool", ())) + lost + pages["pamt_pair"]
            assert pages["free"] == pages["total"] - held


EngineVsNaive.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_engine_against_a_naive_model = EngineVsNaive.TestCase


@pytest.mark.slow
def test_engine_against_a_naive_model_long() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        EngineVsNaive,
        settings=settings(
            max_examples=600,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_a_traces_pfn_is_bound_after_the_top_ups_as_kvm_does() -> None:
    """kvm_tdp_mmu_page_fault: mmu_topup_memory_caches, then kvm_mmu_faultin_pfn (the page from
    guest_memfd), then mmu_lock. A trace's explicit pfn is guest_memfd's page: bound there."""
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10, pfn=COLD)])
    fault = [s for s in m.steps if s.event == 4]
    seq = [s.label for s in fault]
    assert seq.index("pamt_cache.topup") < seq.index("faultin.given") < seq.index("mmu_lock.read")
    given = fault[seq.index("faultin.given")]
    assert given.function == "kvm_mmu_faultin_pfn"
    assert ("page", COLD, "free", "guest") in [tuple(e) for e in given.effects]
    begin = fault[0]
    assert begin.label == "fault.begin" and not [e for e in begin.effects if e.key == COLD]


def test_an_inject_or_note_step_shows_no_cpu_of_the_batch_before() -> None:
    """The CPU panel at an instant step is the same whether the step was recorded or
    re-derived from a checkpoint (which has no CPU): none."""
    m = Machine(Settings(), full_check=True)
    snaps = []
    m.on_step = lambda mm, step: (
        snaps.append(mm.snapshot()) if step.label == "trace.inject" else None
    )
    m.run([*BOOT, Fault(vcpu=0, gfn=1, t=1), Fault(vcpu=1, gfn=2, t=1), Inject(what="alloc_fail")])
    assert len(snaps) == 1 and snaps[0].cpus == ()


def test_the_explorers_own_diagnostics_say_so_and_name_the_kernels_warn() -> None:
    m = Machine(Settings(dpamt_gets_per_fault=0, max_retries=2), full_check=True)
    m.run([*BOOT, Fault(vcpu=0, gfn=0x10, pfn=COLD)])
    (livelock,) = [d for d in m.diagnostics if d.code == "LIVELOCK"]
    assert "explorer's diagnostic" in livelock.message and "no limit" in livelock.message
    m = Machine(Settings(), full_check=True)
    m.run([*BOOT, Inject(what="pamt_add_fail"), Fault(vcpu=0, gfn=0x10, pfn=COLD)])
    (warn,) = [d for d in m.diagnostics if d.code == "WARN_PAMT_ADD"]
    assert "WARN_ON_ONCE in tdx_pamt_get" in warn.message


@pytest.mark.parametrize("allocator", ["lowest", "random"])
def test_a_fault_past_the_prechecks_when_the_zap_begins_goes_stale_under_mmu_lock(
    allocator: str,
) -> None:
    """vCPU 0 refaults gfn 0x10 while the VM thread zaps it, pinned so that the fault samples
    ``mmu_seq`` and passes ``kvm_mmu_faultin_pfn``'s lockless checks just after the zap took
    ``mmu_lock`` but before ``kvm_mmu_invalidate_begin``: it spins on ``mmu_lock``, and once it
    holds it ``is_page_fault_stale`` sees the invalidation of its gfn (the last check), so it
    retries and maps a page guest_memfd allocates afresh, never the freed one (found by
    Hypothesis when there was no check at all: the engine mapped the freed page)."""
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10, pfn=COLD)], allocator=allocator)
    order = ("vcpu0", "vcpu0", "td0", "vcpu0")  # fault.begin, top-up, write_lock, the spin
    m.run([Schedule(order=order, t=1), Zap(td=0, gfn=0x10, t=1), Fault(vcpu=0, gfn=0x10, t=1)])
    assert m.stopped is None
    vcpu0 = labels(m, "vcpu0")
    tail = vcpu0[vcpu0.index("mmu_lock.read_spin") :]
    stale = tail.index("fault.stale")
    assert tail[stale - 1 : stale + 3] == [
        "mmu_lock.read",
        "fault.stale",
        "mmu_lock.read_unlock",
        "fault.retry",
    ]
    (step,) = [s for s in m.steps if s.label == "fault.stale"]
    assert "in progress" in step.narration
    assert "faultin.alloc" in tail and tail[-2:] == ["mmu_lock.read_unlock", "fault.done"]
    td = m.tds[0]
    assert td.leaves[0x10] == td.gmem[0x10] != COLD
    assert COLD not in [pfn for _, pfn in td.leaves.items()]  # the freed page is not mapped
    m.run([Fault(vcpu=1, gfn=0x11)])  # the next page guest_memfd gives is another one
    assert td.leaves[0x11] != td.leaves[0x10]
    assert not [d for d in m.diagnostics if d.kind == "violation"]


def test_a_zap_of_another_gfn_makes_a_fault_that_sampled_before_its_end_retry() -> None:
    """``mmu_invalidate_seq`` is the VM's, not the gfn's: a fault on gfn 0x10 that samples it
    while a zap of gfn 0x20 is in its window (not its gfn: the lockless checks pass) and only
    gets ``mmu_lock`` after ``kvm_mmu_invalidate_end`` finds the sequence moved, retries once,
    then maps."""
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10), Fault(vcpu=0, gfn=0x20)])
    # the zap up to the write_lock of its end (lock, begin, remove, put, unlock, truncate,
    # lock), then the fault: fault.begin, top-up, the spin on mmu_lock
    order = ("td0",) * 7 + ("vcpu0",) * 3
    m.run([Schedule(order=order, t=1), Zap(td=0, gfn=0x20, t=1), Fault(vcpu=0, gfn=0x10, t=1)])
    assert m.stopped is None
    vcpu0 = labels(m, "vcpu0")
    assert "fault.stale" in vcpu0 and vcpu0[-1] == "fault.done"
    assert "faultin.retry_early" not in vcpu0  # not its gfn: the lockless checks pass
    (step,) = [s for s in m.steps if s.label == "fault.stale"]
    assert "mmu_invalidate_seq moved" in step.narration
    assert 0x10 in m.tds[0].leaves and 0x20 not in m.tds[0].leaves


def test_between_batches_only_the_tds_and_vcpus_a_batch_ran_on_are_recounted() -> None:
    """The owner counts kept between batches are recounted for the TDs and vCPUs the batch's
    events name (a trace with a thousand TDs, or vCPUs coming and going, paid a pass over all of
    them per batch); in the full check mode a change to one the batch did not run on is caught
    (``ENGINE_QUIESCENT_ROWS``), so this bookkeeping cannot go stale unnoticed."""
    m = run([*BOOT, Fault(vcpu=0, gfn=0x10), Fault(vcpu=1, gfn=0x20)])
    assert m.batch_owners() == ({0}, {1})  # the last batch: vCPU 1's fault, and its TD
    m.run([Fault(vcpu=0, gfn=0x11)])
    assert not [d for d in m.diagnostics if d.kind == "violation"]
    m.vcpus[1].control.append(m.vcpus[1].control[0])  # a stray change to a vCPU not run on
    m.run([Fault(vcpu=0, gfn=0x12)])
    assert "ENGINE_QUIESCENT_ROWS" in {d.code for d in m.diagnostics}


def test_a_delta_holds_the_tds_and_vcpus_its_batches_ran_on() -> None:
    """Checkpoint deltas carry only what changed: one TD and one vCPU after a fault, every vCPU
    of a TD after its teardown; applied in order they rebuild the machine (tests/test_bulk.py
    compares every step of random traces)."""
    m = run([*BOOT, TdCreate(td=1), VcpuCreate(td=1, vcpu=2), Fault(vcpu=2, gfn=0x10)])
    m.delta()
    m.run([Fault(vcpu=1, gfn=0x10)])
    d = m.delta()
    assert set(d.tds) == {0} and set(d.vcpus) == {1}
    m.run([TdDestroy(td=0)])
    d = m.delta()
    assert set(d.tds) == {0} and set(d.vcpus) == {0, 1}
