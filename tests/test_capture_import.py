"""Kernel captures imported as traces, and the model checked against them (docs/capture.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer.cli.main import main
from explorer.conformance.conform import conform
from explorer.conformance.importer import import_capture
from explorer.ingest.capture import parse_capture
from explorer.model.events import Fault, Schedule, TdCreate, TdDestroy, Zap
from explorer.replay.timeline import replay

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces" / "captures"


def _cap(name: str, text: str | None = None):  # type: ignore[no-untyped-def]
    data = text.encode() if text is not None else (SAMPLES / name).read_bytes()
    return parse_capture(data, name)


@pytest.mark.parametrize("name", ["conforming.txt", "divergent.txt"])
def test_import_samples(name: str) -> None:
    imp = import_capture(_cap(name))
    ev = imp.events
    assert isinstance(ev[0], TdCreate) and isinstance(ev[-1], TdDestroy)
    faults = [e for e in ev if isinstance(e, Fault)]
    assert [hex(f.gfn) for f in faults] == ["0x10", "0x11", "0x1000", "0x1002", "0x1001"]
    assert {f.pfn for f in faults if f.gfn >= 0x1000} == {0x8000, 0xA000, 0xA001}
    assert [e.gfn for e in ev if isinstance(e, Zap)] == [0x1000]
    assert sum(isinstance(e, Schedule) for e in ev) == 2
    assert imp.settings.mode == "v6" and imp.settings.host_memory_mib % 2 == 0
    assert imp.settings.host_memory_mib * 256 > 0x30015
    assert len(imp.lines) == len(ev) and imp.unused == {}
    tl = replay(ev, imp.settings)
    assert tl.stopped is None


def test_conforming_conforms() -> None:
    c = conform(_cap("conforming.txt"))
    assert c.ok and c.divergences == [] and c.observations > 50


def test_divergent_at_its_changed_lines() -> None:
    c = conform(_cap("divergent.txt"))
    assert not c.ok
    assert {d.line for d in c.divergences} == {130, 183}
    after = [d for d in c.divergences if d.kind == "get.cache_after"]
    assert [(d.line, d.observed, d.predicted) for d in after] == [(130, 10, 8)]


def test_mutated_ret_is_flagged_at_its_line() -> None:
    lines = (SAMPLES / "conforming.txt").read_text().splitlines(keepends=True)
    n = next(i for i, ln in enumerate(lines) if "tdx_pamt_get.return ret=0 cache_count=10" in ln)
    lines[n] = lines[n].replace("ret=0", "ret=-12")
    c = conform(_cap("mut.txt", "".join(lines)))
    assert not c.ok
    assert [(d.line, d.kind, d.observed, d.predicted) for d in c.divergences] == [
        (n + 1, "get.ret", -12, 0)
    ]


def test_cli_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = str(SAMPLES / "conforming.txt"), str(SAMPLES / "divergent.txt")
    assert main(["conform", good]) == 0
    assert main(["conform", bad]) == 1
    out = capsys.readouterr().out
    assert "capture line 130: get.cache_after: kernel 10, model 8 (step " in out
    assert main(["conform", bad, "--json"]) == 1
    obj = json.loads(capsys.readouterr().out)
    assert set(obj) >= {"ok", "observations", "divergences"} and obj["ok"] is False
    assert set(obj["divergences"][0]) == {"line", "kind", "observed", "predicted", "step"}
    broken = tmp_path / "broken.txt"
    broken.write_text("1 0 5000 tdx_pamt_get.return ret=0 cache_count=-1\n")
    assert main(["conform", str(broken)]) == 2
    assert main(["import", str(broken)]) == 2
    assert "broken.txt:1:" in capsys.readouterr().err
    trace = tmp_path / "t.jsonl"
    assert main(["import", good, "-o", str(trace)]) == 0
    assert main(["check", str(trace)]) == 0
