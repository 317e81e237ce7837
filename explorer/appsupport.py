"""Helpers for the Streamlit pages that need no Streamlit: samples, URL state, cache keys.

Kept here so they are unit-tested without a browser and the pages stay thin.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from explorer.model.settings import SETTING_SPECS, Settings
from explorer.trace import limits as L

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_traces"
DEFAULT_SAMPLE = "td_lifecycle"
#: The upload limit in MiB; ``.streamlit/config.toml`` sets ``server.maxUploadSize`` to the same
#: (a test keeps them equal).
UPLOAD_LIMIT_MB = L.MAX_UPLOAD_BYTES // L.MIB
#: Replays kept per server process (least recently used dropped first), and the checkpoint
#: memory each may take: together they bound the cache (8 x 256 MiB of checkpoints at most).
REPLAY_CACHE_ENTRIES = 8
REPLAY_CHECKPOINT_BUDGET = 256 << 20


@dataclass(frozen=True)
class SampleInfo:
    name: str
    title: str
    description: str


@lru_cache(maxsize=1)
def list_samples() -> tuple[SampleInfo, ...]:
    """The sample library, default sample first, then by name."""
    out = []
    for path in sorted(SAMPLES_DIR.glob("*.jsonl")):
        title = description = ""
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.lstrip().startswith("#"):
                    head = json.loads(line)
                    title, description = head.get("title", ""), head.get("description", "")
                    break
        out.append(SampleInfo(path.stem, title or path.stem, description))
    out.sort(key=lambda s: (s.name != DEFAULT_SAMPLE, s.name))
    return tuple(out)


def sample_bytes(name: str) -> bytes:
    if name not in {s.name for s in list_samples()}:
        raise KeyError(f"no sample named {name!r}")
    return (SAMPLES_DIR / f"{name}.jsonl").read_bytes()


def content_key(data: bytes) -> str:
    """A replay cache key for a trace's bytes (the settings are the other half of the key)."""
    return hashlib.sha256(data).hexdigest()


def settings_key(settings: Settings) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(settings.to_dict().items()))


@dataclass
class ViewState:
    """What the URL carries: the sample, the step cursor, and the settings that differ."""

    sample: str = DEFAULT_SAMPLE
    step: int = -1
    overrides: dict[str, Any] = field(default_factory=dict)


def decode_view_state(params: Mapping[str, Any]) -> tuple[ViewState, list[str]]:
    """Parse query parameters; bad values are reported and ignored, never fatal."""
    state = ViewState()
    problems: list[str] = []
    names = {s.name for s in list_samples()}
    for key, raw in params.items():
        value = raw[-1] if isinstance(raw, list) else raw
        if key == "sample":
            if value in names:
                state.sample = value
            elif value != "upload":
                problems.append(f"URL: no sample named {value!r}; showing {DEFAULT_SAMPLE}")
        elif key == "step":
            try:
                state.step = max(-1, int(value))
            except ValueError:
                problems.append(f"URL: step={value!r} is not a number")
        elif key in SETTING_SPECS:
            spec = SETTING_SPECS[key]
            try:
                state.overrides[key] = spec.check(spec.from_text(str(value)))
            except ValueError as exc:
                problems.append(f"URL: setting {key}={value!r}: {exc} (expected {spec.expected})")
        else:
            problems.append(f"URL: unknown parameter {key!r} ignored")
    return state, problems


def encode_view_state(sample: str, step: int, settings: Settings, base: Settings) -> dict[str, str]:
    """Query parameters for a link that reproduces the view (only settings that differ from
    ``base``, the trace's own settings)."""
    out = {"sample": sample, "step": str(step)}
    for key, value in settings.to_dict().items():
        if getattr(base, key) != value:
            out[key] = str(value)
    return out
