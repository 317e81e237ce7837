"""Compact forms of the int-keyed tables a keyframe copies.

A keyframe copies the machine's per-region tables (free pages, owner maps, module pages and use
counts, pairs, refcounts, references held) and the tables of guest-mapping chunks: thousands of
entries each after a long replay, a hundred keyframes per million faults. As dicts each entry
costs about 70 bytes (the slot, the key's int object, often the value's); packed as arrays of
8-byte ints (and a tuple for values that are objects, shared with the live machine) it costs 8
to 16. Restoring unpacks with ``dict(zip(...))``, in C, in the original order.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any, Final

#: keys and int values
PackedInts = tuple["array[int]", "array[int]"]
#: keys and object values (bytes, tuples: immutable, shared)
PackedRefs = tuple["array[int]", tuple[Any, ...]]


def int32s(values: Sequence[int] | Iterable[int]) -> array[int]:
    """``array("i", values)``, built about three times faster: the array's own constructor
    converts each item through ``PyArg_Parse`` (hundreds of instructions per item, measured:
    a tenth of a bulk replay's per-batch bookkeeping), ``struct`` packs them natively."""
    items = values if isinstance(values, (list, tuple)) else list(values)
    out = array("i")
    out.frombytes(struct.pack(f"@{len(items)}i", *items))
    return out


def pack_ints(d: dict[int, int]) -> PackedInts:
    """A region-keyed table of counts (refcounts, references, use counts): 32-bit keys and
    values (a 4 TiB host has 2**21 regions), in key order. Sorted so that the dict a restore
    rebuilds is in region order: a snapshot of a host whose allocations scatter reads its
    tens of thousands of regions in that order, and visiting them in the order they were
    first touched (random) cost four times as much (cache misses)."""
    keys = sorted(d)
    return int32s(keys), int32s([d[k] for k in keys])


#: keys and pairs of ints
PackedPairs = tuple["array[int]", "array[int]", "array[int]"]


def pack_pairs(d: dict[int, tuple[int, int]]) -> PackedPairs:
    """Region -> (pfn, pfn) as three 32-bit arrays (12 bytes a pair, not a tuple's 64), in
    region order (as :func:`pack_ints`)."""
    keys = sorted(d)
    pairs = [d[k] for k in keys]
    return (
        int32s(keys),
        int32s([p[0] for p in pairs]),
        int32s([p[1] for p in pairs]),
    )


def unpack_pairs(p: PackedPairs) -> dict[int, tuple[int, int]]:
    return dict(zip(p[0], zip(p[1], p[2], strict=True), strict=True))


def unpack_ints(p: PackedInts) -> dict[int, int]:
    return dict(zip(p[0], p[1], strict=True))


#: A region-keyed table of a keyframe, deflated (:func:`zpack_ints`, :func:`zpack_pairs`).
Deflated = bytes
#: Narrowest signed array type codes, tried in order (a column is stored in the first that
#: holds all its values).
_NARROW: Final = (("b", 1 << 7), ("h", 1 << 15), ("i", 1 << 31), ("q", 1 << 63))


def _narrow(values: list[int]) -> array[int]:
    lo = min(values, default=0)
    hi = max(values, default=0)
    for code, bound in _NARROW:
        if -bound <= lo and hi < bound:
            out = array(code)
            out.frombytes(struct.pack(f"@{len(values)}{code}", *values))
            return out
    raise OverflowError(f"a keyframe table value out of 64-bit range: {lo}..{hi}")


def _deflate_columns(columns: list[list[int]]) -> Deflated:
    """Columns of ints, each in its narrowest array type, behind a header of their type codes
    and length, joined and deflated (raw deflate, level 1: in C, about 1 ms for 30,000
    rows)."""
    arrays = [_narrow(c) for c in columns]
    n = len(columns[0]) if columns else 0
    head = struct.pack("<I", n) + "".join(a.typecode for a in arrays).encode()
    return zlib.compress(head + b"".join(a.tobytes() for a in arrays), 1, _RAW)


def _inflate_columns(blob: Deflated, nr: int) -> list[array[int]]:
    data = memoryview(zlib.decompress(blob, _RAW))
    (n,) = struct.unpack_from("<I", data)
    codes = bytes(data[4 : 4 + nr]).decode()
    at = 4 + nr
    out: list[array[int]] = []
    for code in codes:
        a = array(code)
        end = at + n * a.itemsize
        a.frombytes(data[at:end])
        out.append(a)
        at = end
    return out


def _key_steps(keys: list[int]) -> list[int]:
    """Sorted keys as their first value then the gaps between them: a scattered host's table
    holds nearly every region, so the gaps are mostly 1 (a byte each, and deflate folds the
    runs), where the keys themselves took 4 bytes each."""
    return [b - a for a, b in zip([0, *keys], keys, strict=False)]


def zpack_ints(d: dict[int, int]) -> Deflated:
    """A keyframe's region-keyed table of counts (refcounts, references held, use counts) in
    key order (see :func:`pack_ints`), as key gaps and values in their narrowest types,
    deflated. On a 64 GiB host whose allocations scatter (32,768 regions) the two 32-bit
    arrays of :func:`pack_ints` took 262 KiB a table, a keyframe holding three such tables;
    their counts fit a byte or two. Restored by :func:`zunpack_ints`, in C but for the
    narrowing (``accumulate`` rebuilds the keys)."""
    keys = sorted(d)
    return _deflate_columns([_key_steps(keys), [d[k] for k in keys]])


def zunpack_ints(blob: Deflated) -> dict[int, int]:
    steps, values = _inflate_columns(blob, 2)
    return dict(zip(accumulate(steps), values, strict=True))


def _planes(lanes: bytes, width: int) -> bytes:
    """Little-endian lanes of ``width`` bytes laid out byte plane by byte plane (every lane's
    low byte, then every second byte, ...): the high planes of small values are runs of one
    byte that deflate folds, so a column compresses about as well as in its narrowest type,
    yet comes back as full-width lanes with no per-item conversion (:func:`_lanes`)."""
    return b"".join(lanes[j::width] for j in range(width))


def _lanes(data: bytes | memoryview, at: int, n: int, width: int) -> bytearray:
    """The ``n`` lanes :func:`_planes` laid out from ``data[at:]``, back in lane order: one
    strided slice assignment per byte plane, in C."""
    out = bytearray(width * n)
    for j in range(width):
        out[j::width] = data[at + j * n : at + (j + 1) * n]
    return out


#: Unsigned array type codes of the lane widths :func:`zpack_pairs` uses (by item size: the C
#: types behind the codes vary by platform).
_LANE_CODES: Final = {w: next(c for c in "HILQ" if array(c).itemsize == w) for w in (4, 8)}


def zpack_pairs(d: dict[int, tuple[int, int]]) -> Deflated:
    """Region -> (pfn, pfn) in region order (as :func:`pack_ints`): the regions, the first
    pfn, and the second pfn's distance from the first plus a bias that makes it non-negative
    (the two pages of a pair are allocated one after the other, so often close), as unsigned
    lanes in byte planes (:func:`_planes`), deflated. All three columns share one lane width,
    4 bytes unless a value (a second pfn included) needs 8, so that :func:`zunpack_pairs`
    adds the two columns back together as two big integers instead of one ``int`` addition
    per pair (sum_i (first_i + biased_i - bias) * 2**(8*width*i) is sum_i second_i *
    2**(8*width*i), whose lanes are the seconds when each fits its lane): restoring a
    scattered host's pairs (31,000 regions) took 2.2 ms more than unpacking plain arrays with
    the per-pair addition and the running sum of key gaps, about 1 ms more this way. A
    region or pfn below zero is refused (a ValueError naming the region): the machine never
    makes one, and an unsigned lane could not hold it."""
    keys = sorted(d)
    pairs = [d[k] for k in keys]
    firsts = [p[0] for p in pairs]
    gaps = [p[1] - p[0] for p in pairs]
    bias = max(0, -min(gaps, default=0))
    for k, (a, b) in zip(keys, pairs, strict=True):
        if k < 0 or a < 0 or b < 0:
            raise ValueError(f"pair table: region {k} holds ({a}, {b}); a region or pfn below 0")
    biased = [g + bias for g in gaps]
    seconds = [p[1] for p in pairs]
    top = max(max(c, default=0) for c in (keys, firsts, biased, seconds))
    width = 4 if top < 1 << 32 else 8
    if top >= 1 << 64:
        raise OverflowError(f"pair table: a value past 64 bits ({top})")
    fmt = "<" + str(len(keys)) + ("I" if width == 4 else "Q")  # (struct's standard sizes)
    head = struct.pack("<IBQ", len(keys), width, bias)
    cols = [struct.pack(fmt, *c) for c in (keys, firsts, biased)]
    return zlib.compress(head + b"".join(_planes(c, width) for c in cols), 1, _RAW)


_PAIRS_HEAD: Final = struct.calcsize("<IBQ")


def zunpack_pairs(blob: Deflated) -> dict[int, tuple[int, int]]:
    data = zlib.decompress(blob, _RAW)
    n, width, bias = struct.unpack_from("<IBQ", data)
    at = _PAIRS_HEAD
    keys_b = _lanes(data, at, n, width)
    first_b = _lanes(data, at + width * n, n, width)
    biased_b = _lanes(data, at + 2 * width * n, n, width)
    # first + biased - bias for every lane at once: the big integers' sum is exact, and as each
    # second pfn is >= 0 and fits a lane (zpack_pairs chose the width so), its lanes are them
    total = int.from_bytes(first_b, "little") + int.from_bytes(biased_b, "little")
    total -= int.from_bytes(bias.to_bytes(width, "little") * n, "little")
    code = _LANE_CODES[width]
    keys = array(code)
    keys.frombytes(keys_b)
    firsts = array(code)
    firsts.frombytes(first_b)
    seconds = array(code)
    seconds.frombytes(total.to_bytes(width * n, "little"))
    return dict(zip(keys, zip(firsts, seconds, strict=True), strict=True))


def pack_refs(d: dict[int, Any]) -> PackedRefs:
    return array("q", d.keys()), tuple(d.values())


def unpack_refs(p: PackedRefs) -> dict[int, Any]:
    return dict(zip(p[0], p[1], strict=True))


#: Regions per compressed group of an image (64 regions: 128 MiB of host memory).
GROUP_SHIFT: Final = 6
GROUP: Final = 1 << GROUP_SHIFT
#: Raw deflate: no header, no Adler-32 (a fifth of a restore's time went to checksums that a
#: copy held in memory does not need).
_RAW: Final = -15
#: One group of an image: the indices (0..63) of its touched regions, and their maps (and
#: counts) joined and deflated.
Group = tuple[bytes, bytes]


class ImageCache:
    """Per-region maps (owner maps, module page kinds: 512 bytes each) as of the last image,
    deflated in groups of :data:`GROUP` regions and shared by every image since: a group
    unchanged between two images is one object, not two copies.

    Why deflate: a host whose allocations scatter (the ``random`` and ``spread`` allocators)
    touches every region with a few pages each, so an image held every region's 512-byte map,
    nearly all zeros: 15 MiB per map per image over 64 GiB, a thousand bytes per event of the
    trace. Deflated by groups (``zlib`` level 1, in C), the same maps take about 40 times less,
    for about 25 ms per image of 32,768 regions; a mostly full region deflates as well.

    ``dirty``: the regions changed since the last image (folded in from each delta interval).
    ``width``: 32-bit counts kept per region beside its map (a host's owner counts), or 0."""

    __slots__ = ("cache", "dirty", "width")

    def __init__(self, width: int = 0, cache: dict[int, Group] | None = None) -> None:
        self.cache: dict[int, Group] = {} if cache is None else cache
        self.dirty: set[int] = set()
        self.width = width

    def pack(
        self,
        source: dict[int, bytearray],
        dirty: set[int],
        counts: dict[int, list[int]] | None = None,
    ) -> PackedRefs:
        """The image of ``source`` (and of ``counts``, one list of ``width`` ints per region):
        the groups with a region changed since the last image (``self.dirty``, and ``dirty`` of
        the current delta interval) deflated again, the others shared."""
        cache = self.cache
        width = self.width
        for g in {r >> GROUP_SHIFT for r in self.dirty | dirty}:
            base = g << GROUP_SHIFT
            present = bytearray()
            parts: list[bytes | bytearray] = []
            rows: list[int] = []
            for i in range(GROUP):
                m = source.get(base + i)
                if m is not None:
                    present.append(i)
                    parts.append(m)
                    if counts is not None and width:
                        rows += counts[base + i]
            if parts:
                if width:  # packed by struct: array.extend converts each int via PyArg_Parse
                    parts.append(struct.pack(f"@{len(rows)}i", *rows))
                cache[g] = (bytes(present), zlib.compress(b"".join(parts), 1, _RAW))
            else:
                cache.pop(g, None)
        self.dirty = set()
        return pack_refs(cache)


def unpack_maps(
    image: PackedRefs, size: int, width: int = 0
) -> tuple[dict[int, bytearray], dict[int, list[int]], ImageCache]:
    """The maps of an image (``size`` bytes each, fresh bytearrays in region order), the counts
    kept beside them (``width`` ints per region), and an :class:`ImageCache` that shares the
    image's groups (the next image re-deflates only the groups changed after this one)."""
    groups: dict[int, Group] = unpack_refs(image)
    maps: dict[int, bytearray] = {}
    counts: dict[int, list[int]] = {}
    row = 4 * width  # bytes of one region's counts
    for g in sorted(groups):
        present, blob = groups[g]
        data = memoryview(zlib.decompress(blob, _RAW))
        base = g << GROUP_SHIFT
        at = 0
        for i in present:
            maps[base + i] = bytearray(data[at : at + size])
            at += size
        if width:
            rows = array("i")
            rows.frombytes(data[at : at + row * len(present)])
            values = rows.tolist()
            k = 0
            for i in present:
                counts[base + i] = values[k : k + width]
                k += width
    return maps, counts, ImageCache(width, groups)


# -- sparse keyframes ------------------------------------------------------------------------
#: A group of an image's per-region maps (:class:`SparseImages`), one of two forms:
#:
#: - sparse, one bytes object: the number ``n`` of its touched regions (1 byte), their indices
#:   in the group (``n`` bytes, ascending), a pad byte to an even offset, where each region's
#:   entries begin (``n + 1`` 16-bit ints), then the pages in use, one 16-bit entry each
#:   (``offset | code << 9``, in page order); all little-endian;
#: - dense, for a group whose regions are mostly in use: (the indices, their whole maps joined
#:   and deflated).
#:
#: One object a group, not arrays: a keyframe of a host whose allocations scatter holds every
#: group, and an array's header alone is 64 bytes.
SparseGroup = Any
#: Regions in use at least this many pages on average make a dense group (deflated maps): the
#: sparse form takes 2 bytes a page in use, the deflated maps of full regions a few per region.
DENSE_PAGES: Final = 64
#: ``bytes.translate`` table: every byte but 0 becomes 1 (to find the pages in use with
#: ``find``, in C, rather than a Python loop over 512 bytes a region)
_NONZERO: Final = bytes([0] + [1] * 255)
_OFFSET_BITS: Final = 9
_OFFSET_MASK: Final = (1 << _OFFSET_BITS) - 1


def sparse_header(n: int) -> int:
    """Where a sparse group of ``n`` regions has its 16-bit part (its count, indices, pad)."""
    return (n + 2) & ~1


def encode_group(
    maps: dict[int, bytearray], g: int, regions: list[int] | None = None
) -> SparseGroup | None:
    """Group ``g`` of ``maps`` (512-byte maps keyed by region) in the form above; None when
    none of its regions is in ``maps``. ``regions``: the group's regions in ``maps``,
    ascending, when the caller has them (:meth:`SparseImages.pack` on a scattered host: 64
    lookups a group were a third of encoding it)."""
    base = g << GROUP_SHIFT
    if regions is None:
        regions = [r for r in range(base, base + GROUP) if r in maps]
    if not regions:
        return None
    parts = [maps[r] for r in regions]
    index = bytes([r - base for r in regions])
    joined = b"".join(parts)
    size = len(parts[0])
    if len(joined) != size * len(parts):
        raise ValueError(f"group {g}: maps of unequal sizes")
    if len(joined) - joined.count(0) > DENSE_PAGES * len(parts):
        return index, zlib.compress(joined, 1, _RAW)
    # one translate and find pass over the group's joined maps, not one per region (a map of
    # a scattered host holds one to three pages in use: the per-region calls were most of it)
    words = [0]  # where each region's entries begin, then the entries
    entries: list[int] = []
    nonzero = joined.translate(_NONZERO)
    at = nonzero.find(1)
    while at >= 0:
        k = at // size
        while len(words) <= k:
            words.append(len(entries))
        entries.append((at - k * size) | joined[at] << _OFFSET_BITS)
        at = nonzero.find(1, at + 1)
    n = len(parts)
    while len(words) <= n:
        words.append(len(entries))
    head = bytes([n]) + index + bytes(sparse_header(n) - 1 - n)
    return head + struct.pack(f"<{len(words) + len(entries)}H", *words, *entries)


def group_regions(g: int, group: SparseGroup) -> list[int]:
    """The regions group ``g`` holds, ascending."""
    base = g << GROUP_SHIFT
    if isinstance(group, bytes):
        return [base + i for i in group[1 : 1 + group[0]]]
    return [base + i for i in group[0]]


def group_map(
    group: SparseGroup, region: int, size: int, inflated: dict[int, bytes] | None = None
) -> bytearray | None:
    """``region``'s map (``size`` bytes) out of its group, or None if the group does not hold
    it. ``inflated``: dense groups already inflated, by group id (a seek that reads several
    regions of a dense group inflates it once)."""
    i = region & (GROUP - 1)
    if isinstance(group, bytes):
        n = group[0]
        k = group.find(i, 1, 1 + n)
        if k < 0:
            return None
        at = sparse_header(n) + 2 * (k - 1)
        lo, hi = struct.unpack_from("<2H", group, at)
        m = bytearray(size)
        if hi > lo:
            first = sparse_header(n) + 2 * (n + 1) + 2 * lo
            for v in struct.unpack_from(f"<{hi - lo}H", group, first):
                m[v & _OFFSET_MASK] = v >> _OFFSET_BITS
        return m
    index, blob = group
    k = index.find(i)
    if k < 0:
        return None
    g = region >> GROUP_SHIFT
    data = None if inflated is None else inflated.get(g)
    if data is None:
        data = zlib.decompress(blob, _RAW)
        if inflated is not None:
            inflated[g] = data
    return bytearray(data[k * size : (k + 1) * size])


def patch_range(pfns: array[int], region: int) -> tuple[int, int]:
    """The slice of ``pfns`` (ascending page numbers) in ``region``."""
    lo = bisect_left(pfns, region << _OFFSET_BITS)
    return lo, bisect_left(pfns, (region + 1) << _OFFSET_BITS, lo)


def layered_map(
    base: dict[int, SparseGroup] | None,
    pfns: array[int],
    values: bytes,
    region: int,
    size: int,
    inflated: dict[int, bytes] | None = None,
) -> bytearray | None:
    """``region``'s map as a restored machine sees it before touching it: its keyframe's map
    (``base``, groups by group id), then the pages a seek's merged deltas changed in it
    (``pfns``, ascending, and their ``values``). None: the region was never touched."""
    m = None
    if base is not None:
        group = base.get(region >> GROUP_SHIFT)
        if group is not None:
            m = group_map(group, region, size, inflated)
    if len(pfns):
        lo, hi = patch_range(pfns, region)
        if lo < hi:
            if m is None:
                m = bytearray(size)
            for j in range(lo, hi):
                m[pfns[j] & _OFFSET_MASK] = values[j]
    return m


class LayeredMaps:
    """The per-region maps of a restored machine that it has not touched yet: its keyframe's
    groups (sparse, shared with the keyframe) and the pages the deltas applied since changed
    (merged: one value per page, ascending). A region's map is built from both the first time
    the machine reads or writes it (:meth:`take`); until then it costs nothing. A seek on a
    host whose allocations scatter over tens of thousands of regions thus builds the maps of
    the few hundred regions its last events touch, not of every region (building every map
    was most of a seek: restoring the keyframe, then applying each delta to the maps).

    Immutable once built (:meth:`with_pages` makes a new one): a snapshot can hold it."""

    __slots__ = ("base", "inflated", "pfns", "size", "values")

    def __init__(
        self,
        base: dict[int, SparseGroup] | None,
        size: int,
        pfns: array[int] | None = None,
        values: bytes = b"",
    ) -> None:
        self.base = base
        self.size = size
        self.pfns: array[int] = array("i") if pfns is None else pfns
        self.values = values
        #: dense groups inflated so far (a cache, not state)
        self.inflated: dict[int, bytes] = {}

    def map(self, region: int) -> bytearray | None:
        """A fresh copy of ``region``'s map; None if the region was never touched."""
        return layered_map(self.base, self.pfns, self.values, region, self.size, self.inflated)

    def with_pages(self, pages: dict[int, int]) -> LayeredMaps:
        """These maps with ``pages`` (page -> value) changed on top."""
        if len(self.pfns):
            merged = dict(zip(self.pfns, self.values, strict=True))
            merged.update(pages)
        else:
            merged = pages
        keys = sorted(merged)  # (each delta's pages ascending: a few runs for the sort)
        out = LayeredMaps(self.base, self.size, int32s(keys), bytes(map(merged.__getitem__, keys)))
        out.inflated = self.inflated
        return out

    def regions(self) -> set[int]:
        """Every region either layer holds."""
        out: set[int] = set()
        if self.base is not None:
            for g, group in self.base.items():
                out.update(group_regions(g, group))
        out.update([p >> _OFFSET_BITS for p in self.pfns])
        return out

    def regions_in_group(self, g: int) -> list[int]:
        """The regions of group ``g`` either layer holds."""
        out: set[int] = set()
        if self.base is not None:
            group = self.base.get(g)
            if group is not None:
                out.update(group_regions(g, group))
        lo = bisect_left(self.pfns, g << (GROUP_SHIFT + _OFFSET_BITS))
        hi = bisect_left(self.pfns, (g + 1) << (GROUP_SHIFT + _OFFSET_BITS), lo)
        out.update([self.pfns[j] >> _OFFSET_BITS for j in range(lo, hi)])
        return sorted(out)

    def patched_groups(self) -> set[int]:
        return {p >> (GROUP_SHIFT + _OFFSET_BITS) for p in self.pfns}


class SparseImages:
    """Per-region maps (owner maps, module page kinds: 512 bytes each) as of the last image, in
    the sparse form by groups of :data:`GROUP` regions (:func:`encode_group`), shared by every
    image since: a group unchanged between two images is one object, not two copies.

    Why sparse: a host whose allocations scatter (the ``random`` and ``spread`` allocators)
    touches every region with a few pages each. A restore that rebuilt every region's map from
    a deflated group paid for all of them on every seek; in the sparse form a region's map is
    built from its few entries when a seek first touches it (:class:`LayeredMaps`), and the
    entries (2 bytes a page in use) take no more room than the deflated maps did. Groups of
    mostly full regions stay deflated maps (the sparse form would take 1 KiB a region).

    ``dirty``: the regions changed since the last image (folded in from each delta interval)."""

    __slots__ = ("cache", "dirty")

    def __init__(self, cache: dict[int, SparseGroup] | None = None) -> None:
        self.cache: dict[int, SparseGroup] = {} if cache is None else cache
        self.dirty: set[int] = set()

    def pack(self, maps: dict[int, bytearray], dirty: set[int]) -> dict[int, SparseGroup]:
        """The image of ``maps``: the groups with a region changed since the last image
        (``self.dirty``, and ``dirty`` of the current delta interval) encoded again, the
        others shared. Every region of those groups must be in ``maps``. The image is a new
        dict (by group id) the machine never changes."""
        cache = self.cache
        groups = {r >> GROUP_SHIFT for r in self.dirty | dirty}
        # The regions of each group at hand: on a host whose allocations scatter nearly every
        # group is dirty, and one pass over the maps' keys costs less than 64 lookups a group
        # (the per-group lookups stay when few groups changed on a host with many maps).
        members: dict[int, list[int]] | None = None
        if len(groups) * GROUP > len(maps):
            members = {}
            for r in maps:
                g = r >> GROUP_SHIFT
                if g in groups:
                    rows = members.get(g)
                    if rows is None:
                        members[g] = [r]
                    else:
                        rows.append(r)
        for g in groups:
            if members is None:
                group = encode_group(maps, g)
            else:
                rows = members.get(g)
                group = None if rows is None else encode_group(maps, g, sorted(rows))
            if group is None:
                cache.pop(g, None)
            else:
                cache[g] = group
        self.dirty = set()
        return dict(cache)
