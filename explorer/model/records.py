"""What the engine reports: steps with their effects, diagnostics, and state snapshots.

These are the contract between the engine and everything above it (timeline, CLI, views). A
:class:`Snapshot` is a plain, immutable picture of the whole machine after a step, made only
when asked for (the app's cursor, a golden file), never per step in bulk replays.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from explorer.model.constants import PAGES_PER_REGION, PAGES_PER_REGION_SHIFT
from explorer.model.packed import SparseGroup, group_regions, layered_map
from explorer.model.settings import Settings

#: Page owners in the kernel's view, one byte per 4 KiB page. ``in_hand`` is a page popped from
#: a cache or just allocated, held by a CPU between two steps (never at a quiescent point).
OWNERS = (
    "free",
    "pamt_pair",
    "pamt_cache",
    "kvm_cache",
    "sept",
    "mirror",
    "control",
    "guest",
    "leaked",
    "in_hand",
)
OWNER_CODE = {name: code for code, name in enumerate(OWNERS)}

#: The page-accounting categories of the JSON summary (they sum to ``total``). KVM's mirror
#: page-table pages count as ``sept``: they shadow the S-EPT tables one for one.
SUMMARY_PAGE_KEYS = (
    "total",
    "free",
    "pamt_pair",
    "pamt_cache",
    "kvm_cache",
    "sept",
    "control",
    "guest",
    "leaked",
)


class Effect(NamedTuple):
    """One state change of a step: ``kind`` names the state, ``key`` the item."""

    kind: str  # refcount | pair | orphan | page | pamt_cache | kvm_cache | lock | sept | map | tdx_page | td | vcpu | inject
    key: Any
    old: Any
    new: Any


class Diagnostic(NamedTuple):
    step: int  # index of the step it was raised at (-1 before any step)
    event: int  # index of the trace event being run
    line: int  # trace line of that event (0 if built in code)
    kind: str  # violation | warning | livelock | error
    code: str  # e.g. INV1_REFCOUNT_PAIR, WARN_PAMT_REMOVE, LIVELOCK, KVM_BUG_ON, IMPOSSIBLE
    message: str


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    event: int  # index of the trace event this step belongs to
    line: int
    cpu: str  # the simulated CPU: each vCPU thread ("vcpu0") and VM thread ("td0") has its own
    function: str  # kernel function, e.g. "tdx_pamt_get"
    label: str  # stable label, e.g. "pamt_get.lost_race" (see explorer.model.narration)
    narration: str
    effects: tuple[Effect, ...] = ()
    counters: tuple[tuple[str, int], ...] = ()  # counters changed by this step (new values)
    diagnostics: tuple[Diagnostic, ...] = ()
    #: the same counters' values before the step (for "what changed": old -> new)
    counters_before: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class CpuView:
    cpu: str
    event: int | None  # event index it is running, None when idle
    function: str | None  # function of its last step
    label: str | None
    narration: str
    stack: tuple[str, ...]  # kernel call stack, outermost first
    spinning_on: str | None  # "pamt_lock" | "mmu_lock" while spinning
    holds: tuple[str, ...]  # locks held: "pamt_lock", "mmu_lock(read)", "mmu_lock(write)"


@dataclass(frozen=True, slots=True)
class KvmCacheView:
    name: str  # pte_list_desc | external_spt | shadow_page | page_header (| pamt_shared in v4)
    objects: bool  # True: slab objects (no host pages); False: host pages
    min: int
    capacity: int
    count: int
    pfns: tuple[int, ...]  # bottom .. top (top pops first); empty for object caches


@dataclass(frozen=True, slots=True)
class VcpuView:
    vcpu: int
    td: int
    alive: bool
    pamt_cache: tuple[int, ...]  # bottom .. top (the head of the kernel's list is the top)
    pamt_target: int  # 2 * dpamt_gets_per_fault
    kvm_caches: tuple[KvmCacheView, ...]
    control_pfns: tuple[int, ...]  # TDVPR then TDCX


@dataclass(frozen=True, slots=True)
class TdView:
    td: int
    state: str  # created | finalized | bugged | destroyed
    hkid: int | None
    vcpus: tuple[int, ...]
    control_pfns: tuple[int, ...]  # TDR then TDCS
    mapped: int  # guest pages mapped
    sept_tables: int  # non-root S-EPT tables linked
    mmu_lock_writer: str | None = None  # this VM's kvm->mmu_lock
    mmu_lock_readers: tuple[str, ...] = ()


class RegionCounts(Mapping[int, tuple[int, ...]]):
    """A snapshot's pages per owner of every touched region (region -> ``len(OWNERS)`` counts),
    in region order; regions not listed are entirely free.

    Built in layers, read when asked: the regions whose counts the machine had built
    (``built``), and for the others the owner maps of a restored machine's keyframe (``base``:
    sparse groups, see :class:`explorer.model.packed.SparseGroup`) with the pages its deltas
    changed on top (``pfns`` ascending, owner ``values``). A seek's machine builds only the
    regions it touched, so a snapshot of a host whose allocations scatter over tens of
    thousands of regions does not count each of them; a reader that wants all of them at once
    takes :meth:`layers` (``explorer.views.frames`` counts them with numpy). Immutable: every
    layer is either copied or never changed by the machine."""

    def __init__(
        self,
        built: dict[int, tuple[int, ...]],
        base: dict[int, SparseGroup] | None = None,
        pfns: array[int] | None = None,
        values: bytes = b"",
    ) -> None:
        self._built = built
        self._base = base
        self._pfns: array[int] = array("i") if pfns is None else pfns
        self._values = values
        self._keys: list[int] | None = None

    def __getitem__(self, region: int) -> tuple[int, ...]:
        counts = self._built.get(region)
        if counts is not None:
            return counts
        if self._base is None and not self._pfns:
            raise KeyError(region)
        owners = layered_map(self._base, self._pfns, self._values, region, PAGES_PER_REGION)
        if owners is None:
            raise KeyError(region)
        return tuple([owners.count(code) for code in range(len(OWNERS))])

    def _sorted(self) -> list[int]:
        if self._keys is None:
            if self._base is None and not self._pfns:
                self._keys = sorted(self._built)
            else:
                keys = set(self._built)
                for g, group in (self._base or {}).items():
                    keys.update(group_regions(g, group))
                keys.update([p >> PAGES_PER_REGION_SHIFT for p in self._pfns])
                self._keys = sorted(keys)
        return self._keys

    def __iter__(self) -> Iterator[int]:
        return iter(self._sorted())

    def __len__(self) -> int:
        return len(self._sorted())

    def __bool__(self) -> bool:
        return bool(self._built) or bool(self._base) or bool(self._pfns)

    def layers(
        self,
    ) -> tuple[dict[int, tuple[int, ...]], dict[int, SparseGroup] | None, array[int], bytes]:
        """(built counts, keyframe groups or None, changed pages, their owners): see above."""
        return self._built, self._base, self._pfns, self._values

    def __repr__(self) -> str:
        return f"RegionCounts({dict(self.items())!r})"


@dataclass(frozen=True)
class Snapshot:
    """The whole machine after step ``step`` (-1: before the first step)."""

    step: int
    event: int
    settings: Settings
    nr_regions: int
    #: region -> pages of that region per owner (len(OWNERS) counts); regions not listed are
    #: entirely free.
    region_owners: Mapping[int, tuple[int, ...]]
    refcount: dict[int, int]  # regions with a non-zero refcount
    pairs: dict[int, tuple[int, int]]  # regions with a PAMT page pair, per the TDX module
    orphans: dict[int, int]  # references left by failed PAMT.REMOVEs
    vcpus: tuple[VcpuView, ...]
    tds: tuple[TdView, ...]
    cpus: tuple[CpuView, ...]
    pamt_lock: str | None  # holder
    #: kvm->mmu_lock is per VM (see TdView); these two aggregate over all TDs for a quick look
    mmu_lock_writer: str | None
    mmu_lock_readers: tuple[str, ...]
    counters: dict[str, int]
    pages: dict[str, int]  # SUMMARY_PAGE_KEYS plus "mirror" and "in_hand" breakdowns
    injections: dict[str, int]  # pending injected failures
    extra: dict[str, Any] = field(default_factory=dict)  # mode-specific (e.g. mempool reserve)
