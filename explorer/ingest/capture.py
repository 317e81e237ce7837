"""Parse real kernel captures made by ``tools/capture/dpamt.bt`` (docs/capture.md is the contract).

A capture is what a v6 kernel actually did, one probe hit per line::

    <timestamp_ns> <cpu> <tid> <probe> key=value key=value ...

The parser is strict for the same reason the trace parser is (docs/trace-format.md): a capture
compared against the model must say exactly what the kernel did, so a damaged or misread line is
reported at ``source:line:col`` (as :class:`~explorer.model.errors.Problem`, collected up to
:data:`~explorer.ingest.limits.MAX_ERRORS` and raised together as one
:class:`~explorer.model.errors.TraceError`) rather than silently skipped. Only unknown keys on a
known probe are tolerated (kept, and noted once each in :attr:`Capture.unknown`): a newer script
may print more than this parser knows, and that must not make older captures unreadable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from explorer.ingest import limits as L
from explorer.model.errors import Problem, TraceError
from explorer.model.settings import MAX_HOST_MEMORY_MIB

_MAX_HOST_PFN = MAX_HOST_MEMORY_MIB * 256 - 1


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """What one probe prints: its keys (all required) and what they mean (docs/capture.md)."""

    keys: tuple[str, ...]
    meaning: str


#: Every probe the script prints, with its keys. docs/capture.md's table and the script's printf
#: lines are checked against this by tests/test_capture.py, so the three cannot drift apart.
PROBES: dict[str, ProbeSpec] = {
    "tdx_pamt_get.entry": ProbeSpec(
        ("pfn", "cache", "cache_count"), "a get: the page, its cache (0x0: none), cache pages"
    ),
    "tdx_pamt_get.return": ProbeSpec(("ret", "cache_count"), "0 or -errno; cache pages after"),
    "tdx_pamt_put.entry": ProbeSpec(("pfn",), "a put of the page"),
    "tdx_pamt_put.return": ProbeSpec(("ret",), "always 0 (void)"),
    "tdx_topup_pamt_cache.entry": ProbeSpec(
        ("cache", "npages", "cache_count"), "a top-up to 2 x npages"
    ),
    "tdx_topup_pamt_cache.return": ProbeSpec(("ret", "cache_count"), "0 or -ENOMEM; pages after"),
    "tdx_free_pamt_cache.entry": ProbeSpec(("cache", "cache_count"), "the cache is emptied"),
    "tdx_free_pamt_cache.return": ProbeSpec(("ret", "cache_count"), "always 0 (void); 0 after"),
    "tdh_phymem_pamt_add.entry": ProbeSpec(
        ("pfn", "pair0", "pair1"), "TDH.PHYMEM.PAMT.ADD for pfn's region with the pair's pfns"
    ),
    "tdh_phymem_pamt_add.return": ProbeSpec(("ret",), "the TDX status (0x0: success)"),
    "tdh_phymem_pamt_remove.entry": ProbeSpec(("pfn",), "TDH.PHYMEM.PAMT.REMOVE for the region"),
    "tdh_phymem_pamt_remove.return": ProbeSpec(
        ("ret", "pair0", "pair1"), "the TDX status; the returned pair's pfns"
    ),
    "tdx_alloc_control_page.entry": ProbeSpec((), "a control page is allocated"),
    "tdx_alloc_control_page.return": ProbeSpec(("ret", "pfn"), "0 or -ENOMEM; its pfn"),
    "tdx_free_control_page.entry": ProbeSpec(("pfn",), "a control page is freed"),
    "tdx_free_control_page.return": ProbeSpec(("ret",), "always 0 (void)"),
    "kvm_page_fault": ProbeSpec(
        ("vcpu", "gpa", "error_code"), "tracepoint kvm:kvm_page_fault (an EPT violation)"
    ),
    "kvm_tdp_mmu_spte_changed": ProbeSpec(
        ("as_id", "gfn", "level", "old_spte", "new_spte"),
        "tracepoint kvmmmu:kvm_tdp_mmu_spte_changed (map, freeze, zap)",
    ),
}

Value = int | str

#: Fields an import turns into trace fields, within the trace format's own limits
#: (explorer/ingest/limits.py, explorer/model/settings.py): a pfn past the largest host, a gfn or gpa past 5-level EPT, a
#: vCPU id past the format's ids are refused here, at their line and column, rather than
#: carried into a trace that the engine cannot hold.
_RANGES: dict[str, tuple[int, int]] = {
    # (the import sizes host memory to cover every pfn: at most the largest host, 4 TiB)
    "pfn": (0, _MAX_HOST_PFN),
    "pair0": (0, _MAX_HOST_PFN),
    "pair1": (0, _MAX_HOST_PFN),
    "gfn": (0, L.MAX_GFN),
    "gpa": (0, ((L.MAX_GFN + 1) << 12) - 1),
    "vcpu": (0, L.MAX_ID),
}


@dataclass(frozen=True, slots=True)
class Record:
    """One probe hit. ``fields`` keeps unknown keys too (they are also noted in the capture)."""

    line: int
    ts: int
    cpu: int
    tid: int
    probe: str
    fields: dict[str, Value]


@dataclass(frozen=True)
class Capture:
    """A parsed capture: its records in file order and a note per unknown (probe, key)."""

    source: str
    records: tuple[Record, ...]
    unknown: tuple[str, ...] = ()
    unknown_counts: dict[tuple[str, str], int] = field(default_factory=dict)


_UINT = r"(?:0|[1-9][0-9]*)"
#: A value: a decimal int (maybe negative), a 0x hex int, or a bare word.
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_KEY = re.compile(r"[a-z_][a-z0-9_]*")
_HEAD = re.compile(rf"({_UINT}) ({_UINT}) ({_UINT}) ([A-Za-z_][A-Za-z0-9_.]*)(?= |$)")
#: What bpftrace itself prints before the records when run without -q: skipped, like a comment.
_ATTACHING = re.compile(r"Attaching [0-9]+ probes?\.\.\.")


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Problem] = []
        self.full = False

    def add(self, line: int, col: int, reason: str, text: str = "", expected: str = "") -> None:
        if len(self.items) < L.MAX_ERRORS:
            self.items.append(Problem(self.source, line, col, reason, _short(text), expected))
        else:
            self.items.append(
                Problem(self.source, line, 0, f"more than {L.MAX_ERRORS} problems: stopped here")
            )
            self.full = True


def _value(text: str) -> Value | None:
    """The value of ``text`` (int for a decimal or 0x hex int, str for a bare word), or None."""
    if _INT.fullmatch(text):
        digits = text.lstrip("-")
        if len(digits.removeprefix("0x").lstrip("0")) > L.MAX_INT_DIGITS:
            return None
        return int(text, 16) if text.startswith("0x") else int(text)
    if _WORD.fullmatch(text):
        return text
    return None


def _content_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(line number, bytes) of every line, CR of CRLF dropped."""
    return [(n, raw.removesuffix(b"\r")) for n, raw in enumerate(data.split(b"\n"), 1)]


def _is_comment(text: str) -> bool:
    s = text.strip(" \t")
    return not s or s.startswith("#") or bool(_ATTACHING.fullmatch(s))


def parse_capture(data: bytes, source: str) -> Capture:
    """Parse a capture, or raise :class:`TraceError` with every problem found.

    Checks (each pinned to line:col): the record grammar and known probe names, each field's
    syntax, a key's repetition, the probe's keys, timestamps not decreasing on one CPU (bpftrace
    keeps each CPU's records in order; records of different CPUs may interleave), a ``.return``
    with its ``.entry`` open on the same tid, and ``ret=`` on every return.
    """
    if len(data) > L.MAX_UPLOAD_BYTES:
        raise TraceError(
            Problem(
                source,
                0,
                0,
                f"the file is {len(data)} bytes, over the limit of {L.MAX_UPLOAD_BYTES} bytes "
                "(MAX_UPLOAD_BYTES)",
            )
        )
    data = data.removeprefix(b"\xef\xbb\xbf")
    out = _Problems(source)
    records: list[Record] = []
    last_ts: dict[int, tuple[int, int]] = {}  # cpu -> (ts, line)
    open_calls: dict[tuple[int, str], int] = {}  # (tid, function) -> entries not yet returned
    unknown: dict[tuple[str, str], int] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for n, raw in _content_lines(data):
        if out.full:
            break
        if len(raw) > L.MAX_LINE_BYTES:
            out.add(n, 1, f"the line is over {L.MAX_LINE_BYTES} bytes (MAX_LINE_BYTES)")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.add(n, e.start + 1, "not UTF-8", repr(raw[e.start : e.start + 8]))
            continue
        if _is_comment(text):
            continue
        rec = _parse_line(text, n, out)
        if rec is None:
            continue
        spec = PROBES[rec.probe]
        for key in rec.fields:
            if key not in spec.keys:
                unknown[(rec.probe, key)] = unknown.get((rec.probe, key), 0) + 1
                first_seen.setdefault((rec.probe, key), n)
        prev = last_ts.get(rec.cpu)
        if prev is not None and rec.ts < prev[0]:
            out.add(
                n,
                1,
                f"timestamp goes back on cpu {rec.cpu} (line {prev[1]} has {prev[0]})",
                str(rec.ts),
                f"at least {prev[0]}",
            )
        if prev is None or rec.ts >= prev[0]:
            last_ts[rec.cpu] = (rec.ts, n)
        func, _, kind = rec.probe.rpartition(".")
        if kind == "entry":
            open_calls[(rec.tid, func)] = open_calls.get((rec.tid, func), 0) + 1
        elif kind == "return":
            k = (rec.tid, func)
            if open_calls.get(k, 0) == 0:
                col = len(f"{rec.ts} {rec.cpu} {rec.tid} ") + 1
                out.add(n, col, f"a return with no open {func}.entry on tid {rec.tid}", rec.probe)
            else:
                open_calls[k] -= 1
        records.append(rec)
    if out.items:
        raise TraceError(out.items)
    notes = tuple(
        f"{probe}: unknown key {key!r} on {cnt} record(s), first at line {first_seen[(probe, key)]}"
        for (probe, key), cnt in sorted(unknown.items())
    )
    return Capture(source, tuple(records), notes, dict(unknown))


def _parse_line(text: str, n: int, out: _Problems) -> Record | None:
    """One record (its field problems reported), or None when not even its head is usable."""
    head = _HEAD.match(text)
    if head is None:
        out.add(
            n,
            1,
            "not a capture record",
            text,
            "<timestamp_ns> <cpu> <tid> <probe> key=value ...",
        )
        return None
    probe = head.group(4)
    if probe not in PROBES:
        out.add(
            n, head.start(4) + 1, f"unknown probe {probe!r}", probe, "a probe of docs/capture.md"
        )
        return None
    fields: dict[str, Value] = {}
    ok = True
    pos = head.end()
    rest = text[pos:]
    col = pos + 1
    for part in rest.split(" ")[1:] if rest else []:
        col += 1  # the separating space
        key, eq, val = part.partition("=")
        value = _value(val) if eq else None
        if not _KEY.fullmatch(key) or value is None:
            out.add(n, col, "malformed field", part, "key=value (a decimal or 0x hex int, a word)")
            ok = False
        elif key in fields:
            out.add(n, col, f"key {key!r} repeated", part)
            ok = False
        elif key in _RANGES and not (
            isinstance(value, int) and _RANGES[key][0] <= value <= _RANGES[key][1]
        ):
            lo, hi = _RANGES[key]
            out.add(n, col, f"{key} out of range", part, f"an integer in {lo}..{hi:#x}")
            ok = False
        else:
            fields[key] = value
        col += len(part)
    spec = PROBES[probe]
    missing = [k for k in spec.keys if k not in fields]
    if ok and missing:
        reason = (
            "a return without ret="
            if "ret" in missing and probe.endswith(".return")
            else f"missing key(s) {', '.join(missing)}"
        )
        out.add(n, len(text) + 1, reason, probe, " ".join(f"{k}=" for k in spec.keys))
    # A record with a bad field is still returned (the problem is already reported) so that the
    # order and entry/return checks go on past it instead of reporting a cascade of follow-ups.
    ts, cpu, tid = (int(head.group(i)) for i in (1, 2, 3))
    return Record(n, ts, cpu, tid, probe, fields)


def looks_like_capture(data: bytes) -> bool:
    """Whether ``data`` is a capture rather than a trace: its first non-comment line matches the
    record grammar with a known probe (the app's upload picks the parser by content, not name)."""
    for raw in data[: L.MAX_LINE_BYTES * 4].removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        try:
            text = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            return False
        if _is_comment(text):
            continue
        head = _HEAD.match(text)
        return head is not None and head.group(4) in PROBES
    return False
