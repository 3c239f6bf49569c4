// The deploy (and restore) form and the capture form. Each builds the same
// request the CLI sends (POST /api/sessions, POST /api/captures) and asks
// before anything is overwritten, naming the machines and their disks.
import { $, api, attempt, bytes, confirmDialog, h, label, notice, openDialog } from '/ui.js';
import { groupsOf } from '/machines.js';

const field = (text, input, hint) => h('label', { class: 'field' }, h('span', {}, text), input, hint ? h('small', {}, hint) : '');
const options = (list, selected) => list.map(([v, t]) => h('option', { value: v, selected: v === selected }, t));

/** The disk a session would write on a machine: its only disk, else the agent's choice. */
function targetDisk(m) {
  const d = m.disks.filter((x) => !x.boot && !x.removable);
  if (m.disks.length === 1) return `${m.disks[0].device} (${bytes(m.disks[0].size)}${m.disks[0].model ? `, ${m.disks[0].model}` : ''})`;
  return d.length === 1 ? `${d[0].device} (${bytes(d[0].size)}), as the agent picks it` : `the disk its agent picks among ${m.disks.map((x) => x.device).join(', ') || 'its disks'}`;
}

/**
 * The deploy form. preset: {machines: [ids]} or {group}, and an image name
 * (a restore from a machine's page opens it with that machine and its last image).
 */
export function deployForm(snapshot, preset = {}) {
  const images = snapshot.images.filter((i) => !i.latest.error);
  // A restore names its image: never open the form on another one (the first in the list) when that one cannot be sent.
  if (preset.image !== undefined && !images.some((i) => i.name === preset.image)) {
    const gone = snapshot.images.find((i) => i.name === preset.image);
    notice(gone ? `cannot restore ${preset.image}: its latest version @${gone.latest.version} cannot be read (${gone.latest.error}); see its versions on the Images page` : `cannot restore ${preset.image}: there is no such image any more`, true);
    return;
  }
  if (images.length === 0) {
    notice('there is no image to deploy yet: import or capture one first (see Getting started)', true);
    return;
  }
  // Every machine, superseded ones too: the server's group session takes them all, so the form counts and names them all.
  const machines = snapshot.machines;
  const groups = groupsOf(machines);
  const note = (m) => `${m.online ? '' : ' (offline)'}${m.supersededBy ? ` (superseded by ${m.supersededBy}: still in its groups)` : ''}`;
  const image = h('select', { id: 'd-image', required: true }, ...options(images.map((i) => [i.name, i.name]), preset.image ?? images[0].name));
  const version = h('select', { id: 'd-version' });
  const date = h('input', { id: 'd-date', type: 'date', hidden: true, 'aria-label': 'version as of date' });
  const fillVersions = () => {
    const i = images.find((x) => x.name === image.value);
    version.replaceChildren(...options([['latest', `latest (@${i.latest.version})`], ...[...i.versions].reverse().map((v) => [String(v), `@${v}`]), ['date', 'as of a date…']], 'latest'));
    date.hidden = true;
  };
  image.onchange = fillVersions;
  version.onchange = () => (date.hidden = version.value !== 'date');
  fillVersions();

  const mode = preset.machines ? 'machines' : preset.group || groups.length ? 'group' : 'machines';
  const who = h('select', { id: 'd-who' }, ...options([['group', 'a group'], ['machines', 'chosen machines'], ['any', 'any machine that comes']], mode));
  const group = h('select', { id: 'd-group' }, ...options(groups.map((g) => [g, `${g} (${machines.filter((m) => m.groups.includes(g)).length} machines)`]), preset.group));
  const picks = h('fieldset', { id: 'd-machines', class: 'picks' }, h('legend', {}, 'Machines'),
    ...machines.map((m) => h('label', {}, h('input', { type: 'checkbox', value: m.id, checked: preset.machines?.includes(m.id) }), ` ${label(m)} `, h('small', {}, `${m.id}${note(m)}`))));
  const clients = h('input', { id: 'd-clients', type: 'number', min: 1, max: 10000 });
  const showWho = () => {
    group.parentElement.hidden = who.value !== 'group';
    picks.hidden = who.value !== 'machines';
    // Wake-on-LAN needs a list of machines: a group or chosen ones, not "any that comes".
    wake.disabled = who.value === 'any';
    if (wake.disabled) wake.checked = false;
    if (who.value === 'group' && group.value) clients.value = String(machines.filter((m) => m.groups.includes(group.value)).length || '');
  };
  who.onchange = showWho;
  group.onchange = showWho;

  const start = h('select', { id: 'd-start' }, ...options([['default', 'when every named machine has joined (any: the number below)'], ['now', 'now'], ['wait', 'some seconds after the first joined'], ['at', 'at a time']], 'default'));
  const waitS = h('input', { id: 'd-wait', type: 'number', min: 0, value: 60 });
  const at = h('input', { id: 'd-at', type: 'datetime-local' });
  const showStart = () => {
    waitS.parentElement.hidden = start.value !== 'wait';
    at.parentElement.hidden = start.value !== 'at';
  };
  start.onchange = showStart;
  const rate = h('input', { id: 'd-rate', type: 'number', min: 1, max: 100000, placeholder: 'no limit' });
  const after = h('select', { id: 'd-after' }, ...options([['wait', 'wait'], ['reboot', 'reboot'], ['poweroff', 'power off']], 'wait'));
  const diff = h('select', { id: 'd-diff' }, ...options([['auto', 'automatic (when the disk last received this image)'], ['on', 'always: send only what differs'], ['off', 'never: send everything']], 'auto'));
  const finalVerify = h('input', { id: 'd-final', type: 'checkbox' });
  const wake = h('input', { id: 'd-wake', type: 'checkbox' });
  const nameThem = h('input', { id: 'd-name', type: 'checkbox', checked: true });
  const form = h('form', { id: 'deploy-form', class: 'stack' },
    h('div', { class: 'row' }, field('Image', image), field('Version', version), field('Date', date)),
    h('div', { class: 'row' }, field('Targets', who), field('Group', group), field('Start with', clients, 'machines (any: also the most that may join)')),
    picks,
    h('div', { class: 'row' }, field('Start', start), field('Seconds', waitS), field('Time', at)),
    h('div', { class: 'row' }, field('Rate limit (Mbit/s)', rate), field('After', after), field('Differential', diff)),
    h('div', { class: 'row' }, h('label', {}, finalVerify, ' read each whole disk back at the end'),
      h('label', { title: 'Wake-on-LAN magic packets, sent by the server as soon as the session exists (the machines\' firmware must have it on)' }, wake, ' wake the machines first (Wake-on-LAN)'),
      h('label', { title: 'after its disk verified, a machine with a name gets it as its Linux host name and Windows computer name' }, nameThem, ' name the machines in the new system')),
    h('div', { class: 'buttons' }, h('button', { class: 'primary', id: 'd-submit' }, 'Deploy…')));
  openDialog('form-dialog', 'Deploy an image', form);
  showWho();
  showStart();
  form.onsubmit = async (e) => {
    e.preventDefault();
    const ref = version.value === 'latest' ? image.value : version.value === 'date' ? `${image.value}@${date.value}` : `${image.value}@${version.value}`;
    if (version.value === 'date' && !date.value) return notice('choose the date of the version', true);
    const rule = {};
    let targets;
    if (who.value === 'group') {
      if (!group.value) return notice('there is no group yet: give machines groups on their pages', true);
      rule.group = group.value;
      targets = machines.filter((m) => m.groups.includes(group.value));
    } else if (who.value === 'machines') {
      rule.machines = [...picks.querySelectorAll('input:checked')].map((i) => i.value);
      if (!rule.machines.length) return notice('tick at least one machine', true);
      targets = machines.filter((m) => rule.machines.includes(m.id));
    } else rule.any = true;
    if (clients.value) rule.clients = Number(clients.value);
    if (who.value === 'any' && !rule.clients) return notice('say how many machines may join (Start with)', true);
    if (start.value === 'now') rule.now = true;
    if (start.value === 'wait') rule.waitS = Number(waitS.value);
    if (start.value === 'at') {
      if (!at.value) return notice('choose the start time', true);
      rule.at = new Date(at.value).toISOString();
    }
    const req = { image: ref, rule, after: after.value };
    if (rate.value) req.rateMbit = Number(rate.value);
    if (diff.value !== 'auto') req.differential = diff.value === 'on';
    if (finalVerify.checked) req.finalVerify = true;
    if (wake.checked) req.wake = true;
    if (!nameThem.checked) req.nameMachines = false;
    const lines = targets
      ? [`These ${targets.length} machine(s) will be overwritten with ${ref}:`, h('ul', { class: 'overwrite' }, ...targets.map((m) => h('li', {}, `${label(m)} (${m.id})${note(m)}: ${targetDisk(m)}`)))]
      : [`Any machine that comes, up to ${rule.clients}, will have its disk overwritten with ${ref}.`];
    lines.push(`After: ${after.options[after.selectedIndex].text}.`);
    if (wake.checked) lines.push('They are woken with Wake-on-LAN first.');
    if (!(await confirmDialog(`Overwrite ${targets ? `${targets.length} machine(s)` : 'machines'} with ${ref}?`, lines, 'Deploy'))) return;
    const s = await attempt('deploy', () => api('POST', '/api/sessions', req));
    if (s) {
      $('#form-dialog').close();
      const woke = s.woken?.macs ? `; woke ${s.woken.macs.length} machine(s)` : s.woken?.error ? `; not woken: ${s.woken.error}` : '';
      notice(`session ${s.id}: ${s.image}@${s.version} created${woke}${s.warnings?.length ? `; ${s.warnings.join('; ')}` : ''}`, Boolean(s.woken?.error || s.warnings?.length));
    }
  };
}

/** The capture form for one machine: its disk, partitions, the image and the version it will become. */
export function captureForm(snapshot, id) {
  const m = snapshot.machines.find((x) => x.id === id);
  if (!m) return;
  const disk = h('select', { id: 'c-disk' }, ...options(m.disks.map((d) => [d.device, `${d.device} · ${bytes(d.size)}${d.model ? ` · ${d.model}` : ''}${d.boot ? ' · booted from' : ''}`]), m.disks[0]?.device));
  const names = h('datalist', { id: 'c-names' }, ...snapshot.images.map((i) => h('option', { value: i.name })));
  const image = h('input', { id: 'c-image', required: true, list: 'c-names', pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}', title: '1-64 letters, digits, ".", "_" or "-", starting with a letter or digit', autocomplete: 'off' });
  const next = h('output', { id: 'c-next' });
  image.oninput = () => {
    const i = snapshot.images.find((x) => x.name === image.value.trim());
    next.textContent = image.value.trim() === '' ? '' : i ? `becomes ${i.name}@${Math.max(...i.versions) + 1} (after @${Math.max(...i.versions)}: only changed chunks are sent)` : `becomes ${image.value.trim()}@1, a new image`;
  };
  const parts = h('input', { id: 'c-parts', placeholder: 'all (the whole disk)', pattern: '[0-9, ]*' });
  const ignore = h('input', { id: 'c-ignore', type: 'checkbox' });
  const form = h('form', { id: 'capture-form', class: 'stack' },
    h('p', {}, `From ${label(m)} (${m.id}, ${m.address}). Nothing on the machine is changed.`),
    h('div', { class: 'row' }, field('Disk', disk), field('Partitions', parts, 'numbers such as 1,2; empty: the whole disk')),
    h('div', { class: 'row' }, field('Image', image, 'an existing image gets a new version'), next, names),
    h('label', {}, ignore, ' go on past unreadable sectors (recorded as bad ranges)'),
    h('div', { class: 'buttons' }, h('button', { class: 'primary', id: 'c-submit' }, 'Capture')));
  openDialog('form-dialog', `Capture ${label(m)}`, form);
  image.focus();
  form.onsubmit = async (e) => {
    e.preventDefault();
    const partitions = parts.value.split(/[\s,]+/).filter(Boolean).map(Number);
    const req = { machine: m.id, image: image.value.trim(), disk: disk.value };
    if (partitions.length) req.partitions = partitions;
    if (ignore.checked) req.ignoreReadErrors = true;
    const c = await attempt('capture', () => api('POST', '/api/captures', req));
    if (c) {
      $('#form-dialog').close();
      notice(`capture ${c.id} of ${label(m)} into ${c.image} started`);
    }
  };
}
