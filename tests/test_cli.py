"""The command line: exit statuses, the --json contract, generation, determinism across processes."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
SUMMARY_KEYS = [
    "ok",
    "events",
    "steps",
    "settings",
    "counters",
    "regions",
    "pamt_cache",
    "pages",
    "diagnostics",
]
COUNTER_KEYS = [
    "faults",
    "fault_retries",
    "faults_failed",
    "pamt_get",
    "pamt_get_fast",
    "pamt_get_slow",
    "pamt_lost_race",
    "pamt_add",
    "pamt_add_failed",
    "pamt_put",
    "pamt_remove",
    "pamt_remove_failed",
]
PAGE_KEYS = [
    "total",
    "free",
    "pamt_pair",
    "pamt_cache",
    "kvm_cache",
    "sept",
    "control",
    "guest",
    "leaked",
]


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["replay", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_json_summary_has_exactly_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, s = _json(capsys, str(SAMPLES / "pamt_remove_failure.jsonl"))
    assert code == 0
    assert list(s) == SUMMARY_KEYS
    assert list(s["counters"]) == COUNTER_KEYS
    assert list(s["pages"]) == PAGE_KEYS
    assert sum(v for k, v in s["pages"].items() if k != "total") == s["pages"]["total"]
    assert s["regions"]["64"] == {"refcount": 2, "pair": s["regions"]["64"]["pair"]}
    assert s["pages"]["leaked"] == 2
    assert s["counters"]["pamt_remove_failed"] == 1 and s["counters"]["pamt_remove"] == 1
    assert [d["code"] for d in s["diagnostics"]] == ["WARN_PAMT_REMOVE"]
    assert s["diagnostics"][0]["kind"] == "warning" and s["diagnostics"][0]["line"] == 8


def test_set_overrides_the_header_and_livelock_is_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, s = _json(
        capsys,
        str(SAMPLES / "cold_region.jsonl"),
        "--set",
        "dpamt_gets_per_fault=0",
        "--set",
        "max_retries=3",
    )
    assert code == 0  # a livelock is a diagnostic, not a violation
    assert s["settings"]["dpamt_gets_per_fault"] == 0
    assert [d["kind"] for d in s["diagnostics"]] == ["livelock"]
    assert s["counters"]["fault_retries"] == 4 and s["counters"]["faults_failed"] == 1


def test_violations_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, s = _json(capsys, str(SAMPLES / "cold_region.jsonl"), "--set", "mode=sleeping-under-lock")
    assert code == 1 and not s["ok"]
    assert {d["code"] for d in s["diagnostics"]} == {"INV6_SLEEP_UNDER_LOCK"}


def test_impossible_event_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"op": "td_create", "td": 0}\n{"op": "zap", "td": 0, "gfn": "0x10"}\n')
    assert main(["replay", str(trace)]) == 2
    assert "t.jsonl:2:1: zap of gfn 0x10, which TD 0 has not mapped" in capsys.readouterr().err
    assert main(["check", str(trace)]) == 2
    assert "t.jsonl:2:1: zap of gfn 0x10" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay"], "usage error"),
        (["frobnicate"], "usage error"),
        (["replay", "no/such/file.jsonl"], "cannot read the file"),
        (
            ["replay", str(SAMPLES / "cold_region.jsonl"), "--set", "mode=v9"],
            "not one of the choices",
        ),
        (["replay", str(SAMPLES / "cold_region.jsonl"), "--set", "nonsense"], "expected key=value"),
        (["generate", "boot", "--tds", "0"], "at least one TD"),
        (["sweep", str(SAMPLES / "cold_region.jsonl"), "--vary", "x=1"], "unknown setting"),
    ],
)
def test_bad_usage_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_check_reports_every_problem_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(
        '{"op": "td_create", "td": 0}\n{"op": "fault", "vcpu": 0, "gfn": 1.5}\n{"op": "hop"}\n'
    )
    assert main(["check", str(trace)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("bad.jsonl:2:35: gfn must be an integer, got a float")
    assert err[1].startswith("bad.jsonl:3:8: unknown op 'hop'")


def test_generate_is_deterministic_and_replayable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl"
    argv = ["generate", "churn", "--tds", "2", "--vcpus", "4", "--faults", "500", "--seed", "3"]
    assert main([*argv, "-o", str(a)]) == 0
    assert main([*argv, "-o", str(b)]) == 0
    assert gzip.decompress(a.read_bytes()) == b.read_bytes()
    assert main(["check", str(a)]) == 0
    assert "OK: a.jsonl.gz:" in capsys.readouterr().out


def test_sweep_writes_a_table_and_a_plot(tmp_path: Path) -> None:
    out, plot = tmp_path / "s.csv", tmp_path / "s.html"
    code = main(
        [
            "sweep",
            str(SAMPLES / "cold_5level.jsonl"),
            "--vary",
            "dpamt_gets_per_fault=0..5",
            "--vary",
            "mode=v6,v6-locked",
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--workers",
            "2",
        ]
    )
    assert code == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 12 and rows[0].startswith("setting.mode,")
    assert "plotly" in plot.read_text()[:5000].lower()


def test_replay_summary_is_byte_identical_across_processes() -> None:
    sample = str(SAMPLES / "workload_two_tds.jsonl")
    cmd = [
        sys.executable,
        "-m",
        "explorer",
        "replay",
        sample,
        "--json",
        "--set",
        "schedule=random",
        "--set",
        "allocator=random",
        "--set",
        "seed=11",
    ]
    runs = [subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) > 1000


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1_0", "is not an integer (decimal digits or 0x and hex digits, no underscores"),
        ("0x1_0", "is not an integer"),
        ("1 0", "is not an integer"),
        (
            "9" * 5000,
            "a 5000-digit number is out of range (over the limit of 24 digits, MAX_INT_DIGITS)",
        ),
        (
            "0x" + "f" * 5000,
            "a 5000-digit number is out of range (over the limit of 24 digits, MAX_INT_DIGITS)",
        ),
    ],
)
def test_set_integer_text_is_refused_clearly(
    value: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: --set takes decimal or 0x hex integers only (no underscores or spaces, at most
    MAX_INT_DIGITS digits), exit 2 and one line saying why; never int()'s own limit message."""
    trace = Path(__file__).resolve().parent.parent / "sample_traces" / "workload_two_tds.jsonl"
    assert main(["replay", str(trace), "--set", f"seed={value}"]) == 2
    err = capsys.readouterr().err
    assert reason in err
    assert "Exceeds the limit" not in err
    assert len(err.strip().splitlines()) == 1


def test_set_integer_text_accepts_decimal_and_hex() -> None:
    from explorer.model.settings import int_text

    assert int_text("10") == 10
    assert int_text("0x10") == 16
    assert int_text("0X0a") == 10
    assert int_text("0" * 30 + "7") == 7  # leading zeros are not significant digits


@pytest.mark.parametrize("name", ["td_lifecycle", "v5_hint_aba", "cache_zero", "pamt_add_failure"])
def test_replay_streams_the_same_lines_as_the_steps_recorded(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay` writes each step's line as it is taken (a batch's steps are no longer held to
    its end: a batch of millions of retries held them all): the same lines as the steps a
    recording machine keeps, the diagnostics a batch's end adds to its last step included."""
    from explorer.cli.common import read_trace, resolve_settings
    from explorer.model.events import reserved_pfns
    from explorer.model.machine import Machine
    from explorer.replay.render import format_steps

    path = str(SAMPLES / f"{name}.jsonl")
    main(["replay", path])
    got = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    trace = read_trace(path)
    m = Machine(resolve_settings(trace, []), record=True, check=True)
    m.mem.pin(reserved_pfns(trace.events))
    m.run(trace.events)
    assert got == list(format_steps(m.steps))
