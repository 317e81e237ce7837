"""The replay summary: the JSON contract of ``python -m explorer replay TRACE --json``.

Keys and meanings are fixed by issue 3 (other tools read them): ``ok``, ``events``, ``steps``,
``settings``, ``counters``, ``regions``, ``pamt_cache``, ``pages`` (summing to ``total``) and
``diagnostics``. Deterministic: keys in a fixed order, regions and vCPUs sorted.
"""

from __future__ import annotations

from typing import Any

from explorer.model.machine import Machine
from explorer.model.records import SUMMARY_PAGE_KEYS

SUMMARY_COUNTERS = (
    "faults",
    "fault_retries",
    "faults_failed",
    "pamt_get",
    "pamt_get_fast",
    "pamt_get_slow",
    "pamt_lost_race",
    "pamt_add",
    "pamt_add_failed",
    "pamt_put",
    "pamt_remove",
    "pamt_remove_failed",
)


def summary(m: Machine, nr_events: int) -> dict[str, Any]:
    """The final state of a replay. ``ok`` is False if it stopped early or saw a violation."""
    regions: dict[str, Any] = {}
    for r in sorted(set(m.refcount) | set(m.module.pairs)):
        pair = m.module.pairs.get(r)
        regions[str(r)] = {"refcount": m.refcount.get(r, 0), "pair": list(pair) if pair else None}
    pages = m.page_summary()
    violations = any(d.kind == "violation" for d in m.diagnostics)
    return {
        "ok": m.stopped is None and not violations,
        "events": nr_events,
        "steps": m.nr_steps,
        "settings": m.settings.to_dict(),
        "counters": {k: m.counters[k] for k in SUMMARY_COUNTERS},
        "regions": regions,
        "pamt_cache": {
            str(v.id): len(v.pamt_cache) for v in sorted(m.vcpus.values(), key=lambda v: v.id)
        },
        "pages": {k: pages[k] for k in SUMMARY_PAGE_KEYS},
        "diagnostics": [
            {
                "step": d.step,
                "event": d.event,
                "line": d.line,
                "kind": d.kind,
                "code": d.code,
                "message": d.message,
            }
            for d in m.diagnostics
        ],
    }
