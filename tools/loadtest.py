"""``make loadtest``: N sessions against one ``streamlit run`` on loopback, without browsers.

Each session speaks Streamlit's own protocol on its websocket (``/_stcore/stream``): it sends
``BackMsg`` protobufs (``rerun_script`` with the URL's query string, then the Next button's
trigger, exactly what the browser sends on a click) and reads the ``ForwardMsg`` protobufs of
each run until ``script_finished``. With no browser on the machine the figures are the server's
alone (issue 29: ten Chromiums on two cores measured the browsers as much as the server).

Each session loads a sample (round robin over the library), then presses Next for the given
time; at the last step it presses First and goes on. It records:

- errors (must be 0): an exception element, a run that did not finish within
  :data:`RUN_TIMEOUT_S`, a closed websocket, or a step shown that is not the one this session
  asked for (the step after its own cursor, in its own trace: a session seeing another
  session's cursor or trace fails here);
- the latency from sending Next to ``script_finished`` (p50/p95);
- the server's resident memory every second: before the sessions (after one warm-up pass over
  the samples, so the replay cache is as full as it will be), at its peak, and for up to
  :data:`SETTLE_S` seconds after the last session closed, until it is back within
  :data:`BACK_TOLERANCE_MIB` of the start.

Only 127.0.0.1 is contacted; the sessions, the runs and the waits are all bounded in count and
time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
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


class Session:
    """One browser tab's worth of protocol: a websocket, the page, the widget ids it was sent."""

    def __init__(self, port: int, query: str) -> None:
        self.url = f"ws://127.0.0.1:{port}/_stcore/stream"
        self.query = query
        self.page_hash = ""
        self.buttons: dict[str, str] = {}
        self.ws: WebSocketClientConnection | None = None

    async def open(self) -> None:
        request = HTTPRequest(self.url, connect_timeout=10, request_timeout=10)
        self.ws = await websocket_connect(
            request, subprotocols=["streamlit"], max_message_size=64 << 20
        )

    async def rerun(self, trigger: str | None = None) -> Run:
        """Send a rerun (with ``trigger``: that button's click) and read the run to its end."""
        assert self.ws is not None
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = self.query
        state.page_script_hash = self.page_hash
        if trigger is not None:
            w = state.widget_states.widgets.add()
            w.id = self.buttons[trigger]
            w.trigger_value = True
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
            kind = fwd.WhichOneof("type")
            if kind == "new_session":
                self.page_hash = fwd.new_session.page_script_hash or self.page_hash
            elif kind == "delta":
                self._element(fwd, run)
            elif kind == "script_finished":
                run.seconds = time.monotonic() - start
                self.buttons.update(run.buttons)
                return run

    def _element(self, fwd: ForwardMsg, run: Run) -> None:
        delta = fwd.delta
        if delta.WhichOneof("type") != "new_element":
            return
        el = delta.new_element
        which = el.WhichOneof("type")
        if which == "exception":
            run.exceptions.append(f"{el.exception.type}: {el.exception.message}"[:200])
        elif which == "button":
            key = el.button.id.rsplit("-", 1)[-1]
            run.buttons[key] = el.button.id
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


async def drive(
    port: int, k: int, sample: str, title: str, seconds: float, think: float = 0.0
) -> dict[str, Any]:
    """Session ``k``: load ``sample`` (whose header says ``title``), then Next (First at the
    end) for ``seconds``, waiting ``think`` seconds after each answer (a reader's pace; 0: as
    fast as the server answers)."""
    result: dict[str, Any] = {"session": k, "sample": sample, "errors": [], "latencies": []}
    s = Session(port, f"sample={sample}")
    try:
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
        for _ in range(MAX_RUNS):
            if time.monotonic() > deadline:
                break
            at_end = total is not None and cursor >= total - 1
            run = await s.rerun("btn_first" if at_end else "btn_next")
            expect = -1 if at_end else cursor + 1
            if not at_end:
                result["latencies"].append(run.seconds * 1000)
            result["errors"] += run.exceptions
            # exactly the step this session asked for, in its own trace (its step count)
            if run.step != expect or run.steps != total or title not in run.texts:
                result["errors"].append(
                    f"asked for step {expect} of {total}, shown {run.step} of {run.steps}"
                )
                break
            cursor = expect
            if think:
                await asyncio.sleep(think)
    except Exception as exc:  # a load test reports failures, it does not stop at the first
        result["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
    finally:
        await s.close()
    return result


async def run(sessions: int, seconds: float, settle_s: float, think: float) -> dict[str, Any]:
    port = free_port()
    server = start_app(port)
    samples = [(s.name, s.title) for s in list_samples()]
    try:
        # warm-up: every sample once, so the start figure includes what any first load caches
        for name, title in samples:
            warm = await drive(port, -1, name, title, 0)
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
            *[drive(port, k, *samples[k % len(samples)], seconds, think) for k in range(sessions)]
        )
        wall = time.monotonic() - t0
        watcher.cancel()
        end = rss_mib(server.pid)
        after = [end]
        t_end = time.monotonic()
        back_s: float | None = 0.0 if end - start <= BACK_TOLERANCE_MIB else None
        while back_s is None and time.monotonic() - t_end < settle_s:
            await asyncio.sleep(1)
            after.append(rss_mib(server.pid))
            if after[-1] - start <= BACK_TOLERANCE_MIB:
                back_s = time.monotonic() - t_end
    finally:
        stop_app(server)
    lat = sorted(x for r in results for x in r["latencies"])
    errors = [f"session {r['session']} ({r['sample']}): {e}" for r in results for e in r["errors"]]
    return {
        "sessions": sessions,
        "seconds": seconds,
        "think_s": think,
        "wall_s": round(wall, 1),
        "nexts": len(lat),
        "errors": len(errors),
        "error_list": errors[:20],
        "next_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "next_p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
        "next_max_ms": round(lat[-1], 1) if lat else None,
        "server_rss_start_mib": round(start, 1),
        "server_rss_peak_mib": round(max(rss), 1),
        "server_rss_at_end_mib": round(end, 1),
        "server_rss_last_mib": round(after[-1], 1),
        "back_to_start_s": None if back_s is None else round(back_s, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python tools/loadtest.py")
    p.add_argument("--sessions", type=int, default=30)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--settle", type=float, default=SETTLE_S, help="seconds to watch memory after")
    p.add_argument(
        "--think", type=float, default=0.0, help="seconds each session waits between clicks"
    )
    args = p.parse_args()
    if not 1 <= args.sessions <= MAX_SESSIONS or not 0 < args.seconds <= 3600:
        p.error(f"--sessions 1..{MAX_SESSIONS}, --seconds up to 3600")
    if not 0 <= args.think <= 60 or not 0 <= args.settle <= 600:
        p.error("--think 0..60, --settle 0..600")
    report = asyncio.run(run(args.sessions, args.seconds, args.settle, args.think))
    print(json.dumps(report, indent=2))
    ok = (
        report["errors"] == 0
        and report["next_p95_ms"] is not None
        and report["next_p95_ms"] <= 1000
        and report["back_to_start_s"] is not None
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
