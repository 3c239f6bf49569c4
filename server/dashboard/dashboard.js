// The clonecast dashboard: one WebSocket (/api/events) carrying a JSON
// snapshot of machines, sessions and images on every change; buttons call
// the admin API. No framework, nothing loaded from elsewhere. The state
// names come from the server's one vocabulary (protocol/states.ts, served
// compiled as /states.js).
import { ACTIVE_SESSION_STATES } from '/states.js';

const $ = (sel) => document.querySelector(sel);
// The token is typed into the login field and lives in this page's memory only: never in
// storage a script could read later, never in a URL the browser keeps in its history.
let token = '';
// An old link with the token in it: drop it from the address bar (it is not used).
if (location.hash || location.search) history.replaceState(null, '', location.pathname);

/**
 * Builds an element. Every value from the server becomes a text node or a
 * property, never markup: agent-reported names cannot run script here.
 */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === 'width') el.style.width = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
function bytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  n = Number(n) || 0;
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
function pct(done, total, finished) {
  return total ? Math.floor((100 * done) / total) : finished ? 100 : 0;
}
function rows(id, list) {
  const body = $(`#${id} tbody`);
  body.replaceChildren(...(list.length ? list : [h('tr', {}, h('td', { colspan: 10 }, 'none yet'))]));
}
const td = (v, cls) => h('td', { class: cls }, v);
const stateCell = (state) => h('td', { class: `state-${state}` }, state);

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
  const byAddress = [...s.machines].sort((a, b) => String(a.address).localeCompare(String(b.address), undefined, { numeric: true }) || a.id.localeCompare(b.id));
  rows('machines', byAddress.map((m) => {
    const p = m.progress;
    const state = m.online ? m.state : 'offline';
    const done = pct(p && p.chunksDone, p && p.chunksTotal, m.state === 'done');
    return h('tr', { data: { machine: m.id, state } },
      td(m.id), td(m.name ? `${m.name} (${m.hostname})` : m.hostname), td(m.address), stateCell(state),
      td(m.image || (m.lastImage ? `${m.lastImage.name}@${m.lastImage.version}` : '')),
      h('td', {}, h('span', { class: 'bar' }, h('i', { width: `${done}%` })), h('span', { class: 'pct' }, `${done}%`)),
      td(p && p.rateBps ? `${bytes(p.rateBps)}/s` : ''), td(p ? duration(p.etaSeconds) : ''),
      td(p ? `${(100 * Number(p.loss)).toFixed(1)}%` : ''), td(m.lastError, 'error'),
      h('td', {}, m.online ? h('button', { data: { capture: m.id } }, 'capture…') : ''));
  }));
  rows('sessions', s.sessions.map((x) => {
    const ms = Object.values(x.machines);
    const done = ms.filter((m) => m.state === 'done').length;
    const buttons = ACTIVE_SESSION_STATES.has(x.state)
      ? [x.state === 'waiting' ? h('button', { data: { act: 'start', id: x.id } }, 'start now') : '', ' ', h('button', { data: { act: 'cancel', id: x.id } }, 'cancel')]
      : [x.reason];
    return h('tr', { data: { session: x.id, state: x.state } },
      td(x.id), td(`${x.image}@${x.version}`), stateCell(x.state), td(x.ruleText), td(`${done}/${ms.length} done`),
      td(`${x.group}:${x.port}`), td(bytes(x.sent.bytes)), td(time(x.createdAt)), h('td', {}, ...buttons));
  }));
  rows('images', s.images.map((i) => {
    const l = i.latest;
    return l.error
      ? h('tr', {}, td(i.name), td(i.versions.join(', ')), h('td', { colspan: 3, class: 'error' }, `unreadable: ${l.error}`))
      : h('tr', {}, td(i.name), td(i.versions.join(', ')), td(bytes(l.diskSize)), td(bytes(l.storedBytes)), td(time(l.createdAt)), td(l.badRanges || ''));
  }));
  rows('captures', (s.captures || []).map((c) => {
    const p = c.progress;
    const result = c.result ? `${c.image}@${c.result.version}: ${bytes(c.result.newBytes)} new${c.result.badRanges.length ? `, ${c.result.badRanges.length} bad range(s)` : ''}` : c.error;
    return h('tr', { data: { captureId: c.id, state: c.state } },
      td(c.id), td(c.machine), td(c.device), td(c.image), stateCell(c.state), td(`${pct(p.chunksDone, p.chunksTotal, c.state === 'done')}%`),
      td(`${bytes(c.received.bytes)} (${p.reused} chunks already stored)`), td(result, c.state === 'failed' ? 'error' : undefined));
  }));
  const history = s.machines.flatMap((m) => m.history.map((x) => ({ ...x, machine: m.id }))).sort((a, b) => b.endedAt.localeCompare(a.endedAt)).slice(0, 100);
  rows('history', history.map((x) =>
    h('tr', {}, td(time(x.endedAt)), td(x.machine), td(x.session), td(`${x.image}@${x.version}`),
      h('td', { class: `state-${x.outcome}` }, `${x.outcome}${x.verified ? ' ✓' : ''}`), td(duration(x.seconds)), td(x.error, 'error'))));
}

async function act(action, id) {
  if (action === 'cancel' && !confirm(`Cancel session ${id}? Its machines stop where they are; their disks are left incomplete.`)) return;
  const res = await fetch(`/api/sessions/${encodeURIComponent(id)}/${action}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
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
      token = '';
      $('#login-error').textContent = s.error;
      $('#login').hidden = false;
      $('#main').hidden = true;
      return;
    }
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
