"""The ``percpu`` page allocator (the kernel's per-CPU page lists, ``rmqueue_pcplist()``) and
the search's use of it as its default.

What the search relies on: two CPUs' allocations from their own blocks commute (each gets the
same pages in either order), a freed page goes back to its block's CPU, a full host falls back
to any CPU's free page with a footprint ordered against everything, pins are never picked, and
checkpoints carry the per-CPU state. Replays with it agree bulk vs step by step and at any
seek; ``explore`` defaults to it, says so, and honours a named allocator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from explorer.ingest.generate import churn
from explorer.ingest.parse import parse_trace
from explorer.interleavings.allocator import EXPLORE_ALLOCATOR, explore_settings, named_keys
from explorer.model import NATIVE
from explorer.model.events import Event
from explorer.model.machine import Machine
from explorer.model.memory import PCP_BLOCK_PAGES, HostMemory
from explorer.model.records import OWNER_CODE
from explorer.model.settings import Settings
from explorer.model.state import Thread
from explorer.replay.timeline import replay
from tests.test_bulk import _summaries, agree
from tests.test_explore import SAMPLES, explore_json, run
from tests.test_explore_por import _outcomes, _same, _searches
from tests.test_seek_layers import _from_the_start

GUEST = OWNER_CODE["guest"]
FREE = OWNER_CODE["free"]
#: two regions of 512 pages: 8 blocks
PAGES = 1024


def _alloc(mem: HostMemory, cpu: str) -> int:
    pfn = mem.pick_free(cpu)
    assert pfn is not None
    mem.set_owner(pfn, GUEST)
    return pfn


def _run(mem: HostMemory, order: str) -> dict[str, list[int]]:
    """Allocate for CPUs ``a`` and ``b`` in ``order`` (one letter per allocation)."""
    got: dict[str, list[int]] = {"a": [], "b": []}
    for cpu in order:
        got[cpu].append(_alloc(mem, cpu))
    return got


def _stocked(total: int = PAGES) -> HostMemory:
    mem = HostMemory(total, "percpu", 0)
    assert mem.stock_cpu("a") and mem.stock_cpu("b")
    assert not mem.stock_cpu("a")  # a stocked CPU is not stocked twice
    return mem


# -- 1. HostMemory(percpu) -------------------------------------------------------------------
@pytest.mark.parametrize("order", ["ababab" * 5, "bbbbbaaaaabbbbbaaaaa" + "ab" * 5])
def test_two_cpus_get_the_same_pages_in_either_order(order: str) -> None:
    """The commutation the search relies on: whatever the interleaving, each CPU gets the pages
    it gets when it runs alone first (within its stocked block: no claim, no shared read)."""
    alone = _run(_stocked(), "a" * order.count("a") + "b" * order.count("b"))
    mem = _stocked()
    mixed = _run(mem, order)
    assert mixed == alone
    assert not mem.picked_shared
    assert set(alone["a"]).isdisjoint(alone["b"])
    assert {mem.block_cpu(p) for p in alone["a"]} == {"a"}
    assert {mem.block_cpu(p) for p in alone["b"]} == {"b"}


def test_a_full_block_claims_the_next_unclaimed_one() -> None:
    mem = _stocked()
    pages = [_alloc(mem, "a") for _ in range(PCP_BLOCK_PAGES)]
    assert not mem.picked_shared
    nxt = _alloc(mem, "a")
    assert mem.picked_shared  # a claim writes the shared claim table
    assert nxt not in pages and mem.block_cpu(nxt) == "a"
    assert nxt // PCP_BLOCK_PAGES == 2  # blocks 0 and 1: a's and b's stock
    assert mem.block_cpu(_alloc(mem, "b")) == "b"


def test_a_freed_page_goes_back_to_its_blocks_cpu() -> None:
    mem = _stocked()
    got = _run(mem, "ab" * 6)
    freed = got["a"][2]
    mem.set_owner(freed, FREE)
    assert mem.pick_free("b") not in (freed, None)  # not b's page
    assert _alloc(mem, "a") == freed  # a's lowest free page again
    # a full block a moved past (it claimed another) takes a freed page back to a's list: the
    # lowest of a's blocks, picked before the newer block's pages, and with no claim
    mem2 = _stocked()
    full = [_alloc(mem2, "a") for _ in range(PCP_BLOCK_PAGES)]
    newer = _alloc(mem2, "a")
    assert mem2.picked_shared and mem2.block_cpu(newer) == "a" and newer not in full
    mem2.set_owner(full[7], FREE)
    assert mem2.pick_free("b") != full[7]
    assert _alloc(mem2, "a") == full[7] and not mem2.picked_shared
    assert _alloc(mem2, "a") == newer + 1


def test_a_full_host_falls_back_to_any_free_page() -> None:
    """512 pages (the smallest host a setting allows, 2 MiB): four blocks, five CPUs. The fifth
    claims nothing and takes a free page of another CPU's block (the pick read more than its own
    blocks); when every page is taken the pick is None, without error."""
    mem = _stocked(512)
    assert mem.stock_cpu("c") and mem.stock_cpu("d")
    assert not mem.stock_cpu("e")
    pfn = mem.pick_free("e")
    assert pfn is not None and mem.picked_shared and mem.block_cpu(pfn) in tuple("abcd")
    for _ in range(512):
        _alloc(mem, "e")
    assert mem.pick_free("e") is None and mem.pick_free("a") is None


def test_the_full_hosts_fallback_is_ordered_against_everything() -> None:
    """Through ``KernelState.alloc_page``: a pick in the CPU's own block has the CPU's own
    allocator object in its footprint; a fallback into another CPU's block has ``"*"``."""
    m = Machine(Settings(allocator="percpu", host_memory_mib=2))
    assert m.mem.total_pages == 4 * PCP_BLOCK_PAGES
    for v in range(4):
        m.mem.stock_cpu(f"vcpu{v}")
    th = {n: Thread(n, deque(), i) for i, n in enumerate(("vcpu0", "vcpu4"))}
    m.fp_on = True
    m.fp_w.clear()
    assert m.alloc_page(th["vcpu0"], GUEST, sleeping=True) is not None
    assert ("alloc", "vcpu0") in m.fp_w and "*" not in m.fp_w
    m.fp_w.clear()
    pfn = m.alloc_page(th["vcpu4"], GUEST, sleeping=True)
    assert pfn is not None and m.mem.block_cpu(pfn) in {f"vcpu{v}" for v in range(4)}
    assert "*" in m.fp_w


def test_pins_are_never_picked() -> None:
    mem = HostMemory(PAGES, "percpu", 0)
    pins = {0, 1, 2, 5} | set(range(PCP_BLOCK_PAGES, 2 * PCP_BLOCK_PAGES))  # block 1 pinned
    mem.pin(pins)
    mem.stock_cpu("a")
    mem.stock_cpu("b")  # not block 1: every page of it is pinned
    got = _run(mem, "ab" * 150)  # past a's first block: a claim skips block 1 too
    assert not pins & set(got["a"] + got["b"])
    assert got["a"][:3] == [3, 4, 6]
    assert got["b"][0] == 2 * PCP_BLOCK_PAGES


def _picks(mem: HostMemory) -> list[int]:
    return [_alloc(mem, cpu) for cpu in "abcab" * 60]  # c is new: claims, then its own block


def test_image_and_restore_carry_the_percpu_state() -> None:
    mem = _stocked()
    got = _run(mem, "aab" * 50)
    mem.set_owner(got["b"][3], FREE)
    image = mem.image()
    again = HostMemory(PAGES, "percpu", 0)
    again.restore(image)
    assert again.percpu_state() == mem.percpu_state() != ()
    assert _picks(again) == _picks(mem)


def test_scalars_and_apply_carry_the_percpu_state() -> None:
    mem = _stocked()
    got = _run(mem, "abb" * 50)
    mem.set_owner(got["a"][1], FREE)
    scalars = mem.scalars()
    delta = mem.page_delta()
    again = HostMemory(PAGES, "percpu", 0)
    again.apply(delta, scalars)
    assert again.percpu_state() == mem.percpu_state()
    assert _picks(again) == _picks(mem)


def test_creating_a_vcpu_stocks_its_cpu() -> None:
    """``tdx_vcpu_create`` gives the vCPU's CPU its first block (so racing first faults do not
    race for blocks); the VM's own work (td0) claims the block before them."""
    text = _trace(_FRESH_TD, {"allocator": "percpu"})
    trace = parse_trace(text.encode(), "fresh.jsonl")
    m = Machine(Settings().with_overrides(trace.settings))
    m.run(trace.events)
    owners = dict(m.mem.percpu_state()[0])
    assert owners == {0: "td0", 1: "vcpu0", 2: "vcpu1"}


def test_other_policies_have_no_percpu_state() -> None:
    mem = HostMemory(PAGES, "lowest", 0)
    assert not mem.stock_cpu("a") and mem.percpu_state() == ()
    assert _alloc(mem, "a") == 0 and _alloc(mem, "b") == 1


# -- 2. replays ------------------------------------------------------------------------------
def _churn(faults: int, seed: int) -> Sequence[Event]:
    text = "\n".join(churn(tds=2, vcpus=4, faults=faults, seed=seed, zap_ratio=0.4)) + "\n"
    return parse_trace(text.encode(), "churn.jsonl").events


@pytest.mark.parametrize("schedule", ["round-robin", "random"])
def test_a_percpu_replay_agrees_bulk_and_step_by_step(schedule: str) -> None:
    """Four vCPUs of two TDs, concurrent groups, zaps: everything a user sees agrees."""
    events = _churn(160, 3)
    assert any(getattr(e, "t", None) is not None for e in events)
    s = Settings(allocator="percpu", schedule=schedule, host_memory_mib=256, seed=5)
    agree(events, s)


def test_a_percpu_replays_seeks_equal_a_replay_stopped_there() -> None:
    events = _churn(300, 4)
    s = Settings(allocator="percpu", schedule="round-robin", host_memory_mib=256)
    tl = replay(events, s, checkpoint_every=8, keyframe_every=4)
    assert len(tl._checkpoints) > 4  # seeks from images and from deltas
    for i in (tl.nr_steps // 7, tl.nr_steps // 3, tl.nr_steps // 2, tl.nr_steps - 1):
        assert tl.state_at(i) == _from_the_start(events, s, i), f"step {i}"


def test_percpu_gives_other_pages_than_lowest() -> None:
    """The replays above compare percpu with itself: check it is in effect (the vCPUs' pages
    are drawn from per-CPU blocks, not the lowest free page)."""
    events = _churn(80, 3)
    a = replay(events, Settings(allocator="percpu", host_memory_mib=256)).summary()
    b = replay(events, Settings(allocator="lowest", host_memory_mib=256)).summary()
    assert a != b


@pytest.mark.skipif(not NATIVE, reason="the compiled engine is not built (make builds it)")
def test_the_compiled_engine_gives_the_pure_engines_results_under_percpu(tmp_path: Path) -> None:
    path = tmp_path / "churn.jsonl"
    path.write_text("\n".join(churn(tds=2, vcpus=3, faults=300, seed=9, zap_ratio=0.4)) + "\n")
    paths = [path, SAMPLES / "lost_race.jsonl", SAMPLES / "cold_race_3vcpu.jsonl"]
    over = [
        {"allocator": "percpu", "mode": m, "schedule": s}
        for m, s in [("v6", "random"), ("v6-locked", "round-robin"), ("v5-hint", "sequential")]
    ]
    assert _summaries(paths, over, pure=False) == _summaries(paths, over, pure=True)


# -- 3. explore ------------------------------------------------------------------------------
def _trace(lines: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    header = {"format": "dpamt-trace", "version": 1, "title": "percpu", "settings": settings}
    return "\n".join(json.dumps(x) for x in [header, *lines]) + "\n"


_FRESH_TD = [
    {"op": "td_create", "td": 0},
    {"op": "vcpu_create", "td": 0, "vcpu": 0},
    {"op": "vcpu_create", "td": 0, "vcpu": 1},
    {"op": "td_finalize", "td": 0},
]


def test_a_fresh_tds_first_faults_explore_completely(tmp_path: Path) -> None:
    """No warm-up: both vCPUs top up their caches concurrently. Under ``lowest`` this did not
    finish in 260,000 states; under the default it must, in well under 20,000."""
    path = tmp_path / "fresh.jsonl"
    faults = [{"op": "fault", "vcpu": v, "gfn": hex(v), "t": 1} for v in (0, 1)]
    path.write_text(_trace([*_FRESH_TD, *faults], {}))
    code, data, err = run(str(path), "--json", "--max-states", "20000")
    assert data is not None, err
    assert code == 0 and data["complete"] and data["states"] < 20_000, data["states"]


def test_the_reduced_search_finds_what_the_full_one_finds_when_percpu_picks_the_pages() -> None:
    """A small race, the guest pages from the allocator (no pfn): 38 warm-up faults each leave
    both vCPUs' stocked blocks full, so both racing faults claim a block, and which claims first
    decides whether its guest page lands in region 0 or in cold region 1. The reduced search's
    outcomes must equal the full one's (claims ordered, picks in own blocks not)."""
    warm = [
        {"op": "fault", "vcpu": v, "gfn": hex(0x400 + 16 * i + v)}
        for i in range(38)
        for v in (0, 1)
    ]
    race = [{"op": "fault", "vcpu": v, "gfn": hex(0x10 + v), "t": 1} for v in (0, 1)]
    text = _trace([*_FRESH_TD, *warm, *race], {"allocator": "percpu", "max_retries": 3})
    full, reduced = _searches(text)
    assert full["complete"]
    assert len(_outcomes(full)) >= 4  # the order of the claims is in play
    _same(full, reduced, text)


@pytest.mark.parametrize("mode", ["v6", "v6-locked"])
def test_a_free_into_another_cpus_block_is_ordered_against_its_picks(mode: str) -> None:
    """The zap (on the VM's thread) puts the last page of cold region 64, so frees its PAMT
    pair, whose pages vCPU 0's cache took from vCPU 0's block, while vCPU 0 faults and picks
    from that block: whether it gets a freed pair page depends on the order. Outcomes do not
    name pages, so compare the end states too: the reduced search must reach all of them."""
    lines = [
        *_FRESH_TD,
        {"op": "fault", "vcpu": 0, "gfn": "0x400"},
        {"op": "fault", "vcpu": 0, "gfn": "0x1000", "pfn": "0x8000"},
        {"op": "zap", "td": 0, "gfn": "0x1000", "t": 1},
        {"op": "fault", "vcpu": 0, "gfn": "0x401", "t": 1},
    ]
    text = _trace(lines, {"allocator": "percpu", "max_retries": 3, "mode": mode})
    full, reduced = _searches(text)
    assert full["complete"] and full["end_states"] > 2, full["end_states"]
    _same(full, reduced, text)
    assert reduced["end_states"] == full["end_states"]


@pytest.mark.parametrize(("extra", "end_states"), [((), 2), (("--set", "allocator=lowest"), 4)])
def test_a_named_allocator_is_honoured(extra: tuple[str, ...], end_states: int) -> None:
    code, data = explore_json("lost_race", "v6-locked", *extra)
    assert code == 0 and data["complete"]
    assert data["end_states"] == end_states


def test_the_text_output_names_the_default_allocator() -> None:
    lost = str(SAMPLES / "lost_race.jsonl")
    assert f"# allocator {EXPLORE_ALLOCATOR}" in _text(lost)
    assert "# allocator" not in _text(lost, "--set", "allocator=lowest")
    assert "# allocator" not in _text(lost, "--set", f"allocator={EXPLORE_ALLOCATOR}")


def _text(*args: str) -> str:
    """The text output of ``explore`` (:func:`tests.test_explore.run` reads only JSON)."""
    env = dict(os.environ)
    env.pop("DPAMT_PURE", None)
    p = subprocess.run(
        [sys.executable, "-m", "explorer", "explore", *args],
        capture_output=True,
        text=True,
        cwd=SAMPLES.parent,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_explore_settings_default_to_percpu_unless_named() -> None:
    base = Settings()
    assert base.allocator == "lowest"
    assert explore_settings(base, set()).allocator == EXPLORE_ALLOCATOR
    assert explore_settings(base, {"mode"}).allocator == EXPLORE_ALLOCATOR
    assert explore_settings(base, {"allocator"}).allocator == "lowest"
    spread = base.with_overrides({"allocator": "spread"})
    assert explore_settings(spread, {"allocator"}).allocator == "spread"
    assert explore_settings(base, set()).mode == base.mode  # nothing else changes


def test_named_keys_are_the_headers_and_the_assignments_keys() -> None:
    assert named_keys({"mode": "v6"}, ["allocator=lowest", " seed = 3"]) == {
        "mode",
        "allocator",
        "seed",
    }
    assert named_keys([], []) == set()
    assert named_keys(["allocator"], []) == {"allocator"}
