// cairn web UI — the core: the API key gate, calls to cairnd, tabs, small DOM helpers.
// Every page module registers itself with cairn.register(name, {init, show, hide}); nothing
// of a module runs before a key (when the server wants one) has been accepted.
'use strict';

const cairn = (() => {
  const KEY = 'cairn.key';
  const modules = {};
  const state = { key: sessionStorage.getItem(KEY) || '', unlocked: false, tab: null };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // fetch() against cairnd with the key; a 401 locks the page again.
  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {});
    if (state.key) headers.Authorization = 'Bearer ' + state.key;
    let body = opts.body;
    if (opts.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    const r = await fetch(path, { method: opts.method || 'GET', headers, body,
                                  signal: opts.signal, cache: 'no-store' });
    if (r.status === 401 && state.unlocked) lock('The server refused the key; enter it again.');
    return r;
  }

  // The same, for JSON answers: the parsed body, or an ApiError with the server's message.
  async function apiJson(path, opts = {}) {
    const r = await api(path, opts);
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok) {
      const msg = doc && doc.error ? doc.error.message : `${r.status} ${r.statusText}`;
      throw new ApiError(r.status, msg);
    }
    return doc;
  }

  // ---- DOM helpers: text only, never HTML from the server ----
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const $ = (id) => document.getElementById(id);

  function fmtSeconds(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return '–';
    if (s < 1e-3) return (s * 1e6).toFixed(0) + ' µs';
    if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 0) + ' ms';
    return s.toFixed(2) + ' s';
  }
  function fmtBytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
    return (n / (1 << 20)).toFixed(1) + ' MiB';
  }
  function fmtTime(unixSeconds) {
    if (!unixSeconds) return '–';
    return new Date(unixSeconds * 1000).toLocaleTimeString();
  }
  function fmtNumber(v, digits = 0) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits });
  }

  // ---- The key gate ----
  function lock(message) {
    state.unlocked = false;
    state.key = '';
    sessionStorage.removeItem(KEY);
    for (const m of Object.values(modules)) if (m.hide) m.hide();
    $('app').hidden = true;
    $('tabs').hidden = true;
    $('forget-key').hidden = true;
    $('gate').hidden = false;
    $('gate-error').textContent = message || '';
    $('gate-key').value = '';
    $('gate-key').focus();
  }

  // Whether /v1/models answers with this key (or without one): the cheapest authenticated call.
  async function probe(key) {
    const r = await fetch('/v1/models', { headers: key ? { Authorization: 'Bearer ' + key } : {},
                                          cache: 'no-store' });
    if (r.status === 401) return null;
    if (!r.ok) throw new ApiError(r.status, `the server answered ${r.status}`);
    return r.json();
  }

  function unlock(models, key) {
    state.key = key;
    if (key) sessionStorage.setItem(KEY, key);
    state.unlocked = true;
    $('gate').hidden = true;
    $('app').hidden = false;
    $('tabs').hidden = false;
    $('forget-key').hidden = !key;
    const model = models && models.data && models.data[0] ? models.data[0].id : 'no model loaded';
    $('server-info').textContent = model;
    for (const m of Object.values(modules)) {
      if (!m.ready && m.init) m.init();
      m.ready = true;
    }
    show(location.hash.slice(1) || state.tab || 'chat');
  }

  function show(name) {
    if (!modules[name]) name = 'chat';
    if (state.tab && state.tab !== name && modules[state.tab] && modules[state.tab].hide)
      modules[state.tab].hide();
    state.tab = name;
    for (const b of document.querySelectorAll('#tabs button'))
      b.classList.toggle('active', b.dataset.tab === name);
    for (const s of document.querySelectorAll('section.tab')) s.hidden = s.id !== 'tab-' + name;
    if (location.hash.slice(1) !== name) history.replaceState(null, '', '#' + name);
    if (state.unlocked && modules[name].show) modules[name].show();
  }

  async function start() {
    for (const b of document.querySelectorAll('#tabs button'))
      b.addEventListener('click', () => show(b.dataset.tab));
    window.addEventListener('hashchange', () => state.unlocked && show(location.hash.slice(1)));
    $('forget-key').addEventListener('click', () => lock(''));
    $('gate-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const key = $('gate-key').value.trim();
      $('gate-error').textContent = '';
      try {
        const models = await probe(key);
        if (!models) $('gate-error').textContent = 'That key was refused.';
        else unlock(models, key);
      } catch (e) {
        $('gate-error').textContent = e.message;
      }
    });
    try {
      const models = await probe(state.key);
      if (models) unlock(models, state.key);
      else lock(state.key ? 'The saved key was refused; enter it again.' : '');
    } catch (e) {
      lock('The server is not answering: ' + e.message);
    }
  }

  function register(name, module) { modules[name] = module; }

  // A Chart.js chart on canvas id, or null when Chart.js is not served (libjs-chart.js missing):
  // the pages then show their numbers without charts. Animation is off: charts redraw on every
  // sample.
  const palette = ['#2f6f5e', '#c2682b', '#3d5a98', '#a23b2a', '#7a5c99', '#8a8a2e'];
  function chart(id, type, labels, opts = {}) {
    if (typeof Chart === 'undefined') return null;
    const datasets = labels.map((label, i) => Object.assign({
      label, data: [], borderColor: palette[i % palette.length],
      backgroundColor: palette[i % palette.length] + (type === 'bar' ? 'cc' : '33'),
      borderWidth: 2, pointRadius: type === 'line' ? 1.5 : 0, spanGaps: false, tension: 0.2,
    }, (opts.datasets || [])[i] || {}));
    return new Chart($(id), {
      type,
      data: { labels: [], datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: 'index', intersect: false },
        plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } } },
        scales: Object.assign({ x: { ticks: { maxTicksLimit: 8, autoSkip: true } },
                                y: { beginAtZero: true } }, opts.scales || {}),
      },
    });
  }

  return { api, apiJson, ApiError, el, $, fmtSeconds, fmtBytes, fmtTime, fmtNumber, register,
           start, show, state, chart };
})();
