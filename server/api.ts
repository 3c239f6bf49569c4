/**
 * The server's HTTP side: the dashboard's static files (no data in them),
 * the admin JSON API and /metrics (both need the token as
 * `Authorization: Bearer TOKEN`), and the manifest download for agents.
 * Each request: parse, authorise, act, reply; an error becomes a JSON
 * {error: {code, message}} with a status, never a crash.
 */
import type { NbdExports } from './nbd/exports.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createReadStream, readFileSync } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { projectRoot } from '../native/addon.js';
import { describeRule, type SessionManager, type SessionRequest } from './sessions.js';
import { shown } from './session-types.js';
import type { ListEntry } from './store/maintenance.js';
import { listWithCache, repositoryStatus } from './api-edge.js';
import type { RepositoryStatus } from './repo/edge-store.js';
import { assembleRequest } from './assemble-route.js';
import { tokenMatches } from './token.js';
import type { Registry } from './registry.js';
import type { Store } from './store/store.js';
import type { AgentChannel } from './control.js';
import type { CaptureManager } from './captures.js';
import type { PxeServices } from '../pxe/service.js';
import { secretMatches } from './credentials.js';
import { BootScriptLimits } from './boot-limits.js';
import { ownAddress } from './boot-grub.js';
import { metrics } from './metrics.js';
import { wakeMachines, type WakeReport } from './wake.js';
import { namingWarnings } from './session-naming.js';
import { consoleRoute } from './api-console.js';
import { DASHBOARD_FILES, dashboardFile } from './dashboard-files.js';
import type { IntervalHistogram } from 'node:perf_hooks';
import type { StateHealth, StateStatus } from '../state/state-file.js';

/** Largest request body accepted, bytes. */
export const MAX_BODY = 64 * 1024;

const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard.js': { file: 'dashboard.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' },
  '/states.js': { file: 'states.js', type: 'text/javascript; charset=utf-8' },
  ...DASHBOARD_FILES,
};

const STATUS_OF: Record<string, number> = {
  [ERR.USAGE]: 400,
  [ERR.BAD_NAME]: 400,
  [ERR.UNAUTHORIZED]: 401,
  [ERR.NOT_FOUND]: 404,
  [ERR.BUSY]: 409,
  [ERR.NEEDS_CONFIRM]: 409,
  [ERR.ENDED]: 409,
  [ERR.MANIFEST_VERSION]: 409,
  [ERR.CHUNK_CORRUPT]: 422,
  [ERR.CHUNK_MISSING]: 409,
  /** The machine is not connected now. */
  [ERR.UNREACHABLE]: 409,
  [ERR.TOO_LARGE]: 413,
  /** A state file could not be written (a full or failing data disk): the server is up, the request can be retried. */
  [ERR.WRITE_ERROR]: 503,
};

/**
 * Headers on the dashboard's files: scripts only from this server and no
 * inline script or style (what an injected value could use), no framing,
 * no referrer carrying a URL out.
 */
export const PAGE_HEADERS = Object.freeze({
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
});

/** What the API serves from. */
export interface ApiContext {
  store: Store;
  registry: Registry;
  sessions: SessionManager;
  agents: AgentChannel;
  token: string;
  version: string;
  senderAddress: string | undefined;
  /** Network boot: the kernel/initramfs folder and the per-machine iPXE script (or GRUB config, for Secure Boot). */
  boot: { dir: string; script: (mac: string, format?: 'ipxe' | 'grub') => string } | undefined;
  /** The PXE services, once started. */
  pxe?: () => PxeServices | undefined;
  /** Rate limits of the boot-script route (default: BOOT_SCRIPT_LIMITS). */
  bootLimits?: BootScriptLimits;
  captures: CaptureManager;
  /** The state files, by name relative to the data directory, for /healthz and /metrics. */
  stateFiles?: () => { file: string; state: StateStatus }[];
  /** Event-loop delay since the server started (perf_hooks.monitorEventLoopDelay). */
  loopDelay?: IntervalHistogram;
  /** Sends Wake-on-LAN packets on the machines' network (server/wake.ts with the server's interface). */
  wake?: (macs: string[]) => Promise<WakeReport>;
  /** NBD exports offered to token holders (server/nbd/exports.ts). */
  nbd?: NbdExports;
}

/** One state file's health, as /healthz, /metrics and the dashboard show it. */
export interface FileHealth extends StateHealth {
  file: string;
  dirty: boolean;
}

/** Is the server saving its state and serving network boot. */
export interface ServerHealth {
  ok: boolean;
  files: FileHealth[];
  /** Network boot: null when off; ok false once a socket failure ended it. */
  pxe: { ok: boolean; error: string | null } | null;
  /** An edge's repository (reachable or not, since when, the last error); null on a server with a store of its own. */
  repository: RepositoryStatus | null;
}

/** An error as the unauthenticated /healthz may show it: code and reason, no paths. */
function publicError(e: string | null): string | null {
  return e === null ? null : e.replace(/,? '[^']*'/g, '').replace(/\s\/\S+/g, '').slice(0, 200);
}

/** The health of every state file and of network boot. */
export function serverHealth(c: ApiContext): ServerHealth {
  const files = (c.stateFiles?.() ?? []).map(({ file, state }) => ({ file, ...state.health(), error: publicError(state.health().error), dirty: state.dirty }));
  const p = c.pxe?.();
  const pxe = p === undefined ? null : { ok: p.error === undefined, error: publicError(p.error?.message ?? null) };
  return { ok: files.every((f) => f.ok) && (pxe?.ok ?? true), files, pxe, repository: repositoryStatus(c.store) };
}

/** The dashboard's view of everything, also GET /api/state. */
export interface Snapshot {
  server: { version: string; data: string; senderAddress: string | null; agents: number; time: string; health: ServerHealth };
  machines: ReturnType<Registry['list']>;
  sessions: (Omit<ReturnType<SessionManager['list']>[number], 'secret'> & { ruleText: string })[];
  images: ListEntry[];
  captures: ReturnType<CaptureManager['list']>;
}

/** The snapshot and its cached image list (reading manifests is not free). */
export class State {
  private images: ListEntry[] = [];
  private imagesAt = 0;

  constructor(private readonly c: ApiContext) {}

  async snapshot(): Promise<Snapshot> {
    if (Date.now() - this.imagesAt > 5000) {
      this.images = await listWithCache(this.c.store);
      this.imagesAt = Date.now();
    }
    return {
      server: { version: this.c.version, data: this.c.store.root, senderAddress: this.c.senderAddress ?? null, agents: this.c.agents.connected, time: new Date().toISOString(), health: serverHealth(this.c) },
      machines: this.c.registry.list(),
      sessions: this.c.sessions.list().slice(0, 50).map((s) => ({ ...shown(s), ruleText: describeRule(s.rule) })),
      images: this.images,
      captures: this.c.captures.list().slice(0, 20),
    };
  }

  /** Forgets the cached image list. */
  imagesChanged(): void {
    this.imagesAt = 0;
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' }).end(JSON.stringify(body));
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const body = await readBody(req, MAX_BODY);
  if (body.length === 0) return {};
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new ClonecastError(ERR.USAGE, 'request body is not JSON');
  }
}

/** The bearer token of a request. */
export function bearer(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined;
}

/** Handles one HTTP request. */
export async function handle(c: ApiContext, state: State, req: IncomingMessage, res: ServerResponse): Promise<void> {
  try {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const method = req.method ?? 'GET';
    const asset = STATIC[path];
    if (asset !== undefined && method === 'GET') {
      // The state vocabulary is the compiled protocol module itself (it imports nothing).
      const file = path === '/states.js' ? join(projectRoot(), 'dist', 'protocol', 'states.js') : dashboardFile(asset.file);
      const body = readFileSync(file);
      res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'no-cache', ...PAGE_HEADERS }).end(body);
      return;
    }
    if (path === '/healthz') return healthz(c, res);
    if (path.startsWith('/boot/') && method === 'GET') return await serveBoot(c, path, new URL(req.url ?? '/', 'http://x').searchParams, req, res);
    if (!path.startsWith('/api/') && path !== '/metrics') return send(res, 404, { error: { code: ERR.NOT_FOUND, message: `no ${path} here` } });
    // Without the server's token: a machine's own agent secret opens only the manifest of the session that holds
    // it now, and a capture's own secret opens only that capture's upload routes while it runs (docs/security.md).
    const admin = tokenMatches(bearer(req), c.token);
    if (!admin && !agentMay(c, path, method, String(req.headers['x-clonecast-machine'] ?? '').toLowerCase(), bearer(req))) {
      throw new ClonecastError(ERR.UNAUTHORIZED, 'this needs the server\'s token: send "Authorization: Bearer TOKEN" ("clonecast token" prints it)');
    }
    if (path === '/metrics' && method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(metrics(c));
      return;
    }
    if (path.startsWith('/api/captures')) return await captureRoute(c, method, path, req, res);
    const answered = await consoleRoute({ store: c.store, registry: c.registry, imagesChanged: () => state.imagesChanged(), openSessions: () => c.sessions.openSessions() }, method, path, () => readJson(req));
    if (answered !== undefined) return send(res, answered[0], answered[1]);
    const nbdRoute = /^\/api\/images\/([^/]+)\/(\d{1,9})\/nbd$/.exec(path);
    if (nbdRoute !== null && method === 'POST' && c.nbd !== undefined) return send(res, 201, await c.nbd.offer(decodeURIComponent(nbdRoute[1]), Number(nbdRoute[2])));
    const route = `${method} ${path.replace(/\/\d+(?=\/|$)/, '/:id')}`;
    const id = Number(/\/api\/sessions\/(\d+)/.exec(path)?.[1]);
    switch (route) {
      case 'GET /api/state':
        return send(res, 200, await state.snapshot());
      case 'GET /api/machines':
        return send(res, 200, c.registry.list());
      case 'GET /api/images':
        return send(res, 200, await listWithCache(c.store));
      case 'POST /api/images/assemble': {
        const summary = await assembleRequest(c.store, await readJson(req));
        state.imagesChanged();
        return send(res, 201, summary);
      }
      case 'GET /api/sessions':
        return send(res, 200, c.sessions.list().map(shown));
      case 'POST /api/sessions': {
        const { wake: wakeFirst, ...request } = (await readJson(req)) as SessionRequest & { wake?: unknown };
        if (wakeFirst !== undefined && typeof wakeFirst !== 'boolean') throw new ClonecastError(ERR.USAGE, 'wake must be true or false');
        const session = await c.sessions.create(request);
        // The session exists first: a machine that wakes fast finds it waiting. It exists whatever the
        // wake-up does, so a failed wake-up is part of the answer, not an error (a retry would make a second session).
        const woken = wakeFirst === true ? await wakeMachines(c.registry, c.sessions, c.wake, { session: session.id }).catch((err: Error) => ({ error: err.message })) : undefined;
        const warnings = namingWarnings(c.registry, session.rule, session.nameMachines);
        return send(res, 201, { ...shown(session), ...(woken !== undefined ? { woken } : {}), ...(warnings.length > 0 ? { warnings } : {}) });
      }
      case 'POST /api/wake':
        return send(res, 200, await wakeMachines(c.registry, c.sessions, c.wake, await readJson(req)));
      case 'GET /api/sessions/:id': {
        const s = c.sessions.get(id);
        if (s === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no session ${id}`);
        return send(res, 200, shown(s));
      }
      case 'POST /api/sessions/:id/start':
        return send(res, 200, shown(c.sessions.start(id)));
      case 'POST /api/sessions/:id/cancel':
        return send(res, 200, shown(c.sessions.cancel(id)));
      case 'GET /api/sessions/:id/manifest': {
        const m = c.sessions.manifest(id);
        if (m === undefined) throw new ClonecastError(ERR.NOT_FOUND, `session ${id} is not active`);
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': m.length }).end(m);
        return;
      }
      default:
        throw new ClonecastError(ERR.NOT_FOUND, `no ${method} ${path} in the API`);
    }
  } catch (err) {
    const known = err instanceof ClonecastError;
    const code = known ? err.code : 'CLONECAST_ERR_INTERNAL';
    if (!res.headersSent) send(res, known ? (STATUS_OF[code] ?? 422) : 500, { error: { code, message: (err as Error).message } });
    // A body refused before its end (too large, an ended capture): read and dropped, bounded, so the client sees the answer.
    if (!req.complete) drainRefused(req);
  }
}

/**
 * Bytes of a refused body read and dropped after the answer: a client that
 * is still sending (a body without Content-Length) reads the answer instead
 * of a reset; one that sends more than this loses its connection.
 */
const DRAIN_MAX = 64 << 20;

function drainRefused(req: IncomingMessage): void {
  let left = DRAIN_MAX;
  req.on('error', () => {});
  req.on('data', (part: Buffer) => {
    left -= part.length;
    if (left < 0) req.destroy();
  });
  req.resume();
}

/** The routes an agent reaches with its own secret (not the server's token), and only these. */
function agentMay(c: ApiContext, path: string, method: string, machine: string, presented: string | undefined): boolean {
  if (presented === undefined || presented === '') return false;
  const manifest = /^\/api\/sessions\/(\d+)\/manifest$/.exec(path);
  if (manifest !== null && method === 'GET') {
    const known = c.registry.get(machine);
    return known !== undefined && secretMatches(presented, known.secretHash) && c.sessions.holds(Number(manifest[1]), machine);
  }
  const upload = /^\/api\/captures\/(\d+)\/(have|chunks\/[0-9a-f]{64}|table|progress|finish|fail)$/.exec(path);
  if (upload !== null && method !== 'GET') return c.captures.secretMatches(Number(upload[1]), presented);
  return false;
}

/**
 * The plain-HTTP boot listener: what firmware fetches (GET /boot/ipxe,
 * /boot/files/NAME) and nothing else. The API, the dashboard and both
 * WebSockets answer only over TLS; a request for them here gets 404 and is
 * not read further.
 */
export async function handleBoot(c: ApiContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  try {
    const url = new URL(req.url ?? '/', 'http://x');
    if (!url.pathname.startsWith('/boot/') || req.method !== 'GET') {
      throw new ClonecastError(ERR.NOT_FOUND, 'this plain-HTTP listener serves only network boot (/boot/); the API and the dashboard are on the server\'s https:// address');
    }
    await serveBoot(c, url.pathname, url.searchParams, req, res);
  } catch (err) {
    const known = err instanceof ClonecastError;
    const code = known ? err.code : 'CLONECAST_ERR_INTERNAL';
    if (!res.headersSent) send(res, known ? (STATUS_OF[code] ?? 422) : 500, { error: { code, message: (err as Error).message } });
  }
}

/** Refuses a body its Content-Length says is too big, before any of it is read. */
function checkLength(req: IncomingMessage, limit: number): void {
  const n = Number(req.headers['content-length']);
  if (Number.isFinite(n) && n > limit) throw new ClonecastError(ERR.TOO_LARGE, `a request body of ${n} bytes is over the ${limit} this route takes`);
}

async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  checkLength(req, limit);
  const parts: Buffer[] = [];
  let size = 0;
  // Not destroyed when the loop stops at the limit: the 413 must still reach the client.
  for await (const part of req.iterator({ destroyOnReturn: false })) {
    size += (part as Buffer).length;
    if (size > limit) throw new ClonecastError(ERR.TOO_LARGE, `request body over ${limit} bytes`);
    parts.push(part as Buffer);
  }
  return Buffer.concat(parts);
}

/** Captures: the admin starts and watches them; the agent uploads into them. */
async function captureRoute(c: ApiContext, method: string, path: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const m = /^\/api\/captures(?:\/(\d+)(?:\/(have|chunks|table|progress|finish|fail)(?:\/([0-9a-f]{64}))?)?)?$/.exec(path);
  if (m === null) throw new ClonecastError(ERR.NOT_FOUND, `no ${method} ${path} in the API`);
  const [, idText, action, sha] = m;
  const id = Number(idText);
  const json = async () => {
    const body = await readJson(req);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ClonecastError(ERR.USAGE, 'request body must be a JSON object');
    return body as Record<string, unknown>;
  };
  if (idText === undefined) {
    if (method === 'GET') return send(res, 200, c.captures.list());
    if (method === 'POST') return send(res, 201, await c.captures.create((await json()) as never));
  } else if (action === undefined && method === 'GET') {
    const { secretHash: _hidden, ...view } = c.captures.get(id);
    return send(res, 200, view);
  } else if (action === 'have' && method === 'POST') {
    return send(res, 200, c.captures.have(id, (await json()).chunks));
  } else if (action === 'chunks' && sha !== undefined && method === 'PUT') {
    // The capture's state and limits are checked before any body is read.
    const { chunkBytes } = c.captures.uploadLimits(id);
    await c.captures.putChunk(id, sha, await readBody(req, chunkBytes));
    return send(res, 200, { ok: true });
  } else if (action === 'table' && method === 'PUT') {
    checkLength(req, c.captures.uploadLimits(id).tableBytes);
    await c.captures.table(id, req.iterator({ destroyOnReturn: false }));
    return send(res, 200, { ok: true });
  } else if (action === 'progress' && method === 'POST') {
    c.captures.uploadLimits(id);
    c.captures.progress(id, await json());
    return send(res, 200, { ok: true });
  } else if (action === 'finish' && method === 'POST') {
    c.captures.uploadLimits(id);
    return send(res, 200, await c.captures.finish(id, (await json()) as never));
  } else if (action === 'fail' && method === 'POST') {
    const body = await json();
    const reason = String(body.error ?? body.reason ?? '').slice(0, 1024);
    // An agent names itself in x-clonecast-machine; an administrator's client does not.
    const byAdmin = tokenMatches(bearer(req), c.token) && req.headers['x-clonecast-machine'] === undefined;
    return send(res, 200, c.captures.fail(id, reason !== '' ? (byAdmin ? `failed by the administrator: ${reason}` : reason) : byAdmin ? 'failed by the administrator' : 'no reason given'));
  }
  throw new ClonecastError(ERR.NOT_FOUND, `no ${method} ${path} in the API`);
}

/**
 * Network boot over HTTP, without the token (firmware cannot send one):
 * GET /boot/ipxe?mac=MAC (the machine's iPXE script), /boot/grub?mac=MAC (its
 * GRUB config, for Secure Boot; same limits) and GET /boot/files/NAME
 * (kernel and initramfs from the boot folder, never outside it).
 */
async function serveBoot(c: ApiContext, path: string, query: URLSearchParams, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (c.boot === undefined) throw new ClonecastError(ERR.NOT_FOUND, 'network boot is off: start the server with --pxe proxy|full');
  if (path === '/boot/ipxe' || path === '/boot/grub') {
    const mac = (query.get('mac') ?? '').toLowerCase().replace(/-/g, ':');
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) throw new ClonecastError(ERR.USAGE, `${path.slice(1)} needs ?mac=aa:bb:cc:dd:ee:ff`);
    // Per address and per MAC (server/boot-limits.ts), before any other work.
    c.bootLimits ??= new BootScriptLimits();
    const from = req.socket.remoteAddress ?? '';
    const known = c.pxe?.()?.knows(mac) ?? false;
    const wait = c.bootLimits.wait(from, mac, Date.now(), known, known && ownAddress(c, mac) === from.replace(/^::ffff:/, ''));
    if (wait > 0) {
      const retry = Math.ceil(wait / 1000);
      res.writeHead(429, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', 'retry-after': String(retry) }).end(`too many boot script requests; try again in ${retry} s\n`);
      return;
    }
    const pxe = c.pxe?.();
    if (pxe?.knownOnly === true && !pxe.knows(mac)) throw new ClonecastError(ERR.NOT_FOUND, `${mac} is not a machine this server knows (--pxe-known-only)`);
    c.registry.event(mac, 'boot', 'network boot: fetched its boot script');
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' }).end(c.boot.script(mac, path === '/boot/grub' ? 'grub' : 'ipxe'));
    return;
  }
  let name: string;
  try {
    name = decodeURIComponent(path.slice('/boot/files/'.length));
  } catch {
    throw new ClonecastError(ERR.USAGE, 'a boot file name must be valid percent-encoded UTF-8');
  }
  if (!path.startsWith('/boot/files/') || name === '' || name.includes('/') || name.startsWith('.')) throw new ClonecastError(ERR.NOT_FOUND, `no ${path} here`);
  const root = await realpath(c.boot.dir).catch(() => {
    throw new ClonecastError(ERR.NOT_FOUND, `the boot folder ${c.boot!.dir} does not exist; put the agent's kernel and initramfs there`);
  });
  const file = await realpath(join(root, name)).catch(() => {
    throw new ClonecastError(ERR.NOT_FOUND, `no ${name} in the boot folder ${root}`);
  });
  if (!file.startsWith(root + sep)) throw new ClonecastError(ERR.NOT_FOUND, `no ${name} in the boot folder`);
  const size = (await stat(file)).size;
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
  await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), res);
}

/**
 * GET /healthz, without the token (for load balancers and monitors): 200
 * {ok: true}, or 503 naming the state files that cannot be saved and since
 * when, and network boot if it stopped. No paths, no secrets.
 */
function healthz(c: ApiContext, res: ServerResponse): void {
  const h = serverHealth(c);
  if (h.ok) return send(res, 200, { ok: true });
  const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
  const failing = h.files.filter((f) => !f.ok).map((f) => ({ file: f.file, error: f.error, since: iso(f.since), unsavedSince: iso(f.pendingSince), failures: f.failures }));
  send(res, 503, { ok: false, failing, ...(h.pxe !== null && !h.pxe.ok ? { pxe: h.pxe } : {}) });
}
