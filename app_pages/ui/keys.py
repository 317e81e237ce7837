"""Explore's keys (Right, Left, Home, End, Space), bound once for the page by a small component.

Why not the buttons' own ``shortcut=``: Streamlit binds a button's shortcut when the button's
React component mounts, and widgets are code-split chunks loaded on demand. On a loaded machine
the step text (a Markdown element) is drawn first and the buttons' chunk seconds later: a key
pressed in between, on a page that looks ready, was dropped (measured with another process using
a core: 3 of 5 deep links lost their first Right; the browser sent nothing). Here one listener
on the document is installed by a component drawn above the stepper; a key clicks its button,
and a key pressed before the button is there waits for it (``QUEUE_MS`` at most). The step's
header stays hidden (``STEP_HEADER_CSS``) until the listener is in place: what the lecturer sees
as ready takes keys.

A key also waits until the view's charts have drawn and, until that has once held with the app
between runs for ``SETTLE_MS``, until the app is between runs: a rerun asked in the seconds after
a deep link, while Plotly's code was still loading, ran on the server but its new step was never
drawn (the page stayed on the old step until another message; 5 of 6 tries, by the old
shortcuts, a click or a component's state alike; 0 of 6 once the charts had drawn). After that
first settle keys go at once: a server-drawn Play reruns on every tick, and under load the app
was never between runs long enough for Space to pause it.
"""

from __future__ import annotations

import json

import streamlit as st

#: The key -> the button it presses (by its widget key).
KEYS = {
    "ArrowRight": "btn_next",
    "ArrowLeft": "btn_prev",
    "Home": "btn_first",
    "End": "btn_last",
    " ": "btn_play",
}
#: How long a key waits for its button to be drawn (ms) before it is dropped.
QUEUE_MS = 60_000
#: The charts of the step view (widget keys): a key waits until each has drawn.
CHARTS = ("chart_region_map", "chart_pamt_cache")
#: How long the app must have been between runs before a queued key is sent (ms).
SETTLE_MS = 400
#: Set on <body> once the listener is installed; the step header is visible only then.
READY_CLASS = "dpamt-keys"
STEP_HEADER_KEY = "step_header"
STEP_HEADER_CSS = (
    f".st-key-{STEP_HEADER_KEY}{{visibility:hidden}}"
    f"body.{READY_CLASS} .st-key-{STEP_HEADER_KEY}{{visibility:visible}}"
)

_JS = """
const KEYS = %(keys)s;
const QUEUE_MS = %(queue_ms)d;
const CHARTS = %(charts)s;
function typing(e) {
  for (const t of (e.composedPath ? e.composedPath() : [e.target])) {
    if (!t || !t.tagName) continue;
    if (['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName) || t.isContentEditable) return true;
    const role = t.getAttribute && t.getAttribute('role');
    if (['slider', 'combobox', 'listbox', 'tab', 'option'].includes(role)) return true;
  }
  return false;
}
// The app is between runs: a rerun asked while the page's first run is still going was run
// by the server but its new step was not drawn until the next message.
function idle(k) {
  const app = document.querySelector('[data-testid="stApp"]');
  const running = app && app.getAttribute('data-test-script-state') === 'running';
  const now = performance.now();
  if (running || k.idleSince === undefined) k.idleSince = running ? undefined : now;
  return !running && now - k.idleSince >= %(settle_ms)d;
}
// Every chart of the view has drawn: a rerun whose reply came while Plotly's code was still
// loading was never drawn (the page stayed on the old step until another message).
function drawn() {
  return CHARTS.every((key) => document.querySelector('.st-key-' + key + ' .main-svg'));
}
function pump(k) {
  while (k.queue.length) {
    const [key, at] = k.queue[0];
    if (performance.now() - at > QUEUE_MS) { k.queue.shift(); continue; }
    const b = document.querySelector('.st-key-' + key + ' button');
    if (!b || b.disabled || !drawn()) break;
    // the settle wait guards the page's first runs only: once the app has been between runs
    // with its charts drawn, keys go at once (a server-drawn Play reruns every tick, so under
    // load it is never idle for SETTLE_MS, and Space could not pause it)
    if (!k.settled) {
      if (!idle(k)) break;
      k.settled = true;
    }
    k.queue.shift();
    b.click();
  }
  if (k.queue.length && !k.timer) {
    k.timer = setTimeout(() => { k.timer = null; pump(k); }, 50);
  }
}
export default function () {
  window.__dpamtKeys = window.__dpamtKeys || { queue: [], timer: null };
  const k = window.__dpamtKeys;
  if (!k.installed) {
    k.installed = true;
    document.addEventListener('keydown', (e) => {
      const button = KEYS[e.key];
      if (!button || e.ctrlKey || e.metaKey || e.altKey || e.shiftKey || typing(e)) return;
      // Explore's stepper is on show (on another page the key is left alone)
      if (!document.querySelector('.st-key-%(header)s')) return;
      e.preventDefault();
      e.stopImmediatePropagation();
      k.queue.push([button, performance.now()]);
      pump(k);
    }, true);
  }
  document.body.classList.add('%(ready)s');
}
"""

_component = st.components.v2.component(
    "dpamt_stepkeys",
    js=_JS
    % {
        "keys": json.dumps(KEYS),
        "queue_ms": QUEUE_MS,
        "ready": READY_CLASS,
        "header": STEP_HEADER_KEY,
        "settle_ms": SETTLE_MS,
        "charts": json.dumps(CHARTS),
    },
)


def step_keys() -> None:
    """Mount the page's key listener (drawn as nothing; call it above the stepper)."""
    _component(key="stepkeys")
