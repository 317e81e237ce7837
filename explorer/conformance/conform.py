"""Does the MODEL do what the kernel did? Replay the imported capture, align per thread.

:func:`conform` imports a capture (:func:`explorer.conformance.importer.import_capture`: one TD
per TDX VM, leaf pfns pinned, concurrent faults pinned to the kernel's interleaving by
``schedule`` events), replays that trace on the engine (:mod:`explorer.model`: ``tdx_pamt_get``
/ ``tdx_pamt_put`` in ``dpamt.py``, the fault path in ``kvm.py``) and compares what each side
did, per simulated CPU (a vCPU's fault windows; a TD's other work: creation, zaps, teardown on
whatever thread ran it). Nothing here knows the v6 rules: the verdict is the engine's.

Each side becomes a sequence of operations per CPU (a "lane"): a fault and each of its
attempts, a top-up, a get (its return and path: fast, PAMT.ADD, lost race, failure; the PAMT.ADD
region; the cache count after), a put (its region, PAMT.REMOVE), a cache free (the count it
frees), a control page allocated or freed, an SPTE map / zap / removed-table leaf, a teardown.
The two lanes are aligned on the operations' kinds with anchors (a run of equal kinds; after a
mismatch, the nearest resynchronisation, fewest operations skipped): a kernel operation left
over is ``unexplained`` at its own line, a model operation left over is ``<kind>.missing``
after the last kernel record that matched; aligned operations are compared field by field
(regions and caches through a one-to-one map, kernel -> model, built as they are met: only the
leaf pages are the kernel's own pfns). Every record is ignored (per reason), part of a matched
operation, or part of a divergence.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, Final, NamedTuple, overload

from explorer.conformance.importer import (
    KVM_PROBES,
    ImportedTrace,
    field_int,
    import_capture,
    spte_kind,
    spte_pfn,
)
from explorer.ingest.capture import Capture, Record
from explorer.ingest.gcpause import gc_paused
from explorer.model.constants import TDX_DPAMT_ENTRY_PAGE_CNT
from explorer.model.events import pinned_pfns
from explorer.model.machine import Machine
from explorer.model.records import Effect
from explorer.model.settings import Settings


@dataclass(frozen=True)
class Divergence:
    line: int
    kind: str
    observed: Any
    predicted: Any
    step: int


class Match(NamedTuple):
    """An operation on which the kernel and the model agree (a tuple: there are many)."""

    line: int
    kind: str
    value: Any
    step: int


class Matches(Sequence[Match]):
    """A conformance's matches sorted by (step, line), built on first use: there is one per
    operation, and only the app's markers read them (``conform`` on the command line and its
    ``--json`` do not), so a million are not built for nothing.

    ``observed``: (line, kind, value, x) tuples. With ``starts`` (the record position each event
    starts at, ascending) and ``steps`` (each event's first step, -1: never ran), ``x`` is a
    record position, in ascending order, and a match takes the step of the last event begun at
    or before it; without them (``None``), ``x`` is the step itself. :meth:`of_ops`: the kernel's
    matched :class:`Op` and the model's step of each, made tuples (the op shown, :func:`_shown`)
    only when the matches are built.
    """

    def __init__(
        self,
        observed: list[tuple[int, str, Any, int]],
        starts: Sequence[int] | None = None,
        steps: Sequence[int] | None = None,
    ) -> None:
        self._kops: list[Op] | None = None
        self._ksteps: list[int] | None = None
        self._observed: list[tuple[int, str, Any, int]] | None = observed
        self._starts = starts
        self._steps = steps
        self._items: list[Match] | None = None

    @classmethod
    def of_ops(cls, ops: list[Op], steps: list[int]) -> Matches:
        """The matches of :func:`conform`: ``ops[i]`` (a kernel operation) matched at model step
        ``steps[i]`` (two lists, not a tuple per match: a million matches)."""
        out = cls([])
        out._kops, out._ksteps = ops, steps
        return out

    def _built(self) -> list[Match]:
        if self._items is None:
            with gc_paused():  # a million tuples, no cycles among them
                self._items = self._build()
            self._observed = None
        return self._items

    def _build(self) -> list[Match]:
        assert self._observed is not None
        starts, steps = self._starts, self._steps
        if self._kops is not None and self._ksteps is not None:  # each operation shown now
            self._observed = [
                (o.recs[0].line, o.kind, _shown(o), s)
                for o, s in zip(self._kops, self._ksteps, strict=True)
            ]
            self._kops = self._ksteps = None
        if starts is None or steps is None:
            items = [_new_match(Match, o) for o in self._observed]
        else:
            items = []
            e, nxt, cur = -1, (starts[0] if starts else 1 << 62), -1
            for line, kind, value, pos in self._observed:  # positions ascend: one sweep
                while pos >= nxt:
                    e += 1
                    cur = steps[e] if e < len(steps) else -1
                    nxt = starts[e + 1] if e + 1 < len(starts) else 1 << 62
                items.append(_new_match(Match, (line, kind, value, cur)))
        items.sort(key=itemgetter(3, 0))  # (step, line)
        return items

    def __len__(self) -> int:
        if self._kops is not None:
            return len(self._kops)
        return len(self._observed) if self._observed is not None else len(self._built())

    @overload
    def __getitem__(self, i: int) -> Match: ...

    @overload
    def __getitem__(self, i: slice) -> list[Match]: ...

    def __getitem__(self, i: int | slice) -> Match | list[Match]:
        return self._built()[i]

    def __iter__(self) -> Iterator[Match]:
        return iter(self._built())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Matches | list | tuple):
            return self._built() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like the list it stands for

    def __repr__(self) -> str:
        return f"Matches({self._built()!r})"


#: ``Match``'s fields from one tuple, without the keyword-argument ``__new__`` (``Matches``).
_new_match = tuple.__new__


@dataclass(frozen=True)
class Conformance:
    """``ok`` when no divergence; ``observations`` the records compared; ``unexplained`` the
    kernel's operations the model did not do (each also a divergence of kind ``unexplained``);
    ``ignored`` the records set aside per reason. ``matches`` is for the app (not in --json)."""

    ok: bool
    observations: int
    divergences: list[Divergence]
    stopped: str | None = None
    matches: Sequence[Match] = field(default_factory=list)
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "observations": self.observations,
            "divergences": [asdict(d) for d in self.divergences],
            "unexplained": self.unexplained,
            "ignored": self.ignored,
        }
        if self.stopped is not None:
            out["stopped"] = self.stopped
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


class Op:
    """One operation of one side: ``kind``; ``recs`` (kernel) the records it covers, first the
    one it is reported at; ``step`` (model) where it happened. A model operation covers no
    record: its ``recs`` is the one shared empty list :data:`_NO_RECS` (a million operations:
    one list less each to build and free), never appended to (only :func:`kernel_lanes`
    appends, to its own operations).

    Its fields are typed slots, ``None`` (or the value given) where the kind has no such field:
    a million operations over both sides, so no dict per operation (its memory and page
    faults). ``gfn`` (fault, map.leaf, zap); ``pfn`` (kernel get, put, map.leaf); ``cache``
    (kernel: the cache a get or top-up names); ``before`` / ``after`` (a cache's count around
    the call); ``ret`` (the call's return; kernel: None when its record never came); ``path``
    (a get's: fast, added, ...); ``probed`` (kernel put: PAMT.ADD/REMOVE are probed);
    ``shared_topups`` (kernel cache free: :func:`_free_count`); ``add`` / ``remove`` (kernel:
    the PAMT.ADD / PAMT.REMOVE region and line); ``vcpu`` and ``region`` (model: whose cache,
    which 2M region); ``remove_step`` (model put: the PAMT.REMOVE's step, -1: none)."""

    __slots__ = (
        "add",
        "after",
        "before",
        "cache",
        "gfn",
        "kind",
        "path",
        "pfn",
        "probed",
        "recs",
        "region",
        "remove",
        "remove_step",
        "ret",
        "shared_topups",
        "step",
        "vcpu",
    )

    def __init__(self, kind: str, step: int = -1, rec: Record | None = None) -> None:
        self.kind = kind
        self.step = step
        self.recs: list[Record] = [rec] if rec is not None else _NO_RECS
        self.gfn: int | None = None
        self.pfn = 0
        self.cache: int | None = None
        self.before: int | None = None
        self.after: int | None = None
        self.ret: int | None = None
        self.path: str | None = None
        self.probed = False
        self.shared_topups: Sequence[list[Any]] = ()
        self.add: tuple[int, int] | None = None
        self.remove: tuple[int, int] | None = None
        self.remove_step = -1
        self.vcpu: int | None = None
        self.region: int | None = None


_NO_RECS: list[Record] = []


_CALLS = {
    "tdx_pamt_get.entry": "get",
    "tdx_pamt_put.entry": "put",
    "tdx_topup_pamt_cache.entry": "topup",
    "tdx_free_pamt_cache.entry": "cache_free",
    "tdx_alloc_control_page.entry": "control.alloc",
    "tdx_free_control_page.entry": "control.free",
}
_RETURNS = {
    "tdx_pamt_get.return": "get",
    "tdx_pamt_put.return": "put",
    "tdx_topup_pamt_cache.return": "topup",
    "tdx_free_pamt_cache.return": "cache_free",
    "tdx_alloc_control_page.return": "control.alloc",
    "tdx_free_control_page.return": "control.free",
}
#: Records of the fault path: they stay in their thread's fault window.
_FAULT_PATH = frozenset(
    [
        "kvm_mmu_page_fault",
        "tdx_topup_pamt_cache.entry",
        "tdx_topup_pamt_cache.return",
        "tdx_pamt_get.entry",
        "tdx_pamt_get.return",
        "tdh_phymem_pamt_add.entry",
        "tdh_phymem_pamt_add.return",
        "tdx_pamt_put.entry",
        "tdx_pamt_put.return",
        "tdh_phymem_pamt_remove.entry",
        "tdh_phymem_pamt_remove.return",
    ]
)


def _num(fields: dict[str, Any], key: str) -> int:
    """``fields[key]`` when it is a number, else 0 (a missing or non-numeric field)."""
    v = fields.get(key, 0)
    return v if v.__class__ is int else 0


def kernel_lanes(imp: ImportedTrace) -> tuple[dict[str, list[Op]], dict[str, int], int]:
    """The kernel's operations per model CPU, the records ignored per reason, and the number
    of records compared. A record in a fault window of a vCPU thread (from its
    ``kvm_page_fault`` to its next record off the fault path) is that vCPU's (``vcpuN``, the
    import's number); any other record of a TD is the TD's (``tdN``)."""
    att = imp.attribution
    assert att is not None  # import_capture always sets it
    ignored = dict(att.ignored())
    lanes: dict[str, list[Op]] = {}
    window: dict[int, list[Op]] = {}  # tid -> the vCPU lane of its open fault window
    open_call: dict[tuple[int, str], Op] = {}  # (tid, call kind) -> operation
    vcpu_names = {k: f"vcpu{v}" for k, v in imp.vcpus.items()}
    compared = 0
    adds_probed = any(r.probe.startswith("tdh_phymem_pamt_") for r in att.order)
    shared: set[int] = set()  # threads in a shared-GPA fault (no model event: KVM's own EPT)
    # A shared-GPA fault's top-up (no model event) per cache, [npages, ret], until a replayed
    # top-up of that cache subsumes it: the cache's free is compared with it applied.
    shared_topups: dict[int, list[list[Any]]] = {}
    shared_open: dict[int, list[Any]] = {}  # tid -> its shared top-up awaiting the return
    # The loop runs once per record (a million): lookups bound to locals, each lane's list
    # found once per TD or fault window (not by name per record), spte_kind computed once.
    why, vm_of, tds, init_at, vms = att.why, att.vm_of, imp.tds, imp.init_at, att.vms
    fault_path, calls, returns, kvm_probes = _FAULT_PATH, _CALLS, _RETURNS, KVM_PROBES
    td_ops: dict[int, list[Op]] = {}  # td -> its lane
    n_shared = n_novm = n_init = 0
    for r, w, k in zip(att.order, why, vm_of, strict=True):
        p = r.probe
        if w is not None and p in kvm_probes:
            if p == "kvm_page_fault":
                if w == "shared-gpa":
                    shared.add(r.tid)
                else:
                    shared.discard(r.tid)
            continue
        tid = r.tid
        if shared and tid in shared:
            if p in fault_path:  # the top-up tdx_handle_ept_violation does for any fault
                n_shared += 1
                if p == "tdx_topup_pamt_cache.entry":  # remembered for the cache's free
                    unreplayed = [_num(r.fields, "npages"), None]
                    shared_topups.setdefault(_num(r.fields, "cache"), []).append(unreplayed)
                    shared_open[tid] = unreplayed
                elif p == "tdx_topup_pamt_cache.return" and tid in shared_open:
                    shared_open.pop(tid)[1] = _num(r.fields, "ret")
                continue
            shared.discard(tid)
        td = tds.get(k, -1) if k else -1
        if td < 0:
            n_novm += 1
            continue
        fs = r.fields
        tdl = td_ops.get(td)
        if tdl is None:
            tdl = td_ops[td] = lanes.setdefault(f"td{td}", [])
        kind = ""
        if p == "kvm_tdp_mmu_spte_changed":
            old, new = _num(fs, "old_spte"), _num(fs, "new_spte")
            kind = spte_kind(old, new)
        if p == "kvm_page_fault":
            ops = lanes.setdefault(vcpu_names[(td, _num(fs, "vcpu"))], [])
            window[tid] = ops
        elif p not in fault_path and kind != "map":
            window.pop(tid, None)
            ops = tdl
        elif tid not in window and r.line in init_at:
            # KVM_TDX_INIT_MEM_REGION: that vCPU's fault before the finalize (import_capture)
            ops = window[tid] = lanes.setdefault(f"vcpu{init_at[r.line]}", [])
        else:
            ops = window.get(tid, tdl)
        if ops is tdl and _init_mem_region(r, open_call, kind):
            n_init += 1
            continue
        compared += 1
        call = calls.get(p)
        if call is not None:
            op = Op(call, -1, r)
            if call == "get":
                op.pfn = _num(fs, "pfn")
                op.cache = _num(fs, "cache")
                op.before = _num(fs, "cache_count")
            elif call == "put":
                op.pfn = _num(fs, "pfn")
                op.probed = adds_probed
            elif call in ("topup", "cache_free"):
                c = op.cache = _num(fs, "cache")
                op.before = _num(fs, "cache_count")
                if shared_topups:
                    pending = shared_topups.pop(c, None)
                    if pending is not None and call == "cache_free":
                        op.shared_topups = pending
            open_call[(tid, call)] = op
            ops.append(op)
            continue
        ret = returns.get(p)
        if ret is not None:
            op2 = open_call.pop((tid, ret), None)
            if op2 is None:
                ops.append(_stray(r))
                continue
            op2.recs.append(r)
            op2.ret = _num(fs, "ret")
            if op2.before is not None:
                op2.after = _num(fs, "cache_count")
            if ret == "get":
                op2.path = _kernel_path(op2, adds_probed)
            continue
        if p.startswith("tdh_phymem_pamt_"):
            owner = open_call.get((tid, "get" if "_add" in p else "put"))
            if owner is None:
                ops.append(_stray(r))
                continue
            owner.recs.append(r)
            if p.endswith(".entry") and "_add" in p:
                owner.add = (_num(fs, "pfn") >> 9, r.line)
            elif p.endswith(".entry"):
                owner.remove = (_num(fs, "pfn") >> 9, r.line)
            continue
        if p == "kvm_page_fault":
            gfn = (_num(fs, "gpa") >> 12) & ~(1 << (vms[k].shared_bit - 12))
            op = Op("fault", -1, r)
            op.gfn = gfn
        elif p == "kvm_mmu_page_fault":
            op = Op("attempt", -1, r)
        elif p == "kvm_arch_pre_destroy_vm":
            op = Op("teardown", -1, r)
        else:  # kvm_tdp_mmu_spte_changed
            level = _num(fs, "level")
            if kind == "map" and level == 1:
                op = Op("map.leaf", -1, r)
                op.gfn, op.pfn = _num(fs, "gfn"), spte_pfn(new)
            elif kind == "map":
                op = Op("map.table", -1, r)
            elif kind in ("zap", "frozen") and level == 1:
                op = Op(kind, -1, r)
                op.gfn = _num(fs, "gfn")
            elif kind in ("zap", "frozen"):
                op = Op("table.zap", -1, r)
            else:
                op = _stray(r)
        ops.append(op)
    for why_, n in (
        ("shared-gpa", n_shared),
        ("no-vm-context", n_novm),
        ("init-mem-region", n_init),
    ):
        if n:
            ignored[why_] = ignored.get(why_, 0) + n
    return (
        {n: fold_retries(ops) for n, ops in lanes.items() if ops},
        dict(sorted(ignored.items())),
        compared,
    )


def fold_retries(ops: list[Op]) -> list[Op]:
    """A fault attempt that did nothing but top up before the next attempt of the same fault
    (``RET_PF_RETRY`` before any PAMT operation: a stale fault, a frozen SPTE) folded into that
    next attempt: its top-ups only refill the cache the next attempt tops up again. Applied to
    both sides alike, so the kernel may retry where the model did not (the trace format has
    no event for the cause, ``is_page_fault_stale``) and the other way round. (The attempts
    are found by ``list.index`` over the kinds and the runs between them copied as slices: a
    lane holds hundreds of thousands of operations.)"""
    kinds = list(map(_KIND, ops))
    n = len(ops)
    out: list[Op] = []
    last = i = 0  # ops[last:] not copied yet; i: where the next attempt is looked for
    while True:
        try:
            i = kinds.index("attempt", i)
        except ValueError:
            break
        j = i + 1
        while j < n and kinds[j] == "topup":
            j += 1
        if j < n and kinds[j] == "attempt":
            nxt = ops[j]
            nxt.recs = [x for o in ops[i : j + 1] for x in o.recs]
            out += ops[last:i]
            last = j
        i = j
    if not last:
        return ops
    out += ops[last:]
    return out


_KIND = attrgetter("kind")


def _stray(r: Record) -> Op:
    return Op("stray:" + r.probe, -1, r)


def _init_mem_region(r: Record, open_call: dict[tuple[int, str], Op], spte: str) -> bool:
    """``KVM_TDX_INIT_MEM_REGION`` (``kvm_tdp_mmu_map_private_pfn`` on a VMM thread with a vCPU's cache,
    no ``kvm_page_fault``): its top-up, gets with a cache and maps. The trace format has no
    event for it (the model builds a TD without its initial image): ignored, counted."""
    p = r.probe
    if p in ("tdx_topup_pamt_cache.entry", "tdx_pamt_get.entry"):
        return field_int(r, "cache") != 0
    if p in ("tdx_topup_pamt_cache.return", "tdx_pamt_get.return"):
        call = "topup" if p.startswith("tdx_topup") else "get"
        return (r.tid, call) not in open_call
    if p.startswith("tdh_phymem_pamt_add"):
        return (r.tid, "get") not in open_call
    if p == "kvm_tdp_mmu_spte_changed":
        return spte == "map"  # (spte_kind of the record, computed by the caller)
    return False


def _kernel_path(op: Op, adds_probed: bool) -> str:
    """The path the kernel's get took, as far as its records show it: ``fast``, ``added``,
    ``lost_race``, ``failed``, ``slow`` (added or lost: no PAMT.ADD probe), ``fast|lost_race``
    (no cache count, PAMT.ADD probed but not seen) or ``?`` (neither)."""
    if op.ret:
        return "failed"
    if op.add is not None:
        return "added"
    before = op.before if op.before is not None else -1
    after = op.after if op.after is not None else -1
    if op.cache and before >= 0:
        if before == after:
            return "fast"
        if before - after == 2:
            return "lost_race" if adds_probed else "slow"
        return f"cache {before} -> {after}"
    return "fast|lost_race" if adds_probed else "?"


_PATH_OK = {
    "slow": ("added", "lost_race"),
    "fast|lost_race": ("fast", "lost_race"),
    "?": ("fast", "added", "lost_race"),
}


# ------------------------------------------------------------------ the model's side
#: Each label :class:`_ModelRecorder` tests, as a small number: one dict lookup per step (a
#: million), then integer tests on ``Final`` constants (inlined by mypyc), not a chain of string
#: comparisons. Those from ``_GET_FAST`` on make an operation (or end one); a step with any
#: other label only updates a PAMT cache's count, unless a get or put is open (its region, its
#: end: the labels below ``_GET_FAST``).
_ADD: Final = 1
_LOST_RACE: Final = 2
_ENOMEM: Final = 3
_PARTIAL: Final = 4
_ADD_FAIL: Final = 5
_REMOVE: Final = 6
_REMOVE_FAIL: Final = 7
_GET_FAST: Final = 8
_GET_SLOW: Final = 9
_PUT_FAST: Final = 10
_PUT_SLOW: Final = 11
_CACHE_FREE: Final = 12
_TOPUP_FAIL: Final = 13
_TOPUP: Final = 14
_CACHE_FULL: Final = 15
_FAULT_BEGIN: Final = 16
_FAULT_RETRY: Final = 17
_PAGE_AUG: Final = 18
_PAGE_ADD: Final = 19
_SEPT_ADD: Final = 20
_ZAP: Final = 21
_SEPT_RECLAIM: Final = 22
_CONTROL_ALLOC: Final = 23
_CONTROL_RECLAIM: Final = 24
_TD_DESTROY: Final = 25
_LABEL_CODE: dict[str, int] = {
    "pamt_get.add": _ADD,
    "pamt_get.lost_race": _LOST_RACE,
    "pamt_get.enomem": _ENOMEM,
    "pamt_get.partial": _PARTIAL,
    "pamt_get.add_fail": _ADD_FAIL,
    "pamt_put.remove": _REMOVE,
    "pamt_put.remove_fail": _REMOVE_FAIL,
    "pamt_get.fast": _GET_FAST,
    "pamt_get.slow": _GET_SLOW,
    "pamt_put.fast": _PUT_FAST,
    "pamt_put.slow": _PUT_SLOW,
    "pamt_cache.free": _CACHE_FREE,
    "pamt_cache.topup_fail": _TOPUP_FAIL,
    "pamt_cache.topup": _TOPUP,
    "pamt_cache.full": _CACHE_FULL,
    "fault.begin": _FAULT_BEGIN,
    "fault.retry": _FAULT_RETRY,
    "page.aug": _PAGE_AUG,
    "page.add": _PAGE_ADD,
    "sept.add": _SEPT_ADD,
    "zap.page_remove": _ZAP,
    "sept.reclaim": _SEPT_RECLAIM,
    "control.alloc": _CONTROL_ALLOC,
    "control.reclaim": _CONTROL_RECLAIM,
    "td.destroy": _TD_DESTROY,
}


class _ModelRecorder:
    """The model's operations per CPU, from the replay's steps (labels and effects of
    explorer/model/dpamt.py and kvm.py), taken as they are committed (``on_lean_step``)."""

    def __init__(self, events: Any, attempts: bool, init_faults: frozenset[int]) -> None:
        self.events = events
        self.attempts = attempts
        self.init_faults = init_faults  # no kvm_page_fault / kvm_mmu_page_fault in the kernel
        self.lanes: dict[str, list[Op]] = {}
        self.cache: dict[int, int] = {}
        self.get: dict[str, Op] = {}
        self.put: dict[str, Op] = {}

    def __call__(
        self, index: int, event: int, cpu: str, fn: str, lab: str, effects: Sequence[Effect]
    ) -> None:
        """One committed step, as the engine's lean recording hands it over
        (:data:`explorer.model.state.LeanStep`)."""
        code = _LABEL_CODE.get(lab, 0)
        if code < _GET_FAST and not self.get and not self.put:
            # most steps (locks, SEAMCALLs, KVM's walk): only a PAMT cache count to keep
            # (effects unpacked as the tuples they are: no attribute lookups per effect)
            if effects:
                cache = self.cache
                for kind, key, _, new in effects:
                    if kind == "pamt_cache" and isinstance(new, int):
                        cache[key] = new
            return
        lane = self.lanes.get(cpu)
        if lane is None:
            lane = self.lanes[cpu] = []
        starts_get = code in (_GET_FAST, _GET_SLOW)
        g = self.get.get(cpu) if self.get else None
        if g is not None and (fn != "tdx_pamt_get" or starts_get):
            self._close_get(cpu, g)
            g = None
        pu = self.put.get(cpu) if self.put else None
        if pu is not None and (fn != "tdx_pamt_put" or code in (_PUT_FAST, _PUT_SLOW)):
            del self.put[cpu]
            pu = None
        for k, key, old, new in effects:
            if k == "pamt_cache" and isinstance(new, int):
                if code == _CACHE_FREE and not (lane and lane[-1].kind == "cache_free"):
                    op = Op("cache_free", index)
                    op.vcpu, op.before, op.after = key, old, 0
                    lane.append(op)
                self.cache[key] = new
            elif (k == "refcount" or k == "pair") and g is not None and g.region is None:
                g.region = key
            elif (k == "refcount" or k == "pair") and pu is not None and pu.region is None:
                pu.region = key
        if starts_get:
            op = Op("get", index)
            op.vcpu = int(cpu[4:]) if cpu.startswith("vcpu") else None
            op.path = "fast" if code == _GET_FAST else "slow"
            for k, key, _, _ in effects:
                if k == "refcount":
                    op.region = key
            lane.append(op)
            self.get[cpu] = op
            if code == _GET_FAST:
                op.ret = 0
        elif g is not None:
            if code == _ADD:
                g.path, g.ret = "added", 0
                for k, key, _, _ in effects:
                    if k == "pair":
                        g.region = key
            elif code == _LOST_RACE:
                g.path, g.ret = "lost_race", 0
            elif code in (_ENOMEM, _PARTIAL):
                g.path, g.ret = "failed", -12
            elif code == _ADD_FAIL:
                g.path, g.ret = "failed", -5
        elif code in (_PUT_FAST, _PUT_SLOW):
            op = Op("put", step=index)
            for k, key, _, _ in effects:
                if k == "refcount":
                    op.region = key
            lane.append(op)
            self.put[cpu] = op
        elif pu is not None and code in (_REMOVE, _REMOVE_FAIL):
            pu.remove_step = index
        elif fn == "tdx_topup_pamt_cache" and lab.startswith("pamt_cache."):
            op = Op("topup", step=index)
            v = int(cpu[4:]) if cpu.startswith("vcpu") else -1
            op.vcpu, op.after = v, self.cache.get(v, 0)
            op.ret = -12 if code == _TOPUP_FAIL else 0
            lane.append(op)
        elif code == _CACHE_FREE and not (lane and lane[-1].kind == "cache_free"):
            op = Op("cache_free", index)
            op.before, op.after = 0, 0
            lane.append(op)
        elif code in (_FAULT_BEGIN, _FAULT_RETRY) and event in self.init_faults:
            pass  # KVM_TDX_INIT_MEM_REGION: kvm_tdp_mmu_map_private_pfn, not a page fault
        elif code == _FAULT_BEGIN:
            op = Op("fault", index)
            op.gfn = getattr(self.events[event], "gfn", None)
            lane.append(op)
            if self.attempts:
                lane.append(Op("attempt", step=index))
        elif code == _FAULT_RETRY and self.attempts:
            lane.append(Op("attempt", step=index))
        elif code in (_PAGE_AUG, _PAGE_ADD):
            op = Op("map.leaf", index)
            op.gfn = getattr(self.events[event], "gfn", None)
            lane.append(op)
        elif code == _SEPT_ADD:
            lane.append(Op("map.table", step=index))
        elif code == _ZAP:
            lane.append(Op("zap" if self.events[event].op == "zap" else "frozen", index))
        elif code == _SEPT_RECLAIM:
            lane.append(Op("table.zap", step=index))
            lane.append(Op("control.free", step=index))
        elif code == _CONTROL_ALLOC:
            lane.append(Op("control.alloc", step=index))
        elif code == _CONTROL_RECLAIM:
            lane.append(Op("control.free", step=index))
        elif code == _TD_DESTROY:
            lane.append(Op("teardown", step=index))

    def _close_get(self, cpu: str, g: Op) -> None:
        del self.get[cpu]
        v = g.vcpu
        if v is not None:
            g.after = self.cache.get(v, 0)


# ------------------------------------------------------------------ alignment
_WINDOW = 24
_ANCHOR = 3


def _resync(k: list[Op], m: list[Op], i: int, j: int) -> tuple[int, int]:
    """At a mismatch of ``k[i]`` and ``m[j]`` (the kernel's and the model's operations of one
    CPU, aligned in order by :func:`_conform`: equal kinds pair): the operations to skip on each
    side (``a`` kernel, ``b`` model) to the nearest resynchronisation, ``_ANCHOR`` equal kinds in
    a row or the end, with the fewest operations skipped, kernel skips first on a tie; (1, 1)
    when none is within ``_WINDOW`` (one operation skipped on each side)."""
    for d in range(1, 2 * _WINDOW + 1):
        for a in range(min(d, _WINDOW), -1, -1):
            b = d - a
            if b > _WINDOW:
                continue
            if _anchored(k, m, i + a, j + b):
                return a, b
    return 1, 1


def _anchored(k: list[Op], m: list[Op], i: int, j: int) -> bool:
    n = min(_ANCHOR, len(k) - i, len(m) - j)
    if n <= 0:
        return i >= len(k) and j >= len(m)
    return all(k[i + x].kind == m[j + x].kind for x in range(n))


class _Bijection:
    """Kernel -> model, one to one, set as met (regions: only leaf pages are pinned)."""

    def __init__(self) -> None:
        self.fwd: dict[Any, Any] = {}
        self.back: dict[Any, Any] = {}

    def ok(self, kv: Any, mv: Any) -> bool:
        if kv is None or mv is None:
            return True
        f, b = self.fwd.get(kv), self.back.get(mv)
        if f is None and b is None:
            self.fwd[kv], self.back[mv] = mv, kv
            return True
        return bool(f == mv and b == kv)


# ------------------------------------------------------------------ conform
def conform(
    capture: Capture, settings: Settings | None = None, *, imported: ImportedTrace | None = None
) -> Conformance:
    """Import ``capture``, replay it on the engine (the imported settings unless ``settings``)
    and align the kernel's operations with the model's, per CPU (the module docstring).

    ``imported``: :func:`import_capture` of this ``capture``, when the caller has it (the app
    shows the trace and its conformance): its attribution and events are used, not derived
    again. The ``matches`` are built on first use (``conform --json`` never reads them)."""
    if imported is None:
        imported = import_capture(capture)
    att = imported.attribution
    if att is None or len(att.order) != len(capture.records):
        raise ValueError(f"imported is not import_capture() of {capture.source}")
    with gc_paused():  # a million operations, no reference cycles among them
        return _conform(capture, imported, settings)


def _conform(capture: Capture, imp: ImportedTrace, settings: Settings | None) -> Conformance:
    kern, ignored, compared = kernel_lanes(imp)
    attempts = any(r.probe == "kvm_mmu_page_fault" for r in capture.records)
    # the replay takes the kernel's pages (leaves, S-EPT tables, control pages): the
    # allocator leaves them alone, and a get is fast or PAMT.ADD in the same regions as there
    events = imp.events
    rec = _ModelRecorder(events, attempts, imp.init_faults)
    m = Machine(settings or imp.settings, record="lean", check=True)
    m.mem.pin(pinned_pfns(events))
    m.on_lean_step = rec  # (no Step built per step: the recorder reads only these fields)
    m.run(events)
    stopped: str | None = None
    if m.stopped is not None:  # where: the imported event and the capture lines it came from
        ev = m.stopped.event
        lines = imp.lines[ev] if 0 <= ev < len(imp.lines) else ()
        shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
        stopped = f"{m.stopped.message} (imported event {ev + 1}" + (
            f", from capture line(s) {shown})" if lines else ")"
        )
    rec.lanes = {n: fold_retries(ops) for n, ops in rec.lanes.items()}
    divs: list[Divergence] = []
    matched: list[Op] = []  # the kernel's operations matched, and the model's step of each
    matched_steps: list[int] = []
    unexplained: list[dict[str, Any]] = []
    regions, caches = _Bijection(), _Bijection()
    for c, v in imp.caches.items():  # each vCPU's cache as its own gets name it
        caches.ok(c, v)
    fielded = _COMPARED
    for lane in sorted(set(kern) | set(rec.lanes)):
        last_line, last_step = 0, -1
        ks, ms = kern.get(lane, []), rec.lanes.get(lane, [])
        i = j = 0
        nk, nm = len(ks), len(ms)
        # the pairs walked in place (no list of a million pairs built and freed)
        while i < nk or j < nm:
            if i < nk and j < nm:
                ko = ks[i]
                mo = ms[j]
                if ko.kind != mo.kind:
                    a, b = _resync(ks, ms, i, j)
                    for x in range(i, min(i + a, nk)):
                        _unexplained(ks[x], last_step, unexplained, divs)
                    for y in range(j, min(j + b, nm)):
                        _missing(ms[y], last_line, divs)
                    i, j = i + a, j + b
                    continue
                i += 1
                j += 1
                recs = ko.recs
                # (the commonest kinds carry no field to compare: _compare is not called)
                if ko.kind not in fielded:
                    matched.append(ko)
                    matched_steps.append(mo.step)
                else:
                    before = len(divs)
                    _compare(ko, mo, regions, caches, divs)
                    if len(divs) == before:
                        matched.append(ko)
                        matched_steps.append(mo.step)
                last_line = recs[0].line if len(recs) == 1 else _last_line(recs)
                last_step = mo.step
            elif i < nk:
                _unexplained(ks[i], last_step, unexplained, divs)
                i += 1
            else:
                _missing(ms[j], last_line, divs)
                j += 1
    divs.sort(key=lambda d: (d.line, d.kind))
    unexplained.sort(key=lambda u: u["line"])
    return Conformance(
        not divs and stopped is None,
        compared,
        divs,
        stopped,
        Matches.of_ops(matched, matched_steps),
        unexplained,
        ignored,
    )


def _last_line(recs: list[Record]) -> int:
    """The highest line of an operation's records (a loop: compiled, no ``map`` per call)."""
    n = recs[0].line
    for r in recs:
        if r.line > n:
            n = r.line
    return n


def _unexplained(
    ko: Op, last_step: int, unexplained: list[dict[str, Any]], divs: list[Divergence]
) -> None:
    """A kernel operation the model did not do: each of its records unexplained, one
    divergence at its first record."""
    for r in ko.recs:
        unexplained.append({"line": r.line, "text": r.text})
    divs.append(Divergence(ko.recs[0].line, "unexplained", ko.recs[0].probe, None, last_step))


def _missing(mo: Op, last_line: int, divs: list[Divergence]) -> None:
    """A model operation the kernel did not do: reported after the last record that matched."""
    divs.append(Divergence(last_line or 1, mo.kind + ".missing", None, _shown(mo), mo.step))


def _shown(op: Op) -> Any:
    if op.gfn is not None:
        return hex(op.gfn)
    if op.path is not None:
        return op.path
    return op.kind


def _free_count(model: int | None, shared_topups: Sequence[list[Any]]) -> tuple[Any, Any]:
    """The counts ``tdx_free_pamt_cache`` may see (lowest, highest): the model's, raised by the
    top-ups of the TD's shared-GPA faults since the cache's last replayed top-up.

    A TD tops its vCPU's caches up on every EPT violation, shared GPAs included
    (``mmu_topup_memory_caches`` checks ``kvm_has_mirrored_tdp(kvm)``, not the fault's GPA;
    v6 09/11 adds the DPAMT top-up there), but the trace format has no event for a shared-GPA
    fault, so the model never runs that top-up. Any later private fault tops up again to the
    same target, so it shows only when it is the cache's last top-up before the free.
    ``tdx_topup_pamt_cache(cache, n)`` (v6 08/11) fills to exactly ``n * 2`` pages and keeps
    what it added when an allocation fails: a success makes the count ``max(count, 2n)``, a
    failure (or no return seen) anything from the count up to ``2n - 1``."""
    if model is None:
        return None, None
    lo = hi = model
    for npages, ret in shared_topups:
        target = npages * TDX_DPAMT_ENTRY_PAGE_CNT
        if ret == 0:
            lo, hi = max(lo, target), max(hi, target)
        else:
            hi = max(hi, target - 1)
    return lo, hi


#: The kinds of operation :func:`_compare` compares fields of (the others match by kind).
_COMPARED = frozenset(("fault", "map.leaf", "topup", "cache_free", "get", "put"))


def _div(divs: list[Divergence], step: int, line: int, kind: str, o: Any, p: Any) -> None:
    """One divergence found by :func:`_compare` (a module function: a closure per comparison
    would be built half a million times for the few that diverge)."""
    divs.append(Divergence(line, kind, o, p, step))


def _compare(k: Op, m: Op, regions: _Bijection, caches: _Bijection, divs: list[Divergence]) -> None:
    """Field by field, each difference a divergence at the kernel record that shows it."""
    kind = k.kind
    if kind not in _COMPARED:  # the commonest kinds carry no field to compare
        return
    st = m.step
    if kind in ("fault", "map.leaf") and k.gfn == m.gfn:
        return

    recs = k.recs
    line = recs[0].line
    ret_line = recs[1].line if len(recs) > 1 else line
    if kind in ("fault", "map.leaf"):  # (their gfns differ)
        _div(divs, st, line, kind + ".gfn", hex(k.gfn or 0), hex(m.gfn or 0))
    elif kind == "topup":
        kc = k.cache or None
        if not caches.ok(kc, m.vcpu):
            _div(divs, st, line, "topup.target", hex(kc or 0), f"vCPU {m.vcpu}'s cache")
        elif k.ret is not None and k.ret != m.ret:
            _div(divs, st, ret_line, "topup.ret", k.ret, m.ret)
        elif k.after is not None and k.after != m.after:
            _div(divs, st, ret_line, "topup.cache_after", k.after, m.after)
    elif kind == "cache_free":
        kb = k.before if k.before is not None else -1
        if kb >= 0:
            lo, hi = _free_count(m.before, k.shared_topups)
            if lo is None or hi is None or not lo <= kb <= hi:
                _div(divs, st, line, "cache_free.count", kb, lo if lo == hi else f"{lo}..{hi}")
    elif kind == "get":
        kc = k.cache or None
        kr = k.pfn >> 9
        if not caches.ok(kc, m.vcpu if kc else None):
            _div(divs, st, line, "get.cache", hex(kc or 0), f"vCPU {m.vcpu}'s cache")
        if not regions.ok(kr, m.region):
            _div(divs, st, line, "get.region", hex(kr), hex(m.region or 0))
        kp, mp = k.path, m.path
        add = k.add
        if k.ret is None:
            _div(divs, st, line, "return.missing", None, mp)
        elif k.ret != m.ret:
            _div(divs, st, ret_line, "get.ret", k.ret, m.ret)
        elif add is not None and mp != "added":
            _div(divs, st, add[1], "pamt_add", "PAMT.ADD", f"none ({mp})")
        elif add is not None and not regions.ok(add[0], m.region):
            _div(divs, st, add[1], "pamt_add.region", hex(add[0]), hex(m.region or 0))
        elif kp != mp and mp not in _PATH_OK.get(str(kp), ()):
            _div(divs, st, ret_line, "get.path", kp, mp)
        elif kc and k.after is not None and k.after >= 0 and k.after != m.after:
            _div(divs, st, ret_line, "get.cache_after", k.after, m.after)
        elif mp == "added" and add is None and kp == "fast|lost_race":
            _div(divs, st, line, "pamt_add.missing", None, "PAMT.ADD")
    elif kind == "put":
        kr = k.pfn >> 9
        if not regions.ok(kr, m.region):
            _div(divs, st, line, "put.region", hex(kr), hex(m.region or 0))
        rm = k.remove
        if rm is not None and m.remove_step < 0:
            _div(divs, st, rm[1], "pamt_remove", "PAMT.REMOVE", "none: the region keeps references")
        elif rm is not None and not regions.ok(rm[0], m.region):
            _div(divs, st, rm[1], "pamt_remove.region", hex(rm[0]), hex(m.region or 0))
        elif rm is None and m.remove_step >= 0 and k.probed:
            _div(divs, st, line, "pamt_remove.missing", None, "PAMT.REMOVE")
        elif k.ret is None:  # never came, or the thread's next put began first (a lost record)
            _div(divs, st, line, "return.missing", None, "the put's return")
