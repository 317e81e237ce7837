"""``explore`` and the single-CPU batches around its groups: their kernel WARNs and violations
are findings (with the schedule that reaches them), every outcome carries the diagnostics of
the whole run, not only of its last group, and an impossible event is exit 2 with its line and
the schedule that reaches it (found by races written outside the project, issue 26)."""

from __future__ import annotations

from pathlib import Path

from explorer.ingest import parse_trace
from explorer.interleavings.job import explore_step, violation_rows
from explorer.interleavings.search import explore, pin
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from tests.purechild import child_runner, in_process, run_pure
from tests.test_explore import run

HEAD = (
    '{"format": "dpamt-trace", "version": 1, "title": "t", "settings": {"allocator": "percpu"}}\n'
)
SETUP = (
    '{"op": "td_create", "td": 0}\n{"op": "vcpu_create", "td": 0, "vcpu": 0}\n'
    '{"op": "vcpu_create", "td": 0, "vcpu": 1}\n{"op": "td_finalize", "td": 0}\n'
)
GROUP = (
    '{"op": "fault", "vcpu": 0, "gfn": "0x2000", "t": 1}\n'
    '{"op": "fault", "vcpu": 1, "gfn": "0x3000", "t": 1}\n'
)
#: a PAMT.ADD that fails (the kernel's WARN_ON_ONCE in tdx_pamt_get) on a single-CPU fault
WARN = '{"op": "inject", "what": "pamt_add_fail"}\n{"op": "fault", "vcpu": 0, "gfn": "0x1000", "pfn": "0x8000"}\n'
BEFORE = HEAD + SETUP + WARN + GROUP
AFTER = HEAD + SETUP + GROUP + WARN
ALONE = HEAD + SETUP + WARN
#: two vCPUs race for one cold region's pair under v6-no-recheck (a second PAMT.ADD under some
#: orders), then a second group on other regions
TWO_GROUPS = (
    HEAD.replace('"percpu"}', '"percpu", "mode": "v6-no-recheck"}')
    + SETUP
    + '{"op": "fault", "vcpu": 0, "gfn": "0x10"}\n{"op": "fault", "vcpu": 1, "gfn": "0x11"}\n'
    + '{"op": "fault", "vcpu": 0, "gfn": "0x1000", "pfn": "0x8000", "t": 1}\n'
    + '{"op": "fault", "vcpu": 1, "gfn": "0x2000", "pfn": "0x8001", "t": 1}\n'
    + '{"op": "fault", "vcpu": 0, "gfn": "0x3000", "t": 2}\n'
    + '{"op": "fault", "vcpu": 1, "gfn": "0x4000", "t": 2}\n'
)
#: a fault of a vCPU no event created: impossible before any group
PREFIX_IMPOSSIBLE = HEAD + SETUP + '{"op": "fault", "vcpu": 9, "gfn": "0x5"}\n' + GROUP
#: a zap of the gfn the concurrent fault maps: impossible in the orders where the zap comes first
ZAP_FIRST = (
    HEAD
    + SETUP
    + '{"op": "fault", "vcpu": 0, "gfn": "0x10"}\n'
    + '{"op": "fault", "vcpu": 0, "gfn": "0x1000", "pfn": "0x8000", "t": 1}\n'
    + '{"op": "zap", "td": 0, "gfn": "0x1000", "t": 1}\n'
)


@child_runner
def test_on_the_pure_engine() -> None:
    run_pure(__file__)


def _explore(text: str) -> tuple[dict, Settings, list]:  # type: ignore[type-arg]
    trace = parse_trace(text.encode(), "t.jsonl")
    settings = Settings().with_overrides(trace.settings)
    return explore(trace.events, settings), settings, list(trace.events)


@in_process
def test_a_warn_before_the_first_group_is_a_finding_without_a_schedule() -> None:
    r, settings, events = _explore(BEFORE)
    (v,) = [v for v in r["violations"] if v["code"] == "WARN_PAMT_ADD"]
    assert v["group"] == -1 and v["schedule"] == [] and v["orders"] == []
    assert not r["ok"] and all("warning:WARN_PAMT_ADD" in o["diagnostics"] for o in r["outcomes"])
    # the step the app opens is where the replay raises it
    diags = replay(events, settings).diagnostics
    assert any(d.code == "WARN_PAMT_ADD" and d.step == explore_step(v) for d in diags)
    assert violation_rows(r)[0]["group"] == 0  # (0: before the first group)


@in_process
def test_a_warn_after_the_last_group_is_found_with_the_schedule_before_it() -> None:
    r, settings, events = _explore(AFTER)
    (v,) = [v for v in r["violations"] if v["code"] == "WARN_PAMT_ADD"]
    assert v["group"] == 0 and len(v["orders"]) == 1 and v["schedule"] == v["orders"][0]
    diags = replay(pin(events, v["orders"]), settings).diagnostics
    assert any(d.code == "WARN_PAMT_ADD" and d.step == explore_step(v) for d in diags)
    assert all("warning:WARN_PAMT_ADD" in o["diagnostics"] for o in r["outcomes"])


@in_process
def test_a_trace_without_a_group_reports_its_warn() -> None:
    r, _, _ = _explore(ALONE)
    assert r["groups"] == 0 and [v["code"] for v in r["violations"]] == ["WARN_PAMT_ADD"]
    assert r["outcomes"][0]["diagnostics"] == ["warning:WARN_PAMT_ADD"]


@in_process
def test_an_outcome_keeps_the_diagnostics_of_earlier_groups() -> None:
    """Group 1 issues a second PAMT.ADD under some orders; group 2 is independent of it. The
    outcomes after group 2 that were reached through such an order say so."""
    r, _, _ = _explore(TWO_GROUPS)
    assert r["complete"] and r["groups"] == 2
    assert "WARN_PAMT_ADD" in [v["code"] for v in r["violations"]]
    with_warn = [o for o in r["outcomes"] if "warning:WARN_PAMT_ADD" in o["diagnostics"]]
    without = [o for o in r["outcomes"] if "warning:WARN_PAMT_ADD" not in o["diagnostics"]]
    assert with_warn and without  # (some orders of group 1 do not issue it)
    trace = parse_trace(TWO_GROUPS.encode(), "t.jsonl")
    settings = Settings().with_overrides(trace.settings)
    for o in r["outcomes"]:  # each outcome's schedule replays to what it says
        codes = {d.code for d in replay(pin(trace.events, o["orders"]), settings).diagnostics}
        assert ("WARN_PAMT_ADD" in codes) == (o in with_warn)


def test_an_impossible_event_before_any_group_is_exit_2_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(PREFIX_IMPOSSIBLE)
    code, data, err = run(str(f), "--json")
    assert code == 2 and data is not None, err
    at = data["impossible_at"]
    assert at["line"] == 6 and at["group"] == -1 and at["schedule"] == []
    assert "bad.jsonl:6:1:" in err and "vCPU 9" in err and "before any concurrent group" in err
    # check names the same line
    p = run_check(str(f))
    assert "bad.jsonl:6:1:" in p


def test_an_event_impossible_under_some_order_gives_the_schedule(tmp_path: Path) -> None:
    f = tmp_path / "zap.jsonl"
    f.write_text(ZAP_FIRST)
    code, data, err = run(str(f), "--json")
    assert code == 2 and data is not None, err
    at = data["impossible_at"]
    assert at["line"] == 8 and at["group"] == 0 and at["schedule"][-1] == "td0"
    assert "zap.jsonl:8:1:" in err and "under the schedule" in err
    # the outcomes of the other orders are still listed
    assert data["outcomes"]
    # that schedule, pinned and replayed, stops at the same line
    trace = parse_trace(ZAP_FIRST.encode(), "zap.jsonl")
    settings = Settings().with_overrides(trace.settings)
    tl = replay(pin(trace.events, at["orders"]), settings)
    assert tl.stopped is not None and tl.stopped.line == 8  # (pinned events keep their lines)


def run_check(path: str) -> str:
    import subprocess
    import sys

    from tests.test_explore import ROOT

    p = subprocess.run(
        [sys.executable, "-m", "explorer", "check", path],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    return p.stdout + p.stderr


def test_the_app_job_shows_the_result_of_a_search_with_an_impossible_event() -> None:
    """The child exits 2 but still prints its result: the job keeps it (the page then says
    which line cannot happen under which schedule); an invalid file prints none."""
    from explorer.interleavings.job import ExploreJob

    trace = parse_trace(ZAP_FIRST.encode(), "zap.jsonl")
    status = ExploreJob(trace.events, Settings().with_overrides(trace.settings), 10_000).wait(120)
    assert status.state == "done", status.message
    r = status.result
    assert r is not None and r["impossible_at"]["line"] == 8 and r["outcomes"]


#: a fault pins a page the other vCPU's first cache top-up (from its per-CPU block) would take
PINNED_IN_A_BLOCK = (
    HEAD
    + SETUP
    + '{"op": "fault", "vcpu": 0, "gfn": "0x10"}\n'
    + '{"op": "fault", "vcpu": 0, "gfn": "0x1000", "pfn": "0x10a", "t": 1}\n'
    + '{"op": "fault", "vcpu": 1, "gfn": "0x2000", "t": 1}\n'
)


@in_process
def test_a_page_the_trace_names_is_free_for_its_fault_in_every_order() -> None:
    """The search reserves every page the trace names: no other CPU's allocation takes it
    first, so no order makes the trace's own fault impossible (or its pfn taken)."""
    r, settings, events = _explore(PINNED_IN_A_BLOCK)
    assert r["ok"] and "impossible" not in r and r["violations"] == []
    assert all(o["diagnostics"] == [] for o in r["outcomes"])
    assert replay(events, settings).stopped is None


#: a 2 MiB fault under v6: KVM_BUG_ON (a WARN_ON_ONCE that bugs the VM) fires
TWO_MEG = (
    HEAD
    + SETUP
    + '{"op": "fault", "vcpu": 0, "gfn": "0x200", "level": "2m", "t": 1}\n'
    + '{"op": "fault", "vcpu": 1, "gfn": "0x3000", "t": 1}\n'
)


@in_process
def test_the_kernels_bug_checks_are_findings() -> None:
    """KVM_BUG_ON is the kernel's WARN (and bugs the VM): a finding, exit 1, like a WARN."""
    r, _, _ = _explore(TWO_MEG)
    (v,) = [v for v in r["violations"] if v["code"] == "KVM_BUG_ON"]
    assert v["kind"] == "error" and not r["ok"]


def test_explore_and_check_agree_on_a_page_taken_before_any_group(tmp_path: Path) -> None:
    """The batches before the first group run as a replay runs them (only a group's own pages
    are reserved for its search): a fault naming the TD's control page is refused by both."""
    f = tmp_path / "taken.jsonl"
    f.write_text(HEAD + SETUP + '{"op": "fault", "vcpu": 0, "gfn": "0x5", "pfn": "0x0"}\n' + GROUP)
    code, _, err = run(str(f), "--json")
    assert code == 2 and "taken.jsonl:6:1: pfn 0x0 is not free" in err
    assert "taken.jsonl:6:1: pfn 0x0 is not free" in run_check(str(f))
