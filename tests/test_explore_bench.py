"""The exploration benchmark's rows (the figures themselves are printed, never asserted)."""

from explorer.interleavings.bench import bench_explore


def test_bench_explore_reports_each_search() -> None:
    # (table_race_3vcpu takes several seconds: 0.3 s is its budget here)
    rows = bench_explore([("lost_race", "v6"), ("table_race_3vcpu", "v6")], max_seconds=0.3)
    assert [r["sample"] for r in rows] == ["lost_race", "table_race_3vcpu"]
    lost, cold = rows
    assert lost["complete"] and lost["outcomes"] == 3 and lost["findings"] == []
    assert lost["states"] > 0 and lost["states_per_s"] > 0 and lost["seconds"] > 0
    # a search past its budget is a row all the same, marked incomplete
    assert not cold["complete"] and cold["states"] > 0 and cold["outcomes"] == 0
