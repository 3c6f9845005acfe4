// cairn web UI — Chat: streamed answers from /v1/chat/completions (SSE read through fetch and a
// ReadableStream), optionally with retrieval (cairn's `rag` extension); the sources come with
// the last chunk, and the answer's [n] citations are then linked to the passages they cite.
'use strict';

(() => {
  const { api, el, $, fmtSeconds } = cairn;
  const history = []; // {role, content} of finished turns
  let controller = null;
  let turn = 0;

  // Yields the payload of each `data: ...` event of an SSE body.
  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = event.split('\n').filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (data) yield data;
      }
    }
  }

  // The answer with each [n] that names a source turned into a link to it.
  function renderAnswer(node, text, sources, id) {
    node.textContent = '';
    const re = /\[(\d+)\]/g;
    let last = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      const n = Number(m[1]);
      if (!sources || n < 1 || n > sources.length) continue;
      node.append(text.slice(last, m.index));
      const a = el('a', { class: 'cite', href: `#src-${id}-${n}`, title: sources[n - 1].key,
                          text: `[${n}]` });
      a.addEventListener('click', (ev) => {
        ev.preventDefault(); // keep the tab in the URL; highlight the passage instead
        const li = document.getElementById(`src-${id}-${n}`);
        if (!li) return;
        for (const o of li.parentNode.children) o.classList.remove('hl');
        li.classList.add('hl');
        li.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
      });
      node.append(a);
      last = m.index + m[0].length;
    }
    node.append(text.slice(last));
  }

  function renderSources(sources, id) {
    return el('ol', { class: 'sources' }, sources.map((s, i) => {
      const meta = s.metadata || {};
      const where = meta.source || s.key || '';
      return el('li', { id: `src-${id}-${i + 1}` },
        el('span', { class: 'meta', text: `${where} · score ${s.score.toFixed(3)} · ` }),
        s.text);
    }));
  }

  function renderTimings(t) {
    if (!t) return null;
    const parts = [];
    if (t.rag_mode !== undefined) {
      parts.push(`retrieval (mode ${t.rag_mode})`, `embed ${fmtSeconds(t.embed_s)}`);
      if (t.rag_mode !== 'none') parts.push(`${t.rag_mode} ${fmtSeconds(t.pre_retrieval_s)}`);
      parts.push(`search ${fmtSeconds(t.search_s)}`);
    }
    parts.push(`queue ${fmtSeconds(t.queue_s)}`, `first token ${fmtSeconds(t.ttft_s)}`,
               `generation ${fmtSeconds(t.generation_s)}`, `total ${fmtSeconds(t.total_s)}`);
    return el('div', { class: 'timings' }, parts.join(' · '));
  }

  async function send(question) {
    const id = ++turn;
    const log = $('chat-log');
    log.append(el('div', { class: 'msg user' }, question));
    const answer = el('div', { class: 'answer streaming' });
    const box = el('div', { class: 'msg assistant', 'data-turn': id }, answer);
    log.append(box);
    box.scrollIntoView({ block: 'end' });

    const rag = $('chat-rag').checked;
    const body = {
      messages: history.slice(-6).concat([{ role: 'user', content: question }]),
      max_tokens: Number($('chat-max').value) || 96,
      stream: true,
    };
    if (rag) body.rag = { k: Number($('chat-k').value) || 4, mode: $('chat-mode').value };

    controller = new AbortController();
    $('chat-send').disabled = true;
    $('chat-stop').hidden = false;
    let text = '';
    let sources = null;
    let timings = null;
    let error = null;
    try {
      const r = await api('/v1/chat/completions', { method: 'POST', json: body,
                                                    signal: controller.signal });
      if (!r.ok) {
        const doc = await r.json().catch(() => null);
        throw new Error(doc && doc.error ? doc.error.message : `${r.status} ${r.statusText}`);
      }
      for await (const data of sseEvents(r)) {
        if (data === '[DONE]') break;
        const chunk = JSON.parse(data);
        if (chunk.error) { error = chunk.error.message; continue; }
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          text += delta.content;
          answer.textContent = text;
        }
        if (chunk.sources) sources = chunk.sources;
        if (chunk.cairn) timings = chunk.cairn;
      }
    } catch (e) {
      error = e.name === 'AbortError' ? 'stopped' : e.message;
    } finally {
      controller = null;
      $('chat-send').disabled = false;
      $('chat-stop').hidden = true;
      answer.classList.remove('streaming');
    }
    renderAnswer(answer, text, sources, id);
    if (error) box.append(el('div', { class: 'error', text: error }));
    const t = renderTimings(timings);
    if (t) box.append(t);
    if (sources && sources.length) box.append(renderSources(sources, id));
    box.dataset.done = '1';
    history.push({ role: 'user', content: question }, { role: 'assistant', content: text });
  }

  cairn.register('chat', {
    init() {
      $('chat-form').addEventListener('submit', (ev) => {
        ev.preventDefault();
        const q = $('chat-input').value.trim();
        if (!q || controller) return;
        $('chat-input').value = '';
        send(q);
      });
      $('chat-input').addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey) {
          ev.preventDefault();
          $('chat-form').requestSubmit();
        }
      });
      $('chat-stop').addEventListener('click', () => controller && controller.abort());
      $('chat-clear').addEventListener('click', () => {
        history.length = 0;
        $('chat-log').textContent = '';
      });
      $('chat-rag').addEventListener('change', () => {
        $('chat-mode').disabled = $('chat-k').disabled = !$('chat-rag').checked;
      });
    },
    show() { $('chat-input').focus(); },
  });
})();
