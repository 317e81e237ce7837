"""The kernel-code panel's data: for each CPU, its function's pseudocode with the current line."""

from __future__ import annotations

from dataclasses import dataclass

from explorer.model.narration import SOURCES, line_of, pseudocode
from explorer.model.records import Snapshot


@dataclass(frozen=True)
class CpuCode:
    cpu: str
    function: str
    source: str  # the file and function the pseudocode follows
    stack: tuple[str, ...]
    lines: tuple[str, ...]
    current: int | None  # index into lines
    narration: str
    holds: tuple[str, ...]
    spinning_on: str | None
    running: bool

    def listing(self, context: int | None = None) -> str:
        """The pseudocode with the current line marked ``=>`` (plain text: shown escaped); with
        ``context``, only that many lines either side of the current one (the header first)."""
        lines = list(enumerate(self.lines))
        if context is not None and self.current is not None and len(lines) > 2 * context + 2:
            lo = max(1, self.current - context)
            hi = min(len(lines), self.current + context + 1)
            lines = [
                lines[0],
                *([(-1, "   ...")] if lo > 1 else []),
                *lines[lo:hi],
                *([(-1, "   ...")] if hi < len(lines) else []),
            ]
        return "\n".join(("=> " if i == self.current else "   ") + text for i, text in lines)


def code_panel(snapshot: Snapshot) -> list[CpuCode]:
    """Each CPU's function as the mode runs it (no line of another design), its current line
    and the source it follows."""
    mode = snapshot.settings.mode
    out = []
    for c in snapshot.cpus:
        function = c.function or ""
        lines = tuple(text for _, text in pseudocode(function, mode))
        out.append(
            CpuCode(
                cpu=c.cpu,
                function=function,
                source=SOURCES.get(function, ""),
                stack=c.stack,
                lines=lines,
                current=line_of(function, c.label, mode) if c.label else None,
                narration=c.narration,
                holds=c.holds,
                spinning_on=c.spinning_on,
                running=c.event is not None,
            )
        )
    return out


def lock_summary(snapshot: Snapshot) -> list[str]:
    """Who holds which lock and who spins, one line each."""
    lines = [f"pamt_lock: {snapshot.pamt_lock or 'free'}"]
    for t in snapshot.tds:
        if t.state == "destroyed":
            continue
        held = t.mmu_lock_writer and f"write-held by {t.mmu_lock_writer}"
        readers = ", ".join(t.mmu_lock_readers)
        lines.append(
            f"TD {t.td} mmu_lock: {held or (f'read-held by {readers}' if readers else 'free')}"
        )
    for c in snapshot.cpus:
        if c.spinning_on:
            lines.append(f"{c.cpu} spins on {c.spinning_on}")
    return lines
