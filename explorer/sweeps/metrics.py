"""What a configuration costs on a trace: the figures the design review compares.

One bulk replay (steps counted, not stored), sampled after every batch of events: pages held idle
in DPAMT caches (per vCPU and in total, peak and mean over events), PAMT pairs installed (peak
and final), DPAMT memory against static PAMT for the same host, and the counters that tell the
designs apart (slow gets, lost races, pages drained to the allocator, retries, livelocks,
allocations under a lock, violations). Pure standard library, so sweeps can run it in worker
processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from explorer.model.constants import PAGE_SIZE, PAGES_PER_REGION, PAMT_ENTRY_SIZE
from explorer.model.events import Event, reserved_pfns
from explorer.model.machine import Machine, batches
from explorer.model.settings import Settings


@dataclass
class RunMetrics:
    """Figures of one configuration on one trace, plus per-event series for charts."""

    settings: Settings
    events: int
    steps: int
    stopped: str | None
    counters: dict[str, int]
    violations: int
    idle_peak: int  # pages held in DPAMT caches (all vCPUs, and the mempool reserve), peak
    idle_mean: float
    idle_peak_per_vcpu: dict[int, int]
    idle_mean_per_vcpu: dict[int, float]
    pairs_peak: int
    pairs_final: int
    speculative_refs_peak: int  # DPAMT references held for pages the TDX module is not using
    dpamt_bytes_peak: int  # pair pages only (the static parts are shown separately)
    static_pamt_4k_bytes: int  # what the static 4 KiB PAMT level costs for this host
    #: per-event series, one value per event (state after the batch holding the event)
    series: dict[str, list[int]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat row for tables, CSV and charts."""
        c = self.counters
        return {
            **{f"setting.{k}": v for k, v in self.settings.to_dict().items()},
            "events": self.events,
            "steps": self.steps,
            "stopped": self.stopped or "",
            "idle_pages_peak": self.idle_peak,
            "idle_pages_mean": round(self.idle_mean, 3),
            "pairs_peak": self.pairs_peak,
            "pairs_final": self.pairs_final,
            "speculative_refs_peak": self.speculative_refs_peak,
            "dpamt_pair_bytes_peak": self.dpamt_bytes_peak,
            "static_pamt_4k_bytes": self.static_pamt_4k_bytes,
            "gets_slow": c["pamt_get_slow"],
            "lost_races": c["pamt_lost_race"],
            "pages_drained": c["pamt_pages_drained"],
            "retries": c["fault_retries"],
            "livelocks": c["livelocks"],
            "faults_failed": c["faults_failed"],
            "allocs_under_lock": c["allocs_under_lock"],
            "pamt_add": c["pamt_add"],
            "pamt_remove": c["pamt_remove"],
            "violations": self.violations,
        }


def idle_pages(m: Machine, idle: dict[int, int] | None = None) -> dict[int, int]:
    """Pages each live vCPU holds in its DPAMT cache right now (-1: the shared mempool reserve).

    ``idle``: the same after the previous batch, updated here for the vCPUs the last batch ran
    on only (``Machine.batch_owners``: no other vCPU's cache can have changed), so that a trace
    whose vCPUs come and go costs per batch what its batch did, not a pass over every vCPU."""
    if idle is None:
        out = {v.id: len(v.pamt_cache) for v in m.vcpus.values() if v.alive}
    else:
        out = idle
        for k in m.batch_owners()[1]:
            v = m.vcpus.get(k)
            if v is not None and v.alive:
                out[k] = len(v.pamt_cache)
            else:
                out.pop(k, None)
    pool = m.extra.get("mempool")
    if pool is not None:
        out[-1] = len(pool)
    return out


def run_metrics(events: Sequence[Event], settings: Settings) -> RunMetrics:
    """Replay ``events`` under ``settings`` and measure it (deterministic)."""
    m = Machine(settings, record=False, check=True)
    m.mem.pin(reserved_pfns(events))  # (an imported capture's pages, as conform replays)
    total_series: list[int] = []
    pairs_series: list[int] = []
    spec_peak = 0
    per_vcpu_sum: dict[int, int] = {}
    per_vcpu_peak: dict[int, int] = {}
    per_vcpu_n: dict[int, int] = {}
    idle: dict[int, int] = {}
    for start, end in batches(events):
        if m.stopped is not None:
            break
        m.run_batch((i, events[i]) for i in range(start, end))
        idle = idle_pages(m, idle)
        total = sum(idle.values())
        pairs = len(m.module.pairs)
        # between batches every reference is for a page in TD use, unless a design takes
        # references early (v5-topup-install: for every S-EPT page in KVM's cache)
        spec_peak = max(spec_peak, m.gotten_total - m.module.used_total)
        for _ in range(start, end):
            total_series.append(total)
            pairs_series.append(pairs)
            for v, n in idle.items():
                per_vcpu_sum[v] = per_vcpu_sum.get(v, 0) + n
                per_vcpu_n[v] = per_vcpu_n.get(v, 0) + 1
                per_vcpu_peak[v] = max(per_vcpu_peak.get(v, 0), n)
    n = max(len(total_series), 1)
    violations = sum(1 for d in m.diagnostics if d.kind == "violation")
    return RunMetrics(
        settings=settings,
        events=len(events),
        steps=m.nr_steps,
        stopped=m.stopped.message if m.stopped else None,
        counters=dict(m.counters),
        violations=violations,
        idle_peak=max(total_series, default=0),
        idle_mean=sum(total_series) / n,
        idle_peak_per_vcpu=dict(sorted(per_vcpu_peak.items())),
        idle_mean_per_vcpu={v: per_vcpu_sum[v] / per_vcpu_n[v] for v in sorted(per_vcpu_sum)},
        pairs_peak=max(pairs_series, default=0),
        pairs_final=len(m.module.pairs),
        speculative_refs_peak=spec_peak,
        dpamt_bytes_peak=max(pairs_series, default=0) * 2 * PAGE_SIZE,
        static_pamt_4k_bytes=settings.nr_regions * PAGES_PER_REGION * PAMT_ENTRY_SIZE,
        series={"idle_pages": total_series, "pairs": pairs_series},
    )
