"""A state's two keys are assembled from the pickles of its parts (``_keys`` in
explorer/interleavings/search.py): they must be exactly the digests of the two tuples pickled
whole (``_digest``), since the keys' values order the fair-cycle search. Checked on the states of
real searches and on parts around the pickle frame's size, so a change in Python's pickle
framing shows here rather than as a search that moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import explorer.interleavings.search as search
from explorer.ingest import parse_trace
from explorer.model.settings import Settings
from tests.purechild import child_runner, in_process, run_pure


@child_runner
def test_on_the_pure_engine() -> None:
    run_pure(__file__)


SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


_KEYS = search._keys


def _check(bare: Any, counted: Any, ts: Any, codes: Any) -> None:
    want = (search._digest((bare, counted, ts, codes)), search._digest((bare, ts, codes)))
    assert _KEYS(bare, counted, ts, codes) == want


@in_process
@pytest.mark.parametrize("name", ["lost_race", "put_remove_vs_get", "cold_race_2vcpu"])
def test_the_keys_of_searched_states_are_the_whole_pickles_digests(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = search._keys

    def checked(bare: Any, counted: Any, ts: Any, codes: Any) -> Any:
        _check(bare, counted, ts, codes)
        seen.append(1)
        return real(bare, counted, ts, codes)

    monkeypatch.setattr(search, "_keys", checked)
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    search.explore(trace.events, Settings().with_overrides(trace.settings), reduction=True)
    assert len(seen) >= 20


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 100, 65_000, 65_536, 70_000, 200_000])
def test_the_keys_around_the_frame_size(size: int) -> None:
    big = ("x" * size, tuple(range(size // 50)))
    _check(big, (1, 2), ("t",), ())
    _check((), (), big, ("a", "b"))
    _check(big, big, big, big)
    _check((), (), (), ())
