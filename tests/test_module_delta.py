"""The TDX module's part of a delta checkpoint carries each changed region's count of pages in
TD use (``TdxModule.delta``), and a seek takes those counts instead of classifying every page
again (``TdxModule.apply_many``): the counts after applying any run of deltas, one at a time or
merged, must be the ones the live machine kept, on hosts where regions fill, empty to 0 and
lose their pair."""

from __future__ import annotations

import pytest

from explorer.bench import refault_trace
from explorer.ingest import parse_trace
from explorer.ingest.shapes import write
from explorer.model.machine import Machine, MachineDelta, MachineImage
from explorer.model.settings import Settings

Used = list[tuple[dict[int, int], int]]


def _run(
    shape: str, faults: int, every: int, **settings: object
) -> tuple[Settings, MachineImage, list[MachineDelta], Used]:
    """A machine run a third of the way, imaged, then a delta every ``every`` events, with
    the use counts (per region, total) it kept at each delta."""
    data = refault_trace(faults) if shape == "refault" else write(shape, faults)
    trace = parse_trace(data, f"{shape}.jsonl")
    s = Settings().with_overrides({**trace.settings, **settings})
    events = trace.events
    m = Machine(s, record=False, check=True)
    m.run(events[: len(events) // 3])
    image = m.image()
    deltas: list[MachineDelta] = []
    used: Used = []
    for start in range(len(events) // 3, len(events), every):
        m.run(events[start : start + every])
        deltas.append(m.delta())
        used.append((dict(m.module.used), m.module.used_total))
    return s, image, deltas, used


@pytest.mark.parametrize(
    ("shape", "settings"),
    [
        ("churn", {"allocator": "spread"}),
        ("refault", {"allocator": "random"}),
        ("lifecycle", {"allocator": "random"}),
        ("runs", {}),
    ],
)
def test_use_counts_after_deltas_are_the_live_machines(
    shape: str, settings: dict[str, object]
) -> None:
    s, image, deltas, used = _run(shape, 900, 97, **settings)
    assert len(deltas) > 3
    # the regions that emptied: a delta must carry their count 0, or a seek keeps a stale one
    emptied = set().union(*(u for u, _ in used)) - set(used[-1][0])
    if shape in ("churn", "refault"):
        assert emptied, "the trace should empty some region"
    for n in (1, 2, len(deltas) // 2, len(deltas)):
        merged = Machine(s, record=False, check=True)
        merged.restore(image)
        merged.apply_deltas(deltas[:n])
        one_by_one = Machine(s, record=False, check=True)
        one_by_one.restore(image)
        for d in deltas[:n]:
            one_by_one.apply_delta(d)
        for got in (merged, one_by_one):
            assert (got.module.used, got.module.used_total) == used[n - 1]
            recount: dict[int, int] = {}
            for r, kinds in got.module.kind_maps().items():
                k = sum(1 for c in kinds if c not in (0, 1))
                if k:
                    recount[r] = k
            assert recount == got.module.used
