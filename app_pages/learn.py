"""Learn: guided tours of the samples, and predict-the-next-step.

Tours are data (sample_traces/<sample>.tour.ndjson, explorer/teaching/tours.py); each stop is shown with
the view it names, drawn by the same view functions as the Explore page. A tour and its stop are
in the URL (``tour``, ``stop``), so a teacher can hand out a link to one slide.

Predict asks about the step about to be revealed; the questions and their answers come from the
replay (explorer/teaching/predict.py), so they follow the engine.

Tour text is the repository's, but it is shown like any other text we did not write here: with
``st.text`` (never as Markdown), as app_pages/common.py asks.
"""

from __future__ import annotations

from functools import partial

import streamlit as st

from app_pages import common
from app_pages.ui.step_panel import COMPACT_CSS
from app_pages.ui.tour_view import show_stop_full
from explorer.appsupport import parse_step_text
from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline
from explorer.teaching.handout import tour_handout_html
from explorer.teaching.predict import PredictionSession
from explorer.teaching.tours import ResolvedStop, TourError, resolve, tour_for, tour_names

#: The query parameters this page owns (the others are the Explore page's).
URL_KEYS = ("tour", "stop")
QUESTIONS_MIN, QUESTIONS_MAX, QUESTIONS_DEFAULT = 5, 20, 5
#: Where a prediction round starts (the ``predict_from`` radio).
START_TOUR, START_CURSOR, START_STEP = "tour", "cursor", "step"


# ------------------------------------------------------------------ tour
def _load(name: str) -> None:
    """Load a tour's sample, and let the sidebar's picker show it: its remembered choice would
    load the previous sample back, so it is forgotten (the picker then starts from the loaded
    sample, like the knobs load_sample resets). Call before the picker is drawn."""
    common.load_sample(name)
    st.session_state.pop("sample_select", None)


def _read_url(tours: list[str]) -> None:
    """On the session's first run of this page, take the tour and the stop from the URL."""
    if st.session_state.get("learn_url_read"):
        return
    st.session_state.learn_url_read = True
    tour = st.query_params.get("tour")
    if tour in tours:
        st.session_state.learn_tour = tour
        loaded: common.Loaded = st.session_state.loaded
        if loaded.name != tour:
            _load(tour)
        try:
            stop = parse_step_text(st.query_params.get("stop", "1"))
            st.session_state.learn_stop = max(stop - 1, 0)
        except ValueError:
            st.session_state.learn_stop = 0


def _write_url(tour: str | None, stop: int | None) -> None:
    """Put the tour and the 1-based stop in the URL, leaving every other parameter alone."""
    want = {"tour": tour, "stop": None if stop is None else str(stop + 1)}
    for key in URL_KEYS:
        value = want[key]
        if value is None:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != value:
            st.query_params[key] = value


def _tour_chosen() -> None:
    st.session_state.learn_stop = 0
    tour = st.session_state.learn_tour
    loaded: common.Loaded = st.session_state.loaded
    if tour is not None and loaded.name != tour:
        _load(tour)


def _move_stop(delta: int, n: int) -> None:
    st.session_state.learn_stop = min(max(int(st.session_state.learn_stop) + delta, 0), n - 1)


def tour_tab(tl: Timeline, tours: list[str], settings: Settings) -> ResolvedStop | None:
    """The tour's stop on screen (None when no tour of the loaded trace is open)."""
    loaded: common.Loaded = st.session_state.loaded
    if "learn_tour" not in st.session_state:
        st.session_state.learn_tour = loaded.name if loaded.name in tours else None
    tour_name = st.selectbox(
        "Tour",
        tours,
        key="learn_tour",
        on_change=_tour_chosen,
        placeholder="choose a tour",
        help="Every sample with a tour (sample_traces/<sample>.tour.ndjson)",
    )
    if tour_name is None:
        _write_url(None, None)
        st.caption("Choose a tour: it loads its sample trace.")
        return None
    if loaded.name != tour_name:
        st.info(f"This tour is of the sample {tour_name}, which is not the trace loaded now.")
        st.button(f"Load {tour_name}", key="btn_learn_load", on_click=_load, args=(tour_name,))
        return None
    try:
        tour = tour_for(tour_name)
        stops = resolve(tour, tl) if tour is not None else []
    except TourError as exc:
        st.error(
            "This tour does not fit the current replay (tours are written for the sample's own "
            "settings: try Reset to the trace's settings):"
        )
        st.code(str(exc), language=None)
        return None
    if tour is None or not stops:
        st.caption("This tour has no stops.")
        return None
    n = len(stops)
    k = min(max(int(st.session_state.get("learn_stop", 0)), 0), n - 1)
    st.session_state.learn_stop = k
    _write_url(tour_name, k)
    stop = stops[k]
    st.text(tour.title)
    if tour.description:
        st.caption(tour.description)
    c = st.columns([1, 1, 2, 3, 3], vertical_alignment="center")
    c[0].button("Prev", key="btn_tour_prev", on_click=_move_stop, args=(-1, n), disabled=k == 0)
    c[1].button(
        "Next",
        key="btn_tour_next",
        on_click=_move_stop,
        args=(1, n),
        disabled=k == n - 1,
        type="primary",
    )
    c[2].markdown(f"**Stop {k + 1} of {n}**")
    c[3].caption(f"{stop.stop.where()}: step {stop.step}")
    if c[4].button("Open this step in Explore", key="btn_tour_explore"):
        st.session_state.cursor = stop.step
        st.session_state.playing = False
        st.session_state.pop("place", None)  # the cursor is set here: keep it
        st.switch_page("app_pages/explore.py")
    st.markdown(COMPACT_CSS, unsafe_allow_html=True)  # Explore's layout: it fits 1280x720
    show_stop_full(tl, stop)
    st.download_button(
        "Download this tour as a handout (HTML)",
        # built on the click only: the page inlines plotly.js (a few MB) to work offline
        partial(tour_handout_html, tour, tl, settings),
        file_name=f"dpamt-tour-{tour_name}.html",
        mime="text/html",
        on_click="ignore",
        key="btn_tour_handout",
        help="One standalone page (works offline): every stop with its text, narration and view, "
        "laid out for printing",
    )
    return stop


# ------------------------------------------------------------------ predict
def _verdict(tl: Timeline, session: PredictionSession) -> None:
    last = session.answered[-1]
    if last.correct:
        st.success(f"Right: {last.question.answer}.")
    else:
        st.error(f"Not quite: the answer is {last.question.answer} (you said {last.given}).")
    step = tl.step(last.step)
    st.markdown(f"**Step {step.index}**, on {step.cpu} in `{step.function}`")
    st.text(step.narration)


def predict_tab(
    tl: Timeline, replay_key: tuple[object, ...], stop: ResolvedStop | None = None
) -> None:
    """A round of questions about the steps after a start: the tour's stop on screen (when a
    tour is open), Explore's cursor, or a step the learner types."""
    st.caption(
        "Guess the next step before it is revealed: the engine marks your answer from its own "
        "record of the step. Only the moments a lesson is about are asked (a race, a retry, a "
        "path, a pair or a refcount crossing 0, a drain), each once: a round may end early."
    )
    session: PredictionSession | None = st.session_state.get("predict")
    if session is not None and st.session_state.get("predict_replay") != replay_key:
        session = None  # another trace or other settings: the questions are of another replay
        st.session_state.predict = None
    c = st.columns([1, 3], vertical_alignment="bottom")
    total = c[0].number_input(
        "questions",
        min_value=QUESTIONS_MIN,
        max_value=QUESTIONS_MAX,
        value=QUESTIONS_DEFAULT,
        step=1,
        key="predict_n",
        help="At most: a round asks each moment of the trace once and may end early",
    )
    cursor = min(max(int(st.session_state.get("cursor", -1)), -1), tl.nr_steps - 1)
    starts = {START_CURSOR: cursor, START_STEP: -1}
    if stop is not None:
        starts = {START_TOUR: stop.step, **starts}
    labels = {
        START_TOUR: f"the tour's stop (step {stop.step if stop else '-'})",
        START_CURSOR: f"Explore's cursor (step {cursor})",
        START_STEP: "a step number",
    }
    if st.session_state.get("predict_from") not in starts:
        st.session_state.predict_from = next(iter(starts))  # the tour's stop when one is open
    origin = c[1].radio(
        "start after",
        list(starts),
        format_func=labels.__getitem__,
        horizontal=True,
        key="predict_from",
        help="The questions are about the steps after this one",
    )
    start = starts[origin]
    if origin == START_STEP:
        start = int(
            st.number_input(
                "step",
                min_value=-1,
                max_value=tl.nr_steps - 1,
                value=-1,
                step=1,
                key="predict_from_step",
                help="-1: from the first step",
            )
        )
    if st.button(f"Start after step {start}", key="btn_predict_start"):
        session = PredictionSession(start=start, total=int(total))
        session.advance(tl)
        st.session_state.predict = session
        st.session_state.predict_replay = replay_key
    if session is None:
        return
    if session.current is not None and not session.is_answered:
        q = session.current
        i = session.current_step
        st.markdown(f"**Question {len(session.answered) + 1} of {session.total}** (step {i})")
        if i > 0:
            prev = tl.step(i - 1)
            st.caption(f"So far (step {prev.index}, {prev.cpu}):")
            st.text(prev.narration)
        st.markdown(q.prompt)
        given: object
        if q.choices is not None:
            given = st.radio("your answer", list(q.choices), index=None, key=f"predict_answer_{i}")
        else:
            given = st.number_input(
                "your answer", min_value=0, value=0, step=1, key=f"predict_answer_{i}"
            )
        if st.button("Check", key="btn_predict_check", disabled=given is None):
            session.answer(str(given))
            st.rerun()
        return
    if session.is_answered:
        _verdict(tl, session)
    if not session.done:
        if st.button("Next question", key="btn_predict_next", type="primary"):
            session.advance(tl)
            st.rerun()
        return
    if session.exhausted and len(session.answered) < session.total:
        st.caption("The trace has no more steps to ask about.")
    st.markdown(f"**Score: {session.score} of {len(session.answered)}**")
    st.dataframe(common.safe_frame(session.rows()), hide_index=True, width="stretch")


def main() -> None:
    problems = common.init_session()
    tours = tour_names()
    _read_url(tours)
    common.sidebar_trace_picker()
    settings: Settings = common.sidebar_settings()
    loaded: common.Loaded = st.session_state.loaded
    st.title("Learn")
    for p in problems:
        if not any(f"{k!r}" in p for k in URL_KEYS):  # this page's own parameters
            st.warning("A link parameter was ignored:")
            st.text(p)
    st.text(f"{loaded.source}: {loaded.trace.title or '(untitled trace)'}")
    tl = common.timeline(loaded, settings)
    if tl.nr_steps == 0:
        st.info("This trace produced no step.")
        return
    tab_tour, tab_predict = st.tabs(["Tour", "Predict"])
    with tab_tour:
        stop = tour_tab(tl, tours, settings)
    with tab_predict:
        predict_tab(tl, common.replay_key(loaded, settings), stop)


main()
