"""Simulation settings: the knobs of dpamt-model.md, validated with exact messages.

The two "worst-case page-table count" knobs are ``worst_case_tables`` (the ``min`` KVM passes
when topping up its page-table caches, ``PT64_ROOT_MAX_LEVEL`` = 5 in the kernel) and
``dpamt_gets_per_fault`` (the ``n`` of ``tdx_topup_pamt_cache(cache, n)``: the cache is filled to
``2 * n`` pages; v6 passes 5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import explorer.model.constants as C
from explorer.model.errors import Problem, SettingsError

#: Hard limit on host memory (4 TiB): region bookkeeping is sparse, so this is a sanity bound.
MAX_HOST_MEMORY_MIB = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    mode: str = "v6"
    ept_levels: int = 4
    worst_case_tables: int = C.PT64_ROOT_MAX_LEVEL
    dpamt_gets_per_fault: int = C.DPAMT_GETS_PER_FAULT
    host_memory_mib: int = 256
    allocator: str = "lowest"
    seed: int = 0
    schedule: str = "round-robin"
    max_retries: int = 64
    tdcs_pages: int = C.DEFAULT_TDCS_PAGES
    tdcx_pages: int = C.DEFAULT_TDCX_PAGES

    @property
    def total_pages(self) -> int:
        return self.host_memory_mib * 256

    @property
    def nr_regions(self) -> int:
        return self.host_memory_mib // 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "settings") -> Settings:
        """A copy with ``overrides`` applied and validated (raises :class:`SettingsError`)."""
        merged = self.to_dict()
        merged.update(overrides)
        return Settings.from_mapping(merged, source)

    @staticmethod
    def from_mapping(
        values: Mapping[str, Any], source: str = "settings", line: int = 0
    ) -> Settings:
        """Validate ``values`` (every key optional) into Settings, collecting every problem."""
        problems: list[Problem] = []
        out: dict[str, Any] = {}
        for key, value in values.items():
            spec = SETTING_SPECS.get(key)
            if spec is None:
                problems.append(
                    Problem(
                        source,
                        line,
                        0,
                        f"unknown setting {key!r}",
                        str(key),
                        ", ".join(SETTING_SPECS),
                    )
                )
                continue
            try:
                out[key] = spec.check(value)
            except ValueError as exc:
                problems.append(
                    Problem(
                        source,
                        line,
                        0,
                        f"setting {key}={value!r}: {exc}",
                        f"{key}={value!r}",
                        spec.expected,
                    )
                )
        if problems:
            raise SettingsError(problems)
        return replace(Settings(), **out)

    @staticmethod
    def parse_assignments(items: list[str], source: str = "--set") -> dict[str, Any]:
        """Parse CLI/URL ``key=value`` strings; values are converted by :data:`SETTING_SPECS`."""
        out: dict[str, Any] = {}
        problems: list[Problem] = []
        for item in items:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep:
                problems.append(Problem(source, 0, 0, "expected key=value", item, "key=value"))
                continue
            spec = SETTING_SPECS.get(key)
            if spec is None:
                problems.append(
                    Problem(
                        source, 0, 0, f"unknown setting {key!r}", item, ", ".join(SETTING_SPECS)
                    )
                )
                continue
            out[key] = spec.from_text(raw.strip())
        if problems:
            raise SettingsError(problems)
        return out


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """How one setting is checked: an int range (with optional step) or a choice."""

    name: str
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    lo: int = 0
    hi: int = 0
    even: bool = False

    @property
    def expected(self) -> str:
        if self.choices:
            return " | ".join(str(c) for c in self.choices)
        return f"{'an even ' if self.even else 'an '}integer in {self.lo}..{self.hi}"

    def check(self, value: Any) -> Any:
        if self.choices and not isinstance(self.default, int):
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError("not one of the choices")
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str):
                value = _int_text(value)
            else:
                raise ValueError(f"wrong type {type(value).__name__}")
        if self.choices:
            if value not in self.choices:
                raise ValueError("not one of the choices")
            return value
        if not self.lo <= value <= self.hi:
            raise ValueError("out of range")
        if self.even and value % 2:
            raise ValueError("odd (host memory is a whole number of 2 MiB regions)")
        return value

    def from_text(self, raw: str) -> Any:
        if isinstance(self.default, int):
            try:
                return _int_text(raw)
            except ValueError:
                return raw  # check() reports it with the field name
        return raw


#: Significant digits of an integer written as text, checked before any conversion (more is out
#: of every range; Python's int() itself refuses over 4300 digits). The trace format's limit
#: (explorer.ingest.limits.MAX_INT_DIGITS is this value).
MAX_INT_DIGITS = 24

_INT_TEXT = re.compile(r"0[xX]([0-9a-fA-F]+)|-?([0-9]+)").fullmatch


def int_text(text: str) -> int:
    """The rule for an integer written as text, in settings (--set, the app, a trace header's
    settings) and trace fields: decimal (``-?[0-9]+``) or hex (``0x`` + hex digits), nothing else
    (no underscores, spaces, signs inside or ``+``), at most :data:`MAX_INT_DIGITS` significant
    digits. Raises ValueError with a one-line message (never echoing more than 40 characters)."""
    m = _INT_TEXT(text)
    if m is None:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(
            f"{shown!r} is not an integer (decimal digits or 0x and hex digits, "
            "no underscores or spaces)"
        )
    digits = m.group(1) or m.group(2)
    if len(digits.lstrip("0")) > MAX_INT_DIGITS:
        raise ValueError(
            f"a {len(digits)}-digit number is out of range "
            f"(over the limit of {MAX_INT_DIGITS} digits, MAX_INT_DIGITS)"
        )
    return int(digits, 16) if m.group(1) is not None else int(text, 10)


def _int_text(text: str) -> int:
    """A setting's integer text (spaces around it ignored) by the rule of :func:`int_text`."""
    return int_text(text.strip())


SETTING_SPECS: dict[str, SettingSpec] = {
    s.name: s
    for s in (
        SettingSpec("mode", "v6", "tdx_pamt_get/put variant or design strategy", C.MODES),
        SettingSpec("ept_levels", 4, "S-EPT levels (4: 3 non-root tables, 5: 4)", (4, 5)),
        SettingSpec(
            "worst_case_tables",
            C.PT64_ROOT_MAX_LEVEL,
            "min of KVM's page-table caches (PT64_ROOT_MAX_LEVEL)",
            lo=0,
            hi=C.KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE,
        ),
        SettingSpec(
            "dpamt_gets_per_fault",
            C.DPAMT_GETS_PER_FAULT,
            "n of tdx_topup_pamt_cache(cache, n): 2n pages",
            lo=0,
            hi=64,
        ),
        SettingSpec(
            "host_memory_mib", 256, "host memory in MiB", lo=2, hi=MAX_HOST_MEMORY_MIB, even=True
        ),
        SettingSpec("allocator", "lowest", "page allocator policy", C.ALLOCATORS),
        SettingSpec("seed", 0, "seed of the random allocator and schedule", lo=0, hi=2**63 - 1),
        SettingSpec("schedule", "round-robin", "interleaving of concurrent events", C.SCHEDULES),
        SettingSpec(
            "max_retries", 64, "local retries of one fault before 'livelock'", lo=0, hi=1_000_000
        ),
        SettingSpec("tdcs_pages", C.DEFAULT_TDCS_PAGES, "TDCS pages per TD", lo=1, hi=64),
        SettingSpec("tdcx_pages", C.DEFAULT_TDCX_PAGES, "TDCX pages per vCPU", lo=0, hi=64),
    )
}

assert [f.name for f in fields(Settings)] == list(SETTING_SPECS), "specs and fields disagree"
