"""The Compare designs page's sweep (AppTest, no browser): a background job, its progress,
its chart, and the Cluster expander's scheduler address."""

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")


def _compare(monkeypatch: pytest.MonkeyPatch, sample: str = "lost_race") -> AppTest:
    monkeypatch.delenv("DPAMT_SCHEDULER", raising=False)
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params["sample"] = sample
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _sweep_chart(at: AppTest) -> dict | None:  # type: ignore[type-arg]
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        names = {t.get("name") for t in spec.get("data", [])}
        if "dpamt_gets_per_fault" in json.dumps(spec.get("layout", {})) or names >= {"v6"}:
            return spec  # type: ignore[no-any-return]
    return None


def _run_until_done(at: AppTest, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while any(k == "sweep_jobs" for k in at.session_state) and not all(
        j.poll().finished for j in at.session_state.sweep_jobs.values()
    ):
        assert time.monotonic() < deadline, "the sweep did not finish in time"
        time.sleep(0.2)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    at.run()  # the rerun after the last progress: the chart
    assert not at.exception, [e.value for e in at.exception]


def test_the_sweep_runs_in_the_background_and_shows_its_chart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = _compare(monkeypatch)
    at.button(key="btn_sweep").click().run()
    assert not at.exception, [e.value for e in at.exception]
    _run_until_done(at)
    [job] = at.session_state.sweep_jobs.values()
    status = job.poll()
    assert status.state == "done" and status.done == status.total == 3 * 9  # 3 modes x 0..8
    assert len(job.rows()) == 27 and {r["worker"] for r in job.rows()} == {"local"}
    chart = _sweep_chart(at)
    assert chart is not None
    assert {t["name"] for t in chart["data"]} >= {"v6", "kvm-style-cache"}
    assert "points in" in " ".join(c.value for c in at.caption)


def test_a_running_sweep_shows_progress_and_cancels(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _compare(monkeypatch, sample="workload_two_tds")
    at.slider(key="sweep_hi").set_value(12).run()
    # slow every point down so the test sees the job running (the page's sweep is fast)
    import explorer.sweeps.sweep as sweep

    real = sweep.run_point

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "run_point", slow)
    at.button(key="btn_sweep").click().run()
    assert not at.exception, [e.value for e in at.exception]
    [job] = at.session_state.sweep_jobs.values()
    assert not job.poll().finished
    [bar] = at.get("progress")
    assert "of 39 points" in bar.proto.text and "points/s" in bar.proto.text
    assert "ETA" in bar.proto.text
    at.button(key="btn_sweep_cancel").click().run()
    assert job.cancel_requested
    _run_until_done(at, 30)
    status = job.poll()
    assert status.state == "cancelled" and status.done < 39
    assert "The sweep was cancelled" in " ".join(w.value for w in at.warning)
    if status.done:
        assert _sweep_chart(at) is not None


def test_a_bad_scheduler_address_says_so_and_disables_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = _compare(monkeypatch)
    at.text_input(key="sweep_scheduler").set_value("localhost:8786").run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "Bad scheduler address" in errors and "tcp://HOST:PORT" in errors
    assert at.button(key="btn_sweep").disabled


def test_an_unreachable_scheduler_fails_the_sweep_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, free_port: int
) -> None:
    port = free_port
    at = _compare(monkeypatch)
    at.text_input(key="sweep_scheduler").set_value(f"tcp://127.0.0.1:{port}").run()
    start = time.monotonic()
    at.button(key="btn_sweep").click().run()
    _run_until_done(at, 15)
    assert time.monotonic() - start < 15
    errors = " ".join(e.value for e in at.error)
    assert "The sweep failed" in errors and f"127.0.0.1:{port}" in errors


def test_the_scheduler_starts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPAMT_SCHEDULER", "tcp://10.1.2.3:8786")
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert at.text_input(key="sweep_scheduler").value == "tcp://10.1.2.3:8786"
    assert "on the Dask cluster at tcp://10.1.2.3:8786" in " ".join(c.value for c in at.caption)
