/**
 * The admin routes the dashboard's console needs beyond the session and
 * capture routes: one machine with its event log, forgetting a machine, an
 * image's versions with their sizes, prune (with a preview) and verify.
 * Each needs the server's token like every admin route (server/api.ts
 * checks it before calling here); the CLI reaches the same routes
 * (`clonecast machines show|forget`) or the same functions on the store
 * (`clonecast image history|prune|verify`).
 */
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { Registry } from './registry.js';
import type { Store } from './store/store.js';
import { checkName } from './store/store.js';
import { describe, pruneImage, verifyStore } from './store/maintenance.js';

/** One version as the images page shows it. */
export interface VersionView {
  version: number;
  createdAt: string;
  source: string;
  parent: number | null;
  diskSize: number;
  /** Bytes the filesystems used when it was made (absent when it was read whole). */
  usedBytes: number | null;
  storedBytes: number;
  newBytes: number;
  badRanges: { offset: number; length: number }[];
  error?: string;
}

/** Every version of an image, newest first, each readable or with its error. */
export async function imageVersions(store: Store, name: string): Promise<VersionView[]> {
  checkName(name);
  const versions = store.versions(name);
  if (versions.length === 0) throw new ClonecastError(ERR.NOT_FOUND, `no image "${name}"; "clonecast image list" lists them`);
  const out: VersionView[] = [];
  for (const version of [...versions].reverse()) {
    try {
      const m = await store.readManifest(name, version);
      const info = describe(m);
      out.push({
        version,
        createdAt: m.meta.createdAt,
        source: m.meta.source.description || m.meta.source.path,
        parent: m.meta.parent,
        diskSize: m.meta.diskSize,
        usedBytes: m.meta.usedBytes ?? null,
        storedBytes: info.storedBytes,
        newBytes: m.meta.newBytes,
        badRanges: m.meta.badRanges.map((r) => ({ offset: Number(r.offset), length: Number(r.length) })),
      });
    } catch (err) {
      out.push({ version, createdAt: '', source: '', parent: null, diskSize: 0, usedBytes: null, storedBytes: 0, newBytes: 0, badRanges: [], error: (err as Error).message });
    }
  }
  return out;
}

/** A retention rule from a request body: keepLast / keepDaily, positive whole numbers. */
function retention(body: Record<string, unknown>): { keepLast?: number; keepDaily?: number } {
  const r: { keepLast?: number; keepDaily?: number } = {};
  for (const k of ['keepLast', 'keepDaily'] as const) {
    const v = body[k];
    if (v === undefined || v === null || v === '') continue;
    if (!Number.isSafeInteger(v) || (v as number) < 1 || (v as number) > 100_000) throw new ClonecastError(ERR.USAGE, `${k} must be a whole number from 1 to 100000`);
    r[k] = v as number;
  }
  return r;
}

/**
 * Handles the console routes; returns undefined when the route is not one
 * of them (api.ts goes on), else [status, body].
 */
export async function consoleRoute(
  c: { store: Store; registry: Registry; imagesChanged: () => void },
  method: string,
  path: string,
  body: () => Promise<unknown>,
): Promise<[number, unknown] | undefined> {
  const machine = /^\/api\/machines\/([0-9A-Fa-f:-]{17})$/.exec(path);
  if (machine !== null) {
    const id = machine[1].replace(/-/g, ':').toLowerCase();
    if (method === 'GET') {
      const m = c.registry.get(id);
      if (m === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no machine ${id}; "clonecast machines" lists them`);
      const { secretHash: _h, secretTrust: _t, ...view } = m;
      return [200, { ...view, events: view.events ?? [] }];
    }
    if (method === 'DELETE') {
      const { id: gone } = c.registry.forget(id);
      return [200, { forgotten: gone }];
    }
    return undefined;
  }
  const image = /^\/api\/images\/([^/]{1,64})(?:\/(versions|prune|verify))?$/.exec(path);
  if (image === null) return undefined;
  const [, name, action] = image;
  if (action === 'versions' && method === 'GET') return [200, await imageVersions(c.store, name)];
  if (action === 'prune' && method === 'POST') {
    const b = object(await body());
    checkName(name);
    const dryRun = b.dryRun !== false;
    const r = await pruneImage(c.store, name, retention(b), dryRun);
    if (!dryRun) c.imagesChanged();
    return [200, { ...r, dryRun }];
  }
  if (action === 'verify' && method === 'POST') {
    const b = object(await body());
    checkName(name);
    const v = b.version;
    if (v !== undefined && (!Number.isSafeInteger(v) || (v as number) < 1)) throw new ClonecastError(ERR.USAGE, 'version must be a positive whole number');
    if (v !== undefined && !c.store.versions(name).includes(v as number)) throw new ClonecastError(ERR.NOT_FOUND, `no version ${String(v)} of "${name}"`);
    return [200, await verifyStore(c.store, v === undefined ? { name } : { name, version: v as number })];
  }
  return undefined;
}

function object(b: unknown): Record<string, unknown> {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw new ClonecastError(ERR.USAGE, 'request body must be a JSON object');
  return b as Record<string, unknown>;
}
