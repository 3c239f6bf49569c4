// The machines table (filter, group, sort) and a machine's page: names and
// groups, disks, last image and its verified digest, boot mode, address,
// history and events; rename, group, forget, restore, capture.
import { $, api, attempt, badge, bytes, confirmDialog, duration, h, label, notice, openDialog, pct, rows, stateCell, td, time } from '/ui.js';

const STATE_ORDER = ['receiving', 'verifying', 'capturing', 'assigned', 'waiting', 'booting', 'failed', 'dropped', 'done', 'idle', 'offline'];
const SORTS = {
  name: (a, b) => label(a).localeCompare(label(b), undefined, { numeric: true }),
  address: (a, b) => String(a.address).localeCompare(String(b.address), undefined, { numeric: true }),
  state: (a, b) => rank(a) - rank(b) || SORTS.name(a, b),
  seen: (a, b) => b.lastSeen.localeCompare(a.lastSeen),
};
const shownState = (m) => (m.online || m.activity?.kind !== 'idle' ? m.state : 'offline');
function rank(m) {
  const i = STATE_ORDER.indexOf(shownState(m));
  return i < 0 ? STATE_ORDER.length : i;
}

/** Every group any machine is in, sorted. */
export const groupsOf = (machines) => [...new Set(machines.flatMap((m) => m.groups))].sort();

/** The machines the filters let through, in the chosen order. */
function visible(machines) {
  const q = $('#filter').value.trim().toLowerCase();
  const g = $('#group-filter').value;
  const superseded = $('#show-superseded').checked;
  return machines
    .filter((m) => superseded || !m.supersededBy)
    .filter((m) => g === '' || m.groups.includes(g))
    .filter((m) => q === '' || [m.id, m.name, m.hostname, m.address, ...m.groups].some((v) => String(v).toLowerCase().includes(q)))
    .sort(SORTS[$('#sort').value] ?? SORTS.name);
}

/** Keeps the group filter's options in step with the registry's groups. */
function groupOptions(machines) {
  const sel = $('#group-filter');
  const want = ['', ...groupsOf(machines)];
  const have = [...sel.options].map((o) => o.value);
  if (want.join('\n') === have.join('\n')) return;
  const current = sel.value;
  sel.replaceChildren(...want.map((g) => h('option', { value: g }, g === '' ? 'all' : g)));
  sel.value = want.includes(current) ? current : '';
}

export function renderMachines(machines, actions) {
  groupOptions(machines);
  rows('machines', visible(machines).map((m) => {
    const p = m.progress;
    const state = shownState(m);
    const done = pct(p && p.chunksDone, p && p.chunksTotal, m.state === 'done');
    const image = m.image || (m.lastImage ? `${m.lastImage.name}@${m.lastImage.version}` : '');
    return h('tr', { data: { machine: m.id, state } },
      h('td', { title: `${m.id} · host ${m.hostname}` }, h('button', { type: 'button', class: 'link', data: { open: m.id } }, label(m)), m.name && m.hostname !== m.name ? h('small', {}, ` ${m.hostname}`) : ''),
      td(m.groups.join(', '), 'opt-wide'), td(m.address, 'opt'), stateCell(state), td(image),
      // No bar for a machine with nothing under way: an idle 0% would read as a stalled transfer.
      p || m.state === 'done' ? h('td', {}, h('span', { class: 'bar', role: 'progressbar', 'aria-valuenow': done, 'aria-valuemin': 0, 'aria-valuemax': 100 }, h('i', { width: `${done}%` })), h('span', { class: 'pct' }, `${done}%`)) : h('td', {}),
      td(p && p.rateBps ? `${bytes(p.rateBps)}/s · ${duration(p.etaSeconds)}` : ''),
      td(p ? `${(100 * Number(p.loss)).toFixed(1)}%` : '', 'opt'), td(m.lastError, 'error'),
      h('td', { class: 'actions' }, m.online && m.activity?.kind === 'idle' ? h('button', { type: 'button', data: { capture: m.id } }, 'capture…') : ''));
  }), machines.length ? 'no machine matches the filter' : 'no machine has connected yet (see Getting started above)');
  $('#machines').onclick = (e) => {
    const open = e.target.closest('button[data-open]');
    if (open) void showMachine(open.dataset.open, actions);
    const cap = e.target.closest('button[data-capture]');
    if (cap) actions.capture(cap.dataset.capture);
  };
}

let openMachine = null;
/** Refreshes the open machine page after a change (called on every snapshot). */
let refreshedAt = 0;
export function refreshMachine(actions) {
  if (Date.now() - refreshedAt < 1000) return;
  refreshedAt = Date.now();
  if (openMachine !== null && $('#panel').open && $('#panel').dataset.machine === openMachine) void showMachine(openMachine, actions, true);
}

/** A machine's page, in the panel dialog. */
export async function showMachine(id, actions, quiet = false) {
  const m = await attempt('reading the machine', () => api('GET', `/api/machines/${id}`));
  if (m === undefined) return;
  // A refresh that comes back after the page was closed (or another opened) does not reopen it.
  if (quiet && !($('#panel').open && $('#panel').dataset.machine === id)) return;
  openMachine = id;
  const focused = document.activeElement?.id;
  // A refresh keeps the form as it is: what the administrator is typing is not lost.
  const kept = quiet ? $('#label-form') : null;
  const form = kept ?? h('form', { class: 'inline', id: 'label-form' },
    h('label', {}, 'Name ', h('input', { id: 'm-name', value: m.name, maxlength: 64, pattern: '[A-Za-z0-9._\\-]{1,64}', title: 'letters, digits, ".", "_" or "-"' })),
    h('label', {}, 'Groups ', h('input', { id: 'm-groups', value: m.groups.join(', '), placeholder: 'room101, lab' })),
    h('button', {}, 'Save'));
  if (!kept) form.onsubmit = async (e) => {
    e.preventDefault();
    const change = { name: $('#m-name').value.trim(), groups: $('#m-groups').value.split(/[\s,]+/).filter(Boolean) };
    if (await attempt('saving', () => saveLabels(id, change))) notice(`saved ${label({ ...m, name: change.name })}`);
  };
  const last = m.lastImage;
  const facts = h('dl', { class: 'facts' },
    ...[['MAC', m.id], ['host name', m.hostname], ['address', m.address], ['state', m.online ? m.state : 'offline'], ['boot mode', m.bootMode], ['agent', m.agentVersion], ['trust', m.trust],
      ['last image', last ? `${last.name}@${last.version} · ${time(last.at)} · ${last.verified ? 'disk digest verified ✓' : 'not verified'}` : 'none'],
      ['first seen', time(m.firstSeen)], ['last seen', time(m.lastSeen)], ...(m.supersededBy ? [['superseded by', m.supersededBy]] : [])]
      .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const disks = h('table', { class: 'grid small' }, h('thead', {}, h('tr', {}, ...['disk', 'size', 'model', 'notes'].map((t) => h('th', {}, t)))),
    h('tbody', {}, ...m.disks.map((d) => h('tr', {}, td(d.device), td(bytes(d.size)), td(d.model), td([d.boot ? 'booted from' : '', d.mounted ? 'mounted' : '', d.removable ? 'removable' : ''].filter(Boolean).join(', '))))));
  const history = h('table', { class: 'grid small' }, h('thead', {}, h('tr', {}, ...['ended', 'session', 'image', 'outcome', 'time', 'detail'].map((t) => h('th', {}, t)))),
    h('tbody', {}, ...(m.history.length ? m.history.map((x) => h('tr', {}, td(time(x.endedAt)), td(x.session), td(`${x.image}@${x.version}`), h('td', {}, badge(x.outcome), x.verified ? ' ✓' : ''), td(duration(x.seconds)), td(x.error, 'error'))) : [h('tr', {}, h('td', { colspan: 6 }, 'no session yet'))])));
  const events = h('ol', { class: 'events', id: 'm-events' }, ...(m.events.length ? m.events.map((e) => h('li', {}, h('time', {}, time(e.at)), ' ', h('span', { class: `ev ev-${e.kind}` }, e.kind), ' ', e.text)) : [h('li', {}, 'nothing recorded yet')]));
  const buttons = h('div', { class: 'buttons' },
    h('button', { type: 'button', onclick: () => actions.deploy({ machines: [m.id], image: last?.name }) }, last ? `Restore ${last.name}…` : 'Deploy to it…'),
    m.online && m.activity.kind === 'idle' ? h('button', { type: 'button', onclick: () => actions.capture(m.id) }, 'Capture…') : '',
    // A machine that is off (offline) can be woken: Wake-on-LAN from the server.
    !m.online ? h('button', { type: 'button', id: 'm-wake', onclick: () => wakeUp(m) }, 'Wake') : '',
    // Only an offline, idle machine can be forgotten (the server refuses the others): say so rather than fail.
    h('button', { type: 'button', class: 'danger', id: 'm-forget', disabled: m.online || m.activity.kind !== 'idle', title: m.online ? 'connected: stop its agent first' : undefined, onclick: () => forget(m) }, 'Forget…'));
  const d = openDialog('panel', `Machine ${label(m)}`, form, facts, buttons, h('h3', {}, 'Disks'), disks, h('h3', {}, 'Events'), events, h('h3', {}, 'History'), history);
  d.dataset.machine = id;
  if (quiet && focused) document.getElementById(focused)?.focus();
}

/**
 * Saves a machine's name and groups. If a running or waiting session of a new
 * group would take it at once (the server refuses with 409 and names the
 * session, image and disk), asks before saving again with "confirm".
 */
async function saveLabels(id, change) {
  try {
    return await api('PATCH', `/api/machines/${id}`, change);
  } catch (err) {
    if (err.code !== 'CLONECAST_ERR_NEEDS_CONFIRM') throw err;
    const why = `${err.message.split('; send')[0]}.`;
    if (!(await confirmDialog(`Overwrite ${id}?`, [why[0].toUpperCase() + why.slice(1), 'Save only if that is what you want.'], 'Save and overwrite'))) return undefined;
    return api('PATCH', `/api/machines/${id}`, { ...change, confirm: true });
  }
}

async function wakeUp(m) {
  const r = await attempt('waking', () => api('POST', '/api/wake', { machines: [m.id] }));
  if (r) notice(`sent ${r.packets} Wake-on-LAN packets for ${label(m)} to ${r.broadcasts.join(', ')}`);
}

async function forget(m) {
  const ok = await confirmDialog(`Forget ${label(m)}?`, [`${m.id} (${m.hostname}, ${m.address}) leaves the list with its name, groups, history and events.`, 'If it connects again it comes back as a new machine.'], 'Forget');
  if (!ok) return;
  if (await attempt('forgetting', () => api('DELETE', `/api/machines/${m.id}`))) {
    $('#panel').close();
    notice(`forgot ${label(m)}`);
  }
}
