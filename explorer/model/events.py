"""Trace events: what a trace asks the simulated machine to do.

Frozen value objects (h11's style). Every event carries ``line`` (its 1-based line in the trace
file, 0 for events built in code), ``t`` (logical time: consecutive events with an equal ``t``
run concurrently under the schedule; ``None`` runs alone, in file order) and ``note`` (narration
shown when the event starts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    op: ClassVar[str] = ""
    line: int = 0
    t: int | None = None
    note: str | None = None

    def describe(self) -> str:
        """Short human text, e.g. ``fault vcpu=0 gfn=0x1000``."""
        parts = [self.op]
        for name in self.__slots__:
            value = getattr(self, name)
            if value is None:
                continue
            if name in ("gfn", "pfn"):
                value = hex(value)
            elif name in ("tables", "control"):
                value = ",".join(hex(v) for v in value)
            parts.append(f"{name}={value}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class TdCreate(Event):
    """KVM_CREATE_VM + KVM_TDX_INIT_VM: TDR and TDCS control pages, HKID, mirror root."""

    op: ClassVar[str] = "td_create"
    td: int
    #: the TDR then TDCS pages' pfns (``tdx_alloc_control_page``'s gets in a kernel capture);
    #: None: the allocator picks them
    control: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VcpuCreate(Event):
    """KVM_CREATE_VCPU + KVM_TDX_INIT_VCPU: TDVPR and TDCX control pages, empty caches."""

    op: ClassVar[str] = "vcpu_create"
    td: int
    vcpu: int
    #: the TDVPR then TDCX pages' pfns (as ``TdCreate.control``); None: the allocator picks
    control: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TdFinalize(Event):
    """KVM_TDX_FINALIZE_VM (TDH.MR.FINALIZE): later faults use PAGE.AUG instead of PAGE.ADD."""

    op: ClassVar[str] = "td_finalize"
    td: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault(Event):
    """An EPT violation on a private gfn, handled by ``tdx_handle_ept_violation``."""

    op: ClassVar[str] = "fault"
    vcpu: int
    gfn: int
    pfn: int | None = None  # host page for the guest page (must be free); None: allocator picks
    level: str = "4k"  # "4k" | "2m" (2m is rejected by v6 with KVM_BUG_ON)
    #: the S-EPT table pages this fault links, in the order it links them (the kernel's
    #: ``tdx_pamt_get`` on each table page); None (or fewer than it links): from the vCPU's cache
    tables: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Zap(Event):
    """Zap of one private guest page (PAGE.REMOVE, then ``tdx_pamt_put``)."""

    op: ClassVar[str] = "zap"
    td: int
    gfn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VcpuFree(Event):
    """``tdx_vcpu_free``: the vCPU's caches are freed; its control pages wait for teardown."""

    op: ClassVar[str] = "vcpu_free"
    vcpu: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TdDestroy(Event):
    """TD teardown in the kernel's order (frees its remaining vCPUs too)."""

    op: ClassVar[str] = "td_destroy"
    td: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Inject(Event):
    """Make the next ``count`` occurrences of ``what`` fail (see ``constants.INJECTIONS``)."""

    op: ClassVar[str] = "inject"
    what: str
    count: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Note(Event):
    """Narration only; changes nothing."""

    op: ClassVar[str] = "note"
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule(Event):
    """Pin the interleaving of its group (the events with its ``t``): ``order`` names the CPU
    that takes each turn (``vcpuN``, ``tdN``), first to last; past its end the configured
    schedule goes on. What ``python -m explorer explore`` writes to replay a schedule it found.
    Changes nothing else (an instant step, like ``note``)."""

    op: ClassVar[str] = "schedule"
    order: tuple[str, ...]


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """The ``__set__`` of a slot's member descriptor (bypasses a frozen class's __setattr__)."""
    setter: Callable[[object, Any], None] = vars(cls)[name].__set__
    return setter


def slot_setters(cls: type[Event]) -> dict[str, Callable[[object, Any], None]]:
    """Every field of ``cls`` (``line``, ``t`` and ``note`` included) -> the ``__set__`` of its
    slot, for bulk builders: ``object.__new__(cls)`` with every one of these
    called once is equal to ``cls(...)`` with the same values (no validation: the caller has
    validated them). The parser's bulk path (:mod:`explorer.ingest.parse`) builds its events so."""
    out: dict[str, Callable[[object, Any], None]] = {}
    for klass in reversed(cls.__mro__):
        for name in vars(klass).get("__slots__", ()):
            out[name] = _slot_setter(klass, name)
    return out


EVENT_TYPES: dict[str, type[Event]] = {
    cls.op: cls
    for cls in (
        TdCreate,
        VcpuCreate,
        TdFinalize,
        Fault,
        Zap,
        VcpuFree,
        TdDestroy,
        Inject,
        Note,
        Schedule,
    )
}


def reserved_pfns(events: Sequence[Event]) -> list[int]:
    """The pages a replay of ``events`` reserves before its first event: every pinned page
    (:func:`pinned_pfns`) when the trace names an S-EPT table or a control page (an imported
    kernel capture: the kernel's allocator chose all of them, so the model's must take none of
    them early, as ``conform`` replays it), and none otherwise (a hand-written trace's fault
    ``pfn`` is taken when its fault comes, as the trace format has always said: its replays and
    goldens do not change)."""
    for ev in events:
        if (isinstance(ev, Fault) and ev.tables) or (
            isinstance(ev, (TdCreate, VcpuCreate)) and ev.control
        ):
            return pinned_pfns(events)
    return []


def pinned_pfns(events: Sequence[Event]) -> list[int]:
    """Every page ``events`` pin (a fault's ``pfn`` and ``tables``, a TD's or vCPU's
    ``control``): what the model's allocator must leave alone for the whole replay
    (:meth:`explorer.model.memory.HostMemory.pin`), so each is free when its event takes it.
    A replay of a trace that pins pages (an imported kernel capture) pins these first."""
    out: list[int] = []
    for ev in events:
        if isinstance(ev, Fault):
            if ev.pfn is not None:
                out.append(ev.pfn)
            if ev.tables:
                out.extend(ev.tables)
        elif isinstance(ev, (TdCreate, VcpuCreate)) and ev.control:
            out.extend(ev.control)
    return out
