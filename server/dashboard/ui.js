// Small pieces every view of the dashboard shares: building elements from
// values (always as text, never markup), formatting, the admin API call with
// the token, the confirmation dialog and the notice line.

export const $ = (sel, root = document) => root.querySelector(sel);

// The token lives in this page's memory only (never in storage, never in a URL).
let token = '';
export const setToken = (t) => (token = t);
export const getToken = () => token;

/**
 * Builds an element. Every value becomes a text node or a property, never
 * markup: agent-reported names cannot run script here. `on*` props are
 * listeners (functions), never attribute strings.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === 'width') el.style.width = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

export function bytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  n = Number(n) || 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}
export function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '';
  s = Math.max(0, Math.round(s));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}
export const time = (iso) => (iso ? new Date(iso).toLocaleString() : '');
export const pct = (done, total, finished) => (total ? Math.floor((100 * done) / total) : finished ? 100 : 0);
export const mibps = (bytesPerSecond) => `${(Number(bytesPerSecond) / 1048576).toFixed(1)} MiB/s`;

/** A cell; its full text is also its title, so a value cut short by the layout can still be read. */
export function td(v, cls) {
  const text = v === undefined || v === null ? '' : String(v);
  return h('td', { class: cls, title: text.length > 12 ? text : undefined }, text);
}
/** A state as a coloured badge that also says it in words. */
export const badge = (state) => h('span', { class: `badge state-${state}` }, state);
export const stateCell = (state) => h('td', {}, badge(state));

/** A machine as people call it: its name, else its host name, else its MAC. */
export const label = (m) => m.name || m.hostname || m.id;

/** Replaces a table's rows; an empty one says so, with a hint. */
export function rows(id, list, empty = 'none yet') {
  const body = $(`#${id} tbody`);
  const cols = $(`#${id} thead tr`).children.length;
  body.replaceChildren(...(list.length ? list : [h('tr', { class: 'empty' }, h('td', { colspan: cols }, empty))]));
}

/** Says something in the notice line (text only); errors stay until the next notice. */
export function notice(text, error = false) {
  const n = $('#notice');
  n.textContent = text;
  n.className = error ? 'error' : 'ok';
  n.hidden = text === '';
}

/** Calls the admin API with the token; a refusal becomes an Error with the server's message. */
export async function api(method, path, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(json.error?.message ?? `HTTP ${res.status}`), { code: json.error?.code, status: res.status });
  return json;
}

/** Runs an API action, reporting its failure in the notice line; resolves to its result or undefined. */
export async function attempt(what, fn) {
  try {
    const r = await fn();
    notice('');
    return r;
  } catch (err) {
    notice(`${what} failed: ${err.message}`, true);
    return undefined;
  }
}

/**
 * Asks before a destructive action in a modal dialog: a title, lines that
 * say exactly what will happen, and the action's own button (Cancel is
 * focused first, so Enter does not destroy). Resolves true only on the action.
 */
export function confirmDialog(title, lines, action) {
  const d = $('#confirm');
  $('#confirm-title').textContent = title;
  $('#confirm-body').replaceChildren(...lines.map((l) => (l instanceof Node ? l : h('p', {}, l))));
  $('#confirm-ok').textContent = action;
  d.returnValue = '';
  d.showModal();
  $('#confirm-no').focus();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

/** Opens a dialog of the page (a <dialog> in index.html) with fresh content. */
export function openDialog(id, title, ...content) {
  const d = $(`#${id}`);
  delete d.dataset.session;
  delete d.dataset.machine;
  $(`#${id} .dialog-title`).textContent = title;
  $(`#${id} .dialog-body`).replaceChildren(...content);
  if (!d.open) d.showModal();
  return d;
}
