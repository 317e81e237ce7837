"""Hostile input, round 9 (issue 29): inputs of the listed classes that no earlier round tried.

Each test is one class an attacker found a hole in: an output that is the input (the trace was
replaced by CSV rows or a chart), names and paths over NAME_MAX/PATH_MAX (the work ran, then the
write failed), control characters in a path (printed raw into the message), non-ASCII digits
and non-finite numbers in flags (``--workers ٣`` ran three workers, ``--max-seconds inf`` meant
no limit), ``generate`` sizes without a bound (10**22 faults wrote forever), and standard output
closed or full (tracebacks). All in-process except the closed-descriptor cases, which need a
process started without the descriptor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_traces" / "fast_path.jsonl"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "DPAMT_PURE": "1"}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    t = tmp_path / "t.jsonl"
    shutil.copyfile(SAMPLE, t)
    return t


# ------------------------------------------------------------------ output == input
@pytest.mark.parametrize(
    "argv",
    [
        ["explore-grid", "{t}", "--workers", "1", "--out", "{o}"],
        ["sweep", "{t}", "--vary", "max_retries=1..2", "--workers", "1", "--plot", "{o}"],
        ["sweep", "{t}", "--vary", "max_retries=1..2", "--workers", "1", "--out", "{o}"],
        ["explore", "{t}", "--write-pinned", "{o}"],
        ["import", "{t}", "-o", "{o}"],
    ],
)
@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused(
    argv: list[str], link: str, trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = trace
    if link == "symlink":
        out = trace.with_name("link.csv")
        out.symlink_to(trace.name)
    elif link == "hardlink":
        out = trace.with_name("hard.csv")
        os.link(trace, out)
    before = trace.read_bytes()
    code, err = _run([a.format(t=trace, o=out) for a in argv], capsys)
    assert code == 2
    assert "is the input" in err and str(trace) in err
    assert trace.read_bytes() == before


def test_out_and_plot_through_a_link_are_one_file(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.csv"
    out.write_text("")
    (tmp_path / "o.html").symlink_to(out)
    argv = ["sweep", str(trace), "--vary", "max_retries=1..2", "--workers", "1"]
    code, err = _run([*argv, "--out", str(out), "--plot", str(tmp_path / "o.html")], capsys)
    assert code == 2 and "--out and --plot are the same file" in err


# ------------------------------------------------------------------ name lengths, odd names
def test_a_name_over_name_max_is_refused_before_the_work(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / ("a" * 300 + ".csv")
    code, err = _run(["explore-grid", str(trace), "--workers", "1", "--out", str(out)], capsys)
    assert code == 2 and "NAME_MAX" in err and "usage error" in err
    long_dir = str(tmp_path) + "/a" * 2100
    code, err = _run(["generate", "boot", "-o", long_dir + "/x.jsonl"], capsys)
    assert code == 2 and "PATH_MAX" in err


def test_a_name_near_name_max_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 249 + ".jsonl" = 255 bytes: the file is allowed, so its temporary must fit too
    out = tmp_path / ("b" * 249 + ".jsonl")
    code, _ = _run(["generate", "boot", "--faults", "10", "-o", str(out)], capsys)
    assert code == 0 and out.read_text().startswith("{")
    assert os.listdir(tmp_path) == [out.name]


def test_control_characters_in_a_path_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x\ny\x1b[2J.jsonl"
    code, err = _run(["check", str(bad)], capsys)
    assert code == 2 and "\\n" in err and "\x1b" not in err and err.count("\n") == 1
    code, err = _run(["generate", "boot", "-o", str(tmp_path / "d\nx" / "t.jsonl")], capsys)
    assert code == 2 and "\\n" in err and err.count("\n") == 1
    code, err = _run(["check", ""], capsys)
    assert code == 2 and err.startswith("'':")


# ------------------------------------------------------------------ numbers in flags
@pytest.mark.parametrize("value", ["٣", "３", "5_0", " 5", "1e3", "0x10", ""])
@pytest.mark.parametrize(
    "argv",
    [
        ["explore", str(SAMPLE), "--max-states"],
        ["sweep", str(SAMPLE), "--vary", "max_retries=1..2", "--workers"],
        ["explore-grid", str(SAMPLE), "--workers"],
        ["generate", "boot", "--faults"],
        ["generate", "boot", "--seed"],
    ],
)
def test_integer_flags_take_ascii_digits_only(
    argv: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run([*argv, value], capsys)
    assert code == 2 and "is not an integer" in err


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e309", "٣", "Infinity"])
def test_max_seconds_must_be_finite(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["explore", str(SAMPLE), f"--max-seconds={value}"], capsys)
    assert code == 2 and "--max-seconds" in err and "finite" in err


def test_well_formed_numbers_still_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", str(SAMPLE), "--max-seconds", "2.5", "--max-states", "+50"]) == 0
    capsys.readouterr()


# ------------------------------------------------------------------ generate sizes
@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--faults", str(10**22), "MAX_EVENTS"),
        ("--add-pages", str(10**22), "MAX_EVENTS"),
        ("--vcpus", str(10**22), "MAX_ID"),
        ("--tds", str(10**7), "MAX_ID"),
        ("--add-pages", "-1", "cannot be negative"),
        ("--host-memory-mib", "-1", "host_memory_mib"),
        ("--host-memory-mib", "3", "host_memory_mib"),
    ],
)
def test_generate_refuses_what_check_would_refuse(
    flag: str, value: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g.jsonl"
    # in a child with a time limit: without the bound the command writes for ever, and the
    # test must fail then, not hang
    p = subprocess.run(
        [sys.executable, "-m", "explorer", "generate", "churn", flag, value, "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    assert p.returncode == 2 and says in p.stderr
    assert not out.exists()


# ------------------------------------------------------------------ standard streams
@pytest.mark.parametrize(
    "args",
    [
        ["replay", str(SAMPLE)],
        ["generate", "churn", "--faults", "2000"],
        ["explore", str(SAMPLE), "--json"],
    ],
)
def test_stdout_closed_or_full_is_a_message(args: list[str]) -> None:
    def closed_stdout() -> None:
        os.close(1)

    r = subprocess.run(
        [sys.executable, "-m", "explorer", *args],
        env=ENV,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=closed_stdout,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "standard output is closed" in r.stderr
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [sys.executable, "-m", "explorer", *args],
            env=ENV,
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert "writing standard output: No space left on device" in r.stderr


def test_stdin_closed_reads_as_empty() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "explorer", "check", "-"],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(0),
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "<stdin>: the trace is empty" in r.stderr
