"""Real kernel captures (format v2): the parser's line:col reports, the samples, and the script,
its preflight, the doc and the parser in agreement (docs/capture.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from explorer.ingest.capture import (
    MAX_CAPTURE_BYTES,
    PROBES,
    human_size,
    looks_like_capture,
    parse_capture,
)
from explorer.model.errors import TraceError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "capture" / "dpamt.bt"
PREFLIGHT = ROOT / "tools" / "capture" / "preflight.sh"
DOC = ROOT / "docs" / "capture.md"
SAMPLES = ROOT / "sample_traces" / "captures"
NAMES = sorted(p.name for p in SAMPLES.glob("*.txt"))


def _problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(TraceError) as e:
        parse_capture(text.encode(), "t.txt")
    return [(p.line, p.col, p.reason) for p in e.value.problems]


@pytest.mark.parametrize("name", NAMES)
def test_samples_parse(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    cap = parse_capture(data, name)
    assert len(cap.records) > 100 and cap.unknown == ()
    assert cap.header["vms_at_start"] == "0" and looks_like_capture(data)
    assert all(r.text == data.decode().splitlines()[r.line - 1] for r in cap.records)


def test_not_a_capture() -> None:
    assert not looks_like_capture((ROOT / "sample_traces" / "lost_race.jsonl").read_bytes())
    assert not looks_like_capture(b"# only a comment\n")
    assert not looks_like_capture(b"1 2 3 4 no_such_probe pfn=1\n")
    assert not looks_like_capture(b"1 2 3 tdx_pamt_put.entry pfn=0x1 kvm=0x0\n")  # format v1


GOOD = (
    "10 0 7 70 tdx_pamt_put.entry pfn=0x8000 kvm=0x0\n20 0 7 70 tdx_pamt_put.return ret=0 kvm=0x0\n"
)


def test_good_inline() -> None:
    cap = parse_capture(GOOD.encode(), "t")
    assert [r.probe for r in cap.records] == ["tdx_pamt_put.entry", "tdx_pamt_put.return"]
    assert cap.records[0].fields == {"pfn": 0x8000, "kvm": 0} and cap.records[1].line == 2
    assert cap.records[0].pid == 70 and cap.records[0].tid == 7


def test_the_fast_and_the_checked_path_agree() -> None:
    """A line the one-regex path refuses (an extra key) still parses, by the checked path."""
    a = parse_capture(GOOD.encode(), "t").records[0]
    b = parse_capture(GOOD.replace("kvm=0x0\n", "kvm=0x0 why=zap\n", 1).encode(), "t").records[0]
    assert a.fields == b.fields and (a.ts, a.pid) == (b.ts, b.pid)  # (the unknown key dropped)
    assert b.text.endswith("why=zap")


def test_unknown_probe() -> None:
    assert _problems("# c\n10 0 7 70 tdx_pamt_gte.entry pfn=1\n") == [
        (2, 11, "unknown probe 'tdx_pamt_gte.entry'")
    ]


def test_malformed_field() -> None:
    (p,) = _problems("10 0 7 70 tdx_pamt_put.entry pfn=0x80g0 kvm=0x0\n")
    assert p[:2] == (1, 30) and p[2] == "malformed field"
    (p,) = _problems("10 0 7 70 tdx_pamt_put.entry pfn=01 kvm=0x0\n")  # a leading zero
    assert p[:2] == (1, 30)


def test_values_an_import_could_not_hold_are_refused_at_their_field() -> None:
    (p,) = _problems("10 0 7 70 tdx_pamt_put.entry pfn=0x40000000 kvm=0x0\n")
    assert p == (1, 30, "pfn out of range")
    (p,) = _problems(
        "10 0 7 70 kvm_page_fault vcpu=1048576 rip=0x0 gpa=0x1000 error_code=0x2 kvm=0x0\n"
    )
    assert p[2] == "vcpu out of range"
    (p,) = _problems(
        "10 0 7 70 kvm_tdp_mmu_spte_changed as_id=0 gfn=0x0 level=9 old_spte=0x0 new_spte=0x0 kvm=0x0\n"
    )
    assert p[2] == "level out of range"
    parse_capture(b"10 0 7 70 tdx_pamt_put.entry pfn=0x3fffffff kvm=0x0\n", "t")  # the last page


def test_out_of_order_timestamp_on_one_cpu() -> None:
    text = (
        "30 0 7 70 tdx_pamt_put.entry pfn=1 kvm=0x0\n20 1 8 70 tdx_pamt_put.entry pfn=2 kvm=0x0\n"
        "25 0 7 70 tdx_pamt_put.return ret=0 kvm=0x0\n"
    )
    (p,) = _problems(text)
    assert p[:2] == (3, 1) and "goes back on cpu 0" in p[2]


def test_return_without_entry() -> None:
    text = (
        "10 0 7 70 tdx_pamt_put.entry pfn=1 kvm=0x0\n20 0 8 70 tdx_pamt_put.return ret=0 kvm=0x0\n"
    )
    assert _problems(text) == [(2, 11, "a return with no open tdx_pamt_put.entry on tid 8")]


def test_a_return_on_another_vm_than_its_entry() -> None:
    """kvm= is the VM the thread last entered KVM for; no ioctl can come inside a call, so a
    return whose kvm= is not its entry's is a damaged record, reported at that field (it was
    read as another VM's: conform said 10 divergences at line 1 of the conforming sample)."""
    text = (
        "10 0 7 70 tdx_pamt_put.entry pfn=1 kvm=0xa0\n"
        "15 0 7 70 tdx_pamt_get.entry pfn=2 cache=0x0 cache_count=-1 kvm=0xa0\n"
        "16 0 7 70 tdx_pamt_get.return ret=0 cache_count=-1 kvm=0xa0\n"
        "20 0 7 70 tdx_pamt_put.return ret=0 kvm=0xb0\n"
    )
    assert _problems(text) == [
        (4, 37, "kvm= is not its entry's (0xa0, line 1): a call returns on the VM it entered")
    ]
    nested = text.replace("kvm=0xb0", "kvm=0xa0")
    assert len(parse_capture(nested.encode(), "t.txt").records) == 4


def test_return_without_ret() -> None:
    text = "10 0 7 70 tdx_pamt_put.entry pfn=1 kvm=0x0\n20 0 7 70 tdx_pamt_put.return kvm=0x0\n"
    assert _problems(text) == [(2, 38, "a return without ret=")]


def test_not_a_record_and_many_problems_collected() -> None:
    assert _problems("hello\n")[0][:2] == (1, 1)
    assert _problems("1 2 3 tdx_pamt_put.entry pfn=1 kvm=0x0\n")[0][:2] == (1, 1)  # no pid
    probs = _problems("x\n" * 200)
    assert len(probs) == 51 and "stopped" in probs[-1][2]


def test_a_capture_with_no_records_names_its_line_count() -> None:
    (p,) = _problems("# dpamt-capture v2\n\n# vms_at_start=0\n")
    assert p[:2] == (0, 0) and "no capture records in 3 line(s)" in p[2]
    (p,) = _problems("")
    assert "in 0 line(s)" in p[2]


def test_unknown_keys_are_noted_once() -> None:
    text = (
        "10 0 7 70 tdx_pamt_put.entry pfn=1 kvm=0x0 why=zap\n"
        "11 0 7 70 tdx_pamt_put.return ret=0 kvm=0x0 why=zap\n"
        "12 0 7 70 tdx_pamt_put.entry pfn=1 kvm=0x0 why=x\n"
    )
    cap = parse_capture(text.encode(), "t")
    # noted and counted, then dropped from the fields (nothing reads them; a line of thousands
    # held a dict entry each), the line's text kept
    assert "why" not in cap.records[0].fields and cap.records[0].fields["pfn"] == 1
    assert cap.records[0].text.endswith("why=zap")
    assert cap.unknown_counts == {
        ("tdx_pamt_put.entry", "why"): 2,
        ("tdx_pamt_put.return", "why"): 1,
    }
    assert len(cap.unknown) == 2 and "first at line 1" in cap.unknown[0]


def test_header_lines_before_the_records() -> None:
    cap = parse_capture(b"# vms_at_start=2\n# page_size=64\n" + GOOD.encode() + b"# late=1\n", "t")
    assert cap.header == {"vms_at_start": "2", "page_size": "64"}


def test_limits_name_the_real_size() -> None:
    with pytest.raises(TraceError, match="MAX_LINE_BYTES"):
        parse_capture(b"1 0 1 1 tdx_pamt_put.entry pfn=1" + b" a=1" * 20000 + b"\n", "t")
    with pytest.raises(TraceError) as e:
        parse_capture(b"#" * 100, "t", size=2 * MAX_CAPTURE_BYTES + 12345)
    reason = e.value.problems[0].reason
    assert f"{2 * MAX_CAPTURE_BYTES + 12345:,} bytes" in reason and "256 MiB" in reason
    assert human_size(73_400_000) == "73.4 MB (73,400,000 bytes)"


def test_mutated_sample_line_is_reported_at_its_line() -> None:
    lines = (SAMPLES / "conforming.txt").read_text().splitlines(keepends=True)
    n = next(i for i, s in enumerate(lines) if "tdx_pamt_get.entry" in s and i > 50)
    lines[n] = lines[n].replace("cache=0x", "cache=0y")
    with pytest.raises(TraceError) as e:
        parse_capture("".join(lines).encode(), "conforming.txt")
    (p,) = e.value.problems
    assert p.line == n + 1 and p.reason == "malformed field"
    assert lines[n][p.col - 1 :].startswith("cache=")


# ------------------------------------------------------------------ script, doc, parser
def _script_probes() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for fmt in re.findall(r'printf\("%llu %u %u %u ([^"]*)\\n"', SCRIPT.read_text()):
        probe, *kv = fmt.split(" ")
        out[probe] = tuple(k.split("=")[0] for k in kv)
    return out


def _doc_probes() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for row in DOC.read_text().splitlines():
        m = re.match(r"\| `([a-z_.]+)` \|([^|]*)\|", row)
        if m:
            out[m.group(1)] = tuple(re.findall(r"`([a-z_0-9]+)`", m.group(2)))
    return out


def test_script_doc_and_parser_agree() -> None:
    parser = {p: s.keys for p, s in PROBES.items()}
    assert _script_probes() == parser
    assert _doc_probes() == parser
    for probe, keys in parser.items():
        assert "kvm" in keys
        if probe.endswith(".return"):
            assert "ret" in keys


def test_every_block_is_marked_and_no_kernel_variable_is_read() -> None:
    """preflight.sh drops a block by its marker line; kaddr() needs CONFIG_KALLSYMS_ALL."""
    text = SCRIPT.read_text()
    blocks = re.findall(r"^((?:k|kret)probe:\S+|tracepoint:\S+)\n(?:/[^\n]*/\n)?\{", text, re.M)
    marked = re.findall(r"^/\* probe (\S+) (?:required|optional): .+ \*/\n(\S+)\n", text, re.M)
    assert len(blocks) == len(marked) > 20 and all(a == b for a, b in marked)
    assert "kaddr(" not in text
    for static in ("tdh_phymem_pamt_add", "tdh_phymem_pamt_remove"):
        assert f"probe kprobe:{static} optional" in text


def _fake_host(tmp_path: Path, functions: list[str], tracepoints: list[str]) -> dict[str, str]:
    tracefs = tmp_path / "tracing"
    (tracefs / "events").mkdir(parents=True)
    (tracefs / "available_filter_functions").write_text(
        "".join(f"{f}\n" if i % 2 else f"{f} [kvm]\n" for i, f in enumerate(functions))
    )
    for tp in tracepoints:
        (tracefs / "events" / tp.replace(":", "/")).mkdir(parents=True)
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T _text\n")
    return {**os.environ, "TRACEFS": str(tracefs), "KALLSYMS": str(kallsyms)}


REQUIRED = [
    "tdx_pamt_get",
    "tdx_pamt_put",
    "tdx_topup_pamt_cache",
    "tdx_free_pamt_cache",
    "tdx_alloc_control_page",
    "tdx_free_control_page",
]
TPS = ["kvm:kvm_page_fault", "kvmmmu:kvm_tdp_mmu_spte_changed"]


def test_preflight_keeps_what_the_host_has_and_says_what_is_lost(tmp_path: Path) -> None:
    env = _fake_host(tmp_path, [*REQUIRED, "kvm_vcpu_ioctl"], TPS)
    chk = subprocess.run(
        ["sh", str(PREFLIGHT), "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert chk.returncode == 0, chk.stderr
    assert re.search(r"absent\s+optional\s+kprobe:tdh_phymem_pamt_add\s+lost: PAMT.ADD", chk.stdout)
    assert re.search(r"present\s+required\s+kprobe:tdx_pamt_get\s", chk.stdout)
    out = subprocess.run(
        ["sh", str(PREFLIGHT), "--script"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert (
        "kprobe:tdh_phymem_pamt_add\n" not in out.stdout
        and "kprobe:kvm_vm_ioctl\n" not in out.stdout
    )
    assert "kprobe:tdx_pamt_get\n" in out.stdout and "kprobe:kvm_vcpu_ioctl\n" in out.stdout
    assert 'printf("# probe_kprobe:tdh_phymem_pamt_add=absent\\n");' in out.stdout
    assert 'printf("# lost: PAMT.ADD seen directly' in out.stdout
    assert "/*@HEADER@*/" not in out.stdout


def test_preflight_refuses_without_a_required_probe(tmp_path: Path) -> None:
    env = _fake_host(tmp_path, REQUIRED[1:], TPS)
    out = subprocess.run(
        ["sh", str(PREFLIGHT), "--script"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "required probe(s) absent: kprobe:tdx_pamt_get" in out.stderr


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace is not installed")
def test_bpftrace_accepts_the_script(tmp_path: Path) -> None:
    """`bpftrace -d` (dry run: parse and semantic analysis, nothing attached) on the script the
    preflight writes for a host with every kprobe; the tracepoints need tracefs for their
    formats, so without it they are checked by the parse only."""
    exe = shutil.which("bpftrace")
    assert exe is not None
    every = [
        *REQUIRED,
        "kvm_vcpu_ioctl",
        "kvm_vm_ioctl",
        "kvm_arch_pre_destroy_vm",
        "kvm_mmu_page_fault",
        "tdh_phymem_pamt_add",
        "tdh_phymem_pamt_remove",
    ]
    env_tp = _fake_host(tmp_path, every, TPS)
    gen = subprocess.run(
        ["sh", str(PREFLIGHT), "--script"], env=env_tp, capture_output=True, text=True, timeout=60
    )
    full = tmp_path / "full.bt"
    full.write_text(gen.stdout)
    res = subprocess.run([exe, "-d", str(full)], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert "syntax error" not in out
    if res.returncode != 0:
        assert "tracepoint not found" in out, out[-2000:]
    text = SCRIPT.read_text()
    kprobes = tmp_path / "kprobes.bt"
    kprobes.write_text(re.sub(r"^tracepoint:\S+\n\{\n.*?^\}\n", "", text, flags=re.S | re.M))
    part = subprocess.run([exe, "-d", str(kprobes)], capture_output=True, text=True, timeout=120)
    assert "AST after: Semantic" in part.stdout + part.stderr, (part.stdout + part.stderr)[-2000:]


def test_preflight_reads_module_symbols_zeroed_addresses_and_the_tdx_state(tmp_path: Path) -> None:
    """Without tracefs's function list, kallsyms names a module's symbols with a tab before
    [kvm]; under kptr_restrict every address is zeros (vmemmap_base unreadable, not 0); the
    header says whether kvm_intel has TDX on and dmesg mentioned Dynamic PAMT, and --check
    warns when either is not so."""
    env = _fake_host(tmp_path, [], TPS)
    (Path(env["TRACEFS"]) / "available_filter_functions").unlink()
    Path(env["KALLSYMS"]).write_text(
        "0000000000000000 D vmemmap_base\n"
        + "".join(f"0000000000000000 t {f}\t[kvm_intel]\n" for f in REQUIRED)
    )
    params = tmp_path / "sys" / "kvm_intel" / "parameters"
    params.mkdir(parents=True)
    (params / "tdx").write_text("Y\n")
    dmesg = tmp_path / "dmesg.sh"
    dmesg.write_text("#!/bin/sh\necho 'virt/tdx: Enable Dynamic PAMT'\n")
    dmesg.chmod(0o755)
    env = {**env, "SYSMODULE": str(tmp_path / "sys"), "DMESG": str(dmesg)}
    chk = subprocess.run(
        ["sh", str(PREFLIGHT), "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert chk.returncode == 0, chk.stderr
    assert re.search(r"present\s+required\s+kprobe:tdx_pamt_get\s", chk.stdout)
    assert "vmemmap_base=unreadable" in chk.stdout
    assert "kvm_intel_tdx=Y dpamt_in_dmesg=seen" in chk.stdout and "warning" not in chk.stderr
    out = subprocess.run(
        ["sh", str(PREFLIGHT), "--script"], env=env, capture_output=True, text=True, timeout=60
    )
    assert 'printf("# kvm_intel_tdx=Y\\n");' in out.stdout
    assert "*(uint64 *)0x" not in out.stdout  # (no read of a zeroed address)
    (params / "tdx").write_text("N\n")
    dmesg.write_text("#!/bin/sh\necho 'nothing here'\n")
    chk = subprocess.run(
        ["sh", str(PREFLIGHT), "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "kvm_intel_tdx=N dpamt_in_dmesg=not_seen" in chk.stdout
    assert "tdx parameter is N" in chk.stderr and "no 'Dynamic PAMT' line" in chk.stderr
