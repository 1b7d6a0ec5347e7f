// colony's live dashboard. It polls GET /v1/status of the node that served it,
// which gathers every node of the cluster, and computes rates and latencies from
// the difference between two answers, node by node. Each series keeps the last
// five minutes (and at most MAX_POINTS points), so the page holds the same
// memory after an hour as after five minutes. The charts are SVG drawn here.
//
// Every name that comes from the cluster enters the DOM as text (textContent,
// Text nodes, attribute values), never as markup; the page's policy
// (Content-Security-Policy) allows no inline script besides.
'use strict';

(() => {
  const POLL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const MIN_SPAN_MS = 30 * 1000; // a fresh page's charts span what it has seen, at least this
  const MIN_RATE_MS = 500; // a rate over less (a poll right after a button's) would be noise
  const MAX_POINTS = 600; // a series' points; 150 at one poll every 2 s
  const MAX_SERIES = 200; // series a chart keeps; more are not recorded
  const MAX_DRAWN = 10; // lines a chart draws, the highest first
  const MAX_MESSAGES = 6;
  const STATUS_TIMEOUT_MS = 10000;
  const ACTION_TIMEOUT_MS = 120000; // a rolling reload waits for each node
  const TOKEN_KEY = 'colony.token';
  const SVG = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#4fa3ff', '#3fb950', '#d29922', '#a371f7', '#f778ba', '#39c5cf',
    '#ff7b72', '#e3b341', '#7ee787', '#79c0ff', '#d2a8ff', '#ffa657'];
  const KIND_COLOURS = {
    HandlerPanicked: '#f85149', Timeout: '#d29922', Overloaded: '#e3b341',
    ServiceFailed: '#ff7b72', NodeDown: '#f778ba', NoSuchService: '#a371f7',
    BadRequest: '#79c0ff', Rejected: '#39c5cf', Application: '#7ee787',
  };

  const CHARTS = [
    { id: 'requests', title: 'Requests /s', note: 'by service, whole cluster', format: rate },
    { id: 'errors', title: 'Errors /s', note: 'by service and kind; (calls): failed on the way', format: rate },
    { id: 'latency', title: 'Latency', note: 'p99 solid, p50 dashed', format: ms, max: true },
    { id: 'restarts', title: 'Restarts', note: 'per sample: workers by service, and nodes', format: count, whole: true },
    { id: 'queued', title: 'Queued requests', note: 'waiting for a free worker', format: count, whole: true },
    { id: 'pubsub', title: 'Pub/sub /s', note: 'messages published, delivered, dropped', format: rate },
  ];

  const state = {
    token: loadToken(),
    prev: new Map(), // node name -> its last snapshot
    nodeRestarts: new Map(), // node name -> restarts its spawner counted
    history: new Map(), // chart id -> Map(series name -> series)
    charts: new Map(), // chart id -> its elements
    details: new Map(), // service -> its <details>
    pending: new Set(), // actions in flight, by key
    colours: new Map(), // service -> colour
    timer: 0,
    last: null,
    since: 0, // when the page first heard the cluster
  };

  // ---------------------------------------------------------------- the DOM

  const $ = (id) => document.getElementById(id);

  // An element with `props` (class, text, or attributes) and children; strings
  // become Text nodes.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child !== undefined && child !== null) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function badge(text) {
    return el('span', { class: 'badge ' + tone(text), text });
  }

  function tone(stateText) {
    const s = String(stateText || '');
    if (s === 'running' || s === 'online') return 'ok';
    if (s === 'down' || s === 'errored' || s.startsWith('failed')) return 'bad';
    if (s === 'stopped') return 'idle';
    return 'warn';
  }

  // ----------------------------------------------------------- formatting

  function num(v) {
    return typeof v === 'number' && Number.isFinite(v) ? v : 0;
  }

  function short(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toFixed(1) + 'M';
    if (a >= 1e4) return Math.round(v / 1e3) + 'k';
    if (a >= 1e3) return +(v / 1e3).toFixed(1) + 'k';
    if (a >= 100) return String(Math.round(v));
    if (a >= 10) return String(+v.toFixed(1));
    return String(+v.toFixed(2));
  }

  function rate(v) {
    return v === null || v === undefined ? '–' : short(v);
  }

  function count(v) {
    return v === null || v === undefined ? '–' : short(v);
  }

  function ms(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return '–';
    if (v >= 1000) return +(v / 1000).toFixed(2) + ' s';
    return short(v) + ' ms';
  }

  function uptime(msecs) {
    const secs = Math.floor(num(msecs) / 1000);
    if (secs < 60) return secs + 's';
    if (secs < 3600) return Math.floor(secs / 60) + 'm' + (secs % 60) + 's';
    return Math.floor(secs / 3600) + 'h' + Math.floor((secs % 3600) / 60) + 'm';
  }

  function cpus(set) {
    if (!Array.isArray(set) || set.length === 0) return '–';
    const parts = [];
    for (let i = 0; i < set.length;) {
      let j = i;
      while (j + 1 < set.length && set[j + 1] === set[j] + 1) j++;
      parts.push(i === j ? String(set[i]) : set[i] + '-' + set[j]);
      i = j + 1;
    }
    return parts.join(',');
  }

  function clock(date) {
    return date.toTimeString().slice(0, 8);
  }

  // ------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, kind, message) {
      super(message);
      this.status = status;
      this.kind = kind;
    }
  }

  function loadToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function saveToken(token) {
    state.token = token;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage off: the token lasts as long as the page */ }
    $('forget-token').hidden = !token;
  }

  // Calls the node's API; the answer's JSON, or an ApiError with the kind and
  // message of the API's {"error":{"kind","message"}}.
  async function api(method, path, body, timeoutMs) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const abort = new AbortController();
    init.signal = abort.signal;
    const limit = timeoutMs || STATUS_TIMEOUT_MS;
    const timer = setTimeout(() => abort.abort(), limit);
    try {
      let response;
      try {
        response = await fetch(path, init);
      } catch (e) {
        const why = abort.signal.aborted ? 'no answer within ' + limit / 1000 + ' s' : e.message;
        throw new ApiError(0, 'NodeDown', 'cannot reach the node (' + why + ')');
      }
      let data = null;
      try {
        data = await response.json();
      } catch (_) { /* not JSON: the status says enough */ }
      if (!response.ok) {
        const error = data && data.error ? data.error : {};
        throw new ApiError(response.status, String(error.kind || 'HTTP ' + response.status),
          String(error.message || response.statusText || 'request failed'));
      }
      return data;
    } finally {
      clearTimeout(timer);
    }
  }

  function isTokenError(e) {
    return e instanceof ApiError && (e.status === 401 || (e.status === 403 && /token/i.test(e.message)));
  }

  function askToken(e) {
    $('token-reason').textContent = state.token
      ? 'The node refused this token (' + e.message + '). Enter its API token:'
      : 'This node needs its API token (api.token_file):';
    $('token-panel').hidden = false;
    $('token-input').focus();
  }

  // ----------------------------------------------------------- messages

  function message(ok, title, kind, text) {
    const list = $('messages');
    const dismiss = el('button', { type: 'button', class: 'ghost small', text: 'dismiss' });
    const item = el('li', { class: ok ? 'ok' : 'error' },
      el('span', { class: 'kind', text: title }),
      kind ? el('span', { class: 'mono', text: kind }) : null,
      el('span', { text }),
      dismiss);
    dismiss.addEventListener('click', () => item.remove());
    list.prepend(item);
    while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
    if (ok) setTimeout(() => item.remove(), 8000);
  }

  // Runs an action of a button: asks first, calls the API, says what it answered.
  async function act(key, question, method, path, body, done) {
    if (state.pending.has(key)) return;
    if (question && !window.confirm(question)) return;
    state.pending.add(key);
    render();
    try {
      const answer = await api(method, path, body, ACTION_TIMEOUT_MS);
      message(true, key, '', done(answer || {}));
    } catch (e) {
      if (isTokenError(e)) askToken(e);
      message(false, key + ' failed', e.kind || 'Error', e.message);
    } finally {
      state.pending.delete(key);
      render();
      poll();
    }
  }

  // --------------------------------------------------- counters to rates

  // What a node reports, as the page compares it between polls.
  function snapshot(node) {
    const services = new Map();
    for (const s of Array.isArray(node.services) ? node.services : []) {
      const served = s.served || {};
      services.set(String(s.name), {
        requests: num(served.requests),
        errors: served.errors && typeof served.errors === 'object' ? served.errors : {},
        latency: Array.isArray(served.latency_ms) ? served.latency_ms : [],
        restarts: (Array.isArray(s.workers) ? s.workers : []).reduce((n, w) => n + num(w.restarts), 0),
      });
    }
    const failures = node.call_failures && typeof node.call_failures === 'object' ? node.call_failures : {};
    return { pid: num(node.pid), uptime: num(node.uptime_ms), services, pubsub: node.pubsub || {}, failures };
  }

  const EMPTY_SERVICE = { requests: 0, errors: {}, latency: [], restarts: 0 };

  function addTo(map, key, value) {
    map.set(key, (map.get(key) || 0) + value);
  }

  function addError(m, key, kind, value) {
    addTo(m.errors, key, value);
    m.errorKinds.set(key, kind);
  }

  // Latency buckets of `cur` less those of `base`: [bound in ms, requests].
  function bucketDelta(cur, base) {
    const before = new Map(base.map(([bound, n]) => [bound, num(n)]));
    return cur.map(([bound, n]) => [num(bound), Math.max(0, num(n) - (before.get(bound) || 0))]);
  }

  // The latency under which a fraction q of the requests finished, interpolated
  // within its bucket (as Prometheus' histogram_quantile); null without requests.
  function quantile(q, buckets, overflow) {
    const bounds = [...buckets.keys()].sort((a, b) => a - b);
    const total = bounds.reduce((n, b) => n + buckets.get(b), 0) + overflow;
    if (total <= 0) return null;
    const rank = q * total;
    let below = 0;
    let lower = 0;
    for (const bound of bounds) {
      const n = buckets.get(bound);
      if (n > 0 && below + n >= rank) return lower + (bound - lower) * Math.min(1, Math.max(0, (rank - below) / n));
      below += n;
      lower = bound;
    }
    return null;
  }

  // The cluster between the last poll and this one: rates per service (each
  // node's change over its own uptime, so a late poll or a throttled tab does
  // not skew them), latency from the buckets' change, gauges as they are.
  function measure(nodes) {
    const m = {
      rated: false,
      requests: new Map(), errors: new Map(), errorKinds: new Map(), restarts: new Map(), queued: new Map(),
      inFlight: new Map(), latency: new Map(), pubsub: new Map(),
      all: { buckets: new Map(), overflow: 0 },
    };
    const next = new Map();
    if (nodes.length) addTo(m.restarts, 'nodes', 0);
    for (const node of nodes) {
      const name = String(node.name);
      for (const s of Array.isArray(node.services) ? node.services : []) {
        addTo(m.queued, String(s.name), num(s.queued));
        const held = (Array.isArray(s.workers) ? s.workers : []).reduce((n, w) => n + num(w.in_flight), 0);
        addTo(m.inFlight, String(s.name), held);
      }
      const lastRestarts = state.nodeRestarts.get(name);
      if (lastRestarts !== undefined && num(node.restarts) > lastRestarts) {
        addTo(m.restarts, 'nodes', num(node.restarts) - lastRestarts);
      }
      state.nodeRestarts.set(name, num(node.restarts));
      const cur = snapshot(node);
      const prev = state.prev.get(name);
      if (cur.uptime <= 0) {
        // Not reporting (down, or known only to its spawner): keep what it said last.
        if (prev) next.set(name, prev);
        continue;
      }
      if (!prev) {
        next.set(name, cur);
        continue;
      }
      const restarted = prev.pid !== cur.pid || cur.uptime < prev.uptime;
      if (!restarted && cur.uptime - prev.uptime < MIN_RATE_MS) {
        next.set(name, prev); // the next poll measures from the same point
        continue;
      }
      next.set(name, cur);
      const base = restarted ? { uptime: 0, services: new Map(), pubsub: {}, failures: {} } : prev;
      const dt = (cur.uptime - base.uptime) / 1000;
      if (!(dt > 0)) continue;
      m.rated = true;
      for (const [svc, now] of cur.services) {
        const was = base.services.get(svc) || EMPTY_SERVICE;
        addTo(m.requests, svc, Math.max(0, now.requests - was.requests) / dt);
        addTo(m.restarts, svc, Math.max(0, now.restarts - was.restarts));
        for (const [kind, n] of Object.entries(now.errors)) {
          if (num(n) > 0) addError(m, svc + ' · ' + kind, kind, Math.max(0, num(n) - num(was.errors[kind])) / dt);
        }
        const delta = bucketDelta(now.latency, was.latency);
        const lat = m.latency.get(svc) || { buckets: new Map(), overflow: 0 };
        let inBuckets = 0;
        for (const [bound, n] of delta) {
          addTo(lat.buckets, bound, n);
          addTo(m.all.buckets, bound, n);
          inBuckets += n;
        }
        const over = Math.max(0, now.requests - was.requests - inBuckets);
        lat.overflow += over;
        m.all.overflow += over;
        m.latency.set(svc, lat);
      }
      for (const [svc, kinds] of Object.entries(cur.failures)) {
        for (const [kind, n] of Object.entries(kinds || {})) {
          const was = base.failures[svc] ? num(base.failures[svc][kind]) : 0;
          if (num(n) > 0) addError(m, svc + ' · ' + kind + ' (calls)', kind, Math.max(0, num(n) - was) / dt);
        }
      }
      for (const key of ['published', 'delivered', 'dropped']) {
        addTo(m.pubsub, key, Math.max(0, num(cur.pubsub[key]) - num(base.pubsub[key])) / dt);
      }
    }
    state.prev = next;
    for (const name of [...state.nodeRestarts.keys()]) {
      if (!nodes.some((n) => String(n.name) === name)) state.nodeRestarts.delete(name);
    }
    return m;
  }

  // ------------------------------------------------------------- history

  function colourOf(service) {
    return state.colours.get(service) || PALETTE[0];
  }

  function assignColours(nodes) {
    const names = new Set();
    for (const node of nodes) for (const s of node.services || []) names.add(String(s.name));
    const sorted = [...names].sort();
    state.colours = new Map(sorted.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
    state.colours.set('nodes', '#ff7b72');
  }

  function record(chart, name, t, value, style) {
    let series = state.history.get(chart);
    if (!series) state.history.set(chart, (series = new Map()));
    let s = series.get(name);
    if (!s) {
      if (series.size >= MAX_SERIES) return;
      series.set(name, (s = { name, points: [] }));
    }
    Object.assign(s, style);
    s.points.push([t, value]);
    if (s.points.length > MAX_POINTS) s.points.splice(0, s.points.length - MAX_POINTS);
  }

  function prune(now) {
    const from = now - WINDOW_MS;
    for (const series of state.history.values()) {
      for (const [name, s] of series) {
        let drop = 0;
        while (drop < s.points.length && s.points[drop][0] < from) drop++;
        if (drop) s.points.splice(0, drop);
        if (!s.points.some((p) => p[1] !== null)) series.delete(name);
      }
    }
  }

  function keep(now, m) {
    for (const [svc, n] of m.queued) record('queued', svc, now, n, { colour: colourOf(svc) });
    if (m.rated) {
      for (const [svc, r] of m.requests) record('requests', svc, now, r, { colour: colourOf(svc) });
      for (const [key, r] of m.errors) {
        const kind = m.errorKinds.get(key);
        record('errors', key, now, r, { colour: KIND_COLOURS[kind] || PALETTE[0], dashed: key.endsWith(' (calls)') });
      }
      for (const [svc, lat] of m.latency) {
        record('latency', svc + ' p99', now, quantile(0.99, lat.buckets, lat.overflow), { colour: colourOf(svc) });
        record('latency', svc + ' p50', now, quantile(0.5, lat.buckets, lat.overflow), { colour: colourOf(svc), dashed: true });
      }
      for (const [key, n] of m.restarts) record('restarts', key, now, n, { colour: colourOf(key) });
      const pubsubColours = { published: '#4fa3ff', delivered: '#3fb950', dropped: '#f85149' };
      for (const [key, r] of m.pubsub) record('pubsub', key, now, r, { colour: pubsubColours[key] });
    }
    prune(now);
  }

  // --------------------------------------------------------------- charts

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * e) return m * e;
    return 10 * e;
  }

  function buildCharts() {
    const root = $('charts');
    for (const def of CHARTS) {
      const now = el('span', { class: 'now' });
      const plot = svg('svg', { viewBox: '0 0 480 170', role: 'img', 'aria-label': def.title });
      const legend = el('div', { class: 'legend' });
      const card = el('div', { class: 'chart', id: 'chart-' + def.id, 'data-chart': def.id, 'data-points': '0' },
        el('h3', {}, el('span', { text: def.title }), now),
        el('div', { class: 'muted', text: def.note }),
        plot, legend);
      root.append(card);
      state.charts.set(def.id, { def, card, now, plot, legend });
    }
  }

  function drawChart(chart, t) {
    const { def, card, plot, legend } = chart;
    const W = 480, H = 170, L = 44, R = 6, T = 8, B = 18;
    const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, t - state.since));
    const from = t - span;
    const all = [...(state.history.get(def.id) || new Map()).values()];
    const peak = (s) => s.points.reduce((m, p) => (p[1] !== null && p[1] > m ? p[1] : m), 0);
    const drawn = all.sort((a, b) => peak(b) - peak(a) || (a.name < b.name ? -1 : 1)).slice(0, MAX_DRAWN);
    let top = niceMax(drawn.reduce((m, s) => Math.max(m, peak(s)), 0) * 1.05);
    if (def.whole) top = Math.max(4, Math.ceil(top / 4) * 4); // whole numbers on the axis
    const x = (time) => L + ((time - from) / span) * (W - L - R);
    const y = (v) => H - B - (v / top) * (H - T - B);

    plot.replaceChildren();
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      plot.append(svg('line', { class: i ? 'gridline' : 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const label = svg('text', { x: L - 6, y: y(v) + 3.5, 'text-anchor': 'end' });
      label.textContent = def.format(v).replace(' ms', '');
      plot.append(label);
    }
    const step = [5, 10, 15, 30, 60].map((s) => s * 1000).find((s) => span / s <= 6) || 60000;
    for (let back = 0; back <= span; back += step) {
      const anchor = back === 0 ? 'end' : back + step > span ? 'start' : 'middle';
      const label = svg('text', { x: x(t - back), y: H - 4, 'text-anchor': anchor });
      label.textContent = back === 0 ? 'now' : step < 60000 ? '-' + back / 1000 + 's' : '-' + back / 60000 + 'm';
      plot.append(label);
    }
    let points = 0;
    let samples = 0;
    let max = 0;
    for (const s of drawn) {
      let drawnHere = 0;
      let d = '';
      let pen = false;
      let single = null;
      let run = 0;
      for (const [time, v] of s.points) {
        if (v === null || time < from) {
          pen = false;
          continue;
        }
        const px = x(time).toFixed(1);
        const py = y(v).toFixed(1);
        d += (pen ? 'L' : 'M') + px + ' ' + py;
        run = pen ? run + 1 : 1;
        single = run === 1 ? [px, py] : null;
        pen = true;
        drawnHere++;
        max = Math.max(max, v);
      }
      points += drawnHere;
      samples = Math.max(samples, drawnHere);
      const attrs = { class: 'series' + (s.dashed ? ' dashed' : ''), stroke: s.colour, d };
      if (d) plot.append(svg('path', attrs));
      if (single) plot.append(svg('circle', { cx: single[0], cy: single[1], r: 2.2, fill: s.colour }));
    }
    if (points === 0) {
      const empty = svg('text', { class: 'empty', x: (L + W) / 2, y: H / 2, 'text-anchor': 'middle' });
      empty.textContent = 'waiting for data…';
      plot.append(empty);
    }
    // For tests and scripts: points drawn in all, in the longest line, and the
    // highest value drawn.
    card.dataset.points = String(points);
    card.dataset.samples = String(samples);
    card.dataset.series = String(drawn.length);
    card.dataset.max = String(+max.toFixed(3));

    legend.replaceChildren();
    for (const s of drawn) {
      const swatch = el('i', { class: s.dashed ? 'dashed' : '' });
      swatch.style.background = s.colour;
      swatch.style.borderColor = s.colour;
      const latest = [...s.points].reverse().find((p) => p[1] !== null);
      legend.append(el('span', {}, swatch, s.name + ' ', el('span', { class: 'muted', text: def.format(latest ? latest[1] : null) })));
    }
    if (all.length > drawn.length) legend.append(el('span', { class: 'muted', text: '+' + (all.length - drawn.length) + ' more' }));
    chart.now.textContent = headline(def, drawn);
  }

  // The figure next to a chart's title: the sum of the latest values (the worst
  // for latency).
  function headline(def, drawn) {
    let total = null;
    for (const s of drawn) {
      const last = s.points[s.points.length - 1];
      if (!last || last[1] === null) continue;
      total = def.max ? Math.max(total || 0, last[1]) : (total || 0) + last[1];
    }
    return total === null ? '' : def.format(total);
  }

  // ---------------------------------------------------------------- tables

  function tile(label, value, small, cls) {
    return el('div', { class: 'tile' + (cls ? ' ' + cls : '') },
      el('div', { class: 'label', text: label }),
      el('div', { class: 'value' }, value, small ? el('small', { text: ' ' + small }) : null));
  }

  function renderTiles(nodes, m) {
    const up = nodes.filter((n) => n.state === 'running').length;
    let workers = 0;
    let running = 0;
    for (const n of nodes) {
      for (const s of n.services || []) {
        for (const w of s.workers || []) {
          workers++;
          if (w.state === 'running') running++;
        }
      }
    }
    const sum = (map) => [...map.values()].reduce((a, b) => a + b, 0);
    const rps = m && m.rated ? sum(m.requests) : null;
    const eps = m && m.rated ? sum(m.errors) : null;
    const p99 = m && m.rated ? quantile(0.99, m.all.buckets, m.all.overflow) : null;
    const pubsub = m && m.rated ? m.pubsub : new Map();
    $('tiles').replaceChildren(
      tile('Nodes up', String(up), '/ ' + nodes.length, up < nodes.length ? 'bad' : ''),
      tile('Workers running', String(running), '/ ' + workers, running < workers ? 'warn' : ''),
      tile('Requests /s', rate(rps)),
      tile('Errors /s', rate(eps), '', eps > 0 ? 'bad' : ''),
      tile('Latency p99', ms(p99)),
      tile('Pub/sub delivered /s', rate(pubsub.has('delivered') ? pubsub.get('delivered') : null),
        pubsub.has('published') ? rate(pubsub.get('published')) + ' published' : ''),
    );
  }

  function actionButton(label, key, cls, onClick) {
    const button = el('button', { type: 'button', class: 'small ' + cls, text: state.pending.has(key) ? label + '…' : label });
    button.disabled = state.pending.has(key);
    button.addEventListener('click', onClick);
    return button;
  }

  function renderNodes(nodes) {
    const rows = nodes.map((n) => {
      const name = String(n.name);
      const services = (n.services || []).map((s) => s.name + ' ×' + (s.workers || []).length).join(', ');
      const reload = actionButton('Reload', 'reload ' + name, '', () =>
        act('reload ' + name, 'Reload node ' + name + '? Its process restarts after draining; other nodes carry the load.',
          'POST', '/v1/reload', { node: name },
          (a) => 'reloaded ' + (Array.isArray(a.reloaded) && a.reloaded.length ? a.reloaded.join(', ') : 'nothing')));
      const kill = actionButton('Kill', 'kill ' + name, 'danger', () =>
        act('kill ' + name, 'Kill node ' + name + '? Its process exits with code 1, as a crash would.',
          'POST', '/v1/kill', { node: name }, () => 'killed node ' + name + ' (exit code 1)'));
      return el('tr', { 'data-node': name },
        el('td', { class: 'name', text: name }),
        el('td', { text: String(n.role || '') }),
        el('td', {}, badge(String(n.state || ''))),
        el('td', { class: 'num', text: n.pid ? String(n.pid) : '–' }),
        el('td', { class: 'mono', text: cpus(n.cpus) }),
        el('td', { class: 'num', text: String(num(n.restarts)) }),
        el('td', { class: 'num', text: n.state === 'running' || n.uptime_ms ? uptime(n.uptime_ms) : '–' }),
        el('td', { class: 'muted', text: services || '–' }),
        el('td', { class: 'act' }, reload, kill));
    });
    $('nodes').tBodies[0].replaceChildren(...rows);
    const down = nodes.filter((n) => n.state !== 'running').map((n) => n.name + ' ' + n.state);
    $('nodes-note').textContent = down.length ? down.join(' · ') : 'all running';
  }

  // Every service of the cluster, its workers on every node.
  function servicesOf(nodes) {
    const services = new Map();
    for (const n of nodes) {
      for (const s of n.services || []) {
        const name = String(s.name);
        let entry = services.get(name);
        if (!entry) services.set(name, (entry = { name, nodes: [], workers: [], queued: 0, states: new Set() }));
        entry.nodes.push(String(n.name));
        entry.queued += num(s.queued);
        entry.states.add(String(s.state || 'running'));
        for (const w of s.workers || []) entry.workers.push({ ...w, node: String(n.name) });
      }
    }
    return [...services.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  function stat(label, value) {
    return el('span', { class: 'stat' }, label + ' ', el('b', { text: value }));
  }

  function renderServices(nodes, m) {
    const services = servicesOf(nodes);
    const total = services.reduce((n, s) => n + s.workers.length, 0);
    const root = $('services');
    const seen = new Set();
    for (const s of services) {
      seen.add(s.name);
      let details = state.details.get(s.name);
      if (!details) {
        details = el('details', { class: 'service', 'data-service': s.name });
        details.open = total <= 40;
        state.details.set(s.name, details);
      }
      const worst = [...s.states].sort((a, b) => rank(b) - rank(a))[0] || 'running';
      const lat = m && m.rated ? m.latency.get(s.name) : null;
      const inFlight = s.workers.reduce((n, w) => n + num(w.in_flight), 0);
      const summary = el('summary', {},
        el('span', { class: 'svc', text: s.name }),
        el('span', {}, badge(worst)),
        stat('workers', s.workers.length + ' on ' + s.nodes.length + (s.nodes.length === 1 ? ' node' : ' nodes')),
        stat('req/s', m && m.rated ? rate(m.requests.get(s.name) || 0) : '–'),
        stat('p99', lat ? ms(quantile(0.99, lat.buckets, lat.overflow)) : '–'),
        stat('queued', String(s.queued)),
        stat('in flight', String(inFlight)));
      const rows = s.workers.map((w) => {
        const id = String(w.id);
        const kill = actionButton('Kill', 'kill ' + id, 'danger', () =>
          act('kill ' + id, 'Kill worker ' + id + '? Its supervisor restarts it; requests it holds fail.',
            'POST', '/v1/kill', { worker: id }, () => 'killed worker ' + id));
        return el('tr', { 'data-worker': id },
          el('td', { class: 'mono', text: id }),
          el('td', { text: w.node }),
          el('td', {}, badge(String(w.state || ''))),
          el('td', { class: 'num', text: String(num(w.restarts)) }),
          el('td', { class: 'num', text: w.state === 'running' ? uptime(w.uptime_ms) : '–' }),
          el('td', { class: 'num', text: String(num(w.handled)) }),
          el('td', { class: 'num', text: String(num(w.in_flight)) }),
          el('td', { class: 'act' }, kill));
      });
      const head = el('tr', {}, ...['Worker', 'Node', 'State', 'Restarts', 'Uptime', 'Handled', 'In flight', ''].map((h, i) =>
        el('th', { class: i >= 3 && i <= 6 ? 'num' : i === 7 ? 'act' : '', text: h })));
      const table = el('table', { class: 'grid' }, el('thead', {}, head), el('tbody', {}, ...rows));
      details.replaceChildren(summary, table);
      root.append(details); // in order; moves it if it was there
    }
    for (const [name, details] of state.details) {
      if (!seen.has(name)) {
        details.remove();
        state.details.delete(name);
      }
    }
  }

  function rank(serviceState) {
    return serviceState === 'running' ? 0 : serviceState.startsWith('failed') ? 3 : serviceState === 'stopped' ? 2 : 1;
  }

  // The scale form's choices follow the cluster; what the user picked stays.
  function renderScaleForm(nodes) {
    const services = servicesOf(nodes).filter((s) => !s.name.startsWith('@'));
    const serviceSelect = $('scale-service');
    const nodeSelect = $('scale-node');
    setOptions(serviceSelect, services.map((s) => s.name));
    const chosen = services.find((s) => s.name === serviceSelect.value);
    const changed = setOptions(nodeSelect, chosen ? chosen.nodes : nodes.map((n) => String(n.name)));
    if (changed || !$('scale-workers').dataset.touched) suggestWorkers();
  }

  function setOptions(select, values) {
    const current = [...select.options].map((o) => o.value);
    if (current.length === values.length && current.every((v, i) => v === values[i])) return false;
    const keep = select.value;
    select.replaceChildren(...values.map((v) => el('option', { value: v, text: v })));
    if (values.includes(keep)) select.value = keep;
    return true;
  }

  // The worker count the chosen service has on the chosen node now.
  function suggestWorkers() {
    if (!state.last) return;
    const node = (state.last.nodes || []).find((n) => String(n.name) === $('scale-node').value);
    const service = node && (node.services || []).find((s) => String(s.name) === $('scale-service').value);
    if (service) $('scale-workers').value = String((service.workers || []).length);
  }

  // ------------------------------------------------------------- the loop

  function live(mode, text) {
    $('live').dataset.state = mode;
    $('live-text').textContent = text;
  }

  function render() {
    if (!state.last) return;
    const nodes = state.last.nodes;
    renderNodes(nodes);
    renderServices(nodes, state.lastMeasure);
    renderTiles(nodes, state.lastMeasure);
  }

  function update(status) {
    const nodes = Array.isArray(status && status.nodes) ? status.nodes : [];
    const now = Date.now();
    state.last = { nodes };
    assignColours(nodes);
    const m = measure(nodes);
    state.lastMeasure = m;
    if (!state.since) state.since = now;
    keep(now, m);
    for (const chart of state.charts.values()) drawChart(chart, now);
    render();
    renderScaleForm(nodes);
    if (nodes.length) {
      $('served-by').textContent = 'via node ' + nodes[0].name;
      document.title = 'colony · ' + nodes[0].name;
    }
    live('live', 'live · ' + nodes.length + (nodes.length === 1 ? ' node' : ' nodes') + ' · ' + clock(new Date(now)));
  }

  let polling = false;
  async function poll() {
    clearTimeout(state.timer);
    if (polling) return;
    polling = true;
    try {
      update(await api('GET', '/v1/status'));
      $('token-panel').hidden = true;
    } catch (e) {
      if (isTokenError(e)) {
        live('error', 'this node needs a token');
        askToken(e);
        return; // until a token is given
      }
      live('error', (e.kind || 'Error') + ': ' + e.message);
    } finally {
      polling = false;
    }
    state.timer = setTimeout(poll, POLL_MS);
  }

  function start() {
    buildCharts();
    saveToken(state.token);
    $('footer').append(' Every ' + POLL_MS / 1000 + ' s; the charts keep the last ' + WINDOW_MS / 60000 + ' minutes.');
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      saveToken($('token-input').value.trim());
      $('token-input').value = '';
      $('token-panel').hidden = true;
      poll();
    });
    $('forget-token').addEventListener('click', () => {
      saveToken('');
      poll();
    });
    const choose = () => {
      delete $('scale-workers').dataset.touched;
      if (state.last) renderScaleForm(state.last.nodes);
      suggestWorkers();
    };
    $('scale-service').addEventListener('change', choose);
    $('scale-node').addEventListener('change', choose);
    $('scale-workers').addEventListener('input', () => {
      $('scale-workers').dataset.touched = '1';
    });
    $('scale-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const service = $('scale-service').value;
      const node = $('scale-node').value;
      const workers = Number($('scale-workers').value);
      if (!service || !node || !Number.isInteger(workers) || workers < 0) {
        message(false, 'scale', 'BadRequest', 'choose a service, a node and a whole number of workers');
        return;
      }
      delete $('scale-workers').dataset.touched;
      act('scale ' + service + ' on ' + node, null, 'POST', '/v1/scale/' + encodeURIComponent(service),
        { workers, node }, () => service + ' on ' + node + ': ' + workers + (workers === 1 ? ' worker' : ' workers'));
    });
    poll();
  }

  start();
})();
