"""The capture path's shortcuts give what the plain path gives: the parser's fast line (and its
memo of each thread's head) against the checked parse, ``conform`` on an already imported trace
against ``conform`` alone, and the lazily built matches against a list."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from explorer.conformance.conform import Matches, conform
from explorer.conformance.importer import import_capture
from explorer.conformance.synth import large_capture
from explorer.ingest import capture
from explorer.ingest.capture import _parse_line, _Problems, parse_capture
from explorer.model.errors import TraceError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces" / "captures"


def _captures() -> list[str]:
    return [large_capture(3000, seed=3)] + [p.read_text() for p in sorted(SAMPLES.glob("*.txt"))]


class _Checked:
    """``_parse_line`` counting the lines it is given: what the fast path left to it."""

    def __init__(self) -> None:
        self.lines: list[int] = []

    def __call__(self, text: str, n: int, out: _Problems) -> object:
        self.lines.append(n)
        return _parse_line(text, n, out)


def test_the_fast_path_reads_what_the_checked_parse_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = _Checked()
    monkeypatch.setattr(capture, "_parse_line", checked)
    records = 0
    for text in _captures():
        cap = parse_capture(text.encode(), "t")
        assert len(cap.records) == sum(t[:1].isdigit() for t in text.split("\n"))
        for rec in cap.records:  # each record as the checked parse reads its line alone
            out = _Problems("t")
            assert rec == _parse_line(rec.text, rec.line, out) and not out.items, rec.text
        records += len(cap.records)
    assert records > 3000
    assert len(checked.lines) < records * 0.1  # the script's own lines take the fast path


@pytest.mark.parametrize(
    "text",
    [
        "1 0 7 7 tdx_pamt_put.entry pfn=0x100 kvm=0x1 why=zap",  # a key more
        "1 0 7 7 tdx_pamt_put.entry kvm=0x1 pfn=0x100",  # keys in another order
        "01 0 7 7 tdx_pamt_put.entry pfn=0x100 kvm=0x1",  # a leading zero
        "1 0 7 7 tdx_pamt_put.entry pfn=0xfffffffffffffff kvm=0x1",  # pfn out of range
        "1 0 7 7 tdx_pamt_put.entry pfn=+1 kvm=0x1",  # what int() takes, the grammar does not
        "1 0 7 7 tdx_pamt_put.entry pfn=1_0 kvm=0x1",
        "1 0 7 7 no_such_probe pfn=1 kvm=0x1",
    ],
)
def test_the_fast_path_leaves_every_other_line_to_the_checked_parse(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = _Checked()
    monkeypatch.setattr(capture, "_parse_line", checked)
    good = "1 0 7 7 tdx_pamt_put.entry pfn=0x100 kvm=0x1"
    with contextlib.suppress(TraceError):  # (most of them are refused: not the point here)
        parse_capture(f"{good}\n{good}\n{text}\n".encode(), "t")
    assert checked.lines == [3]  # with the thread's head already in the memo


def test_a_timestamp_going_back_names_the_last_record_in_order_on_its_cpu() -> None:
    text = (
        "10 0 7 7 tdx_pamt_put.entry pfn=0x100 kvm=0x1\n"
        "5 1 8 7 kvm_arch_pre_destroy_vm kvm=0x1\n"
        "3 0 7 7 tdx_pamt_put.return ret=0 kvm=0x1\n"  # back on cpu 0: after line 1
        "10 0 7 7 tdx_pamt_put.entry pfn=0x100 kvm=0x1\n"
        "4 0 7 7 tdx_pamt_put.return ret=0 kvm=0x1\n"  # still line 4's 10, not line 3's 3
    )
    with pytest.raises(Exception) as exc:
        parse_capture(text.encode(), "t")
    reasons = [(p.line, p.reason) for p in exc.value.problems]  # type: ignore[attr-defined]
    assert reasons == [
        (3, "timestamp goes back on cpu 0 (line 1 has 10)"),
        (5, "timestamp goes back on cpu 0 (line 4 has 10)"),
    ]


@pytest.mark.parametrize("name", ["conforming.txt", "divergent.txt", "divergent_leak.txt"])
def test_conform_on_the_imported_trace_is_conform_alone(name: str) -> None:
    cap = parse_capture((SAMPLES / name).read_bytes(), name)
    alone = conform(cap)
    reused = conform(cap, imported=import_capture(cap))
    assert reused == alone and reused.to_json() == alone.to_json()
    assert list(reused.matches) == list(alone.matches) and len(alone.matches) > 0


def test_conform_refuses_the_import_of_another_capture() -> None:
    a = parse_capture((SAMPLES / "conforming.txt").read_bytes(), "a")
    b = parse_capture((SAMPLES / "zap_refault.txt").read_bytes(), "b")
    with pytest.raises(ValueError, match="not import_capture"):
        conform(a, imported=import_capture(b))


def test_matches_are_built_on_first_use_in_step_then_line_order() -> None:
    cap = parse_capture((SAMPLES / "conforming.txt").read_bytes(), "c")
    m = conform(cap).matches
    assert isinstance(m, Matches) and m._items is None  # nothing built yet
    n = len(m)
    assert m._items is None  # the length does not build them
    items = list(m)
    assert len(items) == n and m[0] == items[0] and m[-2:] == items[-2:] and m == items
    assert [(x.step, x.line) for x in items] == sorted((x.step, x.line) for x in items)
    assert {x.kind for x in items} >= {"get", "fault", "map.leaf"}


def test_matches_take_the_step_of_the_last_event_begun_and_sort_by_step_then_line() -> None:
    # records at positions 0..3; events begin at positions 1 (step 4) and 3 (step 1)
    observed = [(5, "a", 1, 0), (7, "b", 2, 1), (3, "c", 3, 2), (9, "d", 4, 3)]
    m = Matches(observed, starts=[1, 3], steps=[4, 1])
    assert [tuple(x) for x in m] == [
        (5, "a", 1, -1),  # before any event: no step
        (9, "d", 4, 1),
        (3, "c", 3, 4),
        (7, "b", 2, 4),
    ]
