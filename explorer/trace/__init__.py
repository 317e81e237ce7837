"""Fault-path trace files: format v1 (docs/trace-format.md), parse, write, generate.

Standard library only, like :mod:`explorer.model`.
"""

from explorer.trace.parse import Trace, parse_trace

__all__ = ["Trace", "parse_trace"]
