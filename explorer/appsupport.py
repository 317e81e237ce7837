"""Helpers for the Streamlit pages that need no Streamlit: samples, URL state, cache keys.

Kept here so they are unit-tested without a browser and the pages stay thin.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from explorer.ingest import limits as L
from explorer.model.errors import Problem
from explorer.model.settings import SETTING_SPECS, Settings

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_traces"
DEFAULT_SAMPLE = "td_lifecycle"
#: The upload limit in MiB; ``.streamlit/config.toml`` sets ``server.maxUploadSize`` to the same
#: (a test keeps them equal).
UPLOAD_LIMIT_MB = L.MAX_UPLOAD_BYTES // L.MIB
#: The checkpoint memory one replay may take (explorer.replay.timeline thins them to fit).
REPLAY_CHECKPOINT_BUDGET = 256 << 20
#: Bytes of parsed traces and replays the server process keeps for all sessions together
#: (:class:`ByteBudgetCache`, least recently used dropped first); docs/reliability.md.
REPLAY_CACHE_BUDGET = 1 << 30
#: Estimated bytes per event of a parsed trace and of its replay (RSS growth measured on a
#: 1,075,398-event upload: 201 MiB parsed, 461 MiB replayed; docs/reliability.md), plus a
#: floor for the fixed part of a small one.
PARSE_BYTES_PER_EVENT = 190
REPLAY_BYTES_PER_EVENT = 430
CACHE_ENTRY_FLOOR = 64 << 10
#: The largest integer a Streamlit ``number_input`` holds exactly (JavaScript's
#: ``Number.MAX_SAFE_INTEGER``); a setting whose range goes beyond it is edited as text.
JS_MAX_SAFE_INTEGER = 2**53 - 1


def parse_estimate(nr_events: int) -> int:
    """Bytes a parsed trace of ``nr_events`` events holds (its event objects dominate)."""
    return CACHE_ENTRY_FLOOR + PARSE_BYTES_PER_EVENT * nr_events


def replay_estimate(nr_events: int) -> int:
    """Bytes a replay of ``nr_events`` events holds (per-event arrays and checkpoints)."""
    return CACHE_ENTRY_FLOOR + REPLAY_BYTES_PER_EVENT * nr_events


class ByteBudgetCache:
    """Values kept under a byte budget, each with its estimated size; least recently used
    dropped first. A value over the whole budget is not kept (the caller keeps it for its own
    session): the app's replay cache was a count of entries (8), so eight uploads near the
    limit kept about 5.3 GB after their sessions closed; a budget in bytes bounds that to
    ``budget`` whatever the traces are. Thread-safe: Streamlit runs sessions in threads."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Keep ``value`` as ``size`` bytes, dropping the least recently used until the total
        fits; False (nothing kept or dropped) when ``size`` alone is over the budget."""
        if size > self.budget:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            while self._items and self._bytes + size > self.budget:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
            self._items[key] = (value, size)
            self._bytes += size
            return True

    @property
    def total(self) -> int:
        """Estimated bytes held."""
        return self._bytes

    def held(self) -> list[Hashable]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._items)


#: Seconds without a script run (no session stepping, loading or clicking) after which the
#: server collects garbage and hands its freed heap back to the system (:class:`IdleTrimmer`).
IDLE_TRIM_S = 5.0


def _glibc_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` (return the free memory at the top of every malloc arena and
    in whole free pages inside them to the kernel), or None off glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


#: Allocations from this size up get pages of their own from the kernel (glibc's
#: ``M_MMAP_THRESHOLD``), given back as soon as they are freed (see :func:`mmap_large_blocks`).
MMAP_THRESHOLD = 64 * 1024


def mmap_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc serve every allocation of ``threshold`` bytes or more with its own mapping
    (``mallopt(M_MMAP_THRESHOLD)``), for the app server. Why: glibc's default starts at 128 KB
    and then rises (up to 32 MB) each time such a block is freed, so the step windows' ~100 KB
    messages, Arrow buffers and seek arrays ended up inside the malloc arenas of the script
    threads (a new thread per run), where a few small blocks left among them keep whole pages:
    30 stepping sessions left the instant view's server 23 MiB above its start 60 s after they
    closed; with 64 KB, 13 MiB (docs/reliability.md). False off glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(-3, threshold))  # M_MMAP_THRESHOLD


class IdleTrimmer:
    """Once the app has been idle for ``idle_s`` seconds after some activity: ``gc.collect()``,
    then glibc's ``malloc_trim(0)``.

    Why: Streamlit runs each session's script in a thread of its own, and glibc gives busy
    threads malloc arenas of their own (up to 8 per CPU); what 30 concurrent sessions allocated
    while stepping (figures, protobufs, widget states) is freed when they stop, but stays in
    those arenas, so the server's resident memory stayed ~100 MB above its start long after the
    sessions closed (docs/reliability.md, the load test). A collection breaks the cycles the
    figure objects leave, and the trim returns the freed pages. Both run only when nothing is
    running (never in a session's way): a poll thread checks every ``poll_s`` seconds whether
    :meth:`touch` (each script run) was called since the last trim and not for ``idle_s``.
    Thread-safe; ``trim`` and ``clock`` are injectable for tests."""

    def __init__(
        self,
        idle_s: float = IDLE_TRIM_S,
        poll_s: float = 1.0,
        trim: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.poll_s = poll_s
        self._trim = trim if trim is not None else _glibc_malloc_trim()
        self._clock = clock
        self._last = clock()
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: [idle seconds, function, pending]: see :meth:`on_idle`
        self._hooks: list[list[Any]] = []
        self.trims = 0

    def on_idle(self, fn: Callable[[], object], idle_s: float) -> None:
        """Call ``fn`` once the app has been idle for ``idle_s`` seconds after some activity
        (then collect and trim): for caches that only save time, whose memory should go back
        once nobody is using the app (the step windows' memo, app_pages/ui/instant.py)."""
        with self._lock:
            self._hooks.append([idle_s, fn, False])

    def touch(self) -> None:
        """A script run happened now: trim once it has been quiet for ``idle_s``."""
        with self._lock:
            self._last = self._clock()
            self._dirty = True
            for hook in self._hooks:
                hook[2] = True

    def poll(self) -> bool:
        """Collect and trim if there was activity and ``idle_s`` has passed since (first
        calling the :meth:`on_idle` functions whose time has come); True if it did."""
        with self._lock:
            idle = self._clock() - self._last
            due = [hook for hook in self._hooks if hook[2] and idle >= hook[0]]
            for hook in due:
                hook[2] = False
            main = self._dirty and idle >= self.idle_s
            if main:
                self._dirty = False
        if not main and not due:
            return False
        for hook in due:
            hook[1]()
        gc.collect()
        if self._trim is not None:
            self._trim()
        self.trims += 1
        return True

    def start(self) -> IdleTrimmer:
        """Run :meth:`poll` every ``poll_s`` seconds in a daemon thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="idle-trimmer", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()


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
    """What the URL carries: the sample, the step cursor, the settings that differ, and the
    reviewer's notes pinned to steps."""

    sample: str = DEFAULT_SAMPLE
    step: int = -1
    overrides: dict[str, Any] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)
    #: The sample's concurrent groups pinned to these turn orders (``schedule=`` of a finding
    #: link, explorer.interleavings.job.encode_schedule), or None: the sample as it is.
    schedule: list[list[str]] | None = None


#: Review notes a link may carry, and the characters of each (a URL stays a few KB).
MAX_NOTES = 20
MAX_NOTE_CHARS = 500
#: The longest ``notes`` a link may carry, as it stands in the URL (percent-encoded): the server
#: refuses a request line much past 16 KB with its own error page (uvicorn's h11 limit) before
#: the app can say anything, so the app keeps its links well under it and says so when notes
#: would not fit (download the trace with its notes instead).
MAX_URL_NOTES_CHARS = 8_000
#: A step number in a link: ASCII digits only (``int`` alone also takes other scripts' digits,
#: spaces and underscores), at most this many of them.
STEP_DIGITS = 9
#: Query parameters other pages own (the Learn page's tour and stop): not "unknown".
OTHER_PAGE_PARAMS = frozenset({"tour", "stop"})


def parse_step_text(value: str) -> int:
    """A step (or a tour stop) from a link: an optional minus and 1 to STEP_DIGITS ASCII
    digits, as the CLI reads numbers. Raises ValueError saying what was expected."""
    text = str(value)
    body = text[1:] if text.startswith("-") else text
    if not (1 <= len(body) <= STEP_DIGITS and all("0" <= c <= "9" for c in body)):
        raise ValueError(f"expected an integer of at most {STEP_DIGITS} ASCII digits (0-9)")
    return int(text)


def url_notes_length(notes: Mapping[int, str]) -> int:
    """Characters ``notes`` take in a link, percent-encoded as the browser sends them."""
    from urllib.parse import quote

    return len(quote(encode_notes(notes), safe=""))


def decode_notes(value: str) -> dict[int, str]:
    """``notes``: a JSON list of ``[step, text]`` pairs. Raises ValueError with what is wrong."""
    if len(value) > MAX_URL_NOTES_CHARS:
        raise ValueError(f"longer than a link carries ({MAX_URL_NOTES_CHARS:,} characters)")
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, list) or len(data) > MAX_NOTES:
        raise ValueError(f"expected a list of at most {MAX_NOTES} [step, text] pairs")
    out: dict[int, str] = {}
    for item in data:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or type(item[0]) is not int
            or item[0] < 0
            or not isinstance(item[1], str)
        ):
            raise ValueError("each note is [step, text], step an integer >= 0")
        if len(item[1]) > MAX_NOTE_CHARS:
            raise ValueError(f"a note is over {MAX_NOTE_CHARS} characters")
        out[item[0]] = item[1]
    return out


def encode_notes(notes: Mapping[int, str]) -> str:
    return json.dumps([[k, notes[k]] for k in sorted(notes)], separators=(",", ":"))


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
                state.step = max(-1, parse_step_text(str(value)))
            except ValueError as exc:
                problems.append(f"URL: step={value!r} is not a step: {exc}")
        elif key == "notes":
            try:
                state.notes = decode_notes(str(value))
            except ValueError as exc:
                problems.append(f"URL: notes ignored: {exc}")
        elif key in OTHER_PAGE_PARAMS:
            pass
        elif key == "schedule" and str(value) not in SETTING_SPECS["schedule"].choices:
            # ``schedule`` names both a setting (its few words) and a finding's pinned turn
            # orders (CPU names in runs): a value the setting does not take is the orders.
            from explorer.interleavings.job import decode_schedule

            try:
                state.schedule = decode_schedule(str(value))
            except ValueError as exc:
                problems.append(
                    f"URL: schedule={str(value)[:80]!r} ignored: {exc} (expected one of "
                    f"{', '.join(SETTING_SPECS['schedule'].choices)}, or a finding's turn "
                    "orders like vcpu0*2.vcpu1)"
                )
        elif key in SETTING_SPECS:
            spec = SETTING_SPECS[key]
            try:
                state.overrides[key] = spec.check(spec.from_text(str(value)))
            except ValueError as exc:
                problems.append(f"URL: setting {key}={value!r}: {exc} (expected {spec.expected})")
        else:
            problems.append(f"URL: unknown parameter {key!r} ignored")
    return state, problems


def encode_view_state(
    sample: str,
    step: int,
    settings: Settings,
    base: Settings,
    notes: Mapping[int, str] | None = None,
    schedule: str = "",
) -> dict[str, str]:
    """Query parameters for a link that reproduces the view (only settings that differ from
    ``base``, the trace's own settings; the review notes when there are any and they fit a
    link, MAX_URL_NOTES_CHARS; the app refuses to pin a note past that). ``schedule``: the
    pinned turn orders of a sample opened from a finding (encoded); they take the parameter
    over the ``schedule`` setting, which a pinned group ignores anyway."""
    out = {"sample": sample, "step": str(step)}
    for key, value in settings.to_dict().items():
        if getattr(base, key) != value:
            out[key] = str(value)
    if schedule:
        out["schedule"] = schedule
    if notes and url_notes_length(notes) <= MAX_URL_NOTES_CHARS:
        out["notes"] = encode_notes(notes)
    return out


def notes_in_trace(events: Sequence[Any], tl: Any, notes: Mapping[int, str]) -> list[Any]:
    """``events`` with each review note as a ``note`` event just before the event its step
    belongs to (in that event's group: same ``t``), its text prefixed with the step, so a
    downloaded trace carries the notes into any viewer (a note is an instant step of its own:
    the steps after it move on by one per note)."""
    from explorer.model.events import Note

    by_event: dict[int, list[str]] = {}
    for step, text in sorted(notes.items()):
        if 0 <= step < tl.nr_steps:
            e = tl.step(step).event
            if e >= 0:
                by_event.setdefault(e, []).append(f"[review note, step {step}] {text}")
    out: list[Any] = []
    for i, ev in enumerate(events):
        for text in by_event.get(i, ()):
            out.append(Note(t=ev.t, text=text))
        out.append(ev)
    return out


@dataclass(frozen=True)
class KnobWidget:
    """How the sidebar edits one setting, read from :data:`SETTING_SPECS` (the parser's limits),
    so that every value a trace header may hold is also a value of its widget.

    ``kind`` is ``"select"`` (``choices``), ``"number"`` (``lo..hi`` by ``step``) or ``"text"``
    (an integer range wider than a browser number holds: parse with :func:`parse_knob_text`).
    """

    kind: str
    choices: tuple[Any, ...]
    lo: int
    hi: int
    step: int
    expected: str


def knob_widget(name: str) -> KnobWidget:
    spec = SETTING_SPECS[name]
    if spec.choices:
        kind = "select"
    elif spec.lo >= -JS_MAX_SAFE_INTEGER and spec.hi <= JS_MAX_SAFE_INTEGER:
        kind = "number"
    else:
        kind = "text"
    return KnobWidget(
        kind, tuple(spec.choices), spec.lo, spec.hi, 2 if spec.even else 1, spec.expected
    )


def parse_knob_text(name: str, text: str) -> int:
    """The value of a setting typed as text (decimal or 0x hex), checked as the parser checks
    it; raises ``ValueError`` with a message naming the setting and what is expected."""
    spec = SETTING_SPECS[name]
    try:
        value: int = spec.check(spec.from_text(text))
    except ValueError as exc:
        raise ValueError(f"{name}={text!r}: {exc} (expected {spec.expected})") from None
    return value


@dataclass(frozen=True)
class RejectedUpload:
    """What the app keeps of an upload it refused: its name and its problems, plain data only
    (never the exception: its traceback holds the upload's decompressed bytes)."""

    source: str
    problems: tuple[Problem, ...]


def problem_rows(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """Rows of the problems table (line, column, reason, text, expected)."""
    return [
        {
            "line": p.line,
            "column": p.col,
            "reason": p.reason,
            "text": p.text,
            "expected": p.expected,
        }
        for p in problems
    ]


#: How far past an event's first step :func:`place_in` looks for a step of the same label (the
#: steps of concurrent events interleave, so an event's steps need not be contiguous).
PLACE_SCAN_STEPS = 4096


@dataclass(frozen=True)
class Place:
    """Where the cursor is, in terms that survive a new replay of the same trace: the replay it
    was taken in, the event (0-based; -1 before the first step) and the step's label."""

    replay: tuple[Any, ...]
    step: int
    event: int
    label: str


def place_in(tl: Any, event: int, label: str) -> int:
    """The step of ``tl`` (a :class:`explorer.replay.timeline.Timeline`) that best matches a step of
    another replay of the same trace: the first step of ``label`` within ``event``, else the
    event's first step; -1 for ``event < 0``; the last step if the event never ran."""
    if event < 0 or tl.nr_steps == 0:
        return -1
    if event >= tl.nr_events:
        return int(tl.nr_steps - 1)
    first = tl.first_step_of_event(event)
    if first is None:
        return int(tl.nr_steps - 1)
    for k, s in enumerate(tl.steps_between(first, first + PLACE_SCAN_STEPS)):
        if s.event == event and s.label == label:
            return int(first + k)
    return int(first)


@dataclass(frozen=True)
class StopNote:
    """Why a replay stopped, said the way a user can act on it."""

    headline: str
    detail: str
    livelock_step: int | None  # the step to show first, when the stop follows a livelock


def stop_note(diagnostics: Sequence[Any], stopped: Any, max_retries: int) -> StopNote:
    """The message for a replay that stopped at an impossible event (``stopped``, a
    Diagnostic). A fault that livelocked (a cache too small: ``dpamt_gets_per_fault`` 0) never
    maps its page, so a later zap of that page is "impossible": the cause is the livelock the
    README predicts, not a bad trace, and the message says so and points at it."""
    livelocks = [d for d in diagnostics if d.code == "LIVELOCK" and d.step <= max(stopped.step, 0)]
    if livelocks:
        first = livelocks[0]
        return StopNote(
            f"Livelock after {max_retries} retries, as the kernel would spin: see step "
            f"{first.step}. The fault never mapped its page, so the replay stopped later, at "
            f"trace line {stopped.line}.",
            f"{first.message}\nthen: {stopped.message}",
            first.step,
        )
    return StopNote(
        f"The replay stopped at an impossible event: trace line {stopped.line}. Everything "
        "before it can be explored.",
        stopped.message,
        None,
    )
