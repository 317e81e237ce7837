"""What comes in: fault-path trace files (format v1, docs/trace-format.md: parse, write,
generate, the bench's shapes) and kernel captures (docs/capture.md: :mod:`.capture`).

Standard library only, like :mod:`explorer.model`.
"""

from explorer.ingest.parse import Trace, parse_trace

__all__ = ["Trace", "parse_trace"]
