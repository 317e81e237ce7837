"""An imported capture's pins travel in the trace: the trace ``import -o`` writes (and the app
loads for an uploaded capture, app_pages/ui/loader.py) replays the pages ``conform`` replays, so
the app's steps are conform's steps and a divergence's step is the step the app shows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from explorer.conformance.conform import conform
from explorer.conformance.importer import import_capture
from explorer.ingest.capture import parse_capture
from explorer.ingest.parse import parse_trace
from explorer.ingest.write import dump_trace
from explorer.model.events import Fault, TdCreate, VcpuCreate, pinned_pfns
from explorer.model.machine import Machine
from explorer.model.settings import Settings
from explorer.replay.timeline import replay

CAPTURES = sorted(
    (Path(__file__).resolve().parent.parent / "sample_traces" / "captures").glob("*.txt")
)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_the_written_trace_replays_conforms_steps(path: Path) -> None:
    cap = parse_capture(path.read_bytes(), path.name)
    imp = import_capture(cap)
    # what the loader does with an uploaded capture: write the imported trace, parse it back
    text = dump_trace(imp.events, title="t", settings=imp.settings.to_dict()).encode()
    trace = parse_trace(text, path.stem + ".imported.jsonl")
    assert [replace(e, line=0) for e in trace.events] == list(imp.events)
    settings = Settings(**trace.settings)
    # conform's replay: every pinned page reserved first, steps recorded
    m = Machine(imp.settings, record=True, check=True)
    m.mem.pin(pinned_pfns(imp.events))
    m.run(imp.events)
    want = [(s.event, s.cpu, s.label, s.narration) for s in m.steps]
    tl = replay(trace.events, settings)
    assert tl.nr_steps == len(want)
    got = [tl.step(i) for i in range(tl.nr_steps)]
    assert [(s.event, s.cpu, s.label, s.narration) for s in got] == want
    for d in conform(cap, imported=imp).divergences:  # a divergence's link lands on its step
        if 0 <= d.step < tl.nr_steps:
            assert tl.step(d.step).label == m.steps[d.step].label


def test_the_conforming_sample_pins_its_tables_and_control_pages() -> None:
    """The written trace names the kernel's S-EPT table and control pages (not only leaves)."""
    path = next(p for p in CAPTURES if p.stem == "conforming")
    imp = import_capture(parse_capture(path.read_bytes(), path.name))
    trace = parse_trace(dump_trace(imp.events).encode(), "conforming.imported.jsonl")
    assert any(isinstance(e, Fault) and e.tables for e in trace.events)
    assert any(isinstance(e, TdCreate) and e.control for e in trace.events)
    assert any(isinstance(e, VcpuCreate) and e.control for e in trace.events)
