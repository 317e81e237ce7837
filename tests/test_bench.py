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
