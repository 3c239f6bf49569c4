// The images table and an image's page: every version with its time, size,
// used and stored bytes, source and bad ranges; verify a version; prune with
// a preview of what goes (the same rules as "clonecast image prune").
import { api, attempt, bytes, confirmDialog, h, notice, openDialog, rows, td, time } from '/ui.js';

/** At an edge: where a version's chunks are, as "cached", "partial N%" or "remote". */
export function cacheText(c) {
  if (!c) return '';
  const text = c.state === 'partial' ? `partial ${Math.floor((100 * c.cachedChunks) / Math.max(1, c.chunks))}%` : c.state;
  return c.filling ? `${text}, caching…` : text;
}

/** The repository line of an edge (null: a server with a store of its own). */
function renderRepository(r) {
  const line = document.getElementById('repository-line');
  if (!line) return;
  line.hidden = !r;
  if (!r) return;
  line.className = r.reachable === false ? 'error' : 'hint';
  line.textContent = r.reachable === false
    ? `Repository ${r.address}: UNREACHABLE since ${time(r.since)} (${r.lastError}); cached versions can still be deployed`
    : `Repository ${r.address}: ${r.reachable ? `reachable since ${time(r.since)}` : 'not reached yet'}; this server is its edge and caches what it deploys`;
}

/** A version list with each version's cache state at an edge. */
function versionsText(i) {
  return i.versions.map((v) => (i.cache && i.cache[v] ? `@${v} (${cacheText(i.cache[v])})` : `@${v}`)).join(' ');
}

export function renderImages(images, actions, repository) {
  renderRepository(repository);
  rows('images', images.map((i) => {
    const l = i.latest;
    const open = h('button', { type: 'button', data: { image: i.name }, onclick: () => void showImage(i.name, actions) }, 'versions…');
    return l.error
      ? h('tr', { data: { imageName: i.name } }, td(i.name), td(versionsText(i)), h('td', { colspan: 5, class: 'error', title: l.error }, `unreadable: ${l.error}`), h('td', { class: 'actions' }, open))
      : h('tr', { data: { imageName: i.name } }, td(i.name), td(versionsText(i)), td(bytes(l.diskSize)), td(l.usedBytes !== undefined ? bytes(l.usedBytes) : '', 'opt'), td(bytes(l.storedBytes)),
        td(time(l.createdAt), 'opt'), td(l.badRanges || '', 'opt'), h('td', { class: 'actions' }, open));
  }), 'no image yet (see Getting started above)');
}

/** An image's page, in the panel dialog. */
export async function showImage(name, actions) {
  const versions = await attempt('reading the image', () => api('GET', `/api/images/${encodeURIComponent(name)}/versions`));
  if (versions === undefined) return;
  const result = h('p', { id: 'i-result', role: 'status' });
  const verify = async (v) => {
    result.textContent = `verifying ${name}@${v}…`;
    const r = await attempt('verify', () => api('POST', `/api/images/${encodeURIComponent(name)}/verify`, { version: v }));
    if (r) result.textContent = r.ok ? `${name}@${v}: all ${r.chunksChecked} chunks read back and match their SHA-256` : `${name}@${v} is DAMAGED: ${r.damagedChunks.length} bad chunk(s), ${r.damagedManifests.length} bad manifest(s)`;
    result.className = r && !r.ok ? 'error' : '';
  };
  const edge = versions.some((v) => v.cache);
  const pull = async (v) => {
    const r = await attempt('pull', () => api('POST', `/api/images/${encodeURIComponent(name)}/${v}/pull`));
    if (r) result.textContent = `${name}@${v}: ${cacheText(r.cache)}; it is cached in the background`;
  };
  const cacheCell = (v) => (edge ? [td(cacheText(v.cache))] : []);
  const table = h('table', { class: 'grid small', id: 'i-versions' },
    h('thead', {}, h('tr', {}, ...['version', 'created', 'disk', 'used', 'stored', 'new', 'source', 'bad ranges', ...(edge ? ['cache'] : []), ''].map((t) => h('th', {}, t)))),
    h('tbody', {}, ...versions.map((v) => v.error
      ? h('tr', {}, td(`@${v.version}`), h('td', { colspan: 7, class: 'error', title: v.error }, v.error), h('td', {}))
      : h('tr', { data: { version: v.version } }, td(`@${v.version}`), td(time(v.createdAt)), td(bytes(v.diskSize)), td(v.usedBytes === null ? '' : bytes(v.usedBytes)), td(bytes(v.storedBytes)), td(bytes(v.newBytes)), td(v.source),
        td(v.badRanges.length ? v.badRanges.map((r) => `${bytes(r.offset)}+${bytes(r.length)}`).join(', ') : ''), ...cacheCell(v),
        h('td', { class: 'actions' }, h('button', { type: 'button', onclick: () => void verify(v.version) }, 'verify'), ' ', h('button', { type: 'button', onclick: () => actions.deploy({ image: name }) }, 'deploy…'),
          ...(v.cache && v.cache.state !== 'cached' && !v.cache.filling ? [' ', h('button', { type: 'button', data: { pull: v.version }, onclick: () => void pull(v.version) }, 'Pull')] : []))))));
  const keepLast = h('input', { id: 'p-last', type: 'number', min: 1, placeholder: '—' });
  const keepDaily = h('input', { id: 'p-daily', type: 'number', min: 1, placeholder: '—' });
  const preview = h('p', { id: 'p-preview', role: 'status' });
  const rule = () => ({ ...(keepLast.value ? { keepLast: Number(keepLast.value) } : {}), ...(keepDaily.value ? { keepDaily: Number(keepDaily.value) } : {}) });
  const prune = h('form', { id: 'prune-form', class: 'inline' },
    h('label', {}, 'keep the newest ', keepLast, ' versions'), h('label', {}, ' and one a day for ', keepDaily, ' days'),
    h('button', { type: 'button', id: 'p-preview-btn', onclick: async () => {
      const r = await attempt('prune preview', () => api('POST', `/api/images/${encodeURIComponent(name)}/prune`, { ...rule(), dryRun: true }));
      if (r) preview.textContent = r.removed.length ? `would remove ${r.removed.map((v) => `@${v}`).join(', ')}; keeps ${r.kept.map((v) => `@${v}`).join(', ')}` : `nothing to remove; keeps ${r.kept.map((v) => `@${v}`).join(', ')}`;
    } }, 'Preview'),
    h('button', { class: 'danger', id: 'p-prune' }, 'Prune…'));
  prune.onsubmit = async (e) => {
    e.preventDefault();
    const r = await attempt('prune preview', () => api('POST', `/api/images/${encodeURIComponent(name)}/prune`, { ...rule(), dryRun: true }));
    if (!r) return;
    if (!r.removed.length) return void (preview.textContent = 'nothing to remove with these rules');
    if (!(await confirmDialog(`Remove ${r.removed.length} version(s) of ${name}?`, [`These versions go: ${r.removed.map((v) => `${name}@${v}`).join(', ')}.`, `Kept: ${r.kept.map((v) => `@${v}`).join(', ')}. Their chunks are freed by "clonecast image gc".`], 'Remove'))) return;
    const done = await attempt('prune', () => api('POST', `/api/images/${encodeURIComponent(name)}/prune`, { ...rule(), versions: r.removed, dryRun: false }));
    if (done) {
      notice(`removed ${done.removed.map((v) => `${name}@${v}`).join(', ')}`);
      void showImage(name, actions);
    }
  };
  openDialog('panel', `Image ${name}`, table, result, h('h3', {}, 'Prune'), prune, preview,
    h('p', { class: 'hint' }, 'Export to a virtual disk (qcow2, vmdk…) runs on the server: ', h('code', {}, `clonecast image export ${name} FILE`)));
  document.getElementById('panel').dataset.machine = '';
}
