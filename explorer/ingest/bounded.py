"""One bounded reader for every input path the command line takes: at most ``limit + 1`` bytes are
ever read, whatever the path is.

Why: ``os.stat(path).st_size`` only bounds a regular file. ``/dev/zero`` and ``/dev/urandom``
report size 0 and never end, a FIFO or a pipe on standard input has no size, ``/proc`` files
report 0 and then have content; reading any of them with ``f.read()`` grows until the machine
runs out of memory (issue 29: ``check /dev/zero`` reached 22.6 GB). Here the data is read in
chunks into one buffer and refused as soon as it holds one byte more than the limit, so the
cost is bounded by the limit (time: the limit at the source's speed; memory: about twice the
limit, the buffer and the returned bytes).

A source that waits (a FIFO whose writer is slow, a terminal) is read through ``select`` with an
idle timeout (:data:`IDLE_TIMEOUT_S`), so a writer that never writes cannot hold the command
forever. gzip is not unpacked here: the parser inflates chunk by chunk under its own cap
(``MAX_DECOMPRESSED_BYTES`` in :mod:`explorer.ingest.limits`), so a gzip bomb is refused at that
cap, never after inflating.

Standard library only, so anything (the CLI, tools, tests) can use it.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import sys
from typing import BinaryIO

#: Bytes read per system call.
CHUNK_BYTES = 1 << 20
#: Seconds a FIFO, pipe or terminal may stay silent before the read is abandoned.
IDLE_TIMEOUT_S = 60.0


class InputRefused(Exception):
    """``path`` could not be read within the bounds; ``reason`` says why (with the sizes)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "file"


def _too_large(path: str, limit: int, kind: str, size: int | None) -> InputRefused:
    what = (
        f"the {kind} is {size} bytes"
        if size is not None
        else f"the {kind} has more than {limit} bytes"
    )
    return InputRefused(path, f"{what}, over the limit of {limit} bytes")


def read_fd_bounded(fd: int, path: str, limit: int) -> bytes:
    """Read ``fd`` to its end, refusing it once more than ``limit`` bytes came (see the module)."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise InputRefused(path, f"cannot read the file: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputRefused(path, "is a directory, not a file")
    kind = _kind(st.st_mode)
    regular = stat.S_ISREG(st.st_mode)
    # /proc and /sys report 0 for files that have content: a size is only believed when positive
    if regular and st.st_size > limit:
        raise _too_large(path, limit, kind, st.st_size)
    waits = stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) or stat.S_ISCHR(st.st_mode)
    buf = bytearray()
    try:
        while len(buf) <= limit:
            if waits:
                ready, _, _ = select.select([fd], [], [], IDLE_TIMEOUT_S)
                if not ready:
                    raise InputRefused(
                        path,
                        f"no data for {IDLE_TIMEOUT_S:g} s from the {kind} "
                        f"(after {len(buf)} bytes): is anything writing to it?",
                    )
            try:
                chunk = os.read(fd, min(CHUNK_BYTES, limit + 1 - len(buf)))
            except BlockingIOError:
                continue
            if not chunk:
                break
            buf += chunk
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise InputRefused(path, "is a directory, not a file") from None
        raise InputRefused(path, f"cannot read the file: {exc.strerror}") from None
    if len(buf) > limit:
        size = st.st_size if regular and st.st_size > limit else None
        raise _too_large(path, limit, kind, size)
    return bytes(buf)


def read_bounded(path: str, limit: int, stdin: BinaryIO | None = None) -> bytes:
    """The bytes of ``path`` (``-``: standard input), at most ``limit``; else :class:`InputRefused`.

    A FIFO is opened without blocking (a FIFO with no writer yet does not hang the open); the
    reads then wait for data through ``select`` (:data:`IDLE_TIMEOUT_S`).
    """
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):  # not a real file (a test's BytesIO)
            data = stream.read(limit + 1)
            if len(data) > limit:
                raise _too_large("<stdin>", limit, "input", None) from None
            return data
        return read_fd_bounded(fd, "<stdin>", limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputRefused(path, f"cannot read the file: {exc.strerror}") from None
    try:
        return read_fd_bounded(fd, path, limit)
    finally:
        os.close(fd)
