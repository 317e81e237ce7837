"""Conform's operations: a model operation covers no record and shares one empty list
(``_NO_RECS``, one list less per operation for a million-record capture); that list must stay
empty, and every kernel operation must own its records, first the one it is reported at."""

from __future__ import annotations

from pathlib import Path

from explorer.conformance import conform as conform_mod
from explorer.conformance.importer import import_capture
from explorer.conformance.synth import large_capture
from explorer.ingest.capture import Capture, parse_capture

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces" / "captures"


def _captures() -> list[Capture]:
    caps = [parse_capture(large_capture(3000, seed=5).encode(), "synth.txt")]
    caps += [parse_capture(p.read_bytes(), p.name) for p in sorted(SAMPLES.glob("*.txt"))]
    return caps


def test_the_model_operations_shared_record_list_stays_empty() -> None:
    for cap in _captures():
        conform_mod.conform(cap)
        assert conform_mod._NO_RECS == [], cap.source


def test_each_kernel_operation_owns_its_records() -> None:
    for cap in _captures():
        lanes, _, compared = conform_mod.kernel_lanes(import_capture(cap))
        ops = [op for lane in lanes.values() for op in lane]
        assert ops, cap.source
        lists = {id(op.recs) for op in ops}
        assert len(lists) == len(ops), cap.source  # no two operations share a list
        assert all(op.recs and op.recs is not conform_mod._NO_RECS for op in ops), cap.source
        covered = sum(len(op.recs) for op in ops)
        assert covered == compared, cap.source  # every compared record in one operation
