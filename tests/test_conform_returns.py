"""A call whose return record never came is a divergence at its entry (issue 25: every record
accounted for), a get's and a put's alike: at the end of the capture, or when the thread's next
call of the same function began first (bpftrace lost the record: a thread does not nest
``tdx_pamt_get`` or ``tdx_pamt_put``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer.conformance.conform import conform
from explorer.ingest.capture import parse_capture

SAMPLE = Path(__file__).resolve().parent.parent / "sample_traces" / "captures" / "conforming.txt"


def _conform_without(probe: str, nth: int) -> tuple[int, list[tuple[int, str, object]]]:
    """Conform the sample with the ``nth`` record of ``probe`` cut out: the line of that call's
    entry (the last entry of its function on that thread before it) and the divergences."""
    lines = SAMPLE.read_text().split("\n")
    at = [i for i, t in enumerate(lines) if f" {probe} " in t][nth]
    tid = lines[at].split(" ")[2]
    entry = probe.replace(".return", ".entry")
    entry_line = max(
        i + 1 for i in range(at) if f" {entry} " in lines[i] and lines[i].split(" ")[2] == tid
    )
    cut = "\n".join(lines[:at] + lines[at + 1 :])
    c = conform(parse_capture(cut.encode(), "cut.txt"))
    return entry_line, [(d.line, d.kind, d.predicted) for d in c.divergences]


@pytest.mark.parametrize("nth", [0, -1])
def test_a_put_whose_return_was_lost_is_reported_at_its_entry(nth: int) -> None:
    line, divs = _conform_without("tdx_pamt_put.return", nth)
    assert (line, "return.missing", "the put's return") in divs


@pytest.mark.parametrize("nth", [0, -1])
def test_a_get_whose_return_was_lost_is_reported_at_its_entry(nth: int) -> None:
    line, divs = _conform_without("tdx_pamt_get.return", nth)
    assert any(d[:2] == (line, "return.missing") for d in divs), divs


def test_the_sample_itself_conforms() -> None:
    c = conform(parse_capture(SAMPLE.read_bytes(), SAMPLE.name))
    assert c.ok and not c.divergences
