"""Parse real kernel captures made by ``tools/capture/dpamt.bt`` (docs/capture.md is the contract).

A capture is what a v6 kernel actually did, one probe hit per line (format v2)::

    <timestamp_ns> <cpu> <tid> <pid> <probe> key=value key=value ...

``pid`` is the thread group (bpftrace's ``pid``: the VMM process) and every record carries
``kvm=`` (the ``struct kvm *`` the thread last entered KVM for, 0x0 when unknown): the VM
identity the import needs (issue 25). The two tracepoints print what their ``TP_printk`` prints
(``arch/x86/kvm/trace.h`` ``kvm_page_fault``, ``arch/x86/kvm/mmu/mmutrace.h``
``kvm_tdp_mmu_spte_changed``).

The parser is strict: a damaged or misread line is reported at ``source:line:col`` (as
:class:`~explorer.model.errors.Problem`, up to :data:`~explorer.ingest.limits.MAX_ERRORS`, raised
together as one :class:`~explorer.model.errors.TraceError`), never skipped. Unknown keys on a
known probe are noted once each in :attr:`Capture.unknown` (a newer script may print more),
counted, and dropped from the record's fields (nothing reads their values). Header comments
``# key=value`` written by ``tools/capture/preflight.sh`` (the probes attached,
``vmemmap_base``, ``page_size``, ``vms_at_start``) land in :attr:`Capture.header`; the control-
page gets and puts a kernel build inlined are derived from them (:mod:`explorer.ingest.inlined`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

from explorer.ingest import limits as L
from explorer.ingest.gcpause import gc_paused
from explorer.ingest.inlined import check_header, derive
from explorer.model.errors import Problem, TraceError
from explorer.model.settings import MAX_HOST_MEMORY_MIB

_MAX_HOST_PFN = MAX_HOST_MEMORY_MIB * 256 - 1
#: A capture file may be larger than an uploaded trace: a busy host prints ~90 bytes per record,
#: and a million records (the figure ``bench_capture`` times) is ~90 MB.
MAX_CAPTURE_BYTES = 256 * L.MIB


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """What one probe prints: its keys (all required) and what they mean (docs/capture.md)."""

    keys: tuple[str, ...]
    meaning: str


#: Every probe the script can print, with its keys. docs/capture.md's table and the script's
#: printf lines are checked against this by tests/test_capture.py. ``kvm`` is on every record.
PROBES: dict[str, ProbeSpec] = {
    "tdx_pamt_get.entry": ProbeSpec(
        ("pfn", "cache", "cache_count", "kvm"), "a get: the page, its cache (0x0: none), pages"
    ),
    "tdx_pamt_get.return": ProbeSpec(("ret", "cache_count", "kvm"), "0 or -errno; pages after"),
    "tdx_pamt_put.entry": ProbeSpec(("pfn", "kvm"), "a put of the page"),
    "tdx_pamt_put.return": ProbeSpec(("ret", "kvm"), "always 0 (void)"),
    "tdx_topup_pamt_cache.entry": ProbeSpec(
        ("cache", "npages", "cache_count", "kvm"), "a top-up to 2 x npages"
    ),
    "tdx_topup_pamt_cache.return": ProbeSpec(
        ("ret", "cache_count", "kvm"), "0 or -ENOMEM; pages after"
    ),
    "tdx_free_pamt_cache.entry": ProbeSpec(("cache", "cache_count", "kvm"), "the cache emptied"),
    "tdx_free_pamt_cache.return": ProbeSpec(("ret", "cache_count", "kvm"), "always 0; 0 after"),
    "tdh_phymem_pamt_add.entry": ProbeSpec(("pfn", "kvm"), "PAMT.ADD for pfn's 2 MiB region"),
    "tdh_phymem_pamt_add.return": ProbeSpec(("ret", "kvm"), "the TDX status (0x0: success)"),
    "tdh_phymem_pamt_remove.entry": ProbeSpec(("pfn", "kvm"), "PAMT.REMOVE for the region"),
    "tdh_phymem_pamt_remove.return": ProbeSpec(("ret", "kvm"), "the TDX status"),
    "tdx_alloc_control_page.entry": ProbeSpec(("kvm",), "a control page is allocated"),
    "tdx_alloc_control_page.return": ProbeSpec(
        ("ret", "page", "kvm"), "0 or -ENOMEM; its struct page *"
    ),
    "tdx_free_control_page.entry": ProbeSpec(("page", "kvm"), "a control page is freed"),
    "tdx_free_control_page.return": ProbeSpec(("ret", "kvm"), "always 0 (void)"),
    "kvm_mmu_page_fault": ProbeSpec(
        ("gpa", "error_code", "kvm"), "one attempt of the fault handler (a local retry: more)"
    ),
    "kvm_arch_pre_destroy_vm": ProbeSpec(("kvm",), "the VM's teardown starts on this thread"),
    "kvm_page_fault": ProbeSpec(
        ("vcpu", "rip", "gpa", "error_code", "kvm"), "tracepoint kvm:kvm_page_fault"
    ),
    "kvm_tdp_mmu_spte_changed": ProbeSpec(
        ("as_id", "gfn", "level", "old_spte", "new_spte", "kvm"),
        "tracepoint kvmmmu:kvm_tdp_mmu_spte_changed (map, zap, removed table)",
    ),
}

Value = int | str

#: Fields an import turns into trace fields, within the trace format's own limits: refused at
#: their line and column rather than carried into a trace the engine cannot hold.
_RANGES: dict[str, tuple[int, int]] = {
    "pfn": (0, _MAX_HOST_PFN),
    "gfn": (0, L.MAX_GFN),
    "gpa": (0, ((L.MAX_GFN + 1) << 12) - 1),
    "vcpu": (0, L.MAX_ID),
    "level": (1, 5),
}


class Record(NamedTuple):
    """One probe hit. ``fields`` holds the probe's keys (unknown ones are noted and dropped);
    ``text`` is the line as read.

    A named tuple, and nothing changes a record once parsed: the parser builds a million of
    them with ``tuple.__new__`` (:data:`_new_record`, one C call; a dataclass's generated
    ``__init__`` cost 0.6 to 0.9 s per million records), and its fields are read by C
    descriptors."""

    line: int
    ts: int
    cpu: int
    tid: int
    probe: str
    fields: dict[str, Value]
    pid: int = 0
    text: str = ""


#: ``_new_record(Record, (line, ts, cpu, tid, probe, fields, pid, text))``: a record without
#: the named tuple's Python-level ``__new__`` (the parser's fast path; same object).
_new_record = tuple.__new__


@dataclass(frozen=True)
class Capture:
    """A parsed capture: its records in file order, a note per unknown (probe, key), and the
    preflight's ``# key=value`` header lines."""

    source: str
    records: tuple[Record, ...]
    unknown: tuple[str, ...] = ()
    unknown_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)
    #: what was derived from the records (:mod:`explorer.ingest.inlined`): a note per kind
    derived: tuple[str, ...] = ()


_INT = re.compile(r"-?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_KEY = re.compile(r"[a-z_][a-z0-9_]*")
_UINT = re.compile(r"0|[1-9][0-9]*")
_PROBE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_HEADER = re.compile(r"#\s*([a-z_][a-z0-9_]*)=(\S*)\s*")
#: What bpftrace itself prints before the records when run without -q: skipped, like a comment.
_ATTACHING = re.compile(r"Attaching [0-9]+ probes?\.\.\.")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_HEAD_SHAPE = "<timestamp_ns> <cpu> <tid> <pid> <probe> key=value ..."
#: The timestamp, then who printed the record: "<cpu> <tid> <pid> <probe>" (one group, the key of
#: the parser's memo, :class:`_Who`), with the probe as a group of its own.
_FAST_HEAD = re.compile(
    r"(0|[1-9][0-9]*) ((?:0|[1-9][0-9]*) (?:0|[1-9][0-9]*) (?:0|[1-9][0-9]*) (\S+))"
)


class _Who(NamedTuple):
    """What the parser's memo knows of one "<cpu> <tid> <pid> <probe>" head (:func:`_learn`):
    the head's numbers, the probe's fields regex (``fullmatch``), keys and ranged keys
    (:class:`_Fast`), and the entry/return pairing's key ``(tid, function)`` and step (+1, -1,
    0: :data:`_CALL`), all computed once per thread and probe rather than on each line."""

    cpu: int
    tid: int
    pid: int
    probe: str
    fullmatch: Callable[[str, int], re.Match[str] | None]
    keys: tuple[str, ...]
    ranged: tuple[tuple[str, int, int], ...]
    call: tuple[int, str]
    step: int


#: The memo's bound (a host's threads x CPUs x probes; cleared when over).
_MAX_WHO = 1 << 16
_FAST_VALUE = rf"(-?(?:0|[1-9][0-9]{{0,{L.MAX_INT_DIGITS - 1}}})|0x[0-9a-fA-F]{{1,64}})"


def _fast_regex(keys: tuple[str, ...]) -> re.Pattern[str]:
    """A record of exactly these keys in this order with int values (what the script prints):
    such a line is parsed by one match; any other goes through the checks of ``_parse_line``."""
    return re.compile("".join(f" {k}={_FAST_VALUE}" for k in keys))


class _Fast(NamedTuple):
    """How the parser's fast path reads one probe's records: the regex of its keys, the keys, and the
    key, low and high of each key with a range (:data:`_RANGES`)."""

    regex: re.Pattern[str]
    keys: tuple[str, ...]
    ranged: tuple[tuple[str, int, int], ...]


_FAST: dict[str, _Fast] = {
    probe: _Fast(
        _fast_regex(spec.keys),
        spec.keys,
        tuple((k, *_RANGES[k]) for k in spec.keys if k in _RANGES),
    )
    for probe, spec in PROBES.items()
}


def human_size(n: int) -> str:
    """``n`` bytes as a person reads it (``73.4 MB (76,958,000 bytes)``): a size refused by a
    limit is reported as the file's real size, never as the bytes read before stopping."""
    if n >= 1000**2:
        return f"{n / 1000**2:.1f} MB ({n:,} bytes)"
    if n >= 1000:
        return f"{n / 1000:.1f} kB ({n:,} bytes)"
    return f"{n} bytes"


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
    """The value of ``text`` (int for a decimal or 0x hex int, str for a bare word), or None.
    The common shapes are decided without a regex (a million records must parse in seconds)."""
    if text[:2] == "0x":
        h = text[2:]
        if h and len(h) <= 64 and all(c in _HEXDIGITS for c in h):
            return int(h, 16)
        return None
    if text.isdigit() and text.isascii() and (text[0] != "0" or len(text) == 1):
        return int(text) if len(text) <= L.MAX_INT_DIGITS else None
    if _INT.fullmatch(text):
        digits = text.lstrip("-")
        return int(text) if len(digits) <= L.MAX_INT_DIGITS else None
    if _WORD.fullmatch(text):
        return text
    return None


def _is_comment(text: str) -> bool:
    s = text.strip(" \t")
    return not s or s.startswith("#") or bool(_ATTACHING.fullmatch(s))


def parse_capture(data: bytes, source: str, *, size: int | None = None) -> Capture:
    """Parse a capture, or raise :class:`TraceError` with every problem found.

    ``size``: the file's real size when ``data`` is only its first bytes (the reader stops past
    the limit): the refusal then names the real size. Checks (each pinned to line:col): the
    record grammar and known probe names, each field's syntax and range, a key's repetition, the
    probe's keys, timestamps not decreasing on one CPU (bpftrace keeps each CPU's records in
    order), a ``.return`` with its ``.entry`` open on the same tid, ``ret=`` on every return,
    and at least one record (a file of comments only is not a capture of anything).
    """
    real = size if size is not None else len(data)
    if real > MAX_CAPTURE_BYTES:
        raise TraceError(
            Problem(
                source,
                0,
                0,
                f"the file is {human_size(real)}, over the capture limit of "
                f"{MAX_CAPTURE_BYTES // L.MIB} MiB (MAX_CAPTURE_BYTES)",
            )
        )
    with gc_paused():  # a million records and their dicts, no reference cycles among them
        return _parse_capture(data.removeprefix(b"\xef\xbb\xbf"), source)


def _parse_capture(data: bytes, source: str) -> Capture:
    out = _Problems(source)
    records: list[Record] = []
    header: dict[str, str] = {}
    header_at: dict[str, int] = {}  # a header key -> its line
    last_ts: dict[int, int] = {}  # cpu -> the timestamp of its last record in order
    # (tid, function) -> the entries not yet returned: each one's kvm= and line
    open_calls: dict[tuple[int, str], list[tuple[Value | None, int]]] = {}
    unknown: dict[tuple[str, str], int] = {}
    first_seen: dict[tuple[str, str], int] = {}
    who: dict[str, _Who] = {}
    n = 0
    # The loop runs once per line (a million): a line as the script prints it (every key once,
    # in order, in range) is read by two regex matches and one ``int`` per value, its head's
    # numbers, probe and pairing taken from the memo; any other line goes through the checks of
    # ``_parse_line``, which report each problem at its column (tests/test_capture_fast.py
    # checks that both paths read a record alike).
    fast_head, who_get, append, ts_get = _FAST_HEAD.match, who.get, records.append, last_ts.get
    new_record = _new_record
    for n, text in enumerate(_lines(data, out), 1):
        if out.full:
            break
        if text is None:
            continue
        rec: Record | None = None
        head = fast_head(text)
        if head is not None:
            known = who_get(head[2]) or _learn(head, who)
            if known is not None:
                cpu, tid, pid, probe, fullmatch, keys, ranged, call, step = known
                m = fullmatch(text, head.end())
                if m is not None:
                    # one group per key; int base 0: decimal or 0x hex
                    fields: dict[str, Value] = dict(
                        zip(keys, map(int, m.groups(), repeat(0)), strict=False)
                    )
                    for key, low, high in ranged:
                        if not low <= fields[key] <= high:  # type: ignore[operator]  # ints
                            break
                    else:
                        ts = int(head[1])
                        rec = new_record(Record, (n, ts, cpu, tid, probe, fields, pid, text))
        if rec is None:
            if not text or text[0] == "#" or _is_comment(text):
                h = _HEADER.fullmatch(text.strip(" \t"))
                if h and not records:
                    header[h.group(1)] = h.group(2)
                    header_at[h.group(1)] = n
                continue
            rec = _parse_line(text, n, out)
            if rec is None:
                continue
            keys = PROBES[rec.probe].keys
            if len(rec.fields) != len(keys):
                extra = [key for key in rec.fields if key not in keys]
                for key in extra:
                    unknown[(rec.probe, key)] = unknown.get((rec.probe, key), 0) + 1
                    first_seen.setdefault((rec.probe, key), n)
                    # noted, then let go: nothing reads an unknown key's value, and a capture
                    # whose lines carry thousands of them held a dict entry each (about 13
                    # bytes per byte of the file: 859 MB for 65 MB); the line keeps its text
                    del rec.fields[key]
            ts, cpu = rec.ts, rec.cpu
            func, step = _CALL[rec.probe]
            call = (rec.tid, func)
        append(rec)
        if ts < ts_get(cpu, 0):
            _went_back(out, records, cpu, last_ts[cpu])
        else:
            last_ts[cpu] = ts
        if step:
            opened = open_calls.get(call)
            if step > 0:
                if opened is None:
                    opened = open_calls[call] = []
                opened.append((rec.fields.get("kvm"), n))
            elif opened:
                kvm, at = opened.pop()
                if kvm != rec.fields.get("kvm"):
                    _other_vm(out, rec, kvm, at)
            else:
                _no_entry(out, rec, call[1])
    if not records and not out.items:
        lines = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
        out.add(
            0,
            0,
            f"no capture records in {lines} line(s): only comments and blank lines "
            "(was the script stopped before the TD ran, or is this another file?)",
        )
    base, size = check_header(header, header_at, out.add)
    derived, derived_notes = derive(records, base, size, _MAX_HOST_PFN, out.add)
    if out.items:
        raise TraceError(out.items)
    if derived is not None:
        records = derived
    notes = tuple(
        f"{probe}: unknown key {key!r} on {cnt} record(s), first at line {first_seen[(probe, key)]}"
        for (probe, key), cnt in sorted(unknown.items())
    )
    return Capture(source, tuple(records), notes, dict(unknown), header, tuple(derived_notes))


#: probe -> (function, +1 for its entry, -1 for its return, 0: not a call) for the pairing
_CALL: dict[str, tuple[str, int]] = {
    p: (p.rpartition(".")[0], {"entry": 1, "return": -1}.get(p.rpartition(".")[2], 0))
    if "." in p
    else (p, 0)
    for p in PROBES
}


def _lines(data: bytes, out: _Problems) -> list[str | None]:
    """The file's lines as text (CR of CRLF dropped): decoded at once when the file is UTF-8
    (a million lines), else line by line with each bad line reported (None) at its column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        split = text.split("\n")
        lines: list[str | None] = list(split)
        if "\r" in text:
            lines = [t[:-1] if t[-1:] == "\r" else t for t in split]
        # a line is long in bytes only when long in characters (at most 4 bytes each): the
        # scan of each line is skipped when none is (a million lines)
        if max(map(len, split)) > L.MAX_LINE_BYTES // 4:
            for i, t in enumerate(lines):
                assert t is not None
                if len(t) > L.MAX_LINE_BYTES // 4 and len(t.encode()) > L.MAX_LINE_BYTES:
                    out.add(i + 1, 1, f"the line is over {L.MAX_LINE_BYTES} bytes (MAX_LINE_BYTES)")
                    lines[i] = None
        return lines
    res: list[str | None] = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if len(raw) > L.MAX_LINE_BYTES:
            out.add(n, 1, f"the line is over {L.MAX_LINE_BYTES} bytes (MAX_LINE_BYTES)")
            res.append(None)
            continue
        try:
            res.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            out.add(n, e.start + 1, "not UTF-8", repr(raw[e.start : e.start + 8]))
            res.append(None)
    return res


def _learn(head: re.Match[str], who: dict[str, _Who]) -> _Who | None:
    """The memo's entry for a head "<cpu> <tid> <pid> <probe>" not met before (kept in ``who``),
    or None when the probe is unknown (the checked parse then reports it). A thread prints many
    records on one CPU: its head is converted once, not on each line."""
    fast = _FAST.get(head[3])
    if fast is None:
        return None
    cpu_s, tid_s, pid_s, probe = head[2].split(" ")
    if len(who) >= _MAX_WHO:
        who.clear()
    tid = int(tid_s)
    func, step = _CALL[probe]
    known = who[head[2]] = _Who(
        int(cpu_s),
        tid,
        int(pid_s),
        probe,
        fast.regex.fullmatch,
        fast.keys,
        fast.ranged,
        (tid, func),
        step,
    )
    return known


def _went_back(out: _Problems, records: list[Record], cpu: int, last: int) -> None:
    """Report the last record (``records[-1]``) for a timestamp lower than ``last``, the latest
    in-order one on its CPU, naming that record's line: the newest earlier record of this CPU
    with that very timestamp (a record going back is kept but never raises the mark, so only an
    in-order record can carry it). Searched only on an error: the loop keeps no line per CPU."""
    rec = records[-1]
    line = next(
        records[i].line
        for i in range(len(records) - 2, -1, -1)
        if records[i].cpu == cpu and records[i].ts == last
    )
    out.add(
        rec.line,
        1,
        f"timestamp goes back on cpu {cpu} (line {line} has {last})",
        str(rec.ts),
        f"at least {last}",
    )


def _other_vm(out: _Problems, rec: Record, kvm: Value | None, at: int) -> None:
    """Report ``rec``, a return whose ``kvm=`` is not its entry's (at line ``at``), at that
    field. ``kvm=`` is the VM the thread last entered KVM for (its vCPU or VM ioctl), and a
    thread cannot make another ioctl inside a call, so a call returns on the VM it entered:
    a damaged or spliced record (it was taken as another VM's, and conform then reported
    divergences at line 1 of the file, none at this one)."""
    shown = f"{kvm:#x}" if isinstance(kvm, int) else str(kvm)
    col = rec.text.find("kvm=") + 1
    out.add(
        rec.line,
        max(col, 1),
        f"kvm= is not its entry's ({shown}, line {at}): a call returns on the VM it entered",
        rec.text,
    )


def _no_entry(out: _Problems, rec: Record, func: str) -> None:
    """Report ``rec``, a return with no entry of ``func`` open on its thread, at its probe."""
    col = len(f"{rec.ts} {rec.cpu} {rec.tid} {rec.pid} ") + 1
    out.add(rec.line, col, f"a return with no open {func}.entry on tid {rec.tid}", rec.probe)


def _parse_line(text: str, n: int, out: _Problems) -> Record | None:
    """One record (its field problems reported), or None when not even its head is usable."""
    parts = text.split(" ")
    head = parts[:5]
    if len(head) < 5 or not all(_UINT.fullmatch(p) for p in head[:4]):
        out.add(n, 1, "not a capture record", text, _HEAD_SHAPE)
        return None
    probe = head[4]
    pcol = sum(len(p) + 1 for p in head[:4]) + 1
    if probe not in PROBES:
        if _PROBE.fullmatch(probe):
            out.add(n, pcol, f"unknown probe {probe!r}", probe, "a probe of docs/capture.md")
        else:
            out.add(n, 1, "not a capture record", text, _HEAD_SHAPE)
        return None
    fields: dict[str, Value] = {}
    ok = True
    col = pcol + len(probe)
    for part in parts[5:]:
        col += 1  # the separating space
        key, eq, val = part.partition("=")
        value = _value(val) if eq and val else None
        if value is None or not _KEY.fullmatch(key):
            out.add(n, col, "malformed field", part, "key=value (a decimal or 0x hex int, a word)")
            ok = False
        elif key in fields:
            out.add(n, col, f"key {key!r} repeated", part)
            ok = False
        else:
            rng = _RANGES.get(key)
            if rng is not None and not (isinstance(value, int) and rng[0] <= value <= rng[1]):
                out.add(n, col, f"{key} out of range", part, f"an integer in {rng[0]}..{rng[1]:#x}")
                ok = False
            else:
                fields[key] = value
        col += len(part)
    spec = PROBES[probe]
    if ok:
        missing = [k for k in spec.keys if k not in fields]
        if missing:
            reason = (
                "a return without ret="
                if "ret" in missing and probe.endswith(".return")
                else f"missing key(s) {', '.join(missing)}"
            )
            out.add(n, len(text) + 1, reason, probe, " ".join(f"{k}=" for k in spec.keys))
    # A record with a bad field is still returned (the problem is already reported) so that the
    # order and entry/return checks go on past it instead of reporting a cascade of follow-ups.
    return Record(n, int(head[0]), int(head[1]), int(head[2]), probe, fields, int(head[3]), text)


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
        head = text.split(" ")[:5]
        return len(head) == 5 and all(_UINT.fullmatch(p) for p in head[:4]) and head[4] in PROBES
    return False
