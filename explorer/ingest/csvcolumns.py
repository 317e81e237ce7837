"""CSV rows read a column at a time: the common case of a CSV trace at about the csv module's cost.

Why: the parser's batches of CSV rows (:func:`explorer.ingest.parse._csv_run`, 256 rows each)
paid a fixed cost per batch and grouped rows by op with a Python loop per row, which made a CSV
trace's parse 7-8x the ``csv`` module's reader over the same bytes (issue 28). Here a whole
block of rows (one decoded chunk of the file, tens of thousands of rows) is split into columns
at once and every per-row step is a C-level loop: the cells by one ``str.split``, the ops
grouped by ``itemgetter`` and ``compress`` per distinct op (a handful), the given cells by
``compress`` per column, the values checked and converted per column by the schema's column
interpreter (:func:`explorer.ingest.schema.build_columns`).

All or nothing, like every bulk path of the parser: :func:`read_rows` returns the events only
when every row is exactly what the full path (the csv module, one row at a time) accepts, and
None otherwise, when the parser reads the block by its batches and, for the rows they refuse,
its full path, which reports every problem at its line:col. So this module never decides what
an error is or how it is worded; bad input reads exactly as it did before it existed. pyarrow's
CSV reader was measured against this and lost: converting its string columns back to Python
objects costs as much as the split, and its quoting rules are not the csv module's.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import compress, repeat

from explorer.ingest import limits as L
from explorer.ingest.schema import EVENTS, build_columns, in_order, pick
from explorer.model.events import Event

#: What ``str.strip()`` strips in ASCII (the full path's test of an empty cell), newline aside.
_ASCII_SPACE = "".join(ch for ch in map(chr, range(128)) if ch.isspace() and ch != "\n")


def split_columns(text: str, width: int) -> tuple[list[list[str]], list[list[str]]]:
    """The columns of ``text`` (rows of exactly ``width`` unquoted cells, one a line, checked by
    the caller), and each column's cells as the full path tests them for being given (stripped;
    the columns themselves when the text has no whitespace, the common case: no copy)."""
    cells = text.replace("\n", ",").split(",")
    cols = [cells[j::width] for j in range(width)]
    if text.isascii() and not any(map(text.__contains__, _ASCII_SPACE)):
        return cols, cols  # no whitespace: a cell is given if it is not empty
    return cols, [list(map(str.strip, col)) for col in cols]


def read_rows(
    raws: list[str], lines: Sequence[int], header: list[str], room: int
) -> list[Event] | None:
    """The events of the CSV rows ``raws`` (at ``lines``, after the header row ``header``), in
    file order, or None if the bulk reading cannot vouch for every row (a quote, a row not as
    wide as the header, a carriage return inside a row, a value the schema refuses, more than
    ``room`` rows...). Times are not checked for order here: the caller checks them over the
    whole trace."""
    width = len(header)
    k = len(raws)
    if not k or width < 2 or k > room or "op" not in header:
        return None
    text = "\n".join(raws)
    if "\r" in text:  # CRLF lines: the full path strips one "\r" at the end of each
        raws = list(map(str.rstrip, raws, repeat("\r")))
        text = "\n".join(raws)
    if (
        '"' in text
        or "\r" in text
        or text.count(",") != (width - 1) * k
        or max(map(len, raws)) > L.MAX_LINE_BYTES // 4
        or set(map(str.count, raws, repeat(","))) != {width - 1}
    ):
        return None
    cols, flags = split_columns(text, width)
    op_at = header.index("op")
    others = [j for j in range(width) if j != op_at]
    ops = cols[op_at]
    kinds = set(ops)
    if not kinds.issubset(EVENTS):  # an unknown op: the batches and the full path report it
        return None
    work: list[tuple[str, list[int]]] = []
    for op in kinds:
        if len(kinds) == 1:
            work.append((op, list(range(k))))
        else:
            work.append((op, list(compress(range(k), map(op.__eq__, ops)))))
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
                work.append((op, list(compress(idx, map(operator.not_, f)))))
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
                return None
            parts.append((idx, evs))
    return in_order(parts)
