"""The memory-overhead calculator against the v6 cover letter's table and its own formulas."""

import pytest

from explorer.designs.overhead import (
    COVER_LETTER_FIGURES,
    COVER_LETTER_TABLE,
    GIB,
    MIB,
    TIB,
    CoverRow,
    cover_letter_rows,
    format_bytes,
    max_pfn_at,
    overhead,
    ratio_label,
    regions_touched,
)

ROWS = cover_letter_rows()


def test_the_table_has_the_cover_letters_four_rows() -> None:
    assert [r.machine for r in ROWS] == [
        "256GB (max_pfn at 256GB)",
        "256GB (max_pfn at maxpa)",
        "2TB   (max_pfn at 2TB)",
        "2TB   (max_pfn at maxpa)",
    ]
    assert [(r.published_static_gb, r.published_dpamt_gb) for r in ROWS] == [
        (1.02, 0.01),
        (1.02, 8.01),
        (8.19, 0.08),
        (8.19, 8.08),
    ]
    assert [r.published_ratio for r in ROWS] == ["100x", "(8x)", "99x", "1x"]
    # the old two-row constant is the "max_pfn at the RAM size" rows
    assert [(s, d) for _, _, s, d in COVER_LETTER_FIGURES] == [
        (r[3], r[4]) for r in COVER_LETTER_TABLE if r[2] is None
    ]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.machine)
def test_dpamt_column_matches_to_its_rounding_in_gib(row: CoverRow) -> None:
    # bitmap + refcounts (0..max_pfn) + the static 2 MiB and 1 GiB levels, no TD: in 2^30 bytes
    assert round(row.dpamt_gib, 2) == row.published_dpamt_gb
    # in 10^9 bytes the 2 TB and maxpa rows would not match: the cover's GB are GiB
    if row.maxpa_bits is not None or row.host_gib == 2048:
        assert round(row.computed.dpamt_total / 1e9, 2) != row.published_dpamt_gb


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.machine)
def test_static_column_is_the_0_4_percent_rule(row: CoverRow) -> None:
    # the published static figures are 0.4 % of the host (1.024, 8.192 GiB) ...
    assert round(row.static_rule_gib, 2) == row.published_static_gb
    # ... while 16 B per 4 KiB (0.39 %) plus the 2 MiB and 1 GiB levels is 1.00 / 8.02 GiB
    assert round(row.static_gib, 2) == {256: 1.0, 2048: 8.02}[row.host_gib]
    assert row.static_gib == pytest.approx(row.published_static_gb, rel=0.025)
    # neither unit reproduces the static column from the exact size
    assert round(row.computed.static_total / 1e9, 2) != row.published_static_gb
    assert round(row.computed.static_total / GIB, 2) != row.published_static_gb


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.machine)
def test_savings_column(row: CoverRow) -> None:
    published = float(row.published_ratio.strip("()x"))
    if row.published_ratio.startswith("("):
        published = 1 / published
    assert row.ratio == pytest.approx(published, rel=0.03)
    # our labels: 100x, (8x), 100x, 1x (the cover prints 99x for the third)
    assert row.ratio_label == {"99x": "100x"}.get(row.published_ratio, row.published_ratio)


def test_max_pfn_at_maxpa_costs_more_than_static_pamt() -> None:
    small_sparse = ROWS[1]
    assert small_sparse.maxpa_bits == 52
    assert small_sparse.dpamt_costs_more
    assert small_sparse.computed.saving < -6  # 8 GiB of refcounts against 1 GiB of PAMT
    assert small_sparse.computed.dpamt_refcounts == 8 * GIB  # 04/11: "this would be 8GB"
    assert small_sparse.ratio_label == "(8x)"
    # with max_pfn at the RAM size the same host saves about 99 %
    assert not ROWS[0].dpamt_costs_more and ROWS[0].computed.saving > 0.98
    # the 2 TB host at maxpa: about even (the cover's "1x"); by the exact static size, a loss
    assert ROWS[3].dpamt_costs_more
    assert ROWS[3].computed.dpamt_total - ROWS[3].computed.static_total < 0.07 * GIB


def test_refcounts_cover_0_to_max_pfn_or_ram_only() -> None:
    host = TIB
    at_ram = overhead(host, 0)
    assert at_ram.dpamt_refcounts == 2 * MIB  # 04/11: "2 MB for every 1 TB of address space"
    assert at_ram.max_pfn == host // 4096 and at_ram.refcounts == "vmalloc"
    sparse = overhead(host, 0, max_pfn=max_pfn_at(52), refcounts="sparse")
    assert sparse.dpamt_refcounts == at_ram.dpamt_refcounts
    assert overhead(host, 0, max_pfn=max_pfn_at(48)).dpamt_refcounts == 512 * MIB
    assert overhead(host, 0, max_pfn=2 * (host // 4096)).dpamt_refcounts == 4 * MIB


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
    ("n", "unit", "decimals", "text"),
    [
        (10092 * 1024, "KB", None, "10,092 KB"),  # 11/11's dmesg example
        (int(1.02 * GIB), None, None, "1.02 GB"),
        (ROWS[1].computed.dpamt_total, None, None, "8.01 GB"),
        (ROWS[1].computed.dpamt_total, "MB", 0, "8,202 MB"),
        (512, None, None, "512 B"),
        (1536, None, None, "2 KB"),
        (3 * TIB, None, None, "3.00 TB"),
        (10 * GIB, "GiB", 1, "10.0 GiB"),
        (1234 * GIB, "GB", None, "1,234.00 GB"),
    ],
)
def test_format_bytes(n: int, unit: str | None, decimals: int | None, text: str) -> None:
    assert format_bytes(n, unit, decimals) == text


def test_ratio_labels() -> None:
    assert ratio_label(99.6) == "100x"
    assert ratio_label(1 / 7.8) == "(8x)"
    assert ratio_label(1.01) == "1x"
    assert ratio_label(1500) == "1,500x"


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 0), "positive"), ((GIB, 513), r"0\.\.512")],
)
def test_bad_input_is_refused_with_a_reason(args: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overhead(*args)


def test_bad_max_pfn_placement_unit() -> None:
    with pytest.raises(ValueError, match="max_pfn"):
        overhead(GIB, 0, max_pfn=10)
    with pytest.raises(ValueError, match="refcounts"):
        overhead(GIB, 0, refcounts="percpu")
    with pytest.raises(ValueError, match="bits"):
        max_pfn_at(70)
    with pytest.raises(ValueError, match="unit"):
        format_bytes(1, "XB")
    with pytest.raises(ValueError, match="positive"):
        ratio_label(0)


def test_bad_fraction_and_placement() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        regions_touched(GIB, 1.5)
    with pytest.raises(ValueError, match="placement"):
        regions_touched(GIB, 0.5, "diagonal")
