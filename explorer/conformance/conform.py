"""Check the model against a kernel capture: replay the imported trace, compare per thread.

:func:`conform` replays the trace :func:`explorer.conformance.importer.import_capture` derived from
a capture and compares, per thread and in order, what the kernel observed (``tdx_pamt_get``'s
return and path, PAMT.ADD / PAMT.REMOVE, the ``tdx_pamt_cache`` counts) with what the model
predicts. The rules are in docs/capture.md ("Conformance").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from explorer.conformance.importer import (
    EIO,
    ENOMEM,
    TD,
    ImportedTrace,
    field_int,
    get_path,
    import_capture,
)
from explorer.ingest.capture import Capture, Record
from explorer.model.records import Step
from explorer.model.settings import Settings
from explorer.replay.timeline import replay


# ------------------------------------------------------------------ conformance
@dataclass(frozen=True)
class Divergence:
    line: int
    kind: str
    observed: Any
    predicted: Any
    step: int


@dataclass(frozen=True)
class Match:
    """An observation on which the kernel and the model agree: where each side has it."""

    line: int
    kind: str
    value: Any
    step: int


@dataclass(frozen=True)
class Conformance:
    """``ok`` when no divergence; ``observations`` compared (kernel side). ``matches``: the
    observations that agree, for the app's timeline markers (not part of ``--json``)."""

    ok: bool
    observations: int
    divergences: list[Divergence]
    stopped: str | None = None
    matches: list[Match] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "observations": self.observations,
            "divergences": [asdict(d) for d in self.divergences],
        }
        if self.stopped is not None:
            out["stopped"] = self.stopped
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


#: An observation: (kind, value, capture line or model step).
Obs = tuple[str, Any, int]


def kernel_observations(capture: Capture, imp: ImportedTrace) -> dict[str, list[Obs]]:
    """The kernel's observations per simulated CPU name (docs/capture.md, "Conformance")."""
    names = {tid: f"vcpu{v}" for tid, v in imp.vcpu_tids.items()}
    if imp.vmm_tid is not None:
        names[imp.vmm_tid] = f"td{TD}"
    out: dict[str, list[Obs]] = {}
    by_tid: dict[int, list[Record]] = {}
    for r in sorted(capture.records, key=lambda r: (r.ts, r.line)):
        if r.tid in names:
            by_tid.setdefault(r.tid, []).append(r)
    for tid, recs in by_tid.items():
        obs = out.setdefault(names[tid], [])
        entry: Record | None = None
        added = False
        for r in recs:
            p = r.probe
            if p == "tdx_pamt_get.entry":
                entry, added = r, False
            elif p == "tdh_phymem_pamt_add.entry":
                added = True
                obs.append(("pamt_add.region", field_int(r, "pfn") >> 9, r.line))
            elif p == "tdh_phymem_pamt_remove.entry":
                obs.append(("pamt_remove.region", field_int(r, "pfn") >> 9, r.line))
            elif p == "tdx_pamt_get.return" and entry is not None:
                path, outcome = get_path({"entry": entry, "ret": r, "add": r if added else None})
                obs.append(("get.ret", field_int(r, "ret"), r.line))
                obs.append(("get.path", path, r.line))
                obs.append(("get.outcome", outcome or "none", r.line))
                if field_int(entry, "cache_count") >= 0:
                    obs.append(("get.cache_after", field_int(r, "cache_count"), r.line))
                entry = None
            elif p == "tdx_topup_pamt_cache.return":
                obs.append(("topup.ret", field_int(r, "ret"), r.line))
                obs.append(("topup.cache_after", field_int(r, "cache_count"), r.line))
            elif p == "tdx_free_pamt_cache.entry":
                obs.append(("cache_free.count", field_int(r, "cache_count"), r.line))
    return out


def model_observations(steps: Sequence[Step]) -> dict[str, list[Obs]]:
    """The model's observations per simulated CPU, from the replay's step labels and effects
    (explorer/model/narration.py): the same kinds as :func:`kernel_observations`."""
    out: dict[str, list[Obs]] = {}
    cache: dict[int, int] = {}
    open_get: dict[str, dict[str, Any]] = {}
    in_topup: dict[str, dict[str, Any]] = {}

    def close(cpu: str) -> None:
        g = open_get.pop(cpu, None)
        if g is not None:
            obs = out.setdefault(cpu, [])
            obs.append(("get.ret", g["ret"], g["step"]))
            obs.append(("get.path", g["path"], g["step"]))
            obs.append(("get.outcome", g["outcome"] or "none", g["step"]))
            if cpu.startswith("vcpu"):
                obs.append(("get.cache_after", cache.get(int(cpu[4:]), 0), g["step"]))
        tp = in_topup.pop(cpu, None)
        if tp is not None:
            obs = out.setdefault(cpu, [])
            obs.append(("topup.ret", tp["ret"], tp["step"]))
            obs.append(("topup.cache_after", cache.get(int(cpu[4:]), 0), tp["step"]))

    for s in steps:
        cpu = s.cpu
        lab = s.label
        new_call = s.function != "tdx_pamt_get" or lab in ("pamt_get.fast", "pamt_get.slow")
        if new_call and (s.function != "tdx_topup_pamt_cache" or cpu in open_get):
            close(cpu)
        for e in s.effects:
            if e.kind == "pamt_cache" and isinstance(e.key, int) and isinstance(e.new, int):
                if lab == "pamt_cache.free" and isinstance(e.old, int):
                    out.setdefault(cpu, []).append(("cache_free.count", e.old, s.index))
                cache[e.key] = e.new
        if lab in ("pamt_get.fast", "pamt_get.slow"):
            open_get[cpu] = {
                "ret": 0,
                "path": lab.rpartition(".")[2],
                "outcome": None,
                "step": s.index,
            }
        elif cpu in open_get and s.function == "tdx_pamt_get":
            g = open_get[cpu]
            g["step"] = s.index
            if lab == "pamt_get.add":
                g["outcome"] = "added"
                for e in s.effects:
                    if e.kind == "pair":
                        out.setdefault(cpu, []).append(("pamt_add.region", e.key, s.index))
            elif lab == "pamt_get.lost_race":
                g["outcome"] = "lost_race"
            elif lab in ("pamt_get.enomem", "pamt_get.partial"):
                g["outcome"], g["ret"] = "failed", ENOMEM
            elif lab == "pamt_get.add_fail":
                g["outcome"], g["ret"] = "failed", EIO
        if s.function == "tdx_topup_pamt_cache":
            tp = in_topup.setdefault(cpu, {"ret": 0, "step": s.index})
            tp["step"] = s.index
            if lab == "pamt_cache.topup_fail":
                tp["ret"] = ENOMEM
        if lab == "pamt_put.remove":
            for e in s.effects:
                if e.kind == "pair":
                    out.setdefault(cpu, []).append(("pamt_remove.region", e.key, s.index))
    for cpu in list(open_get) + list(in_topup):
        close(cpu)
    return out


def conform(capture: Capture, settings: Settings | None = None) -> Conformance:
    """Import ``capture``, replay it (with the imported settings unless ``settings`` is given)
    and compare the kernel's observations with the model's, per thread and kind, in order.
    Regions are compared through a one-to-one map (kernel region -> model region) built as they
    are met: the model's page allocator does not pick the kernel's pfns, only the pinned leaves
    are the same pages."""
    imp = import_capture(capture)
    tl = replay(imp.events, settings or imp.settings)
    steps = tl.steps_between(0, tl.nr_steps)
    kern = kernel_observations(capture, imp)
    model = model_observations(steps)
    fwd: dict[int, int] = {}
    back: dict[int, int] = {}
    divs: list[Divergence] = []
    matches: list[Match] = []
    total = 0
    for cpu in sorted(set(kern) | set(model)):
        kinds = sorted({k for k, _, _ in kern.get(cpu, [])} | {k for k, _, _ in model.get(cpu, [])})
        for kind in kinds:
            ko = [o for o in kern.get(cpu, []) if o[0] == kind]
            mo = [o for o in model.get(cpu, []) if o[0] == kind]
            total += len(ko)
            for i in range(max(len(ko), len(mo))):
                k = ko[i] if i < len(ko) else None
                m = mo[i] if i < len(mo) else None
                line = k[2] if k else (ko[-1][2] if ko else 0)
                step = m[2] if m else -1
                if k is None or m is None:
                    divs.append(
                        Divergence(line, kind, k[1] if k else None, m[1] if m else None, step)
                    )
                    continue
                if kind.endswith(".region"):
                    kr, mr = k[1], m[1]
                    if fwd.get(kr, mr) == mr and back.get(mr, kr) == kr:
                        fwd[kr], back[mr] = mr, kr
                        matches.append(Match(line, kind, hex(kr), step))
                        continue
                    divs.append(Divergence(line, kind, hex(kr), hex(mr), step))
                elif k[1] != m[1]:
                    divs.append(Divergence(line, kind, k[1], m[1], step))
                else:
                    matches.append(Match(line, kind, k[1], step))
    divs.sort(key=lambda d: (d.line, d.kind))
    stopped = tl.stopped.message if tl.stopped is not None else None
    matches.sort(key=lambda m: (m.step, m.line))
    return Conformance(not divs and stopped is None, total, divs, stopped, matches)
