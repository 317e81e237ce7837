"""``explore --write-pinned`` and ``explore-grid --out`` are checked before any search runs
(issue 29): a missing directory, /proc or a device is exit 2 naming the path, never a traceback
after minutes of search."""

from pathlib import Path

import pandas as pd
import pytest

from explorer.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
TRACE = str(ROOT / "sample_traces" / "lost_race.jsonl")


@pytest.mark.parametrize(
    "argv",
    [
        ["explore", TRACE, "--write-pinned", "/nonexistent-dir/p.jsonl"],
        ["explore", TRACE, "--write-pinned", "/proc/p.jsonl"],
        ["explore-grid", TRACE, "--out", "/nonexistent-dir/g.parquet", "--workers", "1"],
        ["explore-grid", TRACE, "--out", "/dev/full", "--workers", "1"],
    ],
)
def test_a_bad_output_path_is_refused_before_the_search(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert argv[3] in err and "Traceback" not in err and "states" not in err


def test_explore_grid_writes_a_complete_parquet_file(tmp_path: Path) -> None:
    out = tmp_path / "grid.parquet"
    assert main(["explore-grid", TRACE, "--out", str(out), "--workers", "1"]) == 0
    assert len(pd.read_parquet(out)) == 1 and not list(tmp_path.glob(".*.tmp"))
