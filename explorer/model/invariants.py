"""The invariants of dpamt-model.md section 10, checked after every step.

A violated invariant is recorded as a ``violation`` diagnostic on the step, never raised: a
broken mode (or a bug in the explorer) must show up in the app at the exact step.

1. With ``pamt_lock`` free, ``refcount[r] > 0`` exactly when the TDX module has a pair for r
   (in ``v5-hint`` also "0 with a pair" inside a put's unlocked-decrement window).
2. ``refcount[r]`` = references held by callers on r (control pages, linked S-EPT tables, mapped
   guest pages, each counted from the successful ``tdx_pamt_get`` to the ``tdx_pamt_put``) plus
   one orphan reference per failed PAMT.REMOVE. Checked at every step: a get counts from its
   increment, a put's reference until its decrement (what the gets and puts in flight owe,
   ``KernelState.pamt_enter``), which at a region with none in flight is the model's identity.
3. No page is in TD use on a region without a pair (the module's own ``used`` count).
4. Every installed pair owns exactly two distinct pages that the kernel holds as pair pages
   (``pamt_pair``, or ``leaked`` after a failed REMOVE) and the module holds as PAMT pages.
5. Page conservation: owners sum to the host's pages, and each owner's count matches the
   structures that hold those pages (checked at quiescent points, between batches, where no page
   is in a CPU's hands; cache and pair counts after every step).
6. No sleeping allocation while holding ``pamt_lock`` or ``mmu_lock``: checked where the
   allocation happens (:meth:`explorer.model.state.KernelState.alloc_page`).
"""

from __future__ import annotations

from collections.abc import Set
from typing import Final

from explorer.model.records import OWNER_CODE
from explorer.model.state import KernelState
from explorer.model.tdx_module import KIND_CODE

O_PAIR: Final = OWNER_CODE["pamt_pair"]
O_PAMT_CACHE: Final = OWNER_CODE["pamt_cache"]
O_KVM_CACHE: Final = OWNER_CODE["kvm_cache"]
O_SEPT: Final = OWNER_CODE["sept"]
O_MIRROR: Final = OWNER_CODE["mirror"]
O_CONTROL: Final = OWNER_CODE["control"]
O_GUEST: Final = OWNER_CODE["guest"]
O_LEAKED: Final = OWNER_CODE["leaked"]
O_IN_HAND: Final = OWNER_CODE["in_hand"]

_PAMT_KIND: Final = KIND_CODE["pamt"]
_PAIR_OWNERS: Final = (O_PAIR, O_LEAKED)


def check_regions(m: KernelState, regions: Set[int], all_pairs: bool = False) -> None:
    """Invariants 1 to 4 on ``regions`` (the ones the step touched, or all in full mode).

    Runs after every step that touches a region (millions of times in a long replay), so it
    looks each table up once and sorts nothing when one region (the usual case) changed.
    Invariant 4 (the pair's two pages) is checked where the step added or removed a pair
    (``m.pair_dirty``), or everywhere with ``all_pairs``: a pair page that changes owner
    otherwise shows in the page counts of invariant 5 (:func:`check_global`)."""
    lock_free = m.pamt_lock is None
    pairs = m.module.pairs
    refcount, gotten, orphans, owed = m.refcount, m.gotten, m.orphans, m.owed
    used = m.module.used
    pair_dirty = m.pair_dirty
    for r in sorted(regions) if len(regions) > 1 else regions:
        rc = refcount.get(r, 0)
        pair = pairs.get(r)
        if (
            lock_free
            and (rc > 0) != (pair is not None)
            # v5-hint: 0 with a pair inside a put's unlocked-decrement window is allowed
            and not (m.mode == "v5-hint" and rc == 0 and r in m.v5_put_window)
        ):
            m.diag(
                "violation",
                "INV1_REFCOUNT_PAIR",
                f"region {r}: refcount {rc} but {'a' if pair else 'no'} PAMT pair "
                "with pamt_lock free (explorer invariant 1)",
            )
        held = gotten.get(r, 0)
        orphaned = orphans.get(r, 0) if orphans else 0
        pending = owed.get(r, 0) if owed else 0
        if rc != held + orphaned + pending:
            flight = f" + {pending} owed by a get or put in flight" if pending else ""
            m.diag(
                "violation",
                "INV2_REFCOUNT_USERS",
                f"region {r}: refcount {rc} != {held} pages gotten + {orphaned} orphan(s)"
                f"{flight} (explorer invariant 2)",
            )
        if pair is None:
            if used.get(r, 0):
                m.diag(
                    "violation",
                    "INV3_MISSING_PAIR",
                    f"region {r}: {used[r]} page(s) in TD use without a PAMT pair "
                    "(explorer invariant 3)",
                )
        elif all_pairs or r in pair_dirty:
            _check_pair(m, r, pair)


def _check_pair(m: KernelState, r: int, pair: tuple[int, int]) -> None:
    """Invariant 4: the pair is two distinct pages, held only as PAMT pages by both sides."""
    a, b = pair
    owner, kind = m.mem.owner, m.module.kind
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
            f"region {r}: pair {a:#x}, {b:#x} is not two pages held only as PAMT pages "
            "(explorer invariant 4)",
        )


def check_global(m: KernelState, caches: bool = True) -> None:
    """Invariant 5, the parts that hold after every step: page conservation, and the pair pages
    against the pairs the module holds (the orphan count only when there is an orphan). Run
    after a step that moved a pair page or added or removed a pair (every step in the tests'
    full mode); :func:`check_quiescent` runs it between batches.

    ``caches``: also count the pages in every vCPU's caches against their owners. That sum runs
    over every vCPU (40 lists with 8 vCPUs): done after every step in the tests' full mode, and
    between batches (:func:`check_quiescent`) otherwise. A page only ever enters or leaves a
    cache together with its owner byte (``pamt_cache_push``/``pop``, KVM's top-up and alloc),
    so between two quiescent points the counts can only disagree through an engine bug."""
    counts = m.mem.counts
    if sum(counts) != m.mem.total_pages:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"owners sum to {sum(counts)}, not {m.mem.total_pages} (explorer invariant 5)",
        )
    if caches:
        _check_caches(m)
    pairs_of = m.module.pairs
    leaked_pairs = sum([1 for r, n in m.orphans.items() if n and r in pairs_of]) if m.orphans else 0
    pairs = len(pairs_of)
    if counts[O_PAIR] + counts[O_LEAKED] != 2 * pairs or counts[O_LEAKED] != 2 * leaked_pairs:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"{counts[O_PAIR]} pair + {counts[O_LEAKED]} leaked pages for {pairs} pairs "
            f"({leaked_pairs} leaked) (explorer invariant 5)",
        )


def _check_caches(m: KernelState) -> None:
    """The pages owned as cache pages are the pages in the caches (all vCPUs)."""
    in_pamt_cache = in_kvm = 0
    for v in m.vcpus.values():  # plain loops: compiled, no list or generator built per batch
        in_pamt_cache += len(v.pamt_cache)
        for c in v.caches.values():
            in_kvm += len(c.pfns)
    pool = m.extra.get("mempool")
    if pool is not None:
        in_pamt_cache += len(pool)
    _cache_counts(m, in_pamt_cache, in_kvm)


def _cache_counts(m: KernelState, in_pamt_cache: int, in_kvm: int) -> None:
    counts = m.mem.counts
    if counts[O_PAMT_CACHE] != in_pamt_cache:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"{counts[O_PAMT_CACHE]} pages owned as pamt_cache, {in_pamt_cache} in the caches "
            "(explorer invariant 5)",
        )
    if counts[O_KVM_CACHE] != in_kvm:
        m.diag(
            "violation",
            "INV5_CONSERVATION",
            f"{counts[O_KVM_CACHE]} pages owned as kvm_cache, {in_kvm} in KVM's caches "
            "(explorer invariant 5)",
        )


#: What the TDs and vCPUs hold, per owner, at a quiescent point (see :func:`quiescent_totals`):
#: guest, control, sept, mirror, pamt_cache, kvm_cache pages, and how many TDs hold mmu_lock.
_T_GUEST: Final = 0
_T_CONTROL: Final = 1
_T_SEPT: Final = 2
_T_MIRROR: Final = 3
_T_PAMT_CACHE: Final = 4
_T_KVM_CACHE: Final = 5
_T_MMU_HELD: Final = 6
#: Up to this many TDs and vCPUs, every one is counted after every batch (a few plain loops,
#: cheaper than keeping rows up to date); past it, only those a batch ran on.
_SMALL: Final = 24


def _td_row(m: KernelState, td: int) -> tuple[int, int, int, int, int]:
    """guest, control, sept, mirror pages of a TD, and 1 if it holds mmu_lock."""
    t = m.tds.get(td)
    if t is None:
        return (0, 0, 0, 0, 0)
    n = len(t.entries)
    held = 1 if t.mmu_readers or t.mmu_writer is not None else 0
    return (len(t.gmem), len(t.control), n, n + (t.mirror_root is not None), held)


def _vcpu_row(m: KernelState, vcpu: int) -> tuple[int, int, int]:
    """control, DPAMT cache and KVM cache pages of a vCPU."""
    v = m.vcpus.get(vcpu)
    if v is None:
        return (0, 0, 0)
    kvm = 0
    for c in v.caches.values():
        kvm += len(c.pfns)
    return (len(v.control), len(v.pamt_cache), kvm)


def _recount_td(m: KernelState, td: int) -> None:
    new = _td_row(m, td)
    old = m.q_td_rows.get(td, (0, 0, 0, 0, 0))
    if new != old:
        total = m.q_total
        total[_T_GUEST] += new[0] - old[0]
        total[_T_CONTROL] += new[1] - old[1]
        total[_T_SEPT] += new[2] - old[2]
        total[_T_MIRROR] += new[3] - old[3]
        total[_T_MMU_HELD] += new[4] - old[4]
        if new == (0, 0, 0, 0, 0):
            del m.q_td_rows[td]  # (a row of zeros is not kept: a recount keeps none either)
        else:
            m.q_td_rows[td] = new


def _recount_vcpu(m: KernelState, vcpu: int) -> None:
    new = _vcpu_row(m, vcpu)
    old = m.q_vcpu_rows.get(vcpu, (0, 0, 0))
    if new != old:
        total = m.q_total
        total[_T_CONTROL] += new[0] - old[0]
        total[_T_PAMT_CACHE] += new[1] - old[1]
        total[_T_KVM_CACHE] += new[2] - old[2]
        if new == (0, 0, 0):
            del m.q_vcpu_rows[vcpu]
        else:
            m.q_vcpu_rows[vcpu] = new


def _recount_all(m: KernelState) -> None:
    m.q_td_rows = {}
    m.q_vcpu_rows = {}
    m.q_total = [0] * 7
    for k in m.tds:
        _recount_td(m, k)
    for k in m.vcpus:
        _recount_vcpu(m, k)


def quiescent_totals(m: KernelState) -> list[int]:
    """The pages the TDs and vCPUs hold, per owner (rows ``_T_*``), kept up to date between
    batches by recounting only the TDs and vCPUs the batch ran on (``Machine.batch_owners``:
    a TD's and a vCPU's structures change only through their own threads' events).

    Why: recounting every TD and vCPU after every batch cost O(TDs + vCPUs) per batch, which a
    trace with a thousand TDs, or with vCPUs created and freed all along, turned into the whole
    replay (1,265 faults/s with 5,000 vCPUs over the trace). In the tests' full mode every row
    is also recounted and compared, so a TD or vCPU changed by a batch that did not name it is
    reported (``ENGINE_QUIESCENT_ROWS``), never silently missed."""
    if m.q_all:
        _recount_all(m)
        m.q_all = False
    else:
        for k in m._batch_vcpus:
            _recount_vcpu(m, k)
            v = m.vcpus.get(k)
            if v is not None:
                _recount_td(m, v.td)
        for k in m._batch_tds:
            _recount_td(m, k)
        for k in m._batch_destroys:
            t = m.tds.get(k)
            if t is not None:
                for vk in t.vcpus:
                    _recount_vcpu(m, vk)
        if m.full_check:
            kept = (m.q_td_rows, m.q_vcpu_rows, list(m.q_total))
            _recount_all(m)
            if kept != (m.q_td_rows, m.q_vcpu_rows, m.q_total):
                m.diag(
                    "violation",
                    "ENGINE_QUIESCENT_ROWS",
                    f"the counts kept between batches {kept[2]} differ from a recount "
                    f"{m.q_total}: a batch changed a TD or vCPU it did not run on (the "
                    "explorer's own check)",
                )
            gotten, used = sum(m.gotten.values()), sum(m.module.used.values())
            if m.gotten_total != gotten or m.module.used_total != used:
                m.diag(
                    "violation",
                    "ENGINE_QUIESCENT_ROWS",
                    f"running sums of references held ({m.gotten_total}) and pages in use "
                    f"({m.module.used_total}) differ from a recount ({gotten}, {used}) "
                    "(the explorer's own check)",
                )
    return m.q_total


def check_quiescent(m: KernelState) -> None:
    """Invariant 5 in full, between batches: every owner count matches its structures, and no
    lock or get/put in flight survived the batch. (After every batch: the TDs and vCPUs the
    batch ran on are recounted, :func:`quiescent_totals`, or all of them on a small machine;
    the caches are compared only after a batch that moved a page into or out of one.)"""
    caches = m.caches_moved
    m.caches_moved = False
    check_global(m, m.full_check)
    if not m.full_check and len(m.tds) + len(m.vcpus) <= _SMALL:
        m.q_all = True  # (no rows kept: recounted in full if the machine grows)
        guest = control = sept = mirror = 0
        mmu_held = False
        for t in m.tds.values():
            guest += len(t.gmem)
            control += len(t.control)
            n = len(t.entries)
            sept += n
            mirror += n + (t.mirror_root is not None)
            if t.mmu_readers or t.mmu_writer is not None:
                mmu_held = True
        for v in m.vcpus.values():
            control += len(v.control)
        if caches:
            _check_caches(m)
    else:
        total = quiescent_totals(m)
        guest, control = total[_T_GUEST], total[_T_CONTROL]
        sept, mirror = total[_T_SEPT], total[_T_MIRROR]
        mmu_held = total[_T_MMU_HELD] > 0
        if caches and not m.full_check:  # (full mode: check_global counted them just now)
            pool = m.extra.get("mempool")
            in_pamt = total[_T_PAMT_CACHE] + (len(pool) if pool is not None else 0)
            _cache_counts(m, in_pamt, total[_T_KVM_CACHE])
    counts = m.mem.counts
    if (
        counts[O_IN_HAND] == 0
        and counts[O_GUEST] == guest
        and counts[O_CONTROL] == control
        and counts[O_SEPT] == sept
        and counts[O_MIRROR] == mirror
    ):
        mismatched: tuple[tuple[str, int, int], ...] = ()  # the usual case: nothing built
    else:
        mismatched = (
            ("in_hand", counts[O_IN_HAND], 0),
            ("guest", counts[O_GUEST], guest),
            ("control", counts[O_CONTROL], control),
            ("sept", counts[O_SEPT], sept),
            ("mirror", counts[O_MIRROR], mirror),
        )
    for name, owned, held in mismatched:
        if owned != held:
            m.diag(
                "violation",
                "INV5_CONSERVATION",
                f"{owned} pages owned as {name}, but the structures hold {held} "
                "(explorer invariant 5)",
            )
    if m.inflight or m.pamt_lock is not None or mmu_held:
        m.diag(
            "violation",
            "LOCK_LEAK",
            "a lock or an in-flight get/put survived its batch (the explorer's check)",
        )
