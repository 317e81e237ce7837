"""Hard limits on trace input: named, documented (docs/trace-format.md), cited in messages.

A trace above a limit is refused with the limit and the value; nothing is truncated silently.
"""

from __future__ import annotations

from explorer.model.settings import MAX_INT_DIGITS as _MAX_INT_DIGITS

MIB = 1 << 20

#: Bytes of a trace file as given (compressed or not); the app's upload limit matches it.
MAX_UPLOAD_BYTES = 64 * MIB
#: Bytes after gzip decompression (a "gzip bomb" stops here, decompressed incrementally).
MAX_DECOMPRESSED_BYTES = 512 * MIB
#: Bytes of one line.
MAX_LINE_BYTES = 64 * 1024
#: Events in one trace (comments and the header do not count).
MAX_EVENTS = 5_000_000
#: Problems collected before parsing stops.
MAX_ERRORS = 50
#: Nesting of JSON arrays/objects in one line (a flat object is depth 1; settings depth 2).
MAX_NESTING = 8
#: Characters of a title, description, note or note text.
MAX_TEXT = 4096
#: TD and vCPU ids.
MAX_ID = (1 << 20) - 1
#: Guest frame numbers (57-bit GPA with 5-level EPT; the engine checks the chosen EPT's reach).
MAX_GFN = (1 << 45) - 1
#: Host frame numbers (the engine checks the configured host memory).
MAX_PFN = (1 << 40) - 1
#: Significant digits of an integer (JSON number, hex or CSV decimal string), checked before any
#: conversion: more is out of every range (Python's int() itself refuses over 4300 digits).
MAX_INT_DIGITS = _MAX_INT_DIGITS
#: Logical time values.
MAX_T = (1 << 53) - 1
#: Occurrences one inject event may arm.
MAX_INJECT_COUNT = 1_000_000
#: Turns one schedule event may pin (a line holds at most MAX_LINE_BYTES anyway).
MAX_SCHEDULE_TURNS = 4096
