"""Pinned pages: a kernel capture names the S-EPT table and control pages' pfns, the engine takes
them (as it takes a fault's leaf pfn), and the allocator never hands one out before its event."""

from __future__ import annotations

from explorer.model.constants import PAGES_PER_REGION
from explorer.model.events import Event, Fault, TdCreate, TdFinalize, VcpuCreate
from explorer.model.machine import Machine
from explorer.model.memory import HostMemory
from explorer.model.settings import Settings

R = PAGES_PER_REGION
TDR_TDCS = tuple(70 * R + i for i in range(1 + Settings().tdcs_pages))
TDVPR_TDCX = tuple(71 * R + i for i in range(1 + Settings().tdcx_pages))
TABLES = (72 * R, 72 * R + 1, 72 * R + 2)  # levels 3, 2, 1 of a 4-level EPT


def _machine(events: list[Event]) -> Machine:
    m = Machine(Settings(), full_check=True)
    m.mem.pin(p for ev in events for p in (getattr(ev, "control", None) or ()))
    m.mem.pin(p for ev in events for p in (getattr(ev, "tables", None) or ()))
    m.run(events)
    return m


def _boot() -> list[Event]:
    return [
        TdCreate(td=0, control=TDR_TDCS),
        VcpuCreate(td=0, vcpu=0, control=TDVPR_TDCX),
        TdFinalize(td=0),
    ]


def test_control_and_table_pages_are_the_pinned_pfns() -> None:
    m = _machine([*_boot(), Fault(vcpu=0, gfn=0x10, pfn=73 * R, tables=TABLES)])
    assert m.stopped is None, m.stopped
    assert [p for p, _ in m.tds[0].control] == list(TDR_TDCS)
    assert [p for p, _ in m.vcpus[0].control] == list(TDVPR_TDCX)
    tables = sorted((k, v[1]) for k, v in m.tds[0].entries.items() if v[0] == "present")
    assert [spt for _, spt in sorted(tables, reverse=True)] == list(TABLES)
    assert not [d for d in m.diagnostics if d.kind == "violation"]


def test_without_pins_the_allocator_picks_as_before() -> None:
    m = _machine([TdCreate(td=0), VcpuCreate(td=0, vcpu=0), TdFinalize(td=0)])
    assert all(p < 70 * R for p, _ in m.tds[0].control + m.vcpus[0].control)


def test_a_pin_on_a_page_in_use_is_an_impossible_event_naming_its_field() -> None:
    used = 73 * R
    m = _machine([*_boot(), Fault(vcpu=0, gfn=0x10, pfn=used)])
    m.run([Fault(vcpu=0, gfn=0x2000, tables=(72 * R + 5, used))])
    assert m.stopped is not None
    text = str(m.stopped)
    assert "tables[1]" in text and f"{used:#x}" in text and "already in use" in text


def test_a_control_pin_in_use_names_its_index() -> None:
    m = _machine([*_boot()])
    m.run([TdCreate(td=1, control=(TDR_TDCS[2],))])
    assert m.stopped is not None and "control[0]" in str(m.stopped)


def test_the_allocator_never_hands_out_a_pinned_page() -> None:
    for policy in ("lowest", "spread", "random"):
        mem = HostMemory(4 * R, policy, seed=1)
        first = mem.pick_free()
        assert first is not None
        region = first // R
        mem.pin(range(region * R, region * R + R - 1))  # all but the region's last page
        got = []
        for _ in range(3 * R + 1):  # three regions and the last page of the pinned one
            pfn = mem.pick_free()
            assert pfn is not None
            mem.set_owner(pfn, 1)
            got.append(pfn)
        assert not any(mem.is_pinned(p) for p in got), policy
        assert region * R + R - 1 in got, policy
        assert mem.pick_free() is None, policy  # what is left is pinned


def _low_pin_trace() -> list[Event]:
    """A capture's trace whose second TD's control pages are the lowest free pages: the pages
    the model's lowest-first allocator hands the first TD's cache top-up unless they are
    reserved from the start."""
    tdr = tuple(range(1 + Settings().tdcs_pages))  # region 0's first pages
    return [
        *_boot(),
        Fault(vcpu=0, gfn=0x10, pfn=73 * R, tables=TABLES),
        TdCreate(td=1, control=tdr),
    ]


def test_every_replay_of_a_capture_reserves_its_pinned_pages() -> None:
    """The app's replay (Timeline), check, replay, sweep metrics and explore reserve what a
    trace pins before its first event (reserved_pfns), as conform does: a page the kernel
    used later is never handed out earlier by the model (which stopped the replay with
    "already in use")."""
    from explorer.interleavings.search import Explorer
    from explorer.model.events import reserved_pfns
    from explorer.replay.timeline import replay
    from explorer.sweeps.metrics import run_metrics

    events = _low_pin_trace()
    unreserved = Machine(Settings())
    unreserved.run(events)
    assert unreserved.stopped is not None and "already in use" in str(unreserved.stopped)
    assert set(reserved_pfns(events)) >= set(events[-1].control or ())
    tl = replay(events, Settings())
    assert tl.stopped is None, tl.stopped
    last = tl.nr_steps - 1
    assert tl.state_at(last).step == last  # a seek's machine reserves them too
    assert tl.step(last).event == len(events) - 1
    assert run_metrics(events, Settings()).counters["pamt_lost_race"] == 0
    ex = Explorer(events, Settings())
    ex.run()
    assert ex.stopped is None, ex.stopped


def test_a_trace_that_names_no_table_or_control_page_reserves_nothing() -> None:
    """A hand-written trace's fault pfns are taken when their fault comes (its goldens stand)."""
    from explorer.model.events import reserved_pfns

    assert reserved_pfns([TdCreate(td=0), Fault(vcpu=0, gfn=1, pfn=5 * R)]) == []
