"""Tables of text we did not write: escaped against formula injection before they are shown.

User-provided text (titles, notes, error lines) is only ever shown with ``st.text``, ``st.code``
or in dataframes: never as Markdown or HTML. Tables that hold it go through :func:`safe_frame`:
``st.dataframe``'s toolbar offers "Download as CSV", which writes cells verbatim, so their text
cells are escaped against formula injection (explorer.csvsafe) before they are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from explorer.appsupport import problem_rows
from explorer.csvsafe import escape_frame
from explorer.model.errors import Problem


def safe_frame(data: Any, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``data`` (rows or a DataFrame) as a DataFrame whose text cells are escaped for CSV: the
    table's toolbar "Download as CSV" then cannot hand a spreadsheet a formula."""
    if isinstance(data, pd.DataFrame):
        frame = data
    else:
        frame = pd.DataFrame(data, columns=list(columns) if columns is not None else None)
    escaped: pd.DataFrame = escape_frame(frame)
    return escaped


def problems_table(problems: Sequence[Problem]) -> None:
    """Every problem of a bad trace as a table (line, column, reason, text, expected)."""
    st.dataframe(
        safe_frame(
            problem_rows(problems), columns=["line", "column", "reason", "text", "expected"]
        ),
        hide_index=True,
        width="stretch",
    )
