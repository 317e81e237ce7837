"""The bulk replay against step-by-step replay: the same generators, two ways of running them.

The timeline's bulk replay runs every batch on the kernel generators with steps counted, not
stored (``record=False``), and re-derives any step later from a checkpoint. Step-by-step replay
records every step (``record=True``, all invariants on every region). Both must agree on
everything a user can see: the summary (the ``replay --json`` contract), the step count, each
event's first step, every step's record (function, label, narration, effects, counters,
diagnostics) and the whole machine at any step (``state_at``), over random traces that cover
every mode, allocator, schedule and EPT level, with zaps, teardown, vCPU frees and injected
failures. A last test runs the compiled engine (explorer.model.native) and the pure Python
one in two processes on the same traces and compares their JSON summaries byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.ingest.generate import boot, churn
from explorer.ingest.parse import parse_trace
from explorer.model import NATIVE
from explorer.model.constants import INJECTIONS, MODES
from explorer.model.events import (
    Event,
    Fault,
    Inject,
    Note,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    VcpuFree,
    Zap,
)
from explorer.model.machine import Machine, batches
from explorer.model.records import Snapshot, Step
from explorer.model.settings import Settings
from explorer.model.summary import summary
from explorer.replay.timeline import replay

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"


def recorded(
    events: Sequence[Event], s: Settings, at: set[int]
) -> tuple[Machine, dict[int, Snapshot]]:
    """A step-by-step replay (every step recorded, every invariant on every region), with the
    machine's snapshot after each step in ``at``."""
    m = Machine(s, record=True, check=True, full_check=True)
    snaps: dict[int, Snapshot] = {}

    def keep(machine: Machine, step: Step) -> None:
        if step.index in at:
            snaps[step.index] = machine.snapshot(step=step.index, event=step.event)

    m.on_step = keep
    m.run(events)
    return m, snaps


def agree(events: Sequence[Event], s: Settings, samples: int = 12, seed: int = 0) -> None:
    """Bulk and step-by-step replays of ``events`` agree on everything a user sees."""
    rng = random.Random(seed)
    tl = replay(events, s, checkpoint_every=4, keyframe_every=2)  # many checkpoints to seek from
    n = tl.nr_steps
    at = set(rng.sample(range(n), min(samples, n))) | ({n - 1} if n else set())
    m, snaps = recorded(events, s, at)
    bulk, full = tl.summary(), summary(m, len(events))
    # A violation that persists is reported by the full check at every step (it looks at every
    # region after every step), by the bulk replay's checks where it starts and where its
    # region changes again: the same violations, starting at the same steps.
    assert _starts(bulk.pop("diagnostics")) == _starts(full.pop("diagnostics"))
    assert bulk == full
    assert tl.nr_steps == m.nr_steps == len(m.steps)
    for e in range(len(events)):
        assert tl.first_step_of_event(e) == m.event_first_step.get(e), f"event {e}"
    if any(d.kind == "violation" for d in m.diagnostics):  # (see _starts above)
        assert [_quiet(x) for x in tl.steps_between(0, n)] == [_quiet(x) for x in m.steps]
    else:
        assert tl.steps_between(0, n) == m.steps
    noisy = any(d.kind == "violation" for d in m.diagnostics)
    for i in sorted(at):
        got, want = tl.state_at(i), snaps[i]
        if noisy:  # (the violations counted: as the diagnostics above)
            got, want = _uncounted(got), _uncounted(want)
        assert got == want, f"state_at({i})"


def _starts(diags: list[dict[str, object]]) -> dict[tuple[object, ...], object]:
    """Each diagnostic (kind, code, message) at the first step it is reported."""
    first: dict[tuple[object, ...], object] = {}
    for d in diags:
        first.setdefault((d["kind"], d["code"], d["message"]), d["step"])
    return first


def _quiet(step: Step) -> Step:
    return dataclasses.replace(step, diagnostics=())


def _uncounted(snap: Snapshot) -> Snapshot:
    return dataclasses.replace(
        snap, counters={k: v for k, v in snap.counters.items() if k != "violations"}
    )


def test_modes_are_all_known() -> None:
    """The strategy below draws from every mode the engine has."""
    assert set(MODES) >= {"v6", "v6-locked", "v5-hint", "mempool", "v4-shared-list"}


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.jsonl")), ids=lambda p: p.stem)
def test_samples_agree(path: Path) -> None:
    trace = parse_trace(path.read_bytes(), path.name)
    agree(trace.events, Settings().with_overrides(trace.settings))


@pytest.mark.parametrize("mode", MODES)
def test_generated_workloads_agree_in_every_mode(mode: str) -> None:
    text = "\n".join(churn(tds=2, vcpus=4, faults=160, seed=3, zap_ratio=0.5)) + "\n"
    trace = parse_trace(text.encode(), "churn.jsonl")
    agree(trace.events, Settings(mode=mode, host_memory_mib=4096, schedule="random", seed=5))


@pytest.mark.parametrize("allocator", ["lowest", "spread", "random"])
@pytest.mark.parametrize("schedule", ["sequential", "round-robin", "random"])
def test_boot_with_teardown_agrees(allocator: str, schedule: str) -> None:
    text = "\n".join(boot(tds=2, vcpus=4, faults=120, seed=2, teardown=True)) + "\n"
    trace = parse_trace(text.encode(), "boot.jsonl")
    s = Settings(allocator=allocator, schedule=schedule, ept_levels=5, host_memory_mib=512)
    agree(trace.events, s)


@st.composite
def traces(draw: st.DrawFn) -> tuple[list[Event], Settings]:
    """A random, mostly valid trace: TDs, vCPUs, faults (some with a pfn, some 2 MiB), zaps of
    mapped gfns, injections, notes, vCPU frees and teardowns, grouped by ``t`` at random; an
    impossible event now and then (the replay stops there, both ways)."""
    s = Settings(
        mode=draw(st.sampled_from(MODES)),
        schedule=draw(st.sampled_from(["sequential", "round-robin", "random"])),
        allocator=draw(st.sampled_from(["lowest", "spread", "random"])),
        ept_levels=draw(st.sampled_from([4, 5])),
        worst_case_tables=draw(st.integers(0, 6)),
        dpamt_gets_per_fault=draw(st.integers(0, 6)),
        host_memory_mib=draw(st.sampled_from([16, 64, 256])),
        max_retries=draw(st.integers(0, 8)),
        seed=draw(st.integers(0, 1 << 20)),
    )
    tds = draw(st.integers(1, 2))
    events: list[Event] = [TdCreate(td=td) for td in range(tds)]
    vcpus = draw(st.integers(1, 4))
    events += [VcpuCreate(td=v % tds, vcpu=v) for v in range(vcpus)]
    mapped: dict[int, list[int]] = {td: [] for td in range(tds)}
    t = 0
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.booleans()):
            t += 1
        kind = draw(st.sampled_from(["fault"] * 8 + ["zap", "inject", "note", "finalize"]))
        if kind == "fault":
            v = draw(st.integers(0, vcpus - 1))
            gfn = draw(st.integers(0, 3) | st.integers(0, 1 << 12) | st.integers(0, 1 << 27))
            pfn = draw(st.none() | st.integers(0, s.total_pages - 1))
            level = draw(st.sampled_from(["4k"] * 15 + ["2m"]))
            events.append(Fault(vcpu=v, gfn=gfn, pfn=pfn, level=level, t=t))
            mapped[v % tds].append(gfn)
        elif kind == "zap":
            td = draw(st.integers(0, tds - 1))
            if mapped[td]:
                events.append(Zap(td=td, gfn=draw(st.sampled_from(mapped[td])), t=t))
        elif kind == "inject":
            what = draw(st.sampled_from(INJECTIONS))
            events.append(Inject(what=what, count=draw(st.integers(1, 3)), t=t))
        elif kind == "note":
            events.append(Note(text="a note", t=t))
        else:
            events.append(TdFinalize(td=draw(st.integers(0, tds - 1)), t=t))
    if draw(st.booleans()):
        events.append(VcpuFree(vcpu=draw(st.integers(0, vcpus - 1))))
    if draw(st.booleans()):
        events += [TdDestroy(td=td) for td in range(tds)]
    return events, s


#: Cases Hypothesis found, kept: a zap between a fault's faultin and its mmu_lock (the fault
#: mapped the page the zap freed: no stale check), and a mempool reserve a snapshot shared with
#: the live machine (it showed the reserve after a later pop).
_FOUND: list[tuple[list[Event], Settings]] = [
    (
        [
            TdCreate(td=0),
            VcpuCreate(td=0, vcpu=0),
            Fault(vcpu=0, gfn=0, t=0),
            Fault(vcpu=0, gfn=0, t=0),
            Note(text="a note", t=0),
            Zap(td=0, gfn=0, t=1),
            Fault(vcpu=0, gfn=0, t=1),
            Fault(vcpu=0, gfn=1, t=1),
            Fault(vcpu=0, gfn=1, t=1),
            TdDestroy(td=0),
        ],
        Settings(worst_case_tables=0, dpamt_gets_per_fault=0, host_memory_mib=16, max_retries=0),
    ),
    (
        [
            TdCreate(td=0),
            TdCreate(td=1),
            VcpuCreate(td=0, vcpu=0),
            Fault(vcpu=0, gfn=0, t=0),
            Fault(vcpu=0, gfn=0, t=0),
            Fault(vcpu=0, gfn=1, pfn=0, t=1),
            Fault(vcpu=0, gfn=0, t=1),
            TdFinalize(td=0, t=1),
            Inject(what="alloc_fail", count=1, t=1),
        ],
        Settings(
            mode="mempool",
            worst_case_tables=0,
            dpamt_gets_per_fault=1,
            host_memory_mib=16,
            allocator="random",
            seed=1,
            schedule="sequential",
            max_retries=0,
        ),
    ),
]


@pytest.mark.parametrize("case", _FOUND)
def test_cases_hypothesis_found_agree(case: tuple[list[Event], Settings]) -> None:
    events, s = case
    agree(events, s, samples=10_000)  # every step


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_random_traces_agree(case: tuple[list[Event], Settings]) -> None:
    events, s = case
    agree(events, s, samples=6)


def _summaries(paths: list[Path], settings_: list[dict[str, Any]], pure: bool) -> list[str]:
    """``replay --json`` of each trace under each settings, in a fresh process."""
    env = dict(os.environ)
    env.pop("DPAMT_PURE", None)
    if pure:
        env["DPAMT_PURE"] = "1"
    code = (
        "import json, sys\n"
        "from explorer.model import NATIVE\n"
        "from explorer.model.settings import Settings\n"
        "from explorer.replay.timeline import replay\n"
        "from explorer.ingest.parse import parse_trace\n"
        "out = [NATIVE]\n"
        "for path, over in json.loads(sys.argv[1]):\n"
        "    tr = parse_trace(open(path, 'rb').read(), path)\n"
        "    s = Settings().with_overrides({**tr.settings, **over})\n"
        "    out.append(json.dumps(replay(tr.events, s).summary(), sort_keys=True))\n"
        "print(json.dumps(out))\n"
    )
    arg = json.dumps([[str(p), o] for p in paths for o in settings_])
    done = subprocess.run(
        [sys.executable, "-c", code, arg], env=env, capture_output=True, text=True, check=True
    )
    result: list[Any] = json.loads(done.stdout)
    assert result[0] is (not pure), "the engine ran in the wrong form"
    return [str(x) for x in result[1:]]


@pytest.mark.skipif(not NATIVE, reason="the compiled engine is not built (make builds it)")
def test_the_compiled_engine_gives_the_pure_engines_results(tmp_path: Path) -> None:
    text = "\n".join(churn(tds=2, vcpus=3, faults=300, seed=9, zap_ratio=0.4)) + "\n"
    churn_path = tmp_path / "churn.jsonl"
    churn_path.write_text(text)
    paths = [churn_path, SAMPLES / "lost_race.jsonl", SAMPLES / "put_vs_get.jsonl"]
    over = [
        {"mode": mode, "schedule": sched, "allocator": alloc}
        for mode, sched, alloc in [
            ("v6", "random", "random"),
            ("v6-locked", "round-robin", "spread"),
            ("v5-hint", "sequential", "lowest"),
            ("mempool", "random", "lowest"),
            ("v5-topup-install", "round-robin", "random"),
        ]
    ]
    assert _summaries(paths, over, pure=False) == _summaries(paths, over, pure=True)


@pytest.mark.parametrize("mode", ["v6", "v4-shared-list", "kvm-style-cache", "mempool"])
def test_the_idle_series_is_what_the_caches_hold(mode: str) -> None:
    """The timeline's ``idle_pages`` series (read from the owner counts) equals the pages in
    the live vCPUs' DPAMT caches plus a mempool's reserve after every batch."""
    trace = parse_trace((SAMPLES / "workload_two_tds.jsonl").read_bytes(), "w")
    s = Settings().with_overrides({**trace.settings, "mode": mode})
    events = trace.events[:1500]
    tl = replay(events, s)
    m = Machine(s, record=False, check=True)
    want = []
    for start, end in batches(events):
        m.run_batch([(i, events[i]) for i in range(start, end)])
        pool = m.extra.get("mempool", [])
        want.append(sum(len(v.pamt_cache) for v in m.vcpus.values() if v.alive) + len(pool))
    assert list(tl.series["idle_pages"]) == want and max(want) > 0


@pytest.mark.parametrize(("shape", "faults"), [("fleet", 2500), ("lifecycle", 14_000)])
def test_hosts_with_many_tds_and_vcpus_agree(shape: str, faults: int) -> None:
    """Past 24 TDs and vCPUs the bulk path keeps per-TD and per-vCPU counts between batches and
    its deltas hold only what batches ran on: bulk and step-by-step still agree on every figure
    and on states sought from checkpoints (128 TDs at once; TDs created and destroyed)."""
    from explorer.ingest.shapes import write

    trace = parse_trace(write(shape, faults, seed=3), f"{shape}.jsonl")
    s = Settings().with_overrides(trace.settings)
    created = [e for e in trace.events if e.op in ("td_create", "vcpu_create")]
    assert len(created) > 24  # past the machine size counted in full after every batch
    agree(trace.events, s, samples=12)
