"""Concurrent groups the kernel cannot run at once are refused when the trace is read, at the
later event's line (found by races written outside the project: the search ran a vCPU before
its creation, and on after its TD's teardown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer.ingest import parse_trace
from explorer.ingest.parse import TraceError
from tests.test_explore import run

HEAD = '{"format": "dpamt-trace", "version": 1, "title": "t"}\n'
TD = '{"op": "td_create", "td": 0}\n{"op": "vcpu_create", "td": 0, "vcpu": 0}\n'
FIN = '{"op": "td_finalize", "td": 0}\n'


def _problems(text: str) -> list[str]:
    with pytest.raises(TraceError) as exc:
        parse_trace(text.encode(), "g.jsonl")
    return [f"{p.line}:{p.reason}" for p in exc.value.problems]


def test_a_td_destroy_beside_its_own_vcpus_fault_is_refused_at_its_line() -> None:
    text = (
        HEAD
        + TD
        + FIN
        + '{"op": "fault", "vcpu": 0, "gfn": "0x1", "t": 1}\n'
        + '{"op": "td_destroy", "td": 0, "t": 1}\n'
    )
    (p,) = _problems(text)
    assert p.startswith("6:td_destroy of TD 0 shares t=1 with vCPU 0's fault (line 5)")
    assert "kvm_destroy_vm" in p


def test_a_vcpu_event_beside_its_own_creation_is_refused_at_its_line() -> None:
    text = (
        HEAD
        + TD
        + FIN
        + '{"op": "vcpu_create", "td": 0, "vcpu": 1, "t": 2}\n'
        + '{"op": "fault", "vcpu": 1, "gfn": "0x1", "t": 2}\n'
        + '{"op": "vcpu_free", "vcpu": 1, "t": 2}\n'
    )
    problems = _problems(text)
    assert [p.split(":")[0] for p in problems] == ["6", "7"]
    assert "vCPU 1's fault shares t=2 with its own vcpu_create (line 5)" in problems[0]
    assert "KVM_CREATE_VCPU" in problems[0]


def test_other_tds_and_vcpus_may_share_a_group() -> None:
    """A TD's teardown beside another TD's fault, and a new vCPU beside another vCPU's fault,
    are real concurrency (the samples and the bench's shapes have them too)."""
    text = (
        HEAD
        + TD
        + '{"op": "td_create", "td": 1}\n{"op": "vcpu_create", "td": 1, "vcpu": 1}\n'
        + FIN
        + '{"op": "td_finalize", "td": 1}\n'
        + '{"op": "fault", "vcpu": 0, "gfn": "0x1", "t": 1}\n'
        + '{"op": "td_destroy", "td": 1, "t": 1}\n'
        + '{"op": "vcpu_create", "td": 0, "vcpu": 2, "t": 1}\n'
        + '{"op": "fault", "vcpu": 0, "gfn": "0x2", "t": 2}\n'
        + '{"op": "td_destroy", "td": 0, "t": 3}\n'
    )
    assert len(parse_trace(text.encode(), "g.jsonl").events) == 11


def test_the_same_in_csv() -> None:
    text = "op,td,vcpu,gfn,t\ntd_create,0,,,\nvcpu_create,0,0,,\nfault,,0,0x1,4\ntd_destroy,0,,,4\n"
    with pytest.raises(TraceError) as exc:
        parse_trace(text.encode(), "g.csv")
    (p,) = exc.value.problems
    assert p.line == 5 and "td_destroy of TD 0" in p.reason


def test_explore_refuses_it_with_the_line(tmp_path: Path) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text(
        HEAD
        + TD
        + FIN
        + '{"op": "fault", "vcpu": 0, "gfn": "0x1", "t": 1}\n'
        + '{"op": "td_destroy", "td": 0, "t": 1}\n'
    )
    code, _, err = run(str(f))
    assert code == 2 and "g.jsonl:6:1: td_destroy of TD 0" in err


def test_a_vcpu_id_created_again_belongs_to_its_new_td() -> None:
    """vCPU 1 of TD 0, destroyed with it; vCPU 1 again in TD 1: its fault beside TD 1's teardown
    is refused (the owner is read as of the group, not the first creation)."""
    text = (
        HEAD
        + '{"op": "td_create", "td": 0}\n{"op": "vcpu_create", "td": 0, "vcpu": 1}\n'
        + '{"op": "td_destroy", "td": 0}\n'
        + '{"op": "td_create", "td": 1}\n{"op": "vcpu_create", "td": 1, "vcpu": 1}\n'
        + '{"op": "td_finalize", "td": 1}\n'
        + '{"op": "fault", "vcpu": 1, "gfn": "0x1", "t": 1}\n'
        + '{"op": "td_destroy", "td": 1, "t": 1}\n'
    )
    (p,) = _problems(text)
    assert p.startswith("9:td_destroy of TD 1 shares t=1 with vCPU 1's fault (line 8)")
