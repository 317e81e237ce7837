"""Write events as canonical format-v1 JSON Lines (gfn, pfn and pinned pfns in hex), parseable
back to equal events: the inverse of :func:`explorer.ingest.parse.parse_trace`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from explorer.model.events import Event


def event_object(ev: Event) -> dict[str, Any]:
    obj: dict[str, Any] = {"op": ev.op}
    for f in fields(ev):
        if f.name == "line":
            continue
        value = getattr(ev, f.name)
        if (
            value is None
            or (f.name == "level" and value == "4k")
            or (f.name == "count" and value == 1)
        ):
            continue
        if f.name in ("gfn", "pfn"):
            value = hex(value)
        elif f.name in ("tables", "control"):  # pinned pages: lists of pfns
            value = [hex(v) for v in value]
        obj[f.name] = value
    return obj


def dump_trace(
    events: Iterable[Event],
    title: str = "",
    description: str = "",
    settings: dict[str, Any] | None = None,
) -> str:
    head: dict[str, Any] = {"format": "dpamt-trace", "version": 1}
    if title:
        head["title"] = title
    if description:
        head["description"] = description
    if settings:
        head["settings"] = settings
    lines = [json.dumps(head, separators=(", ", ": "))]
    lines += [json.dumps(event_object(ev), separators=(", ", ": ")) for ev in events]
    return "\n".join(lines) + "\n"
