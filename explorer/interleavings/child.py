"""Child processes of a search that never outlive their parent.

``explore`` runs the search in a child when the compiled engine is loaded (the search reads
generator frames, which only the pure Python engine has), and the app runs every search in a
child (explorer.interleavings.job). A search runs for minutes at full CPU; a child left behind
by a killed parent (``kill -9``, a closed terminal, a crashed app) would run to its bound.
Three things prevent it:

- **PR_SET_PDEATHSIG** (Linux, ``prctl(2)``): the kernel sends the child SIGTERM when the
  thread that started it exits, however it exits, SIGKILL included. It is set in the child
  between fork and exec, then the child checks that its parent is still the one that started
  it (the parent may have died before the prctl). The signal follows the *thread*: start the
  child from a thread that lives as long as the child (job.py starts it from its reader thread).
- **Forwarding**: the parent passes SIGINT, SIGTERM and SIGHUP on to the child and keeps
  waiting, so the child reports what it covered (exit 3) and the parent passes that through.
- **Cancellation in the child** (:func:`cancel_on_signals`): the first SIGTERM, SIGINT or
  SIGHUP makes the search stop at its next state with "cancelled"; a second one exits at once.

Elsewhere than Linux, only forwarding and a new session for the child remain.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

#: How a search child runs (``DPAMT_PURE``): the kernel's generators in Python (the search
#: reads their frames), the search and the engine's other modules compiled where the search's
#: build is present (:data:`explorer.model.native.SEARCH`; all Python otherwise, same results).
SEARCH_ENGINE = "search"


def search_env(**extra: str) -> dict[str, str]:
    """The environment of a search child: this one, on the search's engine (``SEARCH_ENGINE``),
    plus ``extra``."""
    return dict(os.environ, DPAMT_PURE=SEARCH_ENGINE, **extra)


#: prctl(2) option: the signal the kernel sends this process when its parent thread dies.
PR_SET_PDEATHSIG = 1
#: The signals a parent forwards to its search child and a search treats as "stop now".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _die_with(parent: int) -> Callable[[], None]:
    # libc is looked up here, in the parent: between fork and exec the child of a threaded
    # process may only call what needs no lock another thread could have held (no dlopen)
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:  # (runs in the child, between fork and exec)
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return preexec


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` for a child that dies with the calling thread (see the module
    docstring); the keyword arguments are Popen's."""
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = _die_with(os.getpid())
    else:
        kwargs.setdefault("start_new_session", True)
    return subprocess.Popen(list(argv), **kwargs)


def run_forwarding(argv: Sequence[str], env: dict[str, str]) -> int:
    """Run ``argv`` in a child that dies with this process; forward the stop signals to it
    while waiting; its exit status (a signal's death as 128 + the signal)."""
    child = popen(argv, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        code = child.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if child.poll() is None:  # an exception in this process: take the child along
            child.kill()
            child.wait()
    return code if code >= 0 else 128 - code


def cancel_on_signals() -> Callable[[], bool]:
    """Make the stop signals request a cancellation (the first) or exit at once (a second:
    status 128 + the signal); the callable the search polls."""
    asked: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if asked:
            os._exit(128 + signum)
        asked.append(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    return lambda: bool(asked)
