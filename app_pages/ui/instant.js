// Instant steps (issue 27): the step view of Explore drawn in the browser from a window of steps
// (explorer/views/window.py), stepped by the keys and the stepper's buttons without a rerun.
// The server is told the shown step after IDLE_MS without a step, or at once when the next step
// would leave the window; its reply re-centres the window without moving the shown step.
const IDLE_MS = 500;
const KEYS = { ArrowRight: 'next', ArrowLeft: 'prev', Home: 'first', End: 'last', ' ': 'play' };
const BUTTONS = { btn_next: 'next', btn_prev: 'prev', btn_first: 'first', btn_last: 'last', btn_play: 'play' };

function loadPlotly(src) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__dpamtPlotly) {
    window.__dpamtPlotly = new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src;
      s.onload = () => resolve(window.Plotly);
      s.onerror = () => reject(new Error('plotly.js did not load from ' + src));
      document.head.appendChild(s);
    });
  }
  return window.__dpamtPlotly;
}

function typing(e) {
  for (const t of (e.composedPath ? e.composedPath() : [e.target])) {
    if (!t || !t.tagName) continue;
    if (['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName) || t.isContentEditable) return true;
    const role = t.getAttribute && t.getAttribute('role');
    if (['slider', 'combobox', 'listbox', 'tab', 'option'].includes(role)) return true;
  }
  return false;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function markdownish(s) {
  // the header's only markup: **bold** and `code` (the text is ours, escaped first)
  const esc = s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return esc.replace(/\*\*([^*]+)\*\*/g, '<b>$1</b>').replace(/`([^`]+)`/g, '<code>$1</code>');
}

function mapFigure(w, patch) {
  const heat = Object.assign({}, w.map_base.data[0]);
  const z = heat.z.map((row) => row.slice());
  const text = heat.text ? heat.text.map((row) => row.slice()) : null;
  const cols = z[0].length;
  for (const [k, value, hover] of patch.cells) {
    const r = Math.floor(k / cols), c = k % cols;
    z[r][c] = value;
    if (text) text[r][c] = hover;
  }
  heat.z = z;
  if (text) heat.text = text;
  const data = [heat];
  if (patch.outline) data.push(patch.outline);
  return { data, layout: themed(w, patch.layout || w.map_base.layout) };
}

// The page's theme: on a dark page the figures take the window's page_template (plotly_dark,
// see-through backgrounds; explorer/views/window.py's page_template), on light their own.
function themed(w, layout) {
  return w.page_template ? Object.assign({}, layout, { template: w.page_template }) : layout;
}

function draw(st) {
  const w = st.w, i = st.step;
  const s = w.steps[i - w.lo];
  if (!s) return;
  const P = window.Plotly;
  if (P) {
    const m = mapFigure(w, s.map);
    P.react(st.mapDiv, m.data, m.layout, st.config.map);
    const layout = Object.assign({}, s.caches.layout);
    if (!layout.template && w.caches_template) layout.template = w.caches_template;
    P.react(st.cacheDiv, s.caches.data, themed(w, layout), st.config.caches);
  }
  st.header.innerHTML = markdownish(s.text.header);
  st.narration.textContent = s.text.narration;
  st.event.textContent = s.text.event_line;
  st.diag.replaceChildren(...s.text.diagnostics.map(([kind, code, message, isError]) => {
    const d = el('div', isError ? 'diag error' : 'diag warning');
    d.append(el('b', '', kind + ': ' + code), el('pre', '', message));
    return d;
  }));
  st.note.textContent = s.note ? 'Review note on this step: ' + s.note : '';
  st.note.style.display = s.note ? '' : 'none';
  const blocks = s.code.length ? s.code : [{ caption: w.no_code, listing: null }];
  st.code.replaceChildren(...blocks.flatMap((b) => {
    const out = [el('div', 'caption', b.caption)];
    if (b.listing !== null) out.push(el('pre', 'listing', b.listing));
    return out;
  }));
  st.locks.textContent = s.locks.join('\n');
  st.root.dataset.step = String(i);
  // the step box shows the shown step at once (its value; the server's own follows the report)
  const box = document.querySelector('.st-key-goto_step input');
  if (box && document.activeElement !== box) box.value = String(i);
  st.shown.push(i);  // every step drawn, in order (the browser test checks Play skips none)
  if (st.shown.length > 1000) st.shown.shift();
}

// One report in flight at a time (each is a rerun of the page); a step the server has not
// answered yet is remembered so that its reply does not move the shown step back. Reports are
// numbered (seq): the server applies only a newer one and echoes the last it applied, so an
// answer to an older report (a rerun still drawing step 24 while Play is at 33) is known as one.
function report(st, now) {
  clearTimeout(st.timer);
  const send = () => {
    const step = want(st);
    if (st.sent === step) return;
    st.sent = step;
    st.inflight = step;
    st.seq = (st.seq || 0) + 1;
    st.setStateValue('report', { step, seq: st.seq });
  };
  const outside = st.pending !== undefined;
  if (outside || (now && st.inflight === undefined)) send();
  else st.timer = setTimeout(send, now ? 50 : IDLE_MS);
}

function go(st, target) {
  const w = st.w;
  target = Math.max(-1, Math.min(w.nr_steps - 1, target));
  if (target === want(st)) return;
  if (target < w.lo || target > w.hi) {
    // outside the window: the step shown stays (marked as waiting) until the re-centred window
    // arrives, which then shows this step at once (no key is lost, the page is not stuck)
    st.pending = target;
    st.root.classList.add('waiting');
    report(st, true);
    return;
  }
  st.pending = undefined;
  st.root.classList.remove('waiting');
  st.step = target;
  draw(st);
  // near the window's edge: ask for a re-centred window now (the step is still drawn here).
  // The trace's own ends are not edges: the server keeps a window that reaches them (_window
  // in instant.py), so a step there is reported after the quiet time like any other
  const below = w.lo <= -1 ? Infinity : target - w.lo;
  const above = w.hi >= w.nr_steps - 1 ? Infinity : w.hi - target;
  report(st, Math.min(below, above) < w.margin);
}

// The step the user asked for last: a step beyond the window waits there for its window.
function want(st) { return st.pending !== undefined ? st.pending : st.step; }

function act(st, what) {
  const w = st.w;
  if (what === 'play') { togglePlay(st); return; }
  stopPlay(st);
  if (what === 'next') go(st, want(st) + 1);
  else if (what === 'prev') go(st, want(st) - 1);
  else if (what === 'first') go(st, -1);
  else if (what === 'last') go(st, w.nr_steps - 1);
}

function stopPlay(st) {
  if (!st.playing) return;
  clearInterval(st.playing);
  st.playing = null;
  st.playLabel('Play');
  report(st, true);
}

function togglePlay(st) {
  if (st.playing) { stopPlay(st); return; }
  const period = st.w.period_ms;
  let t0 = performance.now(), from = st.step;
  st.playLabel('Pause');
  // by the clock, as the server's Play does (a late tick still leaves playing at its speed),
  // and never past the window: at its edge playing waits for the re-centred window (asked
  // MARGIN steps before), so every step is drawn, at the speed unless the server is late
  st.playing = setInterval(() => {
    if (st.step >= st.w.nr_steps - 1) { stopPlay(st); return; }
    const due = from + Math.floor((performance.now() - t0) / period) + 1;
    const next = Math.min(st.step + 1, due);
    if (next <= st.step) return;
    if (next > st.w.hi) {  // wait for the window; the clock restarts from here
      report(st, true);
      t0 = performance.now(); from = st.step;
      return;
    }
    go(st, next);
  }, Math.max(16, period / 4));
}

// The stepper's step box, event box and slider: in this view a user's edit of them is the
// page's request, drawn here at once (the step box and the slider) or asked of the server (the
// event box: it knows which step begins an event); the server takes no request from what these
// widgets send back, which may be a copy of an older step it drew (app_pages/ui/boxes.py).
const BOXES = { goto_step: 'step', goto_event: 'event' };

function boxOf(e) {
  for (const t of (e.composedPath ? e.composedPath() : [e.target])) {
    if (!t || !t.closest) continue;
    for (const [key, kind] of Object.entries(BOXES)) {
      const box = t.closest('.st-key-' + key);
      if (box) return { kind, box, input: box.querySelector('input') };
    }
  }
  return null;
}

function sliderValue() {
  // Streamlit's slider keeps its value in a hidden range input (react-aria)
  const input = document.querySelector('.st-key-step_slider input[type="range"]');
  const v = input ? Number(input.value) : NaN;
  return Number.isInteger(v) ? v : null;
}

function commit(st, kind, raw) {
  if (raw === null || raw === undefined || String(raw).trim() === '') return;
  const v = Number(raw);
  if (!Number.isInteger(v)) return;
  stopPlay(st);
  if (kind === 'event') {
    st.seq = (st.seq || 0) + 1;
    st.sent = undefined;  // the server's answer places the step
    st.inflight = want(st);
    st.setStateValue('report', { step: want(st), seq: st.seq, event: v });
  } else {
    go(st, v);
  }
}

function installBoxes(st) {
  // typed into a box: committed by Enter or by leaving it, as Streamlit commits it
  window.addEventListener('input', (e) => {
    const b = st.root && st.root.isConnected ? boxOf(e) : null;
    if (b) st.edited = b.kind;  // an input event: the user's typing, never a value set by code
  }, true);
  const done = (e) => {
    const b = st.root && st.root.isConnected ? boxOf(e) : null;
    if (!b || !b.input || st.edited !== b.kind) return;
    st.edited = undefined;
    commit(st, b.kind, b.input.value);
  };
  window.addEventListener('keydown', (e) => { if (e.key === 'Enter') done(e); }, true);
  window.addEventListener('focusout', done, true);
  // the boxes' + and - buttons and the slider: their value once Streamlit has drawn it
  let sliding = false;
  window.addEventListener('pointerdown', (e) => {
    if (!st.root || !st.root.isConnected) return;
    const path = e.composedPath ? e.composedPath() : [e.target];
    sliding = path.some((t) => t && t.closest && t.closest('.st-key-step_slider'));
    const b = boxOf(e);
    const stepper = path.some((t) => t && t.dataset && /^stNumberInputStep/.test(t.dataset.testid || ''));
    if (b && stepper) setTimeout(() => commit(st, b.kind, b.input && b.input.value), 0);
  }, true);
  window.addEventListener('pointerup', () => {
    if (!sliding) return;
    sliding = false;
    setTimeout(() => commit(st, 'step', sliderValue()), 0);
  }, true);
  window.addEventListener('keyup', (e) => {
    if (!st.root || !st.root.isConnected) return;
    const t = e.target;
    if (t && t.closest && t.closest('.st-key-step_slider') && /^(Arrow|Home|End|Page)/.test(e.key)) {
      setTimeout(() => commit(st, 'step', sliderValue()), 0);
    }
  }, true);
}

function install(st) {
  installBoxes(st);
  window.addEventListener('keydown', (e) => {
    const what = KEYS[e.key];
    if (!what || !st.root.isConnected || e.ctrlKey || e.metaKey || e.altKey || e.shiftKey || typing(e)) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    const t0 = performance.now();
    act(st, what);
    // key press to the step drawn, in the page (tools/step_latency.py reads it)
    requestAnimationFrame(() => st.times.push(performance.now() - t0));
  }, true);
  window.addEventListener('click', (e) => {
    if (!st.root.isConnected) return;
    for (const [key, what] of Object.entries(BUTTONS)) {
      const b = e.target.closest && e.target.closest('.st-key-' + key + ' button');
      if (b) {
        e.preventDefault();
        e.stopImmediatePropagation();
        act(st, what);
        return;
      }
    }
  }, true);
  st.playLabel = (label) => {
    const b = document.querySelector('.st-key-btn_play button p') || document.querySelector('.st-key-btn_play button');
    if (b) b.textContent = label;
  };
}

// The server sends its data as UTF-8 JSON bytes (app_pages/ui/instant.py: encoded once per
// window, not on every run); plain JSON is taken too.
function decoded(data) {
  if (data instanceof Uint8Array || data instanceof ArrayBuffer) {
    return JSON.parse(new TextDecoder().decode(data));
  }
  return data;
}

export default function (component) {
  const { parentElement, setStateValue } = component;
  const data = decoded(component.data);
  window.__dpamtInstant = window.__dpamtInstant || {};
  let st = window.__dpamtInstant;
  let root = parentElement.querySelector('.instant');
  if (!root) {
    root = el('div', 'instant');
    const left = el('div', 'left'), right = el('div', 'right');
    st.mapDiv = el('div', 'map');
    st.cacheDiv = el('div', 'caches');
    left.append(st.mapDiv, st.cacheDiv);
    st.header = el('div', 'header');
    st.narration = el('pre', 'narration');
    st.event = el('pre', 'event');
    st.diag = el('div', 'diags');
    st.note = el('div', 'note');
    st.code = el('div', 'code');
    st.locks = el('pre', 'locks');
    right.append(st.header, st.narration, st.event, st.diag, st.note, st.code, st.locks);
    root.append(left, right);
    parentElement.appendChild(root);
    st.root = root;  // a new root (a remount) keeps the shown step: the reply decides
  }
  if (!st.installed) { st.times = []; st.shown = []; install(st); st.installed = true; }
  st.setStateValue = setStateValue;
  st.config = data.config;
  const prevCursor = st.serverCursor;
  // an answer to an older report than this page's latest: its cursor is not a request (the
  // newer report, applied after it, puts the server's cursor on this page's step)
  const stale = st.step !== undefined && (data.seq || 0) < (st.seq || 0);
  const inside = (w, i) => i >= w.lo && i <= w.hi;
  if (!stale || inside(data.window, want(st)) || !st.w) {
    st.w = data.window;  // else the old window, which holds the step shown, stays
    st.w.margin = data.margin;
    st.w.period_ms = data.period_ms;
  }
  if (!stale) st.inflight = undefined;
  // the server's cursor is a step this page reported (the answer to its latest report): the
  // shown step stays; else, if it answers the latest report, the server moved it (a jump, the
  // slider, a link); an answer to an older report never moves it
  const serverMoved = !stale && !data.from_client && data.cursor !== prevCursor;
  if (st.step === undefined || serverMoved) {
    st.step = data.cursor;
    st.sent = data.cursor;
    st.inflight = undefined;
    st.pending = undefined;
  } else if (st.pending !== undefined && st.pending >= st.w.lo && st.pending <= st.w.hi) {
    st.step = st.pending;  // the step asked beyond the old window: shown now
    st.pending = undefined;
  } else if (st.pending === undefined && (st.step < st.w.lo || st.step > st.w.hi)) {
    st.step = data.cursor;  // cannot happen for a reply to this page; a stale page follows
    st.sent = data.cursor;
  }
  st.root.classList.toggle('waiting', st.pending !== undefined);
  if (st.sent !== want(st)) {
    report(st, st.pending !== undefined || Math.min(st.step - st.w.lo, st.w.hi - st.step) < st.w.margin);
  }
  if (!stale) st.serverCursor = data.cursor;
  draw(st);
  loadPlotly(data.plotly_src).then(() => draw(st)).catch((err) => {
    st.mapDiv.textContent = String(err);
  });
}
