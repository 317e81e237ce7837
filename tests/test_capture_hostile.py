"""Hostile input to ``import`` and ``conform`` (issue 29): device files, standard input and output
paths are refused with exit 2 and a message naming the path, never read without end."""

from pathlib import Path

import pytest

import explorer.ingest.capture as capture_module
from explorer.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_traces" / "captures" / "conforming.txt"


@pytest.mark.parametrize("command", ["import", "conform"])
def test_a_device_file_is_refused_at_the_limit(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(capture_module, "MAX_CAPTURE_BYTES", 4096)
    assert main([command, "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert "zero: the character device has more than 4096 bytes" in err
    assert "Traceback" not in err


def test_standard_input_is_refused_at_the_limit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Endless standard input: refused once past the limit (the old reader then read the rest
    of stdin to count it, which never ends on /dev/zero)."""
    monkeypatch.setattr(capture_module, "MAX_CAPTURE_BYTES", 4096)

    class Endless:
        def read(self, n: int = -1) -> bytes:
            assert n > 0, "an unbounded read"
            return b"\0" * n

        def fileno(self) -> int:
            raise OSError("not a real file")

    class Stdin:
        buffer = Endless()

    monkeypatch.setattr("sys.stdin", Stdin())
    assert main(["conform", "-"]) == 2
    assert "more than 4096 bytes" in capsys.readouterr().err


def test_a_regular_file_over_the_limit_is_named_by_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 10_000)
    monkeypatch.setattr(capture_module, "MAX_CAPTURE_BYTES", 4096)
    assert main(["conform", str(big)]) == 2
    assert "10,000 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["/nonexistent-dir/x.jsonl", "/proc/x.jsonl", "/dev/full"])
def test_import_output_is_checked_before_the_work(
    out: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", str(SAMPLE), "-o", out]) == 2
    err = capsys.readouterr().err
    assert out in err and "Traceback" not in err


def test_import_writes_its_trace_whole(tmp_path: Path) -> None:
    out = tmp_path / "imported.jsonl"
    assert main(["import", str(SAMPLE), "-o", str(out)]) == 0
    assert out.read_text().startswith("{") and not list(tmp_path.glob(".*.tmp"))
