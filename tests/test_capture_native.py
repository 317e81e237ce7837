"""The capture path compiled with mypyc (the capture group of explorer/model/native.py) gives
the pure modules' results: ``conform --json``, ``import`` and the exit status, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from explorer import conformance
from explorer.conformance.synth import large_capture
from explorer.model.native import CAPTURE, ENGINE, GROUPS, SEARCH, Group

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = sorted((ROOT / "sample_traces" / "captures").glob("*.txt"))


def test_the_groups_are_apart() -> None:
    """Each group stamps its own sources in its own directory: editing conform.py never makes
    the engine's build stale, nor the other way round."""
    assert GROUPS == (ENGINE, CAPTURE, SEARCH)
    assert len({g.native_dir for g in GROUPS}) == 3
    assert len({g.lib for g in GROUPS}) == 3
    assert {p.name for p in CAPTURE.sources()} == {"importer.py", "conform.py"}
    assert ENGINE.sources_digest() != CAPTURE.sources_digest()
    assert CAPTURE.lib.startswith(CAPTURE.package + ".")


def test_a_stale_build_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another set of sources than the stamp's (here one module fewer, as after an edit):
    the pure modules run, the package path is left alone."""
    monkeypatch.delenv("DPAMT_PURE", raising=False)
    other = Group(CAPTURE.package, ("importer",), CAPTURE.lib)
    path = ["x"]
    assert not other.ready()
    assert not other.activate(path)
    assert path == ["x"]


def test_the_types_read_by_position_are_part_of_the_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled capture path reads the capture's Record and the engine's Effect (named
    tuples) by position: a change to either file makes its build stale, and the Makefile
    rebuilds on the same files."""
    assert {"ingest/capture.py", "model/records.py"} <= set(CAPTURE.depends)
    assert all(p.is_file() for p in CAPTURE.dependencies())
    before, deps = CAPTURE.sources_digest(), CAPTURE.dependencies()
    copy = tmp_path / "capture.py"
    copy.write_text(deps[0].read_text() + "\n# edited\n")
    monkeypatch.setattr(Group, "dependencies", lambda self: [copy, *deps[1:]])
    assert CAPTURE.sources_digest() != before
    make = (ROOT / "Makefile").read_text()
    prereqs = make.split("CAPTURE_SOURCES :=", 1)[1].split("\n\n", 1)[0]
    for dep in CAPTURE.depends:
        assert f"explorer/{dep}" in prereqs


def test_dpamt_pure_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPAMT_PURE", "1")
    path: list[str] = []
    assert not CAPTURE.activate(path)
    assert path == []


def _run(args: list[str], pure: bool) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DPAMT_PURE", None)
    if pure:
        env["DPAMT_PURE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "explorer", *args], env=env, capture_output=True, text=True
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.skipif(not conformance.NATIVE, reason="the capture path is not compiled (make)")
def test_the_compiled_capture_path_gives_the_pure_results(tmp_path: Path) -> None:
    from explorer.conformance import conform, importer

    # compiled (a group's module imported by another one of it names its file under the
    # build as the shared library sees it: the build directory, then its dotted path)
    for module in (conform, importer):
        assert module.__file__ is not None
        assert Path(module.__file__).is_relative_to(CAPTURE.native_dir), module.__file__
        assert not module.__file__.endswith(".py")
    synthetic = tmp_path / "synthetic.txt"
    synthetic.write_text(large_capture(20_000, seed=3))
    for path in [*CAPTURES, synthetic]:
        for command in (["conform", "--json"], ["import"]):
            compiled = _run([*command, str(path)], pure=False)
            assert compiled == _run([*command, str(path)], pure=True), (command, path.name)
            assert compiled[0] in (0, 1), compiled[2]
