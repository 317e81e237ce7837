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

Modules compiled: the kernel model proper (:data:`NATIVE_MODULES`). The event, settings and
record classes stay Python: they are frozen dataclasses shared with the trace parser and the
views, and compiling them gains nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

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
PACKAGE_DIR = Path(__file__).resolve().parent
NATIVE_DIR = PACKAGE_DIR / "_native"
STAMP = NATIVE_DIR / "SOURCES"
#: The shared library's module name (mypyc's group name): inside the package, so that nothing
#: but the package's ``__path__`` has to point at the build.
GROUP = "explorer.model._engine"


def sources_digest() -> str:
    """The SHA-256 of the compiled modules' sources (and of the Python version that built them:
    an extension built for another interpreter cannot load)."""
    h = hashlib.sha256(sys.version.encode())
    for name in NATIVE_MODULES:
        h.update(name.encode())
        h.update((PACKAGE_DIR / f"{name}.py").read_bytes())
    return h.hexdigest()


def native_ready() -> bool:
    """A build of exactly these sources is present."""
    try:
        return STAMP.read_text().strip() == sources_digest()
    except OSError:
        return False


def activate(package_path: list[str]) -> bool:
    """Put the compiled modules first on ``package_path`` (the package's ``__path__``) when a
    fresh build is present and ``DPAMT_PURE`` is not set. Returns whether they are in use."""
    if os.environ.get("DPAMT_PURE") or not native_ready():
        return False
    package_path.insert(0, str(NATIVE_DIR))
    return True
