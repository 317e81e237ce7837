"""The engine's lean recording (``Machine(record="lean")``, what ``conform`` replays with) hands
over, for every step, exactly the fields the full recording's :class:`Step` holds: the index,
event, CPU, function, label and effects of each step of each sample capture's import (as
``conform`` replays it: its pages pinned) and of each sample trace, in the same order, and
leaves the machine in the same state with the same diagnostics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from explorer.cli.main import resolve_settings
from explorer.conformance.importer import import_capture
from explorer.conformance.synth import large_capture
from explorer.ingest import parse_trace
from explorer.ingest.capture import parse_capture
from explorer.model.events import Event, pinned_pfns
from explorer.model.machine import Machine
from explorer.model.records import Effect
from explorer.model.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = sorted((ROOT / "sample_traces" / "captures").glob("*.txt"))
TRACES = sorted((ROOT / "sample_traces").glob("*.jsonl"))

Fields = tuple[int, int, str, str, str, tuple[Effect, ...]]


def _both(settings: Settings, events: Sequence[Event], pins: list[int]) -> tuple[Any, ...]:
    """The steps' fields from a full and from a lean replay, and the two machines."""
    full = Machine(settings, record=True, check=True)
    full.mem.pin(pins)
    full.run(events)
    want: list[Fields] = [
        (s.index, s.event, s.cpu, s.function, s.label, s.effects) for s in full.steps
    ]
    lean = Machine(settings, record="lean", check=True)
    lean.mem.pin(pins)
    got: list[Fields] = []

    def keep(
        index: int, event: int, cpu: str, fn: str, label: str, effects: Sequence[Effect]
    ) -> None:
        got.append((index, event, cpu, fn, label, tuple(effects)))

    lean.on_lean_step = keep
    lean.run(events)
    return want, got, full, lean


def _check(settings: Settings, events: Sequence[Event], pins: list[int]) -> None:
    want, got, full, lean = _both(settings, events, pins)
    assert want, "the replay made no step: nothing compared"
    assert any(f[5] for f in want), "no step had an effect: effects not compared"
    assert len(got) == len(want)
    for w, g in zip(want, got, strict=True):
        assert g == w, f"step {w[0]}: lean {g} != full {w}"
    assert lean.steps == []  # nothing kept: a million steps stay small
    assert lean.diagnostics == full.diagnostics
    assert lean.stopped == full.stopped
    assert lean.canonical_state() == full.canonical_state()
    assert lean.counters == full.counters


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_lean_fields_equal_full_on_every_sample_capture(path: Path) -> None:
    imp = import_capture(parse_capture(path.read_bytes(), path.name))
    _check(imp.settings, imp.events, pinned_pfns(imp.events))


def test_lean_fields_equal_full_on_a_generated_capture() -> None:
    """Four TDs sharing regions, noise, retries, zaps and refaults, teardown on another thread:
    the benchmark's input, small."""
    text = large_capture(6000, seed=3)
    imp = import_capture(parse_capture(text.encode(), "synth.txt"))
    _check(imp.settings, imp.events, pinned_pfns(imp.events))


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.stem)
def test_lean_fields_equal_full_on_every_sample_trace(path: Path) -> None:
    """Races under every schedule, injected failures, spins and the diagnostics they raise."""
    trace = parse_trace(path.read_bytes(), path.name)
    _check(resolve_settings(trace, []), trace.events, [])


def test_a_lean_replay_without_a_receiver_runs_and_keeps_nothing() -> None:
    path = CAPTURES[0]
    imp = import_capture(parse_capture(path.read_bytes(), path.name))
    m = Machine(imp.settings, record="lean")
    m.mem.pin(pinned_pfns(imp.events))
    m.run(imp.events)
    assert m.steps == [] and m.nr_steps > 0 and m.stopped is None


def test_an_unknown_recording_mode_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="record='full'"):
        Machine(Settings(), record="full")
