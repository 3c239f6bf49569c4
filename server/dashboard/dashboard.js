// The clonecast dashboard: one WebSocket (/api/events) carrying a JSON
// snapshot of machines, sessions and images on every change; buttons call
// the admin API. No framework, nothing loaded from elsewhere.
'use strict';

const $ = (sel) => document.querySelector(sel);
let token = new URLSearchParams(location.hash.slice(1)).get('token') || localStorage.getItem('clonecast-token') || '';
if (location.hash) history.replaceState(null, '', location.pathname);

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
function bytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '';
  s = Math.max(0, Math.round(s));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}
function time(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}
function rows(id, html) {
  $(`#${id} tbody`).innerHTML = html || `<tr><td colspan="10">none yet</td></tr>`;
}

// A red banner while the server cannot save its state or network boot has stopped (text only, never HTML).
function renderHealth(h) {
  const box = $('#health');
  const problems = [];
  for (const f of (h && h.files) || []) {
    if (!f.ok) problems.push(`${f.file} cannot be saved since ${time(new Date(f.since).toISOString())} (${f.error}); changes are kept in memory and retried`);
  }
  if (h && h.pxe && !h.pxe.ok) problems.push(`network boot stopped: ${h.pxe.error}; restart the server`);
  box.hidden = problems.length === 0;
  box.textContent = problems.length ? `Server problem: ${problems.join(' · ')}` : '';
}

function render(s) {
  renderHealth(s.server.health);
  $('#server').textContent = `v${s.server.version} · ${s.server.agents} agent(s) connected · multicast ${s.server.senderAddress || 'off (serve --interface IF)'}`;
  const byAddress = [...s.machines].sort((a, b) => a.address.localeCompare(b.address, undefined, { numeric: true }) || a.id.localeCompare(b.id));
  rows('machines', byAddress.map((m) => {
    const p = m.progress;
    const pct = p && p.chunksTotal ? Math.floor((100 * p.chunksDone) / p.chunksTotal) : (m.state === 'done' ? 100 : 0);
    const state = m.online ? m.state : 'offline';
    return `<tr data-machine="${esc(m.id)}" data-state="${esc(state)}"><td>${esc(m.id)}</td><td>${esc(m.hostname)}</td><td>${esc(m.address)}</td>` +
      `<td class="state-${esc(state)}">${esc(state)}</td><td>${esc(m.image || (m.lastImage ? `${m.lastImage.name}@${m.lastImage.version}` : ''))}</td>` +
      `<td><span class="bar"><i style="width:${pct}%"></i></span><span class="pct">${pct}%</span></td>` +
      `<td>${p && p.rateBps ? `${bytes(p.rateBps)}/s` : ''}</td><td>${p ? duration(p.etaSeconds) : ''}</td>` +
      `<td>${p ? `${(100 * p.loss).toFixed(1)}%` : ''}</td><td class="error">${esc(m.lastError)}</td>` +
      `<td>${m.online ? `<button data-capture="${esc(m.id)}">capture…</button>` : ''}</td></tr>`;
  }).join(''));
  rows('sessions', s.sessions.map((x) => {
    const ms = Object.values(x.machines);
    const done = ms.filter((m) => m.state === 'done').length;
    const active = x.state === 'waiting' || x.state === 'running';
    const buttons = active
      ? `${x.state === 'waiting' ? `<button data-act="start" data-id="${x.id}">start now</button> ` : ''}<button data-act="cancel" data-id="${x.id}">cancel</button>`
      : esc(x.reason);
    return `<tr data-session="${x.id}" data-state="${esc(x.state)}"><td>${x.id}</td><td>${esc(x.image)}@${x.version}</td><td class="state-${esc(x.state)}">${esc(x.state)}</td>` +
      `<td>${esc(x.ruleText)}</td><td>${done}/${ms.length} done</td><td>${esc(x.group)}:${x.port}</td><td>${bytes(x.sent.bytes)}</td><td>${time(x.createdAt)}</td><td>${buttons}</td></tr>`;
  }).join(''));
  rows('images', s.images.map((i) => {
    const l = i.latest;
    return l.error
      ? `<tr><td>${esc(i.name)}</td><td>${i.versions.join(', ')}</td><td colspan="3" class="error">unreadable: ${esc(l.error)}</td></tr>`
      : `<tr><td>${esc(i.name)}</td><td>${i.versions.join(', ')}</td><td>${bytes(l.diskSize)}</td><td>${bytes(l.storedBytes)}</td><td>${time(l.createdAt)}</td><td>${l.badRanges || ''}</td></tr>`;
  }).join(''));
  rows('captures', (s.captures || []).map((c) => {
    const p = c.progress;
    const pct = p.chunksTotal ? Math.floor((100 * p.chunksDone) / p.chunksTotal) : (c.state === 'done' ? 100 : 0);
    const result = c.result ? `${esc(c.image)}@${c.result.version}: ${bytes(c.result.newBytes)} new${c.result.badRanges.length ? `, ${c.result.badRanges.length} bad range(s)` : ''}` : esc(c.error);
    return `<tr data-capture-id="${c.id}" data-state="${esc(c.state)}"><td>${c.id}</td><td>${esc(c.machine)}</td><td>${esc(c.device)}</td><td>${esc(c.image)}</td>` +
      `<td class="state-${esc(c.state)}">${esc(c.state)}</td><td>${pct}%</td><td>${bytes(c.received.bytes)} (${p.reused} chunks already stored)</td><td class="${c.state === 'failed' ? 'error' : ''}">${result}</td></tr>`;
  }).join(''));
  const history = s.machines.flatMap((m) => m.history.map((h) => ({ ...h, machine: m.id }))).sort((a, b) => b.endedAt.localeCompare(a.endedAt)).slice(0, 100);
  rows('history', history.map((h) =>
    `<tr><td>${time(h.endedAt)}</td><td>${esc(h.machine)}</td><td>${h.session}</td><td>${esc(h.image)}@${h.version}</td>` +
    `<td class="state-${esc(h.outcome)}">${esc(h.outcome)}${h.verified ? ' ✓' : ''}</td><td>${duration(h.seconds)}</td><td class="error">${esc(h.error)}</td></tr>`).join(''));
}

async function act(action, id) {
  const res = await fetch(`/api/sessions/${id}/${action}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) alert((await res.json()).error?.message ?? `HTTP ${res.status}`);
}
document.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-act]');
  if (b) void act(b.dataset.act, b.dataset.id);
  const c = e.target.closest('button[data-capture]');
  if (c) {
    const image = prompt(`Capture ${c.dataset.capture}'s disk as a new version of which image?`);
    if (image) void startCapture(c.dataset.capture, image.trim());
  }
});

async function startCapture(machine, image) {
  const res = await fetch('/api/captures', { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ machine, image }) });
  if (!res.ok) alert((await res.json()).error?.message ?? `HTTP ${res.status}`);
}

let retry = 500;
function connect() {
  if (!token) {
    $('#login').hidden = false;
    return;
  }
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/events`);
  ws.onopen = () => ws.send(JSON.stringify({ token }));
  ws.onmessage = (e) => {
    const s = JSON.parse(e.data);
    if (s.error) {
      localStorage.removeItem('clonecast-token');
      token = '';
      $('#login-error').textContent = s.error;
      $('#login').hidden = false;
      $('#main').hidden = true;
      return;
    }
    localStorage.setItem('clonecast-token', token);
    $('#login').hidden = true;
    $('#main').hidden = false;
    $('#conn').textContent = 'live';
    $('#conn').className = 'ok';
    retry = 500;
    render(s);
  };
  ws.onclose = () => {
    $('#conn').textContent = 'reconnecting…';
    $('#conn').className = 'bad';
    if (token) setTimeout(connect, (retry = Math.min(retry * 2, 5000)));
  };
}
$('#login').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('#token').value.trim();
  $('#login').hidden = true;
  connect();
});
connect();
