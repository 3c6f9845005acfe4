// cairn web UI — Jobs: queue a summarization (POST /v1/jobs) and follow each job this tab
// queued (GET /v1/jobs/{id}) until its summary arrives. The list lives in session storage.
'use strict';

(() => {
  const { apiJson, el, $ } = cairn;
  const STORE = 'cairn.jobs';
  let jobs = JSON.parse(sessionStorage.getItem(STORE) || '[]');
  let timer = null;    // the next poll, when one is due
  let polling = false; // a poll is running (it reschedules itself while jobs are pending)
  let visible = false;

  const save = () => sessionStorage.setItem(STORE, JSON.stringify(jobs.slice(0, 50)));
  const final = (s) => s === 'done' || s === 'failed';

  function render() {
    const tbody = document.querySelector('#job-table tbody');
    tbody.textContent = '';
    for (const j of jobs) {
      const detail = j.status === 'done' ? j.result
        : j.status === 'failed' ? j.error || 'failed'
        : j.last_error ? `retrying: ${j.last_error}` : '';
      tbody.append(el('tr', { 'data-job': j.id },
        el('td', { class: 'mono', text: j.id.slice(0, 12) }),
        el('td', { class: 'status-' + j.status, text: j.status }),
        el('td', { text: new Date(j.queued).toLocaleTimeString() }),
        el('td', { class: 'summary', text: detail || '' })));
    }
  }

  async function poll() {
    timer = null;
    polling = true;
    let pending = false;
    for (const j of jobs) {
      if (final(j.status)) continue;
      try {
        const s = await apiJson('/v1/jobs/' + encodeURIComponent(j.id));
        Object.assign(j, { status: s.status, result: s.result, error: s.error,
                           last_error: s.last_error });
      } catch (e) {
        if (e.status !== 404) j.last_error = e.message; // 404: not picked up yet
      }
      pending = pending || !final(j.status);
    }
    save();
    render();
    polling = false;
    if (pending && visible) timer = setTimeout(poll, 1500);
  }

  function follow() {
    if (!polling && !timer) poll();
  }

  async function queue(text) {
    $('job-error').textContent = '';
    try {
      const r = await apiJson('/v1/jobs', { method: 'POST',
                                            json: { type: 'summarize', payload: text } });
      jobs.unshift({ id: r.id, status: r.status, queued: Date.now() });
      save();
      render();
      follow();
      return true;
    } catch (e) {
      $('job-error').textContent = e.message;
      return false;
    }
  }

  // Other pages hand a document over: the Jobs page shows it and queues it.
  cairn.summarize = (text) => {
    cairn.show('jobs');
    $('job-text').value = text;
    queue(text);
  };

  cairn.register('jobs', {
    init() {
      $('job-form').addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const text = $('job-text').value.trim();
        if (text && (await queue(text))) $('job-text').value = '';
      });
      $('job-file').addEventListener('change', async () => {
        const f = $('job-file').files[0];
        if (f) $('job-text').value = await f.text();
      });
    },
    show() {
      visible = true;
      render();
      follow();
    },
    hide() {
      visible = false;
      if (timer) clearTimeout(timer);
      timer = null;
    },
  });
})();
