"""Real kernel captures: the samples, the parser's line:col reports, script/doc/parser agreement."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from explorer.ingest.capture import PROBES, looks_like_capture, parse_capture
from explorer.model.errors import TraceError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "capture" / "dpamt.bt"
DOC = ROOT / "docs" / "capture.md"
SAMPLES = ROOT / "sample_traces" / "captures"


def _problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(TraceError) as e:
        parse_capture(text.encode(), "t.txt")
    return [(p.line, p.col, p.reason) for p in e.value.problems]


@pytest.mark.parametrize("name", ["conforming.txt", "divergent.txt"])
def test_samples_parse(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    cap = parse_capture(data, name)
    assert len(cap.records) > 100 and cap.unknown == ()
    assert looks_like_capture(data)


def test_divergent_differs_by_two_cache_pages_after_the_lost_race() -> None:
    a = parse_capture((SAMPLES / "conforming.txt").read_bytes(), "c").records
    b = parse_capture((SAMPLES / "divergent.txt").read_bytes(), "d").records
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x.fields != y.fields]
    assert diff and all(y.fields["cache_count"] == x.fields["cache_count"] + 2 for x, y in diff)  # type: ignore[operator]
    assert diff[0][0].probe == "tdx_pamt_get.return"


def test_not_a_capture() -> None:
    assert not looks_like_capture((ROOT / "sample_traces" / "lost_race.jsonl").read_bytes())
    assert not looks_like_capture(b"# only a comment\n")
    assert not looks_like_capture(b"1 2 3 no_such_probe pfn=1\n")


GOOD = "10 0 7 tdx_pamt_put.entry pfn=0x8000\n20 0 7 tdx_pamt_put.return ret=0\n"


def test_good_inline() -> None:
    cap = parse_capture(GOOD.encode(), "t")
    assert [r.probe for r in cap.records] == ["tdx_pamt_put.entry", "tdx_pamt_put.return"]
    assert cap.records[0].fields == {"pfn": 0x8000} and cap.records[1].line == 2


def test_unknown_probe() -> None:
    assert _problems("# c\n10 0 7 tdx_pamt_gte.entry pfn=1\n") == [
        (2, 8, "unknown probe 'tdx_pamt_gte.entry'")
    ]


def test_malformed_field() -> None:
    (p,) = _problems("10 0 7 tdx_pamt_put.entry pfn=0x80g0\n")
    assert p[:2] == (1, 27) and p[2] == "malformed field"
    (p,) = _problems("10 0 7 tdx_pamt_get.entry pfn=1 cache=0x0 cache_count=-1 x=\n")
    assert p[:2] == (1, 58)


def test_values_an_import_could_not_hold_are_refused_at_their_field() -> None:
    """A pfn past the largest host (4 TiB), a gpa past 5-level EPT, a vCPU id past the trace
    format's: refused at line:col (found by a mutation fuzz of the samples: a pfn of 0x1_0000_0000
    sized the imported host past the format's limit and the replay raised struct.error)."""
    (p,) = _problems("10 0 7 tdx_pamt_put.entry pfn=0x40000000\n")
    assert p == (1, 27, "pfn out of range")
    (p,) = _problems(
        "10 0 7 tdh_phymem_pamt_add.entry pfn=0x8000 pair0=0x1 pair1=0x100000000000000000\n"
    )
    assert p[:2] == (1, 55) and p[2] == "pair1 out of range"
    (p,) = _problems("10 0 7 kvm_page_fault vcpu=1048576 gpa=0x1000 error_code=0x0\n")
    assert p[2] == "vcpu out of range"
    (p,) = _problems("10 0 7 kvm_page_fault vcpu=0 gpa=0x2000000000000000 error_code=0x0\n")
    assert p[2] == "gpa out of range"
    parse_capture(b"10 0 7 tdx_pamt_put.entry pfn=0x3fffffff\n", "t")  # the last page: fine


def test_out_of_order_timestamp_on_one_cpu() -> None:
    text = "30 0 7 tdx_pamt_put.entry pfn=1\n20 1 8 tdx_pamt_put.entry pfn=2\n25 0 7 tdx_pamt_put.return ret=0\n"
    (p,) = _problems(text)
    assert p[:2] == (3, 1) and "goes back on cpu 0" in p[2]


def test_return_without_entry() -> None:
    text = "10 0 7 tdx_pamt_put.entry pfn=1\n20 0 8 tdx_pamt_put.return ret=0\n"
    assert _problems(text) == [(2, 8, "a return with no open tdx_pamt_put.entry on tid 8")]


def test_return_without_ret() -> None:
    text = "10 0 7 tdx_pamt_put.entry pfn=1\n20 0 7 tdx_pamt_put.return\n"
    assert _problems(text) == [(2, 27, "a return without ret=")]


def test_not_a_record_and_many_problems_collected() -> None:
    assert _problems("hello\n")[0][:2] == (1, 1)
    probs = _problems("x\n" * 200)
    assert len(probs) == 51 and "stopped" in probs[-1][2]


def test_unknown_keys_are_noted_once() -> None:
    text = "10 0 7 tdx_pamt_put.entry pfn=1 why=zap\n11 0 7 tdx_pamt_put.return ret=0 why=zap\n12 0 7 tdx_pamt_put.entry pfn=1 why=x\n"
    cap = parse_capture(text.encode(), "t")
    assert cap.records[0].fields["why"] == "zap"
    assert cap.unknown_counts == {
        ("tdx_pamt_put.entry", "why"): 2,
        ("tdx_pamt_put.return", "why"): 1,
    }
    assert len(cap.unknown) == 2 and "first at line 1" in cap.unknown[0]


def test_limits() -> None:
    with pytest.raises(TraceError, match="MAX_LINE_BYTES"):
        parse_capture(b"1 0 1 tdx_pamt_put.entry pfn=1" + b" a=1" * 20000 + b"\n", "t")
    from explorer.ingest import limits

    with pytest.raises(TraceError, match="MAX_UPLOAD_BYTES"):
        parse_capture(b"#" * (limits.MAX_UPLOAD_BYTES + 1), "t")


def test_mutated_sample_line_is_reported_at_its_line() -> None:
    lines = (SAMPLES / "conforming.txt").read_text().splitlines(keepends=True)
    n = next(i for i, s in enumerate(lines) if "tdh_phymem_pamt_add.entry" in s and i > 50)
    lines[n] = lines[n].replace("pair0=0x", "pair0=0y")
    with pytest.raises(TraceError) as e:
        parse_capture("".join(lines).encode(), "conforming.txt")
    (p,) = e.value.problems
    assert p.line == n + 1 and p.reason == "malformed field"
    assert lines[n][p.col - 1 :].startswith("pair0=")


def _script_probes() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for fmt in re.findall(r'printf\("%llu %u %u ([^"]*)\\n"', SCRIPT.read_text()):
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
        if probe.endswith(".return"):
            assert "ret" in keys


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace is not installed")
def test_bpftrace_accepts_the_script(tmp_path: Path) -> None:
    """`bpftrace -d` (dry run): parse and semantic analysis, nothing attached. Without tracefs
    the tracepoints cannot be resolved, so the kprobe part is also checked on its own."""
    exe = shutil.which("bpftrace")
    assert exe is not None
    full = subprocess.run([exe, "-d", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    out = full.stdout + full.stderr
    assert "syntax error" not in out
    if full.returncode != 0:
        assert "tracepoint not found" in out or "Failed to resolve kernel symbol" in out, out[
            -2000:
        ]
    text = SCRIPT.read_text()
    blocks = re.findall(r"^(\S[^\n]*\n\{\n.*?^\}\n)", text, re.S | re.M)
    kprobes = tmp_path / "kprobes.bt"
    kprobes.write_text("\n".join(b for b in blocks if not b.startswith("tracepoint")))
    part = subprocess.run([exe, "-d", str(kprobes)], capture_output=True, text=True, timeout=120)
    assert "AST after: Semantic" in part.stdout + part.stderr, (part.stdout + part.stderr)[-2000:]
