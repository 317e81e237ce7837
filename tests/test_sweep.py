"""Sweeps and the design-review metrics: figures that tell the designs apart."""

import pytest

from explorer.metrics import run_metrics
from explorer.model.errors import SettingsError
from explorer.model.events import Fault, Inject, TdCreate, TdFinalize, VcpuCreate, Zap
from explorer.model.settings import Settings
from explorer.sweep import grid_points, parse_vary, run_sweep

BOOT = [TdCreate(td=0), VcpuCreate(td=0, vcpu=0), VcpuCreate(td=0, vcpu=1), TdFinalize(td=0)]
# Warm-up: link the upper S-EPT tables once, so the concurrent faults below never race on them
# (that race is real, and makes retries of its own: see test_racing_on_a_table_retries).
WARM = [*BOOT, Fault(vcpu=0, gfn=0x3F000), Fault(vcpu=1, gfn=0x3F001)]
# then two vCPUs touching many cold regions, concurrently
WORK = WARM + [
    Fault(vcpu=i % 2, gfn=0x200 * i, pfn=0x8000 + 0x200 * i, t=i // 2) for i in range(24)
]


def test_parse_vary_ranges_and_lists() -> None:
    grid = parse_vary(["dpamt_gets_per_fault=0..3", "mode=v6,v6-locked"])
    assert grid == {"dpamt_gets_per_fault": [0, 1, 2, 3], "mode": ["v6", "v6-locked"]}
    assert len(grid_points(Settings(), grid)) == 8


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("nope=1,2", "unknown setting"),
        ("mode=v7", "not one of the choices"),
        ("ept_levels", "expected key="),
        ("dpamt_gets_per_fault=5..1", "empty or too long"),
        ("dpamt_gets_per_fault=0..100000", "empty or too long"),
    ],
)
def test_parse_vary_refuses_bad_specs_with_the_reason(spec: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_vary([spec])
    assert reason in str(info.value)


def test_sweep_rows_come_back_in_grid_order_and_match_single_runs() -> None:
    # "spread": the new level-1 table of each fault is cold too, so a fault needs 2 gets
    base = Settings(allocator="spread", host_memory_mib=1024)
    points = grid_points(base, parse_vary(["dpamt_gets_per_fault=0,1,5"]))
    rows = run_sweep(WORK, points, workers=2)
    assert [r["setting.dpamt_gets_per_fault"] for r in rows] == [0, 1, 5]
    assert rows[2] == run_metrics(WORK, points[2]).row()  # same in a worker as in-process
    # 0 gets: every cold fault livelocks; 1 get: retries; 5 gets (the kernel default): none
    assert rows[0]["livelocks"] > 0
    assert rows[1]["retries"] > 0 and rows[1]["livelocks"] == 0
    assert rows[2]["retries"] == 0 and rows[2]["livelocks"] == 0


def test_racing_on_a_table_retries() -> None:
    # both vCPUs need the same level-3 and level-2 tables: one freezes the entry, the other retries
    race = [*BOOT, Fault(vcpu=0, gfn=0x0, t=0), Fault(vcpu=1, gfn=0x200, t=0)]
    assert run_metrics(race, Settings()).counters["fault_retries"] >= 1


def test_designs_show_their_costs() -> None:
    # "spread" scatters S-EPT pages over regions, where speculative DPAMT references cost pairs
    by_mode = {
        mode: run_metrics(WORK, Settings(mode=mode, allocator="spread", host_memory_mib=1024))
        for mode in ("v6", "kvm-style-cache", "v5-topup-install", "sleeping-under-lock", "mempool")
    }
    v6 = by_mode["v6"]
    assert v6.violations == 0 and v6.idle_peak <= 2 * 10  # two vCPUs, 10 pages each at most
    # KVM's rule fills to 40: more pages held idle
    assert by_mode["kvm-style-cache"].idle_peak > v6.idle_peak
    # install at top-up: speculative pairs and references for every cached S-EPT page
    assert by_mode["v5-topup-install"].pairs_peak > v6.pairs_peak
    assert v6.speculative_refs_peak == 0
    assert by_mode["v5-topup-install"].speculative_refs_peak >= 2 * 35  # 2 vCPUs x 40 cached
    # sleeping under the MMU lock: every allocation a violation (invariant 6)
    assert by_mode["sleeping-under-lock"].violations > 0
    assert by_mode["mempool"].counters["allocs_under_lock"] > 0


def test_atomic_under_lock_fails_where_the_cache_would_not() -> None:
    trace = [*WARM, Inject(what="alloc_fail", count=1), Fault(vcpu=0, gfn=0x10, pfn=0x9000)]
    atomic = run_metrics(trace, Settings(mode="atomic-under-lock"))
    cached = run_metrics(trace, Settings(mode="v6"))
    assert atomic.counters["fault_retries"] >= 1  # the atomic pair allocation failed under lock
    assert cached.counters["allocs_under_lock"] == 0


def test_metrics_series_cover_every_event() -> None:
    m = run_metrics([*WORK, Zap(td=0, gfn=0)], Settings())
    assert len(m.series["idle_pages"]) == len(WORK) + 1
    assert m.pairs_final == m.series["pairs"][-1]
