"""The benchmark's workload shapes (explorer.ingest.shapes) are valid traces of the shape they
claim, written in every style the parser accepts, and each replays clean."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from explorer.bench import INPUTS, MATRIX, bench_cell, cell_input, matrix_line, matrix_summary
from explorer.ingest import parse_trace
from explorer.ingest.shapes import SHAPES, write
from explorer.model.settings import Settings
from explorer.replay.timeline import replay


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shape_replays_clean_and_is_deterministic(shape: str) -> None:
    data = write(shape, 3000, seed=5)
    assert data == write(shape, 3000, seed=5)
    assert data != write(shape, 3000, seed=6)
    trace = parse_trace(data, f"{shape}.jsonl")
    ops = Counter(e.op for e in trace.events)
    assert ops["fault"] == 3000
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    assert tl.stopped is None
    assert [d for d in tl.diagnostics if d.kind != "warning"] == []


def test_shapes_differ_in_the_way_they_claim() -> None:
    def events(shape: str, n: int = 2000) -> list:
        return parse_trace(write(shape, n), "x").events

    assert all(e.t is None for e in events("runs"))
    conc = [e for e in events("concurrent") if e.op == "fault"]
    per_t = Counter(e.t for e in conc)
    assert set(list(per_t.values())[:-1]) == {8}  # every vCPU at each t
    burst = Counter(e.t for e in events("bursty") if e.op == "fault")
    assert min(burst.values()) < 4 and max(burst.values()) > 8
    churn = Counter(e.op for e in events("churn"))
    assert churn["zap"] > 300 and churn["vcpu_free"] == 1 and churn["td_destroy"] == 2
    life = Counter(e.op for e in events("lifecycle", 6000))
    assert life["td_create"] >= 6 and life["td_destroy"] >= 2
    fleet = events("fleet")
    assert Counter(e.op for e in fleet)["td_create"] == 128
    fleet_faults = [e for e in fleet if e.op == "fault"]
    assert len({e.vcpu for e in fleet_faults}) > 200  # most of the 256 vCPUs fault
    alone = sum(1 for e in fleet_faults if e.t is None)
    assert 0.1 < alone / len(fleet_faults) < 0.3  # half the batches alone, the others 2 to 8


def test_lines_come_in_every_style() -> None:
    lines = write("bursty", 3000).decode().splitlines()[1:]
    orders = Counter(tuple(json.loads(line)) for line in lines if '"fault"' in line)
    assert len(orders) >= 6  # canonical, reversed, shuffled key orders
    assert any('"gfn":"0x' in line or '"gfn": "0x' in line for line in lines)
    assert any('"gfn":1' in line or '"gfn": 1' in line for line in lines)
    assert any(", " in line for line in lines) and any('","' in line for line in lines)


def test_bench_cell_reports_each_figure() -> None:
    shape, overrides = MATRIX[1]
    r = bench_cell(shape, overrides, 400, samples=5, budget_s=5.0)
    assert r["faults"] == 400 and r["steps"] > r["faults"] and r["state_at_samples"] == 5
    for key in ("faults_per_s", "parse_replay_ratio", "parse_replay_vs_json", "bytes_per_event"):
        assert r[key] > 0
    assert r["parse_replay_ratio"] > 1
    assert r["cell"].startswith(shape) and "allocator=random" in r["cell"]
    assert "f/s" in matrix_line(r)
    assert "faults/s" in matrix_summary([r]) and "1 cells" not in matrix_summary([r])


def test_every_input_class_gives_the_same_events() -> None:
    """A cell's trace as JSON Lines, gzip or CSV parses to equal events (CSV's column row takes
    the header's line, so even the line numbers agree); CSV carries the header's settings apart."""
    events = {}
    for kind in INPUTS:
        data, name, header = cell_input("churn", 1500, kind)
        trace = parse_trace(data, name)
        events[kind] = trace.events
        assert {**header, **trace.settings} == {"host_memory_mib": 65536}, kind
    assert events["csv"] == events["jsonl"] == events["gzip"]
    assert {c.get("input", "jsonl") for _, c in MATRIX} == set(INPUTS)


@pytest.mark.parametrize("kind", ["csv", "gzip"])
def test_bench_cell_of_each_input_class(kind: str) -> None:
    r = bench_cell("fleet", {"input": kind}, 300, samples=3, budget_s=5.0)
    assert r["input"] == kind and r["cell"] == f"fleet input={kind}"
    assert r["faults"] == 300 and r["parse_vs_floor"] > 0 and r["stopped"] is None
    assert "parse/floor" in matrix_line(r)
