"""The app on a free local port, for everything that drives it from a real browser: the browser
tests (``tests/browser/conftest.py``), the step latency of ``make bench``
(``tools/step_latency.py``), the screenshots and the load test. One place starts it, waits for
Streamlit's health check and stops it, so the four cannot drift apart (they were four copies).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(
    port: int, log: IO[bytes] | IO[str] | None = None, timeout_s: float = 60
) -> subprocess.Popen[bytes]:
    """``streamlit run streamlit_app.py`` on ``127.0.0.1:port``, headless, no usage statistics,
    its output to ``log`` (or nowhere); returns once ``/_stcore/health`` answers ``ok``. Raises
    RuntimeError (the server killed) if it does not within ``timeout_s``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "streamlit_app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL if log is None else log,
        stderr=subprocess.DEVNULL if log is None else subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the app did not start within {timeout_s:.0f} s")


def stop_app(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """Terminate the server and wait for it (killed if it lingers)."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
