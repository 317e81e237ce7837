"""The memory-overhead calculator against the v6 cover letter's figures and its own formulas."""

import pytest

from explorer.overhead import COVER_LETTER_FIGURES, GIB, overhead, regions_touched


@pytest.mark.parametrize(("label", "host_gb", "static_gb", "dpamt_gb"), COVER_LETTER_FIGURES)
def test_no_td_running_matches_the_cover_letter(
    label: str, host_gb: int, static_gb: float, dpamt_gb: float
) -> None:
    # The cover letter's hosts are GiB-sized and its "GB" are thousands of MiB: 1.02 "GB" is
    # the 1024 MiB of 4 KiB-level PAMT of a 256 GiB host. Compare in that unit.
    o = overhead(host_gb * GIB, 0)
    mib_k = 1000 * 2**20
    assert o.static_total / mib_k == pytest.approx(static_gb, abs=0.03)
    assert o.dpamt_total / mib_k == pytest.approx(dpamt_gb, abs=0.006)
    assert o.saving > 0.98  # "a 100x improvement" on the 4 KiB level


def test_every_region_touched_costs_about_as_much_as_static() -> None:
    host = 256 * GIB
    full = overhead(host, regions_touched(host, 1.0))
    # 2 pages per 2 MiB region = 8 KiB per 2 MiB = 16 B per 4 KiB: the static 4 KiB level again
    assert full.dpamt_pairs == full.static_4k
    assert full.dpamt_total > full.static_total  # plus bitmap and refcounts: slightly more


def test_placement_decides_how_many_pairs() -> None:
    host = 64 * GIB
    packed = regions_touched(host, 0.01, "packed")
    scattered = regions_touched(host, 0.01, "scattered")
    assert packed == 328  # 1 % of 16 Mi pages = 167,772 pages / 512 per region, rounded up
    assert scattered == 32768  # every region gets at least one page
    assert overhead(host, packed).dpamt_total < overhead(host, scattered).dpamt_total


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 0), "positive"), ((GIB, 513), r"0\.\.512")],
)
def test_bad_input_is_refused_with_a_reason(args: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overhead(*args)


def test_bad_fraction_and_placement() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        regions_touched(GIB, 1.5)
    with pytest.raises(ValueError, match="placement"):
        regions_touched(GIB, 0.5, "diagonal")
