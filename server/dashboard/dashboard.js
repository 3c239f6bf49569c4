// The clonecast dashboard: one WebSocket (/api/events) carrying a JSON
// snapshot of machines, sessions, captures and images on every change; the
// forms and buttons call the admin API (the same routes as the CLI, with the
// token in the Authorization header). No framework, nothing loaded from
// elsewhere. The state names come from the server's one vocabulary
// (protocol/states.ts, served compiled as /states.js).
import { $, bytes, duration, getToken, h, pct, rows, setToken, stateCell, td, time } from '/ui.js';
import { refreshMachine, renderMachines } from '/machines.js';
import { captureForm, deployForm } from '/forms.js';
import { renderImages } from '/images.js';
import { renderSessions, sample } from '/session-view.js';

// An old link with the token in it: drop it from the address bar (it is not used).
if (location.hash || location.search) history.replaceState(null, '', location.pathname);

let snapshot = null;
const actions = {
  deploy: (preset) => snapshot && deployForm(snapshot, preset),
  capture: (id) => snapshot && captureForm(snapshot, id),
};

// A red banner while the server cannot save its state or network boot has stopped (text only, never HTML).
function renderHealth(health) {
  const box = $('#health');
  const problems = [];
  for (const f of (health && health.files) || []) {
    if (!f.ok) problems.push(`${f.file} cannot be saved since ${time(new Date(f.since).toISOString())} (${f.error}); changes are kept in memory and retried`);
  }
  if (health && health.pxe && !health.pxe.ok) problems.push(`network boot stopped: ${health.pxe.error}; restart the server`);
  box.hidden = problems.length === 0;
  box.textContent = problems.length ? `Server problem: ${problems.join(' · ')}` : '';
}

/** An empty server says what to do next, with the exact commands. */
function renderFirstRun(s) {
  const steps = [];
  const cmd = (text) => h('code', {}, text);
  if (s.images.length === 0) steps.push(h('li', {}, 'Put an image in the store: on the server, ', cmd('clonecast image import disk.img NAME'), ' (a raw image, a block device or a qcow2/vmdk/vhdx/vdi file), or capture a machine with its agent running: its row\'s capture… button, or ', cmd('clonecast capture MAC NAME'), '.'));
  if (s.machines.length === 0) {
    steps.push(h('li', {}, 'Bring machines: network-boot them (', cmd('clonecast serve --pxe proxy --interface IF'), '; see docs/pxe.md), or run an agent on each: ',
      cmd(`clonecast agent --server https://${location.host}/ --fingerprint FP --token-file token`), ' (FP: what ', cmd('clonecast fingerprint'), ' prints on the server; the token file: ', cmd('clonecast token'), '). A lab to try it: ', cmd('sudo clonecast lab up --clients 4'), '.'));
  }
  steps.push(h('li', {}, 'Deploy: the Deploy… button, or ', cmd('clonecast deploy NAME --group GROUP'), ' (', cmd('--any --clients N'), ' for any machine that comes).'));
  const show = s.images.length === 0 || s.machines.length === 0;
  $('#first-run').hidden = !show;
  if (show) $('#first-run-steps').replaceChildren(...steps);
}

function render(s) {
  snapshot = s;
  renderHealth(s.server.health);
  renderFirstRun(s);
  $('#server').textContent = `v${s.server.version} · ${s.server.agents} agent(s) · multicast ${s.server.senderAddress || 'off (serve --interface IF)'}`;
  sample(s.sessions, Date.parse(s.server.time) / 1000);
  renderMachines(s.machines, actions);
  renderSessions(s.sessions, s.machines, actions);
  renderImages(s.images, actions, s.server.health.repository);
  rows('captures', (s.captures || []).map((c) => {
    const p = c.progress;
    const m = s.machines.find((x) => x.id === c.machine);
    const result = c.result ? `${c.image}@${c.result.version}: ${bytes(c.result.newBytes)} new${c.result.badRanges.length ? `, ${c.result.badRanges.length} bad range(s)` : ''}` : c.error;
    return h('tr', { data: { captureId: c.id, state: c.state } },
      td(c.id), td(m ? m.name || m.hostname : c.machine), td(c.device, 'opt'), td(c.image), stateCell(c.state), td(`${pct(p.chunksDone, p.chunksTotal, c.state === 'done')}%`),
      td(`${bytes(c.received.bytes)} (${p.reused} reused)`, 'opt'), td(result, c.state === 'failed' ? 'error' : undefined));
  }), 'no capture yet: a machine\'s capture… button starts one');
  const names = new Map(s.machines.map((m) => [m.id, m.name || m.hostname || m.id]));
  const hist = s.machines.flatMap((m) => m.history.map((x) => ({ ...x, machine: m.id }))).sort((a, b) => b.endedAt.localeCompare(a.endedAt)).slice(0, 100);
  rows('history', hist.map((x) =>
    h('tr', {}, td(time(x.endedAt)), td(names.get(x.machine)), td(x.session, 'opt'), td(`${x.image}@${x.version}`),
      h('td', {}, h('span', { class: `badge state-${x.outcome}` }, `${x.outcome}${x.verified ? ' ✓' : ''}`)), td(duration(x.seconds), 'opt'), td(x.error, 'error'))));
  refreshMachine(actions);
}

// With a group chosen in the filter, the form opens on that group (a room restored in one go).
$('#deploy-open').addEventListener('click', () => actions.deploy($('#group-filter').value ? { group: $('#group-filter').value } : {}));
for (const id of ['filter', 'group-filter', 'sort', 'show-superseded']) $(`#${id}`).addEventListener('input', () => snapshot && renderMachines(snapshot.machines, actions));
for (const d of document.querySelectorAll('dialog')) d.addEventListener('click', (e) => e.target.closest('button.close') && d.close());

function conn(text, cls) {
  $('#conn').textContent = text;
  $('#conn').className = cls;
}

let retry = 500;
function connect() {
  if (!getToken()) {
    // Asking for the token is not a failure: no red "connecting…" while the form waits.
    conn('sign in', 'wait');
    $('#login').hidden = false;
    $('#token').focus();
    return;
  }
  conn('connecting…', 'wait');
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/events`);
  ws.onopen = () => ws.send(JSON.stringify({ token: getToken() }));
  ws.onmessage = (e) => {
    const s = JSON.parse(e.data);
    if (s.error) {
      setToken('');
      $('#login-error').textContent = s.error;
      $('#main').hidden = true;
      $('#nav').hidden = true;
      connect();
      return;
    }
    $('#login').hidden = true;
    $('#main').hidden = false;
    $('#nav').hidden = false;
    conn('live', 'ok');
    retry = 500;
    render(s);
  };
  ws.onclose = () => {
    if (!getToken()) return;
    conn('reconnecting…', 'bad');
    setTimeout(connect, (retry = Math.min(retry * 2, 5000)));
  };
}
$('#login').addEventListener('submit', (e) => {
  e.preventDefault();
  setToken($('#token').value.trim());
  $('#token').value = '';
  $('#login').hidden = true;
  connect();
});
connect();
