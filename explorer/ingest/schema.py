"""The trace format's schema as data, and the column interpreter that reads it.

One table says what an event line may hold (docs/trace-format.md is its prose): :data:`FIELDS`
gives each field's type and range (integers with their bounds, choices, text, a schedule's
order), :data:`EVENTS` each op's required and optional fields. The full path of the parser
(:mod:`explorer.ingest.parse`, one line at a time, every problem at its line:col) and the bulk
path below both read these tables; nothing is generated as source.

The bulk path (:func:`build_columns`) checks a whole run of lines at once, column by column,
with C-level loops (``map``, ``set``, ``min``/``max``, a regular expression over a joined
column) and builds the events through their slots. It is all or nothing: it returns None as soon
as any value is not exactly what the full path accepts, and the parser then hands those lines to
the full path, which reports the exact problem. So the bulk path never decides what is an
error; it only makes the common case (every line valid) cost about what decoding it costs.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from itertools import chain, compress, islice, repeat
from operator import itemgetter
from typing import Any

from explorer.ingest import limits as L
from explorer.model.constants import INJECTIONS
from explorer.model.events import EVENT_TYPES, Event, slot_setters

LEVELS = ("4k", "2m")
#: Fields every event may carry (docs/trace-format.md, "Common fields").
COMMON_FIELDS = ("t", "note")


@dataclass(frozen=True)
class Field:
    """One field's type: ``kind`` is "int" (``lo``..``hi``), "choice" (one of ``choices``),
    "text" (a string of at most MAX_TEXT characters), "order" (a schedule's CPU names) or
    "pfns" (a list of at most ``most`` distinct integers in ``lo``..``hi``: pages a kernel
    capture pins)."""

    kind: str
    lo: int = 0
    hi: int = 0
    choices: tuple[str, ...] = ()
    most: int = 0


#: The most S-EPT table pages one fault links: the non-root levels of a 5-level EPT (PML4,
#: PDPT, PD, PT), each a ``tdx_sept_map_nonleaf_spte`` with its own page.
MAX_TABLE_PINS = 4
#: The most control pages one ``td_create`` or ``vcpu_create`` takes: the TDR (or TDVPR) and up
#: to 64 TDCS (or TDCX) pages (the ``tdcs_pages``/``tdcx_pages`` settings' limit).
MAX_CONTROL_PINS = 65


#: Every field an event line may have, with its type and range.
FIELDS: dict[str, Field] = {
    "td": Field("int", 0, L.MAX_ID),
    "vcpu": Field("int", 0, L.MAX_ID),
    "gfn": Field("int", 0, L.MAX_GFN),
    "pfn": Field("int", 0, L.MAX_PFN),
    "count": Field("int", 1, L.MAX_INJECT_COUNT),
    "t": Field("int", 0, L.MAX_T),
    "level": Field("choice", choices=LEVELS),
    "what": Field("choice", choices=INJECTIONS),
    "note": Field("text"),
    "text": Field("text"),
    "order": Field("order"),
    "tables": Field("pfns", 0, L.MAX_PFN, most=MAX_TABLE_PINS),
    "control": Field("pfns", 0, L.MAX_PFN, most=MAX_CONTROL_PINS),
}

#: op -> (required fields, optional fields), besides the common ``t`` and ``note``.
EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "td_create": (("td",), ("control",)),
    "vcpu_create": (("td", "vcpu"), ("control",)),
    "td_finalize": (("td",), ()),
    "fault": (("vcpu", "gfn"), ("pfn", "level", "tables")),
    "zap": (("td", "gfn"), ()),
    "vcpu_free": (("vcpu",), ()),
    "td_destroy": (("td",), ()),
    "inject": (("what",), ("count",)),
    "note": (("text",), ()),
    "schedule": (("order",), ()),
}

#: Every column a CSV trace may have.
CSV_COLUMNS = ("op", *sorted({f for r, o in EVENTS.values() for f in (*r, *o)}), *COMMON_FIELDS)
#: op -> every key its line may have.
ALLOWED = {op: frozenset({"op", *req, *opt, *COMMON_FIELDS}) for op, (req, opt) in EVENTS.items()}


def model_fields(cls: type[Event]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) fields of an event class, ``line``, ``t`` and ``note`` left out:
    what :data:`EVENTS` must say of its op (tests/test_trace_format.py checks they agree)."""
    req, opt = [], []
    for f in fields(cls):
        if f.name in ("line", *COMMON_FIELDS):
            continue
        if f.default is MISSING and f.default_factory is MISSING:
            req.append(f.name)
        else:
            opt.append(f.name)
    return tuple(req), tuple(opt)


_SETTERS = {op: slot_setters(cls) for op, cls in EVENT_TYPES.items()}
_DEFAULTS = {op: {f.name: f.default for f in fields(cls)} for op, cls in EVENT_TYPES.items()}

# ------------------------------------------------------------------ the column interpreter
_INT = {int}
_STR = {str}
_INT_STR = {int, str}
_BLANKS = " \t"
#: Prefixes ``int(cell, 0)`` takes that the format does not (octal and binary).
_OTHER_BASES = ("\n0o", "\n0O", "\n0b", "\n0B")


def _text_ints(col: Sequence[str], *, decimal: bool) -> list[int] | None:
    """Integer text, every cell "0x" and hex digits or (``decimal``) ASCII decimal digits,
    converted; None if any cell is not (or is longer than MAX_INT_DIGITS characters: the full
    path counts its significant digits). Checked with string methods over the joined column
    (a regular expression costs more than the conversion); a column of both kinds is split by
    prefix and each part checked so."""
    if not col:
        return None
    joined = "\n".join(col)
    if (
        joined.count("\n") != len(col) - 1  # a cell holds a newline (a JSON string may)
        or "\n\n" in joined
        or joined[:1] in ("\n", "")
        or joined[-1] == "\n"  # an empty cell
        or not joined.isascii()
        or max(map(len, col)) > L.MAX_INT_DIGITS
    ):
        return None
    flat = joined.replace("\n", "")
    if decimal and flat.isdigit():  # ASCII: only 0-9 are digits (no sign, space or "_")
        return list(map(int, col))
    lines = "\n" + joined
    if (
        decimal
        and flat.isalnum()  # no "_", sign or space, which int() would take
        and not any(map(lines.__contains__, _OTHER_BASES))
    ):
        # int(cell, 0) takes exactly "0x" + hex digits and decimal digits without a leading 0
        # here (letters outside a hex cell, and a decimal 0-prefix, are refused): one pass
        try:
            return list(map(int, col, repeat(0)))
        except ValueError:
            pass  # a decimal cell with leading zeros (valid) or a bad cell: the split below
    hexes = lines.count("\n0x") + lines.count("\n0X")
    if hexes == len(col):
        if not flat.isalnum():  # no "_", sign or space, which int() would take
            return None
        try:
            return list(map(int, col, repeat(16)))  # int() refuses the letters past f
        except ValueError:
            return None
    if not decimal or not hexes:
        return None
    is_hex = list(map(str.startswith, col, repeat(("0x", "0X"))))
    hex_cells = list(compress(col, is_hex))
    dec_cells = list(compress(col, map(operator.not_, is_hex)))
    as_hex = _text_ints(hex_cells, decimal=False)
    as_dec = _text_ints(dec_cells, decimal=True)
    if as_hex is None or as_dec is None:
        return None
    conv = dict(zip(hex_cells, as_hex, strict=True))
    conv.update(zip(dec_cells, as_dec, strict=True))
    return list(map(conv.__getitem__, col))


def _ints(col: Sequence[Any], f: Field, csv: bool) -> Sequence[int] | None:
    """``col`` as integers in ``f``'s range by the format's rule for integers (JSON: a number
    or "0x..."; CSV: decimal or "0x..." cells, blanks around them ignored), or None."""
    signed = False  # text has no sign: its integers are >= 0
    if csv:
        joined = "\n".join(col)
        if " " in joined or "\t" in joined:
            col = list(map(str.strip, col, repeat(_BLANKS)))
        ints: Sequence[int] | None = _text_ints(col, decimal=True)
    else:
        types = set(map(type, col))
        if types == _INT:
            ints, signed = col, True
        elif types == _STR:
            ints = _text_ints(col, decimal=False)
        elif types == _INT_STR:
            strs = [v for v in col if type(v) is str]
            conv = _text_ints(strs, decimal=False)
            if conv is None:
                return None
            # ints are not keys: get(v, v) converts the strings and keeps the ints
            table: dict[Any, int] = dict(zip(strs, conv, strict=True))
            ints, signed = list(map(table.get, col, col)), True
        else:
            return None
    if ints is None or max(ints) > f.hi or ((signed or f.lo > 0) and min(ints) < f.lo):
        return None
    return ints


def check_column(name: str, col: Sequence[Any], *, csv: bool) -> Sequence[Any] | None:
    """The values of field ``name`` (every one present), checked and converted as the full path
    would accept them, or None if any is not (the full path then reports it)."""
    f = FIELDS[name]
    if f.kind == "int":
        return _ints(col, f, csv)
    if f.kind == "choice":
        try:
            if not set(col).issubset(f.choices) or "2m" in col:  # 2m: alignment, line by line
                return None
        except TypeError:  # an unhashable value (a list or an object)
            return None
        return col
    if f.kind == "text":
        if set(map(type, col)) != _STR or max(map(len, col)) > L.MAX_TEXT:
            return None
        return col
    if f.kind == "pfns":
        return _pin_lists(col, f, csv)
    return None  # a schedule's order: rare, checked line by line


def _pin_lists(col: Sequence[Any], f: Field, csv: bool) -> list[tuple[int, ...]] | None:
    """Lists of pfns (JSON arrays; CSV cells of pfns separated by spaces) as tuples, each at
    most ``f.most`` long with its pfns in range and distinct; None if any is not (or empty, in
    CSV, where an empty cell is no field). An imported capture pins a fault's table pages on
    most of its faults, so this is the common case of such a trace, checked column-wise."""
    lists: Sequence[Any] = list(map(str.split, col)) if csv else col
    if not csv and set(map(type, lists)) != {list}:
        return None
    lens = list(map(len, lists))
    if max(lens) > f.most:
        return None
    flat = list(chain.from_iterable(lists))
    if not flat:
        return list(map(tuple, lists))
    ints = _ints(flat, f, csv)
    if ints is None:
        return None
    it = iter(ints)
    out = [tuple(islice(it, n)) for n in lens]
    if list(map(len, map(set, out))) != lens:  # a pfn named twice in one list
        return None
    return out


def non_decreasing(ts: Sequence[int], last: int | None) -> bool:
    """True if the times ``ts`` never go back, from ``last`` on."""
    if not ts:
        return True
    if last is not None and ts[0] < last:
        return False
    return all(map(int.__le__, ts[:-1], ts[1:])) if len(ts) > 1 else True


def build_columns(
    op: Any,
    columns: dict[str, Sequence[Any]],
    lines: Sequence[int],
    *,
    csv: bool,
) -> list[Event] | None:
    """The events of ``len(lines)`` lines of one op with the same fields: ``columns`` maps each
    field present (``op`` left out) to its values, one per line. Checked by :data:`EVENTS` and
    :data:`FIELDS` as a whole; None if anything is not exactly valid. ``t`` is checked for
    range here and for order by the caller (it spans ops)."""
    if type(op) is not str or op not in EVENTS:
        return None
    req, _ = EVENTS[op]
    keys = columns.keys()
    if not ALLOWED[op].issuperset(keys) or not all(map(keys.__contains__, req)):
        return None
    values: dict[str, Sequence[Any]] = {}
    for name, col in columns.items():
        good = check_column(name, col, csv=csv)
        if good is None:
            return None
        values[name] = good
    k = len(lines)
    new: list[Event] = list(map(object.__new__, repeat(EVENT_TYPES[op], k)))
    defaults = _DEFAULTS[op]
    for name, setter in _SETTERS[op].items():
        col_values: Any = lines if name == "line" else values.get(name)
        if col_values is None:
            col_values = repeat(defaults[name], k)
        deque(map(setter, new, col_values), 0)
    return new


def pick(col: Sequence[Any], idx: Sequence[int]) -> list[Any]:
    """``[col[i] for i in idx]`` at C speed."""
    if len(idx) == 1:
        return [col[idx[0]]]
    got: tuple[Any, ...] = itemgetter(*idx)(col)
    return list(got)


def in_order(parts: list[tuple[list[int], list[Event]]]) -> list[Event]:
    """The events of several groups (each with the positions of its lines in the run) merged
    back into the run's order."""
    if len(parts) == 1:
        return parts[0][1]
    pos: list[int] = []
    evs: list[Event] = []
    for idx, part in parts:
        pos += idx
        evs += part
    order = sorted(range(len(pos)), key=pos.__getitem__)
    return pick(evs, order)
