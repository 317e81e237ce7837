"""Hostile input, round 3 (issue 29), for ``sweep``: a ``--scheduler`` peer that is not a Dask
scheduler (garbage, a claimed 8 GiB frame, silence) is named as such without allocating what it
claims; a killed ``sweep`` (SIGTERM, SIGINT, SIGKILL) leaves none of the processes it started."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


# ------------------------------------------------------------------ peers that are not Dask
def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" + os.urandom(4096))


def _huge_message(conn: socket.socket) -> None:
    conn.sendall(struct.pack("<Q", 8 << 30) + b"\0" * 4096)


def _huge_frame(conn: socket.socket) -> None:
    # a well-formed start: 24 bytes in this read, one frame, and that frame claims 8 GiB
    conn.sendall(struct.pack("<QQQ", 24, 1, 8 << 30) + b"\0" * 4096)


def _many_frames(conn: socket.socket) -> None:
    conn.sendall(struct.pack("<QQQ", 16, 1 << 40, 0))


def _silent(conn: socket.socket) -> None:
    time.sleep(15)


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that answers every connection with ``request.param``."""
    answer: Callable[[socket.socket], None] = request.param
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    answer(conn)
                    conn.settimeout(0.2)
                    while not stop.is_set():  # hold the connection open, read what comes
                        try:
                            if not conn.recv(65536):
                                break
                        except TimeoutError:
                            continue
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(20)
    srv.close()


def _run_sweep(scheduler: str, tmp_path: Path) -> tuple[int, str, float, int]:
    """``python -m explorer sweep --scheduler``: exit code, stderr, seconds, peak RSS in KiB."""
    argv = [sys.executable, "-m", "explorer", "sweep", str(SAMPLES / "lost_race.jsonl")]
    argv += ["--vary", "dpamt_gets_per_fault=0..1", "--scheduler", scheduler]
    argv += ["--out", str(tmp_path / "s.csv")]
    start = time.monotonic()
    err_path = tmp_path / "err.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err_path.read_text(), time.monotonic() - start, usage.ru_maxrss


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of the same command against a closed port (same imports, nothing read)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err, _, rss = _run_sweep(f"tcp://127.0.0.1:{port}", tmp_path_factory.mktemp("base"))
    assert code == 2 and "refused" in err.lower()
    return rss


@pytest.mark.parametrize(
    ("peer", "said"),
    [
        (_garbage, "announced a message of"),
        (_huge_message, f"announced a message of {8 << 30} bytes"),
        (_huge_frame, f"frames add up to {16 + (8 << 30)} bytes"),
        (_many_frames, f"announced {1 << 40} frames"),
        (_silent, "no complete answer in time"),
    ],
    indirect=["peer"],
)
def test_a_peer_that_is_not_a_scheduler_is_named_without_allocating(
    peer: str, said: str, tmp_path: Path, baseline_rss: int
) -> None:
    code, err, seconds, rss = _run_sweep(peer, tmp_path)
    assert code == 2, err
    assert f"cannot reach the Dask scheduler at {peer}: the peer is not a Dask scheduler" in err
    assert said in err and "Traceback" not in err and "MemoryError" not in err
    assert seconds <= 10, seconds
    assert rss - baseline_rss < 50 * 1024, (rss, baseline_rss)


# ------------------------------------------------------------------ no orphans
def _session_pids(sid: int) -> set[int]:
    """Every live process of session ``sid`` (the CLI was started as its leader)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.add(int(entry))
    return pids


def _wait_for(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


@pytest.mark.parametrize(
    ("sig", "when"),
    [
        (signal.SIGTERM, "starting"),
        (signal.SIGINT, "starting"),
        (signal.SIGTERM, "running"),
        (signal.SIGINT, "running"),
        (signal.SIGKILL, "running"),
    ],
)
def test_a_killed_sweep_leaves_no_process_behind(
    sig: signal.Signals, when: str, tmp_path: Path
) -> None:
    """``sweep --workers 2`` on a LocalCluster (a scheduler in the CLI's process, two nannies'
    worker processes): while the cluster starts (the workers' processes exist, no point has
    finished) or once points finish, the CLI gets ``sig``; every process of its session must be
    gone within 30 s, and (but for SIGKILL, which leaves the CLI no word) no traceback."""
    trace = tmp_path / "big.jsonl"
    gen = [sys.executable, "-m", "explorer", "generate", "churn", "--tds", "2", "--vcpus", "4"]
    subprocess.run([*gen, "--faults", "20000", "-o", str(trace)], env=ENV, check=True)
    argv = [sys.executable, "-m", "explorer", "sweep", str(trace), "--workers", "2"]
    argv += ["--vary", "dpamt_gets_per_fault=0..40", "--out", str(tmp_path / "s.csv")]
    proc = subprocess.Popen(
        argv,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "err.txt", "wb"),  # noqa: SIM115 (closed with the process)
        start_new_session=True,
    )
    try:
        # the CLI plus its two worker processes (the scheduler and nannies run in the CLI)
        assert _wait_for(lambda: len(_session_pids(proc.pid)) >= 3, 60), "no workers started"
        out = tmp_path / "s.csv"
        if when == "running":  # the header and a first row
            assert _wait_for(lambda: out.exists() and out.read_text().count("\n") >= 2, 90)
        assert proc.poll() is None, "the sweep ended before the signal"
        started = _session_pids(proc.pid)
        proc.send_signal(sig)
        proc.wait(30)
        left = _wait_for(lambda: not _session_pids(proc.pid), 30)
        assert left, f"left running: {_session_pids(proc.pid)} of {started}"
        if sig != signal.SIGKILL:  # the orphaned workers' own last words are theirs
            assert "Traceback" not in (tmp_path / "err.txt").read_text()
        expected = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}
        assert proc.returncode == expected[sig]
    finally:
        for pid in _session_pids(proc.pid):  # never leave our own strays, even on a failure
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)


def test_an_interrupt_quiets_the_clusters_teardown() -> None:
    """KeyboardInterrupt (or the CLI's SIGTERM exception) unwinding a local cluster silences the
    loggers that would print its teardown's tracebacks; an ordinary error leaves them alone."""
    import logging

    from explorer.sweeps.sweep import TEARDOWN_LOGGERS, dask_client

    loggers = [logging.getLogger(name) for name in TEARDOWN_LOGGERS]
    saved = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.NOTSET)
        with pytest.raises(ValueError), dask_client(workers=1):
            raise ValueError("a point's own error")
        assert all(lg.level <= logging.CRITICAL for lg in loggers)
        with pytest.raises(KeyboardInterrupt), dask_client(workers=1):
            raise KeyboardInterrupt
        assert all(lg.level > logging.CRITICAL for lg in loggers)
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def test_an_interrupt_off_the_main_thread_leaves_the_loggers_alone() -> None:
    """The app's background sweep runs in a thread of the server: whatever ends it there, the
    server's own loggers are never silenced."""
    import logging
    import threading

    from explorer.sweeps.sweep import TEARDOWN_LOGGERS, dask_client

    loggers = [logging.getLogger(name) for name in TEARDOWN_LOGGERS]
    saved = [lg.level for lg in loggers]
    caught: list[BaseException] = []

    def run() -> None:
        try:
            with dask_client(workers=1):
                raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            caught.append(exc)

    try:
        for lg in loggers:
            lg.setLevel(logging.NOTSET)
        t = threading.Thread(target=run)
        t.start()
        t.join(120)
        assert caught, "the thread did not finish"
        assert all(lg.level <= logging.CRITICAL for lg in loggers)
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)
