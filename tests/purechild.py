"""Run a test module's in-process searches on the pure engine.

``explore`` reads generator frames, which the compiled engine does not have: a test that calls
``explorer.interleavings.search`` in its own process needs the pure engine, which a process
chooses when it imports ``explorer.model`` (``DPAMT_PURE``). Under the compiled engine such a
module runs itself again in a child with ``DPAMT_PURE=1`` (one test, which fails with the
child's output when any of its tests fails); under the pure engine its tests run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.interleavings import NATIVE as SEARCH_NATIVE
from explorer.model import NATIVE

#: Whether this process cannot run the search's tests in place: the engine is compiled (no
#: generator frames), or the search is (``DPAMT_PURE=search``: the tests patch its functions,
#: which compiled code calls directly).
COMPILED = NATIVE or SEARCH_NATIVE

ROOT = Path(__file__).resolve().parent.parent


def run_pure(module_file: str) -> None:
    """Run ``module_file``'s tests in a child on the pure engine; fail with its output."""
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module_file],
        capture_output=True,
        cwd=ROOT,
        env=dict(os.environ, DPAMT_PURE="1", PYTHONPATH=str(ROOT)),
        timeout=1800,
    )
    assert p.returncode == 0, (p.stdout + p.stderr).decode()[-4000:]


#: Mark an in-process search test: skipped under the compiled engine or search, where the
#: module's ``test_on_the_pure_engine`` (``run_pure``) runs it in a child.
in_process = pytest.mark.skipif(COMPILED, reason="runs in a pure-engine child (run_pure)")
#: Mark the one test that calls ``run_pure``: only under the compiled engine or search.
child_runner = pytest.mark.skipif(not COMPILED, reason="the pure engine runs the tests here")

__all__ = ["COMPILED", "NATIVE", "child_runner", "in_process", "run_pure"]
