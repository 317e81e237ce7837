"""``explore``'s budget: ``--max-seconds``, progress from the start, exit 3 with what was
covered, and no search process left behind however the CLI is stopped (issue 26)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_explore import ROOT, SAMPLES, run

LONG = str(SAMPLES / "fresh_td_3vcpu.jsonl")  # a search of tens of seconds


def _env() -> dict[str, str]:
    return dict(os.environ, DPAMT_PURE="1", PYTHONPATH=str(ROOT))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_the_time_budget_stops_with_what_was_covered() -> None:
    code, data, err = run(LONG, "--json", "--max-seconds", "0.5")
    assert code == 3 and data is not None and not data["complete"] and not data["ok"]
    assert "time budget of 0.5 s" in data["stopped"] and "--max-seconds" in data["stopped"]
    assert data["covered"]["states"] == data["states"] > 0
    assert data["covered"]["groups_total"] == 1 and data["covered"]["groups_done"] == 0
    # progress from the start: the first line comes before any state is counted
    assert "group 1 of 1: 0 states" in err
    code, _, err = run(LONG, "--max-seconds", "0")
    assert code == 2 and "--max-seconds" in err


def _start_search(*extra: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "explorer", "explore", LONG, "--json", "--progress", *extra],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    line = p.stderr.readline()  # the search has started
    assert line.startswith("progress states="), line
    return p


def test_sigterm_and_sigint_cancel_the_search_with_exit_3() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = _start_search()
        p.send_signal(sig)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 3
        data = json.loads(out)
        assert "cancelled" in data["stopped"] and data["covered"]["states"] >= 0


_PARENT = """
import os, subprocess, sys
from explorer.interleavings import child
argv = [sys.executable, "-m", "explorer", "explore", sys.argv[1], "--json", "--progress"]
if sys.argv[2] == "popen":
    c = child.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(c.pid, flush=True)
    c.wait()
else:
    sys.exit(child.run_forwarding(argv, dict(os.environ)))
"""


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _child_of(parent: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = _children(parent.pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("the parent started no child")


def test_killing_the_parent_with_sigkill_ends_the_search() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, LONG, "popen"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert _alive(pid)
    parent.kill()  # SIGKILL: no handler runs in the parent
    parent.wait()
    try:
        assert _wait_gone(pid), f"search process {pid} outlived its parent"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_to_the_parent_is_forwarded_and_its_exit_3_passed_through() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, LONG, "forward"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert parent.stderr is not None
    assert parent.stderr.readline().startswith("progress states=")
    pid = _child_of(parent)
    parent.send_signal(signal.SIGTERM)
    out, _ = parent.communicate(timeout=60)
    assert parent.returncode == 3 and "cancelled" in json.loads(out)["stopped"]
    assert _wait_gone(pid)
