"""Guided tours of the sample traces: the format, its parser and the resolution of each stop.

A tour is data, not code, so a teacher can write one (docs/tours.md is the contract). It lives
beside its sample as ``sample_traces/<sample>.tour.ndjson``: JSON Lines, a header line then one
stop per line. (``.ndjson``, not ``.jsonl``: the app, the sample tests and the bulk tests take
every ``sample_traces/*.jsonl`` for a trace.)

A stop never names a raw step index (the engine's step numbering changes as steps are added for
kernel fidelity). It names a trace event (1-based, as the Explore page shows it), optionally a
step label of that event (:mod:`explorer.model.narration` lists them all) and which occurrence of
that label; :func:`resolve` turns that into a step index on a replayed :class:`Timeline`, through
its public API only. A stop that does not resolve on the current engine is an error naming the
tour's line, like every other problem of a tour file (``file:line:col: reason``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from explorer.model.errors import Problem, TraceError
from explorer.model.narration import all_labels
from explorer.replay.timeline import Timeline

FORMAT_NAME = "dpamt-tour"
FORMAT_VERSION = 1
#: File name of a sample's tour: ``<sample>`` + this suffix, beside ``<sample>.jsonl``.
TOUR_SUFFIX = ".tour.ndjson"
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "sample_traces"

#: Views a stop may ask for: the Explore page's panels and tabs (app_pages/explore.py), by key,
#: with the title the page shows. A view renamed or added there is renamed or added here.
VIEWS: dict[str, str] = {
    "region_map": "Region map",
    "pamt_caches": "DPAMT caches",
    "code": "Code panel",
    "locks": "Locks",
    "what_changed": "What changed",
    "refcounts": "Refcounts",
    "kvm_caches": "KVM caches",
    "over_time": "Over time",
    "diff": "Diff two steps",
    "animation": "Animation",
    "diagnostics": "Diagnostics",
}
#: Views that are tabs of the Explore page (the others are always on screen).
TAB_VIEWS = frozenset(
    {"what_changed", "refcounts", "kvm_caches", "over_time", "diff", "animation", "diagnostics"}
)

HEADER_REQUIRED = ("format", "version", "trace", "title")
HEADER_OPTIONAL = ("description",)
STOP_REQUIRED = ("event", "look", "narration", "view")
STOP_OPTIONAL = ("label", "nth")

#: Limits, so a tour stays a tour (and a slide stays readable).
MAX_TOUR_BYTES = 64 * 1024
MAX_LINE_CHARS = 4096
MAX_STOPS = 30
MAX_TITLE = 100  # the header's title
MAX_DESCRIPTION = 400  # the header's description
MAX_LOOK = 160  # "what to look at": one line
MAX_NARRATION = 600  # a sentence or two, said aloud in under a minute
MAX_NTH = 10_000
MAX_EVENT = 5_000_000  # explorer.ingest.limits.MAX_EVENTS
MAX_ERRORS = 50
_SAMPLE_NAME = re.compile(r"[a-z0-9_]{1,64}")
_DECODER = json.JSONDecoder()
_WS = " \t"


class TourError(TraceError):
    """A tour file is malformed, or one of its stops does not resolve on the replayed trace."""


@dataclass(frozen=True, slots=True)
class Stop:
    """One stop of a tour, as written (``event`` is 1-based, as the Explore page shows it)."""

    line: int
    event: int
    look: str
    narration: str
    view: str
    label: str | None = None
    nth: int = 1
    #: 1-based column of each field's value on its line, for errors found at resolution
    cols: tuple[tuple[str, int], ...] = ()

    def col(self, key: str) -> int:
        return dict(self.cols).get(key, 1)

    def where(self) -> str:
        """The locator, as a teacher would say it: "event 10, 2nd pamt_get.pop"."""
        if self.label is None:
            return f"event {self.event}"
        nth = "" if self.nth == 1 else f"{_ordinal(self.nth)} "
        return f"event {self.event}, {nth}{self.label}"


@dataclass(frozen=True, slots=True)
class Tour:
    source: str
    trace: str  # the sample it tours
    title: str
    description: str
    stops: tuple[Stop, ...]


@dataclass(frozen=True, slots=True)
class ResolvedStop:
    """A stop pinned to a step of one replay (resolve again after the engine changes)."""

    number: int  # 1-based position in the tour
    stop: Stop
    step: int  # index in the timeline

    @property
    def view_title(self) -> str:
        return VIEWS[self.stop.view]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# ------------------------------------------------------------------ parsing
class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, line: int, col: int, reason: str, text: str = "", expected: str = "") -> None:
        if len(self.problems) < MAX_ERRORS:
            self.problems.append(Problem(self.source, line, col, reason, _short(text), expected))

    @property
    def full(self) -> bool:
        return len(self.problems) >= MAX_ERRORS


class _LineError(Exception):
    def __init__(self, col: int, reason: str, expected: str = "") -> None:
        super().__init__(reason)
        self.col, self.reason, self.expected = col, reason, expected


def _skip_ws(raw: str, i: int) -> int:
    while i < len(raw) and raw[i] in _WS:
        i += 1
    return i


def _object_fields(raw: str) -> list[tuple[str, int, Any, int]]:
    """The fields of the JSON object on ``raw``, in order: (key, key column, value, value
    column), columns 1-based. Raises :class:`_LineError` at the exact column of bad JSON, of a
    duplicate key, or of text after the object."""
    i = _skip_ws(raw, 0)
    if i >= len(raw) or raw[i] != "{":
        raise _LineError(i + 1, "not a JSON object", "one JSON object per line")
    out: list[tuple[str, int, Any, int]] = []
    seen: set[str] = set()
    i = _skip_ws(raw, i + 1)
    if i < len(raw) and raw[i] == "}":
        i += 1
    else:
        while True:
            if i >= len(raw):
                raise _LineError(i + 1, "invalid JSON: the line ends early (truncated?)")
            if raw[i] != '"':
                raise _LineError(i + 1, "invalid JSON: expected a key in double quotes")
            kcol = i + 1
            try:
                key, i = scanstring(raw, i + 1)
            except ValueError:
                raise _LineError(kcol, "invalid JSON: unterminated or bad key string") from None
            if key in seen:
                raise _LineError(kcol, f"key {key!r} appears twice")
            seen.add(key)
            i = _skip_ws(raw, i)
            if i >= len(raw) or raw[i] != ":":
                raise _LineError(i + 1, "invalid JSON: expected ':' after the key")
            i = _skip_ws(raw, i + 1)
            vcol = i + 1
            try:
                value, i = _DECODER.raw_decode(raw, i)
            except json.JSONDecodeError as exc:
                raise _LineError(exc.colno, "invalid JSON: " + exc.msg) from None
            except RecursionError:
                raise _LineError(vcol, "JSON nested too deeply") from None
            out.append((key, kcol, value, vcol))
            i = _skip_ws(raw, i)
            if i < len(raw) and raw[i] == ",":
                i = _skip_ws(raw, i + 1)
                continue
            if i < len(raw) and raw[i] == "}":
                i += 1
                break
            if i >= len(raw):
                raise _LineError(i + 1, "invalid JSON: the line ends early (truncated?)")
            raise _LineError(i + 1, "invalid JSON: expected ',' or '}'")
    i = _skip_ws(raw, i)
    if i < len(raw):
        raise _LineError(i + 1, "text after the JSON object", "one JSON object per line")
    return out


def _text(c: _Collector, n: int, key: str, value: Any, col: int, limit: int) -> str | None:
    if not isinstance(value, str):
        c.add(n, col, f"{key!r} must be a string, not {type(value).__name__}", repr(value))
        return None
    if not value.strip():
        c.add(n, col, f"{key!r} is empty", value, "some text")
        return None
    if len(value) > limit:
        c.add(n, col, f"{key!r} is too long: {len(value)} characters", value, f"at most {limit}")
        return None
    return value


def _int(c: _Collector, n: int, key: str, value: Any, col: int, lo: int, hi: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        c.add(n, col, f"{key!r} must be an integer, not {type(value).__name__}", repr(value))
        return None
    if not lo <= value <= hi:
        c.add(n, col, f"{key!r} is out of range", repr(value), f"{lo} to {hi}")
        return None
    return value


def _fields_ok(
    c: _Collector,
    n: int,
    fields: list[tuple[str, int, Any, int]],
    required: tuple[str, ...],
    optional: tuple[str, ...],
    what: str,
) -> bool:
    ok = True
    allowed = (*required, *optional)
    for key, kcol, _value, _vcol in fields:
        if key not in allowed:
            c.add(n, kcol, f"unknown {what} field {key!r}", key, ", ".join(allowed))
            ok = False
    present = {f[0] for f in fields}
    for key in required:
        if key not in present:
            c.add(n, 1, f"the {what} has no {key!r}", "", f"the fields {', '.join(required)}")
            ok = False
    return ok


def parse_tour(data: bytes | str, source: str = "<tour>") -> Tour:
    """Parse and validate a tour (its shape; :func:`resolve` checks it against a replay).

    Every problem is collected (up to :data:`MAX_ERRORS`) and raised together as one
    :class:`TourError`, each at its ``source:line:col``."""
    c = _Collector(source)
    if isinstance(data, bytes):
        if len(data) > MAX_TOUR_BYTES:
            raise TourError(
                Problem(
                    source, 0, 0, f"the tour is {len(data)} bytes", "", f"at most {MAX_TOUR_BYTES}"
                )
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise TourError(Problem(source, line, col, "not UTF-8 text", "", "UTF-8")) from None
    else:
        text = data
        if len(text.encode("utf-8")) > MAX_TOUR_BYTES:
            raise TourError(
                Problem(source, 0, 0, "the tour is too big", "", f"at most {MAX_TOUR_BYTES} bytes")
            )
    text = text.removeprefix("\ufeff")
    header: dict[str, Any] | None = None
    stops: list[Stop] = []
    too_many = False
    for n, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not raw.strip(_WS) or raw.lstrip(_WS).startswith("#"):
            continue
        if c.full:
            break
        if len(raw) > MAX_LINE_CHARS:
            c.add(
                n,
                MAX_LINE_CHARS + 1,
                f"the line is {len(raw)} characters",
                "",
                f"at most {MAX_LINE_CHARS}",
            )
            continue
        try:
            fields = _object_fields(raw)
        except _LineError as exc:
            c.add(n, exc.col, exc.reason, raw, exc.expected)
            if header is None:
                header = {}  # a broken header: keep reading the stops
            continue
        if header is None:
            header = _header(c, n, fields)
            continue
        if len(stops) >= MAX_STOPS:
            if not too_many:
                c.add(n, 1, f"more than {MAX_STOPS} stops", raw, f"at most {MAX_STOPS}")
                too_many = True
            continue
        stop = _stop(c, n, fields)
        if stop is not None:
            stops.append(stop)
    if header is None:
        c.add(0, 0, "the tour is empty", "", "a header line, then one stop per line")
    elif not stops and not c.problems:
        c.add(0, 0, "the tour has no stops", "", "at least one stop after the header")
    if c.problems:
        raise TourError(c.problems)
    assert header is not None
    return Tour(
        source,
        header["trace"],
        header["title"],
        header.get("description", ""),
        tuple(stops),
    )


def _header(c: _Collector, n: int, fields: list[tuple[str, int, Any, int]]) -> dict[str, Any]:
    before = len(c.problems)
    if not fields or fields[0][0] != "format":
        # the first line is not a header at all: say so once, not once per missing field
        c.add(
            n, 1, "the first line is not a tour header", "", f'{{"format": "{FORMAT_NAME}", ...}}'
        )
        return {}
    _fields_ok(c, n, fields, HEADER_REQUIRED, HEADER_OPTIONAL, "header")
    out: dict[str, Any] = {}
    for key, _kcol, value, vcol in fields:
        if key == "format" and value != FORMAT_NAME:
            c.add(n, vcol, f"unknown format {value!r}", repr(value), repr(FORMAT_NAME))
        elif key == "version" and (
            isinstance(value, bool) or not isinstance(value, int) or value != FORMAT_VERSION
        ):
            c.add(n, vcol, f"unsupported version {value!r}", repr(value), str(FORMAT_VERSION))
        elif key == "trace":
            if not isinstance(value, str) or not _SAMPLE_NAME.fullmatch(value):
                c.add(n, vcol, "'trace' must be a sample's name", repr(value), 'e.g. "cold_region"')
            else:
                out["trace"] = value
        elif key == "title":
            out["title"] = _text(c, n, key, value, vcol, MAX_TITLE)
        elif key == "description":
            out["description"] = _text(c, n, key, value, vcol, MAX_DESCRIPTION)
    return out if len(c.problems) == before else {}


def _stop(c: _Collector, n: int, fields: list[tuple[str, int, Any, int]]) -> Stop | None:
    before = len(c.problems)
    _fields_ok(c, n, fields, STOP_REQUIRED, STOP_OPTIONAL, "stop")
    got: dict[str, Any] = {}
    cols: list[tuple[str, int]] = []
    for key, _kcol, value, vcol in fields:
        cols.append((key, vcol))
        if key == "event":
            got[key] = _int(c, n, key, value, vcol, 1, MAX_EVENT)
        elif key == "nth":
            got[key] = _int(c, n, key, value, vcol, 1, MAX_NTH)
        elif key == "look":
            got[key] = _text(c, n, key, value, vcol, MAX_LOOK)
        elif key == "narration":
            got[key] = _text(c, n, key, value, vcol, MAX_NARRATION)
        elif key == "view":
            if not isinstance(value, str) or value not in VIEWS:
                c.add(n, vcol, f"unknown view {value!r}", str(value), ", ".join(VIEWS))
            else:
                got[key] = value
        elif key == "label":
            if not isinstance(value, str):
                c.add(n, vcol, f"'label' must be a string, not {type(value).__name__}", repr(value))
            elif value not in all_labels():
                c.add(
                    n,
                    vcol,
                    f"unknown step label {value!r}",
                    value,
                    "a label of explorer/model/narration.py, e.g. 'pamt_get.add'",
                )
            else:
                got[key] = value
    if "nth" in got and "label" not in dict(cols):
        c.add(n, dict(cols)["nth"], "'nth' needs a 'label' (the nth step with that label)")
    if len(c.problems) != before:
        return None
    return Stop(
        line=n,
        event=got["event"],
        look=got["look"],
        narration=got["narration"],
        view=got["view"],
        label=got.get("label"),
        nth=got.get("nth", 1),
        cols=tuple(cols),
    )


# ------------------------------------------------------------------ resolution
def resolve(tour: Tour, timeline: Timeline) -> list[ResolvedStop]:
    """Each stop's step on ``timeline`` (a replay of the tour's trace, with its settings).

    ``{"event": e}`` is the step event ``e`` starts at; with ``"label"`` it is the first step of
    event ``e`` carrying that label (``"nth"``: the nth such step). Stops must not go back in
    time. Raises :class:`TourError`, each problem at its stop's line, if any stop does not
    resolve."""
    c = _Collector(tour.source)
    out: list[ResolvedStop] = []
    prev: ResolvedStop | None = None
    for number, stop in enumerate(tour.stops, start=1):
        step = _resolve_stop(c, stop, timeline)
        if step is None:
            continue
        if prev is not None and step < prev.step:
            c.add(
                stop.line,
                stop.col("event"),
                f"stop {number} ({stop.where()}, step {step}) comes before stop {number - 1} "
                f"({prev.stop.where()}, step {prev.step})",
                "",
                "stops in the order they happen",
            )
        prev = ResolvedStop(number, stop, step)
        out.append(prev)
    if c.problems:
        raise TourError(c.problems)
    return out


def _resolve_stop(c: _Collector, stop: Stop, tl: Timeline) -> int | None:
    e = stop.event - 1
    if e >= tl.nr_events:
        c.add(
            stop.line,
            stop.col("event"),
            f"event {stop.event} is past the end of the trace ({tl.nr_events} events)",
            "",
            f"1 to {tl.nr_events}",
        )
        return None
    first = tl.first_step_of_event(e)
    if first is None:
        c.add(
            stop.line,
            stop.col("event"),
            f"event {stop.event} never ran (the replay stopped before it)",
        )
        return None
    if stop.label is None:
        return first
    # the label's steps of this event only: an event's steps all lie in its batch, so the search
    # ends at the first match past that batch
    batch = tl.batch_of_event(e)
    pos, found = first - 1, 0
    while True:
        nxt = tl.find("label", pos, 1, stop.label)
        if nxt is None or tl.batch_of_step(nxt) != batch:
            break
        pos = nxt
        if tl.step(nxt).event == e:
            found += 1
            if found == stop.nth:
                return nxt
    have = "no step" if found == 0 else f"only {found} steps"
    c.add(
        stop.line,
        stop.col("label"),
        f"event {stop.event} has {have} labelled {stop.label!r} on the current engine",
        stop.label,
        "a label this event's steps carry (see the Explore page or the sample's golden)",
    )
    return None


# ------------------------------------------------------------------ the library
def tour_path(sample: str, directory: Path = SAMPLES_DIR) -> Path:
    if not _SAMPLE_NAME.fullmatch(sample):
        raise KeyError(f"no sample named {sample!r}")
    return directory / f"{sample}{TOUR_SUFFIX}"


def tour_for(sample: str, directory: Path = SAMPLES_DIR) -> Tour | None:
    """The tour of a sample (None if it has none). Raises :class:`TourError` if the file is bad,
    or tours another sample."""
    path = tour_path(sample, directory)
    if not path.is_file():
        return None
    tour = parse_tour(path.read_bytes(), path.name)
    if tour.trace != sample:
        raise TourError(
            Problem(
                path.name,
                _header_line(path),
                1,
                f"this tour is of {tour.trace!r}, but it is the file of {sample!r}",
                "",
                f'"trace": "{sample}"',
            )
        )
    return tour


def _header_line(path: Path) -> int:
    for n, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if raw.strip(_WS) and not raw.lstrip(_WS).startswith("#"):
            return n
    return 0


def tour_names(directory: Path = SAMPLES_DIR) -> list[str]:
    """The samples that have a tour, by name."""
    return sorted(p.name.removesuffix(TOUR_SUFFIX) for p in directory.glob(f"*{TOUR_SUFFIX}"))
