"""The kernel model: Intel TDX Dynamic PAMT in Linux/KVM, as of the v6 series (May 2026).

Theory of operation
-------------------
This package reproduces, step for step, what the kernel does when a TD's vCPU faults on a
private page under Dynamic PAMT (``shared/docs/dpamt-model.md`` is the specification; the centre
is v6 08/11 "x86/tdx: Add APIs to support Dynamic PAMT ops from KVM's fault path"). It imports
only the standard library.

*State.* Host memory is 4 KiB pages in 2 MiB regions (:mod:`.memory`), each page with an owner
(free, PAMT pair page, in a vCPU's ``tdx_pamt_cache``, in a KVM MMU cache, S-EPT table or its
KVM mirror, TD control page, guest page, leaked). arch/x86 keeps a refcount per region and the
global ``pamt_lock`` (:mod:`.dpamt`). KVM keeps TDs, vCPUs with their caches, the S-EPT entries
and the guest mappings (:mod:`.kvm`). The TDX module keeps its own truth: which regions have a
PAMT page pair and which pages it uses (:mod:`.tdx_module`); the two views are cross-checked.

*Code.* Each kernel function is a generator (``tdx_pamt_get``, ``tdx_pamt_put``,
``tdx_topup_pamt_cache``, ``kvm_mmu_topup_memory_cache``, ``tdx_handle_ept_violation``,
``kvm_tdp_mmu_map``, ``tdx_sept_map_nonleaf_spte``, ``tdx_sept_map_leaf_spte``,
``tdx_sept_remove_leaf_spte``, TD and vCPU creation and teardown). A ``yield`` ends a step;
every step carries the CPU, the function, a stable label (:mod:`.narration` maps labels to lines
of pseudocode), a one-line narration, its effects ``(kind, key, old, new)``, the counters it
changed and the diagnostics it raised (:mod:`.records`).

*Concurrency.* Each vCPU thread and each VM thread is a simulated CPU. Events of the same
logical time run concurrently; the :class:`~.machine.Machine` interleaves their generators by
the schedule (``sequential``, ``round-robin``, seeded ``random``). ``pamt_lock`` is a spinlock
(a waiter spins, visibly); ``mmu_lock`` is an rwlock read-held by faults and write-held by zap
and teardown. Races are not scripted: two vCPUs on one cold region lose a race because their
real control flow interleaves so.

*Modes.* ``v6`` (default), ``v6-locked`` (no lock-free fast path), ``v5-hint`` (the v5 put
protocol), and the designs the seed weighed and rejected (section 11): ``v5-topup-install``,
``v4-shared-list``, ``kvm-style-cache``, ``mempool``, ``atomic-under-lock``,
``sleeping-under-lock``.

*Checks.* The invariants of section 10 run after every step (:mod:`.invariants`); violations,
WARNs, livelocks and errors become :class:`~.records.Diagnostic`\\ s at the exact step. An event
that cannot happen in the current state raises :class:`~.errors.ImpossibleEvent` before changing
anything; the replay stops there and what came before stays viewable.

*Determinism.* No wall clock, seeded randomness, sorted output: the same events and settings
always give the same steps.

Public surface: :class:`Machine`, :func:`batches`, :class:`Settings`, the event classes, the
record types, :func:`summary`.
"""

from explorer.model import native as _native

#: True when the modules below run compiled (mypyc, see :mod:`explorer.model.native`): set before
#: any of them is imported, so that every import of them finds the same build.
NATIVE = _native.activate(__path__)

from explorer.model.errors import ImpossibleEvent, Problem, SettingsError, TraceError
from explorer.model.events import (
    EVENT_TYPES,
    Event,
    Fault,
    Inject,
    Note,
    TdCreate,
    TdDestroy,
    TdFinalize,
    VcpuCreate,
    VcpuFree,
    Zap,
)
from explorer.model.machine import Machine, batches
from explorer.model.records import Diagnostic, Effect, Snapshot, Step
from explorer.model.settings import SETTING_SPECS, Settings
from explorer.model.summary import summary

__all__ = [
    "EVENT_TYPES",
    "NATIVE",
    "SETTING_SPECS",
    "Diagnostic",
    "Effect",
    "Event",
    "Fault",
    "ImpossibleEvent",
    "Inject",
    "Machine",
    "Note",
    "Problem",
    "Settings",
    "SettingsError",
    "Snapshot",
    "Step",
    "TdCreate",
    "TdDestroy",
    "TdFinalize",
    "TraceError",
    "VcpuCreate",
    "VcpuFree",
    "Zap",
    "batches",
    "summary",
]
