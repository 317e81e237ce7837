"""Plain-text rendering of steps: the ``replay`` CLI output and the sample goldens.

One line per step: ``index  cpu  function  label  | effects | counters`` with pfns in hex, so a
diff of two goldens reads like a diff of two kernel traces. Diagnostics follow their step on
lines of their own, prefixed ``!``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from explorer.model.records import Effect, Step

#: Effect kinds whose key is a pfn and whose values are owners.
_PFN_KEYS = {"page"}


def _value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return "(" + ",".join(_value(x) for x in v) + ")"
    return str(v)


def format_effect(e: Effect, *, hex_values: bool = False) -> str:
    """``kind[key] old->new``; page keys, pair values and guest mappings in hex."""
    key = e.key
    if e.kind in _PFN_KEYS and isinstance(key, int):
        key_text = f"{key:#x}"
    elif isinstance(key, tuple):
        key_text = ",".join(
            f"{k:#x}" if e.kind in ("leaf", "gmem") and i == 1 else str(k)
            for i, k in enumerate(key)
        )
    else:
        key_text = str(key)
    old, new = e.old, e.new
    if e.kind == "pair":
        old = tuple(f"{p:#x}" for p in old) if old else None
        new = tuple(f"{p:#x}" for p in new) if new else None
    elif e.kind in ("leaf", "gmem"):
        old = f"{old:#x}" if isinstance(old, int) else old
        new = f"{new:#x}" if isinstance(new, int) else new
    return f"{e.kind}[{key_text}] {_value(old)}->{_value(new)}"


def format_step(step: Step) -> str:
    effects = "; ".join(format_effect(e) for e in step.effects)
    counters = " ".join(f"{k}={v}" for k, v in step.counters)
    line = f"{step.index:6d} {step.cpu:<7} {step.function:<30} {step.label:<24}"
    if effects:
        line += f" | {effects}"
    if counters:
        line += f" | {counters}"
    return line.rstrip()


def format_steps(steps: Iterable[Step]) -> Iterable[str]:
    """Lines for ``steps``, each step's diagnostics after it."""
    for step in steps:
        yield format_step(step)
        for d in step.diagnostics:
            yield f"     ! {d.kind} {d.code} (line {d.line}): {d.message}"
