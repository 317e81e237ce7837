"""``make loadtest``: N sessions against one ``streamlit run`` on loopback, without browsers.

Each session speaks Streamlit's own protocol on its websocket (``/_stcore/stream``): it sends
``BackMsg`` protobufs (``rerun_script`` with the URL's query string, then the Next button's
trigger, exactly what the browser sends on a click) and reads the ``ForwardMsg`` protobufs of
each run until ``script_finished``. With no browser on the machine the figures are the server's
alone (issue 29: ten Chromiums on two cores measured the browsers as much as the server).

Each session loads a sample (round robin over the library), then presses Next for the given
time; at the last step it presses First and goes on. Its pace (:data:`DEFAULT_PACE_S`): a press
every 1 to 2 s (uniformly drawn, from the previous press, seeded by the session's number), like a
class following a lecturer's slides; a press whose answer came later than that follows at once.
``--pace 0 0`` presses again as soon as the answer came (no pause: the server's throughput);
``--think S`` waits S seconds after each answer instead. It records:

- errors (must be 0): an exception element, a run that did not finish within
  :data:`RUN_TIMEOUT_S`, a closed websocket, or a step shown that is not the one this session
  asked for (the step after its own cursor, in its own trace: a session seeing another
  session's cursor or trace fails here);
- the latency of Next (p50/p95; the server view: from sending it to ``script_finished``; the
  instant view: what it waits for, below) and, in the instant view, of each report of the page's
  step (from sending it to ``script_finished``);
- the server's resident memory: once it answers its health check (``boot``: no page run yet);
  at the start, after one warm-up session per sample has loaded its page and pressed Next a few
  times (the first runs import the app's modules and Plotly's validators and fill the replay
  cache: memory no session frees, so the start is measured after them); every second during the
  sessions (the peak); at their end; and every second for :data:`SETTLE_S` seconds after the
  last session closed (the last of them, and when it was first back within
  :data:`BACK_TOLERANCE_MIB` of the start).

Two views (``--view``). ``instant``, the app's default (the server runs with
``DPAMT_INSTANT=1``): Next moves the step in the page from the window of steps the server sent,
with no server run; the page reports its step after its quiet time, or at once near the window's
edge, and that report is a run of the step view's fragment (:func:`drive_instant` does what
app_pages/ui/instant.js does, and checks each answer: its seq, its cursor, its window, its trace).
A Next that leaves the window waits for the re-centred window: its wait is the answer's time;
inside the window it waits for nothing (0: the page draws it, 50-80 ms in Chromium,
docs/lecture.md). ``server``: the server-drawn view (``DPAMT_INSTANT=0``), each Next a run;
:func:`drive` reads the step shown from the view's header. In both, a widget of the step view
reruns only its fragment, as the browser asks, and the messages a session already holds are named
by their hashes, as the browser does (the server then sends a reference, not the message again).

Only 127.0.0.1 is contacted; the sessions, the runs and the waits are all bounded in count and
time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from appserver import free_port, start_app, stop_app  # noqa: E402

from explorer.appsupport import list_samples  # noqa: E402

#: Seconds one script run may take before the session counts an error and gives up.
RUN_TIMEOUT_S = 60.0
#: Runs one session makes at most (a bound whatever the duration).
MAX_RUNS = 20_000
#: Seconds the server's memory is watched after the last session closed.
SETTLE_S = 60.0
#: "Back to its start": within this many MiB of the start.
BACK_TOLERANCE_MIB = 10.0
#: What the Explore page prints for the cursor (app_pages/explore.py).
STEP_TEXT = re.compile(r"\*\*Step (\d+)\*\* of (\d+) steps")
BEFORE_TEXT = re.compile(r"\*\*Before the first step\*\* \(of (\d+) steps")
MAX_SESSIONS = 100
#: Seconds from one press to the next, drawn uniformly in this range: a class stepping along
#: with a lecturer (a slide every 1 to 2 s at the quickest).
DEFAULT_PACE_S = (1.0, 2.0)
#: Next presses of each warm-up session (the page's first runs after a load import more).
WARM_NEXTS = 3


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 1024


@dataclass
class Run:
    """What one script run sent back."""

    seconds: float
    step: int | None = None
    steps: int | None = None
    buttons: dict[str, str] = field(default_factory=dict)  # key -> widget id
    texts: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    #: The instant view's data (its window's bounds, the cursor, the report seq) and its id.
    instant: dict[str, Any] | None = None
    instant_id: str = ""


class Session:
    """One browser tab's worth of protocol: a websocket, the page, the widget ids it was sent."""

    def __init__(self, port: int, query: str) -> None:
        self.url = f"ws://127.0.0.1:{port}/_stcore/stream"
        self.query = query
        self.page_hash = ""
        self.buttons: dict[str, str] = {}
        self.ws: WebSocketClientConnection | None = None
        #: The fragment each widget was drawn in: a widget of a fragment reruns only that
        #: fragment, as the browser asks (Explore's step view is one, app_pages/explore.py).
        self.fragments: dict[str, str] = {}
        #: Messages kept by their hash, whose hashes each rerun sends back as the browser does
        #: (``cached_message_hashes``): the server then sends a reference, not the message again.
        self.cache: dict[str, ForwardMsg] = {}
        self.instant_id = ""  # the instant view's widget id, once a run drew it

    async def open(self) -> None:
        request = HTTPRequest(self.url, connect_timeout=10, request_timeout=10)
        self.ws = await websocket_connect(
            request, subprotocols=["streamlit"], max_message_size=64 << 20
        )

    async def rerun(self, trigger: str | None = None, report: dict[str, int] | None = None) -> Run:
        """Send a rerun (with ``trigger``: that button's click; with ``report``: the instant
        view's state, as its page sets it after a step: app_pages/ui/instant.js) and read the
        run to its end."""
        assert self.ws is not None
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = self.query
        state.page_script_hash = self.page_hash
        widget = ""
        if trigger is not None:
            w = state.widget_states.widgets.add()
            w.id = widget = self.buttons[trigger]
            w.trigger_value = True
        if report is not None:
            w = state.widget_states.widgets.add()
            w.id = widget = self.instant_id
            w.json_value = json.dumps({"report": report})
        state.fragment_id = self.fragments.get(widget, "")
        state.cached_message_hashes.extend(self.cache)
        start = time.monotonic()
        await self.ws.write_message(msg.SerializeToString(), binary=True)
        run = Run(0.0)
        deadline = start + RUN_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the run did not finish in {RUN_TIMEOUT_S:g} s")
            raw = await asyncio.wait_for(self.ws.read_message(), left)
            if raw is None:
                raise ConnectionError("the server closed the websocket")
            if isinstance(raw, str):
                continue
            fwd = ForwardMsg()
            fwd.ParseFromString(raw)
            if fwd.WhichOneof("type") == "ref_hash":
                if fwd.ref_hash not in self.cache:
                    raise RuntimeError("the server referred to a message this session never got")
                fwd = self.cache[fwd.ref_hash]
            elif fwd.metadata.cacheable and fwd.hash:
                self.cache[fwd.hash] = fwd
            kind = fwd.WhichOneof("type")
            if kind == "new_session":
                self.page_hash = fwd.new_session.page_script_hash or self.page_hash
            elif kind == "delta":
                self._element(fwd, run)
            elif kind == "script_finished":
                run.seconds = time.monotonic() - start
                self.buttons.update(run.buttons)
                self.instant_id = run.instant_id or self.instant_id
                return run

    def _element(self, fwd: ForwardMsg, run: Run) -> None:
        delta = fwd.delta
        if delta.WhichOneof("type") != "new_element":
            return
        el = delta.new_element
        which = el.WhichOneof("type")
        if delta.fragment_id:
            wid = getattr(getattr(el, which), "id", "") if which else ""
            if isinstance(wid, str) and wid:
                self.fragments[wid] = delta.fragment_id
        if which == "exception":
            run.exceptions.append(f"{el.exception.type}: {el.exception.message}"[:200])
        elif which == "button":
            key = el.button.id.rsplit("-", 1)[-1]
            run.buttons[key] = el.button.id
        elif which == "bidi_component":
            comp = el.bidi_component  # the instant view's data: JSON bytes (or JSON text)
            data = json.loads(
                comp.bytes if comp.WhichOneof("data") == "bytes" else comp.json or "null"
            )
            if isinstance(data, dict) and isinstance(data.get("window"), dict):
                w = data["window"]
                run.instant_id = el.bidi_component.id
                run.instant = {
                    "cursor": data.get("cursor"),
                    "seq": data.get("seq"),
                    "lo": w.get("lo"),
                    "hi": w.get("hi"),
                    "nr_steps": w.get("nr_steps"),
                    "margin": data.get("margin"),
                }
        elif which == "markdown":
            body = el.markdown.body
            run.texts.append(body)
            m = STEP_TEXT.search(body)
            if m:
                run.step, run.steps = int(m.group(1)), int(m.group(2))
            b = BEFORE_TEXT.search(body)
            if b:
                run.step, run.steps = -1, int(b.group(1))

    async def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


@contextlib.asynccontextmanager
async def _opened(port: int, sample: str, result: dict[str, Any]) -> AsyncIterator[Session]:
    """A session for ``sample``'s page (the caller opens it: a failure to connect is then one
    of ``result``'s errors too), closed at the end; a failure is one of ``result``'s errors (a
    load test reports failures, it does not stop at the first)."""
    s = Session(port, f"sample={sample}")
    try:
        yield s
    except Exception as exc:
        result["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
    finally:
        await s.close()


async def _pause(wait: float, deadline: float) -> None:
    """Wait ``wait`` seconds (the session's pace), never past its ``deadline``."""
    if wait > 0:
        await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))


async def drive(
    port: int,
    k: int,
    sample: str,
    title: str,
    seconds: float,
    think: float = 0.0,
    pace: tuple[float, float] = (0.0, 0.0),
    max_nexts: int = MAX_RUNS,
) -> dict[str, Any]:
    """Session ``k``: load ``sample`` (whose header says ``title``), then Next (First at the
    end) for ``seconds`` (at most ``max_nexts`` presses): each press ``pace`` seconds after the
    previous one (drawn uniformly, seeded by ``k``; at once if its answer came later), then
    ``think`` seconds after each answer (0 and 0: as fast as the server answers)."""
    rng = random.Random(k)
    result: dict[str, Any] = {"session": k, "sample": sample, "errors": [], "latencies": []}
    async with _opened(port, sample, result) as s:
        await s.open()
        first = await s.rerun()
        if first.exceptions:
            result["errors"] += first.exceptions
        if title not in first.texts or first.step != -1 or not first.steps:
            result["errors"].append(f"the page does not show {sample} before its first step")
        if "btn_next" not in s.buttons or "btn_first" not in s.buttons:
            result["errors"].append(f"no Next/First button: {sorted(s.buttons)}")
            return result
        cursor, total = -1, first.steps
        deadline = time.monotonic() + seconds
        for _ in range(min(max_nexts, MAX_RUNS)):
            pressed = time.monotonic()
            if pressed > deadline:
                break
            at_end = total is not None and cursor >= total - 1
            run = await s.rerun("btn_first" if at_end else "btn_next")
            expect = -1 if at_end else cursor + 1
            if not at_end:
                result["latencies"].append(run.seconds * 1000)
            result["errors"] += run.exceptions
            # exactly the step this session asked for, in its own trace (its step count; the
            # title is drawn outside the step view's fragment, so a Next's run does not redraw it)
            if run.step != expect or run.steps != total:
                result["errors"].append(
                    f"asked for step {expect} of {total}, shown {run.step} of {run.steps}"
                )
                break
            cursor = expect
            await _pause(max(think, pressed + rng.uniform(*pace) - time.monotonic()), deadline)
    return result


#: The instant page's quiet time before it reports its step (app_pages/ui/instant.js IDLE_MS).
IDLE_S = 0.5


async def drive_instant(
    port: int,
    k: int,
    sample: str,
    title: str,
    seconds: float,
    think: float = 0.0,
    pace: tuple[float, float] = (0.0, 0.0),
    max_nexts: int = MAX_RUNS,
) -> dict[str, Any]:
    """Session ``k`` on the instant view (the app's default), as its page behaves
    (app_pages/ui/instant.js): Next moves the step in the browser when it is inside the window
    the server sent (no wait: ``next_wait`` 0), else waits for the re-centred window (the wait
    is the reply's time); the page reports its step at once near the window's edge, else after
    :data:`IDLE_S` of quiet, and the server's run answers it (``reports``, from sending to
    ``script_finished``). An answer must echo this session's report (its seq), put the cursor on
    its step, in its own trace (its step count), inside the window it sends."""
    rng = random.Random(k)
    result: dict[str, Any] = {
        "session": k,
        "sample": sample,
        "errors": [],
        "latencies": [],
        "reports": [],
    }
    seq = 0

    async def report(s: Session, step: int, total: int) -> dict[str, Any] | None:
        nonlocal seq
        seq += 1
        answer = await s.rerun(report={"step": step, "seq": seq})
        result["reports"].append(answer.seconds * 1000)
        result["errors"] += answer.exceptions
        w = answer.instant
        if (
            w is None
            or w["seq"] != seq
            or w["cursor"] != step
            or not w["lo"] <= step <= w["hi"]
            or w["nr_steps"] != total
        ):
            result["errors"].append(f"reported step {step} (seq {seq}) of {total}, answer {w}")
            return None
        return w

    async with _opened(port, sample, result) as s:
        await s.open()
        first = await s.rerun()
        result["errors"] += first.exceptions
        w = first.instant
        if w is None or w["cursor"] != -1 or not w["nr_steps"] or not s.instant_id:
            result["errors"].append(f"the page does not show {sample}'s instant view at -1")
            return result
        total, step = int(w["nr_steps"]), -1
        deadline = time.monotonic() + seconds
        for _ in range(min(max_nexts, MAX_RUNS)):
            pressed = time.monotonic()
            if pressed > deadline:
                break
            target = -1 if step >= total - 1 else step + 1
            if not w["lo"] <= target <= w["hi"]:  # waits for its window
                got = await report(s, target, total)
                if got is None:
                    break
                w = got
                result["latencies"].append((time.monotonic() - pressed) * 1000)
                step = target
            else:
                step = target
                result["latencies"].append(0.0)  # drawn in the browser, from the window
                next_at = pressed + rng.uniform(*pace)
                # (the trace's own ends are not edges: the page's rule, instant.js's go())
                below = step - w["lo"] if w["lo"] > -1 else math.inf
                above = w["hi"] - step if w["hi"] < total - 1 else math.inf
                if min(below, above) < w["margin"]:
                    got = await report(s, step, total)  # near the edge: at once
                elif next_at - time.monotonic() > IDLE_S or think > 0:
                    await asyncio.sleep(IDLE_S)
                    got = await report(s, step, total)
                else:
                    got = w  # the next press comes before the page's quiet time
                if got is None:
                    break
                w = got
                await _pause(max(think, next_at - time.monotonic()), deadline)
    return result


async def run(
    sessions: int,
    seconds: float,
    settle_s: float,
    think: float,
    pace: tuple[float, float],
    view: str = "instant",
) -> dict[str, Any]:
    """The load test on ``view``: ``instant`` (the app's default, :func:`drive_instant`) or
    ``server`` (the server-drawn view, DPAMT_INSTANT=0, :func:`drive`)."""
    port = free_port()
    # the server inherits it: each session starts on that view
    os.environ["DPAMT_INSTANT"] = "1" if view == "instant" else "0"
    driver = drive_instant if view == "instant" else drive
    server = start_app(port)
    samples = [(s.name, s.title) for s in list_samples()]
    try:
        boot = rss_mib(server.pid)
        # warm-up: every sample loaded, a few Nexts, so the start figure includes what any first
        # run imports and caches (modules, Plotly's validators, the replay cache)
        for name, title in samples:
            warm = await driver(port, -1, name, title, 60, max_nexts=WARM_NEXTS)
            if warm["errors"]:
                raise RuntimeError(f"warm-up on {name}: {warm['errors'][:3]}")
        await asyncio.sleep(2)
        start = rss_mib(server.pid)
        rss = [start]

        async def watch() -> None:
            while True:
                await asyncio.sleep(1)
                rss.append(rss_mib(server.pid))

        watcher = asyncio.create_task(watch())
        t0 = time.monotonic()
        results = await asyncio.gather(
            *[
                driver(port, k, *samples[k % len(samples)], seconds, think, pace)
                for k in range(sessions)
            ]
        )
        wall = time.monotonic() - t0
        watcher.cancel()
        end = rss_mib(server.pid)
        after = [end]
        t_end = time.monotonic()
        back_s: float | None = 0.0 if end - start <= BACK_TOLERANCE_MIB else None
        while time.monotonic() - t_end < settle_s:
            await asyncio.sleep(1)
            after.append(rss_mib(server.pid))
            if back_s is None and after[-1] - start <= BACK_TOLERANCE_MIB:
                back_s = time.monotonic() - t_end
    finally:
        stop_app(server)
    lat = sorted(x for r in results for x in r["latencies"])
    reports = sorted(x for r in results for x in r.get("reports", []))
    errors = [f"session {r['session']} ({r['sample']}): {e}" for r in results for e in r["errors"]]
    return {
        "view": view,
        "sessions": sessions,
        "seconds": seconds,
        "think_s": think,
        "pace_s": list(pace),
        "wall_s": round(wall, 1),
        "nexts": len(lat),
        "nexts_per_s": round(len(lat) / wall, 1) if wall else None,
        "errors": len(errors),
        "error_list": errors[:20],
        "next_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "next_p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
        "next_max_ms": round(lat[-1], 1) if lat else None,
        # instant view: the page's reports of its step and the server's answers (the runs)
        "reports": len(reports),
        "report_p50_ms": round(statistics.median(reports), 1) if reports else None,
        "report_p95_ms": round(reports[int(0.95 * (len(reports) - 1))], 1) if reports else None,
        "server_rss_boot_mib": round(boot, 1),
        "server_rss_start_mib": round(start, 1),
        "server_rss_peak_mib": round(max(rss), 1),
        "server_rss_at_end_mib": round(end, 1),
        "server_rss_last_mib": round(after[-1], 1),
        "settle_s": settle_s,
        "back_to_start_s": None if back_s is None else round(back_s, 1),
    }


#: Samples whose figures ``--figures`` times: a small trace and the longest in the library.
FIGURE_SAMPLES = ("td_lifecycle", "workload_two_tds")


def figure_cost(samples: tuple[str, ...] = FIGURE_SAMPLES, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per call of the two figures every Next rebuilds (the Explore page's map and
    caches chart, as ``app_pages/ui/state_panel.py`` calls them), the best of ``repeats`` passes
    over up to 60 steps of each sample spread over its replay: the server's share of a Next that
    the figures are, without Streamlit or a network."""
    from explorer.appsupport import sample_bytes
    from explorer.cli.main import resolve_settings
    from explorer.ingest import parse_trace
    from explorer.model.records import Snapshot
    from explorer.replay.timeline import replay
    from explorer.views.caches import pamt_cache_figure
    from explorer.views.region_map import region_map

    out: dict[str, float] = {}
    for name in samples:
        trace = parse_trace(sample_bytes(name), name)
        tl = replay(trace.events, resolve_settings(trace, []))
        steps = list(range(-1, tl.nr_steps))[:: max(1, tl.nr_steps // 60)]
        states = [(tl.state_at(i), tl.changed_regions(i) if i >= 0 else []) for i in steps]
        region_map(*states[0])  # the first call imports Plotly's validators: not timed
        pamt_cache_figure(states[0][0])

        def draw_map(snap: Snapshot, changed: list[int]) -> object:
            return region_map(snap, changed, height=520)

        def draw_caches(snap: Snapshot, changed: list[int]) -> object:
            return pamt_cache_figure(snap, height=260)

        draws: tuple[tuple[str, Callable[[Snapshot, list[int]], object]], ...] = (
            ("region_map", draw_map),
            ("pamt_cache_figure", draw_caches),
        )
        for label, draw in draws:
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                for snap, changed in states:
                    draw(snap, changed)
                best = min(best, (time.perf_counter() - t0) / len(states))
            out[f"{name} {label} ms"] = round(best * 1000, 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python tools/loadtest.py")
    p.add_argument("--sessions", type=int, default=30)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--settle", type=float, default=SETTLE_S, help="seconds to watch memory after")
    p.add_argument(
        "--pace",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help=f"seconds from one press to the next, drawn in [LO, HI] (default "
        f"{DEFAULT_PACE_S[0]:g} {DEFAULT_PACE_S[1]:g}; 0 0: no pause)",
    )
    p.add_argument(
        "--think",
        type=float,
        default=None,
        help="seconds each session waits after each answer, instead of --pace",
    )
    p.add_argument(
        "--view",
        choices=("instant", "server"),
        default="instant",
        help="the step view the sessions drive: instant (the app's default: Next is drawn in "
        "the browser, the page reports its step) or server (each Next a server run)",
    )
    p.add_argument(
        "--figures",
        action="store_true",
        help="only time the map and caches figures (ms per call), no server",
    )
    args = p.parse_args()
    if args.figures:
        print(json.dumps(figure_cost(), indent=2))
        return 0
    if not 1 <= args.sessions <= MAX_SESSIONS or not 0 < args.seconds <= 3600:
        p.error(f"--sessions 1..{MAX_SESSIONS}, --seconds up to 3600")
    if args.think is not None and args.pace is not None:
        p.error("--think or --pace, not both")
    think = args.think if args.think is not None else 0.0
    pace = (0.0, 0.0) if args.think is not None else tuple(args.pace or DEFAULT_PACE_S)
    if not 0 <= think <= 60 or not 0 <= pace[0] <= pace[1] <= 60 or not 0 <= args.settle <= 600:
        p.error("--think 0..60, --pace LO HI with 0 <= LO <= HI <= 60, --settle 0..600")
    report = asyncio.run(
        run(args.sessions, args.seconds, args.settle, think, (pace[0], pace[1]), args.view)
    )
    print(json.dumps(report, indent=2))
    ok = (
        report["errors"] == 0
        and report["next_p95_ms"] is not None
        and report["next_p95_ms"] <= 1000
        and (report["report_p95_ms"] or 0) <= 1000
        and report["back_to_start_s"] is not None
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
