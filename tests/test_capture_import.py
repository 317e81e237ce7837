"""Kernel captures imported as traces (one TD per TDX VM) and every record accounted for by the
conformance check (docs/capture.md, "Import" and "Conformance")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from explorer.cli.main import main
from explorer.conformance.conform import Divergence, conform
from explorer.conformance.importer import FROZEN_SPTE, SHADOW_NONPRESENT, import_capture, spte_kind
from explorer.conformance.synth import HostSim
from explorer.ingest.capture import Capture, parse_capture
from explorer.model.events import Fault, TdCreate, TdDestroy, TdFinalize, VcpuCreate, Zap
from explorer.replay.timeline import replay

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces" / "captures"
CONFORMING = ["conforming.txt", "zap_refault.txt", "teardown_other_thread.txt", "derived.txt"]


def _cap(name: str, text: str | None = None) -> Capture:
    data = text.encode() if text is not None else (SAMPLES / name).read_bytes()
    return parse_capture(data, name)


def test_spte_values_are_the_kernels() -> None:
    """x86-64: SHADOW_NONPRESENT_VALUE is bit 63, FROZEN_SPTE bit 63 | 0x5a0 (spte.h)."""
    assert SHADOW_NONPRESENT == 0x8000000000000000 and FROZEN_SPTE == 0x80000000000005A0
    present = 0x30000E07
    assert spte_kind(SHADOW_NONPRESENT, present) == "map"
    assert spte_kind(present, SHADOW_NONPRESENT) == "zap"
    assert spte_kind(present, FROZEN_SPTE) == "frozen"
    assert spte_kind(present, 0x5A0) == "other" and spte_kind(0, present) == "map"


@pytest.mark.parametrize("name", CONFORMING)
def test_conforming_samples_conform(name: str) -> None:
    cap = _cap(name)
    c = conform(cap)
    assert c.ok and c.divergences == [] and c.unexplained == [] and c.stopped is None
    ignored = sum(v for k, v in c.ignored.items() if k != "init-mem-region")
    assert c.observations + ignored == len(cap.records)  # every record accounted for
    assert all(m.step >= 0 for m in c.matches)


def test_two_tds_and_the_noise_around_them() -> None:
    cap = _cap("conforming.txt")
    imp = import_capture(cap)
    ev = imp.events
    assert [e.td for e in ev if isinstance(e, TdCreate)] == [0, 1]
    assert sorted(e.td for e in ev if isinstance(e, TdDestroy)) == [0, 1]
    assert len([e for e in ev if isinstance(e, VcpuCreate)]) == 3
    assert imp.ignored == {"non-tdx-vm": 12, "shared-gpa": 3}
    faults = [e for e in ev if isinstance(e, Fault)]
    assert {f.gfn for f in faults} == {0x0, 0x10, 0x1000, 0x1001, 0x2000}
    # KVM_TDX_INIT_MEM_REGION (VMM thread, vCPU 0's cache, no kvm_page_fault): vCPU 0's fault
    # on gfn 0 at the kernel's page, before TD 0's finalize (the engine's TDH.MEM.PAGE.ADD)
    fin = next(n for n, e in enumerate(ev) if isinstance(e, TdFinalize) and e.td == 0)
    init = [e for e in ev[:fin] if isinstance(e, Fault)]
    assert [(f.vcpu, f.gfn, f.pfn) for f in init] == [(0, 0x0, 0x30000)]
    assert imp.init_faults == {ev.index(init[0])}
    assert replay(ev, imp.settings).stopped is None


def test_zap_and_refault_import_as_the_kernel_records_them() -> None:
    ev = import_capture(_cap("zap_refault.txt")).events
    kinds = [(type(e).__name__, getattr(e, "gfn", None)) for e in ev if isinstance(e, Fault | Zap)]
    assert kinds == [("Fault", 0x10), ("Fault", 0x11), ("Zap", 0x10), ("Fault", 0x10)]


def test_teardown_on_another_thread_belongs_to_the_td() -> None:
    cap = _cap("teardown_other_thread.txt")
    assert {r.tid for r in cap.records if r.probe == "tdx_free_pamt_cache.entry"} == {4242}
    imp = import_capture(cap)
    assert isinstance(imp.events[-1], TdDestroy) and imp.ignored == {}


def test_a_td_known_by_its_process_only() -> None:
    """Without the kvm= probes (every kvm=0x0) the tgid is the identity: still one TD each, and
    the other VM's faults are still set aside (its process has no TDX record)."""
    text = re.sub(r"kvm=0x[0-9a-f]+", "kvm=0x0", (SAMPLES / "conforming.txt").read_text())
    c = conform(_cap("noctx.txt", text))
    assert c.ok, c.divergences[:3]
    imp = import_capture(_cap("noctx.txt", text))
    assert len([e for e in imp.events if isinstance(e, TdCreate)]) == 2
    assert imp.ignored["non-tdx-vm"] == 12


def test_a_local_retry_and_a_spurious_fault_conform() -> None:
    h = HostSim(seed=3)
    vm = h.new_vm()
    h.new_vcpu(vm, 0)
    h.new_vcpu(vm, 1)
    h.fault(vm, 0, 0x10, 0x30000, retries=2)  # three attempts, three top-ups, one record
    h.fault(vm, 1, 0x10)  # spurious: already mapped by vCPU 0
    h.race(vm, (1, 0x20, 0x32000), (0, 0x21, 0x32001))  # the other vCPU wins this time
    h.teardown(vm)
    c = conform(_cap("retry.txt", h.text()))
    assert c.ok, c.divergences[:3]


# ------------------------------------------------------------------ the mutation suite
def _lines() -> list[str]:
    return (SAMPLES / "conforming.txt").read_text().splitlines(keepends=True)


def _ts(line: str) -> str:
    return line.split(" ", 1)[0]


def _with_ts(line: str, ts: str) -> str:
    return ts + " " + line.split(" ", 1)[1]


def _first(lines: list[str], pred: object, start: int = 0) -> int:
    return next(i for i in range(start, len(lines)) if pred(i))  # type: ignore[operator]


def _vcpu_get(lines: list[str], i: int) -> bool:
    return "tdx_pamt_get.entry" in lines[i] and "cache=0x0 " not in lines[i]


def _mut_unbalanced_put(lines: list[str]) -> tuple[list[str], int, str]:
    i = _first(lines, lambda i: "tdx_pamt_put.return" in lines[i])
    ent = _first(lines, lambda i: "tdx_pamt_put.entry" in lines[i])
    extra = [_with_ts(lines[ent], _ts(lines[i])), _with_ts(lines[i], _ts(lines[i]))]
    return lines[: i + 1] + extra + lines[i + 1 :], i + 2, "unexplained"


def _mut_missing_get(lines: list[str]) -> tuple[list[str], int, str]:
    i = _first(
        lines,
        lambda i: (
            _vcpu_get(lines, i)
            and "tdx_pamt_get.return" in lines[i + 1]
            and "level=1 " in lines[i + 2]
        ),
    )
    return lines[:i] + lines[i + 2 :], i, "get.missing"


def _mut_add_elsewhere(lines: list[str]) -> tuple[list[str], int, str]:
    i = _first(lines, lambda i: "tdh_phymem_pamt_add.entry" in lines[i])
    pfn = int(re.search(r"pfn=(0x[0-9a-f]+)", lines[i]).group(1), 16)  # type: ignore[union-attr]
    out = list(lines)
    out[i] = lines[i].replace(f"pfn={pfn:#x}", f"pfn={pfn + 0x200:#x}")
    return out, i + 1, "pamt_add.region"


def _mut_premature_remove(lines: list[str]) -> tuple[list[str], int, str]:
    i = _first(
        lines, lambda i: "tdx_pamt_put.entry" in lines[i] and "tdx_pamt_put.return" in lines[i + 1]
    )
    pfn = re.search(r"pfn=(0x[0-9a-f]+)", lines[i]).group(1)  # type: ignore[union-attr]
    head = lines[i].split(" tdx_pamt_put.entry")[0]
    extra = [
        f"{head} tdh_phymem_pamt_remove.entry pfn={pfn} kvm=0x0\n",
        f"{head} tdh_phymem_pamt_remove.return ret=0x0 kvm=0x0\n",
    ]
    return lines[: i + 1] + extra + lines[i + 1 :], i + 2, "pamt_remove"


def _mut_cold_fast(lines: list[str]) -> tuple[list[str], int, str]:
    i = _first(
        lines,
        lambda i: (
            _vcpu_get(lines, i)
            and "pamt_add.entry" in lines[i + 1]
            and "tdx_pamt_get.return" in lines[i + 3]
        ),
    )
    before = re.search(r"cache_count=(\d+)", lines[i]).group(1)  # type: ignore[union-attr]
    ret = re.sub(r"cache_count=\d+", f"cache_count={before}", lines[i + 3])
    return [*lines[: i + 1], ret, *lines[i + 4 :]], i + 2, "get.path"


def _mut_second_add(lines: list[str]) -> tuple[list[str], int, str]:
    i = _first(
        lines,
        lambda i: (
            _vcpu_get(lines, i)
            and "tdx_pamt_get.return" in lines[i + 1]
            and "level=1 " in lines[i + 2]
        ),
    )
    pfn = re.search(r"pfn=(0x[0-9a-f]+)", lines[i]).group(1)  # type: ignore[union-attr]
    head = lines[i].split(" tdx_pamt_get.entry")[0]
    extra = [
        f"{head} tdh_phymem_pamt_add.entry pfn={pfn} kvm=0x0\n",
        f"{head} tdh_phymem_pamt_add.return ret=0x0 kvm=0x0\n",
    ]
    return lines[: i + 1] + extra + lines[i + 1 :], i + 2, "pamt_add"


def _mut_topup_target(lines: list[str]) -> tuple[list[str], int, str]:
    i = _first(lines, lambda i: "tdx_topup_pamt_cache.entry" in lines[i])
    out = list(lines)
    out[i] = re.sub(r"cache=0x[0-9a-f]+", "cache=0xffff888277770010", lines[i])
    return out, i + 1, "topup.target"


MUTATIONS = {
    "unbalanced put": _mut_unbalanced_put,
    "missing get": _mut_missing_get,
    "PAMT.ADD on another region": _mut_add_elsewhere,
    "premature PAMT.REMOVE": _mut_premature_remove,
    "a cold get on the fast path": _mut_cold_fast,
    "a second PAMT.ADD": _mut_second_add,
    "another top-up target": _mut_topup_target,
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_way_a_kernel_could_differ_is_flagged_at_its_own_line(name: str) -> None:
    """The first divergence is at the changed record (for a missing one: the record after which
    it should have been), of the kind that names the difference."""
    lines, line, kind = MUTATIONS[name](_lines())
    c = conform(_cap("mut.txt", "".join(lines)))
    assert not c.ok
    first = min(c.divergences, key=lambda d: d.line)
    assert (first.line, first.kind) == (line, kind), c.divergences[:4]


def test_divergent_samples_at_their_lines() -> None:
    c = conform(_cap("divergent.txt"))
    lines = (SAMPLES / "divergent.txt").read_text().splitlines()
    extra = next(
        i + 1
        for i, s in enumerate(lines)
        if "tdx_pamt_put.entry" in s and "tdx_pamt_put.entry" in lines[i - 2]
    )
    assert min(d.line for d in c.divergences) == extra
    # the extra put's entry and return: no model operation explains either
    assert [u["line"] for u in c.unexplained] == [extra, extra + 1]
    assert "tdx_pamt_put.entry" in c.unexplained[0]["text"]
    assert c.divergences[0] == Divergence(extra, "unexplained", "tdx_pamt_put.entry", None, 81)
    leak = conform(_cap("divergent_leak.txt"))
    zap = next(
        i + 1
        for i, s in enumerate((SAMPLES / "divergent_leak.txt").read_text().splitlines())
        if " gfn=0x11 level=1 " in s
        and s.endswith("new_spte=0x8000000000000000 kvm=" + s.rsplit("kvm=", 1)[1])
    )
    text = (SAMPLES / "divergent_leak.txt").read_text().splitlines()
    # the teardown's put of the leaked region's other page: the kernel keeps the leaked
    # reference (no PAMT.REMOVE), the model's count reaches 0 there
    last = next(i + 1 for i in range(zap, len(text)) if "tdx_pamt_put.entry pfn=0x30000" in text[i])
    assert [(d.line, d.kind) for d in leak.divergences] == [
        (zap, "put.missing"),
        (last, "pamt_remove.missing"),
    ]


def test_cli_exit_statuses_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = str(SAMPLES / "conforming.txt"), str(SAMPLES / "divergent.txt")
    assert main(["conform", good]) == 0
    # the shared-GPA fault's three KVM records and its top-up's entry and return
    assert "ignored: 12 non-tdx-vm, 5 shared-gpa" in capsys.readouterr().out
    assert main(["conform", bad, "--json"]) == 1
    obj = json.loads(capsys.readouterr().out)
    assert set(obj) >= {"ok", "observations", "divergences", "unexplained", "ignored"}
    assert set(obj["divergences"][0]) == {"line", "kind", "observed", "predicted", "step"}
    assert set(obj["unexplained"][0]) == {"line", "text"}
    broken = tmp_path / "broken.txt"
    broken.write_text("1 0 5000 5000 tdx_pamt_get.return ret=0 cache_count=-1 kvm=0x0\n")
    assert main(["conform", str(broken)]) == 2
    assert main(["import", str(broken)]) == 2
    assert "broken.txt:1:" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# dpamt-capture v2\n# nothing ran\n")
    assert main(["conform", str(empty)]) == 2
    assert "no capture records in 2 line(s)" in capsys.readouterr().err
    trace = tmp_path / "t.jsonl"
    assert main(["import", good, "-o", str(trace)]) == 0
    assert main(["check", str(trace)]) == 0
