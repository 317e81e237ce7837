"""Build the compiled groups with mypyc (see :mod:`explorer.model.native`): the engine
(:mod:`explorer.model`), the capture path (:mod:`explorer.conformance`'s importer and conform)
and the search's build (:mod:`explorer.interleavings.search` with the engine's modules that
define no kernel generator).

``python -m explorer.build_native`` (``make`` runs it) compiles each group of
:data:`~explorer.model.native.GROUPS` into its package's ``_native/`` directory (the search's
build: ``_native_search/``, beside each of its packages) with a stamp of
the sources it compiled; nothing to do for a group whose build is current. A missing compiler or
a failed build leaves that group's pure Python modules in use (slower, the same results) and
exits 0: the build is an optimisation, never a requirement.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from explorer.model.native import GROUPS, Group

#: The repository root: mypyc names each module from its path relative to it.
ROOT = Path(__file__).resolve().parent.parent


def build_group(group: Group, verbose: bool = False) -> bool:
    """Compile ``group``'s modules with mypyc into its packages' build directories. Returns
    False (and leaves the group's pure Python modules in use) when mypyc or a C compiler is
    missing or fails."""
    if group.ready():
        if verbose:
            print(f"{group.lib}: the compiled modules are up to date")
        return True
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution  # type: ignore[import-untyped]
    except ImportError as exc:
        print(f"{group.lib}: not compiled ({exc}); the pure Python modules run", file=sys.stderr)
        return False
    files = [str(path.relative_to(ROOT)) for path in group.sources()]
    digest = group.sources_digest()
    cwd = os.getcwd()
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="dpamt-native-") as tmp:
        try:
            os.chdir(ROOT)
            with contextlib.redirect_stdout(log):  # mypyc's and setuptools' chatter
                exts = mypycify(
                    files,
                    opt_level="3",
                    debug_level="0",
                    group_name=group.lib,
                    target_dir=str(Path(tmp) / "c"),
                )
                dist = Distribution({"name": "dpamt-native", "ext_modules": exts})
                cmd = dist.get_command_obj("build_ext")
                cmd.build_lib = str(Path(tmp) / "lib")
                cmd.build_temp = str(Path(tmp) / "temp")
                cmd.ensure_finalized()
                cmd.run()
        except (Exception, SystemExit) as exc:  # a compiler error: keep the pure modules
            print(log.getvalue()[-4000:], file=sys.stderr)
            print(
                f"{group.lib}: compiling failed ({exc}); the pure Python modules run",
                file=sys.stderr,
            )
            return False
        finally:
            os.chdir(cwd)
        if group.stamp.exists():  # (no stamp while the build is half copied)
            group.stamp.unlink()
        for package in dict.fromkeys((group.package, *(p for p, _ in group.others))):
            built = Path(tmp, "lib", *package.split("."))
            target = group.dir_of(package)
            if target.exists():
                shutil.rmtree(target)
            target.mkdir()
            for so in built.iterdir():
                if so.is_file():
                    shutil.copy2(so, target / so.name)
    group.stamp.write_text(digest + "\n")
    if verbose:
        print(f"{group.lib}: compiled {len(group.modules)} modules into {group.native_dir}")
    return True


def build(verbose: bool = False) -> bool:
    """Build every group (each on its own: one failing leaves the others built). Returns whether
    all of them are compiled and current."""
    results = [build_group(group, verbose) for group in GROUPS]
    return all(results)


def main() -> int:
    build(verbose=True)  # a failed build is not an error: the pure Python modules run
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
