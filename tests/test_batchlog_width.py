"""A bulk replay's per-event and per-batch index arrays are 4 bytes wide (issue 28: bytes held
per event) and widen to 8 bytes the first time a step number or offset would not fit, with the
same values: a huge trace stays exact."""

from __future__ import annotations

from typing import Any

import pytest

from explorer.bench import cell_input
from explorer.ingest import parse_trace
from explorer.model import bulk
from explorer.model.bulk import BatchLog, run_batches
from explorer.model.events import Event
from explorer.model.machine import Machine, batches
from explorer.model.settings import Settings
from explorer.replay import timeline
from explorer.replay.timeline import replay


def _trace(shape: str, faults: int) -> tuple[list[Event], Settings]:
    data, name, header = cell_input(shape, faults, "jsonl")
    trace = parse_trace(data, name)
    return list(trace.events), Settings().with_overrides({**header, **trace.settings})


def _arrays(tl: Any) -> dict[str, list[int]]:
    return {
        name: list(getattr(tl, name))
        for name in ("batch_event", "batch_step", "region_offsets", "region_values", "event_step")
    }


def test_a_normal_replay_keeps_four_byte_indexes() -> None:
    events, s = _trace("churn", 1500)
    tl = replay(events, s)
    assert tl.nr_steps > 1000
    for a in (tl.batch_step, tl.region_offsets, tl.event_step):
        assert a.itemsize == 4


@pytest.mark.parametrize("limit", [40, 5000])
def test_a_lowered_limit_widens_mid_replay_with_the_same_timeline(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Widened at the first value past ``limit`` (early, or mid-replay after several
    checkpoints): the timeline takes the new arrays and every index, seek and step is as in a
    replay that never widened."""
    events, s = _trace("churn", 1500)
    narrow = replay(events, s)
    monkeypatch.setattr(timeline, "BatchLog", lambda n: BatchLog(n, limit))
    wide = replay(events, s)
    assert narrow.nr_steps > limit
    for a in (wide.batch_step, wide.region_offsets, wide.event_step):
        assert a.itemsize == 8
    assert _arrays(wide) == _arrays(narrow)
    for i in range(0, narrow.nr_steps, max(1, narrow.nr_steps // 7)):
        assert wide.step(i) == narrow.step(i)
        assert wide.state_at(i) == narrow.state_at(i)


def test_step_numbers_past_two_to_the_31_are_stored_exactly() -> None:
    """A machine already 2**32 steps in (a synthetic huge trace): every first step stored is
    its step number, which a 4-byte array could not hold."""
    events, s = _trace("runs", 300)
    spans = batches(events)
    base = Machine(s, record=False, check=True)
    ref = BatchLog(len(events))
    run_batches(base, events, spans, 0, len(spans), ref, len(events))
    big = Machine(s, record=False, check=True)
    big.nr_steps = 1 << 32
    log = BatchLog(len(events))
    run_batches(big, events, spans, 0, len(spans), log, len(events))
    assert log.wide and bulk.INDEX_LIMIT < (1 << 32)
    assert list(log.event_step) == [st + (1 << 32) if st >= 0 else -1 for st in ref.event_step]
    assert list(log.batch_step) == [st + (1 << 32) for st in ref.batch_step]
    assert list(log.region_offsets) == list(ref.region_offsets)
