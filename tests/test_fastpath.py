"""The batch fast path (explorer.model.fastpath) against the generators, batch by batch.

Two machines replay the same trace, one with ``fast=True``; after every batch their whole state
must be equal: pages and owners, the allocator, the module's pages and pairs, refcounts,
mappings, S-EPT entries, caches, counters, step counts, where each event started, the labels and
regions of the batch. Traces: generated boot and churn workloads under the modes and schedules
the fast path takes, the samples, and random traces from Hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.model.events import Event, Fault, VcpuCreate, Zap
from explorer.model.fastpath import (
    FAST_MODES,
    BatchOutcome,
    FaultColumns,
    run_crossing_batch,
    run_fast_batches,
    run_simple_batches,
)
from explorer.model.machine import Machine, batches
from explorer.model.settings import Settings
from explorer.timeline import Timeline, replay
from explorer.trace import parse_trace
from explorer.trace.generate import boot, churn

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def fingerprint(m: Machine) -> dict[str, Any]:
    """Everything a later batch, a checkpoint or a view can depend on."""
    mem = m.mem
    return {
        "regions": {r: bytes(b) for r, b in mem.regions.items()},
        "nfree": dict(mem.nfree),
        "counts": list(mem.counts),
        "heap": list(mem._heap),
        "untouched": mem._untouched,
        "mem_dirty": set(mem.dirty),
        "pairs": dict(m.module.pairs),
        "module_pages": {r: bytes(b) for r, b in m.module.pages.items()},
        "used": dict(m.module.used),
        "module_dirty": set(m.module.dirty),
        "refcount": dict(m.refcount),
        "orphans": dict(m.orphans),
        "gotten": dict(m.gotten),
        "inflight": dict(m.inflight),
        "ckpt_regions": set(m._ckpt_regions),
        "tds": {
            k: (
                t.state,
                dict(t.entries),
                dict(t.leaves),
                dict(t.gmem),
                dict(t.leaf_frozen),
                list(t.mmu_readers),
                t.mmu_writer,
                set(t.entries.changed),  # type: ignore[attr-defined]
                set(t.leaves.changed),  # type: ignore[attr-defined]
                set(t.gmem.changed),  # type: ignore[attr-defined]
            )
            for k, t in m.tds.items()
        },
        "vcpus": {
            k: (
                v.alive,
                list(v.pamt_cache),
                {n: (list(c.pfns), c.nobjs) for n, c in v.caches.items()},
            )
            for k, v in m.vcpus.items()
        },
        "counters": dict(m.counters),
        "injections": dict(m.injections),
        "nr_steps": m.nr_steps,
        "extra": {k: list(v) if isinstance(v, list) else v for k, v in m.extra.items()},
        "diagnostics": list(m.diagnostics),
        "stopped": m.stopped,
        "pamt_lock": m.pamt_lock,
    }


def compare(events: Sequence[Event], s: Settings) -> list[bool]:
    """Replay both ways, batch by batch; returns which batches took the fast path."""
    slow = Machine(s, record=False, check=True)
    fast = Machine(s, record=False, check=True, fast=True)
    taken: list[bool] = []
    for b, (start, end) in enumerate(batches(events)):
        if slow.stopped is not None:
            break
        per_batch = []
        before = fast.fast_batches
        for m in (slow, fast):
            m.batch_labels, m.batch_regions, m.event_first_step = set(), set(), {}
            steps = m.nr_steps
            m.run_batch((i, events[i]) for i in range(start, end))
            per_batch.append((set(m.batch_labels), set(m.batch_regions), dict(m.event_first_step)))
        taken.append(fast.fast_batches > before)
        assert per_batch[0] == per_batch[1], f"batch {b} (events {start}..{end - 1})"
        a, f = fingerprint(slow), fingerprint(fast)
        for key in a:
            assert a[key] == f[key], f"batch {b} (events {start}..{end - 1}): {key} differs"
        assert steps <= slow.nr_steps
    assert slow.counters["violations"] == 0 or fast.counters["violations"] > 0
    return taken


def compare_runs(
    events: Sequence[Event],
    s: Settings,
    run: int = 8,
    simple: bool = False,
    simple_outcomes: dict[int, BatchOutcome] | None = None,
) -> int:
    """Like :func:`compare`, but the fast machine takes runs of up to ``run`` batches at once
    (as the timeline does); compared after each run, each batch's outcome against the
    generators' batch. Returns how many batches ran in runs longer than one; the outcomes of
    the batches simple runs took go to ``simple_outcomes`` (batch index -> outcome)."""
    slow = Machine(s, record=False, check=True)
    fast = Machine(s, record=False, check=True, fast=True)
    spans = batches(events)
    cols = FaultColumns.of(events)
    b = in_runs = 0
    while b < len(spans) and slow.stopped is None:
        fast.event_first_step = {}
        outcomes = run_simple_batches(fast, events, spans[b : b + run], cols) if simple else []
        if simple_outcomes is not None:
            simple_outcomes.update(enumerate(outcomes, b))
        if outcomes:
            for (x, _y), o in zip(spans[b:], outcomes, strict=False):
                fast.event_first_step.update(
                    zip(range(x, x + len(o.starts)), o.starts, strict=True)
                )
        else:
            outcomes = run_fast_batches(
                fast, ([(i, events[i]) for i in range(x, y)] for x, y in spans[b : b + run])
            )
        count = len(outcomes) or 1
        if not outcomes:
            x, y = spans[b]
            fast.run_batch([(i, events[i]) for i in range(x, y)], try_fast=False)
        in_runs += count if count > 1 else 0
        first: dict[int, int] = {}
        for j in range(count):
            x, y = spans[b + j]
            slow.batch_labels, slow.batch_regions, slow.event_first_step = set(), set(), {}
            steps = slow.nr_steps
            slow.run_batch([(i, events[i]) for i in range(x, y)])
            first.update(slow.event_first_step)
            if outcomes:
                o = outcomes[j]
                where = f"batch {b + j} of a run of {count}"
                assert o.labels == slow.batch_labels, where
                assert o.regions == sorted(slow.batch_regions), where
                assert o.steps == slow.nr_steps - steps, where
        assert fast.event_first_step == first, f"batches {b}..{b + count - 1}"
        a, f = fingerprint(slow), fingerprint(fast)
        for key in a:
            assert a[key] == f[key], f"after batches {b}..{b + count - 1}: {key} differs"
        b += count
    return in_runs


def _events(text: str) -> tuple[tuple[Event, ...], Settings]:
    trace = parse_trace((text + "\n").encode(), "t.jsonl")
    return trace.events, Settings().with_overrides(trace.settings)


@pytest.mark.parametrize("mode", sorted(FAST_MODES))
@pytest.mark.parametrize("schedule", ["round-robin", "sequential"])
def test_boot_traces_agree(mode: str, schedule: str) -> None:
    events, s = _events("\n".join(boot(tds=2, vcpus=4, faults=1200, seed=5)))
    s = s.with_overrides({"mode": mode, "schedule": schedule})
    taken = compare(events, s)
    in_runs = compare_runs(events, s)
    in_simple_runs = compare_runs(events, s, simple=True)
    if mode != "sleeping-under-lock":  # its first fault violates invariant 6: no fast path
        assert sum(taken) > len(batches(events)) // 2  # the fast path did run, mostly
        assert in_runs > len(batches(events)) // 2
        assert in_simple_runs > len(batches(events)) // 2


@pytest.mark.parametrize("schedule", ["round-robin", "sequential"])
@pytest.mark.parametrize("finalized", [False, True])
def test_several_faults_per_cpu_in_one_batch(schedule: str, finalized: bool) -> None:
    """CPUs with one, two and three faults in one batch: their steps interleave unevenly."""
    from explorer.model.events import TdCreate, TdFinalize

    events: list[Event] = [TdCreate(td=0), *(VcpuCreate(td=0, vcpu=v) for v in range(3))]
    if finalized:
        events.append(TdFinalize(td=0))
    base = [0x10000, 0x20000, 0x30000]
    for t in range(40):  # warm up: pairs installed, tables linked, caches full
        events += [Fault(vcpu=v, gfn=base[v] + t, t=t) for v in range(3)]
    for t, shape in ((40, (3, 1, 2)), (41, (1, 3, 2)), (42, (2, 2, 1))):
        for v, count in enumerate(shape):
            events += [Fault(vcpu=v, gfn=base[v] + 100 * t + i, t=t) for i in range(count)]
    s = Settings().with_overrides({"schedule": schedule})
    taken = compare(events, s)
    assert all(taken[-3:])
    assert compare_runs(events, s, run=3) >= 3
    compare_runs(events, s, run=3, simple=True)


@pytest.mark.parametrize("schedule", ["round-robin", "sequential", "random"])
def test_churn_traces_agree(schedule: str) -> None:
    events, s = _events("\n".join(churn(tds=2, vcpus=4, faults=1500, seed=2, zap_ratio=0.3)))
    compare(events, s.with_overrides({"schedule": schedule}))
    compare_runs(events, s.with_overrides({"schedule": schedule}))
    compare_runs(events, s.with_overrides({"schedule": schedule}), simple=True)


@pytest.mark.parametrize("mode", ["v6", "kvm-style-cache"])
@pytest.mark.parametrize(
    "wct,gets,levels", [(0, 0, 4), (1, 1, 4), (2, 3, 5), (5, 5, 5), (8, 12, 4), (5, 25, 4)]
)
def test_worst_case_counts_agree(mode: str, wct: int, gets: int, levels: int) -> None:
    """The two worst-case knobs change how often top-ups and links happen (at 2n above KVM's
    capacity of 40, the KVM-style cache is never at 2n: it "tops up" to 40 on every fault)."""
    events, s = _events("\n".join(boot(tds=1, vcpus=3, faults=900, seed=11)))
    s = s.with_overrides(
        {
            "mode": mode,
            "worst_case_tables": wct,
            "dpamt_gets_per_fault": gets,
            "ept_levels": levels,
        }
    )
    compare(events, s)
    compare_runs(events, s, simple=True)
    compare_runs(events, s)
    compare_runs(events, s, simple=True)


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.jsonl")), ids=lambda p: p.stem)
def test_samples_agree(path: Path) -> None:
    trace = parse_trace(path.read_bytes(), path.name)
    compare(trace.events, Settings().with_overrides(trace.settings))


@st.composite
def fault_traces(draw: st.DrawFn) -> tuple[list[Event], Settings]:
    """One to three vCPUs on one TD; faults that share tables or repeat gfns, zaps; all modes
    the fast path takes and two it does not; small and large hosts."""
    from explorer.model.events import TdCreate, TdFinalize

    vcpus = draw(st.integers(1, 3))
    events: list[Event] = [TdCreate(td=0), *(VcpuCreate(td=0, vcpu=v) for v in range(vcpus))]
    if draw(st.booleans()):
        events.append(TdFinalize(td=0))
    base = draw(st.sampled_from([0, 0x1FF, 0x3FE00, 0x7FFFFF00]))
    n = draw(st.integers(1, 60))
    t = 0
    for _ in range(n):
        kind = draw(st.sampled_from(["fault"] * 6 + ["zap", "tick"]))
        gfn = base + draw(st.integers(0, 700))
        if kind == "tick":
            t += 1
        elif kind == "zap":
            events.append(Zap(td=0, gfn=gfn, t=t))
        else:
            events.append(Fault(vcpu=draw(st.integers(0, vcpus - 1)), gfn=gfn, t=t))
    s = Settings().with_overrides(
        {
            "mode": draw(st.sampled_from([*sorted(FAST_MODES), "v6-locked", "v4-shared-list"])),
            "schedule": draw(st.sampled_from(["round-robin", "sequential"])),
            "worst_case_tables": draw(st.integers(1, 6)),
            "dpamt_gets_per_fault": draw(st.integers(1, 6)),
            "host_memory_mib": draw(st.sampled_from([64, 4096])),
        }
    )
    return events, s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fault_traces())
def test_random_traces_agree(case: tuple[list[Event], Settings]) -> None:
    events, s = case
    compare(events, s)
    compare_runs(events, s, run=4)
    compare_runs(events, s, run=4, simple=True)


def test_timelines_agree() -> None:
    """The timeline replays with the fast path; a timeline forced onto the generators must have
    the same batches, flags, regions, series, event starts and summary."""

    events, s = _events("\n".join(churn(tds=2, vcpus=4, faults=2000, seed=9, zap_ratio=0.2)))
    fast_tl, slow_tl = _timelines_agree(events, s)
    assert fast_tl.nr_batches > 100
    for i in (0, fast_tl.nr_steps // 3, fast_tl.nr_steps - 1):
        assert fast_tl.step(i) == slow_tl.step(i)
        assert fast_tl.state_at(i) == slow_tl.state_at(i)


def test_a_cache_below_min_in_the_middle_of_a_batch() -> None:
    """A CPU's first fault links tables and leaves external_spt below min: its next fault in the
    same batch tops up (allocates pages), which only the generators do."""
    from explorer.model.events import TdCreate, TdFinalize

    events: list[Event] = [TdCreate(td=0), VcpuCreate(td=0, vcpu=0), TdFinalize(td=0)]
    events.append(Fault(vcpu=0, gfn=1, t=0))
    # each gfn j << 27 needs three new tables (levels 3, 2 and 1): three S-EPT pages
    events += [Fault(vcpu=0, gfn=j << 27, t=j) for j in range(1, 11)]  # 37 -> 7 pages
    events += [Fault(vcpu=0, gfn=j << 27, t=11) for j in (11, 12)]  # 7 -> 4 < min: top-up
    s = Settings()
    compare(events, s)
    compare_runs(events, s)


@pytest.mark.parametrize("schedule", ["round-robin", "sequential"])
def test_simple_runs_link_level1_tables(schedule: str) -> None:
    """Faults on fresh 2 MiB guest chunks under a present level-2 table link a level-1 table
    each: simple runs take them (four more steps per link) until a vCPU's caches fall below
    min (its next fault tops up) and stop at a batch where two CPUs race for one table; each
    batch's outcome and the whole state match the generators'."""
    from explorer.model.events import TdCreate, TdFinalize

    events: list[Event] = [TdCreate(td=0)]
    events += [VcpuCreate(td=0, vcpu=v) for v in range(2)]
    events.append(TdFinalize(td=0))
    t = 0
    events += [Fault(vcpu=v, gfn=v, t=t) for v in range(2)]  # levels 3, 2, 1 under gfn 0
    for k in range(1, 41):  # 40 links per vCPU: its page-table caches run below min
        t += 1
        events += [Fault(vcpu=v, gfn=((2 * k + v) << 9) + k % 7, t=t) for v in range(2)]
        if k in (10, 20):  # two CPUs fault in one fresh chunk: they race for its table
            t += 1
            events += [Fault(vcpu=v, gfn=((100 + k) << 9) + v, t=t) for v in range(2)]
    s = Settings().with_overrides({"schedule": schedule})
    seen: dict[int, BatchOutcome] = {}
    compare_runs(events, s, run=16, simple=True, simple_outcomes=seen)
    spans = batches(events)
    racing = {
        b for b, (x, _y) in enumerate(spans) if getattr(events[x], "gfn", 0) >> 9 in (110, 120)
    }
    assert len(racing) == 2 and not racing & set(seen)
    linked = [o for o in seen.values() if "sept.add" in o.labels]
    assert len(linked) >= 30, len(linked)
    assert all(o.steps == 2 * 9 + 2 * 4 for o in linked)  # two CPUs, one link each
    # a batch after one whose link took a vCPU's caches below min tops them up: not simple
    topups = [b for b in range(5, len(spans)) if b not in seen and b not in racing]
    assert len(topups) == 2  # (one per vCPU)
    assert all("sept.add" in seen[b - 1].labels for b in topups)


@pytest.mark.parametrize("schedule", ["round-robin", "sequential"])
def test_simple_runs_top_up_the_dpamt_cache(schedule: str) -> None:
    """After a region crossing, the CPUs that popped a pair from their tdx_pamt_cache top it up
    in their next fault: simple runs take those batches (under round-robin the top-ups' pages
    before the guest pages, under sequential CPU after CPU), each equal to the generators'."""
    events, s = _events("\n".join(boot(tds=2, vcpus=8, faults=6000, seed=3)))
    seen: dict[int, BatchOutcome] = {}
    s = s.with_overrides({"schedule": schedule})
    compare_runs(events, s, run=16, simple=True, simple_outcomes=seen)
    topped = [o for o in seen.values() if "pamt_cache.topup" in o.labels]
    assert len(topped) >= 10, len(topped)
    assert all(
        o.allocated == len(o.starts) + sum(o.topups.values()) > len(o.starts) for o in topped
    )
    if schedule == "round-robin":  # every CPU lost a race or added: all top up, none is full
        assert any("pamt_cache.full" not in o.labels for o in topped)


@pytest.mark.parametrize("schedule", ["round-robin", "sequential"])
def test_region_crossings_run_without_generators(schedule: str) -> None:
    """The batches where the allocator moves on to a fresh region (several CPUs on the slow
    path of tdx_pamt_get) run on the crossing path, each one equal to the generators' batch:
    under round-robin the CPUs of the fresh region pop their pairs, spin on pamt_lock, one adds
    the pair and the others lose the race and free theirs; under sequential the first adds and
    the others find the refcount up (no spin, no lost race)."""
    import explorer.model.machine as machine_module

    events, s = _events("\n".join(boot(tds=2, vcpus=8, faults=6000, seed=3)))
    s = s.with_overrides({"schedule": schedule})
    taken: list[set[str]] = []

    def counting(m: Machine, items: Sequence[tuple[int, Event]]) -> bool:
        ran = run_crossing_batch(m, items)
        if ran:
            taken.append(set(m.batch_labels))
        return ran

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(machine_module, "run_crossing_batch", counting)
        compare(events, s)
    assert len(taken) >= 10, len(taken)
    assert all({"pamt_get.slow", "pamt_get.add"} <= labels for labels in taken)
    lost = [labels for labels in taken if "pamt_get.lost_race" in labels]
    if schedule == "round-robin":
        assert len(lost) >= len(taken) // 2
        assert all({"pamt_get.lock.spin", "pamt_get.free_pair"} <= labels for labels in lost)
    else:
        assert not lost and not any("pamt_get.lock.spin" in labels for labels in taken)


@pytest.mark.parametrize("mode", ["v6", "kvm-style-cache", "mempool"])
@pytest.mark.parametrize("schedule", ["round-robin", "sequential"])
def test_boot_timelines_agree(mode: str, schedule: str) -> None:
    """The timeline's replay (simple runs, the general fast path, the generators) against a
    replay on the generators alone."""

    events, s = _events("\n".join(boot(tds=2, vcpus=4, faults=3000, seed=4)))
    _timelines_agree(events, s.with_overrides({"mode": mode, "schedule": schedule}))


def _timelines_agree(events: Sequence[Event], s: Settings) -> tuple[Timeline, Timeline]:
    """Replay with the fast paths and on the generators alone: the same timeline."""
    import explorer.model.machine as machine_module
    import explorer.timeline as timeline_module

    fast_tl = replay(events, s)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timeline_module, "run_simple_batches", lambda m, events, spans, cols: [])
        mp.setattr(machine_module, "run_crossing_batch", lambda m, items: False)
        for module in (machine_module, timeline_module):
            mp.setattr(module, "run_fast_batches", lambda m, batches, **kw: [])
        slow_tl = replay(events, s)
    for name in ("batch_event", "batch_step", "batch_flags", "region_offsets", "region_values"):
        assert getattr(fast_tl, name) == getattr(slow_tl, name), name
    assert fast_tl.event_step == slow_tl.event_step
    assert fast_tl.series == slow_tl.series
    assert fast_tl.cache_series == slow_tl.cache_series
    assert fast_tl.summary() == slow_tl.summary()
    return fast_tl, slow_tl


@pytest.mark.parametrize("schedule", ["round-robin", "sequential"])
def test_seeks_rerun_simple_runs_exactly(schedule: str) -> None:
    """A seek re-runs the batches after its checkpoint with simple runs where it can: the state
    at steps far from any checkpoint is the recorded run's, and simple runs did take part."""
    import explorer.timeline as timeline_module

    events, s = _events("\n".join(boot(tds=2, vcpus=4, faults=3000, seed=4)))
    s = s.with_overrides({"schedule": schedule})
    tl = replay(events, s)
    # steps in the last batches of checkpoint intervals (the most batches re-run) and midway
    every = timeline_module.CHECKPOINT_EVERY
    targets = {tl.batch_step[b] + 1 for b in range(every - 4, tl.nr_batches - 1, every // 2)}
    targets.add(tl.nr_steps - 1)
    want: dict[int, Any] = {}
    m = Machine(s, record=True)
    m.on_step = lambda mach, step: (
        want.__setitem__(step.index, mach.snapshot(step=step.index, event=step.event))
        if step.index in targets
        else None
    )
    m.run(events)
    assert len(want) == len(targets) >= 5
    taken: list[int] = []

    def counting(*args: Any) -> Any:
        out = run_simple_batches(*args)
        taken.append(len(out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timeline_module, "run_simple_batches", counting)
        for i in sorted(targets):
            assert tl.state_at(i) == want[i], f"step {i}"
    assert sum(taken) > 40 * (len(targets) - 1)  # most re-run batches were simple
