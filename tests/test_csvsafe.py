"""CSV cells that start like a formula are escaped (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from explorer.csvsafe import escape_cell, escape_frame, rows_to_csv


@pytest.mark.parametrize("text", ["=cmd|' /C calc'!A0", "@SUM(A1)", "-2+3", "+1", "\tx", "\rx"])
def test_formula_cells_are_quoted(text: str) -> None:
    assert escape_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["a note", "0x10", "", 5, -3, 1.5, None])
def test_other_cells_pass_unchanged(value: object) -> None:
    assert escape_cell(value) == value


def test_rows_to_csv_escapes_text_but_not_numbers() -> None:
    text = rows_to_csv([{"note": "=1+1", "count": -2}, {"note": "ok", "count": 3}])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"note": "'=1+1", "count": "-2"}
    assert rows[1] == {"note": "ok", "count": "3"}


def test_escape_frame_handles_every_text_dtype() -> None:
    df = pd.DataFrame({"note": ["=1", "fine", None], "n": [-1, 2, 3]})
    df["s"] = pd.Series(["@x", "y", "-z"], dtype="string")
    out = escape_frame(df)
    assert list(out["note"])[:2] == ["'=1", "fine"] and pd.isna(out["note"].iloc[2])
    assert list(out["s"]) == ["'@x", "y", "'-z"]
    assert list(out["n"]) == [-1, 2, 3]
    assert df["note"].iloc[0] == "=1"  # the input is not changed
