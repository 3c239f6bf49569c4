// The sessions table and a session's view: elapsed time, aggregate rate and
// ETA, a live chart (uPlot, served by this server and loaded on first use)
// of the wire rate and each machine's progress since the page opened, loss
// and repairs, and the final summary once it ended.
import { $, api, attempt, badge, bytes, confirmDialog, duration, h, label, mibps, notice, openDialog, pct, rows, stateCell, td, time } from '/ui.js';
import { ACTIVE_SESSION_STATES } from '/states.js';

/** Samples per session: {t (s), sent bytes, per machine % done}; at most SAMPLES kept. */
const SAMPLES = 900;
const series = new Map();

/** Adds a sample of every active session from a snapshot. */
export function sample(sessions, now) {
  for (const s of sessions) {
    if (!ACTIVE_SESSION_STATES.has(s.state) && series.has(s.id) && series.get(s.id).ended) continue;
    const list = series.get(s.id) ?? { points: [], ended: false };
    const pcts = Object.fromEntries(Object.entries(s.machines).map(([id, m]) => [id, pct(m.chunksDone, m.chunksTotal, m.state === 'done')]));
    const last = list.points[list.points.length - 1];
    const rate = last && now > last.t ? Math.max(0, (s.sent.bytes - last.sent) / (now - last.t)) : 0;
    if (!last || now - last.t >= 0.25) list.points.push({ t: now, sent: s.sent.bytes, rate, pcts });
    if (list.points.length > SAMPLES) list.points.splice(0, list.points.length - SAMPLES);
    list.ended = !ACTIVE_SESSION_STATES.has(s.state);
    series.set(s.id, list);
  }
}

export function renderSessions(sessions, machines, actions) {
  rows('sessions', sessions.map((x) => {
    const ms = Object.values(x.machines);
    const done = ms.filter((m) => m.state === 'done').length;
    const buttons = ACTIVE_SESSION_STATES.has(x.state)
      ? [x.state === 'waiting' ? h('button', { type: 'button', data: { act: 'start', id: x.id } }, 'start now') : '', ' ', h('button', { type: 'button', class: 'danger', data: { act: 'cancel', id: x.id } }, 'cancel…')]
      : [];
    return h('tr', { data: { session: x.id, state: x.state } },
      h('td', {}, h('button', { type: 'button', class: 'link', data: { view: x.id } }, `#${x.id}`)), td(`${x.image}@${x.version}`), stateCell(x.state),
      td(ACTIVE_SESSION_STATES.has(x.state) ? x.ruleText : x.reason || x.ruleText), td(`${done}/${ms.length} done`),
      td(bytes(x.sent.bytes), 'opt'), td(time(x.createdAt), 'opt'), h('td', { class: 'actions' }, ...buttons));
  }), 'no session yet: the Deploy… button above starts one');
  $('#sessions').onclick = (e) => {
    const b = e.target.closest('button[data-act]');
    if (b) void act(sessions.find((s) => String(s.id) === b.dataset.id), b.dataset.act, machines);
    const v = e.target.closest('button[data-view]');
    if (v) showSession(Number(v.dataset.view), sessions, machines);
  };
  const open = $('#panel');
  if (open.open && open.dataset.session) showSession(Number(open.dataset.session), sessions, machines, true);
}

async function act(s, action, machines) {
  if (!s) return;
  if (action === 'cancel') {
    const names = Object.keys(s.machines).map((id) => label(machines.find((m) => m.id === id) ?? { id }));
    const ok = await confirmDialog(`Cancel session ${s.id}?`, [`${s.image}@${s.version} stops. Its machines stop where they are; their disks are left incomplete.`, names.length ? `Machines in it: ${names.join(', ')}.` : 'No machine has joined it yet.'], 'Cancel session');
    if (!ok) return;
  }
  if (await attempt(action, () => api('POST', `/api/sessions/${s.id}/${action}`))) notice(`session ${s.id}: ${action === 'cancel' ? 'cancelled' : 'started'}`);
}

let uplot = null;
/** Loads uPlot once (a script of this server; nothing from elsewhere). */
function loadUplot() {
  uplot ??= new Promise((resolve, reject) => {
    document.head.append(h('link', { rel: 'stylesheet', href: '/uplot.css' }));
    const s = h('script', { src: '/uplot.js' });
    s.onload = () => resolve(window.uPlot);
    s.onerror = () => reject(new Error('the chart library did not load'));
    document.head.append(s);
  });
  return uplot;
}

let chart = null;
function drawChart(box, id, machineIds, machines) {
  const pts = series.get(id)?.points ?? [];
  const data = [pts.map((p) => p.t), pts.map((p) => p.rate / 1048576), ...machineIds.map((m) => pts.map((p) => p.pcts[m] ?? null))];
  if (chart && chart.root.isConnected && chart.key === `${id}:${machineIds.join(',')}`) {
    chart.setData(data);
    return;
  }
  void loadUplot().then((UPlot) => {
    chart?.destroy();
    const colours = ['#0a7', '#c60', '#a3c', '#06c', '#c03', '#590', '#888', '#b80'];
    const width = Math.max(300, box.clientWidth || 600);
    chart = new UPlot({
      width, height: 220,
      scales: { x: { time: true }, rate: { auto: true }, pct: { range: [0, 100] } },
      axes: [{}, { scale: 'rate', label: 'MiB/s on the wire' }, { scale: 'pct', side: 1, label: '% done', grid: { show: false } }],
      series: [{}, { label: 'wire MiB/s', scale: 'rate', stroke: '#234', width: 2 },
        ...machineIds.map((m, i) => ({ label: label(machines.find((x) => x.id === m) ?? { id: m }), scale: 'pct', stroke: colours[i % colours.length] }))],
    }, data, box);
    chart.key = `${id}:${machineIds.join(',')}`;
  }, (err) => (box.textContent = err.message));
}

/** A session's view in the panel dialog; refresh: only update what is open. */
export function showSession(id, sessions, machines, refresh = false) {
  const s = sessions.find((x) => x.id === id);
  if (!s) return;
  const ms = Object.entries(s.machines);
  const start = s.startedAt ? Date.parse(s.startedAt) : null;
  const end = s.endedAt ? Date.parse(s.endedAt) : Date.now();
  const elapsed = start ? (end - start) / 1000 : null;
  const active = ACTIVE_SESSION_STATES.has(s.state);
  const rate = ms.reduce((a, [, m]) => a + (m.state === 'receiving' ? Number(m.rateBps) : 0), 0);
  const etas = ms.map(([mid]) => machines.find((x) => x.id === mid)?.progress?.etaSeconds).filter((x) => x !== null && x !== undefined);
  const stats = h('dl', { class: 'facts', id: 's-stats' },
    ...[['image', `${s.image}@${s.version} (${bytes(s.imageSize)})`], ['state', badge(s.state)], ['rule', s.ruleText], ['elapsed', elapsed === null ? 'not started' : duration(elapsed)],
      ['rate', active ? mibps(rate) : ''], ['ETA', active && etas.length ? duration(Math.max(...etas)) : ''],
      ['sent', `${bytes(s.sent.bytes)} in ${s.sent.packets} packets, ${s.sent.repairPackets} repair packets`], ['multicast', `${s.group}:${s.port}`], ...(s.reason ? [['reason', s.reason]] : [])]
      .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const table = h('table', { class: 'grid small', id: 's-machines' },
    h('thead', {}, h('tr', {}, ...['machine', 'state', 'progress', 'rate', 'loss', 'NACKs', 'skipped', 'time', 'MiB/s', 'error'].map((t) => h('th', {}, t)))),
    h('tbody', {}, ...ms.map(([mid, m]) => h('tr', { data: { machine: mid } }, td(label(machines.find((x) => x.id === mid) ?? { id: mid })), h('td', {}, badge(m.state), m.verified ? ' ✓' : ''),
      td(`${pct(m.chunksDone, m.chunksTotal, m.state === 'done')}%`), td(m.rateBps ? mibps(m.rateBps) : ''), td(`${(100 * Number(m.loss)).toFixed(1)}%`), td(m.nacks), td(m.skipped),
      td(duration(m.seconds)), td(m.seconds > 0 ? (Number(m.bytesWritten) / 1048576 / m.seconds).toFixed(1) : ''), td(m.error, 'error')))));
  const summary = active ? '' : h('p', { id: 's-summary' }, `Ended ${s.state} after ${duration(elapsed)}: ${ms.filter(([, m]) => m.state === 'done').length} of ${ms.length} machines done; ${bytes(s.sent.bytes)} sent for an image of ${bytes(s.imageSize)}${s.imageSize ? ` (${(s.sent.bytes / s.imageSize).toFixed(2)}×)` : ''}.`);
  const box = refresh && $('#s-chart') ? $('#s-chart') : h('div', { id: 's-chart', class: 'chart' });
  if (refresh && $('#s-chart')) {
    $('#s-stats').replaceWith(stats);
    $('#s-machines').replaceWith(table);
    $('#s-summary')?.remove();
    if (summary) table.after(summary);
  } else {
    openDialog('panel', `Session ${s.id}`, stats, box, summary, table);
    $('#panel').dataset.machine = '';
  }
  $('#panel').dataset.session = String(id);
  drawChart(box, id, ms.map(([mid]) => mid), machines);
}
