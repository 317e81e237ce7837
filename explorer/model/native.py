"""The engine compiled with mypyc: the same source, run as C, where a compiler was present.

Why: every step of every replay runs the kernel functions of :mod:`explorer.model` as
generators (one description of the kernel, stepped through by reviewers and run in bulk alike).
CPython spends most of a step on the interpreter itself (frame resumes, attribute lookups, dict
and tuple boxing); mypyc compiles the same type-annotated modules (they are ``mypy --strict``
clean) to C extension modules that run them two to three times faster, with the same results.
There is no second model: the compiled modules are built from these very files.

How it stays safe:

- The build (:func:`explorer.build_native.build`, ``python -m explorer.build_native``, run by
  ``make``; it lives outside this package, which imports only the standard library) writes the
  extension modules to ``explorer/model/_native/`` with a stamp: the digest of the sources it
  compiled. :func:`activate` (called by ``explorer/model/__init__.py`` before any submodule is
  imported) puts that directory first on the package's ``__path__`` only when the stamp matches
  the sources on disk. An edited source is never shadowed by a stale build: the pure Python
  modules run until the next build.
- ``DPAMT_PURE=1`` in the environment forces the pure Python modules (for debugging, and for
  the test that compares the two).
- No compiler, or a failed build: the pure Python package runs, slower, with the same results.

Modules compiled, in two groups built and stamped apart (:data:`GROUPS`), each a mypyc group
(one shared library) whose extension modules go to a ``_native/`` directory beside its package:

- the engine (:data:`ENGINE`): the kernel model proper (:data:`NATIVE_MODULES`). The event,
  settings and record classes stay Python: they are frozen dataclasses shared with the trace
  parser and the views, and compiling them gains nothing.
- the capture path (:data:`CAPTURE`): :mod:`explorer.conformance.importer` and
  :mod:`explorer.conformance.conform` (a kernel capture imported and compared with the replay),
  activated by ``explorer/conformance/__init__.py``. The capture parser
  (:mod:`explorer.ingest.capture`) stays Python: its time is in ``re`` and ``int``, already C,
  and compiled it ran no faster (docs/capture.md).

A group is current or not on its own: editing ``conform.py`` leaves the compiled engine in use
and runs the pure capture path until the next build.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Group:
    """One compiled group: the modules of one package built into one shared library."""

    #: The package's dotted name, whose ``__path__`` gets the build first.
    package: str
    #: The package's modules that are compiled (names inside the package).
    modules: tuple[str, ...]
    #: mypyc's group name, the shared library's module name: inside the package, so that
    #: nothing but the package's ``__path__`` has to point at the build.
    lib: str
    #: Source files outside the group whose types its compiled code was built against (paths
    #: under ``explorer/``): digested with the group's own sources, so that changing one (a
    #: named tuple's fields, which compiled code reads by position) makes the build stale.
    depends: tuple[str, ...] = ()

    @property
    def package_dir(self) -> Path:
        """The package's source directory."""
        return _EXPLORER_DIR.joinpath(*self.package.split(".")[1:])

    @property
    def native_dir(self) -> Path:
        """Where the build's extension modules go."""
        return self.package_dir / "_native"

    @property
    def stamp(self) -> Path:
        """The digest of the sources the build in :attr:`native_dir` was made from."""
        return self.native_dir / "SOURCES"

    def sources(self) -> list[Path]:
        """The compiled modules' source files."""
        return [self.package_dir / f"{name}.py" for name in self.modules]

    def dependencies(self) -> list[Path]:
        """The sources of :attr:`depends`."""
        return [_EXPLORER_DIR / d for d in self.depends]

    def sources_digest(self) -> str:
        """The SHA-256 of the compiled modules' sources and of :attr:`depends` (and of the
        Python version that built them: an extension built for another interpreter cannot
        load)."""
        h = hashlib.sha256(sys.version.encode())
        for name, path in zip(self.modules, self.sources(), strict=True):
            h.update(name.encode())
            h.update(path.read_bytes())
        for dep, path in zip(self.depends, self.dependencies(), strict=True):
            h.update(dep.encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    def ready(self) -> bool:
        """A build of exactly these sources is present."""
        try:
            return self.stamp.read_text().strip() == self.sources_digest()
        except OSError:
            return False

    def activate(self, package_path: list[str]) -> bool:
        """Put the compiled modules first on ``package_path`` (the package's ``__path__``) when
        a fresh build is present and ``DPAMT_PURE`` is not set. Returns whether they are in
        use."""
        if os.environ.get("DPAMT_PURE") or not self.ready():
            return False
        package_path.insert(0, str(self.native_dir))
        return True


_EXPLORER_DIR = Path(__file__).resolve().parent.parent

#: The modules of explorer.model that are compiled (the hot loop of every replay).
NATIVE_MODULES = (
    "prng",
    "packed",
    "chunked",
    "memory",
    "tdx_module",
    "steps",
    "state",
    "machine",
    "invariants",
    "dpamt",
    "kvm",
    "bulk",
)
#: The engine: explorer.model's hot loop.
ENGINE = Group("explorer.model", NATIVE_MODULES, "explorer.model._engine")
#: The capture path: a kernel capture imported and compared with the engine's replay.
CAPTURE = Group(
    "explorer.conformance",
    ("importer", "conform"),
    "explorer.conformance._capture",
    # the capture's Record and the engine's Effect are named tuples read by position
    depends=("ingest/capture.py", "model/records.py"),
)
#: Every compiled group, in build order.
GROUPS = (ENGINE, CAPTURE)

PACKAGE_DIR = ENGINE.package_dir
NATIVE_DIR = ENGINE.native_dir
STAMP = ENGINE.stamp
GROUP = ENGINE.lib


def sources_digest() -> str:
    """The engine's :meth:`Group.sources_digest`."""
    return ENGINE.sources_digest()


def native_ready() -> bool:
    """A build of exactly the engine's sources is present."""
    return ENGINE.ready()


def activate(package_path: list[str]) -> bool:
    """The engine's :meth:`Group.activate` (``explorer/model/__init__.py`` calls it)."""
    return ENGINE.activate(package_path)
