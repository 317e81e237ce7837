"""Parse and validate fault-path traces, format v1 (docs/trace-format.md is the contract).

JSON Lines (``.jsonl``, ``.jsonl.gz``) or CSV. Every problem is reported as a
:class:`~explorer.model.errors.Problem` with ``source:line:col``, the offending text and what was
expected; problems are collected (up to :data:`~explorer.ingest.limits.MAX_ERRORS`) and raised
together as one :class:`~explorer.model.errors.TraceError`. Nothing else escapes on bad input.

The bytes are read in two streaming passes, one chunk at a time (docs/reliability.md, "Refusing
is cheap"): a first pass refuses what is refused whole, the second parses the lines, a block
at a time. What a line may hold is a table (:mod:`explorer.ingest.schema`), read both by the full
path here (one line at a time, every problem at its line:col) and by the schema's column
interpreter, which takes whole runs of valid lines at C speed (:func:`_bulk`); nothing is
generated as source.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, NoReturn

from explorer.ingest import limits as L
from explorer.ingest.csvcolumns import read_rows, split_columns
from explorer.ingest.gcpause import gc_paused
from explorer.ingest.schema import (
    COMMON_FIELDS,
    CSV_COLUMNS,
    EVENTS,
    FIELDS,
    LEVELS,
    Field,
    build_columns,
    in_order,
    non_decreasing,
    pick,
)
from explorer.model.constants import PAGES_PER_REGION
from explorer.model.errors import Problem, TraceError
from explorer.model.events import EVENT_TYPES, Event
from explorer.model.settings import SETTING_SPECS, int_text

FORMAT_NAME = "dpamt-trace"
FORMAT_VERSION = 1
HEADER_KEYS = ("format", "version", "title", "description", "settings")
__all__ = ["COMMON_FIELDS", "CSV_COLUMNS", "LEVELS", "SCHEMA", "Trace", "parse_trace"]


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
#: op -> (required fields, optional fields): the schema's table (:mod:`explorer.ingest.schema`).
SCHEMA = EVENTS

#: Fields whose JSON value is a list: a schedule's order, the pages a capture pins.
_LISTS = frozenset(k for k, f in FIELDS.items() if f.kind in ("order", "pfns"))

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


def _blocks(data: bytes, source: str, c: _Collector) -> Iterator[tuple[Sequence[int], list[str]]]:
    """(line numbers, texts) of every line, a block of them at a time, streaming: each chunk is
    decoded at once and split (the parsers take the lists whole, no Python code per line).
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
                yield [n], [_TOO_LONG]
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
                nums: list[int] = []
                i, prev, j = -1, -1, classes.find(b"\nx")
                while j >= 0:
                    i += classes.count(b"\n", prev + 1, j + 1)
                    prev = j
                    nums.append(n + i + 1)
                    j = classes.find(b"\nx", j + 1)
                if nums:
                    yield nums, [lines_b[k - n - 1].decode("utf-8") for k in nums]
            else:
                parts = _decode_block(block, n, source).split("\n")
                yield (
                    list(compress(range(n + 1, n + 1 + len(parts)), parts)),
                    list(filter(None, parts)),
                )
            n += nl
            continue
        parts = _decode_block(block, n, source).split("\n")
        yield range(n + 1, n + 1 + len(parts)), parts
        n += len(parts)
    if long_size >= 0:
        n += 1
        if not long_quiet:
            _line_too_long(c, n, long_size, long_head.decode("utf-8", "replace"))
            yield [n], [_TOO_LONG]
    elif carry:
        yield [n + 1], [_decode_block(carry, n, source)]


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
    f = FIELDS.get(key)
    if f is None:
        return None, f"unknown field {_r(key)}", ""
    if f.kind == "int":
        lo, hi = f.lo, f.hi
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
    if f.kind == "choice":
        choices = f.choices
        if not isinstance(value, str) or value not in choices:
            return None, f"{key}={_r(value)} is not allowed", " | ".join(choices)
        return value, "", ""
    if f.kind == "text":
        if not isinstance(value, str):
            return None, f"{key} must be a string", "a string"
        if len(value) > L.MAX_TEXT:
            return None, f"{key} is {len(value)} characters, over the limit of {L.MAX_TEXT}", ""
        return value, "", ""
    if key == "order":
        return _check_order(value, csv_cell=csv_cell)
    if f.kind == "pfns":
        return _check_pins(key, f, value, csv_cell=csv_cell)
    return None, f"unknown field {_r(key)}", ""


def _check_pins(key: str, f: Field, value: Any, *, csv_cell: bool) -> tuple[Any, str, str]:
    """Pages a kernel capture pins (``tables``, ``control``): a JSON array of pfns, each a
    number or "0x..." (in CSV, one cell of pfns separated by spaces), at most ``f.most``, each
    in range and named once (the replay takes each page once)."""
    expected = f'at most {f.most} distinct pfns in 0..{f.hi:#x}, e.g. ["0x8000", "0x8001"]' + (
        ' (in CSV: "0x8000 0x8001")' if csv_cell else ""
    )
    if csv_cell and isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        kind = "a float" if isinstance(value, float) else type(value).__name__
        return None, f"{key} must be a list of pfns, got {kind}", expected
    if len(value) > f.most:
        return None, f"{key} has {len(value)} pfns, over the limit of {f.most}", expected
    seen: dict[int, int] = {}
    for i, item in enumerate(value):
        n = _int(item, csv_cell=csv_cell)
        if n is None:
            kind = "a float" if isinstance(item, float) else type(item).__name__
            if isinstance(item, str):
                kind = "a string that is not an integer"
            return None, f"{key}[{i}] must be an integer, got {kind}", expected
        if isinstance(n, _Huge):
            return None, f"{key}[{i}] is a {n.digits}-digit number, out of range", expected
        if not f.lo <= n <= f.hi:
            return None, f"{key}[{i}]={n:#x} is out of range", expected
        if n in seen:
            return None, f"{key}[{i}]={n:#x} repeats {key}[{seen[n]}]", expected
        seen[n] = i
    return tuple(seen), "", ""


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
            if "format" in obj:  # (a second header, as when two traces are concatenated)
                c.add(
                    line,
                    1,
                    'a header line (it has "format") after the first line: the header comes '
                    "once, first (two traces joined?)",
                    raw,
                    'an event line with "op"',
                )
            else:
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


_Blocks = Iterator[tuple[Sequence[int], list[str]]]


def _reporting(blocks: _Blocks, total: int, progress: Callable[[float, str], None]) -> _Blocks:
    due = PROGRESS_LINES
    for nums, lines in blocks:
        yield nums, lines
        if nums and nums[-1] >= due:
            last = nums[-1]
            due = (last // PROGRESS_LINES + 1) * PROGRESS_LINES
            progress(min(last / max(total, 1), 1.0), f"{last:,} of {total:,} lines")


def _batches(blocks: _Blocks) -> Iterator[tuple[Sequence[int], list[str]]]:
    """The blocks cut into batches of at most :data:`_BATCH` lines."""
    for nums, lines in blocks:
        size = _BATCH
        if len(lines) <= size:
            if lines:
                yield nums, lines
            continue
        for i in range(0, len(lines), size):
            yield nums[i : i + size], lines[i : i + size]


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
    blocks = _blocks(data, source, c)
    if progress is not None:
        blocks = _reporting(blocks, scan.lines, progress)
    if _is_csv(scan.first, source):
        return _parse_csv(blocks, c)
    return _parse_jsonl(blocks, c)


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


# ------------------------------------------------------------------ the bulk path
#: Tests turn the bulk path off to compare it with the full path.
FAST_PATH = True
#: Tests (and the benchmark) turn the column reader of CSV blocks off to compare it with the
#: batches.
COLUMNAR = True
#: Rows the column reader takes at a time: enough that its fixed costs vanish, few enough that
#: a part's cells stay in the CPU's caches (a whole 1 MiB block of cells is slower per row).
COLUMN_ROWS = 4096
#: Lines read together by the bulk path (one ``json.loads`` of a JSON Lines batch).
_BATCH = 256
#: A line the bulk path could not decode on its own: the full path reads it.
_BAD = object()
_DICT = {dict}
_OP = operator.itemgetter("op")
_T_OF = operator.attrgetter("t")


def _decode_batch(raws: list[str], longest: int) -> list[Any]:
    """The lines ``raws`` decoded by ``json.loads``: all at once as one JSON array when every
    line is one ``{...}`` (no line can then continue another: a line that is not a whole object
    makes the array invalid, or its count wrong), else each line alone; :data:`_BAD` for a
    line that does not decode or is longer than ``longest`` characters."""
    text = "\n".join(raws)
    k = len(raws)
    if (
        ("\n" + text).count("\n{") == k
        and (text + "\n").count("}\n") + text.count("}\r\n") + text.endswith("}\r") == k
        and max(map(len, raws)) <= longest
    ):
        try:
            decoded = json.loads("[" + text.replace("\n", ",\n") + "]")
        except (ValueError, RecursionError):
            decoded = None
        if decoded is not None and len(decoded) == k:
            return list(decoded)
    out: list[Any] = []
    loads = json.loads
    for raw in raws:
        if len(raw) > longest:
            out.append(_BAD)
            continue
        try:
            out.append(loads(raw))
        except (ValueError, RecursionError):
            out.append(_BAD)
    return out


def _no_duplicate_keys(raws: list[str], ds: list[dict[str, Any]]) -> bool:
    """True if the lines ``raws``, decoded (last key wins) to ``ds``, had no duplicate key.
    Every pair has one colon outside strings; without a backslash a string holds as many colons
    in the line as in its decoded ``repr``; so if the lines' colons are exactly those of the
    objects' ``repr`` (one per pair, plus those inside strings), no pair was dropped."""
    text = "\n".join(raws)
    colons = text.count(":")
    if colons == sum(map(len, ds)):
        return True
    return "\\" not in text and colons == str(ds).count(":")


def _json_groups(ds: list[dict[str, Any]]) -> list[tuple[Any, list[int], dict[str, Sequence[Any]]]]:
    """The lines of a run grouped by op and keys: (op, positions, columns of the other keys).
    Grouped by op and key count first (cheap), each group's columns taken by the keys of its
    first line; a group whose lines differ in their keys is split by key set. Raises KeyError
    (a line without ``op``) or TypeError (an unhashable op)."""
    out: list[tuple[Any, list[int], dict[str, Sequence[Any]]]] = []
    whole = len(ds)
    for (op, _), idx in _positions(list(zip(map(_OP, ds), map(len, ds), strict=True))).items():
        group = ds if len(idx) == whole else pick(ds, idx)
        try:
            cols: dict[str, Sequence[Any]] = {
                k: list(map(operator.itemgetter(k), group)) for k in group[0] if k != "op"
            }
            out.append((op, idx, cols))
            continue
        except KeyError:
            pass
        for sub in _positions(list(map(frozenset, group))).values():
            part = pick(group, sub)
            cols = {k: list(map(operator.itemgetter(k), part)) for k in part[0] if k != "op"}
            out.append((op, pick(idx, sub), cols))
    return out


def _json_run(ds: list[Any], raws: list[str], lines: list[int], b: _Builder) -> bool:
    """The bulk path for a run of decoded lines: True if every line is a valid event (then its
    events are appended), False if any is not (nothing is appended; the caller splits the run)."""
    if set(map(type, ds)) != _DICT or len(b.events) + len(ds) > L.MAX_EVENTS:
        return False
    if not _no_duplicate_keys(raws, ds):
        return False
    try:
        groups = _json_groups(ds)
    except (KeyError, TypeError):  # a line without op, or an op that is a list or an object
        return False
    parts: list[tuple[list[int], list[Event]]] = []
    for op, idx, cols in groups:
        evs = build_columns(op, cols, pick(lines, idx) if len(groups) > 1 else lines, csv=False)
        if evs is None:
            return False
        parts.append((idx, evs))
    return _append(in_order(parts), b)


def _append(evs: list[Event], b: _Builder) -> bool:
    """Append a run's events (in file order) if their times never go back; else False."""
    ts = list(map(_T_OF, evs))
    given = [t for t in ts if t is not None] if ts.count(None) else ts
    if not non_decreasing(given, b.last_t):
        return False
    if given:
        b.last_t = given[-1]
        b.last_t_line = next(e.line for e in reversed(evs) if e.t is not None)
    b.events += evs
    return True


def _csv_run(raws: list[str], lines: list[int], header: list[str], b: _Builder) -> bool:
    """The bulk path for a run of CSV rows (after the header): True if every row is a valid
    event (then they are appended), else False and nothing is appended. With no quote in the
    run and every row as wide as the header, the csv module would split each row at its commas:
    the run is split so at once, into columns, then grouped by op and by the cells given."""
    width = len(header)
    text = "\n".join(raws)
    if "\r" in text:
        raws = list(map(str.rstrip, raws, repeat("\r")))
        text = "\n".join(raws)
    k = len(raws)
    if (
        '"' in text
        or "\r" in text
        or width < 2
        or len(b.events) + k > L.MAX_EVENTS
        or max(map(len, raws)) > L.MAX_LINE_BYTES // 4
        or set(map(str.count, raws, repeat(","))) != {width - 1}
    ):
        return False
    cols, flags = split_columns(text, width)
    op_at = header.index("op")
    others = [j for j in range(width) if j != op_at]
    ops = cols[op_at]
    work = list(_positions(ops).items())
    parts: list[tuple[list[int], list[Event]]] = []
    while work:
        op, idx = work.pop()
        whole = len(idx) == k
        present: list[int] = []
        for j in others:
            f = flags[j] if whole else pick(flags[j], idx)
            empty = f.count("")
            if empty == len(idx):
                continue
            if empty:  # given in some rows only: split the group by it
                work.append((op, list(compress(idx, f))))
                work.append((op, [i for i, v in zip(idx, f, strict=True) if not v]))
                break
            present.append(j)
        else:
            evs = build_columns(
                op,
                {header[j]: cols[j] if whole else pick(cols[j], idx) for j in present},
                lines if whole else pick(lines, idx),
                csv=True,
            )
            if evs is None:
                return False
            parts.append((idx, evs))
    return _append(in_order(parts), b)


def _positions(keys: Sequence[Any]) -> dict[Any, list[int]]:
    """key -> the positions where it is, in order (one key: no loop)."""
    first = keys[0]
    if keys.count(first) == len(keys):
        return {first: list(range(len(keys)))}
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return out


def _bulk(
    nums: Sequence[int],
    raws: list[str],
    run: Callable[[int, int], bool],
    line: Callable[[int, str], None],
    c: _Collector,
) -> None:
    """Read a batch by the bulk path where it can: ``run(lo, hi)`` tries lines ``lo:hi`` whole;
    a run it refuses is split in halves, down to single lines, which go to the full path
    (``line``) in file order. Once a problem is found, everything goes to the full path: the
    trace is refused, and the full path alone decides what is reported."""
    todo = [(0, len(raws))]
    while todo and not c.full:
        lo, hi = todo.pop()
        if FAST_PATH and not c.problems and run(lo, hi):
            continue
        if hi - lo == 1 or not FAST_PATH or c.problems:
            for i in range(lo, hi):
                line(nums[i], raws[i])
                if c.full:
                    break
            continue
        mid = (lo + hi) // 2
        todo += [(mid, hi), (lo, mid)]


def _parse_jsonl(blocks: _Blocks, c: _Collector) -> Trace:
    """JSON Lines, in batches of :data:`_BATCH` lines, each decoded by one ``json.loads`` (as
    one JSON array when every line is one ``{...}``) and checked column by column by the schema
    (:func:`~explorer.ingest.schema.build_columns`). What the bulk path does not accept whole
    (a header, a comment, a schedule, a 2m fault, anything invalid) is split down to single lines
    for the full path (:meth:`_Builder.event`), which reports every problem at its line:col. The
    bulk path accepts only what the full path accepts, with equal events (tests/
    test_trace_format.py compares them with :data:`FAST_PATH` off)."""
    b = _Builder(c, csv_mode=False)
    head: dict[str, Any] = {"title": "", "description": "", "settings": {}, "seen": False}
    longest = L.MAX_LINE_BYTES // 4  # chars: a line this long is within MAX_LINE_BYTES

    def full(n: int, raw: str) -> None:
        _full_line(n, raw, b, c, head)

    for nums, raws in _batches(blocks):
        if c.full:
            break
        decoded = _decode_batch(raws, longest) if FAST_PATH and not c.problems else []
        lines = list(nums)

        def run(
            lo: int,
            hi: int,
            decoded: list[Any] = decoded,
            raws: list[str] = raws,
            lines: list[int] = lines,
        ) -> bool:
            if _json_run(decoded[lo:hi], raws[lo:hi], lines[lo:hi], b):
                head["seen"] = True  # an event came first: a header now is not the header
                return True
            return False

        _bulk(nums, raws, run, full, c)
    return _finish(c, b, c.source, "jsonl", head["title"], head["description"], head["settings"])


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
        if isinstance(value, (dict, list)) and key not in _LISTS:  # (a list field says why)
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


class _Csv:
    """The CSV reader's state between lines: the header row (None until read), its line, and
    whether a quoted cell was left open on an earlier line."""

    def __init__(self, c: _Collector) -> None:
        self.c = c
        self.b = _Builder(c, csv_mode=True)
        self.header: list[str] | None = None
        self.header_line = 0
        self.in_quote = False  # inside a quoted cell left open on an earlier line (reported)

    def line(self, n: int, raw: str) -> None:
        """The full path for one line: every check, every problem at its line:col."""
        c = self.c
        raw = raw.rstrip("\r")
        if self.in_quote:  # the rest of a cell that spans lines: part of the problem reported
            self.in_quote = raw != _TOO_LONG and _open_quote(raw, in_quote=True) is not None
            return
        stripped = raw.strip(_BLANK)
        if not stripped or stripped.startswith("#"):
            return
        if raw == _TOO_LONG or not _check_line_length(raw, n, c):
            return
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
                self.in_quote = True
                return
        try:
            row = next(csv.reader([raw]))
        except csv.Error as exc:
            if "new-line character" in str(exc):  # (the csv module's advice is for Python)
                c.add(
                    n,
                    1,
                    "invalid CSV: a carriage return (CR) inside the line: lines must end in LF "
                    "or CRLF (a file with CR-only line ends, old Mac style, is one long line)",
                    raw,
                )
            else:
                c.add(n, 1, f"invalid CSV: {exc}", raw)
            return
        if self.header is None:
            self.header = [h.strip().lstrip("\ufeff") for h in row]
            self.header_line = n
            for i, h in enumerate(self.header):
                if h not in CSV_COLUMNS:
                    c.add(n, _csv_col(raw, i), f"unknown column {_r(h)}", h, ", ".join(CSV_COLUMNS))
            if "op" not in self.header:
                c.add(
                    n,
                    1,
                    "the CSV header has no 'op' column",
                    raw,
                    "op," + ",".join(CSV_COLUMNS[1:4]) + ",...",
                )
                c.full = True  # no row can be read without its op: stop here
                return
            if len(set(self.header)) != len(self.header):
                c.add(n, 1, "a column appears twice in the CSV header", raw)
                c.full = True
            return
        if len(row) > len(self.header):
            c.add(
                n,
                _csv_col(raw, len(self.header)),
                f"{len(row)} cells but the header has {len(self.header)} columns",
                raw,
            )
            return
        obj = {
            h: v
            for h, v in zip(self.header, row, strict=False)
            if v.strip() != "" and h in CSV_COLUMNS
        }
        op = obj.get("op", "").strip()
        if op in SCHEMA:
            missing = [k for k in SCHEMA[op][0] if k not in self.header]
            if missing:
                c.add(
                    self.header_line,
                    1,
                    f"the CSV has no {', '.join(missing)} column for op {op!r} (line {n})",
                    ",".join(self.header),
                    ", ".join(SCHEMA[op][0]),
                )
                return
        self.b.event(obj, n, raw)


def _parse_csv(blocks: _Blocks, c: _Collector) -> Trace:
    """CSV, in batches of :data:`_BATCH` rows: after the header row, each batch is split on
    commas and checked column by column by the schema (:func:`_csv_run`); what that does not
    accept whole is split down to single rows for the full path (:meth:`_Csv.line`, the csv
    module and :meth:`_Builder.event`), which reports every problem at its line:col."""
    r = _Csv(c)
    for nums, raws in _batches(_columnar(blocks, r)):
        if c.full:
            break
        start = 0
        while (r.header is None or r.in_quote) and start < len(raws) and not c.full:
            r.line(nums[start], raws[start])  # the header row (and any line before it)
            start += 1
        header = r.header
        if header is None or start == len(raws) or c.full:
            continue
        if start:
            nums, raws = nums[start:], raws[start:]
        lines = list(nums)

        def run(
            lo: int,
            hi: int,
            header: list[str] = header,
            raws: list[str] = raws,
            lines: list[int] = lines,
        ) -> bool:
            return _csv_run(raws[lo:hi], lines[lo:hi], header, r.b)

        _bulk(nums, raws, run, r.line, c)
    if r.header is None and not c.problems:
        c.add(0, 0, "the CSV has no header row", "", "op,vcpu,gfn,...")
    return _finish(c, r.b, c.source, "csv", "", "", {})


def _columnar(blocks: _Blocks, r: _Csv) -> _Blocks:
    """The blocks of a CSV trace, each first offered whole to the column reader
    (:func:`~explorer.ingest.csvcolumns.read_rows`, every row at once) once the header is read;
    the blocks it takes are consumed here (their events appended), the others passed on to the
    batches and the full path, which decide what is wrong and report it. Nothing is taken once a
    problem has been found, or while a quoted cell is open: the full path alone reads on."""
    for nums, raws in blocks:
        start = 0
        while (r.header is None or r.in_quote) and start < len(raws) and not r.c.full:
            r.line(nums[start], raws[start])  # the header row (and any line before it)
            start += 1
        if start:
            nums, raws = nums[start:], raws[start:]
        header = r.header
        if (
            COLUMNAR
            and FAST_PATH
            and header is not None
            and not r.in_quote
            and not r.c.problems
            and not r.c.full
            and raws
        ):
            if "" in raws:  # empty lines (not dropped by the line reader in a dense block)
                nums = list(compress(nums, raws))
                raws = list(filter(None, raws))
            size = COLUMN_ROWS
            for lo in range(0, len(raws), size):
                part_nums, part_raws = nums[lo : lo + size], raws[lo : lo + size]
                if not r.c.problems:
                    room = L.MAX_EVENTS - len(r.b.events)
                    evs = read_rows(part_raws, part_nums, header, room)
                    if evs is not None and _append(evs, r.b):
                        continue
                yield part_nums, part_raws
            continue
        yield nums, raws


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
    if not c.problems:
        _check_groups(c, b.events)
    if c.problems:
        raise TraceError(c.problems)
    return Trace(source, fmt, title, description, settings, tuple(b.events))


_OP_OF = operator.attrgetter("op")
#: Ops whose event cannot share a concurrent group with some other events (:func:`_check_groups`)
_ORDERED_OPS = ("td_destroy", "vcpu_create")


def _check_groups(c: _Collector, events: list[Event]) -> None:
    """Concurrent groups (consecutive events with one ``t``) the kernel cannot run at once:

    - a vCPU's event beside its own ``vcpu_create``: a vCPU runs (KVM_RUN on its fd) only after
      KVM_CREATE_VCPU returned that fd;
    - a ``td_destroy`` beside an event of one of its TD's vCPUs: a VM is destroyed
      (``kvm_destroy_vm``) only when its last reference is dropped, and every vCPU's fd holds
      one, so none of its vCPUs is in the kernel then (its vCPUs are freed by the teardown).

    Under some interleavings the engine would run them out of that order (a fault before its
    vCPU exists, a vCPU faulting on after its TD's teardown): refused here, at the vCPU event's
    line (beside its creation) or the ``td_destroy``'s (beside its vCPUs), naming the other. Only the groups around those two ops are looked at, found by
    scanning the ops in C (``list.index``): a parse pays about 1 % for it."""
    ops = list(map(_OP_OF, events))
    found: list[int] = []
    for op in _ORDERED_OPS:
        at = -1
        try:
            while True:
                at = ops.index(op, at + 1)
                found.append(at)
        except ValueError:
            pass
    if not found:
        return
    found.sort()
    owner: dict[int, int] = {}  # each vCPU's TD as of the group checked (ids may be reused)
    created = [i for i in found if ops[i] == "vcpu_create"]
    k = 0  # the creations taken into ``owner`` so far
    done = -1  # the last event of the last group checked
    n = len(events)
    for i in found:
        t = events[i].t
        if t is None or i <= done or c.full:
            continue
        lo = i
        while lo > 0 and events[lo - 1].t == t:
            lo -= 1
        hi = i + 1
        while hi < n and events[hi].t == t:
            hi += 1
        done = hi - 1
        while k < len(created) and created[k] < hi:  # creations up to the group's end
            e = events[created[k]]
            owner[e.vcpu] = e.td  # type: ignore[attr-defined]
            k += 1
        if hi - lo > 1:
            _check_group(c, events[lo:hi], owner)


def _check_group(c: _Collector, group: list[Event], owner: dict[int, int]) -> None:
    created = {g.vcpu: g for g in group if g.op == "vcpu_create"}  # type: ignore[attr-defined]
    destroyed = {g.td: g for g in group if g.op == "td_destroy"}  # type: ignore[attr-defined]
    told: set[int] = set()  # the td_destroys already reported (once each, at the first vCPU)
    for g in group:
        vcpu = getattr(g, "vcpu", None)
        if vcpu is None or g.op == "vcpu_create":
            continue
        made = created.get(vcpu)
        if made is not None:
            c.add(
                g.line,
                1,
                f"vCPU {vcpu}'s {g.op} shares t={g.t} with its own vcpu_create (line "
                f"{made.line}): a vCPU runs only after KVM_CREATE_VCPU returned its fd",
                "",
                "a later t than the vcpu_create's",
            )
        gone = destroyed.get(owner.get(vcpu, -1))
        if gone is not None and gone.line not in told:
            told.add(gone.line)
            c.add(
                gone.line,
                1,
                f"td_destroy of TD {owner[vcpu]} shares t={g.t} with vCPU {vcpu}'s {g.op} (line "
                f"{g.line}): a VM is destroyed only once its last vCPU fd is closed "
                "(kvm_destroy_vm), so none of its vCPUs runs at the same time",
                "",
                "a later t than its vCPUs' events",
            )
