"""Every mode has a design record; every quote is verbatim from the seed or the v6 thread."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from explorer.designs.rationale import (
    DESIGNS,
    SEED_SOURCE,
    SERIES_PASSAGES,
    DesignRecord,
    design,
    help_text,
    lore_link,
)
from explorer.model.constants import MODES, mode_label

SEED_FILE = Path("/work/shared/seeds/000_36613d21d2d4af06.txt")

#: Lines 1-32 of the seed file, verbatim (the commit message of v6 08/11 up to its trailers), so
#: the test runs where the seed file is not mounted. test_embedded_seed_matches_the_file checks
#: this copy against the file when it is there.
SEED_HEAD = """\
[PATCH v6 08/11] x86/tdx: Add APIs to support Dynamic PAMT ops from KVM's fault path
From: Rick Edgecombe
Date: Mon May 25 2026 - 22:37:40 EST
When handling an EPT violation, KVM holds a spinlock while manipulating
the EPT. Before entering the spinlock it doesn't know how many EPT page
tables will need to be installed or whether a huge page will be used. For
this reason it allocates a worst case number of page tables that it might
need as part of servicing the EPT violation.
Under Dynamic PAMT these pre-allocated pages will potentially need to have
Dynamic PAMT backing pages installed for them. KVM already has helpers to
manage topping up page caches before taking the MMU lock, but they cannot be
passed from KVM to arch/x86 code.
The problem of how and when to install the DPAMT backing pages for the
pages given to the TDX module during the fault path has had a lot of
design attempts.
- Extracting KVM's MMU caches requires too much inlined code added to
headers.
- A few varieties of installing Dynamic PAMT backing when allocating the
S-EPT page tables. [0][1]
- Using mempool_t to transfer the pages between KVM and arch/x86 doesn't
work because it is the component is designed more around maintaining a
pool of pages, rather than topping up a continually drained cache.
So don't do these as they all had various problems. Instead just create a
small simple data structure to use for handing a pre-allocated list of
pages between KVM and arch/x86 code. Model this on KVM's existing MMU
memory caches.
Add a tdx_pamt_cache arg to tdx_pamt_get() so it can draw pages from a
cache when needed. Not all DPAMT page installations will happen under
spinlock, for example control pages. So have tdx_pamt_get() maintain the
existing behavior of allocating from the page allocator when NULL is
passed for the struct tdx_pamt_cache arg. This prevents excess allocations
for cases where it can be avoided.
"""


def _fold(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _seed_lines(first: int, last: int) -> str:
    lines = SEED_HEAD.splitlines()
    return _fold(" ".join(lines[first - 1 : last]))


def _records() -> list[DesignRecord]:
    return list(DESIGNS)


def test_embedded_seed_matches_the_file() -> None:
    if not SEED_FILE.exists():
        pytest.skip("seed file not mounted")
    head = SEED_FILE.read_text(encoding="utf-8").splitlines()[:32]
    assert head == SEED_HEAD.splitlines()


def test_every_mode_has_exactly_one_record() -> None:
    assert [d.mode for d in DESIGNS] == list(MODES)
    for mode in MODES:
        assert design(mode).mode == mode
    with pytest.raises(ValueError, match="unknown mode"):
        design("v7")


@pytest.mark.parametrize("record", _records(), ids=lambda d: d.mode)
def test_no_empty_fields(record: DesignRecord) -> None:
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        assert value, f"{record.mode}: {field.name} is empty"
        if isinstance(value, str):
            assert value.strip(), f"{record.mode}: {field.name} is blank"
    assert record.kind in ("seed", "provenance", "broken")
    for q in record.quotes:
        assert q.text.strip() and q.source and q.link.startswith("https://lore.kernel.org/kvm/")


@pytest.mark.parametrize("record", _records(), ids=lambda d: d.mode)
def test_every_quote_is_verbatim(record: DesignRecord) -> None:
    for q in record.quotes:
        if q.source == SEED_SOURCE:
            assert q.lines is not None
            first, last = q.lines
            assert _fold(q.text) in _seed_lines(first, last), (record.mode, q.lines)
            # the line numbers are tight: the quote starts on its first line and ends on its last
            assert _fold(q.text) not in _seed_lines(first + 1, last)
            assert _fold(q.text) not in _seed_lines(first, last - 1)
        else:
            assert q.lines is None
            passages = SERIES_PASSAGES[q.source]
            assert any(_fold(q.text) in _fold(p) for p in passages), (record.mode, q.text)


def test_seed_reasons_sit_beside_the_modes_that_model_them() -> None:
    def seed_text(mode: str) -> str:
        return " ".join(q.text for q in design(mode).quotes if q.source == SEED_SOURCE)

    assert "too much inlined code added to headers" in seed_text("kvm-style-cache")
    assert "installing Dynamic PAMT backing when allocating the S-EPT" in seed_text(
        "v5-topup-install"
    )
    assert "topping up a continually drained cache" in seed_text("mempool")
    assert "allocating from the page allocator when NULL is passed" in seed_text("v6")
    for mode in ("kvm-style-cache", "v5-topup-install", "mempool", "v6"):
        assert design(mode).kind == "seed"
    # modes the seed does not discuss carry provenance, not a made-up reason
    for mode in ("v6-locked", "v5-hint", "v4-shared-list"):
        assert design(mode).kind == "provenance"
        assert all(q.source != SEED_SOURCE for q in design(mode).quotes)
    assert "05/11" in design("v6-locked").provenance
    # a mode broken on purpose says so, in its record and wherever it is named
    broken = design("v6-no-recheck")
    assert broken.kind == "broken" and broken.summary.startswith("DELIBERATELY BROKEN")
    assert mode_label("v6-no-recheck") == "v6-no-recheck (deliberately broken)"
    assert mode_label("v6") == "v6"
    assert "Why it is here" in help_text("v6-no-recheck")


def test_what_a_simulation_cannot_measure_is_said() -> None:
    assert "header and inlining cost is not something a simulation measures" in (
        design("kvm-style-cache").cannot_show
    )
    assert "invariant-6" in design("sleeping-under-lock").can_show
    assert "Speculative references" in design("v5-topup-install").can_show
    assert "idle" in design("v6").can_show


def test_unsourced_model_claims_are_not_presented_as_quotes() -> None:
    # dpamt-model.md section 11 claims that neither the seed nor the v6 text makes (notes14 Q6)
    unsourced = (
        "up to 40",
        "lockdep",
        "GFP_KERNEL_ACCOUNT on resize",
        "18 us",
        "1136",
        "convoluted",
    )
    for d in DESIGNS:
        for q in d.quotes:
            for claim in unsourced:
                assert claim not in q.text, (d.mode, claim)
    assert "not the seed's" in design("v5-topup-install").beyond_sources
    assert "not in the seed" in design("mempool").beyond_sources


def test_links_and_help_text() -> None:
    assert lore_link(0) == (
        "https://lore.kernel.org/kvm/20260526023515.288829-1-rick.p.edgecombe@intel.com/"
    )
    assert lore_link(8).endswith("-9-rick.p.edgecombe@intel.com/")
    with pytest.raises(ValueError):
        lore_link(12)
    text = help_text("mempool")
    assert text.startswith("**mempool**")
    assert "> - Using mempool_t" in text and "v6 08/11 commit message, lines 20-22" in text
    assert "*It cannot show:*" in text and "*Beyond the sources:*" in text
    assert "Where it comes from" in help_text("v5-hint")
