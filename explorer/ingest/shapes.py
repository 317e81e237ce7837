"""Workload shapes that :mod:`explorer.ingest.generate` does not write, for ``make bench``.

The benchmark matrix must not measure only the generator's own habits (one key order, hex gfns,
one fault per vCPU per ``t``, long runs): uploads come from other tools. Each shape here writes
format-v1 lines in a *style* (key order, integer notation, spacing) chosen per line from a seeded
generator, so the parser sees every valid form and the engine sees other interleavings:

- ``runs``: one vCPU at a time (no ``t``), runs of 1 to 64 consecutive gfns at random places in
  its range: each event is a batch of its own.
- ``concurrent``: every vCPU faults at each ``t`` (8 vCPUs), walking its range with a jump now
  and then: batches of 8 concurrent faults.
- ``bursty``: batches of 1 to 16 faults at each ``t`` from randomly chosen vCPUs (a vCPU may
  appear twice in one batch), a spurious re-fault now and then.
- ``churn``: ``concurrent`` with zaps of mapped pages beside the faults (``zap_ratio``), re-faults
  of zapped pages, a vCPU freed midway, and every TD destroyed at the end.
- ``lifecycle``: TDs created, faulted and destroyed in turn (4 live at a time), so control
  pages, caches and PAMT pairs come and go throughout the trace.
- ``fleet``: 128 TDs of 2 vCPUs alive at once, faults from random vCPUs, alone or a few at a
  time: a cloud host, where the TDs and vCPUs far outnumber any batch's CPUs.

Deterministic: the same arguments give the same bytes. Host memory is given in the header
(``host_memory_mib``) and is large enough that every fault succeeds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

#: Guest frames per vCPU range (4 GiB), as in :mod:`explorer.ingest.generate`.
VCPU_RANGE = 1 << 20

#: The canonical key order; styles permute it.
_ORDER = ("op", "td", "vcpu", "gfn", "t")


class _Style:
    """Writes one event per line in a style drawn per line: key order (canonical, reversed or
    shuffled), integers in hex or decimal, compact or spaced separators."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def line(self, obj: dict[str, Any]) -> str:
        rng = self.rng
        keys = list(obj)
        pick = rng.random()
        if pick < 0.5:
            keys.sort(key=lambda k: _ORDER.index(k) if k in _ORDER else len(_ORDER))
        elif pick < 0.7:
            keys.reverse()
        else:
            rng.shuffle(keys)
        hexa = rng.random() < 0.5
        out = {}
        for k in keys:
            v = obj[k]
            if k == "gfn" and hexa:
                v = hex(v)
            out[k] = v
        if rng.random() < 0.6:
            return json.dumps(out, separators=(",", ":"))
        return json.dumps(out)


def _header(settings: dict[str, Any], title: str) -> str:
    return json.dumps({"format": "dpamt-trace", "version": 1, "title": title, "settings": settings})


def _setup(tds: int, vcpus: int, w: _Style) -> Iterator[str]:
    for td in range(tds):
        yield w.line({"op": "td_create", "td": td})
    for v in range(vcpus):
        yield w.line({"op": "vcpu_create", "td": v % tds, "vcpu": v})
    for td in range(tds):
        yield w.line({"op": "td_finalize", "td": td})


def runs(faults: int, seed: int = 1, vcpus: int = 4, tds: int = 2) -> Iterator[str]:
    """One vCPU at a time, runs of 1 to 64 gfns, no ``t``."""
    rng = random.Random(seed)
    w = _Style(rng)
    yield _header({"host_memory_mib": 65536}, "runs")
    yield from _setup(tds, vcpus, w)
    used: set[int] = set()
    done = 0
    while done < faults:
        v = rng.randrange(vcpus)
        start = v * VCPU_RANGE + rng.randrange(VCPU_RANGE - 64)
        for gfn in range(start, start + rng.randint(1, 64)):
            if gfn in used:
                continue
            used.add(gfn)
            yield w.line({"op": "fault", "vcpu": v, "gfn": gfn})
            done += 1
            if done >= faults:
                break


def concurrent(faults: int, seed: int = 1, vcpus: int = 8, tds: int = 2) -> Iterator[str]:
    """Every vCPU faults at each ``t``."""
    yield from _concurrent(faults, seed, vcpus, tds, zap_ratio=0.0, teardown=False)


def churn(
    faults: int, seed: int = 1, vcpus: int = 8, tds: int = 2, zap_ratio: float = 0.3
) -> Iterator[str]:
    """Concurrent faults with zaps, re-faults, a vCPU freed midway and teardown."""
    yield from _concurrent(faults, seed, vcpus, tds, zap_ratio=zap_ratio, teardown=True)


def _concurrent(
    faults: int, seed: int, vcpus: int, tds: int, zap_ratio: float, teardown: bool
) -> Iterator[str]:
    rng = random.Random(seed)
    w = _Style(rng)
    yield _header({"host_memory_mib": 65536}, "churn" if teardown else "concurrent")
    yield from _setup(tds, vcpus, w)
    cursor = [v * VCPU_RANGE + rng.randrange(VCPU_RANGE // 2) for v in range(vcpus)]
    mapped: list[list[int]] = [[] for _ in range(tds)]  # zap candidates, each gfn once
    is_mapped: list[set[int]] = [set() for _ in range(tds)]
    zapped: list[list[int]] = [[] for _ in range(vcpus)]
    live = list(range(vcpus))
    freed = False
    t = done = 0
    while done < faults:
        batch: list[tuple[int, int]] = []
        for v in live:
            if zapped[v] and rng.random() < 0.1:
                gfn = zapped[v].pop()  # the guest touches a zapped page again
            else:
                if rng.random() < 0.05:
                    cursor[v] = v * VCPU_RANGE + rng.randrange(VCPU_RANGE // 2)
                gfn = cursor[v]
                cursor[v] += 1
            yield w.line({"op": "fault", "vcpu": v, "gfn": gfn, "t": t})
            batch.append((v, gfn))
            done += 1
            if done >= faults:
                break
        if zap_ratio:
            for _ in range(len(live)):
                if rng.random() >= zap_ratio:
                    continue
                td = rng.randrange(tds)
                pages = mapped[td]
                if pages:
                    i = rng.randrange(len(pages))
                    pages[i], pages[-1] = pages[-1], pages[i]
                    gfn = pages.pop()
                    is_mapped[td].discard(gfn)
                    yield w.line({"op": "zap", "td": td, "gfn": gfn, "t": t})
                    zapped[(gfn // VCPU_RANGE) % vcpus].append(gfn)
        for v, gfn in batch:  # (a jump can land on a mapped gfn: a spurious fault)
            if gfn not in is_mapped[v % tds]:
                is_mapped[v % tds].add(gfn)
                mapped[v % tds].append(gfn)
        t += 1
        if teardown and not freed and done >= faults // 2 and len(live) > 1:
            gone = live.pop()
            yield w.line({"op": "vcpu_free", "vcpu": gone, "t": t})
            freed = True
            t += 1
    if teardown:
        for td in range(tds):
            yield w.line({"op": "td_destroy", "td": td})


def bursty(faults: int, seed: int = 1, vcpus: int = 8, tds: int = 2) -> Iterator[str]:
    """Batches of 1 to 16 faults from random vCPUs; a spurious re-fault now and then."""
    rng = random.Random(seed)
    w = _Style(rng)
    yield _header({"host_memory_mib": 65536}, "bursty")
    yield from _setup(tds, vcpus, w)
    cursor = [v * VCPU_RANGE + rng.randrange(VCPU_RANGE // 2) for v in range(vcpus)]
    t = done = 0
    while done < faults:
        for _ in range(rng.randint(1, 16)):
            v = rng.randrange(vcpus)
            if rng.random() < 0.02 and cursor[v] > v * VCPU_RANGE:
                gfn = cursor[v] - 1  # mapped already (or about to be): a spurious fault
            else:
                if rng.random() < 0.1:
                    cursor[v] = v * VCPU_RANGE + rng.randrange(VCPU_RANGE // 2)
                gfn = cursor[v]
                cursor[v] += 1
            yield w.line({"op": "fault", "vcpu": v, "gfn": gfn, "t": t})
            done += 1
            if done >= faults:
                break
        t += rng.randint(1, 3)


def lifecycle(
    faults: int, seed: int = 1, live_tds: int = 4, vcpus_per_td: int = 2
) -> Iterator[str]:
    """TDs created, faulted and destroyed in turn, ``live_tds`` at a time."""
    rng = random.Random(seed)
    w = _Style(rng)
    yield _header({"host_memory_mib": 65536}, "lifecycle")
    rounds_per_destroy = 256  # a TD lives about live_tds * 256 rounds
    next_td = next_vcpu = 0
    live: list[tuple[int, list[int], list[int]]] = []  # (td, its vCPUs, their cursors)
    t = done = 0
    while done < faults:
        while len(live) < live_tds:
            td = next_td
            next_td += 1
            yield w.line({"op": "td_create", "td": td})
            vs = list(range(next_vcpu, next_vcpu + vcpus_per_td))
            next_vcpu += vcpus_per_td
            for v in vs:
                yield w.line({"op": "vcpu_create", "td": td, "vcpu": v})
            yield w.line({"op": "td_finalize", "td": td})
            live.append(
                (td, vs, [i * VCPU_RANGE + rng.randrange(VCPU_RANGE // 2) for i in range(len(vs))])
            )
        for _td, vs, cur in live:
            for i, v in enumerate(vs):
                yield w.line({"op": "fault", "vcpu": v, "gfn": cur[i], "t": t})
                cur[i] += 1 if rng.random() > 0.05 else rng.randint(2, 4096)
                done += 1
        t += 1
        if t % rounds_per_destroy == 0:
            td, _, _ = live.pop(rng.randrange(len(live)))
            yield w.line({"op": "td_destroy", "td": td, "t": t})
            t += 1


def fleet(faults: int, seed: int = 1, tds: int = 128, vcpus_per_td: int = 2) -> Iterator[str]:
    """A host running many TDs at once (a cloud host): ``tds`` TDs of ``vcpus_per_td`` vCPUs,
    faults from vCPUs picked at random, mostly alone (no ``t``), sometimes 2 to 8 at one ``t``,
    each vCPU walking its own range with jumps. The TDs and vCPUs far outnumber the CPUs of
    any batch: what the engine does per TD or per vCPU between batches shows here."""
    rng = random.Random(seed)
    w = _Style(rng)
    yield _header({"host_memory_mib": 65536}, "fleet")
    nr = tds * vcpus_per_td
    yield from _setup(tds, nr, w)
    cursor = [(v % 64) * VCPU_RANGE + rng.randrange(VCPU_RANGE // 2) for v in range(nr)]
    t = done = 0
    while done < faults:
        n = rng.choice((1, 1, 1, 2, 4, 8))
        for _ in range(n):
            v = rng.randrange(nr)
            if rng.random() < 0.05:
                cursor[v] = (v % 64) * VCPU_RANGE + rng.randrange(VCPU_RANGE // 2)
            ev: dict[str, Any] = {"op": "fault", "vcpu": v, "gfn": cursor[v]}
            if n > 1:
                ev["t"] = t
            yield w.line(ev)
            cursor[v] += 1
            done += 1
            if done >= faults:
                break
        t += 1


#: Shape name -> writer ``(faults, seed) -> lines``.
SHAPES: dict[str, Callable[..., Iterator[str]]] = {
    "runs": runs,
    "concurrent": concurrent,
    "bursty": bursty,
    "churn": churn,
    "lifecycle": lifecycle,
    "fleet": fleet,
}


def write(shape: str, faults: int, seed: int = 1) -> bytes:
    """The whole trace of ``shape`` as bytes (one line per event, a final newline)."""
    return ("\n".join(SHAPES[shape](faults, seed)) + "\n").encode()
