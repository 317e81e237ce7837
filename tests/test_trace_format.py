"""The trace format: the document and the parser agree; round trips; fuzzing."""

import gzip
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from explorer.ingest import limits, parse_trace
from explorer.ingest.parse import CSV_COLUMNS, SCHEMA
from explorer.ingest.schema import MAX_CONTROL_PINS, MAX_TABLE_PINS
from explorer.ingest.write import dump_trace
from explorer.model.constants import INJECTIONS, MODES
from explorer.model.errors import TraceError
from explorer.model.events import EVENT_TYPES, Fault, Inject, Note, TdCreate, VcpuCreate, Zap
from explorer.model.settings import SETTING_SPECS

DOC = (Path(__file__).resolve().parent.parent / "docs" / "trace-format.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def test_every_op_field_setting_and_limit_is_documented() -> None:
    for op, (required, optional) in SCHEMA.items():
        assert f"| `{op}` |" in DOC, op
        for f in (*required, *optional):
            assert f"`{f}`" in DOC, (op, f)
    for key in SETTING_SPECS:
        assert f"| `{key}` |" in DOC, key
    for mode in MODES:
        assert f"`{mode}`" in DOC, mode
    for what in INJECTIONS:
        assert f"`{what}`" in DOC, what
    for name in dir(limits):
        if name.startswith("MAX_"):
            assert f"`{name}`" in DOC or name in DOC, name
    for col in CSV_COLUMNS:
        assert f"`{col}`" in DOC, col


def test_every_documented_example_parses() -> None:
    header, events = _blocks("json")[0], _blocks("json")[1]
    trace = parse_trace((header + events).encode(), "doc.jsonl")
    assert trace.settings == {"ept_levels": 5, "dpamt_gets_per_fault": 5}
    assert sorted({e.op for e in trace.events}) == sorted(EVENT_TYPES)
    csv_example = re.search(r"```\n(op,.*?)```", DOC, flags=re.S)
    assert csv_example is not None
    assert len(parse_trace(csv_example.group(1).encode(), "doc.csv").events) == 3


def test_documented_error_examples_are_what_the_parser_says() -> None:
    trace = '{"op": "td_create", "td": 0}\n{"op": "fault", "vcpu": 0, "gfn": 1.5}\n{"op": "hop"}\n'
    with pytest.raises(TraceError) as info:
        parse_trace(trace.encode(), "trace.jsonl")
    for problem in info.value.problems:
        assert str(problem) in DOC


def test_crlf_bom_gzip_and_csv_are_accepted() -> None:
    text = '\ufeff{"op": "td_create", "td": 0}\r\n# comment\r\n\r\n{"op": "note", "text": "x"}\r\n'
    data = text.encode()
    assert len(parse_trace(data, "a.jsonl").events) == 2
    assert len(parse_trace(gzip.compress(data), "a.jsonl.gz").events) == 2
    assert parse_trace(b"op,td\ntd_create,0\n", "a.csv").events == (TdCreate(td=0, line=2),)


_ints = st.integers(min_value=0, max_value=2**20 - 1)
_gfns = st.integers(min_value=0, max_value=limits.MAX_GFN)
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_pfns = st.integers(0, limits.MAX_PFN)


def _pins(most: int) -> st.SearchStrategy[tuple[int, ...] | None]:
    return st.none() | st.lists(_pfns, max_size=most, unique=True).map(tuple)


_events = st.one_of(
    st.builds(TdCreate, td=_ints, control=_pins(MAX_CONTROL_PINS)),
    st.builds(VcpuCreate, td=_ints, vcpu=_ints, control=_pins(MAX_CONTROL_PINS)),
    st.builds(Fault, vcpu=_ints, gfn=_gfns, pfn=st.none() | _pfns, tables=_pins(MAX_TABLE_PINS)),
    st.builds(Zap, td=_ints, gfn=_gfns, note=st.none() | _text),
    st.builds(Inject, what=st.sampled_from(INJECTIONS), count=st.integers(1, 1000)),
    st.builds(Note, text=_text),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_events, min_size=1, max_size=20), _text)
def test_written_traces_parse_back_to_equal_events(events: list, title: str) -> None:  # type: ignore[type-arg]
    text = dump_trace(events, title=title)
    parsed = parse_trace(text.encode(), "rt.jsonl")
    stripped = [(e.op, *[getattr(e, f) for f in e.__slots__ if f != "line"]) for e in parsed.events]  # type: ignore[attr-defined]
    want = [(e.op, *[getattr(e, f) for f in e.__slots__ if f != "line"]) for e in events]  # type: ignore[attr-defined]
    assert stripped == want
    assert parsed.title == title


_VALID = b'{"format": "dpamt-trace", "version": 1}\n{"op": "td_create", "td": 0}\n{"op": "fault", "vcpu": 0, "gfn": "0x10", "t": 1}\n'


def _only_trace_errors(data: bytes, name: str) -> None:
    try:
        parse_trace(data, name)
    except TraceError as exc:
        assert exc.problems and all(p.reason for p in exc.problems)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


_edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=400) | st.builds(_mutate, st.just(_VALID), _edits),
    st.sampled_from(["f.jsonl", "f.csv", "f.jsonl.gz"]),
)
def test_fuzz_the_parser_raises_only_trace_errors(data: bytes, name: str) -> None:
    _only_trace_errors(data, name)


@pytest.mark.slow
@settings(max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.binary(max_size=600)
    | st.builds(_mutate, st.just(_VALID), _edits)
    | st.text(max_size=300).map(str.encode),
    st.sampled_from(["f.jsonl", "f.csv", "f.jsonl.gz"]),
)
def test_fuzz_the_parser_long_run(data: bytes, name: str) -> None:
    _only_trace_errors(data, name)


# ---------------------------------------------------------------- the parser's fast path
_FAULT_LINES = [
    '{"op":"fault","vcpu":0,"gfn":"0x1000","t":0}',
    '{ "op" : "fault" , "vcpu" : 7 , "gfn" : "0xABCdef" , "t" : 3 }\r',
    '{"op":"fault","vcpu":1,"gfn":"0x0"}',
    '{"op":"fault","vcpu":01,"gfn":"0x10","t":4}',  # leading zero: invalid JSON
    '{"op":"fault","vcpu":-1,"gfn":"0x10","t":4}',  # negative
    '{"op":"fault","vcpu":1048576,"gfn":"0x10","t":4}',  # MAX_ID + 1
    '{"op":"fault","vcpu":2,"gfn":"0x200000000000","t":4}',  # MAX_GFN + 1
    '{"op":"fault","vcpu":2,"gfn":"0X10","t":5}',  # upper-case prefix: full path accepts it
    '{"op":"fault","vcpu":2,"gfn":"0x10","t":2}',  # t goes back in time
    '{"op":"fault","vcpu":2,"gfn":"0x10","t":9007199254740992}',  # MAX_T + 1
    '{"op":"fault","vcpu":2,"gfn":"0x10","t":6,"t":7}',  # duplicate key
    '{"op":"fault","vcpu":3,"gfn":"0x11","t":6}',
    '\u00a0{"op":"fault","vcpu":3,"gfn":"0x12","t":6}',  # not JSON whitespace
    '{"op":"fault","vcpu":3,"gfn":"0x13"}',
    '{"op":"fault","gfn":"0x14","vcpu":3,"t":8}',  # other key order: the full path
    '{"op":"fault","vcpu":3,"gfn":"0x15","t":8,"note":"n"}',
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_FAULT_LINES), min_size=1, max_size=12))
def test_the_fast_path_parses_exactly_like_the_full_path(lines: list[str]) -> None:
    """Canonical fault lines skip the JSON decoder; the events or problems must be identical."""
    import explorer.ingest.parse as parse_module

    data = ("\n".join(['{"op":"td_create","td":0}', *lines]) + "\n").encode()
    results = []
    for fast in (True, False):
        parse_module.FAST_PATH = fast
        try:
            results.append(("ok", parse_trace(data, "t.jsonl").events))
        except TraceError as exc:
            results.append(("error", tuple(exc.problems)))
        finally:
            parse_module.FAST_PATH = True
    assert results[0] == results[1]


def test_the_fast_path_is_taken_for_generated_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated fault lines are canonical: none of them reaches the JSON decoder."""
    import explorer.ingest.parse as parse_module
    from explorer.ingest.generate import boot

    decoded: list[str] = []
    real = parse_module._loads
    monkeypatch.setattr(parse_module, "_loads", lambda raw: decoded.append(raw) or real(raw))
    text = "\n".join(boot(tds=2, vcpus=4, faults=500, seed=3)) + "\n"
    trace = parse_trace(text.encode(), "boot.jsonl")
    faults = [e for e in trace.events if isinstance(e, Fault)]
    assert len(faults) >= 500
    assert not any('"op":"fault"' in raw for raw in decoded)


# ---------------------------------------------------------------- hostile input, round 2
@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ('"0x10"', True),
        ('"0X10"', True),
        ("16", True),
        ('"0x000000000000000000000000000000010"', True),  # zero-padded: still 16
        ('"0x1_0"', False),
        ('" 0x1 "', False),
        ('"0x 1"', False),
        ('"-0x1"', False),
        ('"16"', False),  # decimal strings are CSV only
        ("16.0", False),
        ('"0x' + "f" * 4300 + '"', False),
        ('"0x' + "1" * 60000 + '"', False),
        ("9" * 5000, False),
    ],
)
def test_integer_rules_in_jsonl(value: str, ok: bool) -> None:
    data = f'{{"op": "zap", "td": 0, "gfn": {value}}}\n'.encode()
    if ok:
        assert parse_trace(data, "t.jsonl").events[0].gfn == 16  # type: ignore[attr-defined]
        return
    with pytest.raises(TraceError) as info:
        parse_trace(data, "t.jsonl")
    (problem,) = info.value.problems
    assert (problem.line, problem.col) == (1, 31), problem
    assert problem.reason.startswith("gfn "), problem
    assert len(problem.reason) < 200 and len(problem.text) <= 120


@pytest.mark.parametrize(
    ("cell", "ok"),
    [
        ("16", True),
        (" 16 ", True),
        ("0x10", True),
        ("1_6", False),
        ("1 6", False),
        ("+16", False),
        ("9" * 5000, False),
        ("0x" + "f" * 5000, False),
    ],
)
def test_integer_rules_in_csv(cell: str, ok: bool) -> None:
    data = f"op,td,gfn\nzap,0,{cell}\n".encode()
    if ok:
        assert parse_trace(data, "t.csv").events[0].gfn == 16  # type: ignore[attr-defined]
        return
    with pytest.raises(TraceError) as info:
        parse_trace(data, "t.csv")
    assert [(p.line, p.reason.split()[0]) for p in info.value.problems] == [(2, "gfn")]


def test_the_header_version_must_be_the_integer_1() -> None:
    for version in ("1.0", "true", '"1"', "1e0"):
        data = (
            f'{{"format": "dpamt-trace", "version": {version}}}\n{{"op": "td_create", "td": 0}}\n'
        )
        with pytest.raises(TraceError, match="unsupported version"):
            parse_trace(data.encode(), "t.jsonl")


def test_csv_quotes_must_close_on_their_line() -> None:
    good = b'op,td,note\ntd_create,0,"a ""quoted"", note"\n'
    assert parse_trace(good, "t.csv").events[0].note == 'a "quoted", note'
    spans = b'op,td,note\ntd_create,0,"a note\nthat goes on",x\n# "\ntd_create,1,\n'
    with pytest.raises(TraceError) as info:
        parse_trace(spans, "t.csv")
    assert [(p.line, p.col, p.reason.split(":")[0]) for p in info.value.problems] == [
        (2, 13, "unterminated quote")
    ]


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("gz", [True, False])
def test_too_many_events_is_one_problem_where_the_limit_is_crossed(
    monkeypatch: pytest.MonkeyPatch, header: bool, gz: bool
) -> None:
    monkeypatch.setattr(limits, "MAX_EVENTS", 5)
    lines = ['{"format": "dpamt-trace", "version": 1}'] if header else []
    lines += ["# comment", ""] + ['{"op": "note", "text": "x"}', "", "  # c"] * 8
    data = ("\n".join(lines) + "\n").encode()
    with pytest.raises(TraceError) as info:
        parse_trace(gzip.compress(data) if gz else data, "t.jsonl")
    (problem,) = info.value.problems
    sixth = [i for i, ln in enumerate(lines, 1) if '"note"' in ln][5]
    assert (problem.line, problem.col) == (sixth, 1)
    assert "more than 5 events (MAX_EVENTS)" in problem.reason
    # at the limit: accepted
    data = ("\n".join(lines[: lines.index(lines[sixth - 1], sixth - 1)]) + "\n").encode()
    assert len(parse_trace(data, "t.jsonl").events) == 5


def test_gzip_is_capped_while_it_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    import explorer.ingest.parse as parse_module

    monkeypatch.setattr(parse_module, "CHUNK_BYTES", 64)
    monkeypatch.setattr(limits, "MAX_DECOMPRESSED_BYTES", 1000)
    with pytest.raises(TraceError, match="expands past 1000 bytes"):
        parse_trace(gzip.compress(b"\n" * 1001 + b'{"op": "td_create", "td": 0}\n'), "t.gz")
    two = gzip.compress(b'{"op": "td_create", "td": 0}\n') + gzip.compress(b'{"op": "note", ')
    two += gzip.compress(b'"text": "x"}\n')
    assert len(parse_trace(two, "t.gz").events) == 2  # concatenated members
    for bad in (two[:-9], two + b"garbage"):
        with pytest.raises(TraceError, match="gzip data"):
            parse_trace(bad, "t.gz")


def test_a_long_line_is_refused_without_being_held(monkeypatch: pytest.MonkeyPatch) -> None:
    import explorer.ingest.parse as parse_module

    monkeypatch.setattr(parse_module, "CHUNK_BYTES", 16)
    monkeypatch.setattr(limits, "MAX_LINE_BYTES", 100)
    long_note = '{"op": "note", "text": "' + "y" * 500 + '"}'
    text = "\n".join(['{"op": "td_create", "td": 0}', "#" + "c" * 500, " " * 500, long_note])
    with pytest.raises(TraceError) as info:
        parse_trace(text.encode(), "t.jsonl")
    (problem,) = info.value.problems
    assert (problem.line, problem.col) == (4, 101)
    assert f"line is {len(long_note)} bytes" in problem.reason


_LINE_POOL = [
    "",
    "\r",
    "   ",
    "# comment",
    "  #",
    '{"op": "note", "text": "caf\u00e9"}',
    '{"op":"fault","vcpu":0,"gfn":"0x10"}',
    '{"op": "td_create", "td": 3}\r',
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(_LINE_POOL), min_size=1, max_size=300),
    st.integers(4, 200),
    st.booleans(),
    st.booleans(),
)
def test_chunking_never_changes_lines_or_events(
    lines: list[str], chunk: int, gz: bool, trailing_newline: bool
) -> None:
    """Streaming in chunks of any size (and the path for runs of blank lines and comments) gives
    the same events on the same lines as reading the whole text."""
    import explorer.ingest.parse as parse_module

    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    data = text.encode()
    want = [i for i, ln in enumerate(text.split("\n"), 1) if ln.strip() and "#" not in ln]
    saved = parse_module.CHUNK_BYTES
    try:
        parse_module.CHUNK_BYTES = chunk
        try:
            trace = parse_trace(gzip.compress(data) if gz else data, "t.jsonl")
        except TraceError as exc:
            assert not want, exc  # only comments and blank lines: no events, or empty
            return
    finally:
        parse_module.CHUNK_BYTES = saved
    assert [e.line for e in trace.events] == want


# ---------------------------------------------------------------- the bulk path, every line form
_FIELD_VALUES = {
    "td": ["0", "7", '"0x7"', '"0X1f"', "1048576", '"7"', "-1", "1.0", "true", "null", '"0x_1"'],
    "vcpu": ["0", "3", '"0x3"', "1048575", "01", '" 0x3"', '"0x3 "', '"0x\\u0663"'],
    "gfn": ['"0x200"', "512", '"0x1fffffffffff"', '"0x200000000000"', '"0x201"', "[1]", '"0xg"'],
    "pfn": ['"0x400"', "1024", '"0x10000000000"', "{}", '"0x0000000000000000000000000000400"'],
    "level": ['"4k"', '"2m"', '"1g"', "4"],
    "what": ['"alloc_fail"', '"page_aug_busy"', '"nope"'],
    "count": ["1", '"0x2"', "0", "1000001"],
    "text": ['"a story"', '"with: colons"', '"\\u003a"', '""', "5"],
    "note": ['"n"', '"x: y"', "null"],
    "t": ["0", "5", '"0x6"', "3", "9007199254740992", "NaN"],
    "order": ['["vcpu0", "td1"]', '["vcpu01"]', "[]", '"vcpu0"', '[["vcpu0"]]', '["cpu"]'],
    "tables": [
        *('["0x8000", "0x8001"]', "[32768, 32769]", "[]", '["0x8000", 32768]', '"0x8000"'),
        *('["0x1", "0x2", "0x3", "0x4", "0x5"]', '["0x10000000000"]', "[1.5]", '[["0x1"]]'),
        "[-1]",
    ],
    "control": [
        *('["0x9000"]', '["0x9000", "0x9001", "0x9002"]', "[]", '["0x9000", "0x9000"]'),
        "[" + ", ".join(f'"{0x9000 + i:#x}"' for i in range(66)) + "]",
        *('["0x9zz"]', "{}"),
    ],
    "op": [f'"{op}"' for op in SCHEMA] + ['"hop"', "1"],
    "extra": ["1"],
}


@st.composite
def _json_line(draw: st.DrawFn) -> str:
    op = draw(st.sampled_from(list(SCHEMA)))
    required, optional = SCHEMA[op]
    keys = ["op", *required]
    keys += draw(
        st.lists(st.sampled_from([*optional, "t", "note", "extra", "op", "td"]), max_size=3)
    )
    keys = draw(st.permutations(keys))
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " : ")]))
    pairs = []
    for key in keys:
        value = (
            f'"{op}"'
            if key == "op" and draw(st.booleans())
            else draw(st.sampled_from(_FIELD_VALUES[key]))
        )
        pairs.append(f'"{key}"{sep[1]}{value}')
    pad = draw(st.sampled_from(["", " ", "\t", "\r"]))
    return "{" + sep[0].join(pairs) + "}" + pad


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        _json_line()
        | st.sampled_from(["", "# c", "  ", '{"format": "dpamt-trace", "version": 1}']),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([1, 3, 256]),
)
@example(['{"op":"schedule","order":"vcpu0"}'], 1)  # a string order: the bulk path took it as text
@example(['{"op":"schedule","order":["vcpu0"]}', '{"op":"schedule","order":"vcpu1"}'], 256)
@example(['{"op":"inject","what":"alloc_fail","count":0}'], 256)  # below the range's low end
def test_every_line_form_parses_like_the_full_path(lines: list[str], batch: int) -> None:
    """Any key order, spacing, hex or decimal integers, optional fields, bad values, duplicate
    keys, colons and escapes in text: the bulk path and the full path give equal events or
    equal problems (line:col, reason, text)."""
    import explorer.ingest.parse as parse_module

    data = ("\n".join(lines) + "\n").encode()
    results = []
    saved = parse_module._BATCH
    for fast in (True, False):
        parse_module.FAST_PATH = fast
        parse_module._BATCH = batch
        try:
            results.append(("ok", parse_trace(data, "t.jsonl").events))
        except TraceError as exc:
            results.append(("error", tuple(exc.problems)))
        finally:
            parse_module.FAST_PATH = True
            parse_module._BATCH = saved
    assert results[0] == results[1]


# ---------------------------------------------------------------- pinned pages: tables, control
_FAULT = '{"op": "fault", "vcpu": 0, "gfn": "0x10", '
_PIN_PROBLEMS = [
    (_FAULT + '"tables": "0x8000"}', "tables must be a list of pfns, got str"),
    (_FAULT + '"tables": {"a": 1}}', "tables must be a list of pfns, got dict"),
    (_FAULT + '"tables": 5}', "tables must be a list of pfns, got int"),
    (_FAULT + '"tables": ["0x8000", "0xzz"]}', "tables[1] must be an integer, got a string"),
    (_FAULT + '"tables": ["0x8000", true]}', "tables[1] must be an integer, got bool"),
    (_FAULT + '"tables": [1.0]}', "tables[0] must be an integer, got a float"),
    (_FAULT + '"tables": [["0x1"]]}', "tables[0] must be an integer, got list"),
    (_FAULT + '"tables": [-1]}', "tables[0]=-0x1 is out of range"),
    (_FAULT + '"tables": ["0x10000000000"]}', "tables[0]=0x10000000000 is out of range"),
    (_FAULT + '"tables": [' + "9" * 30 + "]}", "tables[0] is a 30-digit number, out of range"),
    (_FAULT + '"tables": ["0x1", "0x2", "0x3", "0x4", "0x5"]}', "tables has 5 pfns, over the"),
    (_FAULT + '"tables": ["0x8000", 32768]}', "tables[1]=0x8000 repeats tables[0]"),
    ('{"op": "td_create", "td": 0, "control": ["0x1", "0x1"]}', "control[1]=0x1 repeats"),
    (
        '{"op": "vcpu_create", "td": 0, "vcpu": 0, "control": ['
        + ", ".join(str(i) for i in range(MAX_CONTROL_PINS + 1))
        + "]}",
        f"control has {MAX_CONTROL_PINS + 1} pfns, over the limit of {MAX_CONTROL_PINS}",
    ),
    ('{"op": "zap", "td": 0, "gfn": 1, "tables": []}', "unknown field 'tables' for op 'zap'"),
    ('{"op": "td_destroy", "td": 0, "control": []}', "unknown field 'control'"),
]


@pytest.mark.parametrize(("line", "reason"), _PIN_PROBLEMS)
def test_a_bad_pin_list_is_one_problem_at_its_field(line: str, reason: str) -> None:
    """Every way a pinned-page list can be wrong is reported at the list's line:col, on both the
    bulk path (a run of 300 good lines around it) and the full path."""
    key = "control" if '"control"' in line else "tables"
    good = _FAULT.replace("0x10", "0x20") + '"tables": ["0x100"]}'
    data = "\n".join([good] * 150 + [line] + [good] * 150).encode()
    with pytest.raises(TraceError) as exc:
        parse_trace(data, "t.jsonl")
    (p,) = exc.value.problems
    assert (p.line, p.col) == (151, line.index(f'"{key}"') + len(key) + 5), p
    assert p.reason.startswith(reason), p


def test_pins_round_trip_in_hex_and_in_csv_cells() -> None:
    """``dump_trace`` writes pins as lists of hex pfns; CSV carries them as a cell of pfns
    separated by spaces; both parse to the events' tuples (an empty JSON list to an empty
    tuple: a fault that pins no table page)."""
    evs = [
        TdCreate(td=0, control=(0x9000, 0x9001)),
        VcpuCreate(td=0, vcpu=0, control=(0x9100,)),
        Fault(vcpu=0, gfn=0x10, pfn=0x8000, tables=(0x8100, 0x8101, 0x8102)),
        Fault(vcpu=0, gfn=0x11, tables=()),
    ]
    text = dump_trace(evs)
    assert '"tables": ["0x8100", "0x8101", "0x8102"]' in text
    assert [replace(e, line=0) for e in parse_trace(text.encode(), "t.jsonl").events] == evs
    csv_text = (
        "op,td,vcpu,gfn,pfn,tables,control\n"
        "td_create,0,,,,,0x9000 0x9001\n"
        "vcpu_create,0,0,,,, 37120 \n"
        "fault,,0,0x10,0x8000,0x8100 0x8101 0x8102,\n"
    )
    got = parse_trace(csv_text.encode(), "t.csv").events
    assert [replace(e, line=0) for e in got] == evs[:3]
    with pytest.raises(TraceError) as exc:
        parse_trace(b"op,td,control\ntd_create,0,0x9000 0x9000\n", "t.csv")
    (p,) = exc.value.problems
    assert (p.line, p.reason) == (2, "control[1]=0x9000 repeats control[0]")


def test_pinned_lines_take_the_bulk_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """An imported capture pins most of its events' pages: such lines (JSON and CSV) are
    checked column-wise, none of them by the full path's per-line decoder or csv reader."""
    import explorer.ingest.parse as parse_module

    evs = [TdCreate(td=0, control=(0x9000, 0x9001)), VcpuCreate(td=0, vcpu=0, control=(0x9100,))]
    evs += [Fault(vcpu=0, gfn=g, tables=(0x8000 + 2 * g, 0x8001 + 2 * g)) for g in range(600)]
    calls: list[str] = []
    real_loads, real_reader = parse_module._loads, parse_module.csv.reader
    monkeypatch.setattr(parse_module, "_loads", lambda raw: calls.append(raw) or real_loads(raw))
    monkeypatch.setattr(parse_module.csv, "reader", lambda r: calls.append(r[0]) or real_reader(r))
    got = parse_trace(dump_trace(evs).encode(), "t.jsonl").events
    assert [replace(e, line=0) for e in got] == evs
    rows = ["op,td,vcpu,gfn,tables"] + [
        f"fault,,0,{g},{g + 5000} 0x{g + 9000:x}" for g in range(600)
    ]
    assert len(parse_trace(("\n".join(rows) + "\n").encode(), "t.csv").events) == 600
    assert [c for c in calls if '"op"' in c or c.startswith("fault")] == []


# ---------------------------------------------------------------- the schema and the CSV bulk path
def test_the_schema_says_what_the_event_classes_hold() -> None:
    """explorer/ingest/schema.py's table of ops and fields agrees with the event classes: every
    op, every field, required or optional as the class has it, and every field typed."""
    from explorer.ingest.schema import EVENTS, FIELDS, model_fields

    assert set(EVENTS) == set(EVENT_TYPES)
    for op, cls in EVENT_TYPES.items():
        assert EVENTS[op] == model_fields(cls), op
        assert set(EVENTS[op][0] + EVENTS[op][1]) <= set(FIELDS), op


_CSV_CELLS = {
    "op": [*SCHEMA, "hop", " fault", ""],
    "td": ["0", "7", "0x7", " 3 ", "1048576", "-1", "1.0", "", "0x_1", "\u0663"],
    "vcpu": ["0", "3", "0X3", "1048575", "01", "", "0x3 ", "+1"],
    "gfn": ["512", "0x200", "0x1fffffffffff", "0x200000000000", "0x201", "", "0xg", "1_0"],
    "pfn": ["1024", "0x400", "0x10000000000", "", "0x" + "0" * 30 + "1"],
    "level": ["4k", "2m", "1g", "", " 4k"],
    "what": ["alloc_fail", "page_aug_busy", "nope", ""],
    "count": ["1", "0x2", "0", "1000001", ""],
    "text": ["a story", "with: colons", "", "\u00a0"],
    "note": ["n", "", " ", "x y", "\x1f"],
    "t": ["0", "5", "0x6", "3", "9007199254740992", "", " 7"],
    "order": ["vcpu0 td1", "vcpu01", "", "cpu"],
    "tables": ["0x8000 0x8001", "32768", "", " 0x8000 ", "0x8000 32768", "0x8000,", "0xzz", "-1"],
    "control": ["0x9000 0x9001 0x9002", "0x9000", "", "0x9000 0x9000", "0x10000000000", "1_0"],
}


@st.composite
def _csv_trace(draw: st.DrawFn) -> list[str]:
    columns = draw(st.permutations(CSV_COLUMNS).map(list))
    columns = ["op", *draw(st.lists(st.sampled_from(columns), max_size=6, unique=True))]
    columns = list(dict.fromkeys(columns))
    if draw(st.booleans()):
        columns = draw(st.permutations(columns))
    op_col = columns.index("op")
    rows = [",".join(columns)]
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            rows.append(draw(st.sampled_from(["", "# c", "  ", 'td_create,"0', ",".join(columns)])))
            continue
        op = draw(st.sampled_from(list(SCHEMA)))
        required, optional = SCHEMA[op]
        cells = []
        for i, col in enumerate(columns):
            if i == op_col:
                cells.append(op if kind > 2 else draw(st.sampled_from(_CSV_CELLS["op"])))
            elif col in required and kind > 3:
                cells.append(draw(st.sampled_from([c for c in _CSV_CELLS[col] if c][:3])))
            elif col in (*required, *optional, "t", "note") or kind < 3:
                cells.append(draw(st.sampled_from(_CSV_CELLS[col])))
            else:
                cells.append("")
        if kind == 1:
            cells.append(draw(st.sampled_from(["", "x"])))
        rows.append(",".join(cells) + draw(st.sampled_from(["", "", "\r"])))
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_csv_trace(), st.sampled_from([1, 3, 256]))
@example(["op,vcpu,gfn,t", "fault,0,16,1", "fault,1,0x11,"], 256)  # t in some rows only
@example(["op,td,gfn,text", "zap,0,16,", "note,,,\u00a0"], 256)  # a blank cell is no cell
@example(["op,what,count", "inject,alloc_fail,0"], 256)  # below the range's low end
@example(["op,td,note", "td_create,0,\x1c"], 256)  # an ASCII separator is whitespace to strip()
def test_every_csv_row_form_parses_like_the_full_path(rows: list[str], batch: int) -> None:
    """Columns in any order, cells given or blank, decimal and hex, blanks around cells, bad
    values, rows too wide, comments: the bulk path and the full path give equal events or equal
    problems (line:col, reason, text)."""
    import explorer.ingest.parse as parse_module

    data = ("\n".join(rows) + "\n").encode()
    results = []
    saved = parse_module._BATCH
    for fast in (True, False):
        parse_module.FAST_PATH = fast
        parse_module._BATCH = batch
        try:
            results.append(("ok", parse_trace(data, "t.csv").events))
        except TraceError as exc:
            results.append(("error", tuple(exc.problems)))
        finally:
            parse_module.FAST_PATH = True
            parse_module._BATCH = saved
    assert results[0] == results[1]


def test_valid_csv_takes_the_bulk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid CSV trace of mixed ops, with optional cells given in some rows only, is built
    without the csv module (the full path's reader): its rows go through the bulk path."""
    import explorer.ingest.parse as parse_module

    rows = ["op,td,vcpu,gfn,t,note", "td_create,0,,,,", "vcpu_create,0,0,,,", "td_finalize,0,,,,"]
    rows += [f"fault,,0,{g},{g // 3},{'n' if g % 7 == 0 else ''}" for g in range(600)]
    rows += [f"zap,0,,0x{g:x},200," for g in range(0, 600, 50)]
    data = ("\n".join(rows) + "\n").encode()
    want = parse_trace(data, "t.csv").events
    calls: list[str] = []
    real = parse_module.csv.reader
    monkeypatch.setattr(parse_module.csv, "reader", lambda r: calls.append(r[0]) or real(r))
    assert parse_trace(data, "t.csv").events == want
    assert calls == [rows[0]]  # the header row only
    assert len(want) == 3 + 600 + 12
