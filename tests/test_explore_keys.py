"""A state's two keys are assembled from the pickles of its parts (``_keys`` in
explorer/interleavings/search.py): they must be exactly the digests of the two tuples pickled
whole (``_digest``), since the keys' values order the fair-cycle search. Checked on the states of
real searches and on parts around the pickle frame's size, so a change in Python's pickle
framing shows here rather than as a search that moved."""

from __future__ import annotations

import dis
import pickle
from pathlib import Path
from typing import Any

import pytest

import explorer.interleavings.search as search
from explorer.ingest import parse_trace
from explorer.model.settings import Settings
from tests.purechild import child_runner, in_process, run_pure


@child_runner
def test_on_the_pure_engine() -> None:
    run_pure(__file__)


SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


_KEYS = search._keys


def _check(bare: Any, counted: Any, ts: Any, codes: Any) -> None:
    want = (search._digest((bare, counted, ts, codes)), search._digest((bare, ts, codes)))
    assert _KEYS(bare, counted, ts, codes) == want
    # the reduced search passes the CPUs' parts as their pickle body alone (ts None)
    items = [search._pickled_body(x) for x in ts]
    if all(b is not None for b in items):
        body = search._tuple_body(items)  # type: ignore[arg-type]
        assert _KEYS(bare, counted, None, codes, body) == want


@in_process
@pytest.mark.parametrize("name", ["lost_race", "put_remove_vs_get", "cold_race_2vcpu"])
def test_the_keys_of_searched_states_are_the_whole_pickles_digests(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = search._keys

    def checked(bare: Any, counted: Any, ts: Any, codes: Any, ts_body: Any = None) -> Any:
        if ts is None:  # (the reduced search passes the threads' part as its pickle body)
            ts = pickle.loads(b"".join((search._PROTO, ts_body, search._STOP)))
        _check(bare, counted, ts, codes)
        if ts_body is not None:  # (the threads' part, assembled from each CPU's pickle)
            assert ts_body == search._pickled_body(ts)
        seen.append(1)
        return real(bare, counted, ts, codes, ts_body)

    monkeypatch.setattr(search, "_keys", checked)
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    search.explore(trace.events, Settings().with_overrides(trace.settings), reduction=True)
    assert len(seen) >= 20


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7])
def test_a_tuple_assembled_from_its_items_pickles_is_its_pickle(n: int) -> None:
    items = [("vcpu", i, ("x",) * i, "y" * (i * 100)) for i in range(n)]
    body = search._tuple_body([search._pickled_body(x) for x in items])  # type: ignore[misc]
    assert body == search._pickled_body(tuple(items))


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 100, 65_000, 65_536, 70_000, 200_000])
def test_the_keys_around_the_frame_size(size: int) -> None:
    big = ("x" * size, tuple(range(size // 50)))
    _check(big, (1, 2), ("t",), ())
    _check((), (), big, ("a", "b"))
    _check(big, big, big, big)
    _check((), (), (), ())


def _late(flag: bool) -> Any:
    if flag:
        x = 1
    y = 2
    yield y
    x = 3
    yield x


def test_a_frames_part_does_not_depend_on_when_it_was_read() -> None:
    """``f_locals`` is kept on the frame between reads, in the order the reads first found
    each local bound: a generator read at every state of a path and one read first after a
    re-execution listed the same locals in two orders, so one state had two keys (8 % of the
    states of a fresh TD's three vCPUs were such duplicates)."""
    read_on_the_way = _late(False)
    next(read_on_the_way)
    early = search._frames(read_on_the_way, {})
    next(read_on_the_way)
    read_once = _late(False)
    next(read_once)
    next(read_once)
    assert early != search._frames(read_once, {})  # (y alone, then x and y)
    assert search._frames(read_on_the_way, {}) == search._frames(read_once, {})
    assert [k for k, _ in search._frames(read_once, {})[0][2]] == ["flag", "x", "y"]


@in_process
@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("lost_race", "v6"),
        ("cold_race_2vcpu", "v6"),
        ("cold_race_2vcpu", "v6-locked"),
        ("race_three_cpus", "v5-hint"),
        ("stale_fault", "v6"),
    ],
)
def test_the_kept_parts_of_each_cpu_and_the_forward_turns_are_exact(
    name: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reduced search keeps each CPU's part of the state until the CPU moves
    (``_Reduced._threads_part``) and reaches a state of the stack by the stack's turns from
    where the machine is (``_Reduced._forward``): at every state, the kept parts are the parts
    computed afresh, and after every forward the machine is in the state it was sent to."""
    parts = search._Reduced._threads_part
    forward = search._Reduced._forward
    counts = {"parts": 0, "forwards": 0}

    def checked_parts(self: Any) -> Any:
        ts, body = parts(self)
        fresh = search._threads_state(self.m, self.threads, self.ex.fair)
        assert body == search._pickled_body(fresh)
        assert ts is None  # (the bodies alone: every part here fits one pickle frame)
        counts["parts"] += 1
        return ts, body

    def checked_forward(self: Any, key: bytes) -> bool:
        went = forward(self, key)
        if went:
            m = self.m
            self.th_parts.clear()
            ts, body = parts(self)
            bare = m.canonical_state(search.COUNTER_NAMES)
            counted = tuple([m.cnt[i] for i in search._COUNTED])
            got, _ = search._keys(bare, counted, ts, search._diag_codes(m), body)
            assert got == key
            counts["forwards"] += 1
        return went

    monkeypatch.setattr(search._Reduced, "_threads_part", checked_parts)
    monkeypatch.setattr(search._Reduced, "_forward", checked_forward)
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    settings = Settings().with_overrides({**trace.settings, "mode": mode})
    search.explore(trace.events, settings, reduction=True)
    assert counts["parts"] >= 20


# ------------------------------------------------------------------ dead locals
_STOPS = frozenset({"RETURN_VALUE", "RAISE_VARARGS", "RERAISE"})
_GOTOS = frozenset(
    {"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP_NO_INTERRUPT", "JUMP"}
)


def _read_after_a_yield(code: Any, name: str) -> list[int]:
    """The offsets of the yields after which ``name`` can be read before it is assigned again
    (a forward walk of the bytecode's control flow from each yield: jumps, fall-throughs and
    exception handlers). Empty: the local is dead at every point the frame is suspended."""
    ins = list(dis.get_instructions(code))
    at = {x.offset: k for k, x in enumerate(ins)}
    handlers = [
        (e.start, e.end, e.target) for e in getattr(dis.Bytecode(code), "exception_entries", [])
    ]
    jumps = set(dis.hasjrel) | set(dis.hasjabs)

    def successors(k: int) -> list[int]:
        x = ins[k]
        out = [] if x.opname in _STOPS or x.opname in _GOTOS else [k + 1]
        if x.opcode in jumps:
            out.append(at[x.argval])
        out += [at[t] for s, e, t in handlers if s <= x.offset < e]
        return [j for j in out if j < len(ins)]

    live = []
    for k, x in enumerate(ins):
        if x.opname != "YIELD_VALUE":
            continue
        todo, seen = [k + 1], set()
        while todo:
            j = todo.pop()
            if j in seen:
                continue
            seen.add(j)
            y = ins[j]
            if y.argval == name and y.opname in ("LOAD_FAST", "LOAD_FAST_CHECK"):
                live.append(x.offset)
                break
            if y.argval == name and y.opname in ("STORE_FAST", "DELETE_FAST"):
                continue
            todo.extend(successors(j))
    return live


def _kernel_code(qualname: str) -> Any:
    """The code object of a kernel function, compiled from its source (the engine's build may
    have compiled the module itself to C, which has no bytecode)."""
    path = Path(__file__).resolve().parent.parent / "explorer" / "model" / "kvm.py"
    todo = [compile(path.read_text(), str(path), "exec")]
    while todo:
        c = todo.pop()
        if c.co_qualname == qualname:
            return c
        todo.extend(k for k in c.co_consts if hasattr(k, "co_code"))
    raise AssertionError(f"{qualname} not found in {path}")


def test_the_dead_locals_are_dead_at_every_yield() -> None:
    """A local left out of a state (``_DEAD_LOCALS``) must be dead wherever its frame can be
    suspended: read only after an assignment with no yield between. The check itself finds a
    local that is live across a yield."""
    assert search._DEAD_LOCALS, "nothing to check"
    for qualname, names in search._DEAD_LOCALS.items():
        code = _kernel_code(qualname)
        for name in names:
            assert name in code.co_varnames, (qualname, name)
            assert _read_after_a_yield(code, name) == [], (qualname, name)

    def live_across() -> Any:
        ret = 0
        while True:
            yield 1
            ret += 1  # (read after the yield, before any assignment: live)

    def dead_across() -> Any:
        while True:
            ret = yield 1
            if ret:
                return

    assert _read_after_a_yield(live_across.__code__, "ret") != []
    # (and in the kernel's own loop: the lap count is read after the laps' yields)
    assert _read_after_a_yield(_kernel_code("tdx_handle_ept_violation"), "attempt") != []
    assert _read_after_a_yield(dead_across.__code__, "ret") == []
