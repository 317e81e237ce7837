"""The search's build (``DPAMT_PURE=search``, explorer/model/native.py's SEARCH group): the
search and the engine's modules without kernel generators compiled, the generators in Python.
It is what ``explore`` runs; it must give what the pure modules give, byte for byte but the
seconds, and activate only under its own value of ``DPAMT_PURE``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from explorer.interleavings.child import SEARCH_ENGINE, search_env
from explorer.model.native import ENGINE, SEARCH, Group

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
built = pytest.mark.skipif(not SEARCH.ready(), reason="the search's build is absent (make)")


def test_the_search_build_is_used_only_under_its_own_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset: the engine's build (the app's); "1": nothing compiled; "search": the search's
    build, never the engine's with it (its modules reach a machine's fields natively)."""
    for flag, want in ((None, False), ("1", False), (SEARCH_ENGINE, SEARCH.ready())):
        if flag is None:
            monkeypatch.delenv("DPAMT_PURE", raising=False)
        else:
            monkeypatch.setenv("DPAMT_PURE", flag)
        path: list[str] = []
        assert SEARCH.activate(path, "explorer.interleavings") is want
        assert path == ([str(SEARCH.dir_of("explorer.interleavings"))] if want else [])
    monkeypatch.setenv("DPAMT_PURE", SEARCH_ENGINE)
    assert not ENGINE.activate([])


def test_the_search_build_stamps_the_search_and_what_it_was_typed_with() -> None:
    names = {p.name for p in SEARCH.sources()}
    assert {"search.py", "memory.py", "machine.py", "state.py"} <= names
    assert not names & {"kvm.py", "dpamt.py"}  # (the generators, whose frames the search reads)
    assert SEARCH.dir_of("explorer.interleavings") == ROOT / "explorer/interleavings/_native_search"
    stale = Group(
        SEARCH.package,
        SEARCH.modules[:-1],
        SEARCH.lib,
        subdir=SEARCH.subdir,
        others=SEARCH.others,
        when=SEARCH.when,
    )
    assert not stale.ready()
    make = (ROOT / "Makefile").read_text()
    assert (
        "explorer/model/_native_search/SOURCES: $(MODEL_SOURCES) explorer/interleavings/search.py"
        in make
    )


def _child(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@built
def test_a_search_child_runs_the_compiled_search_on_python_generators() -> None:
    code = (
        "import explorer.model as m, explorer.model.memory as mem, explorer.model.kvm as kvm, "
        "explorer.model.dpamt as dp, explorer.model.machine as ma, explorer.model.state as st, "
        "explorer.interleavings as i, explorer.interleavings.search as s; "
        "print(m.NATIVE, i.NATIVE, *(x.__file__.endswith('.py') for x in (s, mem, ma, st, kvm, "
        "dp)))"
    )
    got = _child(code, search_env(PYTHONPATH=str(ROOT)))
    assert got == "False True False False False False True True"


def _without_seconds(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _without_seconds(v) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [_without_seconds(v) for v in x]
    return x


def _explore(sample: str, mode: str, flag: str) -> tuple[int, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DPAMT_PURE=flag)
    trace = str(SAMPLES / f"{sample}.jsonl")
    argv = [sys.executable, "-m", "explorer", "explore", trace, "--set", f"mode={mode}"]
    done = subprocess.run(
        [*argv, "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return done.returncode, _without_seconds(json.loads(done.stdout))


@built
@pytest.mark.parametrize(
    ("sample", "mode"),
    [
        ("cold_race_2vcpu", "v6"),
        ("lost_race", "v6-no-recheck"),  # (a finding: WARN_PAMT_ADD)
        ("stale_fault", "v6-locked"),  # (zaps, spins on both locks)
        ("race_three_cpus", "v5-hint"),
    ],
)
def test_the_search_build_gives_the_pure_results(sample: str, mode: str) -> None:
    assert _explore(sample, mode, SEARCH_ENGINE) == _explore(sample, mode, "1")
