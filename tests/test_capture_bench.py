"""The capture benchmark's input and figures (timings are printed by `make bench`, never asserted)."""

from __future__ import annotations

import pytest

from explorer.conformance.bench import bench_capture, summary
from explorer.conformance.conform import conform
from explorer.conformance.importer import import_capture
from explorer.conformance.synth import large_capture
from explorer.ingest.capture import parse_capture


def test_bench_capture_reports_each_stage() -> None:
    r = bench_capture(4000, repeats=3)
    assert set(r) >= {"records", "parse_s", "import_s", "import_conform_s", "total_s", "ok"}
    assert 3000 <= r["records"] <= 5000 and r["events"] > 0
    assert r["repeats"] == 3 and r["ok"] == 1.0
    assert r["total_cpu_min_s"] <= r["total_cpu_s"] <= r["total_cpu_max_s"]
    assert "median of 3 runs" in summary(r)


def test_bench_capture_refuses_no_run() -> None:
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        bench_capture(100, repeats=0)


def test_the_large_capture_has_every_kind_of_noise() -> None:
    cap = parse_capture(large_capture(6000, seed=5).encode(), "large.txt")
    c = conform(cap)
    assert c.ignored.get("non-tdx-vm", 0) > 0 and c.ignored.get("shared-gpa", 0) > 0
    assert c.unexplained == [] and c.stopped is None
    assert any(r.probe == "kvm_arch_pre_destroy_vm" and r.tid == 77 for r in cap.records)


@pytest.mark.parametrize("n, seed", [(6000, 5), (20000, 11)])
def test_the_large_capture_conforms(n: int, seed: int) -> None:
    """The kernel's S-EPT table and control pages are pinned (docs/capture.md, "Pinned
    pages"): without them the model's allocator packs them into other regions and a get that is
    fast in the kernel is PAMT.ADD in the model."""
    cap = parse_capture(large_capture(n, seed=seed).encode(), "large.txt")
    imp = import_capture(cap)
    assert any(getattr(e, "tables", None) for e in imp.events)
    assert any(getattr(e, "control", None) for e in imp.events)
    c = conform(cap, imported=imp)
    assert c.ok, c.divergences[:3]


def test_the_benchmark_capture_has_at_least_the_records_asked() -> None:
    """The teardown is estimated while the capture grows: unchecked, 20,000 asked gave fewer.
    Made again aiming higher (the default), it has them and still conforms (the remade
    capture is issue 25's: a shared-GPA fault's top-up last before a cache's free)."""
    short = parse_capture(large_capture(20000, seed=11, at_least=False).encode(), "short.txt")
    assert len(short.records) < 20000  # the estimate this guards against
    cap = parse_capture(large_capture(20000, seed=11).encode(), "large.txt")
    assert len(cap.records) >= 20000
    c = conform(cap)
    assert c.ok, c.divergences[:3]


def test_large_capture_refuses_a_count_below_one() -> None:
    with pytest.raises(ValueError, match="records must be at least 1"):
        large_capture(0)
