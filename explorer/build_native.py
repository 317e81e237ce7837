"""Build the compiled engine: :mod:`explorer.model` with mypyc (see :mod:`explorer.model.native`).

``python -m explorer.build_native`` (``make`` runs it) compiles :data:`NATIVE_MODULES` into
``explorer/model/_native/`` with a stamp of the sources it compiled; nothing to do when the
build is current. A missing compiler or a failed build leaves the pure Python engine in use
(slower, the same results) and exits 0: the build is an optimisation, never a requirement.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from explorer.model.native import (
    GROUP,
    NATIVE_DIR,
    NATIVE_MODULES,
    PACKAGE_DIR,
    STAMP,
    native_ready,
    sources_digest,
)


def build(verbose: bool = False) -> bool:
    """Compile :data:`NATIVE_MODULES` with mypyc into :data:`NATIVE_DIR`. Returns False (and
    leaves the pure Python modules in use) when mypyc or a C compiler is missing or fails."""
    if native_ready():
        if verbose:
            print("explorer.model: the compiled engine is up to date")
        return True
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution  # type: ignore[import-untyped]
    except ImportError as exc:
        print(f"explorer.model: not compiled ({exc}); the pure Python engine runs", file=sys.stderr)
        return False
    root = PACKAGE_DIR.parent.parent
    files = [str(Path("explorer") / "model" / f"{name}.py") for name in NATIVE_MODULES]
    digest = sources_digest()
    cwd = os.getcwd()
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="dpamt-native-") as tmp:
        try:
            os.chdir(root)
            with contextlib.redirect_stdout(log):  # mypyc's and setuptools' chatter
                exts = mypycify(
                    files,
                    opt_level="3",
                    debug_level="0",
                    group_name=GROUP,
                    target_dir=str(Path(tmp) / "c"),
                )
                dist = Distribution({"name": "dpamt-native", "ext_modules": exts})
                cmd = dist.get_command_obj("build_ext")
                cmd.build_lib = str(Path(tmp) / "lib")
                cmd.build_temp = str(Path(tmp) / "temp")
                cmd.ensure_finalized()
                cmd.run()
        except (Exception, SystemExit) as exc:  # a compiler error: keep the pure engine
            print(log.getvalue()[-4000:], file=sys.stderr)
            print(
                f"explorer.model: compiling failed ({exc}); the pure Python engine runs",
                file=sys.stderr,
            )
            return False
        finally:
            os.chdir(cwd)
        built = Path(tmp) / "lib" / "explorer" / "model"
        if NATIVE_DIR.exists():
            shutil.rmtree(NATIVE_DIR)
        NATIVE_DIR.mkdir()
        for so in built.iterdir():
            shutil.copy2(so, NATIVE_DIR / so.name)
    STAMP.write_text(digest + "\n")
    if verbose:
        print(f"explorer.model: compiled {len(NATIVE_MODULES)} modules into {NATIVE_DIR}")
    return True


def main() -> int:
    build(verbose=True)  # a failed build is not an error: the pure Python engine runs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
