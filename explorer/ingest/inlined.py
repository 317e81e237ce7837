"""The control-page gets and puts a kernel build inlined, derived from the pages the helpers name.

v6 08/11 has ``tdx_alloc_control_page()`` call ``tdx_pamt_get()`` on the page ``alloc_page()``
returned, and ``tdx_free_control_page()`` call ``tdx_pamt_put()`` before ``__free_page()``; all
four are in ``arch/x86/virt/vmx/tdx/tdx.c``, so a compiler may inline the calls into the helpers
(``tdx_pamt_get/put`` stay exported, and their kprobes attach, for KVM's calls). A capture of
such a build has the helpers' records and no get or put inside them, and the model, which does
the get and the put there, then diverged at every control page (164 divergences on the
conforming sample with those records removed) where the kernel did nothing wrong.

So each helper's window (its ``.entry`` to its ``.return`` on one thread) that holds no get (no
put) gets one, derived from the ``struct page *`` the helper names: ``pfn = (page -
vmemmap_base) / page_size``, both from the capture's header (``tools/capture/preflight.sh``
writes them when kallsyms shows ``vmemmap_base``). The derived records carry the line of the
record they come from, so a divergence points at a line of the file, and their text says they
are derived. Not derived: an allocation that failed (``ret`` not 0: ``alloc_page()`` or the get
failed, which the capture does not say), and anything when the header has no
``vmemmap_base`` (the pfns would not be the ones the other records print). A header value out
of any sensible range is a problem at its line, as a damaged record is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from explorer.ingest.capture import Record

#: ``sizeof(struct page)`` when the header does not say (64 on x86-64 without debug options).
DEFAULT_PAGE_SIZE = 64
#: The lowest address a kernel's ``vmemmap_base`` can have on x86-64 (5-level paging's kernel
#: half starts at 0xff00000000000000; 4-level's vmemmap sits at 0xffffea0000000000 before KASLR).
KERNEL_HALF = 0xFF00_0000_0000_0000
#: ``sizeof(struct page)`` within reason: 56 or 64 on x86-64, more with debug options.
PAGE_SIZE_RANGE = (32, 512)

_HELPERS = {
    "tdx_alloc_control_page": ("tdx_pamt_get", "get"),
    "tdx_free_control_page": ("tdx_pamt_put", "put"),
}
#: A callee's entry -> the helper it is called from
_CALLEES = {callee + ".entry": helper for helper, (callee, _) in _HELPERS.items()}
#: Every probe the derivation looks at (a capture holds a million records: the others are
#: passed over with one set lookup each)
_WATCHED = frozenset(
    [f"{h}.{side}" for h in _HELPERS for side in ("entry", "return")] + [*_CALLEES]
)


#: The parser's way of reporting a problem: ``(line, col, reason, text, expected)``.
Report = Callable[[int, int, str, str, str], None]


def check_header(
    header: dict[str, str], at: dict[str, int], report: Report
) -> tuple[int | None, int]:
    """``(vmemmap_base or None, page_size)`` from the capture's header; a value out of range is
    reported through ``report`` (the parser's problems)."""
    size = DEFAULT_PAGE_SIZE
    text = header.get("page_size")
    if text is not None:
        lo, hi = PAGE_SIZE_RANGE
        n = int(text) if text.isascii() and text.isdigit() else -1
        if not (lo <= n <= hi and n % 8 == 0):
            report(
                at.get("page_size", 0),
                1,
                f"page_size={text}: not a sizeof(struct page)",
                f"# page_size={text}",
                f"a multiple of 8 in {lo}..{hi} (64 on common x86-64 configs)",
            )
        else:
            size = n
    base: int | None = None
    text = header.get("vmemmap_base")
    if text is not None:
        v = int(text, 16) if _is_hex(text) else -1
        if v < KERNEL_HALF or v % (512 * size):
            report(
                at.get("vmemmap_base", 0),
                1,
                f"vmemmap_base={text}: not a kernel vmemmap base",
                f"# vmemmap_base={text}",
                f"0x... at or above {KERNEL_HALF:#x}, a multiple of 512 x page_size "
                "(KASLR aligns it to 1 GiB)",
            )
        else:
            base = v
    return base, size


def _is_hex(text: str) -> bool:
    return (
        text[:2] in ("0x", "0X")
        and len(text) > 2
        and all(c in "0123456789abcdefABCDEF" for c in text[2:])
    )


def _windows(records: Sequence[Record]) -> Iterator[tuple[int, int, str]]:
    """Each helper's window that holds no call of its callee on its thread: (the index of its
    ``.entry``, of its ``.return``, the helper), a failed allocation's left out (``ret`` not
    0: ``alloc_page()`` or the get failed, and the capture does not say which)."""
    open_: dict[tuple[int, str], tuple[int, bool]] = {}  # (tid, helper) -> (entry, callee seen)
    for i, r in enumerate(records):
        probe = r.probe
        if probe not in _WATCHED:
            continue
        helper = _CALLEES.get(probe)
        if helper is not None:  # the callee's entry: inside its helper's window, if one is open
            key = (r.tid, helper)
            if key in open_:
                open_[key] = (open_[key][0], True)
            continue
        func, _, side = probe.rpartition(".")
        key = (r.tid, func)
        if side == "entry":
            open_[key] = (i, False)
            continue
        window = open_.pop(key, None)
        if window is None or window[1]:
            continue
        if func == "tdx_alloc_control_page" and r.fields.get("ret") != 0:
            continue
        yield window[0], i, func


def derive(
    records: Sequence[Record], base: int | None, size: int, max_pfn: int, report: Report
) -> tuple[list[Record] | None, list[str]]:
    """``records`` with the gets and puts the control-page helpers' windows lack inserted
    (None when none is), and a note per kind derived. A ``page=`` that is no ``struct page *``
    under ``base`` is a problem at its field (``report``, the parser's)."""
    from explorer.ingest.capture import Record

    if base is None:
        return None, _unbased(records)
    inserts: dict[int, list[Record]] = {}  # index -> records to put before it
    counts = {"get": 0, "put": 0}
    for at_entry, at_return, func in _windows(records):
        first, last = records[at_entry], records[at_return]
        src = first if func == "tdx_free_control_page" else last  # (the one with page=)
        page = src.fields.get("page")
        if not isinstance(page, int):
            continue
        pfn, rem = divmod(page - base, size)
        if page < base or rem or pfn > max_pfn:
            report(
                src.line,
                max(src.text.find("page=") + 1, 1),
                f"page={page:#x} is not a struct page * under vmemmap_base={base:#x} with "
                f"page_size={size} (the header's)",
                src.text,
                f"a page whose pfn is within 0..{max_pfn:#x}",
            )
            continue
        callee, kind = _HELPERS[func]
        kvm = last.fields.get("kvm", 0)
        kvm = kvm if isinstance(kvm, int) else 0
        why = f"(derived from line {src.line}: {callee} inlined into {func})"
        if kind == "get":
            enter = {"pfn": pfn, "cache": 0, "cache_count": -1, "kvm": kvm}
            leave = {"ret": 0, "cache_count": -1, "kvm": kvm}
        else:
            enter = {"pfn": pfn, "kvm": kvm}
            leave = {"ret": 0, "kvm": kvm}
        inserts.setdefault(at_entry + 1, []).append(
            _record(Record, first, callee + ".entry", enter, src.line, why)
        )
        inserts.setdefault(at_return, []).append(
            _record(Record, last, callee + ".return", leave, src.line, why)
        )
        counts[kind] += 1
    if not inserts:
        return None, []
    out: list[Record] = []
    for i, r in enumerate(records):
        extra = inserts.get(i)
        if extra:
            out.extend(extra)
        out.append(r)
    notes = [
        f"{n} {callee} call(s) derived from {func}'s page= (inlined in this kernel build: "
        'docs/capture.md, "Inlined control-page gets and puts")'
        for func, (callee, kind) in _HELPERS.items()
        if (n := counts[kind])
    ]
    return out, notes


def _record(
    cls: type[Record], near: Record, probe: str, fields: dict[str, int], line: int, why: str
) -> Record:
    text = f"{near.ts} {near.cpu} {near.tid} {near.pid} {probe} " + " ".join(
        f"{k}={v:#x}" if k in ("pfn", "cache", "kvm") else f"{k}={v}" for k, v in fields.items()
    )
    return cls(line, near.ts, near.cpu, near.tid, probe, dict(fields), near.pid, f"{text} {why}")


def _unbased(records: Sequence[Record]) -> list[str]:
    """The note when windows lack their get or put but the header gives no base to derive the
    pfns from."""
    lacking = sum(1 for _ in _windows(records))
    if not lacking:
        return []
    return [
        f"{lacking} control-page allocation(s) or free(s) with no get or put inside (inlined in "
        "this kernel build?), and no vmemmap_base in the header to derive their pfns: they are "
        "compared without them (run tools/capture/preflight.sh where kallsyms shows vmemmap_base)"
    ]
