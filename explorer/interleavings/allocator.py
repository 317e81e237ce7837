"""Which page allocator a search of every interleaving uses when nobody named one.

A replay runs one schedule, and its default allocator (``lowest``: the lowest free page, the
buddy allocator's locality) is fine for it. A search runs every schedule, and under a global
"lowest free page" every allocation of one CPU changes what the next allocation of every other
CPU gets: two vCPUs topping up their caches at once (``kvm_mmu_topup_memory_cache``,
``tdx_topup_pamt_cache``) are then a race in every order of their top-ups, which the kernel
does not have: an order-0 ``alloc_page()`` takes from the current CPU's own list
(``rmqueue_pcplist()``), so concurrent CPUs do not see each other's allocations. Measured on a
fresh TD whose two vCPUs take their first faults on one 2 MiB range (docs/interleavings.md,
"The allocator's orders"): unfinished after 260,000 states with ``lowest``, 4,252 states in
about 1 s with ``percpu``; twenty TDs each faulting its own cold region: 621 states (both
before fused turns: 1,472 and 21 with them, 726 and 21 with edges extended past their
conflicting turn).

So a search uses ``percpu`` (:mod:`explorer.model.memory`) unless the trace's header or the
user names an allocator; the settings it returns are what links and pinned traces carry, so a
finding replays with the allocator it was found with.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from explorer.model.settings import Settings

#: The allocator a search uses when neither the trace nor the user names one.
EXPLORE_ALLOCATOR: Final = "percpu"


def explore_settings(settings: Settings, named: Collection[str]) -> Settings:
    """``settings`` for a search: the allocator :data:`EXPLORE_ALLOCATOR` unless ``named`` (the
    keys the trace's header and the user's overrides give) names one."""
    if "allocator" in named or settings.allocator == EXPLORE_ALLOCATOR:
        return settings
    return settings.with_overrides({"allocator": EXPLORE_ALLOCATOR})


def named_keys(header: Collection[str], assignments: Collection[str]) -> set[str]:
    """The setting keys a trace's header and ``--set KEY=VALUE`` assignments name."""
    return set(header) | {a.partition("=")[0].strip() for a in assignments}
