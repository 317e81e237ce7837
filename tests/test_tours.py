"""Guided tours (explorer/teaching/tours.py, docs/tours.md): every shipped tour parses and resolves on the
current engine, and a bad tour is refused at its line:col with its reason."""

from functools import cache
from pathlib import Path

import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.replay.timeline import Timeline, replay
from explorer.teaching.tours import (
    MAX_LOOK,
    MAX_NARRATION,
    TOUR_SUFFIX,
    VIEWS,
    TourError,
    parse_tour,
    resolve,
    tour_for,
    tour_names,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"
REQUIRED = (
    "cold_region",
    "lost_race",
    "cache_too_small",
    "cache_zero",
    "put_vs_get",
    "td_lifecycle",
)
HEADER = '{"format": "dpamt-tour", "version": 1, "trace": "cold_region", "title": "T"}'
STOP = '{"event": 4, "look": "L", "narration": "N", "view": "code"}'


@cache
def _timeline(name: str) -> Timeline:
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    return replay(trace.events, resolve_settings(trace, []))


def test_the_required_samples_have_tours() -> None:
    assert set(REQUIRED) <= set(tour_names())


def test_tours_do_not_look_like_traces() -> None:
    """The app and the sample tests take every sample_traces/*.jsonl for a trace."""
    assert not list(SAMPLES.glob("*.tour.jsonl"))
    assert not any(p.name.endswith(".jsonl") for p in SAMPLES.glob(f"*{TOUR_SUFFIX}"))


@pytest.mark.parametrize("name", tour_names())
def test_shipped_tour_parses_and_resolves(name: str) -> None:
    assert (SAMPLES / f"{name}.jsonl").exists(), f"{name}{TOUR_SUFFIX} tours no sample"
    tour = tour_for(name)
    assert tour is not None and tour.trace == name
    assert 3 <= len(tour.stops) <= 6
    tl = _timeline(name)
    resolved = resolve(tour, tl)
    assert [r.number for r in resolved] == list(range(1, len(tour.stops) + 1))
    steps = [r.step for r in resolved]
    assert steps == sorted(steps)
    for r in resolved:
        step = tl.step(r.step)
        assert step.event == r.stop.event - 1
        if r.stop.label is not None:
            assert step.label == r.stop.label
        assert r.view_title == VIEWS[r.stop.view]


def test_a_stop_is_the_first_step_of_its_event_or_the_nth_label() -> None:
    tl = _timeline("cold_region")
    base = HEADER + "\n"
    tour = parse_tour(base + STOP, "t.tour.ndjson")
    assert resolve(tour, tl)[0].step == tl.first_step_of_event(3)
    stop = '{"event": 4, "label": "pamt_get.pop", "nth": 2, "look": "L", "narration": "N", "view": "code"}'
    (r,) = resolve(parse_tour(base + stop), tl)
    first = tl.find("label", (tl.first_step_of_event(3) or 0) - 1, 1, "pamt_get.pop")
    assert first is not None and r.step == first + 1
    assert tl.step(r.step).label == "pamt_get.pop"


def _problems(text: str) -> list[str]:
    with pytest.raises(TourError) as info:
        parse_tour(text.encode(), "t.tour.ndjson")
    return [str(p) for p in info.value.problems]


def _where(problem: str) -> str:
    return problem.split(": ", 1)[0]


LONG_LOOK = "x" * (MAX_LOOK + 1)
LONG_NARRATION = "y" * (MAX_NARRATION + 1)

#: (tour text, expected "file:line:col", a piece of the reason)
BAD = [
    ("", "t.tour.ndjson", "the tour is empty"),
    ("# only a comment\n", "t.tour.ndjson", "the tour is empty"),
    (HEADER + "\n", "t.tour.ndjson", "no stops"),
    (STOP + "\n" + STOP, "t.tour.ndjson:1:1", "not a tour header"),
    (
        '{"format": "dpamt-trace", "version": 1, "trace": "cold_region", "title": "T"}\n' + STOP,
        "t.tour.ndjson:1:12",
        "unknown format",
    ),
    (
        '{"format": "dpamt-tour", "version": 2, "trace": "cold_region", "title": "T"}\n' + STOP,
        "t.tour.ndjson:1:37",
        "unsupported version",
    ),
    (
        '{"format": "dpamt-tour", "version": 1, "trace": "../etc", "title": "T"}\n' + STOP,
        "t.tour.ndjson:1:49",
        "a sample's name",
    ),
    (
        '{"format": "dpamt-tour", "version": 1, "trace": "cold_region"}\n' + STOP,
        "t.tour.ndjson:1:1",
        "the header has no 'title'",
    ),
    (
        '{"format": "dpamt-tour", "version": 1, "trace": "cold_region", "title": "T", "x": 1}\n'
        + STOP,
        "t.tour.ndjson:1:78",
        "unknown header field 'x'",
    ),
    (
        HEADER + "\n" + '{"event": 4, "look": "L", "narration": "N", "view": "code", "step": 3}',
        "t.tour.ndjson:2:61",
        "unknown stop field 'step'",
    ),
    (
        HEADER + "\n" + '{"event": "4", "look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:11",
        "'event' must be an integer, not str",
    ),
    (
        HEADER + "\n" + '{"event": true, "look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:11",
        "'event' must be an integer, not bool",
    ),
    (
        HEADER + "\n" + '{"event": 0, "look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:11",
        "'event' is out of range",
    ),
    (
        HEADER + "\n" + '{"look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:1",
        "the stop has no 'event'",
    ),
    (
        HEADER + "\n" + '{"event": 4, "look": "L", "narration": "N", "view": "slides"}',
        "t.tour.ndjson:2:53",
        "unknown view 'slides'",
    ),
    (
        HEADER + "\n" + '{"event": 4, "look": "L", "narration": "  ", "view": "code"}',
        "t.tour.ndjson:2:40",
        "'narration' is empty",
    ),
    (
        HEADER + "\n" + '{"event": 4, "look": 7, "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:22",
        "'look' must be a string, not int",
    ),
    (
        HEADER + "\n" + f'{{"event": 4, "look": "{LONG_LOOK}", "narration": "N", "view": "code"}}',
        "t.tour.ndjson:2:22",
        "'look' is too long",
    ),
    (
        HEADER
        + "\n"
        + f'{{"event": 4, "look": "L", "narration": "{LONG_NARRATION}", "view": "code"}}',
        "t.tour.ndjson:2:40",
        "'narration' is too long",
    ),
    (
        HEADER
        + "\n"
        + '{"event": 4, "label": "pamt_get.teleport", "look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:23",
        "unknown step label 'pamt_get.teleport'",
    ),
    (
        HEADER + "\n" + '{"event": 4, "nth": 2, "look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:21",
        "'nth' needs a 'label'",
    ),
    (
        HEADER
        + "\n"
        + '{"event": 4, "label": "pamt_get.pop", "nth": 0, "look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:46",
        "'nth' is out of range",
    ),
    (
        HEADER + "\n" + '{"event": 4, "event": 5, "look": "L", "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:14",
        "key 'event' appears twice",
    ),
    (
        HEADER + "\n" + '{"event": 4, "look": "L" "narration": "N", "view": "code"}',
        "t.tour.ndjson:2:26",
        "expected ',' or '}'",
    ),
    (
        HEADER + "\n" + '{"event": 4, "look": "L", "narration": "N", "view": "code"',
        "t.tour.ndjson:2:59",
        "ends early",
    ),
    (
        HEADER + "\n" + '{"event": 4, "look": "L", "narration": "N", "view": "code"} x',
        "t.tour.ndjson:2:61",
        "text after the JSON object",
    ),
    (HEADER + "\n" + '[4, "code"]', "t.tour.ndjson:2:1", "not a JSON object"),
    (
        HEADER + "\n\n# a comment\n" + '{"event": 4, "look": "L", "narration": "N", "view": nope}',
        "t.tour.ndjson:4:53",
        "invalid JSON",
    ),
]


@pytest.mark.parametrize(("text", "where", "reason"), BAD, ids=[b[2] for b in BAD])
def test_a_bad_tour_is_refused_at_its_line_and_column(text: str, where: str, reason: str) -> None:
    problems = _problems(text)
    assert _where(problems[0]) == where, problems
    assert reason in problems[0], problems


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = "\n".join(
        [
            HEADER,
            '{"event": 4, "look": "L", "narration": "N", "view": "slides"}',
            STOP,
            '{"event": -1, "look": "", "narration": "N", "view": "code"}',
        ]
    )
    wheres = [_where(p) for p in _problems(text)]
    assert wheres == ["t.tour.ndjson:2:53", "t.tour.ndjson:4:11", "t.tour.ndjson:4:23"]


def test_invalid_utf8_is_refused_at_its_position() -> None:
    with pytest.raises(TourError) as info:
        parse_tour(HEADER.encode() + b'\n{"event": 4, "look": "\xff"}', "t.tour.ndjson")
    assert _where(str(info.value.problems[0])) == "t.tour.ndjson:2:23"


def _resolve_problems(stops: list[str], name: str = "cold_region") -> list[str]:
    tour = parse_tour("\n".join([HEADER, *stops]), "t.tour.ndjson")
    with pytest.raises(TourError) as info:
        resolve(tour, _timeline(name))
    return [str(p) for p in info.value.problems]


def test_an_event_past_the_trace_is_refused() -> None:
    (p,) = _resolve_problems([STOP, '{"event": 5, "look": "L", "narration": "N", "view": "code"}'])
    assert _where(p) == "t.tour.ndjson:3:11"
    assert "event 5 is past the end of the trace (4 events)" in p


def test_a_label_the_event_does_not_carry_is_refused() -> None:
    stop = (
        '{"event": 4, "label": "pamt_get.lost_race", "look": "L", "narration": "N", "view": "code"}'
    )
    (p,) = _resolve_problems([stop])
    assert _where(p) == "t.tour.ndjson:2:23"
    assert "event 4 has no step labelled 'pamt_get.lost_race'" in p


def test_a_label_of_another_event_does_not_count() -> None:
    """pamt_get.add happens in event 1 (region 0) and event 4, never in event 2."""
    stop = '{"event": 2, "label": "pamt_get.add", "look": "L", "narration": "N", "view": "code"}'
    (p,) = _resolve_problems([stop])
    assert "event 2 has no step labelled 'pamt_get.add'" in p


def test_too_few_occurrences_are_refused() -> None:
    stop = '{"event": 4, "label": "pamt_get.pop", "nth": 3, "look": "L", "narration": "N", "view": "code"}'
    (p,) = _resolve_problems([stop])
    assert _where(p) == "t.tour.ndjson:2:23" and "only 2 steps" in p


def test_stops_going_back_in_time_are_refused() -> None:
    later = '{"event": 4, "look": "L", "narration": "N", "view": "code"}'
    earlier = '{"event": 1, "look": "L", "narration": "N", "view": "code"}'
    (p,) = _resolve_problems([later, earlier])
    assert _where(p) == "t.tour.ndjson:3:11" and "comes before stop 1" in p


def test_tour_for(tmp_path: Path) -> None:
    assert tour_for("fast_path", tmp_path) is None
    (tmp_path / f"cold_region{TOUR_SUFFIX}").write_text("# hi\n" + HEADER + "\n" + STOP + "\n")
    assert tour_for("cold_region", tmp_path) is not None
    (tmp_path / f"lost_race{TOUR_SUFFIX}").write_text("# hi\n" + HEADER + "\n" + STOP + "\n")
    with pytest.raises(TourError) as info:
        tour_for("lost_race", tmp_path)
    assert str(info.value).startswith(f"lost_race{TOUR_SUFFIX}:2:1: this tour is of 'cold_region'")
    with pytest.raises(KeyError):
        tour_for("../cold_region", tmp_path)
