"""The capture path's shortcuts give what the plain path gives: the parser's fast line (and its
memo of each thread's head) against the checked parse, ``conform`` on an already imported trace
against ``conform`` alone, and the lazily built matches against a list."""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer.conformance.conform import Matches, conform
from explorer.conformance.importer import import_capture
from explorer.conformance.synth import large_capture
from explorer.ingest.capture import _fast_line, _parse_line, _Problems, parse_capture

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces" / "captures"


def _record_lines() -> list[str]:
    texts = [large_capture(3000, seed=3)] + [p.read_text() for p in sorted(SAMPLES.glob("*.txt"))]
    return [t for text in texts for t in text.split("\n") if t[:1].isdigit()]


def test_the_fast_line_reads_what_the_checked_parse_reads() -> None:
    who: dict = {}  # type: ignore[type-arg]  # one memo across all lines, as in a parse
    lines = _record_lines()
    fast = 0
    for n, text in enumerate(lines, 1):
        rec = _fast_line(text, n, who)
        if rec is None:
            continue
        fast += 1
        out = _Problems("t")
        assert rec == _parse_line(text, n, out) and not out.items, text
        assert _fast_line(text, n, {}) == rec  # the memo changes nothing
    assert fast > len(lines) * 0.9  # the script's own lines take the fast path


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
def test_the_fast_line_leaves_every_other_line_to_the_checked_parse(text: str) -> None:
    who: dict = {}  # type: ignore[type-arg]
    assert _fast_line("1 0 7 7 tdx_pamt_put.entry pfn=0x100 kvm=0x1", 1, who) is not None
    assert _fast_line(text, 2, who) is None  # with the thread's head already in the memo


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
