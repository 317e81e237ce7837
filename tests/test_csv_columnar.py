"""The CSV column reader (explorer/ingest/csvcolumns.py) against the batches and the full path.

Every valid CSV trace parses to equal events whichever path reads it, and every bad one gives
equal problems (line:col, reason, text): the column reader only decides what it can vouch for.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import explorer.ingest.parse as P
from explorer.bench import csv_trace
from explorer.ingest import csvcolumns
from explorer.ingest.shapes import SHAPES, write
from explorer.model.errors import TraceError


@contextmanager
def _paths(columnar: bool, fast: bool, rows: int = 4096) -> Iterator[None]:
    saved = P.COLUMNAR, P.FAST_PATH, P.COLUMN_ROWS
    P.COLUMNAR, P.FAST_PATH, P.COLUMN_ROWS = columnar, fast, rows
    try:
        yield
    finally:
        P.COLUMNAR, P.FAST_PATH, P.COLUMN_ROWS = saved


def _outcome(data: bytes, name: str) -> tuple[str, object]:
    try:
        return "ok", P.parse_trace(data, name).events
    except TraceError as exc:
        return "error", tuple(exc.problems)


def _all_paths(data: bytes, name: str = "t.csv") -> tuple[str, object]:
    """The outcome by the column reader (large and small parts), by the batches alone and by
    the full path alone; asserted equal."""
    outs = []
    for columnar, fast, rows in (
        (True, True, 4096),
        (True, True, 7),
        (False, True, 0),
        (False, False, 0),
    ):
        with _paths(columnar, fast, rows or 4096):
            outs.append(_outcome(data, name))
    assert outs[0] == outs[1] == outs[2] == outs[3]
    return outs[0]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("seed", [1, 2])
def test_shapes_as_csv_parse_alike(shape: str, seed: int) -> None:
    data, _ = csv_trace(write(shape, 3000, seed))
    kind, events = _all_paths(data)
    assert kind == "ok"
    assert len(events) >= 3000  # type: ignore[arg-type]


def _rows(rng: random.Random, n: int) -> list[str]:
    rows = ["op,td,vcpu,gfn,pfn,level,t,note"]
    rows += ["td_create,0,,,,,,", "vcpu_create,0,0,,,,,", "vcpu_create,0,1,,,,,"]
    t = 0
    for i in range(n):
        t += rng.random() < 0.3
        g = rng.randrange(1 << 20)
        gfn = hex(g) if rng.random() < 0.5 else str(g)
        pfn = str(rng.randrange(1 << 30)) if rng.random() < 0.1 else ""
        level = "4k" if rng.random() < 0.2 else ""
        tt = str(t) if rng.random() < 0.9 else ""
        note = "n" if rng.random() < 0.05 else ""
        op = "fault" if rng.random() < 0.9 else "zap"
        if op == "zap":
            rows.append(f"zap,0,,{gfn},,,{tt},{note}")
        else:
            rows.append(f"fault,,{i % 2},{gfn},{pfn},{level},{tt},{note}")
    return rows


def test_edge_cases_parse_alike() -> None:
    """Quoted cells, blank lines, comments, spaces around cells, CRLF, a BOM, gzip, a missing
    final newline, rows narrower than the header: every path agrees."""
    rng = random.Random(5)
    rows = _rows(rng, 6000)
    variants: dict[str, bytes] = {
        "plain": ("\n".join(rows) + "\n").encode(),
        "crlf": ("\r\n".join(rows) + "\r\n").encode(),
        "bom": b"\xef\xbb\xbf" + ("\n".join(rows)).encode(),
    }
    quoted = list(rows)
    quoted[2000] = 'fault,,0,"0x10",,,,"a ""quoted"", note"'
    variants["quoted"] = ("\n".join(quoted) + "\n").encode()
    blanky = list(rows)
    for i in range(100, 6000, 997):
        blanky.insert(i, rng.choice(["", "  ", "# a comment", "\t"]))
    variants["blank"] = ("\n".join(blanky) + "\n").encode()
    spaced = [r.replace(",0x", ", 0x") if i % 5 == 0 else r for i, r in enumerate(rows)]
    variants["spaced"] = ("\n".join(spaced) + "\n").encode()
    narrow = list(rows)
    narrow[3000] = "zap,0,,16"
    variants["narrow"] = ("\n".join(narrow) + "\n").encode()
    for name, data in variants.items():
        kind, _ = _all_paths(data)
        assert kind == "ok", name
        kind, _ = _all_paths(gzip.compress(data), "t.csv.gz")
        assert kind == "ok", name


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ("fault,,0,0xg,,,,", 4000),
        ("fault,,0,1_0,,,,", 10),
        ("fault,,9,16,,,-1,", 5000),
        ("fault,,0,16,,2m,,", 2500),
        ("fault,,0,16,,,,,extra", 4095),
        ('fault,,0,"16,,,,', 3000),
        ("hop,,0,16,,,,", 5500),
        ("fault,,0,0o17,,,,", 100),
        ("fault,,0,017,,,,", 100),
        ("fault,,0,16,,,1,", 5999),  # t goes back
    ],
)
def test_bad_rows_report_alike(row: str, where: int) -> None:
    """A bad row inside thousands of good ones: the same problems (line:col, reason, text) by
    every path; a leading-zero decimal (valid) parses alike."""
    rows = _rows(random.Random(9), 6000)
    rows[where] = row
    kind, out = _all_paths(("\n".join(rows) + "\n").encode())
    if row != "fault,,0,017,,,,":
        assert kind == "error", row
        assert any(p.line == where + 1 for p in out), out  # type: ignore[attr-defined]
    else:
        assert kind == "ok"


def test_valid_blocks_take_the_column_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid trace of several blocks is read by the column reader, not by the batches."""
    data, _ = csv_trace(write("churn", 20_000, 1))
    taken: list[int] = []
    real = csvcolumns.read_rows

    def counting(*args: object, **kw: object) -> object:
        out = real(*args, **kw)  # type: ignore[arg-type]
        if out is not None:
            taken.append(len(out))
        return out

    monkeypatch.setattr(P, "read_rows", counting)
    monkeypatch.setattr(P, "_csv_run", lambda *a: pytest.fail("a batch was read"))
    events = P.parse_trace(data, "t.csv").events
    assert sum(taken) == len(events)
