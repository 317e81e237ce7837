"""``make bench --write``: the generated figures are replaced, the hand-written analysis kept."""

from __future__ import annotations

from pathlib import Path

from explorer.bench import HAND_WRITTEN, write_figures


def test_write_keeps_the_hand_written_part(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    write_figures(str(doc), "# Performance\n\n| old | table |\n")
    assert doc.read_text().endswith(HAND_WRITTEN)
    doc.write_text(doc.read_text() + "\n\nWhere the time goes: by hand.\n")
    write_figures(str(doc), "# Performance\n\n| new | table |\n")
    text = doc.read_text()
    assert "| new | table |" in text and "| old | table |" not in text
    assert text.endswith(HAND_WRITTEN + "\n\nWhere the time goes: by hand.\n")
    assert text.count(HAND_WRITTEN) == 1


def test_matrix_has_the_issue_28_classes() -> None:
    """CSV and gzip input, 1 TiB hosts, refault churn, many TDs, v6-locked with zaps."""
    from explorer.bench import MATRIX, TIB_MIB

    cells = [(shape, o) for shape, o in MATRIX]
    assert any(o.get("input") == "csv" for _, o in cells)
    assert any(o.get("input") == "gzip" for _, o in cells)
    assert any(o.get("host_memory_mib") == TIB_MIB for _, o in cells)
    assert any(shape == "refault" for shape, _ in cells)
    assert any(shape == "fleet" for shape, _ in cells)
    assert any(shape in ("churn", "refault") and o.get("mode") == "v6-locked" for shape, o in cells)


def test_refault_trace_empties_regions_and_fills_them_again() -> None:
    """The refault cell's trace is valid, replays without a diagnostic, and its regions go to 0
    mapped pages and back: every zapped gfn is faulted again (except at the cut-off)."""
    from explorer.bench import refault_trace
    from explorer.ingest import parse_trace
    from explorer.model.settings import Settings
    from explorer.replay.timeline import replay

    trace = parse_trace(refault_trace(3000, seed=3), "r.jsonl")
    faults = [e for e in trace.events if e.op == "fault"]
    zaps = [e for e in trace.events if e.op == "zap"]
    assert len(faults) == 3000
    assert len(zaps) >= 512
    by_gfn: dict[int, list[str]] = {}
    for e in trace.events:
        if e.op in ("fault", "zap"):
            by_gfn.setdefault(e.gfn, []).append(e.op)  # type: ignore[attr-defined]
    assert sum(ops == ["fault", "zap", "fault"] for ops in by_gfn.values()) >= 512
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    assert tl.stopped is None and not tl.diagnostics


def test_csv_parse_line_marks_the_target() -> None:
    from explorer.bench import csv_parse_line

    r = {
        "shape": "runs",
        "rows": 10,
        "floor": 0.01,
        "columnar": 0.014,
        "batches": 0.05,
        "events": 0.01,
    }
    assert "1.40x" in csv_parse_line(r) and " ok)" in csv_parse_line(r)
    r["columnar"] = 0.02
    assert "MISS" in csv_parse_line(r)
