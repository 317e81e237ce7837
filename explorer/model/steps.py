"""The step vocabulary the kernel code and the scheduler share: what a step is, the counters a
step bumps, the owner codes of host pages, and the hard limits of a replay.

Kept apart from :mod:`explorer.model.state` (the state kernel functions change) and
:mod:`explorer.model.machine` (the scheduler that runs them) so that the kernel code
(:mod:`explorer.model.dpamt`, :mod:`explorer.model.kvm`) and the scheduler depend on it, and on
each other only one way: machine -> kvm -> dpamt -> state -> steps.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Final

from explorer.model.memory import FREE
from explorer.model.records import OWNER_CODE

#: What a kernel generator yields at the end of a step: (function, label, template, args).
#: (A variable-length tuple type: compiled, a fixed-length one is unboxed into a C struct and
#: boxed again, a new tuple per step, wherever it is stored.)
StepInfo = tuple[Any, ...]
KGen = Generator[StepInfo, None, Any]

O_FREE: Final = FREE
O_PAIR: Final = OWNER_CODE["pamt_pair"]
O_PAMT_CACHE: Final = OWNER_CODE["pamt_cache"]
O_KVM_CACHE: Final = OWNER_CODE["kvm_cache"]
O_SEPT: Final = OWNER_CODE["sept"]
O_MIRROR: Final = OWNER_CODE["mirror"]
O_CONTROL: Final = OWNER_CODE["control"]
O_GUEST: Final = OWNER_CODE["guest"]
O_LEAKED: Final = OWNER_CODE["leaked"]
O_IN_HAND: Final = OWNER_CODE["in_hand"]

#: Hard limits of one replay (named so messages can cite them).
MAX_STEPS_PER_BATCH: Final = 5_000_000
MAX_SPIN_STEPS: Final = 100_000

COUNTER_NAMES: Final = (
    "faults",
    "fault_retries",
    "faults_failed",
    "faults_spurious",
    "livelocks",
    "pamt_get",
    "pamt_get_fast",
    "pamt_get_slow",
    "pamt_lost_race",
    "pamt_add",
    "pamt_add_failed",
    "pamt_put",
    "pamt_remove",
    "pamt_remove_failed",
    "pamt_pages_drained",
    "sept_add",
    "sept_add_failed",
    "page_aug",
    "page_add",
    "page_aug_failed",
    "page_remove",
    "alloc_failed",
    "allocs_sleeping",
    "allocs_atomic",
    "allocs_under_lock",
    "kvm_cache_empty",
    "spins",
    "zaps",
    "violations",
    "warnings",
)

#: Each counter's index in :attr:`Machine.cnt` (the kernel code counts by index: a list
#: store, where a dict of names cost a string lookup per count).
K_FAULTS: Final = 0
K_FAULT_RETRIES: Final = 1
K_FAULTS_FAILED: Final = 2
K_FAULTS_SPURIOUS: Final = 3
K_LIVELOCKS: Final = 4
K_PAMT_GET: Final = 5
K_PAMT_GET_FAST: Final = 6
K_PAMT_GET_SLOW: Final = 7
K_PAMT_LOST_RACE: Final = 8
K_PAMT_ADD: Final = 9
K_PAMT_ADD_FAILED: Final = 10
K_PAMT_PUT: Final = 11
K_PAMT_REMOVE: Final = 12
K_PAMT_REMOVE_FAILED: Final = 13
K_PAMT_PAGES_DRAINED: Final = 14
K_SEPT_ADD: Final = 15
K_SEPT_ADD_FAILED: Final = 16
K_PAGE_AUG: Final = 17
K_PAGE_ADD: Final = 18
K_PAGE_AUG_FAILED: Final = 19
K_PAGE_REMOVE: Final = 20
K_ALLOC_FAILED: Final = 21
K_ALLOCS_SLEEPING: Final = 22
K_ALLOCS_ATOMIC: Final = 23
K_ALLOCS_UNDER_LOCK: Final = 24
K_KVM_CACHE_EMPTY: Final = 25
K_SPINS: Final = 26
K_ZAPS: Final = 27
K_VIOLATIONS: Final = 28
K_WARNINGS: Final = 29
