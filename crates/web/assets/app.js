// Strata's built-in dashboard: views routed by the URL's hash, data from the HTTP API (the
// Prometheus API, fleet status, shadows, registry), live updates over one WebSocket per page
// (/api/v1/stream). No build step and no dependencies but uPlot (a global, loaded first).

const main = document.getElementById('main');
const liveBadge = document.getElementById('live');

// --- small helpers -------------------------------------------------------------------------

/** An element; text children become text nodes, so data never becomes markup. */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

/** Reads `/api/...` and answers its `data`, or throws the API's error message. */
async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '') continue;
    for (const x of [].concat(v)) url.searchParams.append(k, x);
  }
  const r = await fetch(url);
  let body;
  try { body = await r.json(); } catch { throw new Error(`${path}: HTTP ${r.status}`); }
  if (!r.ok || body.status === 'error') {
    const e = new Error(body.error || `${path}: HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return body.data;
}

/** A number as people read it: at most three decimals, no trailing zeros. */
function fmt(v) {
  const n = Number(v);
  if (v === null || v === undefined || Number.isNaN(n)) return String(v ?? '—');
  if (!Number.isFinite(n)) return n > 0 ? '+Inf' : '-Inf';
  if (Math.abs(n) >= 1e6) return n.toExponential(3);
  return String(Math.round(n * 1000) / 1000);
}

const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });

function ago(ms) {
  if (ms === null || ms === undefined) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** `{a="x", b="y"}` of a label set, without the names in `skip`. */
function labelText(labels, skip = []) {
  const pairs = Object.entries(labels || {})
    .filter(([k]) => k !== '__name__' && !skip.includes(k))
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return pairs.length ? `{${pairs.join(', ')}}` : '';
}

const seriesKey = (labels) =>
  JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));

/** A PromQL string literal. */
const quote = (s) => JSON.stringify(String(s));

/** A regex matching exactly the given strings (PromQL regexes are fully anchored). */
const anyOf = (xs) => xs.map((x) => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|');

const COLORS = ['#2457c5', '#c62828', '#1a7f37', '#b26a00', '#7b1fa2', '#00838f', '#5d4037',
  '#ad1457', '#33691e', '#283593'];

// --- the live stream -----------------------------------------------------------------------

/**
 * One WebSocket for the page. Subscriptions survive reconnects: each is sent again with the
 * position of its last message (`since`), so the server replays what was missed, or sends a
 * snapshot of current state when it no longer keeps that much.
 */
class Live {
  constructor() {
    this.subs = new Map();
    this.next = 0;
    this.backoff = 500;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/stream`);
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = 500;
      showLive('live', 'up');
      for (const s of this.subs.values()) this.send(s);
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      this.receive(m);
    };
    ws.onclose = (ev) => {
      this.ws = null;
      showLive(`reconnecting${ev.reason ? ` (${ev.reason})` : ''}`, 'down');
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 10000);
    };
  }

  send(s) {
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    s.acked = false;
    const sub = { id: s.id, kind: s.kind, selector: s.selector };
    if (s.since) sub.since = s.since;
    else if (s.snapshot) sub.snapshot = true;
    this.ws.send(JSON.stringify({ subscribe: sub }));
  }

  /** Subscribes; `onUpdate` gets each reading or window message. Answers the id. */
  subscribe(kind, selector, onUpdate, { snapshot = false, onError } = {}) {
    const s = { id: `s${++this.next}`, kind, selector, onUpdate, onError, snapshot, since: null };
    this.subs.set(s.id, s);
    this.send(s);
    return s.id;
  }

  unsubscribe(id) {
    if (this.subs.delete(id) && this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ unsubscribe: { id } }));
    }
  }

  receive(m) {
    const s = this.subs.get(m.id);
    if (!s) return;
    if (m.error) {
      s.onError?.(m.error);
      return;
    }
    if (m.epoch !== undefined) s.since = { epoch: m.epoch, offset: m.offset };
    if (m.event === 'subscribed') s.acked = true;
    if (!m.event) s.onUpdate(m);
  }

  /** Whether the socket is open and the server acknowledged every subscription. */
  ready() {
    return this.ws?.readyState === WebSocket.OPEN && [...this.subs.values()].every((s) => s.acked);
  }
}

function showLive(text, cls) {
  liveBadge.textContent = text;
  liveBadge.className = `live ${cls}`;
}

const live = new Live();
window.strataLive = live;

/** What a view holds open: its subscriptions and timers, released when it is left. */
class Scope {
  constructor() { this.subs = []; this.timers = []; this.closed = false; }
  subscribe(...args) { const id = live.subscribe(...args); this.subs.push(id); return id; }
  unsubscribe(id) { live.unsubscribe(id); this.subs = this.subs.filter((x) => x !== id); }
  every(ms, f) { f(); this.timers.push(setInterval(f, ms)); }
  close() {
    this.closed = true;
    this.subs.forEach((id) => live.unsubscribe(id));
    this.timers.forEach(clearInterval);
  }
}

// --- overview ------------------------------------------------------------------------------

/** Sums and maxima of a few self-metrics from `/metrics` (Prometheus text format). */
function selfMetrics(text) {
  let samples = 0;
  let lag = null;
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const name = line.slice(0, line.search(/[{ ]/));
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (name === 'strata_ingest_samples_total') samples += value;
    else if (name === 'strata_rollup_event_time_lag_seconds' && Number.isFinite(value)) {
      lag = lag === null ? value : Math.max(lag, value);
    }
  }
  return { samples, lag };
}

function card(label, id) {
  return h('div', { class: 'card' }, h('div', { class: 'n', id }, '—'), h('div', { class: 'l' }, label));
}

function alertRows(alerts) {
  if (!alerts.length) return [h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'none'))];
  return alerts.map((a) => {
    const dev = a.labels.device;
    return h('tr', {},
      h('td', { class: a.state }, a.state),
      h('td', {}, a.labels.alertname),
      h('td', {}, dev ? h('a', { href: `#/device/${encodeURIComponent(dev)}` }, dev) : '',
        h('div', { class: 'labels muted' }, labelText(a.labels, ['alertname', 'device']))),
      h('td', {}, a.activeAt ? ago(Date.parse(a.activeAt)) : ''));
  });
}

function overview(scope) {
  const sites = h('tbody');
  const alerts = h('tbody');
  const anomalies = h('tbody');
  const offline = h('tbody');
  const alertHead = () => h('thead', {}, h('tr', {}, h('th', {}, 'state'), h('th', {}, 'name'),
    h('th', {}, 'device, labels'), h('th', {}, 'since')));
  main.replaceChildren(
    h('h1', {}, 'Fleet overview'),
    h('div', { class: 'cards' },
      card('sites', 'n-sites'), card('devices', 'n-devices'), card('online', 'n-online'),
      card('offline', 'n-offline'), card('alerts firing', 'n-alerts'),
      card('anomalies open', 'n-anomalies'), card('samples/s ingested', 'n-rate'),
      card('event-time lag', 'n-lag')),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'Sites'),
        h('table', { id: 'sites' }, h('thead', {}, h('tr', {}, h('th', {}, 'site'),
          h('th', { class: 'num' }, 'online'), h('th', { class: 'num' }, 'offline'),
          h('th', { class: 'num' }, 'devices'))), sites)),
      h('div', {},
        h('div', { class: 'panel' }, h('h2', {}, 'Alerts'), h('table', { id: 'alerts' }, alertHead(), alerts)),
        h('div', { class: 'panel' }, h('h2', {}, 'Anomalies'), h('table', { id: 'anomalies' }, alertHead(), anomalies)),
        h('div', { class: 'panel' }, h('h2', {}, 'Offline devices ', h('a', { href: '#/devices?status=offline' }, 'all')),
          h('table', { id: 'offline' }, offline)))),
    h('p', { class: 'error', id: 'overview-error' }));
  const set = (id, v) => { const el = document.getElementById(id); if (el) el.textContent = v; };
  let prev = null;
  scope.every(3000, async () => {
    try {
      const [fleet, al, metricsText] = await Promise.all([
        api('/api/v1/devices', { status: 'offline', limit: 20 }),
        api('/api/v1/alerts'),
        fetch('/metrics').then((r) => r.text()),
      ]);
      if (scope.closed) return;
      const c = fleet.counts;
      const bySite = Object.entries(c.by_site || {}).sort(([a], [b]) => (a < b ? -1 : 1));
      set('n-sites', bySite.length);
      set('n-devices', c.total);
      set('n-online', c.online);
      set('n-offline', c.offline);
      sites.replaceChildren(...bySite.map(([s, n]) => h('tr', {},
        h('td', {}, h('a', { href: `#/site/${encodeURIComponent(s)}` }, s)),
        h('td', { class: 'num' }, n.online), h('td', { class: 'num' }, n.offline),
        h('td', { class: 'num' }, n.online + n.offline))));
      const active = al.alerts.filter((a) => a.state === 'firing' || a.state === 'pending');
      const isAnomaly = (a) => a.labels.alertname === 'AnomalyDetected';
      set('n-alerts', active.filter((a) => !isAnomaly(a) && a.state === 'firing').length);
      set('n-anomalies', active.filter(isAnomaly).length);
      alerts.replaceChildren(...alertRows(active.filter((a) => !isAnomaly(a))));
      anomalies.replaceChildren(...alertRows(active.filter(isAnomaly)));
      offline.replaceChildren(...(fleet.devices.length ? fleet.devices.map((d) => h('tr', {},
        h('td', {}, h('a', { href: `#/device/${encodeURIComponent(d.id)}` }, d.id)),
        h('td', {}, d.site ?? ''), h('td', { class: 'muted' }, `last seen ${ago(d.last_seen)}`)))
        : [h('tr', {}, h('td', { class: 'muted' }, 'none'))]));
      const m = selfMetrics(metricsText);
      const now = Date.now();
      if (prev && now > prev.t) set('n-rate', fmt(Math.max(0, (m.samples - prev.samples) * 1000 / (now - prev.t))));
      prev = { t: now, samples: m.samples };
      set('n-lag', m.lag === null ? '—' : `${fmt(m.lag)} s`);
      set('overview-error', '');
    } catch (e) {
      set('overview-error', e.message);
    }
  });
}

// --- device lists (the fleet, a site) ------------------------------------------------------

const PAGE = 50;

function devices(scope, params) {
  const site = params.get('site') || '';
  const status = params.get('status') || '';
  const type = params.get('type') || '';
  const starts = ['']; // the cursor each page shown so far starts at
  let page = 0;
  const rows = h('tbody');
  const counts = h('p', { class: 'muted', id: 'counts' });
  const pageNo = h('span', { class: 'muted' });
  const prevB = h('button', { onclick: () => load(page - 1) }, '‹ previous');
  const nextB = h('button', { onclick: () => load(page + 1) }, 'next ›');
  const go = (k, v) => {
    const p = new URLSearchParams(params);
    if (v) p.set(k, v); else p.delete(k);
    location.hash = `#/devices?${p}`;
  };
  main.replaceChildren(
    h('h1', {}, site ? `Site ${site}` : 'Devices'),
    h('div', { class: 'filters' },
      h('select', { onchange: (e) => go('status', e.target.value) },
        ...['', 'online', 'offline'].map((s) => h('option', { value: s, selected: s === status }, s || 'any status'))),
      h('input', { placeholder: 'type', value: type, onchange: (e) => go('type', e.target.value) }),
      site ? h('a', { href: '#/devices' }, 'every site') : null),
    counts,
    h('div', { class: 'panel' },
      h('table', { id: 'devices' }, h('thead', {}, h('tr', {}, h('th', {}, 'device'), h('th', {}, 'site'),
        h('th', {}, 'type'), h('th', {}, 'status'), h('th', {}, 'last seen'), h('th', {}, 'readings'))), rows),
      h('div', { class: 'pager' }, prevB, pageNo, nextB)),
    h('p', { class: 'error', id: 'devices-error' }));
  const shown = new Map(); // device id -> { row, lastSeen, readings: Map(name -> value) }
  let sub = null;
  const renderRow = (id) => {
    const d = shown.get(id);
    const cells = d.row.children;
    cells[4].textContent = ago(d.lastSeen);
    cells[5].textContent = [...d.readings].sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, v]) => `${k} ${fmt(v)}`).join(' · ');
  };
  async function load(n) {
    try {
      const data = await api('/api/v1/devices', { site, status, type, limit: PAGE, cursor: starts[n] });
      if (scope.closed) return;
      page = n;
      starts[n + 1] = data.next_cursor;
      const c = data.counts;
      counts.textContent = `${c.total} devices: ${c.online} online, ${c.offline} offline`;
      shown.clear();
      rows.replaceChildren(...data.devices.map((d) => {
        const row = h('tr', { 'data-device': d.id },
          h('td', {}, h('a', { href: `#/device/${encodeURIComponent(d.id)}` }, d.id)),
          h('td', {}, d.site ? h('a', { href: `#/site/${encodeURIComponent(d.site)}` }, d.site) : ''),
          h('td', {}, d.type ?? ''), h('td', { class: `status-${d.status}` }, d.status), h('td'), h('td', { class: 'value' }));
        shown.set(d.id, { row, lastSeen: d.last_seen, readings: new Map(Object.entries(d.readings || {})) });
        return row;
      }));
      shown.forEach((_, id) => renderRow(id));
      if (!data.devices.length) rows.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'no devices')));
      pageNo.textContent = `page ${page + 1}`;
      prevB.disabled = page === 0;
      nextB.disabled = !data.next_cursor;
      // One subscription for the page's devices: their readings refresh the rows in place.
      if (sub) scope.unsubscribe(sub);
      sub = shown.size ? scope.subscribe('readings', `{device=~${quote(anyOf([...shown.keys()]))}}`, (m) => {
        const d = shown.get(m.labels.device);
        if (!d) return;
        d.lastSeen = Math.max(d.lastSeen ?? 0, m.timestamp);
        d.readings.set(m.labels.__name__, m.value);
        renderRow(m.labels.device);
      }) : null;
      document.getElementById('devices-error').textContent = '';
    } catch (e) {
      document.getElementById('devices-error').textContent = e.message;
    }
  }
  load(0);
  scope.every(1000, () => shown.forEach((_, id) => renderRow(id)));
  // Status changes (a device going offline) come from the fleet status, not the stream.
  scope.timers.push(setInterval(() => load(page), 15000));
}

// --- one device ----------------------------------------------------------------------------

const STATE_RANK = { provisional: 0, final: 1, corrected: 1 };

/** Whether window message `m` is at least as new as `w`, the state held for its minute. */
function newer(m, w) {
  if (!w) return true;
  const a = [STATE_RANK[m.state] ?? 0, m.revision ?? 0, Number(m.count) || 0];
  const b = [STATE_RANK[w.state] ?? 0, w.revision ?? 0, Number(w.count) || 0];
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] > b[i];
  return true;
}

const HOUR = 3600 * 1000;

/** A live chart of one series' 1-minute windows: final solid, provisional dashed, corrected marked. */
class SeriesChart {
  constructor(labels, parent) {
    this.labels = labels;
    this.windows = new Map(); // start -> window message
    this.latest = null;
    this.now = h('span', { class: 'now muted' });
    this.table = h('tbody');
    this.plotEl = h('div');
    this.el = h('div', { class: 'panel chart', 'data-metric': labels.__name__ },
      h('h2', {}, labels.__name__, this.now),
      h('div', { class: 'labels muted' }, labelText(labels, ['device'])),
      this.plotEl,
      h('div', { class: 'muted' }, 'mean per minute:', h('span', { class: 'legend-key final' }), 'final',
        h('span', { class: 'legend-key provisional' }), 'provisional',
        h('span', { class: 'legend-key corrected' }), 'corrected'),
      h('table', { class: 'windows' }, h('thead', {}, h('tr', {}, h('th', {}, 'minute'), h('th', {}, 'state'),
        h('th', { class: 'num' }, 'revision'), h('th', { class: 'num' }, 'count'), h('th', { class: 'num' }, 'mean'),
        h('th', { class: 'num' }, 'min'), h('th', { class: 'num' }, 'max'))), this.table));
    parent.append(this.el);
    this.plot = new uPlot({
      width: Math.max(300, this.plotEl.clientWidth || parent.clientWidth || 560),
      height: 200,
      scales: { x: { time: true } },
      legend: { show: false },
      series: [
        {},
        { label: 'final', stroke: '#2457c5', width: 2, spanGaps: false },
        { label: 'provisional', stroke: '#8e9ab3', width: 2, dash: [6, 4], points: { show: true, size: 5 } },
        { label: 'corrected', stroke: '#b26a00', paths: () => null, points: { show: true, size: 9, fill: '#b26a00' } },
      ],
    }, [[], [], [], []], this.plotEl);
    this.pending = false;
  }

  window(m) {
    if (!newer(m, this.windows.get(m.start))) return;
    this.windows.set(m.start, m);
    this.redraw();
  }

  reading(m) {
    if (this.latest && this.latest.timestamp > m.timestamp) return;
    this.latest = m;
    this.now.textContent = `${fmt(m.value)} at ${clock(m.timestamp)}`;
    this.now.setAttribute('data-value', m.value);
    this.now.classList.remove('flash');
    void this.now.offsetWidth; // restarts the animation
    this.now.classList.add('flash');
  }

  redraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      const from = Date.now() - HOUR;
      for (const s of this.windows.keys()) if (s < from) this.windows.delete(s);
      const ws = [...this.windows.values()].sort((a, b) => a.start - b.start);
      const xs = ws.map((w) => w.end / 1000);
      const mean = (w) => Number(w.mean);
      const fin = ws.map((w) => (w.state === 'provisional' ? null : mean(w)));
      // The provisional line starts at the last final minute, so the two lines join.
      const prov = ws.map((w, i) => (w.state === 'provisional' || ws[i + 1]?.state === 'provisional' ? mean(w) : null));
      const cor = ws.map((w) => (w.state === 'corrected' ? mean(w) : null));
      this.plot.setData([xs, fin, prov, cor]);
      this.table.replaceChildren(...ws.slice(-5).reverse().map((w) => h('tr', { 'data-start': w.start, class: `state-${w.state}` },
        h('td', {}, `${clock(w.start)}–${clock(w.end)}`), h('td', { class: 'state' }, w.state),
        h('td', { class: 'num' }, w.revision), h('td', { class: 'num' }, w.count),
        h('td', { class: 'num mean' }, fmt(w.mean)), h('td', { class: 'num' }, fmt(w.min)), h('td', { class: 'num' }, fmt(w.max)))));
    });
  }

  resize() { this.plot.setSize({ width: Math.max(300, this.plotEl.clientWidth), height: 200 }); }
}

function kv(obj) {
  const entries = Object.entries(obj || {}).filter(([, v]) => v !== null && v !== undefined && v !== '');
  if (!entries.length) return h('p', { class: 'muted' }, 'none');
  return h('div', { class: 'kv' }, ...entries.flatMap(([k, v]) => [h('span', { class: 'k' }, k),
    h('span', {}, typeof v === 'object' ? JSON.stringify(v) : String(v))]));
}

function device(scope, params, id) {
  const charts = new Map(); // series key -> SeriesChart
  const chartsEl = h('div', { class: 'charts', id: 'charts' });
  const registryEl = h('div', { id: 'registry' }, h('p', { class: 'muted' }, 'loading'));
  const shadowEl = h('div', { id: 'shadow' }, h('p', { class: 'muted' }, 'loading'));
  const statusEl = h('span', { class: 'muted', id: 'device-status' });
  const err = h('p', { class: 'error', id: 'device-error' });
  main.replaceChildren(
    h('h1', {}, `Device ${id} `, statusEl),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'Registry'), registryEl),
      h('div', { class: 'panel' }, h('h2', {}, 'Shadow'), shadowEl)),
    err, chartsEl,
    h('p', { class: 'muted', id: 'no-data' }, 'Waiting for data…'));
  window.strata = { charts };
  const chartOf = (labels) => {
    const k = seriesKey(labels);
    let c = charts.get(k);
    if (!c) {
      document.getElementById('no-data')?.remove();
      c = new SeriesChart(labels, chartsEl);
      charts.set(k, c);
    }
    return c;
  };
  const sel = `{device=${quote(id)}}`;
  const onError = (e) => { err.textContent = e; };
  scope.subscribe('windows', sel, (m) => chartOf(m.labels).window(m), { snapshot: true, onError });
  api(`/api/v1/registry/devices/${encodeURIComponent(id)}`)
    .then((d) => { registryEl.replaceChildren(kv(d.device ?? d)); })
    .catch((e) => { registryEl.replaceChildren(h('p', { class: 'muted' }, e.status === 404 ? 'not registered' : e.message)); });
  scope.every(1000, () => {
    const last = Math.max(0, ...[...charts.values()].map((c) => c.latest?.timestamp ?? 0));
    statusEl.textContent = last ? `last reading ${ago(last)}` : '';
  });
  const refreshShadow = async () => {
    try {
      const sh = await api(`/api/v1/devices/${encodeURIComponent(id)}/shadow`)
        .catch((e) => (e.status === 404 ? null : Promise.reject(e)));
      if (scope.closed) return;
      if (!sh) {
        shadowEl.replaceChildren(h('p', { class: 'muted' }, 'no shadow: the device has not reported'));
        return;
      }
      const reported = Object.entries(sh.state.reported).map(([k, v]) => h('tr', {}, h('td', {}, k),
        h('td', { class: 'num' }, fmt(v)), h('td', { class: 'muted' }, ago(sh.metadata.reported[k]?.timestamp))));
      shadowEl.replaceChildren(
        h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'reported'), h('th', { class: 'num' }, 'value'), h('th', {}, 'at'))),
          h('tbody', {}, reported)),
        h('h2', {}, `desired (version ${sh.version})`), kv(sh.state.desired),
        h('h2', {}, 'delta'), kv(sh.state.delta));
    } catch (e) {
      err.textContent = e.message;
    }
  };
  scope.every(10000, refreshShadow);
  // The shadow's changes: a series' newest reading (late ones change nothing) is drawn as its
  // latest value; a desired change (a PATCH, from anywhere) redraws the shadow at once.
  scope.subscribe('shadows', sel, (m) => {
    if (m.desired) refreshShadow();
    if (m.reported) {
      const value = Object.values(m.reported)[0];
      chartOf(m.labels).reading({ timestamp: m.timestamp, value });
    }
  }, { snapshot: true, onError });
  const onResize = () => charts.forEach((c) => c.resize());
  window.addEventListener('resize', onResize);
  scope.onClose = () => window.removeEventListener('resize', onResize);
}

// --- query ---------------------------------------------------------------------------------

const RANGES = { '5m': 300, '15m': 900, '1h': 3600, '6h': 21600, '24h': 86400, '7d': 604800 };

function query(scope, params) {
  const expr = params.get('expr') || '';
  const range = RANGES[params.get('range')] ? params.get('range') : '1h';
  const input = h('textarea', { class: 'expr', id: 'expr', spellcheck: 'false', placeholder: 'PromQL, e.g. avg by (site) (temperature_celsius)' });
  input.value = expr;
  const rangeSel = h('select', { id: 'range' }, ...Object.keys(RANGES).map((r) => h('option', { value: r, selected: r === range }, r)));
  const run = () => {
    const p = new URLSearchParams({ expr: input.value.trim(), range: rangeSel.value });
    location.hash = `#/query?${p}`;
  };
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey || !e.shiftKey)) { e.preventDefault(); run(); } });
  const chartEl = h('div', { id: 'query-chart' });
  const table = h('tbody');
  const note = h('p', { class: 'muted', id: 'query-note' });
  const err = h('p', { class: 'error', id: 'query-error' });
  main.replaceChildren(
    h('h1', {}, 'Query'),
    h('div', { class: 'panel' }, input, h('div', { class: 'filters' }, rangeSel, h('button', { id: 'run', onclick: run }, 'Run'),
      h('span', { class: 'muted' }, 'Enter runs; Shift+Enter for a new line. The Prometheus API: /api/v1/query_range, /api/v1/query.'))),
    err, note,
    h('div', { class: 'panel' }, chartEl),
    h('div', { class: 'panel' }, h('table', { id: 'query-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'series'), h('th', { class: 'num' }, 'value'))), table)));
  if (!expr) return;
  const end = Math.floor(Date.now() / 1000);
  const start = end - RANGES[range];
  const step = Math.max(1, Math.ceil(RANGES[range] / 300));
  Promise.all([
    api('/api/v1/query_range', { query: expr, start, end, step }),
    api('/api/v1/query', { query: expr, time: end }),
  ]).then(([r, inst]) => {
    if (scope.closed) return;
    drawRange(chartEl, r, start, end, step, note);
    const rows = inst.resultType === 'vector' ? inst.result.map((s) => [labelText(s.metric, []) || '{}', s.value[1], s.metric.__name__])
      : inst.resultType === 'matrix' ? inst.result.map((s) => [labelText(s.metric, []) || '{}', s.values.at(-1)?.[1], s.metric.__name__])
        : [[inst.resultType, inst.result[1], '']];
    table.replaceChildren(...rows.map(([l, v, n]) => h('tr', {}, h('td', { class: 'labels' }, `${n || ''}${l}`), h('td', { class: 'num' }, fmt(v)))));
    if (!rows.length) table.append(h('tr', {}, h('td', { colspan: 2, class: 'muted' }, 'empty result')));
  }).catch((e) => { err.textContent = e.message; });
}

const MAX_DRAWN = 50;

function drawRange(el, r, start, end, step, note) {
  if (r.resultType !== 'matrix') {
    note.textContent = `The result is a ${r.resultType}: see the table.`;
    return;
  }
  const xs = [];
  for (let t = start; t <= end; t += step) xs.push(t);
  const at = new Map(xs.map((t, i) => [t, i]));
  const drawn = r.result.slice(0, MAX_DRAWN);
  const ys = drawn.map((s) => {
    const y = new Array(xs.length).fill(null);
    for (const [t, v] of s.values) { const i = at.get(Math.round(t)); if (i !== undefined) y[i] = Number(v); }
    return y;
  });
  note.textContent = `${r.result.length} series${r.result.length > MAX_DRAWN ? `, the first ${MAX_DRAWN} drawn` : ''}, step ${step} s.`;
  const plot = new uPlot({
    width: Math.max(300, el.clientWidth || 900),
    height: 320,
    scales: { x: { time: true } },
    series: [{}, ...drawn.map((s, i) => ({ label: `${s.metric.__name__ || ''}${labelText(s.metric)}` || '{}', stroke: COLORS[i % COLORS.length], width: 1.5 }))],
  }, [xs, ...ys], el);
  window.strata = { query: plot };
}

// --- routing -------------------------------------------------------------------------------

let current = null;

function route() {
  current?.close();
  current?.onClose?.();
  const scope = new Scope();
  current = scope;
  const hash = location.hash || '#/';
  const [path, qs] = hash.slice(1).split('?');
  const params = new URLSearchParams(qs || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active',
    a.dataset.nav === (parts[0] === 'site' || parts[0] === 'device' ? 'devices' : parts[0] || 'overview')));
  switch (parts[0]) {
    case undefined: return overview(scope);
    case 'devices': return devices(scope, params);
    case 'site': params.set('site', parts[1] || ''); return devices(scope, params);
    case 'device': return device(scope, params, parts.slice(1).join('/'));
    case 'query': return query(scope, params);
    default: main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Overview')));
  }
}

window.addEventListener('hashchange', route);
route();
