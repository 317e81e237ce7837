"""The invariants of dpamt-model.md section 10, checked after every step.

A violated invariant is recorded as a ``violation`` diagnostic on the step, never raised: a
broken mode (or a bug in the explorer) must show up in the app at the exact step.

1. With ``pamt_lock`` free, ``refcount[r] > 0`` exactly when the TDX module has a pair for r
   (in ``v5-hint`` also "0 with a pair" inside a put's unlocked-decrement window).
2. ``refcount[r]`` = references held by callers on r (control pages, linked S-EPT tables, mapped
   guest pages, each counted from the successful ``tdx_pamt_get`` to the ``tdx_pamt_put``) plus
   one orphan reference per failed PAMT.REMOVE. Checked when no get/put on r is in flight.
3. No page is in TD use on a region without a pair (the module's own ``used`` count).
4. Every installed pair owns exactly two distinct pages that the kernel holds as pair pages
   (``pamt_pair``, or ``leaked`` after a failed REMOVE) and the module holds as PAMT pages.
5. Page conservation: owners sum to the host's pages, and each owner's count matches the
   structures that hold those pages (checked at quiescent points, between batches, where no page
   is in a CPU's hands; cache and pair counts after every step).
6. No sleeping allocation while holding ``pamt_lock`` or ``mmu_lock``: checked where the
   allocation happens (:meth:`explorer.model.machine.Machine.alloc_page`).
"""

from __future__ import annotations

from collections.abc import Iterable

from explorer.model.machine import (
    O_CONTROL,
    O_GUEST,
    O_IN_HAND,
    O_KVM_CACHE,
    O_LEAKED,
    O_MIRROR,
    O_PAIR,
    O_PAMT_CACHE,
    O_SEPT,
    Machine,
)
from explorer.model.tdx_module import KIND_CODE

_PAMT_KIND = KIND_CODE["pamt"]
_PAIR_OWNERS = (O_PAIR, O_LEAKED)


def check_regions(m: Machine, regions: Iterable[int]) -> None:
    """Invariants 1 to 4 on ``regions`` (the ones the step touched, or all in full mode).

    Runs after every step that touches a region (a few hundred thousand times in a long
    replay): the tables are looked up once, outside the loop, and the pair's two pages are
    checked without building a set."""
    lock_free = m.pamt_lock is None
    pairs = m.module.pairs
    refcount, gotten, orphans, inflight = m.refcount, m.gotten, m.orphans, m.inflight
    used, owner, kind = m.module.used, m.mem.owner, m.module.kind
    v5 = m.mode == "v5-hint"
    for r in sorted(regions):
        rc = refcount.get(r, 0)
        pair = pairs.get(r)
        v5_window = v5 and rc == 0 and pair is not None and r in m.v5_put_window
        if lock_free and (rc > 0) != (pair is not None) and not v5_window:
            m.diag(
                "violation",
                "INV1_REFCOUNT_PAIR",
                f"region {r}: refcount {rc} but {'a' if pair else 'no'} PAMT pair "
                "with pamt_lock free",
            )
        if r not in inflight:
            held = gotten.get(r, 0)
            orphaned = orphans.get(r, 0)
            if rc != held + orphaned:
                m.diag(
                    "violation",
                    "INV2_REFCOUNT_USERS",
                    f"region {r}: refcount {rc} != {held} pages gotten + {orphaned} orphan(s)",
                )
        if used.get(r, 0) and pair is None:
            m.diag(
                "violation",
                "INV3_MISSING_PAIR",
                f"region {r}: {used[r]} page(s) in TD use without a PAMT pair",
            )
        if pair is not None:
            a, b = pair
            if (
                a == b
                or owner(a) not in _PAIR_OWNERS
                or owner(b) not in _PAIR_OWNERS
                or kind(a) != _PAMT_KIND
                or kind(b) != _PAMT_KIND
            ):
                m.diag(
                    "violation",
                    "INV4_PAIR_PAGES",
                    f"region {r}: pair {a:#x}, {b:#x} is not two pages held only as PAMT pages",
                )


def check_global(m: Machine) -> None:
    """Invariant 5, the parts that hold after every step: caches and pairs vs page owners.

    Runs after every step that changes a page's owner: the sums are list comprehensions (about
    twice as fast as generator expressions on CPython 3.11), the orphan count is skipped when
    there is no orphan."""
    counts = m.mem.counts
    if sum(counts) != m.mem.total_pages:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"owners sum to {sum(counts)}, not {m.mem.total_pages}",
        )
    vcpus = m.vcpus.values()
    in_pamt_cache = sum([len(v.pamt_cache) for v in vcpus])
    in_pamt_cache += len(m.extra.get("mempool", ()))
    if counts[O_PAMT_CACHE] != in_pamt_cache:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"{counts[O_PAMT_CACHE]} pages owned as pamt_cache, {in_pamt_cache} in the caches",
        )
    in_kvm = sum([len(c.pfns) for v in vcpus for c in v.caches.values()])
    if counts[O_KVM_CACHE] != in_kvm:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"{counts[O_KVM_CACHE]} pages owned as kvm_cache, {in_kvm} in KVM's caches",
        )
    pairs_of = m.module.pairs
    leaked_pairs = sum([1 for r, n in m.orphans.items() if n and r in pairs_of]) if m.orphans else 0
    pairs = len(pairs_of)
    if counts[O_PAIR] + counts[O_LEAKED] != 2 * pairs or counts[O_LEAKED] != 2 * leaked_pairs:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"{counts[O_PAIR]} pair + {counts[O_LEAKED]} leaked pages for {pairs} pairs "
            f"({leaked_pairs} leaked)",
        )


def check_quiescent(m: Machine) -> None:
    """Invariant 5 in full, between batches: every owner count matches its structures."""
    counts = m.mem.counts
    expect = {
        "in_hand": (counts[O_IN_HAND], 0),
        "guest": (counts[O_GUEST], sum(len(t.gmem) for t in m.tds.values())),
        "control": (
            counts[O_CONTROL],
            sum(len(t.control) for t in m.tds.values())
            + sum(len(v.control) for v in m.vcpus.values()),
        ),
        "sept": (counts[O_SEPT], sum(len(t.entries) for t in m.tds.values())),
        "mirror": (
            counts[O_MIRROR],
            sum(len(t.entries) + (t.mirror_root is not None) for t in m.tds.values()),
        ),
    }
    for name, (owned, held) in expect.items():
        if owned != held:
            m.diag(
                "violation",
                "INV5_CONSERVATION",
                f"{owned} pages owned as {name}, but the structures hold {held}",
            )
    mmu_held = any(t.mmu_readers or t.mmu_writer for t in m.tds.values())
    if m.inflight or m.pamt_lock is not None or mmu_held:
        m.diag("violation", "LOCK_LEAK", "a lock or an in-flight get/put survived its batch")
