"""Predict-the-next-step: the engine's own answers agree with the recorded steps."""

from pathlib import Path

import pytest

from explorer.ingest import parse_trace
from explorer.model.settings import Settings
from explorer.replay.timeline import Timeline, replay
from explorer.teaching.predict import (
    MOMENT_FLAGS,
    PredictionSession,
    Question,
    batch_moments,
    check,
    moment,
    moment_index,
    questions_at,
    rank,
    vcpu_id,
)
from explorer.teaching.tours import resolve, tour_for, tour_names

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def _timeline(name: str) -> Timeline:
    path = SAMPLES / f"{name}.jsonl"
    trace = parse_trace(path.read_bytes(), path.name)
    return replay(trace.events, Settings().with_overrides(trace.settings))


@pytest.fixture(scope="module")
def lost_race() -> Timeline:
    return _timeline("lost_race")


@pytest.fixture(scope="module")
def cold_region() -> Timeline:
    return _timeline("cold_region")


def _all(tl: Timeline) -> list[tuple[int, Question]]:
    return [(i, q) for i in range(tl.nr_steps) for q in questions_at(tl, i)]


@pytest.mark.parametrize("name", ["lost_race", "cold_region"])
def test_every_answer_agrees_with_the_recorded_step(name: str) -> None:
    tl = _timeline(name)
    asked = _all(tl)
    assert {q.kind for _, q in asked} >= {"path", "region"}
    for i, q in asked:
        s = tl.step(i)
        if q.kind == "region":
            changed = {e.key for e in s.effects if e.kind in ("refcount", "pair")}
            assert q.answer == f"region {changed.pop()}"  # never "none"
            assert q.choices is not None and q.answer in q.choices
        elif q.kind == "cache":
            vcpu = vcpu_id(s.cpu)
            assert vcpu is not None and q.choices is None
            after = next(v for v in tl.state_at(i).vcpus if v.vcpu == vcpu)
            assert int(q.answer) == len(after.pamt_cache)
        elif q.kind == "path":
            assert s.label in ("pamt_get.fast", "pamt_get.slow")
            assert q.answer == s.label.removeprefix("pamt_get.")
        elif q.kind == "race":
            assert q.answer == ("yes" if s.label == "pamt_get.lost_race" else "no")
        else:
            raise AssertionError(q.kind)
        assert check(q, q.answer)


def test_lost_race_asks_about_the_race_and_the_loser_answer_is_yes(lost_race: Timeline) -> None:
    races = [(i, q) for i, q in _all(lost_race) if q.kind == "race"]
    lost = [i for i, q in races if q.answer == "yes"]
    won = [i for i, q in races if q.answer == "no"]
    assert [lost_race.step(i).label for i in lost] == ["pamt_get.lost_race"]
    assert lost_race.step(lost[0]).cpu == "vcpu1"
    # the winner (vcpu0 in the same race) is asked too, and does not lose
    assert any(
        lost_race.step(i).label == "pamt_get.add" and lost_race.step(i).cpu == "vcpu0" for i in won
    )
    # each race question comes right after the same CPU took pamt_lock
    for i in lost + won:
        s = lost_race.step(i)
        prev = [p for p in lost_race.steps_between(i - 20, i) if p.cpu == s.cpu][-1]
        assert prev.label == "pamt_get.lock"


def test_cold_region_cache_counts_follow_topup_and_pops(cold_region: Timeline) -> None:
    counts = [
        (cold_region.step(i).label, int(q.answer))
        for i, q in _all(cold_region)
        if q.kind == "cache"
    ]
    # asked only at drains (a pop), each a page fewer than the one before it
    assert counts and {label for label, _ in counts} == {"pamt_get.pop"}
    assert [c for _, c in counts[:2]] == [9, 8]


def test_path_question_only_at_the_decision(cold_region: Timeline) -> None:
    for i, q in _all(cold_region):
        if q.kind == "path":
            assert cold_region.step(i).label in ("pamt_get.fast", "pamt_get.slow")
    assert questions_at(cold_region, -1) == []
    assert questions_at(cold_region, cold_region.nr_steps) == []


def test_check_numbers_and_text() -> None:
    n = Question("cache", "?", None, "8")
    assert check(n, 8) and check(n, "8") and check(n, " 8 ") and check(n, 8.0)
    assert not check(n, 9) and not check(n, "eight")
    t = Question("path", "?", ("fast", "slow"), "slow")
    assert check(t, "Slow") and check(t, " SLOW ") and not check(t, "fast")


@pytest.mark.parametrize("name", ["lost_race", "cold_region"])
def test_a_session_scores_right_and_wrong_answers(name: str) -> None:
    tl = _timeline(name)
    right = PredictionSession(start=-1, total=6)
    wrong = PredictionSession(start=-1, total=6)
    for session, correct in ((right, True), (wrong, False)):
        while session.advance(tl) is not None:
            q = session.current
            assert q is not None
            assert q in questions_at(tl, session.current_step)
            given = q.answer if correct else "not an answer"
            assert session.answer(given).correct is correct
            assert session.is_answered
        assert session.done
        # a round asks each moment once and ends early when none is left (these samples hold
        # a slow path, then a race won and lost, or a second pair)
        assert 2 <= len(session.answered) < 6 and session.exhausted
        moments = [moment(a.question) for a in session.answered]
        assert len(moments) == len(set(moments))
        steps = [a.step for a in session.answered]
        assert steps == sorted(set(steps))  # forward, one question per step
    assert [a.step for a in right.answered] == [a.step for a in wrong.answered]
    assert right.score == len(right.answered) and wrong.score == 0
    assert len({a.question.kind for a in right.answered}) >= 2  # kinds are mixed
    assert [r["right"] for r in right.rows()] == [True] * len(right.answered)


def test_a_session_starts_after_the_cursor_and_ends_with_the_timeline(
    lost_race: Timeline,
) -> None:
    s = PredictionSession(start=120, total=20)
    first = s.advance(lost_race)
    assert first is not None and s.current_step > 120
    s.answer(first.answer)
    s.answer("wrong")  # a second answer to the same question does not count
    assert len(s.answered) == 1 and s.score == 1
    while s.advance(lost_race) is not None:
        s.answer(s.current.answer if s.current else "")
    assert s.done and s.exhausted and s.score == len(s.answered) < 20
    with pytest.raises(ValueError):
        s.answer("x")


@pytest.mark.parametrize(
    ("name", "kind", "answer"),
    [
        # the samples without a tour (those with one: the next test)
        ("cold_race_2vcpu", "race", "yes"),
        ("cold_race_3vcpu", "race", "yes"),
        ("stale_fault", "retry", "retry"),
        ("pamt_add_failure", "retry", "retry"),
        ("cold_race_20vcpu_independent", "race", "yes"),
    ],
)
def test_a_round_of_five_reaches_the_samples_lesson(name: str, kind: str, answer: str) -> None:
    tl = _timeline(name)
    s = PredictionSession(start=-1, total=5)
    while s.advance(tl) is not None:
        assert s.current is not None and s.current.answer != "none"
        s.answer(s.current.answer)
    assert (kind, answer) in {(a.question.kind, a.question.answer) for a in s.answered}


@pytest.mark.parametrize("name", sorted(p.stem for p in SAMPLES.glob("*.jsonl")))
def test_the_batches_the_flags_rule_out_hold_no_moment(name: str) -> None:
    """The moment index reads only batches whose flags may hold a moment: every other batch,
    read anyway, has none, and the index agrees with a scan of every batch."""
    tl = _timeline(name)
    every: list[int] = []
    for b in range(tl.nr_batches):
        found = batch_moments(tl.steps_between(tl.batch_step[b], tl.batch_step[b + 1]))
        if not tl.batch_flags[b] & MOMENT_FLAGS:
            assert found == [], (name, b)
        every += [i for i, _ in found]
    index = moment_index(tl)
    assert [i for i in every if index.asks_at(i)] == every
    assert index.batches_read <= tl.nr_batches


def _lesson(name: str, tl: Timeline) -> set[tuple[str, str]]:
    """A sample's lesson, from its tour: the moments at the tour's stops that matter most (the
    race over the pair it installs, the retry over the slow path before it)."""
    tour = tour_for(name)
    assert tour is not None
    index = moment_index(tl)
    asks = [a for stop in resolve(tour, tl) for a in index.asks_at(stop.step)]
    assert asks, f"no stop of {name}'s tour is a moment"
    top = min(rank((a,)) for a in asks)
    return {(a[0], a[2]) for a in asks if rank((a,)) == top}


@pytest.mark.parametrize("name", tour_names())
def test_a_round_of_five_reaches_the_lesson_of_the_samples_tour(name: str) -> None:
    tl = _timeline(name)
    lesson = _lesson(name, tl)
    s = PredictionSession(start=-1, total=5)
    while s.advance(tl) is not None:
        assert s.current is not None
        s.answer(s.current.answer)
    assert lesson <= {moment(a.question) for a in s.answered}, lesson


def test_the_tour_lessons_are_the_moments_the_tours_are_about() -> None:
    assert _lesson("lost_race", _timeline("lost_race")) == {("race", "yes"), ("race", "no")}
    assert _lesson("put_vs_get", _timeline("put_vs_get")) == {("region", "installed")}
    assert _lesson("td_lifecycle", _timeline("td_lifecycle")) == {
        ("region", "installed"),
        ("region", "removed"),
    }


def test_a_round_started_at_a_tour_stop_asks_after_it() -> None:
    tl = _timeline("td_lifecycle")
    tour = tour_for("td_lifecycle")
    assert tour is not None
    stop = resolve(tour, tl)[2]  # region 64 installed
    s = PredictionSession(start=stop.step, total=5)
    while s.advance(tl) is not None:
        s.answer(s.current.answer if s.current else "")
    assert s.answered and all(a.step > stop.step for a in s.answered)
    assert ("region", "removed") in {moment(a.question) for a in s.answered}
