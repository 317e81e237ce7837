"""The Learn page with Streamlit's AppTest (no browser): a whole tour, a prediction round."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer.ingest import parse_trace
from explorer.model.settings import Settings
from explorer.replay.timeline import replay
from explorer.teaching.predict import PredictionSession
from explorer.teaching.tours import resolve, tour_for

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")


def _learn(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    for k, v in params.items():
        at.query_params[k] = v
    # straight to the page, as a link to it does (a first run of Explore would rewrite the URL)
    at.switch_page("app_pages/learn.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _stop_text(at: AppTest) -> str:
    return next((m.value for m in at.markdown if m.value.startswith("**Stop ")), "")


def _texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def test_the_lost_race_tour_from_first_stop_to_last() -> None:
    tour = tour_for("lost_race")
    assert tour is not None
    n = len(tour.stops)
    at = _learn()
    at.selectbox(key="learn_tour").set_value("lost_race").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state.loaded.name == "lost_race"
    assert at.session_state.sample_select == "lost_race"  # the sidebar follows
    assert _stop_text(at) == f"**Stop 1 of {n}**"
    assert tour.stops[0].narration in _texts(at)
    assert at.button(key="btn_tour_prev").disabled
    seen = [_stop_text(at)]
    for k in range(2, n + 1):
        at.button(key="btn_tour_next").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert _stop_text(at) == f"**Stop {k} of {n}**"
        assert tour.stops[k - 1].narration in _texts(at)
        assert tour.stops[k - 1].look in _texts(at)
        assert at.query_params["stop"] == [str(k)] or at.query_params["stop"] == str(k)
        seen.append(_stop_text(at))
    assert len(set(seen)) == n  # the stop text changed at every Next
    assert at.button(key="btn_tour_next").disabled  # the last stop is reached
    at.button(key="btn_tour_prev").click().run()
    assert _stop_text(at) == f"**Stop {n - 1} of {n}**"


def test_a_tour_link_opens_at_its_stop() -> None:
    at = _learn(tour="lost_race", stop="3")
    assert at.session_state.loaded.name == "lost_race"
    tour = tour_for("lost_race")
    assert tour is not None
    assert _stop_text(at) == f"**Stop 3 of {len(tour.stops)}**"
    assert tour.stops[2].narration in _texts(at)
    assert not any("'tour'" in t for t in _texts(at))  # not reported as an unknown parameter


def test_open_a_stop_in_explore() -> None:
    at = _learn(tour="lost_race", stop="5")
    path = ROOT / "sample_traces" / "lost_race.jsonl"
    trace = parse_trace(path.read_bytes(), path.name)
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    tour = tour_for("lost_race")
    assert tour is not None
    want = resolve(tour, tl)[4].step
    at.button(key="btn_tour_explore").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state.cursor == want
    assert any(m.value.startswith(f"**Step {want}** of") for m in at.markdown)


def test_a_prediction_round_with_the_right_answers_scores_5_of_5() -> None:
    # a sample with five moments to ask about after step 0 (a slow path, a pair installed, a
    # contested fast path, a race won and lost): a round asks each once
    at = _learn(sample="workload_two_tds", step="0")
    path = ROOT / "sample_traces" / "workload_two_tds.jsonl"
    trace = parse_trace(path.read_bytes(), path.name)
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    expected = PredictionSession(start=0, total=5)
    at.number_input(key="predict_n").set_value(5).run()
    at.button(key="btn_predict_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    for n in range(5):
        q = expected.advance(tl)
        assert q is not None
        step = expected.current_step
        assert at.session_state.predict.current == q  # the page asks what the engine asks
        if q.choices is not None:
            at.radio(key=f"predict_answer_{step}").set_value(q.answer).run()
        else:
            at.number_input(key=f"predict_answer_{step}").set_value(int(q.answer)).run()
        at.button(key="btn_predict_check").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert any(s.value.startswith("Right") for s in at.success), n
        expected.answer(q.answer)
        assert tl.step(step).narration in _texts(at)
        if n < 4:
            at.button(key="btn_predict_next").click().run()
    assert any(m.value == "**Score: 5 of 5**" for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["right"]) == [True] * 5
    assert list(table["step"]) == [a.step for a in expected.answered]


def test_a_round_starts_at_the_tour_stop_or_at_a_chosen_step() -> None:
    at = _learn(tour="td_lifecycle", stop="3")
    path = ROOT / "sample_traces" / "td_lifecycle.jsonl"
    trace = parse_trace(path.read_bytes(), path.name)
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    tour = tour_for("td_lifecycle")
    assert tour is not None
    stop = resolve(tour, tl)[2].step
    assert at.radio(key="predict_from").value == "tour"  # the tour's stop, when one is open
    at.button(key="btn_predict_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state.predict.start == stop
    assert at.session_state.predict.current_step > stop
    at.radio(key="predict_from").set_value("step").run()
    at.number_input(key="predict_from_step").set_value(150).run()
    at.button(key="btn_predict_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    session = at.session_state.predict
    assert session.start == 150 and session.current_step > 150
    at.radio(key="predict_from").set_value("cursor").run()
    at.button(key="btn_predict_start").click().run()
    assert at.session_state.predict.start == at.session_state.cursor


def test_a_wrong_answer_is_marked_wrong() -> None:
    at = _learn(sample="lost_race", step="120")
    at.button(key="btn_predict_start").click().run()
    session = at.session_state.predict
    q, step = session.current, session.current_step
    if q.choices is not None:
        wrong = next(c for c in q.choices if c != q.answer)
        at.radio(key=f"predict_answer_{step}").set_value(wrong).run()
    else:
        at.number_input(key=f"predict_answer_{step}").set_value(int(q.answer) + 1).run()
    at.button(key="btn_predict_check").click().run()
    assert any(e.value.startswith("Not quite") for e in at.error)
    assert at.session_state.predict.score == 0


def test_a_tour_stop_is_the_full_explore_view_with_its_element_outlined() -> None:
    from app_pages.ui.tour_view import LOOK_AT, highlight_css

    tour = tour_for("lost_race")
    assert tour is not None
    at = _learn(tour="lost_race", stop="1")
    trace = parse_trace((ROOT / "sample_traces" / "lost_race.jsonl").read_bytes(), "lr")
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    stops = resolve(tour, tl)
    views = set()
    for k, stop in enumerate(stops):
        if k:
            at.button(key="btn_tour_next").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.query_params["tour"] == "lost_race" and at.query_params["stop"] == str(k + 1)
        # Explore's view at the stop's step: map, caches, the step's header, code and locks
        charts = {c.proto.id for c in at.get("plotly_chart")}
        assert len(charts) >= 2
        assert any(m.value.startswith(f"**Step {stop.step}** of") for m in at.markdown)
        # the teacher's text beside it, and the element the stop names outlined
        assert stop.stop.look in _texts(at) and stop.stop.narration in _texts(at)
        css = [m.value for m in at.markdown if "outline:3px" in m.value]
        assert css == [highlight_css(stop.stop.view)]
        target = LOOK_AT.get(stop.stop.view, "st-key-tour_extra")
        assert f".{target}{{outline" in css[0]
        views.add(stop.stop.view)
    assert len(views) >= 2  # the tour points at more than one element
