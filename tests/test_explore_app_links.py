"""A finding of the Interleavings page opens in Explore at the step where it fires, the step
the findings table shows, with a link that names the sample and the pinned schedule."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from explorer.ingest import parse_trace
from explorer.interleavings.job import (
    ExploreJob,
    decode_schedule,
    encode_schedule,
    explore_step,
    finding_link,
    violation_rows,
)
from explorer.interleavings.search import pin
from explorer.model.settings import Settings
from explorer.replay.timeline import replay

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"


def test_schedules_encode_in_runs_and_decode_back() -> None:
    orders = [["vcpu0"] * 5 + ["vcpu1", "vcpu1", "vcpu0"], [], ["td0", "vcpu12"]]
    text = encode_schedule(orders)
    assert text == "vcpu0*5.vcpu1*2.vcpu0~~td0.vcpu12"
    assert decode_schedule(text) == orders
    for bad, what in (
        ("vcpu0*0", "count"),
        ("vcpu0*x", "count"),
        ("Vcpu0", "CPU name"),
        ("vcpu0~../etc", "CPU name"),
        ("vcpu0*99999999", "count"),
    ):
        with pytest.raises(ValueError, match=what):
            decode_schedule(bad)


def _finding(sample: str, mode: str, code: str) -> tuple[dict, Settings]:  # type: ignore[type-arg]
    trace = parse_trace((SAMPLES / f"{sample}.jsonl").read_bytes(), f"{sample}.jsonl")
    settings = Settings().with_overrides({**trace.settings, "mode": mode})
    status = ExploreJob(trace.events, settings).wait(120)
    assert status.state == "done" and status.result is not None, status.message
    (v,) = [v for v in status.result["violations"] if v["code"] == code]
    return v, settings


def test_the_findings_step_is_where_the_pinned_replay_fires_it() -> None:
    v, settings = _finding("lost_race", "v6-no-recheck", "WARN_PAMT_ADD")
    trace = parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")
    tl = replay(pin(trace.events, v["orders"]), settings)
    fired = [d.step for d in tl.diagnostics if d.code == "WARN_PAMT_ADD"]
    assert fired and fired[0] == explore_step(v)
    (row,) = [r for r in violation_rows({"violations": [v]})]
    assert row["step"] == explore_step(v)


def _page_with_result(mode: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=90)
    at.run()
    at.selectbox(key="sample_select").set_value("lost_race").run()
    at.switch_page("app_pages/interleavings.py").run()
    at.selectbox(key="knob_mode").set_value(mode).run()
    at.button(key="btn_explore").click().run()
    end = time.monotonic() + 90
    while not any("distinct outcomes" in m.value for m in at.markdown):
        assert not at.exception, [e.value for e in at.exception]
        assert time.monotonic() < end, "the search did not finish in time"
        time.sleep(0.2)
        at.run()
    return at


def test_a_finding_opens_at_its_step_and_links_to_the_sample_and_schedule() -> None:
    at = _page_with_result("v6-no-recheck")
    table = next(df.value for df in at.dataframe if "code" in df.value.columns)
    row = table[table["code"] == "WARN_PAMT_ADD"].iloc[0]
    query = parse_qs(urlsplit(str(row["link"])).query)
    assert query["sample"] == ["lost_race"] and query["mode"] == ["v6-no-recheck"]
    assert query["step"] == [str(row["step"])]
    orders = decode_schedule(query["schedule"][0])
    assert len(orders) == 1 and {"vcpu0", "vcpu1"} == set(orders[0])
    at.button(key="btn_open_finding_WARN_PAMT_ADD").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state.cursor == int(row["step"])
    # Explore shows that step
    assert any(m.value.startswith(f"**Step {row['step']}** of") for m in at.markdown)
    # the share link names the sample and the schedule, not an upload
    assert at.query_params["sample"] == "lost_race"
    assert decode_schedule(at.query_params["schedule"]) == orders
    assert at.query_params["mode"] == "v6-no-recheck"


def _explore_from(query: dict[str, str]) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=90)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_finding_link_opens_explore_pinned_at_the_findings_step() -> None:
    v, settings = _finding("lost_race", "v6-no-recheck", "WARN_PAMT_ADD")
    trace = parse_trace((SAMPLES / "lost_race.jsonl").read_bytes(), "lost_race.jsonl")
    base = Settings().with_overrides(trace.settings)
    query = finding_link("lost_race", settings, base, v)
    at = _explore_from(query)
    step = explore_step(v)
    assert at.session_state.cursor == step
    assert at.session_state.loaded.schedule == query["schedule"]
    # the step Explore shows is the pinned replay's, where the finding fires
    tl = replay(pin(trace.events, v["orders"]), settings)
    header = next(m.value for m in at.markdown if m.value.startswith(f"**Step {step}** of"))
    assert f"of {tl.nr_steps - 1}" in header or f"of {tl.nr_steps}" in header
    assert "WARN_PAMT_ADD" in {d.code for d in tl.diagnostics if d.step == step}
    assert not any("ignored" in w.value for w in at.warning)
    # Explore replays the pinned events: the finding's order heads the concurrent group
    pins = [e.order for e in at.session_state.loaded.trace.events if e.op == "schedule"]
    assert pins == [tuple(o) for o in v["orders"]]
    assert at.query_params["schedule"] == query["schedule"]
    assert at.query_params["sample"] == "lost_race"


def test_a_bad_schedule_in_a_link_is_named_and_ignored() -> None:
    for bad, what in (("vcpu0*0", "count"), ("vcpu7.vcpu0", "not a CPU of lost_race")):
        at = _explore_from({"sample": "lost_race", "schedule": bad})
        shown = [t.value for t in at.text]
        assert any("schedule" in t and what in t for t in shown), shown
        assert at.session_state.loaded.schedule == ""
        assert "schedule" not in at.query_params
