"""What changed: a step's effects as a table, and the difference between two snapshots."""

from __future__ import annotations

from typing import Any

import pandas as pd

from explorer.model.records import Snapshot, Step
from explorer.replay.render import format_effect


def effects_table(step: Step) -> pd.DataFrame:
    rows = []
    for e in step.effects:
        text = format_effect(e)
        what, _, change = text.partition(" ")
        old, _, new = change.partition("->")
        rows.append({"state": e.kind, "item": what, "old": old, "new": new})
    before = dict(step.counters_before)
    for name, value in step.counters:
        prev = before.get(name)
        rows.append(
            {
                "state": "counter",
                "item": name,
                "old": "" if prev is None else str(prev),
                "new": str(value),
            }
        )
    return pd.DataFrame(rows, columns=["state", "item", "old", "new"])


def _flat(s: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r, v in s.refcount.items():
        out[f"refcount[{r}]"] = v
    for r, p in s.pairs.items():
        out[f"pair[{r}]"] = f"{p[0]:#x}, {p[1]:#x}"
    for r, v in s.orphans.items():
        out[f"orphans[{r}]"] = v
    for vc in s.vcpus:
        out[f"pamt_cache[vCPU {vc.vcpu}]"] = len(vc.pamt_cache)
        for c in vc.kvm_caches:
            out[f"{c.name}[vCPU {vc.vcpu}]"] = c.count
    for k, v in s.pages.items():
        out[f"pages.{k}"] = v
    for k, v in s.counters.items():
        out[f"counter.{k}"] = v
    for t in s.tds:
        out[f"td{t.td}.state"] = t.state
        out[f"td{t.td}.mapped"] = t.mapped
        out[f"td{t.td}.sept_tables"] = t.sept_tables
    return out


def diff_snapshots(a: Snapshot, b: Snapshot) -> pd.DataFrame:
    """Every item that differs between ``a`` (column ``from``) and ``b`` (``to``); a missing
    item counts as 0."""
    fa, fb = _flat(a), _flat(b)
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, 0), fb.get(key, 0)
        if va != vb:
            rows.append({"item": key, "from": str(va), "to": str(vb)})
    return pd.DataFrame(rows, columns=["item", "from", "to"])
