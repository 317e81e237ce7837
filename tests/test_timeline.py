"""The timeline re-derives exactly the steps and states of an uninterrupted recorded run."""

from dataclasses import asdict
from pathlib import Path

import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.model.events import Fault, TdCreate, VcpuCreate, Zap
from explorer.model.machine import Machine
from explorer.model.settings import Settings
from explorer.replay.timeline import CHECKPOINT_EVERY, ReplayCancelled, replay

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _load(name: str):  # type: ignore[no-untyped-def]
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), name)
    return trace.events, resolve_settings(trace, [])


def _recorded(events, settings):  # type: ignore[no-untyped-def]
    """Every step, and a snapshot after every step, from one uninterrupted recorded run."""
    m = Machine(settings, record=True)
    snaps = []
    m.on_step = lambda machine, step: snaps.append(
        machine.snapshot(step=step.index, event=step.event)
    )
    m.run(events)
    return m, snaps


def _same_state(a, b) -> None:  # type: ignore[no-untyped-def]
    da, db = asdict(a), asdict(b)
    for key in da:
        assert da[key] == db[key], f"{key} differs at step {a.step}"


@pytest.mark.parametrize("name", ["lost_race", "put_vs_get", "td_lifecycle", "cache_too_small"])
@pytest.mark.parametrize(("every", "keyframes"), [(1, 1), (1, 4), (3, 2), (64, 32)])
def test_steps_and_states_match_a_recorded_run(name: str, every: int, keyframes: int) -> None:
    events, settings = _load(name)
    m, snaps = _recorded(events, settings)
    tl = replay(events, settings, checkpoint_every=every, keyframe_every=keyframes)
    assert tl.nr_steps == m.nr_steps == len(m.steps)
    assert tl.steps_between(0, tl.nr_steps) == m.steps
    for i in [*range(0, tl.nr_steps, 7), tl.nr_steps - 1]:
        assert tl.step(i) == m.steps[i]
        _same_state(tl.state_at(i), snaps[i])
    assert tl.summary()["steps"] == m.nr_steps


@pytest.mark.parametrize("schedule", ["sequential", "round-robin", "random"])
def test_concurrent_batches_under_every_schedule(schedule: str) -> None:
    settings = Settings(schedule=schedule, seed=5)
    events = (
        [TdCreate(td=0), VcpuCreate(td=0, vcpu=0), VcpuCreate(td=0, vcpu=1)]
        + [Fault(vcpu=i % 2, gfn=0x300 * i, pfn=0x8000 + i, t=i // 2) for i in range(16)]
        + [Zap(td=0, gfn=0x300 * 3, t=100), Fault(vcpu=0, gfn=0x7777, t=100)]
    )
    m, snaps = _recorded(events, settings)
    tl = replay(events, settings, checkpoint_every=2)
    for i in range(0, tl.nr_steps, 5):
        assert tl.step(i) == m.steps[i]
        _same_state(tl.state_at(i), snaps[i])


def test_state_before_the_first_step_is_empty() -> None:
    events, settings = _load("cold_region")
    s = replay(events, settings).state_at(-1)
    assert s.step == -1 and s.pages["free"] == s.pages["total"] and not s.refcount


def test_find_agrees_with_a_brute_force_scan() -> None:
    events, settings = _load("lost_race")
    m, _ = _recorded(events, settings)
    tl = replay(events, settings, checkpoint_every=2)

    def brute(pred, start, direction):  # type: ignore[no-untyped-def]
        seq = m.steps[start + 1 :] if direction > 0 else reversed(m.steps[: max(start, 0)])
        return next((s.index for s in seq if pred(s)), None)

    checks = {
        ("lost_race", None): lambda s: s.label == "pamt_get.lost_race",
        ("refcount_zero", None): lambda s: any(
            e.kind == "refcount" and (e.old == 0) != (e.new == 0) for e in s.effects
        ),
        ("region", 64): lambda s: any(
            (e.kind in ("refcount", "pair", "orphan") and e.key == 64)
            or (e.kind == "page" and e.key >> 9 == 64)
            for e in s.effects
        ),
        ("label", "pamt_get.lock.spin"): lambda s: s.label == "pamt_get.lock.spin",
        ("cache_drained", None): lambda s: (
            s.label
            in ("pamt_get.partial", "pamt_get.lost_race", "pamt_get.add_fail", "pamt_cache.free")
        ),
    }
    for (kind, arg), pred in checks.items():
        for start in (0, 50, 110, 125, m.nr_steps - 1):
            for direction in (1, -1):
                assert tl.find(kind, start, direction, arg) == brute(pred, start, direction), (
                    kind,
                    start,
                    direction,
                )
    first_fault = tl.find("op", 0, 1, "fault")
    assert first_fault is not None and m.steps[first_fault].label == "fault.begin"
    assert tl.find("lost_race", 0, 1) is not None


def test_progress_and_cancel() -> None:
    n = 4 * CHECKPOINT_EVERY  # (one fault per batch)
    events = [TdCreate(td=0), VcpuCreate(td=0, vcpu=0)] + [Fault(vcpu=0, gfn=g) for g in range(n)]
    seen: list[float] = []
    tl = replay(events, Settings(), progress=lambda f, msg: seen.append(f), report_every=50)
    # reported at batch or fast-run boundaries (runs end at checkpoints)
    assert seen[-1] == 1.0 and len(seen) >= 4 and seen == sorted(seen)
    assert len(tl.series["pairs"]) == tl.nr_batches
    with pytest.raises(ReplayCancelled):
        replay(events, Settings(), cancel=lambda: True, report_every=50)


def test_a_stopped_replay_keeps_what_came_before() -> None:
    events = [
        TdCreate(td=0),
        VcpuCreate(td=0, vcpu=0),
        Fault(vcpu=0, gfn=1),
        Zap(td=0, gfn=99),
        Fault(vcpu=0, gfn=2),
    ]
    tl = replay(events, Settings())
    assert tl.stopped is not None and tl.stopped.code == "IMPOSSIBLE_EVENT"
    assert tl.first_step_of_event(4) is None
    last = tl.state_at(tl.nr_steps - 1)
    assert last.tds[0].mapped == 1
    assert tl.summary()["ok"] is False


def test_checkpoints_stay_within_their_budget_and_seeking_stays_exact() -> None:
    events, settings = _load("workload_two_tds")
    m, snaps = _recorded(events[:1200], settings)
    tl = replay(
        events[:1200], settings, checkpoint_every=1, keyframe_every=2, checkpoint_budget=30_000
    )
    assert 1 < len(tl._checkpoints) < tl.nr_batches // 2  # keyframes thinned
    assert len(tl._deltas) == tl.nr_batches  # every batch has its delta
    for i in range(0, tl.nr_steps, 997):
        assert tl.step(i) == m.steps[i]
        _same_state(tl.state_at(i), snaps[i])


def test_one_timeline_serves_many_threads() -> None:
    """The app shares a cached Timeline between sessions (threads): answers stay exact."""
    from concurrent.futures import ThreadPoolExecutor

    events, settings = _load("lost_race")
    m, snaps = _recorded(events, settings)
    tl = replay(events, settings, checkpoint_every=2)
    picks = [(k * 37) % tl.nr_steps for k in range(120)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda i: (tl.step(i), tl.state_at(i)), picks))
    for i, (step, snap) in zip(picks, got, strict=True):
        assert step == m.steps[i]
        _same_state(snap, snaps[i])


def test_find_op_inside_a_concurrent_batch_takes_the_nearest_start() -> None:
    """Events of one batch start in schedule order (here random), not file order."""
    events = [
        TdCreate(td=0),
        VcpuCreate(td=0, vcpu=0),
        VcpuCreate(td=0, vcpu=1),
        VcpuCreate(td=0, vcpu=2),
    ] + [Fault(vcpu=v, gfn=0x10 + v, t=1) for v in range(3)]
    for seed in range(12):
        settings = Settings(schedule="random", seed=seed)
        m, _ = _recorded(events, settings)
        tl = replay(events, settings)
        starts = sorted(s.index for s in m.steps if s.label == "fault.begin")
        i, seen = -1, []
        while (i := tl.find("op", i, 1, "fault")) is not None:
            seen.append(i)
        assert seen == starts
        assert tl.find("op", starts[-1], -1, "fault") == starts[-2]


def test_memory_bytes_counts_every_keyframe_page_map() -> None:
    """The timeline's memory figure includes the keyframes' page maps. (Reading a
    tuple field of a class compiled by mypyc builds a new tuple each time: counted by id alone,
    a dead temporary's id could be taken by a later one, and a keyframe's maps went uncounted.)"""
    from explorer.ingest.shapes import write

    trace = parse_trace(write("runs", 3000), "runs.jsonl")
    s = Settings().with_overrides({**trace.settings, "allocator": "random"})
    tl = replay(trace.events, s, checkpoint_every=256, keyframe_every=2)
    assert len(tl._checkpoints) >= 3
    blobs: dict[int, int] = {}
    for img in tl._checkpoints.values():
        for groups in (img.memory.regions, img.module.pages):
            for group in groups.values():
                for part in (group,) if isinstance(group, bytes) else group:
                    blobs[id(part)] = len(part)
    assert sum(blobs.values()) > 50_000
    assert tl.memory_bytes()["keyframes"] > sum(blobs.values())


def _keyframe_ordinals(tl) -> list[int]:  # type: ignore[no-untyped-def]
    return sorted(tl._ckpt_ordinal(k) for k in tl._checkpoints)


@pytest.mark.parametrize("small_host", [True, False])
def test_keyframes_are_closer_on_a_small_host_and_seek_the_same_states(
    small_host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host of few regions gets a keyframe every KEYFRAME_EVERY_SMALL checkpoints (its images
    are cheap; a seek applies half as many deltas), a large one every ``keyframe_every``; seeks
    from either give the recorded run's states."""
    import explorer.replay.timeline as T

    if not small_host:
        monkeypatch.setattr(T, "SMALL_HOST_REGIONS", 0)  # (every host counts as large)
    settings = Settings(schedule="round-robin")
    events = [TdCreate(td=0), VcpuCreate(td=0, vcpu=0), VcpuCreate(td=0, vcpu=1)] + [
        Fault(vcpu=i % 2, gfn=i) for i in range(400)
    ]
    _, snaps = _recorded(events, settings)
    tl = replay(events, settings, checkpoint_every=4, keyframe_every=16)
    spacing = T.KEYFRAME_EVERY_SMALL if small_host else 16
    assert T.KEYFRAME_EVERY_SMALL < 16
    assert _keyframe_ordinals(tl) == list(range(0, len(tl._ckpt_batches), spacing))
    for i in range(0, tl.nr_steps, 37):
        _same_state(tl.state_at(i), snaps[i])


def test_a_seek_leaves_no_machine_to_the_collector() -> None:
    """A seek that stops mid-batch leaves kernel generators suspended; they held the seek's
    machine, which held them: a cycle of the whole machine that only the collector freed. Now
    the machine is freed when the seek returns (reference counting)."""
    import gc

    events, settings = _load("workload_two_tds")
    tl = replay(events, settings)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(1, tl.nr_steps, max(1, tl.nr_steps // 25)):
            tl.state_at(i)
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()
    assert not left & {"Machine", "Thread", "Vcpu", "Td"}, sorted(left)
