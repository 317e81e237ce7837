"""Parse and validate fault-path traces, format v1 (docs/trace-format.md is the contract).

JSON Lines (``.jsonl``, ``.jsonl.gz``) or CSV. Every problem is reported as a
:class:`~explorer.model.errors.Problem` with ``source:line:col``, the offending text and what was
expected; problems are collected (up to :data:`~explorer.trace.limits.MAX_ERRORS`) and raised
together as one :class:`~explorer.model.errors.TraceError`. Nothing else escapes on bad input.

Only the shape of each event is checked here. Whether an event can happen (its vCPU exists, its
gfn is mapped, its pfn is free and inside host memory, its gfn within the EPT's reach) depends on
the state and the settings, and is checked by the engine when the event runs.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from dataclasses import MISSING, dataclass, fields
from typing import Any

from explorer.model.constants import INJECTIONS, PAGES_PER_REGION
from explorer.model.errors import Problem, TraceError
from explorer.model.events import EVENT_TYPES, Event, plain_fault
from explorer.model.settings import SETTING_SPECS
from explorer.trace import limits as L
from explorer.trace.gcpause import gc_paused

FORMAT_NAME = "dpamt-trace"
FORMAT_VERSION = 1
HEADER_KEYS = ("format", "version", "title", "description", "settings")
COMMON_FIELDS = ("t", "note")
LEVELS = ("4k", "2m")


@dataclass(frozen=True)
class Trace:
    """A parsed trace: its header and its events (each knows its line)."""

    source: str
    format: str  # "jsonl" | "csv"
    title: str
    description: str
    settings: dict[str, Any]  # validated overrides from the header
    events: tuple[Event, ...]


# ------------------------------------------------------------------ field schema
def _required_and_optional(cls: type[Event]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    req, opt = [], []
    for f in fields(cls):
        if f.name in ("line", "t", "note"):
            continue
        if f.default is MISSING and f.default_factory is MISSING:
            req.append(f.name)
        else:
            opt.append(f.name)
    return tuple(req), tuple(opt)


#: op -> (required fields, optional fields), from the event classes themselves.
SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    op: _required_and_optional(cls) for op, cls in EVENT_TYPES.items()
}
#: Every column a CSV trace may have.
CSV_COLUMNS = ("op", *sorted({f for r, o in SCHEMA.values() for f in (*r, *o)}), *COMMON_FIELDS)

_INT_RANGES = {
    "td": (0, L.MAX_ID),
    "vcpu": (0, L.MAX_ID),
    "gfn": (0, L.MAX_GFN),
    "pfn": (0, L.MAX_PFN),
    "count": (1, L.MAX_INJECT_COUNT),
    "t": (0, L.MAX_T),
}
_CHOICES = {"level": LEVELS, "what": INJECTIONS}
_TEXT = ("note", "text")


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, line: int, col: int, reason: str, text: str = "", expected: str = "") -> None:
        if len(self.problems) < L.MAX_ERRORS:
            self.problems.append(Problem(self.source, line, col, reason, _short(text), expected))
        elif len(self.problems) == L.MAX_ERRORS:
            self.problems.append(
                Problem(self.source, line, 0, f"more than {L.MAX_ERRORS} problems: stopped here")
            )

    @property
    def full(self) -> bool:
        return len(self.problems) > L.MAX_ERRORS


def _short(text: str, n: int = 120) -> str:
    text = text.replace("\r", "")
    return text if len(text) <= n else text[: n - 3] + "..."


# ------------------------------------------------------------------ bytes -> text
def _decode(data: bytes, source: str) -> str:
    """Bytes to text: gunzip (bounded), reject UTF-16 and binary, accept a UTF-8 BOM."""
    if len(data) > L.MAX_UPLOAD_BYTES:
        raise TraceError(
            Problem(
                source,
                0,
                0,
                f"the file is {len(data)} bytes, over the limit of "
                f"{L.MAX_UPLOAD_BYTES} bytes (MAX_UPLOAD_BYTES)",
            )
        )
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, source)
    if not data.strip():
        raise TraceError(
            Problem(source, 0, 0, "the trace is empty", "", "a JSON Lines or CSV trace")
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and data[1:2] == b"\x00"):
        raise TraceError(
            Problem(source, 1, 1, "the file is UTF-16; traces are UTF-8", "", "UTF-8 text")
        )
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    nul = data.find(b"\x00")
    if nul >= 0:
        line, col = _position(data, nul)
        raise TraceError(
            Problem(
                source, line, col, "binary data (a NUL byte): not a text trace", "", "UTF-8 text"
            )
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _position(data, exc.start)
        raise TraceError(
            Problem(
                source,
                line,
                col,
                "invalid UTF-8",
                repr(data[exc.start : exc.start + 8]),
                "UTF-8 text",
            )
        ) from None


def _position(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    return line, offset - start + 1


def _gunzip(data: bytes, source: str) -> bytes:
    out: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(wbits=31)
            chunk = d.decompress(rest, L.MAX_DECOMPRESSED_BYTES - size + 1)
            while True:
                size += len(chunk)
                if size > L.MAX_DECOMPRESSED_BYTES:
                    raise TraceError(
                        Problem(
                            source,
                            0,
                            0,
                            "the gzip data expands past "
                            f"{L.MAX_DECOMPRESSED_BYTES} bytes (MAX_DECOMPRESSED_BYTES)",
                        )
                    )
                out.append(chunk)
                if not d.unconsumed_tail:
                    break
                chunk = d.decompress(d.unconsumed_tail, L.MAX_DECOMPRESSED_BYTES - size + 1)
            if not d.eof:
                raise TraceError(Problem(source, 0, 0, "the gzip data is truncated"))
            rest = d.unused_data
    except zlib.error as exc:
        raise TraceError(Problem(source, 0, 0, f"invalid gzip data: {exc}")) from None
    return b"".join(out)


# ------------------------------------------------------------------ values
def _value_col(raw: str, key: str) -> int:
    """1-based column of ``key``'s value in a JSON line (of the key if the value is not found)."""
    i = raw.find(f'"{key}"')
    if i < 0:
        return 1
    j = raw.find(":", i + len(key) + 2)
    if j < 0:
        return i + 1
    j += 1
    while j < len(raw) and raw[j] in " \t":
        j += 1
    return j + 1


def _int(value: Any, *, csv_cell: bool) -> int | None:
    """A JSON integer, a hex string "0x..", or (CSV) a decimal string; None if not an int."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            if text.startswith("0x"):
                return int(text, 16)
            if csv_cell:
                return int(text, 10)
        except ValueError:
            return None
    return None


def _check_field(key: str, value: Any, *, csv_cell: bool) -> tuple[Any, str, str]:
    """(value, reason, expected): reason is empty when the value is good."""
    if key in _INT_RANGES:
        lo, hi = _INT_RANGES[key]
        n = _int(value, csv_cell=csv_cell)
        expected = (
            f"an integer in {lo}..{hi:#x}" if key in ("gfn", "pfn") else f"an integer in {lo}..{hi}"
        )
        if n is None:
            kind = "a float" if isinstance(value, float) else type(value).__name__
            if isinstance(value, str):
                kind = "a string that is not an integer"
            return (
                None,
                f"{key} must be an integer, got {kind}",
                expected + ' (JSON number or "0x...")',
            )
        if not lo <= n <= hi:
            return None, f"{key}={n} is out of range", expected
        return n, "", ""
    if key in _CHOICES:
        choices = _CHOICES[key]
        if not isinstance(value, str) or value not in choices:
            return None, f"{key}={value!r} is not allowed", " | ".join(choices)
        return value, "", ""
    if key in _TEXT:
        if not isinstance(value, str):
            return None, f"{key} must be a string", "a string"
        if len(value) > L.MAX_TEXT:
            return None, f"{key} is {len(value)} characters, over the limit of {L.MAX_TEXT}", ""
        return value, "", ""
    return None, f"unknown field {key!r}", ""


def _depth(value: Any, level: int = 1) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level - 1


# ------------------------------------------------------------------ objects -> events
class _Builder:
    def __init__(self, c: _Collector, csv_mode: bool) -> None:
        self.c = c
        self.csv = csv_mode
        self.events: list[Event] = []
        self.last_t: int | None = None
        self.last_t_line = 0

    def event(self, obj: dict[str, Any], line: int, raw: str) -> None:
        c = self.c

        def col(key: str) -> int:
            return 1 if self.csv else _value_col(raw, key)

        op = obj.get("op")
        if op is None:
            c.add(line, 1, "missing field 'op'", raw, ", ".join(SCHEMA))
            return
        if not isinstance(op, str) or op not in SCHEMA:
            c.add(line, col("op"), f"unknown op {op!r}", raw, ", ".join(SCHEMA))
            return
        required, optional = SCHEMA[op]
        allowed = set(required) | set(optional) | set(COMMON_FIELDS) | {"op"}
        values: dict[str, Any] = {}
        ok = True
        for key, value in obj.items():
            if key == "op":
                continue
            if key not in allowed:
                c.add(
                    line,
                    col(key),
                    f"unknown field {key!r} for op {op!r}",
                    raw,
                    ", ".join(sorted(allowed - {"op"})),
                )
                ok = False
                continue
            checked, reason, expected = _check_field(key, value, csv_cell=self.csv)
            if reason:
                c.add(line, col(key), reason, f"{key}={value!r}", expected)
                ok = False
            else:
                values[key] = checked
        for key in required:
            if key not in obj:
                c.add(line, 1, f"missing field {key!r} for op {op!r}", raw, ", ".join(required))
                ok = False
        if not ok:
            return
        if op == "fault" and values.get("level") == "2m":
            for key in ("gfn", "pfn"):
                v = values.get(key)
                if v is not None and v % PAGES_PER_REGION:
                    c.add(
                        line,
                        col(key),
                        f"a 2m fault needs {key} aligned to 512 pages",
                        f"{key}={v:#x}",
                        f"a multiple of {PAGES_PER_REGION:#x}",
                    )
                    ok = False
        t = values.get("t")
        if t is not None:
            if self.last_t is not None and t < self.last_t:
                c.add(
                    line,
                    col("t"),
                    f"t={t} goes back in time (line {self.last_t_line} has t={self.last_t})",
                    f"t={t}",
                    f"t >= {self.last_t}",
                )
                ok = False
            else:
                self.last_t, self.last_t_line = t, line
        if not ok:
            return
        if len(self.events) >= L.MAX_EVENTS:
            c.add(line, 1, f"more than {L.MAX_EVENTS} events (MAX_EVENTS)")
            return
        self.events.append(EVENT_TYPES[op](line=line, **values))


def _header(
    obj: dict[str, Any], line: int, raw: str, c: _Collector
) -> tuple[str, str, dict[str, Any]]:
    title = description = ""
    settings: dict[str, Any] = {}
    for key, value in obj.items():
        col = _value_col(raw, key)
        if key not in HEADER_KEYS:
            c.add(line, col, f"unknown header field {key!r}", raw, ", ".join(HEADER_KEYS))
        elif key == "format" and value != FORMAT_NAME:
            c.add(
                line,
                col,
                f"format {value!r} is not a DPAMT trace",
                f"format={value!r}",
                f'"{FORMAT_NAME}"',
            )
        elif key == "version" and (isinstance(value, bool) or value != FORMAT_VERSION):
            c.add(
                line,
                col,
                f"unsupported version {value!r}",
                f"version={value!r}",
                str(FORMAT_VERSION),
            )
        elif key in ("title", "description"):
            if not isinstance(value, str) or len(value) > L.MAX_TEXT:
                c.add(
                    line,
                    col,
                    f"{key} must be a string of at most {L.MAX_TEXT} characters",
                    f"{key}={value!r}",
                )
            elif key == "title":
                title = value
            else:
                description = value
        elif key == "settings":
            if not isinstance(value, dict):
                c.add(
                    line,
                    col,
                    "settings must be an object",
                    f"settings={value!r}",
                    '{"key": value, ...}',
                )
                continue
            for skey, svalue in value.items():
                scol = _value_col(raw, skey)
                spec = SETTING_SPECS.get(skey)
                if spec is None:
                    c.add(line, scol, f"unknown setting {skey!r}", skey, ", ".join(SETTING_SPECS))
                    continue
                try:
                    settings[skey] = spec.check(svalue)
                except ValueError as exc:
                    c.add(
                        line,
                        scol,
                        f"setting {skey}={svalue!r}: {exc}",
                        f"{skey}={svalue!r}",
                        spec.expected,
                    )
    if "version" not in obj:
        c.add(line, 1, "the header has no version", raw, f'"version": {FORMAT_VERSION}')
    return title, description, settings


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (numbers must be finite integers)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate field {k!r}")
        out[k] = v
    return out


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def _loads(raw: str) -> Any:
    return _DECODER.decode(raw)


# ------------------------------------------------------------------ entry point
def parse_trace(data: bytes, source: str = "trace") -> Trace:
    """Parse ``data`` (the file's bytes; ``source`` names it in messages) into a :class:`Trace`."""
    with gc_paused():
        return _parse_trace(data, source)


def _parse_trace(data: bytes, source: str) -> Trace:
    text = _decode(data, source)
    lines = text.split("\n")
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    head = first.strip().lstrip("\ufeff")
    is_csv = source.lower().endswith(".csv") or head == "op" or head.startswith("op,")
    if is_csv:
        return _parse_csv(lines, source)
    return _parse_jsonl(lines, source)


def _check_line_length(raw: str, n: int, c: _Collector) -> bool:
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > L.MAX_LINE_BYTES:
        c.add(
            n,
            L.MAX_LINE_BYTES + 1,
            f"line is {size} bytes, over the limit of {L.MAX_LINE_BYTES} (MAX_LINE_BYTES)",
            raw[:60],
        )
        return False
    return True


#: The canonical fault line (what ``generate`` and ``write`` emit, spaces allowed where JSON allows
#: them): ``{"op":"fault","vcpu":N,"gfn":"0x..","t":N}``, ``t`` optional. JSON integers only (no
#: sign, no leading zero), bounded digit counts (so such a line is far below MAX_LINE_BYTES).
_WS = r"[ \t\r]*"
_FAST_FAULT = re.compile(
    rf'{_WS}\{{{_WS}"op"{_WS}:{_WS}"fault"{_WS},{_WS}"vcpu"{_WS}:{_WS}(0|[1-9][0-9]{{0,9}}){_WS},'
    rf'{_WS}"gfn"{_WS}:{_WS}"0x([0-9a-fA-F]{{1,16}})"{_WS}'
    rf'(?:,{_WS}"t"{_WS}:{_WS}(0|[1-9][0-9]{{0,18}}){_WS})?\}}{_WS}'
).fullmatch
#: Tests turn the fast path off to compare it with the full path.
FAST_PATH = True


def _parse_jsonl(lines: list[str], source: str) -> Trace:
    """JSON Lines. Canonical fault lines, nearly all of a large trace, take a fast path: one
    regular expression instead of a JSON decode and the per-field schema checks (about 3 us per
    line instead of 14). It accepts only lines the full path would accept with the same values;
    a line it does not match, or whose values are out of range or go back in time, goes through
    the full path, which reports the exact problem."""
    c = _Collector(source)
    b = _Builder(c, csv_mode=False)
    title = description = ""
    settings: dict[str, Any] = {}
    seen_content = False
    fast = _FAST_FAULT if FAST_PATH else None
    events = b.events
    max_id, max_gfn, max_t, max_events = L.MAX_ID, L.MAX_GFN, L.MAX_T, L.MAX_EVENTS
    for n, raw in enumerate(lines, 1):
        if c.full:
            break
        if fast is not None and (mm := fast(raw)) is not None:
            v, g, ts = mm.groups()
            vcpu, gfn = int(v), int(g, 16)
            t = None if ts is None else int(ts)
            last_t = b.last_t
            if (
                vcpu <= max_id
                and gfn <= max_gfn
                and len(events) < max_events
                and (t is None or (t <= max_t and (last_t is None or t >= last_t)))
            ):
                if t is not None:
                    b.last_t, b.last_t_line = t, n
                events.append(plain_fault(n, vcpu, gfn, t))
                seen_content = True
                continue
        raw = raw.rstrip("\r")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not _check_line_length(raw, n, c):
            seen_content = True
            continue
        try:
            obj = _loads(raw)
        except json.JSONDecodeError as exc:
            reason = "invalid JSON: " + exc.msg
            if exc.pos >= len(raw.rstrip()):
                reason = "invalid JSON: the line ends early (truncated?)"
            c.add(n, exc.colno, reason, raw, "one JSON object per line")
            seen_content = True
            continue
        except RecursionError:
            c.add(n, 1, f"JSON nested too deeply (limit {L.MAX_NESTING})", raw)
            seen_content = True
            continue
        except ValueError as exc:  # NaN/Infinity, duplicate keys, over-long integers
            msg = str(exc)
            if "digits" in msg:
                msg = "an integer with thousands of digits"
            c.add(n, 1, f"invalid JSON: {msg}", raw, "one JSON object per line")
            seen_content = True
            continue
        if not isinstance(obj, dict):
            c.add(n, 1, f"expected a JSON object, got {type(obj).__name__}", raw, '{"op": ...}')
            seen_content = True
            continue
        depth = _depth(obj)
        if depth > L.MAX_NESTING:
            c.add(n, 1, f"JSON nested {depth} deep, over the limit of {L.MAX_NESTING}", raw)
            seen_content = True
            continue
        if not seen_content and "format" in obj and "op" not in obj:
            title, description, settings = _header(obj, n, raw, c)
            seen_content = True
            continue
        seen_content = True
        for key, value in obj.items():
            if isinstance(value, (dict, list)):
                c.add(
                    n,
                    _value_col(raw, key),
                    f"{key} must be a scalar, not a"
                    f"{'n object' if isinstance(value, dict) else ' list'}",
                    f"{key}=...",
                )
                break
        else:
            b.event(obj, n, raw)
    return _finish(c, b, source, "jsonl", title, description, settings)


def _parse_csv(lines: list[str], source: str) -> Trace:
    c = _Collector(source)
    b = _Builder(c, csv_mode=True)
    header: list[str] | None = None
    header_line = 0
    for n, raw in enumerate(lines, 1):
        if c.full:
            break
        raw = raw.rstrip("\r")
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not _check_line_length(raw, n, c):
            continue
        try:
            row = next(csv.reader([raw]))
        except csv.Error as exc:
            c.add(n, 1, f"invalid CSV: {exc}", raw)
            continue
        if header is None:
            header = [h.strip().lstrip("\ufeff") for h in row]
            header_line = n
            for i, h in enumerate(header):
                if h not in CSV_COLUMNS:
                    c.add(n, _csv_col(raw, i), f"unknown column {h!r}", h, ", ".join(CSV_COLUMNS))
            if "op" not in header:
                c.add(
                    n,
                    1,
                    "the CSV header has no 'op' column",
                    raw,
                    "op," + ",".join(CSV_COLUMNS[1:4]) + ",...",
                )
                break
            if len(set(header)) != len(header):
                c.add(n, 1, "a column appears twice in the CSV header", raw)
                break
            continue
        if len(row) > len(header):
            c.add(
                n,
                _csv_col(raw, len(header)),
                f"{len(row)} cells but the header has {len(header)} columns",
                raw,
            )
            continue
        obj = {
            h: v for h, v in zip(header, row, strict=False) if v.strip() != "" and h in CSV_COLUMNS
        }
        op = obj.get("op", "").strip()
        if op in SCHEMA:
            missing = [k for k in SCHEMA[op][0] if k not in header]
            if missing:
                c.add(
                    header_line,
                    1,
                    f"the CSV has no {', '.join(missing)} column for op {op!r} (line {n})",
                    ",".join(header),
                    ", ".join(SCHEMA[op][0]),
                )
                continue
        b.event(obj, n, raw)
    if header is None:
        c.add(0, 0, "the CSV has no header row", "", "op,vcpu,gfn,...")
    return _finish(c, b, source, "csv", "", "", {})


def _csv_col(raw: str, index: int) -> int:
    pos = 0
    for _ in range(index):
        comma = raw.find(",", pos)
        if comma < 0:
            return len(raw) + 1
        pos = comma + 1
    return pos + 1


def _finish(
    c: _Collector,
    b: _Builder,
    source: str,
    fmt: str,
    title: str,
    description: str,
    settings: dict[str, Any],
) -> Trace:
    if not c.problems and not b.events:
        c.add(0, 0, "the trace has no events", "", "at least one event line")
    if c.problems:
        raise TraceError(c.problems)
    return Trace(source, fmt, title, description, settings, tuple(b.events))
