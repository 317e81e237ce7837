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
  the test that compares the two). ``DPAMT_PURE=search`` runs the search's build instead
  (:data:`SEARCH`: the kernel's generators in Python, whose frames the search reads).
- No compiler, or a failed build: the pure Python package runs, slower, with the same results.

Modules compiled, in three groups built and stamped apart (:data:`GROUPS`), each a mypyc group
(one shared library) whose extension modules go to a ``_native/`` directory beside its package
(the search's: ``_native_search/`` beside each of its two packages):

- the engine (:data:`ENGINE`): the kernel model proper (:data:`NATIVE_MODULES`). The event,
  settings and record classes stay Python: they are frozen dataclasses shared with the trace
  parser and the views, and compiling them gains nothing.
- the capture path (:data:`CAPTURE`): :mod:`explorer.conformance.importer` and
  :mod:`explorer.conformance.conform` (a kernel capture imported and compared with the replay),
  activated by ``explorer/conformance/__init__.py``. The capture parser
  (:mod:`explorer.ingest.capture`) stays Python: its time is in ``re`` and ``int``, already C,
  and compiled it ran no faster (docs/capture.md).
- the search's build (:data:`SEARCH`, used only under ``DPAMT_PURE=search``):
  :mod:`explorer.interleavings.search` and the engine's modules that define no kernel
  generator; the search reads the generators' frames, so they stay Python.

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
    #: The directory beside each package's sources that its compiled modules go to.
    subdir: str = "_native"
    #: Modules of other packages compiled in the group, as (package, module): each one's
    #: extension goes to :attr:`subdir` beside that package's sources, which activates it with
    #: :meth:`activate` (its ``package`` argument).
    others: tuple[tuple[str, str], ...] = ()
    #: The value of ``DPAMT_PURE`` under which the group is used; None: when it is not set.
    when: str | None = None

    @property
    def package_dir(self) -> Path:
        """The package's source directory."""
        return _source_dir(self.package)

    @property
    def native_dir(self) -> Path:
        """Where the build's extension modules go."""
        return self.package_dir / self.subdir

    def dir_of(self, package: str) -> Path:
        """Where the build puts the compiled modules of ``package`` (the group's own, or one of
        :attr:`others`')."""
        return _source_dir(package) / self.subdir

    @property
    def stamp(self) -> Path:
        """The digest of the sources the build in :attr:`native_dir` was made from."""
        return self.native_dir / "SOURCES"

    def sources(self) -> list[Path]:
        """The compiled modules' source files (the package's, then :attr:`others`')."""
        own = [self.package_dir / f"{name}.py" for name in self.modules]
        return own + [_source_dir(package) / f"{name}.py" for package, name in self.others]

    def dependencies(self) -> list[Path]:
        """The sources of :attr:`depends`."""
        return [_EXPLORER_DIR / d for d in self.depends]

    def sources_digest(self) -> str:
        """The SHA-256 of the compiled modules' sources and of :attr:`depends` (and of the
        Python version that built them: an extension built for another interpreter cannot
        load)."""
        h = hashlib.sha256(sys.version.encode())
        names = [*self.modules, *(f"{package}.{name}" for package, name in self.others)]
        for name, path in zip(names, self.sources(), strict=True):
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

    def activate(self, package_path: list[str], package: str | None = None) -> bool:
        """Put the compiled modules of ``package`` (the group's own by default) first on
        ``package_path`` (that package's ``__path__``) when a fresh build is present and
        ``DPAMT_PURE`` is what the group runs under (:attr:`when`). Returns whether they are
        in use."""
        flag = os.environ.get("DPAMT_PURE") or None
        if flag != self.when or not self.ready():
            return False
        package_path.insert(0, str(self.dir_of(package or self.package)))
        return True


_EXPLORER_DIR = Path(__file__).resolve().parent.parent


def _source_dir(package: str) -> Path:
    """The source directory of ``package`` (a dotted name under ``explorer``)."""
    return _EXPLORER_DIR.joinpath(*package.split(".")[1:])


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
#: The search's build (``DPAMT_PURE=search``): :mod:`explorer.interleavings.search` and the
#: engine's modules that define no kernel generator, compiled (the machine and its state
#: included); the kernel's generators (:mod:`.kvm`, :mod:`.dpamt`) stay Python, because the
#: search reads their frames (a compiled generator has none). ``explore`` runs its search so.
#: The engine's own build cannot serve: its compiled kvm and dpamt are the generators. The
#: machine (:mod:`.machine`) and the KernelState it subclasses (:mod:`.state`) are compiled
#: together, so the machine is a native class: a re-execution's turn, the canonical state and
#: the allocator run compiled (docs/interleavings.md, "The machine compiled for the search").
SEARCH = Group(
    "explorer.model",
    (
        "prng",
        "packed",
        "chunked",
        "memory",
        "tdx_module",
        "invariants",
        "steps",
        "state",
        "machine",
    ),
    "explorer.model._search",
    # constants the compiled modules may have folded in, and the classes they were typed with
    depends=(
        "model/constants.py",
        "model/records.py",
        "model/events.py",
        "model/settings.py",
        "model/summary.py",
    ),
    subdir="_native_search",
    others=(("explorer.interleavings", "search"),),
    when="search",
)
#: Every compiled group, in build order.
GROUPS = (ENGINE, CAPTURE, SEARCH)

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
    """The engine's :meth:`Group.activate`, or under ``DPAMT_PURE=search`` the search's
    (``explorer/model/__init__.py`` calls it). Returns whether the engine is compiled (the
    kernel's generators: the search's build leaves them Python)."""
    SEARCH.activate(package_path)
    return ENGINE.activate(package_path)
