"""Synthetic, seeded workloads, written as format-v1 lines (streamed: a million faults is fine).

- ``boot``: T TDs and N vCPUs (vCPU v belongs to TD ``v % T``). Each TD faults its initial image
  with PAGE.ADD (``add_pages`` faults on its first vCPU), is finalized, and then every vCPU
  faults its own guest range with realistic locality: runs of consecutive gfns (16 to 512 long,
  like a guest zeroing or touching buffers), with jumps elsewhere in its range between runs. The
  vCPUs fault concurrently: one fault per vCPU per logical time ``t``. Optionally, teardown.
- ``churn``: the same set-up, then faults and zaps: each round every vCPU faults a new page
  and, with probability ``zap_ratio``, one page mapped in an earlier round is zapped alongside.
  Only pages the trace has mapped are zapped (the workload assumes faults succeed: give the host
  enough memory).

Deterministic: the same arguments and seed give the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

#: Guest frames per vCPU range (4 GiB): vCPU ranges never overlap.
VCPU_RANGE = 1 << 20


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def header(title: str, description: str, settings: dict[str, Any]) -> str:
    return _line(
        {
            "format": "dpamt-trace",
            "version": 1,
            "title": title,
            "description": description,
            "settings": settings,
        }
    )


class _Walker:
    """A vCPU's gfn stream: runs of consecutive gfns with jumps, never repeating a gfn."""

    def __init__(self, vcpu: int, rng: random.Random) -> None:
        self.base = vcpu * VCPU_RANGE
        self.rng = rng
        self.used: set[int] = set()
        self.cursor = 0
        self.left = 0

    def next(self) -> int:
        while True:
            if self.left == 0:
                self.cursor = self.rng.randrange(VCPU_RANGE - 512)
                self.left = self.rng.randint(16, 512)
            gfn = self.base + self.cursor
            self.cursor += 1
            self.left -= 1
            if self.cursor >= VCPU_RANGE:
                self.left = 0
            if gfn not in self.used:
                self.used.add(gfn)
                return gfn


def _setup(tds: int, vcpus: int, add_pages: int, walkers: list[_Walker]) -> Iterator[str]:
    for td in range(tds):
        yield _line({"op": "td_create", "td": td})
    for v in range(vcpus):
        yield _line({"op": "vcpu_create", "td": v % tds, "vcpu": v})
    for td in range(tds):
        for _ in range(add_pages):
            yield _line({"op": "fault", "vcpu": td, "gfn": hex(walkers[td].next())})
        yield _line({"op": "td_finalize", "td": td})


def _check(tds: int, vcpus: int, faults: int) -> None:
    if tds < 1 or vcpus < tds:
        raise ValueError("need at least one TD and at least one vCPU per TD")
    if faults < 0:
        raise ValueError("the number of faults cannot be negative")


def boot(
    *,
    tds: int = 1,
    vcpus: int = 2,
    faults: int = 1000,
    seed: int = 0,
    add_pages: int = 16,
    teardown: bool = False,
    host_memory_mib: int = 4096,
) -> Iterator[str]:
    """Lines of a TD boot workload (header first)."""
    _check(tds, vcpus, faults)
    rng = random.Random(seed)
    walkers = [_Walker(v, rng) for v in range(vcpus)]
    yield header(
        f"Boot: {tds} TD(s), {vcpus} vCPUs, {faults} faults",
        f"Generated (boot, seed {seed}): each vCPU faults runs of consecutive gfns with jumps; "
        "the vCPUs fault concurrently.",
        {"host_memory_mib": host_memory_mib},
    )
    yield from _setup(tds, vcpus, add_pages, walkers)
    for i in range(faults):
        v = i % vcpus
        yield _line({"op": "fault", "vcpu": v, "gfn": hex(walkers[v].next()), "t": i // vcpus})
    if teardown:
        for td in range(tds):
            yield _line({"op": "td_destroy", "td": td})


def churn(
    *,
    tds: int = 1,
    vcpus: int = 2,
    faults: int = 1000,
    seed: int = 0,
    zap_ratio: float = 0.3,
    add_pages: int = 16,
    host_memory_mib: int = 4096,
) -> Iterator[str]:
    """Lines of a fault-and-zap workload (header first)."""
    _check(tds, vcpus, faults)
    if not 0.0 <= zap_ratio <= 1.0:
        raise ValueError(f"--zap-ratio {zap_ratio}: must be in 0..1 (zap_ratio)")
    rng = random.Random(seed)
    walkers = [_Walker(v, rng) for v in range(vcpus)]
    yield header(
        f"Churn: {tds} TD(s), {vcpus} vCPUs, {faults} faults, zaps at {zap_ratio:.0%}",
        f"Generated (churn, seed {seed}): concurrent faults, and zaps of pages mapped earlier.",
        {"host_memory_mib": host_memory_mib},
    )
    yield from _setup(tds, vcpus, add_pages, walkers)
    mapped: list[list[int]] = [[] for _ in range(tds)]
    pending: list[tuple[int, int]] = []
    rounds = (faults + vcpus - 1) // vcpus
    done = 0
    for t in range(rounds):
        for td, gfn in pending:
            mapped[td].append(gfn)
        pending = []
        for v in range(vcpus):
            if done == faults:
                break
            gfn = walkers[v].next()
            pending.append((v % tds, gfn))
            yield _line({"op": "fault", "vcpu": v, "gfn": hex(gfn), "t": t})
            done += 1
        if rng.random() < zap_ratio:
            td = rng.randrange(tds)
            if mapped[td]:
                i = rng.randrange(len(mapped[td]))
                mapped[td][i], mapped[td][-1] = mapped[td][-1], mapped[td][i]
                yield _line({"op": "zap", "td": td, "gfn": hex(mapped[td].pop()), "t": t})


WORKLOADS: dict[str, Callable[..., Iterator[str]]] = {"boot": boot, "churn": churn}
