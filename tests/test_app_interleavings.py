"""The Interleavings page with Streamlit's AppTest: a real search in a child process, its
outcomes and findings, and "Open in Explore" on a finding."""

import time
from collections.abc import Callable
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
DEADLINE = 60.0


def _page(sample: str, mode: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.selectbox(key="sample_select").set_value(sample).run()
    at.switch_page("app_pages/interleavings.py").run()
    if mode is not None:
        at.selectbox(key="knob_mode").set_value(mode).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _explore(at: AppTest) -> None:
    """Start the search and rerun until its result is shown (or the deadline)."""
    at.button(key="btn_explore").click().run()
    _rerun_until(at, _has_result)


def _has_result(at: AppTest) -> bool:
    return any("distinct outcomes" in m.value for m in at.markdown)


def _rerun_until(at: AppTest, done: Callable[[AppTest], bool]) -> None:
    """Rerun the page until ``done(at)`` (a running search reports through reruns), failing
    on an exception, an error element or the deadline."""
    end = time.monotonic() + DEADLINE
    while not done(at):
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        assert time.monotonic() < end, "the search did not finish in time"
        time.sleep(0.2)
        at.run()


def _table(at: AppTest, column: str):  # type: ignore[no-untyped-def]
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a column {column!r}")


def test_lost_race_has_three_outcomes_and_no_finding() -> None:
    """Four end states, three outcomes: two end states differ only in which free pages the
    allocator handed out (page identities are abstracted in outcomes)."""
    at = _page("lost_race")
    _explore(at)
    outcomes = _table(at, "lost races")
    assert len(outcomes) == 3
    assert sorted(outcomes["lost races"]) == [0, 0, 1]
    assert any("No schedule violates" in s.value for s in at.success)
    # the reduced search by default, and the counts say so
    assert any("states searched (reduced)" in m.value for m in at.markdown)
    assert "schedules searched" in outcomes.columns
    # a rerun keeps the result: the search is not started again
    at.run()
    assert len(_table(at, "lost races")) == 3
    assert not at.button(key="btn_explore").disabled
    # the full search when the reduction is off: the same outcomes, all schedules counted
    at.toggle(key="explore_reduction").set_value(False).run()
    _explore(at)
    full = _table(at, "lost races")
    assert sorted(full["lost races"]) == [0, 0, 1] and "schedules" in full.columns
    assert any("540** states (full search)" in m.value for m in at.markdown)


def test_a_finding_opens_in_explore_pinned_at_its_departure() -> None:
    at = _page("lost_race", mode="v6-no-recheck")
    _explore(at)
    findings = _table(at, "code")
    assert "WARN_PAMT_ADD" in list(findings["code"])
    at.button(key="btn_open_finding_WARN_PAMT_ADD").click().run()
    assert not at.exception, [e.value for e in at.exception]
    loaded = at.session_state.loaded
    # a sample stays a sample, pinned: its share link names it and the turn orders
    assert loaded.name == "lost_race" and loaded.schedule
    assert loaded.source == "lost_race-pinned.jsonl"
    assert at.session_state.overrides["mode"] == "v6-no-recheck"
    step = at.session_state.cursor
    assert step >= 0
    # Explore is showing, at that step
    assert any(m.value.startswith(f"**Step {step}** of") for m in at.markdown)


def test_the_search_allocates_per_cpu_unless_the_user_says_otherwise() -> None:
    """The trace names no allocator: the search takes the per-CPU one (a toggle, on), under
    which v6-locked's lost race has 2 end states; off, the trace's own (lowest), whose end
    states also differ in which free pages the top-ups got: 4."""
    at = _page("lost_race", mode="v6-locked")
    assert at.toggle(key="explore_percpu").value is True
    assert any(c.value == "allocator: percpu" for c in at.caption)
    _explore(at)
    assert any("(2 end states" in m.value for m in at.markdown)
    at.toggle(key="explore_percpu").set_value(False).run()
    assert any(c.value == "allocator: lowest" for c in at.caption)
    _explore(at)
    assert any("(4 end states" in m.value for m in at.markdown)
    # named in the sidebar: no toggle, the sidebar's allocator
    at.selectbox(key="knob_allocator").set_value("spread").run()
    assert not [t for t in at.toggle if t.key == "explore_percpu"]
    assert any(c.value == "allocator: spread" for c in at.caption)


def test_a_search_stopped_by_its_limit_shows_and_opens_what_it_reached() -> None:
    at = _page("cold_race_3vcpu")
    at.number_input(key="explore_max_states").set_value(1_000).run()
    at.button(key="btn_explore").click().run()
    end = time.monotonic() + DEADLINE
    while not any(w.value.startswith("Incomplete:") for w in at.warning):
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        assert time.monotonic() < end, "the search did not stop in time"
        time.sleep(0.2)
        at.run()
    assert any(h.value == "Reached before the stop" for h in at.subheader)
    reached = _table(at, "reached")
    assert len(reached) >= 1 and "lost races" in reached.columns
    assert not any("schedules" in c for c in reached.columns)
    at.button(key="btn_open_reached_1").click().run()
    assert not at.exception, [e.value for e in at.exception]
    loaded = at.session_state.loaded
    assert loaded.name == "cold_race_3vcpu" and loaded.schedule
    assert any(m.value.startswith("**Step ") for m in at.markdown)


def test_an_event_impossible_under_some_order_names_its_line_in_the_users_file() -> None:
    """The search reads a copy of the upload; the page gives the line of the user's own file
    (here after two comment lines) and the schedule that reaches it."""
    from tests.test_explore_plain import ZAP_FIRST

    text = "# a zap racing the fault that maps its gfn\n\n" + ZAP_FIRST
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.file_uploader[0].set_value(("zap.jsonl", text.encode(), "application/octet-stream")).run()
    assert at.session_state.loaded.name == "upload"
    at.switch_page("app_pages/interleavings.py").run()
    at.button(key="btn_explore").click().run()
    _rerun_until(at, lambda at: any("cannot happen" in w.value for w in at.warning))
    (w,) = [w for w in at.warning if "cannot happen" in w.value]
    assert "line 10 (event 7)" in w.value and "td0" in w.value
    assert _table(at, "lost races") is not None  # the other orders' outcomes


def test_a_search_past_the_servers_limit_waits_and_then_runs() -> None:
    """With every search slot taken (here: one, by a long search of another session), Explore
    queues the page's search and says so; it runs once the slot frees."""
    import threading

    from explorer.cli.main import resolve_settings
    from explorer.ingest import parse_trace
    from explorer.interleavings import job as J

    saved = (J.MAX_SEARCHES, J._SLOTS)
    J.MAX_SEARCHES, J._SLOTS = 1, threading.Semaphore(1)
    try:
        at = _page("lost_race")
        text = (ROOT / "sample_traces" / "race_three_cpus.jsonl").read_bytes()
        trace = parse_trace(text, "race_three_cpus")
        other = J.ExploreJob(
            trace.events,
            resolve_settings(trace, ["mode=v6-locked"]),
            1_000_000,
            reduction=False,  # (the full search: long enough to hold the slot)
        )
        at.button(key="btn_explore").click().run()
        assert any("Queued: waiting for a free search" in i.value for i in at.info)
        assert at.button(key="btn_explore").disabled
        other.stop()
        _rerun_until(at, _has_result)
        assert len(_table(at, "lost races")) == 3
    finally:
        J.MAX_SEARCHES, J._SLOTS = saved
