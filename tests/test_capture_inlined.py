"""Captures of a kernel build that inlined the control-page helpers' gets and puts
(explorer/ingest/inlined.py, docs/capture.md "Inlined control-page gets and puts")."""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer.cli.main import main
from explorer.conformance.conform import conform
from explorer.conformance.importer import import_capture
from explorer.ingest.capture import parse_capture
from explorer.model.errors import TraceError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces" / "captures"
HELPERS = ("tdx_alloc_control_page", "tdx_free_control_page")


def _inlined(text: str, *, keep_every: int = 0) -> str:
    """``text`` without the gets and puts inside the helpers' windows, as a build that inlined
    them prints it (``keep_every``: keep the callee in every n-th window, a lost-record mix)."""
    out: list[str] = []
    inside: dict[str, int] = {}
    windows = 0
    for line in text.splitlines(keepends=True):
        f = line.split()
        if line.startswith("#") or len(f) < 5:
            out.append(line)
            continue
        tid, probe = f[2], f[4]
        func, _, side = probe.rpartition(".")
        if func in HELPERS:
            if side == "entry":
                windows += 1
                inside[tid] = windows
            else:
                inside.pop(tid, None)
        elif (
            tid in inside
            and func in ("tdx_pamt_get", "tdx_pamt_put")
            and (not keep_every or inside[tid] % keep_every)
        ):
            continue
        out.append(line)
    return "".join(out)


@pytest.mark.parametrize("name", ["conforming", "zap_refault", "teardown_other_thread"])
def test_derived_gets_and_puts_give_the_same_trace_and_verdict(name: str) -> None:
    """Without the helpers' gets and puts, the capture imports to the same trace (the pinned
    control pages included) and conforms as the whole one does; before, the conforming sample
    gave 164 divergences."""
    text = (SAMPLES / f"{name}.txt").read_text()
    whole = parse_capture(text.encode(), "whole.txt")
    for keep in (0, 3):
        cut = parse_capture(_inlined(text, keep_every=keep).encode(), "cut.txt")
        assert cut.derived, "nothing derived"
        assert import_capture(cut).events == import_capture(whole).events
        a, b = conform(whole), conform(cut)
        assert (b.ok, b.observations, len(b.divergences)) == (
            a.ok,
            a.observations,
            len(a.divergences),
        )


def test_a_whole_capture_derives_nothing() -> None:
    for path in SAMPLES.glob("*.txt"):
        cap = parse_capture(path.read_bytes(), path.name)
        assert cap.derived == (), path.name


def test_derived_records_point_at_the_helpers_line() -> None:
    text = _inlined((SAMPLES / "conforming.txt").read_text())
    cap = parse_capture(text.encode(), "cut.txt")
    lines = text.splitlines()
    derived = [r for r in cap.records if "(derived from line" in r.text]
    assert derived
    for r in derived:
        helper = lines[r.line - 1]
        assert any(h in helper for h in HELPERS)
        if r.probe == "tdx_pamt_get.entry":  # the page the allocation returned, as a pfn
            page = int(helper.split("page=")[1].split()[0], 16)
            assert r.fields["pfn"] == (page - 0xFFFFEA0000000000) // 64


def test_without_a_base_nothing_is_derived_and_the_note_says_why() -> None:
    text = _inlined((SAMPLES / "conforming.txt").read_text())
    text = "".join(ln for ln in text.splitlines(keepends=True) if "vmemmap_base" not in ln)
    cap = parse_capture(text.encode(), "cut.txt")
    assert len(cap.derived) == 1 and "no vmemmap_base in the header" in cap.derived[0]
    assert not any("(derived from line" in r.text for r in cap.records)


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("# page_size=7", "page_size=7: not a sizeof(struct page)"),
        ("# page_size=sixty", "page_size=sixty: not a sizeof(struct page)"),
        ("# vmemmap_base=0x1000", "vmemmap_base=0x1000: not a kernel vmemmap base"),
        ("# vmemmap_base=0xffffea0000000040", "not a kernel vmemmap base"),
        ("# vmemmap_base=zz", "vmemmap_base=zz: not a kernel vmemmap base"),
    ],
)
def test_header_values_out_of_range_are_refused_at_their_line(line: str, said: str) -> None:
    text = (SAMPLES / "conforming.txt").read_text()
    key = line.split("=")[0]
    lines = [line if ln.startswith(key + "=") else ln for ln in text.splitlines()]
    at = next(i for i, ln in enumerate(lines, 1) if ln == line)
    with pytest.raises(TraceError) as exc:
        parse_capture(("\n".join(lines) + "\n").encode(), "bad.txt")
    problem = exc.value.problems[0]
    assert (problem.line, problem.col) == (at, 1) and said in problem.reason


def test_a_page_outside_the_vmemmap_is_refused_at_its_field() -> None:
    text = _inlined((SAMPLES / "conforming.txt").read_text())
    lines = text.splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if "tdx_alloc_control_page.return" in ln)
    lines[at] = lines[at].replace("page=0xffffea", "page=0xffffe9")
    with pytest.raises(TraceError) as exc:
        parse_capture("".join(lines).encode(), "bad.txt")
    p = exc.value.problems[0]
    assert p.line == at + 1 and "is not a struct page * under vmemmap_base" in p.reason
    assert lines[at][p.col - 1 :].startswith("page=")


def test_the_commands_print_the_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.txt"
    cut.write_text(_inlined((SAMPLES / "conforming.txt").read_text()))
    assert main(["conform", str(cut)]) == 0
    err = capsys.readouterr().err
    assert "tdx_pamt_get call(s) derived from tdx_alloc_control_page's page=" in err
    assert main(["import", str(cut), "-o", str(tmp_path / "t.jsonl")]) == 0
    assert (
        "tdx_pamt_put call(s) derived from tdx_free_control_page's page=" in capsys.readouterr().err
    )
