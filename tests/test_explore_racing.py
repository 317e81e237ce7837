"""The search's direct races (``_Reduced._direct_races``) pick the stack's turns a new turn is
dependent on by the new turn's conflict mask against each stack turn's own access bits
(``_racing``). It must pick exactly the turns whose own conflict mask meets the new turn's bits
(what it tested before, one mask per stack turn): the same races, the same search."""

from __future__ import annotations

import itertools
from typing import Any

from explorer.interleavings.search import _STAR, _racing, _Universe

CPUS = ("p", "q", "r")


def _footprints() -> list[Any]:
    """Every read / write / update set over two objects (disjoint modes), the unannotated
    turn's footprint, and (among them) the turn that accessed nothing."""
    objs = ("x", "y")
    sets = [frozenset(c) for k in range(3) for c in itertools.combinations(objs, k)]
    fps = [(r, w, a) for r in sets for w in sets for a in sets if not (r & w or r & a or w & a)]
    return [*fps, _STAR]


def _frame(cpu: int, bits: int) -> list[Any]:
    # the walk's frame: slot 3 the out turn's CPU index, slot 10 its own access bits
    return [None, 0, CPUS[cpu], cpu, (), 0, -1, None, None, (None, -1), bits]


def _check(turns: list[tuple[int, Any]], last: tuple[int, Any]) -> None:
    u = _Universe()
    bits = [u.step_bits(CPUS[c], fp) for c, fp in turns]
    pi, fp = last
    mine = u.step_bits(CPUS[pi], fp)
    stack = [_frame(c, b) for (c, _), b in zip(turns, bits, strict=True)]
    stack.append(_frame(pi, mine))  # (the top: the state the new turn is taken from)
    want = [i for i, (c, f) in enumerate(turns) if u.conflicts(CPUS[c], f) & mine]
    mask = u.conflicts(CPUS[pi], fp) if mine else 0
    assert _racing(stack, len(turns), pi, mine, mask, u.star) == want, (turns, last)


def test_racing_picks_the_turns_each_stack_turn_mask_picks_on_every_pair() -> None:
    fps = _footprints()
    for x, y in itertools.product(fps, fps):
        for qc in range(2):  # (the same CPU, then another)
            _check([(qc, x)], (0, y))


def test_racing_picks_them_along_stacks_of_many_cpus() -> None:
    fps = _footprints()
    n = len(fps)
    for seed in range(200):
        # a deterministic spread of stacks: CPUs and footprints from the seed's digits
        turns = [((seed * 7 + k * 5) % 3, fps[(seed * 13 + k * k * 11) % n]) for k in range(9)]
        _check(turns, (seed % 3, fps[(seed * 17) % n]))
