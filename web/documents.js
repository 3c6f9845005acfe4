// cairn web UI — Documents: upload files (POST /v1/documents/upload, the file as the body),
// search (POST /v1/retrieve), and list, filter and delete passages (GET /v1/documents,
// DELETE /v1/documents/{id}).
'use strict';

(() => {
  const { api, apiJson, el, $, fmtSeconds, fmtBytes } = cairn;
  let nextAfter = null; // paging cursor of the current listing

  async function upload(file, meta) {
    const q = new URLSearchParams({ filename: file.name });
    if (meta) q.set('metadata', meta);
    const li = el('li', {}, `${file.name}: uploading ${fmtBytes(file.size)}…`);
    $('upload-results').prepend(li);
    try {
      const r = await apiJson('/v1/documents/upload?' + q, {
        method: 'POST', body: file,
        headers: { 'Content-Type': file.type || 'application/octet-stream' },
      });
      li.textContent = `${r.filename} (${r.kind}, "${r.title}"): ${r.passages} passage` +
        `${r.passages === 1 ? '' : 's'}, ids ${r.data[0].id}–${r.data[r.data.length - 1].id}, ` +
        `indexed in ${fmtSeconds(r.cairn.total_s)}`;
      li.dataset.upload = r.upload_id;
      return true;
    } catch (e) {
      li.textContent = `${file.name}: ${e.status || ''} ${e.message}`;
      li.className = 'err';
      return false;
    }
  }

  async function search(query, k) {
    const out = $('search-results');
    out.textContent = '';
    $('search-info').textContent = 'Searching…';
    try {
      const r = await apiJson('/v1/retrieve', { method: 'POST', json: { query, k } });
      $('search-info').textContent = `${r.data.length} passages in ` +
        `${fmtSeconds(r.cairn.total_s)} (embed ${fmtSeconds(r.cairn.embed_s)}, ` +
        `search ${fmtSeconds(r.cairn.search_s)})`;
      for (const h of r.data) {
        const where = (h.metadata && h.metadata.source) || h.key;
        out.append(el('li', {}, el('span', { class: 'meta',
          text: `#${h.id} ${where} · score ${h.score.toFixed(3)} · ` }), h.text));
      }
    } catch (e) {
      $('search-info').textContent = e.message;
    }
  }

  function listQuery(after) {
    const q = new URLSearchParams({ limit: '25' });
    const key = $('list-key').value.trim();
    if (key) q.set('metadata.' + key, $('list-value').value.trim());
    const text = $('list-q').value.trim();
    if (text) q.set('q', text);
    if (after !== null && after !== undefined) q.set('after', String(after));
    return q;
  }

  async function list(more) {
    const tbody = document.querySelector('#doc-table tbody');
    if (!more) {
      tbody.textContent = '';
      nextAfter = null;
    }
    try {
      const r = await apiJson('/v1/documents?' + listQuery(more ? nextAfter : null));
      for (const d of r.data) tbody.append(row(d));
      nextAfter = r.has_more ? r.next_after : null;
      $('list-more').hidden = !r.has_more;
      $('list-info').textContent = `${tbody.children.length} shown · ` +
        `${r.total_documents} passages in the index`;
    } catch (e) {
      $('list-info').textContent = e.message;
    }
  }

  function row(d) {
    const del = el('button', { type: 'button', class: 'small', text: 'Delete' });
    const sum = el('button', { type: 'button', class: 'small', text: 'Summarize' });
    const tr = el('tr', { 'data-id': d.id },
      el('td', { class: 'mono', text: d.id }),
      el('td', { text: d.title }),
      el('td', { class: 'mono', text: d.key }),
      el('td', { class: 'mono meta', text: JSON.stringify(d.metadata) }),
      el('td', { class: 'text', text: d.text + (d.text_bytes > d.text.length ? '…' : '') }),
      el('td', { class: 'actions' }, del, ' ', sum));
    del.addEventListener('click', async () => {
      del.disabled = true;
      const r = await api('/v1/documents/' + d.id, { method: 'DELETE' });
      if (r.ok) tr.remove();
      else del.disabled = false;
    });
    sum.addEventListener('click', async () => {
      // The whole passage (the list shows a preview), handed to the Jobs page.
      const q = new URLSearchParams({ limit: '1', full: '1' });
      if (d.id > 0) q.set('after', String(d.id - 1));
      const r = await apiJson('/v1/documents?' + q);
      if (r.data.length && r.data[0].id === d.id) cairn.summarize(r.data[0].text);
    });
    return tr;
  }

  cairn.register('docs', {
    init() {
      $('upload-form').addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const meta = $('upload-meta').value.trim();
        const files = Array.from($('upload-files').files);
        let added = 0;
        for (const f of files) if (await upload(f, meta)) added++;
        if (added) list(false);
        $('upload-files').value = '';
      });
      $('search-form').addEventListener('submit', (ev) => {
        ev.preventDefault();
        search($('search-q').value.trim(), Number($('search-k').value) || 5);
      });
      $('list-form').addEventListener('submit', (ev) => {
        ev.preventDefault();
        list(false);
      });
      $('list-clear').addEventListener('click', () => {
        $('list-key').value = $('list-value').value = $('list-q').value = '';
        list(false);
      });
      $('list-more').addEventListener('click', () => list(true));
    },
    show() { list(false); },
  });
})();
