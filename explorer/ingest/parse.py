"""Parse and validate fault-path traces, format v1 (docs/trace-format.md is the contract).

JSON Lines (``.jsonl``, ``.jsonl.gz``) or CSV. Every problem is reported as a
:class:`~explorer.model.errors.Problem` with ``source:line:col``, the offending text and what was
expected; problems are collected (up to :data:`~explorer.ingest.limits.MAX_ERRORS`) and raised
together as one :class:`~explorer.model.errors.TraceError`. Nothing else escapes on bad input.

The bytes are read in two streaming passes, one chunk at a time (docs/reliability.md, "Refusing
is cheap"): a first pass refuses what is refused whole, the second parses line by line.

Only the shape of each event is checked here. Whether an event can happen (its vCPU exists, its
gfn is mapped, its pfn is free and inside host memory, its gfn within the EPT's reach) depends on
the state and the settings, and is checked by the engine when the event runs.
"""

from __future__ import annotations

import csv
import json
import operator
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from itertools import compress, count, islice, repeat
from typing import Any, NoReturn

from explorer.ingest import limits as L
from explorer.ingest.gcpause import gc_paused
from explorer.model.constants import INJECTIONS, PAGES_PER_REGION
from explorer.model.errors import Problem, TraceError
from explorer.model.events import EVENT_TYPES, Event, plain_fault, slot_setters
from explorer.model.settings import SETTING_SPECS, int_text

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
#: A CPU's name in a schedule's ``order``: what the engine calls its threads.
_THREAD = re.compile(r"(?:vcpu|td)(?:0|[1-9][0-9]{0,6})")


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.full = False  # stop reading: a limit was crossed, or MAX_ERRORS problems found

    def add(self, line: int, col: int, reason: str, text: str = "", expected: str = "") -> None:
        if len(self.problems) < L.MAX_ERRORS:
            self.problems.append(Problem(self.source, line, col, reason, _short(text), expected))
        elif len(self.problems) == L.MAX_ERRORS:
            self.problems.append(
                Problem(self.source, line, 0, f"more than {L.MAX_ERRORS} problems: stopped here")
            )
            self.full = True

    def stop(self, line: int, col: int, reason: str) -> None:
        """Report ``reason`` once and stop reading."""
        self.add(line, col, reason)
        self.full = True


def _r(value: Any) -> str:
    """``repr(value)`` short enough for a reason (the value may be a 60 KB string)."""
    return _short(repr(value), 60)


def _short(text: str, n: int = 120) -> str:
    text = text.replace("\r", "")
    return text if len(text) <= n else text[: n - 3] + "..."


# ------------------------------------------------------------------ bytes -> lines
#: Bytes handed on at a time: the decompressor's output chunk, and the slices of a plain file.
CHUNK_BYTES = 1 << 20
#: Compressed bytes fed to the decompressor at a time.
_GZIP_INPUT_BYTES = 64 * 1024
#: Whitespace of a blank line (ASCII only: JSON has no other whitespace; the line counter of the
#: first pass and the parsers agree on what a blank line is).
_BLANK = " \t\r\f\v"
_BLANK_B = b" \t\r\f\v"
#: The first pass's byte classes (with the blanks deleted): a line starts with "x" if it is a
#: content line (neither blank nor a comment), the lines it counts.
_CLASSES = bytes(b if b in b"\n#" else ord("x") for b in range(256))
#: What the line reader yields in place of a line over MAX_LINE_BYTES (already reported). No real
#: line can be this: a NUL byte refuses the file before any line is read.
_TOO_LONG = "\x00"


class _TooManyLines(Exception):
    """The first pass saw more lines than MAX_EVENTS allows: count the content lines exactly."""


@dataclass
class _Scan:
    """What the first pass learns about the bytes before any line is parsed."""

    first: bytes  # the first content line (at most MAX_LINE_BYTES of it), b"" if none
    lines: int = 0  # lines in the file (for progress: the second pass reports against it)


def _refuse(source: str, line: int, col: int, reason: str, expected: str = "") -> TraceError:
    return TraceError(Problem(source, line, col, reason, "", expected))


def _raw_chunks(data: bytes, source: str) -> Iterator[bytes]:
    """The file's bytes in chunks of at most CHUNK_BYTES: gunzipped as they are read (with the
    MAX_DECOMPRESSED_BYTES cap checked on every chunk), a plain file sliced. Never the whole
    decompressed text at once."""
    if len(data) > L.MAX_UPLOAD_BYTES:
        raise _refuse(
            source,
            0,
            0,
            f"the file is {len(data)} bytes, over the limit of "
            f"{L.MAX_UPLOAD_BYTES} bytes (MAX_UPLOAD_BYTES)",
        )
    if data[:2] != b"\x1f\x8b":
        for i in range(0, len(data), CHUNK_BYTES):
            yield data[i : i + CHUNK_BYTES]
        return
    yield from _gunzip_chunks(data, source)


def _gunzip_chunks(data: bytes, source: str) -> Iterator[bytes]:
    view = memoryview(data)
    pos, size, cap = 0, 0, L.MAX_DECOMPRESSED_BYTES
    d = zlib.decompressobj(wbits=31)
    pending: bytes | memoryview = b""
    waiting = False  # the last call filled its output: more may be waiting without more input
    try:
        while True:
            if not pending and not waiting:
                if pos >= len(data):
                    raise _refuse(source, 0, 0, "the gzip data is truncated")
                pending = view[pos : pos + _GZIP_INPUT_BYTES]
                pos += len(pending)
            out = d.decompress(pending, CHUNK_BYTES)
            pending = d.unconsumed_tail
            waiting = len(out) == CHUNK_BYTES
            if out:
                size += len(out)
                if size > cap:
                    raise _refuse(
                        source,
                        0,
                        0,
                        f"the gzip data expands past {cap} bytes (MAX_DECOMPRESSED_BYTES)",
                    )
                yield out
            if d.eof:  # the end of a member: another may follow (concatenated gzip files)
                pending = d.unused_data
                if not pending and pos >= len(data):
                    return
                d = zlib.decompressobj(wbits=31)
                waiting = False
    except zlib.error as exc:
        raise _refuse(source, 0, 0, f"invalid gzip data: {exc}") from None


def _chunks(data: bytes, source: str) -> Iterator[bytes]:
    """:func:`_raw_chunks` with the checks of the file's start: UTF-16 is refused, a UTF-8
    byte-order mark dropped (the first chunk is at least 4 bytes unless the file is shorter)."""
    raw = _raw_chunks(data, source)
    head = b""
    for chunk in raw:
        head += chunk
        if len(head) >= 4:
            break
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) > 1 and head[1:2] == b"\x00"):
        raise _refuse(source, 1, 1, "the file is UTF-16; traces are UTF-8", "UTF-8 text")
    if head[:3] == b"\xef\xbb\xbf":
        head = head[3:]
    if head:
        yield head
    yield from raw


def _scan(data: bytes, source: str, *, exact: bool = False) -> _Scan:
    """The first pass, streaming, before anything is parsed: the gzip checks and cap, binary
    data, an empty file, the first content line (which says JSONL or CSV, header or not), and the
    event limit: once the lines are more than MAX_EVENTS allows, content lines are counted
    (``exact``) and the file is refused at the first content line past the limit. Only C-speed
    byte operations run per byte or line, so a refused file costs about one decompression,
    however many lines it has, and holds one chunk at a time."""
    first: bytes | None = None
    content = 0  # content lines so far (``exact``)
    limit = L.MAX_EVENTS + 1
    lines = 0  # newlines before the current block
    carry = b""  # the unfinished last line (at most MAX_LINE_BYTES + 1 bytes of it)
    blank = True
    for chunk in _chunks(data, source):
        if blank and chunk.strip():
            blank = False
        nul = chunk.find(b"\x00")
        if nul >= 0:
            line = lines + chunk.count(b"\n", 0, nul) + 1
            start = chunk.rfind(b"\n", 0, nul) + 1
            col = nul - start + 1 + (len(carry) if start == 0 else 0)
            raise _refuse(
                source, line, col, "binary data (a NUL byte): not a text trace", "UTF-8 text"
            )
        cut = chunk.rfind(b"\n")
        if cut < 0:
            carry = (carry + chunk)[: L.MAX_LINE_BYTES + 1]
            continue
        block = carry + chunk[:cut]
        carry = chunk[cut + 1 : cut + 2 + L.MAX_LINE_BYTES]
        if first is None or exact:
            # one byte per line start: "x" for a content line, "#" or nothing (blank) otherwise
            classes = b"\n" + block.translate(_CLASSES, _BLANK_B)
            starts = classes.count(b"\nx")
            if first is None and starts:
                at = classes.count(b"\n", 0, classes.find(b"\nx") + 1) - 1
                first = block.split(b"\n", at + 1)[at][: L.MAX_LINE_BYTES]
                limit = L.MAX_EVENTS + _non_event_first_line(first, source)
            if exact:
                if content + starts > limit:
                    j = -1
                    for _ in range(limit - content + 1):
                        j = classes.find(b"\nx", j + 1)
                    _too_many_events(source, lines + classes.count(b"\n", 0, j + 1))
                content += starts
        lines += block.count(b"\n") + 1
        if not exact and lines > limit:
            raise _TooManyLines
    if carry:
        head = carry.lstrip(_BLANK_B)[:1]
        if head and head != b"#":
            if first is None:
                first = carry
            elif exact and content + 1 > limit:
                _too_many_events(source, lines + 1)
    if blank:
        raise _refuse(source, 0, 0, "the trace is empty", "a JSON Lines or CSV trace")
    return _Scan(first or b"", lines + (1 if carry else 0))


def _too_many_events(source: str, line: int) -> NoReturn:
    raise _refuse(
        source,
        line,
        1,
        f"more than {L.MAX_EVENTS} events (MAX_EVENTS): refused without reading further",
    )


def _non_event_first_line(first: bytes, source: str) -> int:
    """1 if the first content line is a header or CSV column row (not an event), else 0."""
    if _is_csv(first, source):
        return 1
    try:
        obj = _loads(first.decode("utf-8"))
    except (ValueError, RecursionError):
        return 1  # a problem, not an event: the trace is refused anyway
    return int(not isinstance(obj, dict) or "op" not in obj)


def _is_csv(first: bytes, source: str) -> bool:
    head = first.strip(_BLANK_B)
    return source.lower().endswith(".csv") or head == b"op" or head.startswith(b"op,")


def _lines(data: bytes, source: str, c: _Collector) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, streaming: each chunk is decoded at once and split.
    Invalid UTF-8 refuses the file at its line:col. A line over MAX_LINE_BYTES is reported here
    (unless it is a comment) and skipped without being held; :data:`_TOO_LONG` stands for it."""
    n = 0  # lines yielded so far
    carry = b""
    long_size = -1  # >= 0 while skipping the rest of an over-long line
    long_head = b""
    long_quiet = long_blank = False
    for chunk in _chunks(data, source):
        if long_size >= 0:
            nl = chunk.find(b"\n")
            if nl < 0:
                long_size += len(chunk)
                if long_blank:
                    long_quiet = long_blank = not chunk.strip(_BLANK_B)
                continue
            long_size += nl
            if long_blank:
                long_quiet = not chunk[:nl].strip(_BLANK_B)
            n += 1
            if not long_quiet:
                _line_too_long(c, n, long_size, long_head.decode("utf-8", "replace"))
                yield n, _TOO_LONG
            long_size = -1
            chunk = chunk[nl + 1 :]
        cut = chunk.rfind(b"\n")
        if cut < 0:
            carry += chunk
            if len(carry) > L.MAX_LINE_BYTES:
                stripped = carry.lstrip(_BLANK_B)
                long_blank = not stripped
                long_quiet = long_blank or stripped.startswith(b"#")  # a comment: not reported
                long_size, long_head, carry = len(carry), carry[:240], b""
            continue
        block = carry + chunk[:cut]
        carry = chunk[cut + 1 :]
        nl = block.count(b"\n") + 1
        if nl * 8 > len(block):  # short lines: maybe runs of blank lines or comments
            if b"\r" in block:
                block = block.replace(b"\r\n", b"\n")
            classes = b"\n" + block.translate(_CLASSES, _BLANK_B)
            if classes.count(b"\nx") * 4 < nl:  # mostly not content: yield only content lines
                if not block.isascii():
                    _decode_block(block, n, source)  # UTF-8 is checked everywhere
                lines_b = block.split(b"\n")
                i, prev, j = -1, -1, classes.find(b"\nx")
                while j >= 0:
                    i += classes.count(b"\n", prev + 1, j + 1)
                    prev = j
                    yield n + i + 1, lines_b[i].decode("utf-8")
                    j = classes.find(b"\nx", j + 1)
            else:
                parts = _decode_block(block, n, source).split("\n")
                yield from compress(zip(count(n + 1), parts), parts)
            n += nl
            continue
        for line in _decode_block(block, n, source).split("\n"):
            n += 1
            yield n, line
    if long_size >= 0:
        n += 1
        if not long_quiet:
            _line_too_long(c, n, long_size, long_head.decode("utf-8", "replace"))
            yield n, _TOO_LONG
    elif carry:
        yield n + 1, _decode_block(carry, n, source)


def _decode_block(block: bytes, lines_before: int, source: str) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = lines_before + block.count(b"\n", 0, exc.start) + 1
        col = exc.start - (block.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TraceError(
            Problem(
                source,
                line,
                col,
                "invalid UTF-8",
                repr(block[exc.start : exc.start + 8]),
                "UTF-8 text",
            )
        ) from None


def _line_too_long(c: _Collector, n: int, size: int, head: str) -> None:
    c.add(
        n,
        L.MAX_LINE_BYTES + 1,
        f"line is {size} bytes, over the limit of {L.MAX_LINE_BYTES} (MAX_LINE_BYTES)",
        head[:60],
    )


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


class _Huge:
    """A JSON number with more digits than any limit allows, kept as its digit count (Python's
    ``int()`` refuses over 4300 digits, and nothing that long is in range anyway)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a {self.digits}-digit number>"


_HEX_TEXT = re.compile(r"0[xX]([0-9a-fA-F]+)").fullmatch
_DEC_TEXT = re.compile(r"-?([0-9]+)").fullmatch


def _parse_int(text: str) -> int | _Huge:
    """The JSON decoder's ``parse_int``: an over-long number becomes a :class:`_Huge`."""
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > L.MAX_INT_DIGITS:
        return _Huge(len(text.lstrip("-")))
    return int(text)


def _int_text(text: str, *, decimal: bool) -> int | _Huge | None:
    """A hex string "0x.." (or, if ``decimal``, "-?[0-9]+") exactly: no spaces, underscores or
    signs inside; None if it is not one. Over-long digit strings are never converted."""
    m = _HEX_TEXT(text)
    base = 16
    if m is None and decimal:
        m, base = _DEC_TEXT(text), 10
    if m is None:
        return None
    digits = m.group(1)
    if len(digits.lstrip("0")) > L.MAX_INT_DIGITS:
        return _Huge(len(digits))
    return int(text if base == 10 else digits, base)


def _int(value: Any, *, csv_cell: bool) -> int | _Huge | None:
    """A JSON integer, a hex string "0x.." or (CSV, where spaces around a cell are ignored) a
    decimal string; a :class:`_Huge` if it has too many digits; None if not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, _Huge)):
        return value
    if isinstance(value, str):
        return _int_text(value.strip(" \t") if csv_cell else value, decimal=csv_cell)
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
        if isinstance(n, _Huge):
            return None, f"{key} is a {n.digits}-digit number, out of range", expected
        if not lo <= n <= hi:
            return None, f"{key}={n} is out of range", expected
        return n, "", ""
    if key in _CHOICES:
        choices = _CHOICES[key]
        if not isinstance(value, str) or value not in choices:
            return None, f"{key}={_r(value)} is not allowed", " | ".join(choices)
        return value, "", ""
    if key in _TEXT:
        if not isinstance(value, str):
            return None, f"{key} must be a string", "a string"
        if len(value) > L.MAX_TEXT:
            return None, f"{key} is {len(value)} characters, over the limit of {L.MAX_TEXT}", ""
        return value, "", ""
    if key == "order":
        return _check_order(value, csv_cell=csv_cell)
    return None, f"unknown field {_r(key)}", ""


def _check_order(value: Any, *, csv_cell: bool) -> tuple[Any, str, str]:
    """A schedule's ``order``: a JSON array of CPU names (in CSV, one cell of names separated
    by spaces), 1 to MAX_SCHEDULE_TURNS of them."""
    expected = 'CPU names, e.g. ["vcpu0", "vcpu1", "vcpu0"]' + (
        ' (in CSV: "vcpu0 vcpu1 vcpu0")' if csv_cell else ""
    )
    if csv_cell and isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        return None, f"order must be a list, got {type(value).__name__}", expected
    if not value:
        return None, "order is empty", expected
    if len(value) > L.MAX_SCHEDULE_TURNS:
        return (
            None,
            f"order has {len(value)} turns, over the limit of {L.MAX_SCHEDULE_TURNS}",
            expected,
        )
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _THREAD.fullmatch(name):
            return None, f"order[{i}]={_r(name)} is not a CPU name", "vcpuN or tdN"
    return tuple(value), "", ""


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
            c.add(line, col("op"), f"unknown op {_r(op)}", raw, ", ".join(SCHEMA))
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
                    f"unknown field {_r(key)} for op {_r(op)}",
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
        if op == "schedule" and values.get("t") is None:
            c.add(
                line,
                1,
                "a schedule event needs the t of the group it orders",
                raw,
                'a "t" equal to the t of the events it interleaves',
            )
            ok = False
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
            c.stop(line, 1, f"more than {L.MAX_EVENTS} events (MAX_EVENTS)")
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
            c.add(line, col, f"unknown header field {_r(key)}", raw, ", ".join(HEADER_KEYS))
        elif key == "format" and value != FORMAT_NAME:
            c.add(
                line,
                col,
                f"format {_r(value)} is not a DPAMT trace",
                f"format={value!r}",
                f'"{FORMAT_NAME}"',
            )
        elif key == "version" and (type(value) is not int or value != FORMAT_VERSION):
            c.add(
                line,
                col,
                f"unsupported version {_r(value)}",
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
                    c.add(line, scol, f"unknown setting {_r(skey)}", skey, ", ".join(SETTING_SPECS))
                    continue
                try:
                    settings[skey] = spec.check(_setting_value(spec.default, svalue))
                except ValueError as exc:
                    c.add(
                        line,
                        scol,
                        f"setting {skey}={_r(svalue)}: {exc}",
                        f"{skey}={svalue!r}",
                        spec.expected,
                    )
    if "version" not in obj:
        c.add(line, 1, "the header has no version", raw, f'"version": {FORMAT_VERSION}')
    return title, description, settings


def _setting_value(default: Any, value: Any) -> Any:
    """A header setting's value, with the trace format's integer rules applied before the
    setting's own check: hex or decimal strings exactly, no over-long numbers."""
    if isinstance(value, _Huge):
        raise ValueError(f"a {value.digits}-digit number is out of range")
    if isinstance(value, str) and isinstance(default, int):
        return int_text(value)  # the one rule for integer text (explorer.model.settings)
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (numbers must be finite integers)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate field {_r(k)}")
        out[k] = v
    return out


_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_no_duplicates, parse_int=_parse_int
)


def _loads(raw: str) -> Any:
    return _DECODER.decode(raw)


# ------------------------------------------------------------------ entry point
#: Lines between two progress reports of :func:`parse_trace`.
PROGRESS_LINES = 1 << 16


def parse_trace(
    data: bytes, source: str = "trace", progress: Callable[[float, str], None] | None = None
) -> Trace:
    """Parse ``data`` (the file's bytes; ``source`` names it in messages) into a :class:`Trace`.

    ``progress(fraction, text)``, when given, is called as the lines are parsed (every
    :data:`PROGRESS_LINES` lines), so that a long upload shows progress from its first line."""
    with gc_paused():
        return _parse_trace(data, source, progress)


def _reporting(
    lines: Iterator[tuple[int, str]], total: int, progress: Callable[[float, str], None]
) -> Iterator[tuple[int, str]]:
    due = PROGRESS_LINES
    for item in lines:
        if item[0] >= due:
            due += PROGRESS_LINES
            progress(min(item[0] / max(total, 1), 1.0), f"{item[0]:,} of {total:,} lines")
        yield item


def _parse_trace(
    data: bytes, source: str, progress: Callable[[float, str], None] | None = None
) -> Trace:
    """Two streaming passes over the bytes (each chunk decompressed and decoded as it comes):
    :func:`_scan` refuses what is refused whole (bad gzip, binary, empty, too many events)
    before anything is parsed, then the lines are parsed one by one."""
    if progress is not None:
        progress(0.0, "checking the file")
    try:
        scan = _scan(data, source)
    except _TooManyLines:
        scan = _scan(data, source, exact=True)
    c = _Collector(source)
    lines = _lines(data, source, c)
    if progress is not None:
        lines = _reporting(lines, scan.lines, progress)
    if _is_csv(scan.first, source):
        return _parse_csv(lines, c)
    return _parse_jsonl(lines, c)


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


# ------------------------------------------------------------------ the bulk path
#: Lines decoded together by one ``json.loads`` in the bulk path.
_BATCH = 256
_HEX_PREFIXES = ("0x", "0X")
_ABSENT = object()


_ALLOWED = {op: frozenset({"op", *req, *opt, *COMMON_FIELDS}) for op, (req, opt) in SCHEMA.items()}
_ALL_KEYS = frozenset().union(*_ALLOWED.values())
_DEFAULTS = {op: {f.name: f.default for f in fields(cls)} for op, cls in EVENT_TYPES.items()}


def _value_check(key: str, ind: str) -> list[str]:
    """Source lines that check (and convert) the JSON value in the variable ``key`` by the
    rules of :func:`_check_field`, ``return None`` if it is not good."""
    if key in _INT_RANGES:
        lo, hi = _INT_RANGES[key]
        return [
            f"{ind}if type({key}) is not int:",
            f"{ind}    if (type({key}) is not str or {key}[:2] not in _HEX_PREFIXES",
            f"{ind}            or not {key}.isascii() or not {key}.isalnum()):",
            f"{ind}        return None",
            f"{ind}    {key} = int({key}, 16)",
            f"{ind}if not {lo} <= {key} <= {hi}:",
            f"{ind}    return None",
        ]
    if key in _CHOICES:
        return [f"{ind}if {key} not in {set(_CHOICES[key])!r}:", f"{ind}    return None"]
    if key in _TEXT:
        return [
            f"{ind}if type({key}) is not str or len({key}) > {L.MAX_TEXT}:",
            f"{ind}    return None",
        ]
    if key == "order":  # a schedule: rare, and a list: the full path checks it
        return [f"{ind}return None"]
    raise AssertionError(key)


def _build_lines(op: str, present: set[str], ind: str) -> list[str]:
    defaults = _DEFAULTS[op]
    out = []
    if op == "fault":
        pfn = "pfn" if "pfn" in present else "None"
        level = "level" if "level" in present else repr(defaults["level"])
        out += [
            f"{ind}if {level} == '2m' and (gfn % {PAGES_PER_REGION} or ({pfn} is not None and {pfn} % {PAGES_PER_REGION})):",
            f"{ind}    return None",
        ]
    out.append(f"{ind}e = _NEW(_CLS_{op})")
    for name in slot_setters(EVENT_TYPES[op]):
        value = name if name in present or name == "line" else repr(defaults[name])
        out.append(f"{ind}_SET_{op}_{name}(e, {value})")
    out.append(f"{ind}return e")
    return out


def _shape_source(keys: tuple[str, ...]) -> str | None:
    """The source of ``_shape(d, line)`` for decoded objects whose keys are ``keys`` in this
    order: the event ``d`` stands for, built through its slots, or None if ``d`` is not exactly
    a valid event; then the full path (:meth:`_Builder.event`) decides and reports. One unpacking
    of ``d.values()``, then one test per field by the rules of :func:`_check_field` for JSON
    values (no function call for a JSON integer), then one branch per op these keys fit.
    None if no op has exactly these keys."""
    present = set(keys)
    ops = [
        op for op, (req, _) in SCHEMA.items() if present <= _ALLOWED[op] and present.issuperset(req)
    ]
    if "op" not in present or not ops:
        return None
    body = ["def _shape(d, line):", f"    {', '.join(keys)}, = d.values()"]
    for key in keys:
        if key != "op":
            body += _value_check(key, "    ")
    for op in ops:
        body.append(f"    if op == {op!r}:")
        body += _build_lines(op, present, "        ")
    body.append("    return None")
    return "\n".join(body) + "\n"


def _namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {"_HEX_PREFIXES": _HEX_PREFIXES, "_NEW": object.__new__}
    for op, cls in EVENT_TYPES.items():
        ns[f"_CLS_{op}"] = cls
        for name, setter in slot_setters(cls).items():
            ns[f"_SET_{op}_{name}"] = setter
    return ns


_NAMESPACE = _namespace()
_SETTERS = {op: slot_setters(cls) for op, cls in EVENT_TYPES.items()}
#: key order of a decoded line -> its validator (:func:`_shape_source`), made when first seen.
_SHAPES: dict[tuple[str, ...], Callable[[dict[str, Any], int], Event | None] | None] = {}
#: At most this many shapes are kept (a valid line has at most 7 keys, so there are few).
_MAX_SHAPES = 4096


def _shape(keys: tuple[str, ...]) -> Callable[[dict[str, Any], int], Event | None] | None:
    """The validator of ``keys`` (None: the full path decides), made and kept if new."""
    if not _ALL_KEYS.issuperset(keys):
        return None
    source = _shape_source(keys)
    fn = None
    if source is not None:
        ns = dict(_NAMESPACE)
        exec(source, ns)  # source generated above from the schema, never from input
        fn = ns["_shape"]
    if len(_SHAPES) < _MAX_SHAPES:
        _SHAPES[keys] = fn
    return fn


def _no_duplicate_keys(raw: str, d: dict[str, Any]) -> bool:
    """True if the line ``raw``, decoded (last key wins) to ``d``, had no duplicate key. Every
    pair has one colon outside strings; without a backslash, a string holds as many colons in the
    line as decoded; keys that ``d`` may have hold none. So if the line's colons are exactly
    ``len(d)`` plus those of ``d``'s string values, it had ``len(d)`` pairs."""
    colons = raw.count(":")
    if colons == len(d):
        return True
    if "\\" in raw:
        return False
    return colons == len(d) + sum(v.count(":") for v in d.values() if type(v) is str)


def _parse_jsonl(lines: Iterator[tuple[int, str]], c: _Collector) -> Trace:
    """JSON Lines, in batches of :data:`_BATCH` lines. The bulk path decodes a batch whose lines
    are all one ``{...}`` each with one ``json.loads`` of them as a JSON array (C speed, no call
    per line), checks each object with its op's generated validator (:data:`_VALIDATORS`) and
    builds its event through its slots. Anything it does not accept exactly (a batch that does
    not decode, a line that is not an object on its own, a value out of range, a duplicate key, t
    going back in time, a header, a comment) goes line by line: canonical fault lines through a
    regular expression, other lines through ``json.loads`` and the validator, and what is still
    not accepted through the full path (:meth:`_Builder.event`), which reports the exact problem
    at its line:col. The bulk path accepts only what the full path accepts, with equal events
    (tests/test_trace_format.py compares them with :data:`FAST_PATH` off)."""
    source = c.source
    b = _Builder(c, csv_mode=False)
    head: dict[str, Any] = {"title": "", "description": "", "settings": {}, "seen": False}
    fast = _FAST_FAULT if FAST_PATH else None
    events = b.events
    max_id, max_gfn, max_t, max_events = L.MAX_ID, L.MAX_GFN, L.MAX_T, L.MAX_EVENTS
    shapes = _SHAPES
    loads = json.loads
    quarter_line = L.MAX_LINE_BYTES // 4  # chars: a line this long is within MAX_LINE_BYTES

    def accept(d: Any, n: int) -> bool:
        """Append the event of the decoded line ``d`` if the fast checks accept it."""
        if type(d) is not dict:
            return False
        keys = tuple(d)
        v = shapes.get(keys)
        if v is None and keys not in shapes:
            v = _shape(keys)
        if v is None:
            return False
        e = v(d, n)
        if e is None or len(events) >= max_events:
            return False
        t = e.t
        if t is not None:
            last_t = b.last_t
            if last_t is not None and t < last_t:
                return False
            b.last_t, b.last_t_line = t, n
        events.append(e)
        return True

    def one(n: int, raw: str) -> None:
        """A line on its own: the fast paths, then the full path."""
        if fast is not None:
            if (mm := fast(raw)) is not None:
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
                    head["seen"] = True
                    return
            elif len(raw) <= quarter_line and "{" in raw:
                try:
                    d = loads(raw)
                    if _no_duplicate_keys(raw, d) and accept(d, n):
                        head["seen"] = True
                        return
                except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                    pass
        _full_line(n, raw, b, c, head)

    while not c.full:
        batch = list(islice(lines, _BATCH))
        if not batch:
            break
        if fast is None:
            for n, raw in batch:
                _full_line(n, raw, b, c, head)
                if c.full:
                    break
            continue
        raws = [raw for _, raw in batch]
        text = "\n".join(raws)
        k = len(raws)
        decoded: list[Any] | None = None
        if (
            ("\n" + text).count("\n{") == k
            and (text + "\n").count("}\n") + text.count("}\r\n") + text.endswith("}\r") == k
            and max(map(len, raws)) <= quarter_line
        ):
            # Every line is "{...}" (no line can then continue another: docs in _bulk_safe)
            try:
                decoded = loads("[" + text.replace("\n", ",\n") + "]")
            except (ValueError, RecursionError):
                decoded = None
            if decoded is not None and len(decoded) != k:
                decoded = None
        if decoded is None:
            for n, raw in batch:
                one(n, raw)
                if c.full:
                    break
            continue
        exact_keys = text.count(":") == sum(map(len, decoded))
        if not exact_keys and "\\" not in text:
            # Without a backslash, a duplicate key is the only way the line's colons can
            # outnumber those of the decoded objects' repr (docs in _no_duplicate_keys)
            exact_keys = text.count(":") == str(decoded).count(":")
        if exact_keys and _columns(decoded, batch, b, max_events):
            head["seen"] = True
            continue
        before = len(events)
        for (n, raw), d in zip(batch, decoded, strict=True):
            try:
                keys = tuple(d)
                v = shapes.get(keys)
                if v is None and keys not in shapes:
                    v = _shape(keys)
                if (
                    v is not None
                    and (e := v(d, n)) is not None
                    and (exact_keys or _no_duplicate_keys(raw, d))
                    and len(events) < max_events
                ):
                    t = e.t
                    if t is None:
                        events.append(e)
                        continue
                    last_t = b.last_t
                    if last_t is None or t >= last_t:
                        b.last_t, b.last_t_line = t, n
                        events.append(e)
                        continue
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
            if len(events) > before:  # an event came first: a header now is not the header
                head["seen"] = True
            _full_line(n, raw, b, c, head)
            if c.full:
                break
        if len(events) > before:
            head["seen"] = True
    return _finish(c, b, source, "jsonl", head["title"], head["description"], head["settings"])


_HEX_LIST = re.compile(r"(?:0[xX][0-9a-fA-F]+\n)*0[xX][0-9a-fA-F]+").fullmatch
_INT_TYPE = {int}
_FIRST = operator.itemgetter(0)
_STR_TYPE = {str}


def _int_column(col: tuple[Any, ...], lo: int, hi: int) -> list[int] | tuple[Any, ...] | None:
    """``col`` as integers if every value is a JSON integer, or every value a hex string
    "0x..", all in lo..hi (the rules of :func:`_check_field`), else None."""
    types = set(map(type, col))
    if types != _INT_TYPE:
        if types != _STR_TYPE or _HEX_LIST("\n".join(col)) is None:
            return None
        ints: list[int] | tuple[Any, ...] = list(map(int, col, repeat(16)))
    else:
        ints = col
    if min(ints) < lo or max(ints) > hi:
        return None
    return ints


def _columns(
    decoded: list[Any], batch: list[tuple[int, str]], b: _Builder, max_events: int
) -> bool:
    """The bulk path for the (line number, text) pairs ``batch`` decoded to ``decoded`` (no
    duplicate keys): if every object is a dict with the same keys in the same
    order, of one op, and every column passes :func:`_check_field`'s rules for JSON values, the
    events are built column by column through their slots (C-level loops, no Python code per
    line) and appended; True. Otherwise nothing is appended; False (the lines go one by one)."""
    k = len(decoded)
    if set(map(type, decoded)) != {dict} or len(b.events) + k > max_events:
        return False
    key_set = set(map(tuple, decoded))
    if len(key_set) != 1:
        return False
    keys = key_set.pop()
    if "op" not in keys:
        return False
    cols = dict(zip(keys, zip(*map(dict.values, decoded), strict=True), strict=True))
    ops = set(cols["op"])
    if len(ops) != 1:
        return False
    op = ops.pop()
    if type(op) is not str or op not in SCHEMA:
        return False
    req, _ = SCHEMA[op]
    if not _ALLOWED[op].issuperset(keys) or not set(keys).issuperset(req):
        return False
    values: dict[str, Any] = {}
    for key, col in cols.items():
        if key == "op":
            continue
        if key in _INT_RANGES:
            lo, hi = _INT_RANGES[key]
            checked = _int_column(col, lo, hi)
            if checked is None:
                return False
            values[key] = checked
        elif key in _CHOICES:
            if not set(col).issubset(_CHOICES[key]) or "2m" in col:  # 2m: alignment, line by line
                return False
            values[key] = col
        elif key == "order":  # a schedule's list of CPU names: checked line by line
            return False
        else:  # text
            if set(map(type, col)) != _STR_TYPE or max(map(len, col)) > L.MAX_TEXT:
                return False
            values[key] = col
    ts = values.get("t")
    if ts is not None:
        if (b.last_t is not None and ts[0] < b.last_t) or not all(
            map(operator.le, ts, islice(ts, 1, None))
        ):
            return False
        b.last_t, b.last_t_line = ts[-1], batch[-1][0]
    cls = EVENT_TYPES[op]
    new = list(map(object.__new__, repeat(cls, k)))
    defaults = _DEFAULTS[op]
    for name, setter in _SETTERS[op].items():
        if name == "line":
            col_values: Any = map(_FIRST, batch)
        else:
            col_values = values.get(name)
            if col_values is None:
                col_values = repeat(defaults[name], k)
        deque(map(setter, new, col_values), 0)
    b.events += new
    return True


def _full_line(n: int, raw: str, b: _Builder, c: _Collector, head: dict[str, Any]) -> None:
    """The full path for one line: every check, every problem at its line:col."""
    raw = raw.rstrip("\r")
    stripped = raw.strip(_BLANK)
    if not stripped or stripped.startswith("#"):
        return
    head["seen"], seen_content = True, head["seen"]
    if raw == _TOO_LONG or not _check_line_length(raw, n, c):
        return
    try:
        obj = _loads(raw)
    except json.JSONDecodeError as exc:
        reason = "invalid JSON: " + exc.msg
        if exc.pos >= len(raw.rstrip()):
            reason = "invalid JSON: the line ends early (truncated?)"
        c.add(n, exc.colno, reason, raw, "one JSON object per line")
        return
    except RecursionError:
        c.add(n, 1, f"JSON nested too deeply (limit {L.MAX_NESTING})", raw)
        return
    except ValueError as exc:  # NaN/Infinity, duplicate keys
        c.add(n, 1, f"invalid JSON: {exc}", raw, "one JSON object per line")
        return
    if not isinstance(obj, dict):
        c.add(n, 1, f"expected a JSON object, got {type(obj).__name__}", raw, '{"op": ...}')
        return
    depth = _depth(obj)
    if depth > L.MAX_NESTING:
        c.add(n, 1, f"JSON nested {depth} deep, over the limit of {L.MAX_NESTING}", raw)
        return
    if not seen_content and "format" in obj and "op" not in obj:
        head["title"], head["description"], head["settings"] = _header(obj, n, raw, c)
        return
    for key, value in obj.items():
        if isinstance(value, (dict, list)) and not (key == "order" and isinstance(value, list)):
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


def _parse_csv(lines: Iterator[tuple[int, str]], c: _Collector) -> Trace:
    source = c.source
    b = _Builder(c, csv_mode=True)
    header: list[str] | None = None
    header_line = 0
    in_quote = False  # inside a quoted cell left open on an earlier line (already reported)
    for n, raw in lines:
        if c.full:
            break
        raw = raw.rstrip("\r")
        if in_quote:  # the rest of a cell that spans lines: part of the problem reported
            in_quote = raw != _TOO_LONG and _open_quote(raw, in_quote=True) is not None
            continue
        stripped = raw.strip(_BLANK)
        if not stripped or stripped.startswith("#"):
            continue
        if raw == _TOO_LONG or not _check_line_length(raw, n, c):
            continue
        if '"' in raw:
            q = _open_quote(raw, in_quote=False)
            if q is not None:
                c.add(
                    n,
                    q + 1,
                    "unterminated quote: a quoted cell must end on its line",
                    raw,
                    'a closing " on the same line (cells may not span lines)',
                )
                in_quote = True
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
                    c.add(n, _csv_col(raw, i), f"unknown column {_r(h)}", h, ", ".join(CSV_COLUMNS))
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
    if header is None and not c.problems:
        c.add(0, 0, "the CSV has no header row", "", "op,vcpu,gfn,...")
    return _finish(c, b, source, "csv", "", "", {})


def _open_quote(raw: str, *, in_quote: bool) -> int | None:
    """Where a quoted cell is left open at the end of ``raw``: the index of its opening quote
    (-1 if it was opened on an earlier line), None if every quoted cell is closed. A quote opens
    a cell only at the cell's start, as in Python's csv module; ``""`` inside is a quote."""
    i, n = 0, len(raw)
    opened = -1
    while True:
        if in_quote:
            j = raw.find('"', i)
            while 0 <= j < n - 1 and raw[j + 1] == '"':
                j = raw.find('"', j + 2)
            if j < 0:
                return opened
            in_quote = False
            i = j + 1
        elif i < n and raw[i] == '"':
            in_quote, opened = True, i
            i += 1
            continue
        comma = raw.find(",", i)
        if comma < 0:
            return None
        i = comma + 1


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
