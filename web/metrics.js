// cairn web UI — Metrics: cairnd's Prometheus text (/metrics) parsed in the browser every 2 s.
// Latency percentiles come from the histograms' buckets over the last 30 s (the difference
// between two scrapes, interpolated inside a bucket as Prometheus' histogram_quantile does);
// throughputs and request rates from counter differences.
'use strict';

(() => {
  const { api, el, $, fmtSeconds, fmtNumber } = cairn;
  const EVERY_MS = 2000;
  const WINDOW_S = 30;
  const POINTS = 90;
  let timer = null;
  let charts = null;
  const snaps = []; // {t (s), m (parsed)}, oldest first, WINDOW_S and a little more

  // Parses the text exposition format into Map(name -> [{labels, value}]).
  function parse(text) {
    const out = new Map();
    const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = lineRe.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) for (const l of m[2].matchAll(labelRe))
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      const v = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
      if (!out.has(m[1])) out.set(m[1], []);
      out.get(m[1]).push({ labels, value: v });
    }
    return out;
  }

  // Sum of a family's series whose labels include `match`; null when it has none.
  function value(m, name, match = {}) {
    const s = m.get(name);
    if (!s) return null;
    let sum = 0;
    let any = false;
    for (const x of s) {
      if (Object.entries(match).every(([k, v]) => x.labels[k] === v)) {
        sum += x.value;
        any = true;
      }
    }
    return any ? sum : null;
  }

  // Cumulative buckets [{le, count}] of a histogram (series without other labels summed).
  function buckets(m, name) {
    const by = new Map();
    for (const x of m.get(name + '_bucket') || []) {
      const le = x.labels.le === '+Inf' ? Infinity : Number(x.labels.le);
      by.set(le, (by.get(le) || 0) + x.value);
    }
    return Array.from(by, ([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
  }

  // The q-quantile of the observations between two scrapes; null without any.
  function quantile(q, now, then, name) {
    const b1 = buckets(now, name);
    const b0 = new Map(buckets(then, name).map((b) => [b.le, b.count]));
    const d = b1.map((b) => ({ le: b.le, count: b.count - (b0.get(b.le) || 0) }));
    const total = d.length ? d[d.length - 1].count : 0;
    if (total <= 0) return null;
    const rank = q * total;
    let prevLe = 0;
    let prevCount = 0;
    for (const b of d) {
      if (b.count >= rank) {
        if (b.le === Infinity) return prevLe; // above the largest bucket: its bound
        return prevLe + (b.le - prevLe) * (rank - prevCount) / Math.max(b.count - prevCount, 1e-12);
      }
      prevLe = b.le;
      prevCount = b.count;
    }
    return prevLe;
  }

  function rate(now, then, dt, name, match) {
    const a = value(now, name, match);
    const b = value(then, name, match);
    if (a === null || dt <= 0) return null;
    return Math.max(0, a - (b === null || b > a ? 0 : b)) / dt;
  }

  function push(c, label, values) {
    if (!c) return;
    c.data.labels.push(label);
    values.forEach((v, i) => c.data.datasets[i].data.push(v));
    if (c.data.labels.length > POINTS) {
      c.data.labels.shift();
      for (const ds of c.data.datasets) ds.data.shift();
    }
    c.update();
  }

  function cards(m) {
    const start = value(m, 'cairn_process_start_time_seconds');
    const build = (m.get('cairn_build_info') || [])[0];
    const items = [
      ['uptime', start ? fmtSeconds(Date.now() / 1000 - start) : '–'],
      ['passages indexed', fmtNumber(value(m, 'cairn_rag_documents'))],
      ['sequences running', fmtNumber(value(m, 'cairn_sequences_running'))],
      ['requests admitted', fmtNumber(value(m, 'cairn_requests_admitted'))],
      ['tokens generated', fmtNumber(value(m, 'cairn_generated_tokens_total'))],
      ['offline tokens', fmtNumber(value(m, 'cairn_offline_tokens_total'))],
      ['jobs completed', fmtNumber(value(m, 'cairn_offline_jobs_done_total'))],
      ['requests shed (429)', fmtNumber(value(m, 'cairn_requests_shed_total'))],
      ['build', build ? build.labels.version + (build.labels.cuda === 'yes' ? ' CUDA' : '') : '–'],
    ];
    $('metric-cards').replaceChildren(...items.map(([k, v]) =>
      el('div', { class: 'card' }, el('div', { class: 'v', text: v }),
        el('div', { class: 'k', text: k }))));
  }

  async function sample() {
    timer = null;
    try {
      const r = await api('/metrics');
      if (!r.ok) throw new Error(`/metrics answered ${r.status}`);
      const m = parse(await r.text());
      const t = Date.now() / 1000;
      snaps.push({ t, m });
      while (snaps.length > 2 && t - snaps[1].t >= WINDOW_S) snaps.shift();
      const old = snaps[0];
      const prev = snaps.length > 1 ? snaps[snaps.length - 2] : old;
      const dt = t - prev.t;
      const label = new Date(t * 1000).toLocaleTimeString();
      cards(m);
      if (charts) {
        push(charts.ttft, label, [quantile(0.5, m, old.m, 'cairn_ttft_seconds'),
                                  quantile(0.99, m, old.m, 'cairn_ttft_seconds')]);
        push(charts.itl, label, [quantile(0.5, m, old.m, 'cairn_inter_token_seconds'),
                                 quantile(0.99, m, old.m, 'cairn_inter_token_seconds')]);
        push(charts.tput, label, [rate(m, prev.m, dt, 'cairn_generated_tokens_total'),
                                  rate(m, prev.m, dt, 'cairn_offline_tokens_total')]);
        push(charts.queues, label, [value(m, 'cairn_generation_queue_depth'),
                                    value(m, 'cairn_offline_queue_depth'),
                                    value(m, 'cairn_jobs_queue_depth'),
                                    value(m, 'cairn_sequences_running')]);
        const probed = rate(m, old.m, t - old.t, 'cairn_retrieval_clusters_probed_total');
        const hits = rate(m, old.m, t - old.t, 'cairn_retrieval_fast_tier_hits_total');
        push(charts.ratios, label, [probed ? hits / probed : null,
                                    value(m, 'cairn_sched_predictor_mape'),
                                    value(m, 'cairn_kv_used')]);
        const codes = (cls) => {
          let sum = 0;
          for (const x of m.get('cairn_http_requests_total') || []) {
            if (!String(x.labels.code).startsWith(cls)) continue;
            sum += rate(m, prev.m, dt, 'cairn_http_requests_total', x.labels) || 0;
          }
          return sum;
        };
        push(charts.http, label, [codes('2'), codes('4'), codes('5')]);
      }
      $('metrics-note').textContent = charts ? '' :
        'Chart.js is not available on this server (Debian package libjs-chart.js); ' +
        'the figures above still update.';
    } catch (e) {
      $('metrics-note').textContent = e.message;
    }
    if (!$('tab-metrics').hidden) timer = setTimeout(sample, EVERY_MS);
  }

  cairn.register('metrics', {
    init() {
      const c = cairn.chart;
      const ratio = { scales: { y: { beginAtZero: true, suggestedMax: 1 } } };
      const made = {
        ttft: c('m-ttft', 'line', ['p50', 'p99']),
        itl: c('m-itl', 'line', ['p50', 'p99']),
        tput: c('m-tput', 'line', ['online', 'offline']),
        queues: c('m-queues', 'line', ['generation queue', 'offline queue', 'jobs stream',
                                       'sequences running']),
        ratios: c('m-ratios', 'line', ['prefetch hit ratio', 'predictor MAPE', 'KV used'], ratio),
        http: c('m-http', 'line', ['2xx', '4xx', '5xx']),
      };
      charts = Object.values(made).every(Boolean) ? made : null;
    },
    show() { if (!timer) sample(); },
    hide() {
      if (timer) clearTimeout(timer);
      timer = null;
    },
  });

  cairn.metrics = { parse, quantile, buckets }; // for tests in the browser console
})();
