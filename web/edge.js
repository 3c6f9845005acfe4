// cairn web UI — Edge fleet: GET /v1/edge/fleet every 5 s while the page is open: devices and
// what they uploaded, the signed bundles published, and the adaptation steps over time.
'use strict';

(() => {
  const { apiJson, el, $, fmtTime, fmtBytes, fmtNumber } = cairn;
  let timer = null;
  let charts = null;

  function cards(f) {
    const t = f.totals;
    const items = [
      ['devices', t.devices], ['samples uploaded', t.samples_accepted],
      ['uploads refused', t.rejected], ['adaptation steps', t.steps],
      ['latest bundle', f.latest_version ? 'v' + f.latest_version : 'none'],
      ['waiting for a step', t.pending], ['bytes up', fmtBytes(t.bytes_up)],
      ['bytes down', fmtBytes(t.bytes_down)],
    ];
    $('edge-cards').replaceChildren(...items.map(([k, v]) =>
      el('div', { class: 'card' }, el('div', { class: 'v', text: typeof v === 'number' ?
        fmtNumber(v) : v }), el('div', { class: 'k', text: k }))));
  }

  function tables(f) {
    document.querySelector('#edge-devices tbody').replaceChildren(...f.devices.map((d) =>
      el('tr', {}, el('td', { class: 'mono', text: d.id }), el('td', { text: d.name }),
        el('td', { text: fmtTime(d.enrolled_at) }), el('td', { text: fmtNumber(d.uploads) }),
        el('td', { text: fmtNumber(d.samples) }),
        el('td', { text: d.model_version ? 'v' + d.model_version : 'base' }),
        el('td', { text: fmtTime(d.last_upload_at) }))));
    document.querySelector('#edge-bundles tbody').replaceChildren(...f.bundles.slice().reverse()
      .slice(0, 20).map((b) => el('tr', {}, el('td', { text: 'v' + b.version }),
        el('td', { text: fmtTime(b.published_at) }), el('td', { text: fmtNumber(b.bytes) }))));
  }

  function draw(f) {
    if (!charts) return;
    const a = charts.agreement;
    a.data.labels = f.steps.map((s) => s.step);
    a.data.datasets[0].data = f.steps.map((s) => s.agreement);
    a.data.datasets[1].data = f.steps.map((s) => s.edge_entropy);
    a.data.datasets[2].data = f.steps.map((s) => s.foundation_entropy);
    a.update();
    const u = charts.uploads;
    u.data.labels = f.uploads.map((x) => fmtTime(x.t));
    u.data.datasets[0].data = f.uploads.map((x) => x.samples);
    u.data.datasets[1].data = f.uploads.map((x) => x.mean_entropy);
    u.update();
  }

  async function refresh() {
    timer = null;
    try {
      const f = await apiJson('/v1/edge/fleet');
      $('edge-note').textContent = `Model "${f.model}". ` + (f.devices.length ? '' :
        'No device has enrolled yet (POST /v1/edge/devices with the enrollment token).');
      cards(f);
      tables(f);
      draw(f);
    } catch (e) {
      $('edge-note').textContent = e.status === 404
        ? 'The edge API is off on this server (set edge.enrollment_token to serve it).'
        : e.message;
    }
    if (!$('tab-edge').hidden) timer = setTimeout(refresh, 5000);
  }

  cairn.register('edge', {
    init() {
      const c = cairn.chart;
      const agreement = c('edge-agreement', 'line',
        ['agreement', 'edge entropy (nats)', 'foundation entropy (nats)'],
        { scales: { x: { title: { display: true, text: 'step' }, ticks: { maxTicksLimit: 8 } } } });
      const uploads = c('edge-uploads', 'bar', ['samples', 'mean entropy (nats)'],
        { datasets: [{}, { type: 'line', yAxisID: 'y1' }],
          scales: { y1: { position: 'right', beginAtZero: true,
                          grid: { drawOnChartArea: false } } } });
      charts = agreement && uploads ? { agreement, uploads } : null;
    },
    show() { if (!timer) refresh(); },
    hide() {
      if (timer) clearTimeout(timer);
      timer = null;
    },
  });
})();
