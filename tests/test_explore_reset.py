"""The search re-executes prefixes of turns on ONE machine reset to the group's start
(``Machine.reset``, ``Explorer._replay``): after every replay of real searches, the reused
machine must equal a new machine restored at the same image and given the same turns, in the
state's keys and in every attribute the machine has (so a field a reset forgets fails here,
whether or not the keys happen to read it)."""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Any

import pytest

import explorer.interleavings.search as search
from explorer.ingest import parse_trace
from explorer.model.chunked import ChunkedDict
from explorer.model.machine import Machine
from explorer.model.prng import XorShift32
from explorer.model.settings import Settings
from explorer.model.state import Thread
from explorer.model.steps import COUNTER_NAMES
from tests.purechild import child_runner, in_process, run_pure


@child_runner
def test_on_the_pure_engine() -> None:
    run_pure(__file__)


SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"

#: not state: the memory and module (compared by their own attributes below) and the CPUs
#: (compared without their generators, whose frames the keys compare)
#: (and the reset's kept vCPUs: a cache of the last image reset to, not state)
_APART = {
    "mem",
    "module",
    "threads",
    "_threads_made",
    "settings",
    "on_step",
    "on_lean_step",
    "_thawed",
}


def _attrs(obj: Any) -> dict[str, Any]:
    names = getattr(obj, "__dict__", None)
    if names is not None:
        return dict(names)
    return {
        n: getattr(obj, n)
        for n in dir(obj)
        if not n.startswith("__") and not callable(getattr(obj, n, None))
    }


def _thread(th: Thread) -> tuple[Any, ...]:
    return (
        th.name,
        list(th.queue),
        th.order,
        th.event,
        th.line,
        list(th.stack),
        list(th.holds),
        th.spinning,
        th.last,
        th.softirq,
        th.owe,
        th.gen is None,
        th.respin is None,
    )


def _plain(v: Any) -> Any:
    """``v`` as values compared by ==: containers and dataclasses (a TD, a vCPU) field by
    field, a chunked table by its items, the RNG by its state."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, deque)):
        return [_plain(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return (type(v).__name__, [_plain(getattr(v, f.name)) for f in dataclasses.fields(v)])
    if isinstance(v, ChunkedDict):
        return dict(v.items())
    if isinstance(v, XorShift32):
        return v.state
    if type(v).__module__.startswith("explorer.") and not callable(v):
        return (type(v).__name__, {k: _plain(x) for k, x in _attrs(v).items()})
    return v


def _same(a: Any, b: Any, where: str) -> None:
    for name, va in _attrs(a).items():
        if name in _APART:
            continue
        vb = getattr(b, name)
        assert _plain(va) == _plain(vb), f"{where}.{name}: {va!r} != {vb!r}"


def _fresh(ex: search.Explorer, image: Any, items: Any, prefix: Any) -> tuple[Machine, Any]:
    m = ex._search_machine()
    m.restore(image)
    threads = m.begin_batch(items)
    by_name = {th.name: th for th in threads}
    m.fp_on = False
    for name in prefix:
        m.turn(by_name[name], threads)
        if m.stopped is not None:
            break
    m.fp_on = ex.reduction
    return m, threads


def _key(m: Machine, threads: Any) -> Any:
    return search._keys(
        m.canonical_state(COUNTER_NAMES),
        tuple(m.cnt),
        search._threads_state(m, threads, True),
        search._diag_codes(m),
    )


@in_process
@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("lost_race", None),
        ("lost_race", "v6-no-recheck"),
        ("race_three_cpus", "v5-hint"),
        ("cold_race_2vcpu", None),
    ],
)
def test_a_reset_machine_equals_a_new_one_after_every_replay(
    name: str, mode: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    settings = Settings().with_overrides(trace.settings)
    if mode is not None:
        settings = settings.with_overrides({"mode": mode})
    real = search.Explorer._replay
    checked: list[int] = []

    def replay(ex: search.Explorer, image: Any, items: Any, prefix: Any) -> Any:
        m, threads = real(ex, image, items, prefix)
        assert m is not None
        f, fthreads = _fresh(ex, image, items, prefix)
        where = f"{name} after {list(prefix)}"
        assert _key(m, threads) == _key(f, fthreads), where
        _same(m, f, where)
        _same(m.mem, f.mem, where + ".mem")
        _same(m.module, f.module, where + ".module")
        assert [_thread(t) for t in threads] == [_thread(t) for t in fthreads], where
        made = {k: _thread(t) for k, t in m._threads_made.items()}
        assert made == {k: _thread(t) for k, t in f._threads_made.items()}, where
        checked.append(len(prefix))
        return m, threads

    monkeypatch.setattr(search.Explorer, "_replay", replay)
    search.explore(trace.events, settings, reduction=True)
    assert len(checked) >= 5 and max(checked) > 3


@in_process
def test_a_reset_to_another_image_never_reuses_the_kept_vcpus() -> None:
    """``Machine.reset`` keeps the vCPUs thawed from the last image it reset to and copies
    them at the next reset to that image: a reset to another image (here, alternating between
    two whose vCPUs differ, with the vCPUs changed in between) must give what a new machine
    restored there has, and the kept vCPUs must not be the ones the machine changes."""
    name = "cold_race_2vcpu"
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    settings = Settings().with_overrides(trace.settings)
    events = list(trace.events)
    src = Machine(settings, record=False, check=True)
    src.run(events[:3])
    first = src.image()
    src.run(events[3:])
    second = src.image()
    assert _plain(first.vcpus) != _plain(second.vcpus)
    m = Machine(settings, record=False, check=True)
    for img in (first, second, second, first, second):
        m.reset(img)
        f = Machine(settings, record=False, check=True)
        f.restore(img)
        _same(m, f, f"{name} reset")
        # change every page list of the reset machine's vCPUs: the next reset must not see it
        for v in m.vcpus.values():
            v.pamt_cache.append(1)
            for c in v.caches.values():
                c.pfns.append(1)
                c.nobjs += 1
            v.control.append((1, "tdcx"))
