"""Check a kernel capture against the v6 DPAMT rules, record by record (docs/capture.md).

:func:`conform` reads every record of a capture in timestamp order and accounts for each one:
it is either **ignored** with a reason (:func:`explorer.conformance.importer.attribute`: another
VM, a shared GPA, no VM context), **explained** by the v6 rules (a match), or a **divergence** at
its own line. The rules are those of the v6 series (``tdx_pamt_get`` / ``tdx_pamt_put`` in
``arch/x86/virt/vmx/tdx/tdx.c``, 06/11; their KVM callers in ``arch/x86/kvm/vmx/tdx.c``, 09/11),
kept as a host-wide shadow:

- one refcount per 2 MiB region (``pamt_refcounts[pfn >> 9]``), shared by every TD: a get on a
  region at 0 must take the slow path and do PAMT.ADD (observed through ``tdh_phymem_pamt_add``
  when that static helper could be probed, else derived from the count), a get on a region above
  0 the fast path (or lose the race under ``pamt_lock``); a put takes it down by one and the last
  one does PAMT.REMOVE; a put at 0 is unbalanced;
- one page count per ``tdx_pamt_cache``: a top-up reaches ``2 * npages``, a slow get pops two,
  a fast get none, ``tdx_free_pamt_cache`` empties it; the count a record prints must be the one
  the shadow holds; a vCPU thread's gets use the cache its last top-up filled;
- every map ``SHADOW_NONPRESENT_VALUE -> present`` (``handle_changed_spte`` after
  ``set_external_spte_present``) consumes the get of its thread before it (a leaf: the get of the
  pfn the SPTE maps), every leaf zap (``-> SHADOW_NONPRESENT_VALUE``) or removed-table leaf
  (``-> FROZEN_SPTE``) pairs with a put of the pfn it unmapped (by pfn, in either order), every
  other put is a ``tdx_free_control_page`` or an error path (the get just before it).

Concurrency (legal kernel alternatives): a probe's effect on a refcount happens somewhere between
its entry and return, so a check that fails at a return is retried as if another thread's
operation on the same region, in flight at that moment, had come first (the other vCPU winning
a race: its PAMT.ADD before this fast get). A local retry (a second top-up under one
``kvm_page_fault``) and a spurious fault (no get, no map) are ordinary. A missing record is
reported after the last record of its thread that matched, where it should have been.

The model's replay of the imported trace (one TD per TDX VM) gives each observation its step,
for the app's markers.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple, overload

from explorer.conformance.importer import (
    EIO,
    ENOMEM,
    KVM_PROBES,
    PAGE_STRUCT,
    Attribution,
    ImportedTrace,
    field_int,
    import_capture,
    spte_kind,
    spte_pfn,
)
from explorer.ingest.capture import PROBES, Capture, Record
from explorer.ingest.gcpause import gc_paused
from explorer.model.settings import Settings
from explorer.replay.timeline import replay


@dataclass(frozen=True)
class Divergence:
    line: int
    kind: str
    observed: Any
    predicted: Any
    step: int


class Match(NamedTuple):
    """An observation on which the kernel and the rules agree (a tuple: there is one per record)."""

    line: int
    kind: str
    value: Any
    step: int


class Matches(Sequence[Match]):
    """A conformance's matches sorted by (step, line), built from the checker's observations on
    first use: there is one per record, and only the app's markers read them (``conform`` on the
    command line and its ``--json`` do not), so a million are not built for nothing.

    ``observed``: (line, kind, value, record position) in position order; ``starts``: the
    position each event starts at, ascending; ``steps``: each event's first step (-1: never ran).
    """

    def __init__(
        self,
        observed: list[tuple[int, str, Any, int]],
        starts: Sequence[int],
        steps: Sequence[int],
    ) -> None:
        self._observed: list[tuple[int, str, Any, int]] | None = observed
        self._starts = starts
        self._steps = steps
        self._items: list[Match] | None = None

    def _built(self) -> list[Match]:
        if self._items is None:
            with gc_paused():  # a million tuples, no cycles among them
                self._items = self._build()
            self._observed = None
        return self._items

    def _build(self) -> list[Match]:
        assert self._observed is not None
        items: list[Match] = []
        starts, steps = self._starts, self._steps
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
    """``ok`` when no divergence; ``observations`` the records checked; ``unexplained`` the
    records no rule accounts for (each also a divergence of kind ``unexplained``); ``ignored``
    the records set aside per reason. ``matches`` is for the app's markers (not in ``--json``)."""

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


@dataclass(slots=True)
class _Call:
    """A ``tdx_pamt_get`` / ``tdx_pamt_put`` between its entry and return."""

    entry: Record
    region: int
    pfn: int
    cache: int = 0
    count: int = -1
    add: Record | None = None
    add_ok: bool = True
    remove: Record | None = None
    early: bool = False  # its refcount effect was applied before its return (a race)


@dataclass(slots=True)
class _Thread:
    get: _Call | None = None
    put: _Call | None = None
    ctrl_alloc: Record | None = None
    ctrl_gets: int = 0
    ctrl_free: Record | None = None
    ctrl_puts: int = 0
    topup: Record | None = None  # the last top-up since the last fault attempt
    topup_checked: bool = False
    pending: list[tuple[int, Record]] = field(default_factory=list)  # successful gets unused


class _Checker:
    def __init__(self, att: Attribution, header: dict[str, str]) -> None:
        self.att = att
        self.ref: dict[int, int] = {}
        self.borrowed: dict[int, int] = {}
        self.cache: dict[int, int] = {}
        self.threads: defaultdict[int, _Thread] = defaultdict(_Thread)
        self.last_ok: dict[int, int] = {}  # tid -> the line of its last record that matched
        self.inflight: dict[int, list[_Call]] = {}  # region -> calls entered, not returned
        self.zaps: dict[int, list[Record]] = {}  # pfn -> zaps waiting for their put
        self.puts: dict[int, list[Record]] = {}  # pfn -> puts waiting for their zap
        self.matches: list[tuple[int, str, Any, int]] = []  # line, kind, value, position
        self.pos = 0
        self.divs: list[tuple[int, str, Any, Any]] = []
        self.unexplained: list[Record] = []
        self.adds_seen = False
        self.page_size = int(header.get("page_size", PAGE_STRUCT) or PAGE_STRUCT)
        vb = header.get("vmemmap_base", "")
        self.vmemmap: int | None = int(vb, 16) if vb.startswith("0x") else None
        self.unknown_start = header.get("vms_at_start", "0") not in ("0", "")
        self.known: set[int] = set()

    # ---------------------------------------------------------------- helpers
    def ok(self, r: Record, kind: str, value: Any) -> None:
        self.matches.append((r.line, kind, value, self.pos))
        self.last_ok[r.tid] = r.line

    def div(self, line: int, kind: str, observed: Any, predicted: Any) -> None:
        self.divs.append((line, kind, observed, predicted))

    def missing_at(self, r: Record) -> int:
        """Where a missing record of ``r``'s thread belongs: after its last matched record."""
        return self.last_ok.get(r.tid) or r.line

    def checked(self, region: int) -> bool:
        """A region's refcount is known: the capture started with no TD (``vms_at_start=0``),
        or this region was first met through a PAMT.ADD / a get at a known count."""
        return not self.unknown_start or region in self.known

    def pfn_of_page(self, page: int) -> int:
        """``page_to_pfn`` for vmemmap: ``(page - vmemmap_base) / sizeof(struct page)``. Without
        the base (no ``CONFIG_KALLSYMS_ALL``) it is calibrated from a control-page allocation
        whose get was seen; before that, ``page / sizeof(struct page)``: the same regions when
        the base is aligned to 512 struct pages (KASLR aligns it to 1 GiB; docs/capture.md)."""
        base = self.vmemmap if self.vmemmap is not None else 0
        return (page - base) // self.page_size

    def borrow(self, call: _Call, want_zero: bool) -> bool:
        """Linearise another thread's in-flight operation on the same region first, if that
        makes ``call`` legal: a get seeing the count above 0 because a racing get's PAMT.ADD
        came first, or at 0 because a racing put's PAMT.REMOVE came first."""
        for other in self.inflight.get(call.region, []):
            if other is call or other.entry.tid == call.entry.tid or other.early:
                continue
            is_get = other.entry.probe == "tdx_pamt_get.entry"
            if not want_zero and is_get:
                other.early = True
                self.ref[call.region] = self.ref.get(call.region, 0) + 1
                self.borrowed[call.region] = self.borrowed.get(call.region, 0) + 1
                return True
            if want_zero and not is_get and self.ref.get(call.region, 0) == 1:
                other.early = True
                self.ref[call.region] = 0
                return True
        return False

    # ---------------------------------------------------------------- records
    def run(self) -> int:
        att = self.att
        self.adds_seen = any(r.probe.startswith("tdh_phymem_pamt_") for r in att.order)
        n = 0
        handlers = {p: getattr(self, "on_" + p.replace(".", "_")) for p in PROBES}
        kvm_only = KVM_PROBES
        for i, r in enumerate(att.order):
            p = r.probe
            if att.why[i] is not None and p in kvm_only:
                continue  # ignored: another VM, a shared GPA (counted in ``ignored``)
            n += 1
            self.pos = i
            handlers[p](r)
        self.finish()
        return n

    def on_kvm_page_fault(self, r: Record) -> None:
        th = self.threads[r.tid]
        self.close_window(th)
        th.topup, th.topup_checked = None, False
        self.ok(r, "fault", hex(field_int(r, "gpa")))

    def on_kvm_mmu_page_fault(self, r: Record) -> None:
        th = self.threads[r.tid]
        th.topup, th.topup_checked = None, False  # a new attempt (local retry) tops up again
        self.ok(r, "fault.attempt", hex(field_int(r, "gpa")))

    def on_kvm_arch_pre_destroy_vm(self, r: Record) -> None:
        self.ok(r, "teardown", hex(field_int(r, "kvm")))

    def close_window(self, th: _Thread) -> None:
        for _, g in th.pending:
            self.div(g.line, "map.missing", None, "an SPTE map using this get")
        th.pending.clear()

    def check_count(self, r: Record, cache: int, count: int) -> None:
        want = self.cache.get(cache)
        if cache and want is not None and count != want:
            self.div(r.line, "cache_count", count, want)

    def on_tdx_topup_pamt_cache_entry(self, r: Record) -> None:
        cache = field_int(r, "cache")
        self.check_count(r, cache, field_int(r, "cache_count"))
        th = self.threads[r.tid]
        th.topup, th.topup_checked = r, False
        self.ok(r, "topup", hex(cache))

    def on_tdx_topup_pamt_cache_return(self, r: Record) -> None:
        e = self.threads[r.tid].topup
        ret, after = field_int(r, "ret"), field_int(r, "cache_count")
        if e is None:
            self.unexplain(r)
            return
        before, target = field_int(e, "cache_count"), 2 * field_int(e, "npages")
        want = max(before, target)
        if ret == 0 and after != want:
            self.div(r.line, "topup.cache_after", after, want)
        elif ret not in (0, ENOMEM) or (ret == ENOMEM and not before <= after < target):
            self.div(r.line, "topup.ret", ret, f"0 with {want} pages")
        else:
            self.ok(r, "topup.cache_after", after)
        self.cache[field_int(e, "cache")] = after

    def on_tdx_free_pamt_cache_entry(self, r: Record) -> None:
        self.check_count(r, field_int(r, "cache"), field_int(r, "cache_count"))
        self.threads[r.tid].topup = r
        self.ok(r, "cache_free", field_int(r, "cache_count"))

    def on_tdx_free_pamt_cache_return(self, r: Record) -> None:
        e = self.threads[r.tid].topup
        if field_int(r, "cache_count") != 0:
            self.div(r.line, "cache_free.after", field_int(r, "cache_count"), 0)
        else:
            self.ok(r, "cache_free.after", 0)
        if e is not None:
            self.cache[field_int(e, "cache")] = 0

    # ---- gets
    def on_tdx_pamt_get_entry(self, r: Record) -> None:
        pfn, cache = field_int(r, "pfn"), field_int(r, "cache")
        call = _Call(r, pfn >> 9, pfn, cache, field_int(r, "cache_count"))
        self.check_count(r, cache, call.count)
        th = self.threads[r.tid]
        th.get = call
        self.inflight.setdefault(call.region, []).append(call)
        if cache and th.topup is not None and th.topup.probe.startswith("tdx_topup"):
            if not th.topup_checked and field_int(th.topup, "cache") != cache:
                self.div(
                    th.topup.line, "topup.target", hex(field_int(th.topup, "cache")), hex(cache)
                )
            th.topup_checked = True
        self.ok(r, "get", hex(pfn))

    def on_tdh_phymem_pamt_add_entry(self, r: Record) -> None:
        call = self.threads[r.tid].get
        if call is None:
            self.unexplain(r)
            return
        region = field_int(r, "pfn") >> 9
        call.add = r
        if region != call.region:
            self.div(r.line, "pamt_add.region", hex(region), hex(call.region))
            return
        if (
            self.checked(call.region)
            and self.ref.get(call.region, 0) - self.borrowed.get(call.region, 0) > 0
            and not self.borrow(call, want_zero=True)
        ):
            self.div(
                r.line,
                "pamt_add",
                "PAMT.ADD",
                f"none: region refcount {self.ref.get(call.region, 0)}",
            )
            call.add_ok = False
            return
        self.ok(r, "pamt_add.region", hex(region))

    def on_tdh_phymem_pamt_add_return(self, r: Record) -> None:
        call = self.threads[r.tid].get
        if call is None or call.add is None:
            self.unexplain(r)
            return
        if field_int(r, "ret") != 0:
            call.add_ok = False
        self.ok(r, "pamt_add.status", hex(field_int(r, "ret")))

    def on_tdx_pamt_get_return(self, r: Record) -> None:
        th = self.threads[r.tid]
        call = th.get
        if call is None:
            self.unexplain(r)
            return
        th.get = None
        self.inflight[call.region].remove(call)
        ret, after = field_int(r, "ret"), field_int(r, "cache_count")
        if call.cache:
            self.cache[call.cache] = after
        region = call.region
        ref = self.ref.get(region, 0)
        checked = self.checked(region)
        # the path the kernel took: from the cache's count where there is one
        path: str | None = None
        if call.cache and call.count >= 0:
            d = call.count - after
            path = {0: "fast", 2: "slow"}.get(d)
            if path is None:
                self.div(r.line, "get.cache_after", after, f"{call.count} or {call.count - 2}")
                return
        if ret != 0:
            allowed = ret == ENOMEM and (not call.cache or call.count < 2)
            allowed |= ret == EIO and (
                (call.add is not None and not call.add_ok) or not self.adds_seen
            )
            if allowed:
                self.ok(r, "get.ret", ret)
            else:
                self.div(r.line, "get.ret", ret, 0)
            return
        if call.add is not None:
            if path == "fast":
                self.div(r.line, "get.cache_after", after, call.count - 2)
            elif call.add_ok:
                self.ok(r, "get.outcome", "added")
            if not call.early:
                self.ref[region] = ref + 1
            self.borrowed[region] = 0
            self.known.add(region)
            self.settle(call, th)
            return
        cold = checked and ref - (1 if call.early else 0) <= 0
        if cold and not self.borrow(call, want_zero=False):
            if path == "fast":
                self.div(r.line, "get.path", "fast", "slow: region refcount 0")
                self.ref[region] = ref + (0 if call.early else 1)
                self.settle(call, th)
                return
            if path == "slow" and self.adds_seen:
                self.div(
                    self.missing_at(r), "pamt_add.missing", None, f"PAMT.ADD of region {region:#x}"
                )
            else:
                self.ok(r, "get.outcome", "added (derived)")
            self.borrowed[region] = 0
        else:
            self.ok(r, "get.outcome", "fast" if path == "fast" else "lost_race" if path else "warm")
        if not call.early:
            self.ref[region] = self.ref.get(region, 0) + 1
        self.known.add(region)
        self.settle(call, th)

    def settle(self, call: _Call, th: _Thread) -> None:
        if th.ctrl_alloc is not None:
            th.ctrl_gets += 1
        else:
            th.pending.append((call.pfn, call.entry))

    # ---- puts
    def on_tdx_pamt_put_entry(self, r: Record) -> None:
        pfn = field_int(r, "pfn")
        call = _Call(r, pfn >> 9, pfn)
        th = self.threads[r.tid]
        th.put = call
        self.inflight.setdefault(call.region, []).append(call)
        self.ok(r, "put", hex(pfn))

    def on_tdh_phymem_pamt_remove_entry(self, r: Record) -> None:
        call = self.threads[r.tid].put
        if call is None:
            self.unexplain(r)
            return
        region = field_int(r, "pfn") >> 9
        call.remove = r
        if region != call.region:
            self.div(r.line, "pamt_remove.region", hex(region), hex(call.region))
        elif self.checked(region) and self.ref.get(region, 0) > 1 and not call.early:
            self.div(
                r.line,
                "pamt_remove",
                "PAMT.REMOVE",
                f"none: region refcount {self.ref.get(region, 0)} before the put",
            )
        else:
            self.ok(r, "pamt_remove.region", hex(region))

    def on_tdh_phymem_pamt_remove_return(self, r: Record) -> None:
        call = self.threads[r.tid].put
        if call is None or call.remove is None:
            self.unexplain(r)
            return
        self.ok(r, "pamt_remove.status", hex(field_int(r, "ret")))

    def on_tdx_pamt_put_return(self, r: Record) -> None:
        th = self.threads[r.tid]
        call = th.put
        if call is None:
            self.unexplain(r)
            return
        th.put = None
        self.inflight[call.region].remove(call)
        region = call.region
        ref = self.ref.get(region, 0)
        if not call.early:
            if self.checked(region) and ref <= 0:
                self.div(
                    call.entry.line,
                    "put.refcount",
                    "a put",
                    f"none: region {region:#x} refcount 0 (unbalanced)",
                )
                return self.explain_put(call.entry, th)
            ref -= 1
            self.ref[region] = max(ref, 0)
        if ref == 0 and self.adds_seen and call.remove is None and self.checked(region):
            self.div(
                self.missing_at(r),
                "pamt_remove.missing",
                None,
                f"PAMT.REMOVE of region {region:#x}",
            )
        else:
            self.ok(r, "put.refcount", f"region {region:#x} -> {max(ref, 0)}")
        self.explain_put(call.entry, th)

    def explain_put(self, e: Record, th: _Thread) -> None:
        pfn = field_int(e, "pfn")
        if th.ctrl_free is not None:
            th.ctrl_puts += 1
            return
        for k, (gp, _) in enumerate(th.pending):  # an error path: put of the get just made
            if gp == pfn:
                del th.pending[k]
                return
        z = self.zaps.get(pfn)
        if z:
            z.pop(0)
            return
        self.puts.setdefault(pfn, []).append(e)

    # ---- control pages
    def on_tdx_alloc_control_page_entry(self, r: Record) -> None:
        th = self.threads[r.tid]
        th.ctrl_alloc, th.ctrl_gets = r, 0
        self.ok(r, "control.alloc", "")

    def on_tdx_alloc_control_page_return(self, r: Record) -> None:
        th = self.threads[r.tid]
        if th.ctrl_alloc is None:
            self.unexplain(r)
            return
        page, ret = field_int(r, "page"), field_int(r, "ret")
        th.ctrl_alloc = None
        if ret == 0 and th.ctrl_gets == 0:  # the get was inlined: derive it
            pfn = self.pfn_of_page(page)
            region = pfn >> 9
            self.ref[region] = self.ref.get(region, 0) + 1
            self.known.add(region)
        self.ok(r, "control.page", hex(page))

    def on_tdx_free_control_page_entry(self, r: Record) -> None:
        th = self.threads[r.tid]
        th.ctrl_free, th.ctrl_puts = r, 0
        self.ok(r, "control.free", hex(field_int(r, "page")))

    def on_tdx_free_control_page_return(self, r: Record) -> None:
        th = self.threads[r.tid]
        e = th.ctrl_free
        if e is None:
            self.unexplain(r)
            return
        th.ctrl_free = None
        if th.ctrl_puts == 0 and field_int(e, "page"):  # the put was inlined: derive it
            region = self.pfn_of_page(field_int(e, "page")) >> 9
            if self.ref.get(region, 0) > 0:
                self.ref[region] -= 1
        self.ok(r, "control.freed", "")

    # ---- SPTEs
    def on_kvm_tdp_mmu_spte_changed(self, r: Record) -> None:
        old, new, level = field_int(r, "old_spte"), field_int(r, "new_spte"), field_int(r, "level")
        kind = spte_kind(old, new)
        th = self.threads[r.tid]
        if kind == "map":
            want = spte_pfn(new) if level == 1 else None
            for k, (gp, g) in enumerate(th.pending):
                if (want is None and field_int(g, "cache")) or gp == want:
                    del th.pending[k]
                    self.ok(r, "map", hex(field_int(r, "gfn")))
                    return
            self.div(
                self.missing_at(r),
                "get.missing",
                None,
                f"tdx_pamt_get({want:#x})" if want is not None else "tdx_pamt_get(S-EPT page)",
            )
        elif kind in ("zap", "frozen"):
            if level == 1:
                pfn = spte_pfn(old)
                p = self.puts.get(pfn)
                if p:
                    p.pop(0)
                else:
                    self.zaps.setdefault(pfn, []).append(r)
            self.ok(r, kind, hex(field_int(r, "gfn")))
        else:
            self.unexplain(r)

    def unexplain(self, r: Record) -> None:
        self.unexplained.append(r)
        self.div(r.line, "unexplained", r.probe, "no record of this kind here")

    def finish(self) -> None:
        for th in self.threads.values():
            self.close_window(th)
            for call in (th.get, th.put):
                if call is not None:
                    self.div(call.entry.line, "return.missing", None, "the call's return")
        for zs in self.zaps.values():
            for z in zs:
                self.div(
                    z.line,
                    "put.missing",
                    None,
                    f"tdx_pamt_put({spte_pfn(field_int(z, 'old_spte')):#x})",
                )
        for ps in self.puts.values():
            for p in ps:
                self.unexplain(p)


def conform(
    capture: Capture, settings: Settings | None = None, *, imported: ImportedTrace | None = None
) -> Conformance:
    """Account for every record of ``capture`` (the module docstring's rules) and place each
    observation on the model's replay of the imported trace (``settings``: the imported ones
    unless given). ``ok`` when nothing diverges and the replay ran to its end.

    ``imported``: :func:`import_capture` of this ``capture``, when the caller has it (the app
    shows the trace and its conformance): its attribution and events are used, not derived
    again. Its ``matches`` are built on first use (``conform --json`` never reads them)."""
    if imported is None:
        imported = import_capture(capture)
    att = imported.attribution
    if att is None or len(att.order) != len(capture.records):
        raise ValueError(f"imported is not import_capture() of {capture.source}")
    imp = imported
    with gc_paused():  # a million observations, no reference cycles among them
        chk = _Checker(att, capture.header)
        observations = chk.run()
    tl = replay(imp.events, settings or imp.settings)
    stopped = tl.stopped.message if tl.stopped is not None else None
    # the step at which each event starts (-1: it never ran); a record position's step is that
    # of the last event begun at or before it
    first = [tl.first_step_of_event(e) for e in range(tl.nr_events)]
    steps = [-1 if s is None else s for s in first]
    starts = imp.positions

    def step(line: int) -> int:
        e = bisect_right(starts, imp.line_pos.get(line, 0)) - 1
        return steps[e] if 0 <= e < len(steps) else -1

    divs = sorted(
        {Divergence(line, k, o, p, step(line)) for line, k, o, p in chk.divs},
        key=lambda d: (d.line, d.kind),
    )
    unexplained: list[dict[str, Any]] = [
        {"line": r.line, "text": r.text} for r in sorted(chk.unexplained, key=lambda r: r.line)
    ]
    return Conformance(
        not divs and stopped is None,
        observations,
        divs,
        stopped,
        Matches(chk.matches, starts, steps),
        unexplained,
        imp.ignored,
    )
