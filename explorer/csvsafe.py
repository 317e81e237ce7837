"""CSV cells that a spreadsheet will not run as formulas (OWASP "CSV Injection").

Trace notes, titles and settings come from uploaded files: a cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is read by Excel, LibreOffice and Google Sheets as a
formula (``=cmd|' /C calc'!A0``, ``@SUM(...)``, ``-2+3``). Every CSV the project writes (the app's
downloads, ``python -m explorer sweep --out x.csv``) passes its text cells through
:func:`escape_cell`, which prefixes such a cell with a single quote, as OWASP recommends; numbers
stay numbers (a negative count is not text a user typed).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: First characters that make a spreadsheet evaluate a cell.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: Any) -> Any:
    """``value``, with a leading ``'`` when it is text that starts like a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_rows(
    rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str], out: io.TextIOBase | Any
) -> None:
    """Write a header and ``rows`` as CSV to ``out``, every text cell escaped."""
    writer = csv.DictWriter(out, fieldnames=list(fieldnames))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: escape_cell(v) for k, v in row.items()})


def rows_to_csv(rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """The CSV text of ``rows`` (columns: ``fieldnames``, else the first row's keys)."""
    buf = io.StringIO()
    write_rows(rows, fieldnames if fieldnames is not None else list(rows[0]) if rows else [], buf)
    return buf.getvalue()


def escape_frame(df: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells are escaped (for ``to_csv``): every column
    that is not numeric, boolean or a date may hold text (pandas 3 calls text ``str``, pandas 2
    ``object``), and its cells go through :func:`escape_cell` (non-text cells pass unchanged)."""
    import pandas as pd

    out = df.copy()
    for name in out.columns:
        col = out[name]
        if not (
            pd.api.types.is_numeric_dtype(col)
            or pd.api.types.is_bool_dtype(col)
            or pd.api.types.is_datetime64_any_dtype(col)
        ):
            out[name] = col.astype(object).map(escape_cell)
    return out
