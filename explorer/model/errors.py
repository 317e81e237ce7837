"""The one error type for bad input, and its two refinements.

Following httpx's rule: everything a user can get wrong (a trace's bytes, its schema, a setting,
an event impossible in the current state) raises :class:`TraceError`, which carries the position
(file, line, column), the offending text and what was expected. Nothing else escapes the parser
or the engine's entry points on bad input; anything else is a bug in the explorer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, pinned to where it is."""

    source: str  # file name as the user gave it ("<upload>", "trace.jsonl", "--set")
    line: int  # 1-based; 0 when the problem is not tied to a line (e.g. the file is empty)
    col: int  # 1-based; 0 when unknown
    reason: str
    text: str = ""  # the offending text, shortened for display
    expected: str = ""  # what would have been accepted

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.col}" if self.line else self.source
        msg = f"{where}: {self.reason}"
        if self.expected:
            msg += f" (expected {self.expected})"
        if self.text:
            msg += f": {self.text!r}"
        return msg


class TraceError(Exception):
    """Bad input. ``problems`` lists every problem found (up to the collection limit)."""

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems: list[Problem] = (
            [problems] if isinstance(problems, Problem) else list(problems)
        )
        first = str(self.problems[0]) if self.problems else "invalid input"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class SettingsError(TraceError):
    """A setting is unknown or out of range (from a trace header, the CLI or the app)."""


class ImpossibleEvent(TraceError):
    """A well-formed event that cannot happen in the current state (h11's rule).

    The engine raises it before changing any state for the event: the replay stops there and
    everything before stays viewable. ``event_index`` is the event's position in the trace.
    """

    def __init__(self, problem: Problem, event_index: int) -> None:
        super().__init__(problem)
        self.event_index = event_index
