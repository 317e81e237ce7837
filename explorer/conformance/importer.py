"""Turn a kernel capture into a format-v1 trace (the model replays it to pin the race order).

A capture (:mod:`explorer.ingest.capture`, docs/capture.md) says what a v6 kernel did on the DPAMT
paths; a trace (docs/trace-format.md) says what to ask the model to do. :func:`import_capture`
derives the second from the first (the TD's life: ``td_create``, ``vcpu_create``, ``fault``,
``zap``, ``td_destroy``, with the kernel's interleaving of concurrent faults pinned by
``schedule`` events), and :func:`explorer.conformance.conform.conform` replays that trace and compares, per thread and in
order, what the kernel observed (``tdx_pamt_get``'s return and path, PAMT.ADD / PAMT.REMOVE,
the ``tdx_pamt_cache`` counts) with what the model predicts. The rules are in docs/capture.md
("Import", "Conformance"); this module is their implementation.

Why per thread: the kernel's records of different CPUs are only ordered by timestamp (and the
probes themselves take time), while each thread's records are exactly ordered; the model's steps
of one simulated CPU are ordered the same way. Comparing per (thread, kind) in order keeps one
missing or extra observation from shifting every later one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from explorer.ingest.capture import Capture, Record
from explorer.model.events import (
    Event,
    Fault,
    Note,
    Schedule,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    Zap,
)
from explorer.model.records import Step
from explorer.model.settings import Settings
from explorer.replay.timeline import replay

#: The TD every capture is imported as (a capture of several TDs is not distinguished: the
#: probes carry no TD identity).
TD = 0
#: The S-EPT value of a frozen entry (``FROZEN_SPTE``, 0x5a0 on x86-64 with TDX).
FROZEN_SPTE = 0x5A0
#: ``-ENOMEM``, ``-EIO``: what the model's failed gets return (``tdx_pamt_get``).
ENOMEM, EIO = -12, -5
#: Probes that show the TD's teardown (``tdx_vcpu_free`` / ``tdx_vm_free`` call these).
TEARDOWN_PROBES = ("tdx_free_pamt_cache.entry", "tdx_free_control_page.entry")


@dataclass(frozen=True)
class ImportedTrace:
    """A capture as a trace: ``events`` with ``settings``; ``lines[i]`` the capture lines event
    ``i`` came from; ``unused`` the records no event came from, counted per probe."""

    source: str
    events: tuple[Event, ...]
    settings: Settings
    lines: tuple[tuple[int, ...], ...]
    unused: dict[str, int] = field(default_factory=dict)
    vcpu_tids: dict[int, int] = field(default_factory=dict)  # tid -> vCPU id
    vmm_tid: int | None = None


def field_int(rec: Record, key: str) -> int:
    v = rec.fields.get(key)
    return v if isinstance(v, int) else 0


def _func(rec: Record) -> tuple[str, str]:
    func, _, kind = rec.probe.rpartition(".")
    return (func, kind) if kind in ("entry", "return") else (rec.probe, "")


def _find_vmm(records: Sequence[Record]) -> int | None:
    """The VMM thread: the tid of the first ``tdx_pamt_get(pfn, cache=0)`` made inside a
    ``tdx_alloc_control_page`` before any fault (``tdx_td_init`` allocates the TDR and TDCS
    there, on the ioctl's thread)."""
    in_ctrl: set[int] = set()
    for r in records:
        if r.probe == "kvm_page_fault":
            break
        if r.probe == "tdx_alloc_control_page.entry":
            in_ctrl.add(r.tid)
        elif r.probe == "tdx_pamt_get.entry" and r.tid in in_ctrl and field_int(r, "cache") == 0:
            return r.tid
    return None


@dataclass
class _Fault:
    """One ``kvm_page_fault`` and the records of its thread until that thread's next fault."""

    start: int  # index in the sorted records
    vcpu: int
    tid: int
    gfn: int
    recs: list[Record]
    t0: int
    t1: int = 0
    pfn: int | None = None

    @property
    def first(self) -> Record:
        return self.recs[0]


def _faults(records: Sequence[Record], vcpu_tids: dict[int, int]) -> list[_Fault]:
    """Every fault with its window: from its ``kvm_page_fault`` to the last record of its tid
    before that tid's next fault (``kvm_tdp_mmu_map`` and ``tdx_sept_link_private_spt`` /
    ``tdx_sept_set_private_spte`` run on the faulting vCPU's thread)."""
    out: list[_Fault] = []
    cur: dict[int, _Fault] = {}
    for i, r in enumerate(records):
        if r.probe == "kvm_page_fault":
            f = _Fault(i, field_int(r, "vcpu"), r.tid, field_int(r, "gpa") >> 12, [r], r.ts, r.ts)
            cur[r.tid] = f
            out.append(f)
        elif r.tid in cur and r.tid in vcpu_tids:
            f = cur[r.tid]
            f.recs.append(r)
            f.t1 = r.ts
    for f in out:
        gets = [r for r in f.recs if r.probe == "tdx_pamt_get.entry"]
        f.pfn = field_int(gets[-1], "pfn") if gets else None
    return out


def _groups(faults: list[_Fault]) -> list[list[_Fault]]:
    """Faults whose windows overlap on different tids, transitively, in start order."""
    groups: list[list[_Fault]] = []
    end = -1
    for f in sorted(faults, key=lambda f: (f.t0, f.start)):
        if groups and f.t0 <= end and all(g.tid != f.tid for g in groups[-1]):
            groups[-1].append(f)
            end = max(end, f.t1)
        else:
            groups.append([f])
            end = f.t1
    return groups


def _get_calls(recs: Sequence[Record]) -> list[dict[str, Any]]:
    """The ``tdx_pamt_get`` calls in one thread's records: entry, return, the PAMT.ADD between."""
    calls: list[dict[str, Any]] = []
    open_: dict[str, Any] | None = None
    for r in recs:
        if r.probe == "tdx_pamt_get.entry":
            open_ = {"entry": r, "add": None, "ret": None}
        elif open_ is not None and r.probe == "tdh_phymem_pamt_add.entry":
            open_["add"] = r
        elif open_ is not None and r.probe == "tdx_pamt_get.return":
            open_["ret"] = r
            calls.append(open_)
            open_ = None
    return calls


def get_path(call: dict[str, Any]) -> tuple[str, str | None]:
    """Kernel path of a get: slow when it did PAMT.ADD or popped 2 cache pages; its outcome."""
    entry: Record = call["entry"]
    ret: Record = call["ret"]
    before, after = field_int(entry, "cache_count"), field_int(ret, "cache_count")
    slow = call["add"] is not None or (before >= 0 and after >= 0 and before - after == 2)
    if not slow:
        return "fast", None
    if field_int(ret, "ret") != 0:
        return "slow", "failed"
    return "slow", "added" if call["add"] is not None else "lost_race"


def import_capture(capture: Capture) -> ImportedTrace:
    """Derive the trace of ``capture`` (the rules of docs/capture.md, "Import")."""
    records = sorted(capture.records, key=lambda r: (r.ts, r.line))
    vmm = _find_vmm(records)
    vcpu_tids: dict[int, int] = {}
    for r in records:
        if r.probe == "kvm_page_fault" and r.tid != vmm:
            vcpu_tids.setdefault(r.tid, field_int(r, "vcpu"))
    vcpus = sorted(set(vcpu_tids.values()))
    faults = _faults(records, vcpu_tids)
    used: set[int] = set()
    events: list[Event] = []
    lines: list[tuple[int, ...]] = []

    def emit(ev: Event, recs: Sequence[Record]) -> None:
        events.append(ev)
        ls = tuple(sorted({r.line for r in recs}))
        lines.append(ls)
        used.update(ls)

    first_fault = faults[0].first.ts if faults else None
    vmm_recs = [r for r in records if r.tid == vmm] if vmm is not None else []
    boot = [r for r in vmm_recs if first_fault is None or r.ts < first_fault]
    ctrl_calls = [r for r in boot if r.probe == "tdx_alloc_control_page.entry"]
    # tdx_td_init: TDR + tdcs_pages TDCS; tdx_vcpu_init: TDVPR + tdcx_pages TDCX per vCPU
    tdcs, tdcx = Settings().tdcs_pages, Settings().tdcx_pages
    n_ctrl = len(ctrl_calls)
    if vcpus and n_ctrl > 1 + tdcs and (n_ctrl - 1 - tdcs) % len(vcpus) == 0:
        tdcx = max(0, (n_ctrl - 1 - tdcs) // len(vcpus) - 1)
    split = [1 + tdcs] + [1 + tdcx] * len(vcpus)
    cuts: list[int] = []
    acc = 0
    for k in split:
        acc += k
        cuts.append(ctrl_calls[acc].ts if acc < n_ctrl else (first_fault or 1 << 62))
    parts: list[list[Record]] = [[] for _ in split]
    for r in boot:
        j = next((i for i, c in enumerate(cuts) if r.ts < c), len(cuts) - 1)
        parts[j].append(r)
    if vmm is not None or faults:
        emit(TdCreate(td=TD), parts[0])
        for i, v in enumerate(vcpus):
            emit(VcpuCreate(td=TD, vcpu=v), parts[i + 1])
        emit(TdFinalize(td=TD), [])

    # teardown: from the first tdx_free_pamt_cache / tdx_free_control_page on the VMM tid after
    # the last fault; the leaf zaps right before it in ascending gfn order belong to it too
    # (td_destroy zaps the remaining private pages in gfn order: kvm.py, tdx_mmu_release_hkid)
    last_fault = max((f.t1 for f in faults), default=-1)
    td_start = next(
        (i for i, r in enumerate(vmm_recs) if r.probe in TEARDOWN_PROBES and r.ts > last_fault),
        None,
    )
    zaps = _zaps(vmm_recs[: td_start if td_start is not None else len(vmm_recs)], last_fault)
    if td_start is not None:
        k = len(zaps)
        while k > 0 and (k == len(zaps) or zaps[k - 1][0] < zaps[k][0]):
            k -= 1
        teardown_zaps, zaps = zaps[k:], zaps[:k]
    else:
        teardown_zaps = []

    # pfns are pinned only where the kernel's region is first met through pinned leaves: the
    # model's own allocations (control pages, S-EPT tables, pairs) land in other regions, so a
    # leaf in a region the kernel warmed with its own pages would be cold in the model
    other_regions: set[int] = set()
    pinned_regions: set[int] = set()
    leaf_recs = {id(r) for f in faults for r in f.recs if r.probe == "tdx_pamt_get.entry"}
    fault_of = {id(f.first): f for f in faults}
    for r in records:
        f = fault_of.get(id(r))
        if f is not None:
            for g in f.recs:
                if g.probe == "tdx_pamt_get.entry" and field_int(g, "pfn") != f.pfn:
                    other_regions.add(field_int(g, "pfn") >> 9)
            if f.pfn is not None and (f.pfn >> 9) in other_regions:
                f.pfn = None
            elif f.pfn is not None:
                pinned_regions.add(f.pfn >> 9)
        elif id(r) not in leaf_recs:
            for key in ("pfn", "pair0", "pair1"):
                v = field_int(r, key)
                if v and (v >> 9) not in pinned_regions:
                    other_regions.add(v >> 9)
    settings = _settings(capture, tdcs, tdcx)

    vmm_events: list[tuple[int, Event, list[Record]]] = [
        (recs[0].ts, Zap(td=TD, gfn=gfn), recs) for gfn, recs in zaps
    ]
    probe_ev: list[tuple[int, list[Event], list[list[Record]]]] = []
    t = 0
    for group in _groups(faults):
        evs: list[Event] = []
        recs_of: list[list[Record]] = []
        gt: int | None = None
        if len(group) > 1:
            t += 1
            gt = t
        for f in group:
            for call in _get_calls(f.recs):
                path, outcome = get_path(call)
                if path == "slow":
                    e, r_ = call["entry"], call["ret"]
                    what = {"added": "did PAMT.ADD", "lost_race": "lost the race"}.get(
                        outcome or "", f"failed ({field_int(r_, 'ret')})"
                    )
                    cache = ""
                    if field_int(e, "cache_count") >= 0:
                        cache = f"; cache {field_int(e, 'cache_count')} -> {field_int(r_, 'cache_count')}"
                    evs.append(
                        Note(
                            text=f"kernel (vcpu{f.vcpu}): tdx_pamt_get({field_int(e, 'pfn'):#x}) "
                            f"slow path, {what}{cache}",
                            t=gt,
                        )
                    )
                    recs_of.append([])
        if gt is not None:
            order = _derive_order(group, events, vmm_events, probe_ev, settings)
            if order:
                evs.append(Schedule(order=tuple(order), t=gt))
                recs_of.append([])
        for f in group:
            evs.append(Fault(vcpu=f.vcpu, gfn=f.gfn, pfn=f.pfn, t=gt))
            recs_of.append(f.recs)
        probe_ev.append((group[0].t0, evs, recs_of))

    merged: list[tuple[int, int, list[Event], list[list[Record]]]] = [
        (ts, 1, [ev], [recs]) for ts, ev, recs in vmm_events
    ] + [(ts, 0, evs, recs) for ts, evs, recs in probe_ev]
    merged.sort(key=lambda x: (x[0], x[1]))
    for _, _, evs, recs_list in merged:
        for ev, recs in zip(evs, recs_list, strict=True):
            emit(ev, recs)
    if td_start is not None:
        tail = vmm_recs[td_start:] + [r for _, rs in teardown_zaps for r in rs]
        emit(TdDestroy(td=TD), tail)

    unused: dict[str, int] = {}
    for r in capture.records:
        if r.line not in used:
            unused[r.probe] = unused.get(r.probe, 0) + 1
    return ImportedTrace(
        capture.source,
        tuple(events),
        settings,
        tuple(lines),
        unused,
        vcpu_tids,
        vmm,
    )


def _derive_order(
    group: list[_Fault],
    events: list[Event],
    vmm_events: list[tuple[int, Event, list[Record]]],
    probe_ev: list[tuple[int, list[Event], list[list[Record]]]],
    settings: Settings,
) -> list[str]:
    """The pinned turns of a concurrent group (docs/capture.md, "Import").

    With a PAMT.ADD in the group: the thread whose ``tdh_phymem_pamt_add`` comes first (the
    winner) takes its turns up to the step where it holds ``pamt_lock`` in ``tdx_pamt_get``
    (before its PAMT.ADD); then each other thread whose ``tdx_pamt_get.entry`` on that region
    precedes the winner's PAMT.ADD takes its turns up to its slow-path step (it read the
    refcount as 0, as the kernel's did: it will pop pages and lose the recheck under
    ``pamt_lock``). Without one: the thread whose fault came first runs its whole fault.
    Round-robin (the imported settings' schedule) goes on after the pinned turns. Each count
    is the step count of a dry run of the trace so far plus that thread's fault alone."""
    prefix: list[Event] = list(events)
    tmp: list[tuple[int, int, list[Event]]] = [(ts, 1, [ev]) for ts, ev, _ in vmm_events] + [
        (ts, 0, evs) for ts, evs, _ in probe_ev
    ]
    for ts, _, evs in sorted(tmp, key=lambda x: (x[0], x[1])):
        if ts < group[0].t0:
            prefix += evs

    def alone(f: _Fault) -> list[Step]:
        idx = len(prefix)
        tl = replay([*prefix, Fault(vcpu=f.vcpu, gfn=f.gfn, pfn=f.pfn)], settings)
        start = tl.first_step_of_event(idx)
        if start is None:
            return []
        return [s for s in tl.steps_between(start, tl.nr_steps) if s.event == idx]

    adds = sorted(
        (r.ts, f.tid, field_int(r, "pfn") >> 9)
        for f in group
        for r in f.recs
        if r.probe == "tdh_phymem_pamt_add.entry"
    )
    if not adds:
        return [f"vcpu{group[0].vcpu}"] * len(alone(group[0]))
    add_ts, win_tid, region = adds[0]
    winner = next(f for f in group if f.tid == win_tid)
    order: list[str] = []
    steps = alone(winner)
    add_at = next((k for k, s in enumerate(steps) if s.label == "pamt_get.add"), len(steps))
    locks = [j for j in range(add_at) if steps[j].label == "pamt_get.lock"]
    order += [f"vcpu{winner.vcpu}"] * (locks[-1] + 1 if locks else add_at)
    for f in group:
        if f is winner or not any(
            r.probe == "tdx_pamt_get.entry" and field_int(r, "pfn") >> 9 == region and r.ts < add_ts
            for r in f.recs
        ):
            continue
        steps = alone(f)
        add_at = next((k for k, s in enumerate(steps) if s.label == "pamt_get.add"), len(steps))
        slows = [j for j in range(add_at) if steps[j].label == "pamt_get.slow"]
        if slows:
            order += [f"vcpu{f.vcpu}"] * (slows[-1] + 1)
    return order


def _zaps(vmm_recs: Sequence[Record], after: int) -> list[tuple[int, list[Record]]]:
    """Leaf zaps on the VMM thread: a present leaf frozen (``tdx_sept_remove_private_spte``
    after ``kvm_tdp_mmu_zap_leafs``), a ``tdx_pamt_put``, then the entry cleared (new_spte 0)."""
    out: list[tuple[int, list[Record]]] = []
    open_: dict[int, list[Record]] = {}
    for r in vmm_recs:
        if r.probe == "kvm_tdp_mmu_spte_changed" and field_int(r, "level") == 1:
            gfn, old, new = field_int(r, "gfn"), field_int(r, "old_spte"), field_int(r, "new_spte")
            if old not in (0, FROZEN_SPTE) and new == FROZEN_SPTE:
                open_[gfn] = [r]
            elif old == FROZEN_SPTE and new == 0 and gfn in open_:
                recs = [*open_.pop(gfn), r]
                if any(x.probe == "tdx_pamt_put.entry" for x in recs):
                    out.append((gfn, recs))
        elif r.probe.startswith(("tdx_pamt_put.", "tdh_phymem_pamt_remove.")) and open_:
            open_[next(reversed(open_))].append(r)
    return out


def _settings(capture: Capture, tdcs: int, tdcx: int) -> Settings:
    """v6, host memory covering every pfn seen (an even number of MiB: 2 MiB per region), at
    least the default 256 MiB (the model's own allocations need room)."""
    top = 0
    for r in capture.records:
        for key in ("pfn", "pair0", "pair1"):
            v = r.fields.get(key)
            if isinstance(v, int):
                top = max(top, v)
    mib = max(256, -(-(top + 1) // 256))
    mib += mib % 2
    return Settings(mode="v6", host_memory_mib=mib, tdcs_pages=tdcs, tdcx_pages=tdcx)
