"""Each mode of the engine beside the reason the sources give for it: quoted, with where it is from.

The seed is the commit message of "[PATCH v6 08/11] x86/tdx: Add APIs to support Dynamic PAMT ops
from KVM's fault path" (``/work/shared/seeds/000_36613d21d2d4af06.txt``; line numbers are that
file's). It rejects three designs (exporting KVM's MMU caches, installing DPAMT backing when
S-EPT tables are allocated, ``mempool_t``) and explains the NULL-cache rule of ``tdx_pamt_get()``.
Modes it does not discuss (``v6-locked``, ``v5-hint``, ``v4-shared-list`` and the two no-cache
baselines) carry their provenance instead, quoted from the v6 cover letter or another v6 patch.

Only text that is in those sources is a :class:`Quote`. What our model doc says beyond them
(e.g. "KVM tops up to 40 ... speculative references", "RCU callback took pamt_lock in softirq",
"no GFP_KERNEL_ACCOUNT on resize", SEAMCALL timings) is listed in ``beyond_sources`` as the
model's own assumption, not as a quote.
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.model.constants import MODES

LORE_PREFIX = "https://lore.kernel.org/kvm/20260526023515.288829-"
LORE_SUFFIX = "-rick.p.edgecombe@intel.com/"


def lore_link(patch: int) -> str:
    """Lore link of v6 patch ``patch`` (0 = the cover letter): message ``patch + 1`` of the thread."""
    if not 0 <= patch <= 11:
        raise ValueError("the v6 series has a cover letter (0) and patches 1..11")
    return f"{LORE_PREFIX}{patch + 1}{LORE_SUFFIX}"


#: The seed's own links: [0] and [1] of its list of rejected designs.
SEED_LINK_0 = (
    "https://lore.kernel.org/kvm/de05853257e9cc66998101943f78a4b7e6e3d741.camel@intel.com/"
)
SEED_LINK_1 = "https://lore.kernel.org/kvm/aYprxnSHKHUtk7pt@google.com/"

#: Passages of the v6 thread other than the seed, copied verbatim from the thread (line breaks
#: and a code comment's leading ``*`` folded to spaces), keyed by source. Every non-seed quote
#: below is a substring of one passage of its source.
SERIES_PASSAGES: dict[str, tuple[str, ...]] = {
    "v6 cover letter": (
        "b. Redid the solution for installing DPAMT backing for the pages the MMU uses for the "
        "S-EPT operations.",
        "After long discussions on v5, the changes for (b) were rolled back to the original "
        "solution in v4. Sean’s v5 included him trying to do Kai’s idea and running into "
        "trouble, then a second new idea which also was found to have issues on review of v5. "
        "By my count we have had at least 4 or 5 ideas by smart people that led us back to the "
        "same solution of keeping a cache of pages and adjusting the DPAMT right before give the "
        "page to the TDX module.",
        "I did not drop the optimization that uses the refcounts to avoid taking the global lock "
        "in tdx_pamt_get/put() because I considered it critical for making Dynamic PAMT default "
        "on. It is more about avoid regressing KVM EPT violation contention, and not about "
        "squeezing out more memory savings from Dynamic PAMT.",
    ),
    "v6 05/11 commit message": (
        "Serialize the refcount check and SEAMCALL with a global spinlock so the "
        "read-decide-act sequence is atomic. This also avoids TDX module BUSY errors, as Dynamic "
        "PAMT add and remove SEAMCALLs take an internal TDX module locks at 2MB granularity, so "
        "simultaneous attempts on the same region would conflict.",
        "The lock is global and heavyweight. Use simple conditional logic to keep correctness "
        "obvious. This will be optimized in a later change.",
    ),
    "v6 06/11 commit message": (
        "The Dynamic PAMT get/put helpers use a global spinlock to serialize all refcount "
        "updates and SEAMCALL invocations. This gives correct behavior for concurrent callers, "
        "but leads to contention. It is especially bad from the KVM side, which is designed to "
        "allow faulting in EPT under a shared lock. With the global spinlock, not only is the "
        "lock an exclusive one, but it is for all TDs instead of just a single one.",
    ),
    "v6 06/11 changelog": (
        "- Switch to atomic_dec_and_lock() and remove handling of races that are no longer "
        "needed as a result. Adjust comments as appropriate. (Dave)",
        "- Use atomic_set() in the HPA_RANGE_NOT_FREE case (Kiryl)",
    ),
    "v6 09/11 code comment": (
        "Immediately free the S-EPT page as the TDX subsystem doesn't support freeing pages "
        "from RCU callbacks, and more importantly because TDH.PHYMEM.PAGE.RECLAIM ensures there "
        "are no outstanding readers.",
    ),
}

#: The patch each non-seed source belongs to, for its lore link.
_SOURCE_PATCH = {
    "v6 cover letter": 0,
    "v6 05/11 commit message": 5,
    "v6 06/11 commit message": 6,
    "v6 06/11 changelog": 6,
    "v6 09/11 code comment": 9,
}
SEED_SOURCE = "v6 08/11 commit message"


@dataclass(frozen=True, slots=True)
class Quote:
    """Verbatim text of a source. ``lines`` are the seed file's (1-based, inclusive)."""

    text: str
    source: str
    lines: tuple[int, int] | None = None

    @property
    def link(self) -> str:
        return lore_link(8 if self.source == SEED_SOURCE else _SOURCE_PATCH[self.source])

    @property
    def citation(self) -> str:
        """``v6 08/11 commit message, lines 16-17`` or ``v6 cover letter``, with the lore link."""
        where = self.source
        if self.lines is not None:
            where += f", lines {self.lines[0]}-{self.lines[1]}"
        return f"{where} ({self.link})"


def _seed(text: str, first: int, last: int) -> Quote:
    return Quote(text, SEED_SOURCE, (first, last))


def _series(text: str, source: str) -> Quote:
    return Quote(text, source)


@dataclass(frozen=True, slots=True)
class DesignRecord:
    """One mode of the engine: what it is, why the sources accept or reject it, what we can show."""

    mode: str
    summary: str
    #: ``seed``: the seed gives the reason; ``provenance``: the seed does not discuss this mode,
    #: the quotes say where it comes from; ``broken``: broken on purpose (a check must catch it).
    kind: str
    provenance: str
    quotes: tuple[Quote, ...]
    can_show: str
    cannot_show: str
    #: What our model doc or the mode's mechanics assume that the quoted sources do not say.
    beyond_sources: str


_NULL_CACHE = _seed(
    "Not all DPAMT page installations will happen under spinlock, for example control pages. "
    "So have tdx_pamt_get() maintain the existing behavior of allocating from the page "
    "allocator when NULL is passed for the struct tdx_pamt_cache arg. This prevents excess "
    "allocations for cases where it can be avoided.",
    28,
    32,
)
_WHY_PREALLOCATE = _seed(
    "When handling an EPT violation, KVM holds a spinlock while manipulating the EPT. Before "
    "entering the spinlock it doesn't know how many EPT page tables will need to be installed "
    "or whether a huge page will be used. For this reason it allocates a worst case number of "
    "page tables that it might need as part of servicing the EPT violation.",
    4,
    8,
)

DESIGNS: tuple[DesignRecord, ...] = (
    DesignRecord(
        mode="v6",
        summary=(
            "The series as posted: a per-vCPU tdx_pamt_cache topped up before the MMU lock, "
            "tdx_pamt_get/put with the lock-free refcount fast path of 06/11."
        ),
        kind="seed",
        provenance="v6 patches 03-09 (the design the seed chooses)",
        quotes=(
            _seed(
                "So don't do these as they all had various problems. Instead just create a "
                "small simple data structure to use for handing a pre-allocated list of pages "
                "between KVM and arch/x86 code. Model this on KVM's existing MMU memory caches.",
                23,
                26,
            ),
            _NULL_CACHE,
            _series(
                "By my count we have had at least 4 or 5 ideas by smart people that led us back "
                "to the same solution of keeping a cache of pages and adjusting the DPAMT right "
                "before give the page to the TDX module.",
                "v6 cover letter",
            ),
        ),
        can_show=(
            "Pages held idle in each vCPU's cache after a fault, which gets take the lock-free "
            "fast path and which the locked slow path, lost races (a pair allocated then freed), "
            "and that invariants 1-6 hold on every step; control pages allocating with a NULL "
            "cache outside the MMU lock."
        ),
        cannot_show=(
            "SEAMCALL latency and real lock contention (steps are not time), nor whether "
            "'excess allocations' matter on a real host's page allocator."
        ),
        beyond_sources=(
            "The model doc's 'SEAMCALL PAMT.ADD/REMOVE up to about 18 us' and 'ten 16 GB TDs, "
            "contention 1136 times, 4 ms' are not in the v6 text; the cover only says the fast "
            "path is 'about avoid regressing KVM EPT violation contention'."
        ),
    ),
    DesignRecord(
        mode="v6-locked",
        summary=(
            "Patch 05/11 without 06/11: get allocates the pair first, then takes the global "
            "pamt_lock for every refcount change; put always takes the lock."
        ),
        kind="provenance",
        provenance="v6 05/11 alone (the correct but unoptimized step before 06/11)",
        quotes=(
            _series(
                "The lock is global and heavyweight. Use simple conditional logic to keep "
                "correctness obvious. This will be optimized in a later change.",
                "v6 05/11 commit message",
            ),
            _series(
                "This gives correct behavior for concurrent callers, but leads to contention. It "
                "is especially bad from the KVM side, which is designed to allow faulting in EPT "
                "under a shared lock.",
                "v6 06/11 commit message",
            ),
        ),
        can_show=(
            "Every get and put taking pamt_lock (spin steps while another CPU holds it, across "
            "all TDs), and a pair allocated and freed again on every get of a region that already "
            "has one."
        ),
        cannot_show=(
            "How much the serialization costs in time: the engine counts spin steps, not "
            "nanoseconds."
        ),
        beyond_sources=(
            "Nothing beyond 05/11: the mode follows its get and put (a REMOVE failure leaves "
            "the refcount at 1)."
        ),
    ),
    DesignRecord(
        mode="v5-hint",
        summary=(
            "An earlier get/put: put decrements without the lock and rechecks under it; get "
            "treats TDX_HPA_RANGE_NOT_FREE from PAMT.ADD as 'a put has not removed the pair yet'."
        ),
        kind="provenance",
        provenance=(
            "The race handling that v6 06/11 removed when it switched put to "
            "atomic_dec_and_lock(); the HPA_RANGE_NOT_FREE case dates from v4 of 06/11"
        ),
        quotes=(
            _series(
                "Switch to atomic_dec_and_lock() and remove handling of races that are no longer "
                "needed as a result. Adjust comments as appropriate. (Dave)",
                "v6 06/11 changelog",
            ),
            _series(
                "Use atomic_set() in the HPA_RANGE_NOT_FREE case (Kiryl)", "v6 06/11 changelog"
            ),
        ),
        can_show=(
            "The window where a region's refcount is 0 while its pair is still installed, and a "
            "get that meets TDX_HPA_RANGE_NOT_FREE in that window."
        ),
        cannot_show="Whether any real caller hit this window; the engine only shows it can.",
        beyond_sources=(
            "The v5 code itself was not read for this record: the mode's exact steps follow the "
            "model doc (dpamt-model.md section 4), not a quoted v5 patch."
        ),
    ),
    DesignRecord(
        mode="v5-topup-install",
        summary=(
            "DPAMT backing installed when KVM tops up its S-EPT page cache, not when a page is "
            "given to the TDX module; S-EPT pages freed at teardown drop theirs from an RCU "
            "callback."
        ),
        kind="seed",
        provenance="Rejected in the seed; variants tried in Sean's v5 (the seed's links [0], [1])",
        quotes=(
            _seed(
                "- A few varieties of installing Dynamic PAMT backing when allocating the S-EPT "
                "page tables. [0][1]",
                18,
                19,
            ),
            _seed("So don't do these as they all had various problems.", 23, 23),
            _series(
                "Immediately free the S-EPT page as the TDX subsystem doesn't support freeing "
                "pages from RCU callbacks, and more importantly because TDH.PHYMEM.PAGE.RECLAIM "
                "ensures there are no outstanding readers.",
                "v6 09/11 code comment",
            ),
        ),
        can_show=(
            f"Speculative references: S-EPT pages sitting in KVM's cache that hold a DPAMT "
            f"reference (and keep a pair installed) without ever being given to the TDX module; "
            f"puts from the RCU callback that take pamt_lock, flagged LOCKDEP_PAMT_LOCK_SOFTIRQ. "
            f"Links: [0] {SEED_LINK_0} [1] {SEED_LINK_1}"
        ),
        cannot_show=(
            "Which of the 'various problems' of each variant was decisive: the seed does not "
            "say, and lockdep's verdict is modelled as a flag, not run."
        ),
        beyond_sources=(
            "The seed does not name the problems. 'KVM tops its caches up to 40, so up to 40 "
            "speculative DPAMT references per vCPU' and 'freeing S-EPT pages from an RCU callback "
            "took pamt_lock in softirq context, which lockdep flagged' are the model doc's, not "
            "the seed's or v6's (they may come from links [0]/[1], not read); v6 09/11 only says "
            "the TDX subsystem does not support freeing pages from RCU callbacks."
        ),
    ),
    DesignRecord(
        mode="v4-shared-list",
        summary=(
            "One per-vCPU list for S-EPT pages and DPAMT pages, topped up to "
            "worst_case_tables + 2n (15)."
        ),
        kind="provenance",
        provenance=(
            "Attributed to v4 by our model doc; the v6 cover letter says v6 went back to "
            "v4's solution for (b)"
        ),
        quotes=(
            _series(
                "After long discussions on v5, the changes for (b) were rolled back to the "
                "original solution in v4.",
                "v6 cover letter",
            ),
            _series(
                "b. Redid the solution for installing DPAMT backing for the pages the MMU uses "
                "for the S-EPT operations.",
                "v6 cover letter",
            ),
        ),
        can_show=(
            "Pages held idle when one list serves both S-EPT tables and pairs, and whether a "
            "fault can run out of one kind while the other is plentiful."
        ),
        cannot_show="Code structure and review cost of sharing one list between KVM and arch/x86.",
        beyond_sources=(
            "'v4 used one shared per-vCPU list (topup 5 + 2 x 5 = 15)' is the model doc's "
            "description; the v4 code was not read here, and the cover letter suggests v6's "
            "cache is v4's solution, so this mode may not be what v4 posted."
        ),
    ),
    DesignRecord(
        mode="kvm-style-cache",
        summary=(
            "The DPAMT cache follows KVM's MMU cache rule: no-op when it holds >= 2n pages, "
            "else fill to 40 (KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE)."
        ),
        kind="seed",
        provenance="Rejected in the seed: extracting KVM's MMU caches for arch/x86 to use",
        quotes=(
            _seed(
                "KVM already has helpers to manage topping up page caches before taking the MMU "
                "lock, but they cannot be passed from KVM to arch/x86 code.",
                10,
                12,
            ),
            _seed(
                "- Extracting KVM's MMU caches requires too much inlined code added to headers.",
                16,
                17,
            ),
        ),
        can_show=(
            "Pages held idle by KVM's fill-to-40 rule against v6's top-up to exactly 2n, per "
            "vCPU and over a trace."
        ),
        cannot_show=(
            "The seed's actual reason: header and inlining cost is not something a simulation "
            "measures. The mode models the cache policy only."
        ),
        beyond_sources=(
            "'A function-pointer bridge was called convoluted' (model doc section 11) is not in "
            "the seed or the v6 text."
        ),
    ),
    DesignRecord(
        mode="mempool",
        summary=(
            "One reserve of 2n pages made at the first vCPU; under the lock a GFP_NOWAIT "
            "allocation first, the reserve when it fails; freed pair pages refill the reserve; "
            "no top-up before a fault."
        ),
        kind="seed",
        provenance="Rejected in the seed: mempool_t between KVM and arch/x86",
        quotes=(
            _seed(
                "- Using mempool_t to transfer the pages between KVM and arch/x86 doesn't work "
                "because it is the component is designed more around maintaining a pool of "
                "pages, rather than topping up a continually drained cache.",
                20,
                22,
            ),
        ),
        can_show=(
            "A reserve that drains under a run of cold faults and only refills when pairs are "
            "removed, and the gets that fail once GFP_NOWAIT fails with the reserve empty."
        ),
        cannot_show=(
            "mempool_t's real API and its allocator interactions: the mode is a model of a "
            "pool, not the kernel's mempool code."
        ),
        beyond_sources=(
            "'No GFP_KERNEL_ACCOUNT on resize' (model doc section 11) is not in the seed or the "
            "v6 text; the reserve size 2n and GFP_NOWAIT-first are this tool's choices."
        ),
    ),
    DesignRecord(
        mode="atomic-under-lock",
        summary=(
            "No cache: pair pages are allocated with GFP_ATOMIC under the MMU lock (an injected "
            "alloc_fail makes the get fail)."
        ),
        kind="provenance",
        provenance=(
            "A baseline of this tool, not a posted version: what the seed's first paragraph "
            "says KVM avoids by allocating before the lock"
        ),
        quotes=(_WHY_PREALLOCATE,),
        can_show=(
            "Gets that fail (and faults that retry) when an atomic allocation fails under the "
            "lock, where a pre-filled cache would not."
        ),
        cannot_show="How often GFP_ATOMIC fails on a real host: failures are injected.",
        beyond_sources=(
            "No source proposes this design; the BUG_ON on a failed GFP_ATOMIC fallback is a "
            "modelling choice."
        ),
    ),
    DesignRecord(
        mode="sleeping-under-lock",
        summary=(
            "No cache: pair pages are allocated with GFP_KERNEL (which may sleep) under the "
            "MMU lock."
        ),
        kind="provenance",
        provenance=(
            "A baseline of this tool, not a posted version: the NULL-cache path used where the "
            "seed says it must not be, under a spinlock"
        ),
        quotes=(_WHY_PREALLOCATE, _NULL_CACHE),
        can_show=(
            "Every sleeping allocation under the MMU lock, flagged as an invariant-6 violation "
            "on the step where it happens."
        ),
        cannot_show=(
            "A real 'sleeping function called from invalid context' splat or deadlock: the "
            "engine flags the rule, it does not run the kernel."
        ),
        beyond_sources="No source proposes this design; it is the counter-example of the rule.",
    ),
    DesignRecord(
        mode="v6-no-recheck",
        summary=(
            "DELIBERATELY BROKEN: v6 with the lost-race recheck under pamt_lock removed. A CPU "
            "that saw refcount 0 on the lock-free check issues PAMT.ADD even when another CPU "
            "added the pair meanwhile."
        ),
        kind="broken",
        provenance=(
            "Broken on purpose by this tool, to show what `python -m explorer explore` finds: "
            "the recheck that v6 05/11 makes atomic with the SEAMCALL, taken out"
        ),
        quotes=(
            _series(
                "Serialize the refcount check and SEAMCALL with a global spinlock so the "
                "read-decide-act sequence is atomic.",
                "v6 05/11 commit message",
            ),
        ),
        can_show=(
            "The schedule in which two CPUs both see refcount 0 on a cold region: the second "
            "PAMT.ADD of the region fails (TDX_HPA_RANGE_NOT_FREE), the kernel's WARN_ON_ONCE "
            "fires and the fault fails with -EIO. `explore` finds it on two vCPUs; a fixed "
            "schedule may never show it."
        ),
        cannot_show="Nothing about a real kernel: no posted version lacks the recheck.",
        beyond_sources="The whole mode: it is a fault injected into the design, not a design.",
    ),
)

BY_MODE: dict[str, DesignRecord] = {d.mode: d for d in DESIGNS}


def design(mode: str) -> DesignRecord:
    """The record of ``mode`` (one of :data:`explorer.model.constants.MODES`)."""
    try:
        return BY_MODE[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}") from None


def help_text(mode: str) -> str:
    """Markdown for a mode's help or a Compare column: summary, quoted reasons, what we show."""
    d = design(mode)
    head = {"seed": "Why (the seed)", "broken": "Why it is here"}.get(d.kind, "Where it comes from")
    lines = [f"**{d.mode}**: {d.summary}", "", f"*{head}:* {d.provenance}."]
    for q in d.quotes:
        lines += ["", f"> {q.text}", f">  ({q.citation})"]
    lines += [
        "",
        f"*The simulation can show:* {d.can_show}",
        "",
        f"*It cannot show:* {d.cannot_show}",
        "",
        f"*Beyond the sources:* {d.beyond_sources}",
    ]
    return "\n".join(lines)
