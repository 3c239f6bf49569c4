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
import type { MachineRecord, Registry } from './registry.js';
import type { Store } from './store/store.js';
import { checkName } from './store/store.js';
import { describe, pruneImage, verifyStore } from './store/maintenance.js';
import { takes, type RuleSubject } from './session-rules.js';
import { chooseDisk } from './targets.js';
import { cacheStateOf, edgeRoute } from './api-edge.js';
import type { CacheState } from './repo/edge-store.js';

/** An open session as a relabel check reads it. */
type OpenSession = RuleSubject & { id: number; image: string; version: number; imageSize: number; target: string; state: string };

/**
 * The open sessions that would take this machine at once if it had these
 * groups and did not before (a waiting or running session of one of the new
 * groups): an idle, connected machine joins as soon as it is relabelled.
 */
export function relabelTakers(open: OpenSession[], m: MachineRecord, groups: unknown): OpenSession[] {
  if (!m.online || m.activity.kind !== 'idle' || !Array.isArray(groups)) return [];
  const after = { ...m, groups: groups.filter((g): g is string => typeof g === 'string') };
  // A machine whose agent has no credential is taken only by an --any session, which took it already.
  return open.filter((s) => s.rule.any !== true && m.trust !== 'unverified' && takes(s, after) && !takes(s, m));
}

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
  /** At an edge: where its chunks are (cached, partial, remote). */
  cache?: CacheState;
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
        cache: await cacheStateOf(store, name, version),
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
  c: { store: Store; registry: Registry; imagesChanged: () => void; openSessions: () => OpenSession[] },
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
    if (method === 'PATCH') {
      const change = await body();
      const m = c.registry.get(id);
      if (m !== undefined && typeof change === 'object' && change !== null) {
        // New groups an open session names would make this machine join it at once and overwrite its disk: only when confirmed.
        const takers = relabelTakers(c.openSessions(), m, (change as { groups?: unknown }).groups);
        if (takers.length > 0 && (change as { confirm?: unknown }).confirm !== true) {
          const s = takers[0];
          const disk = chooseDisk(m.disks, s.target, s.imageSize);
          const what = 'device' in disk ? `its disk ${disk.device}` : `the disk ${s.target === 'auto' ? 'its agent picks' : s.target}`;
          throw new ClonecastError(ERR.NEEDS_CONFIRM, `with these groups ${id} joins session ${s.id} (${s.state}) at once and ${what} is overwritten with ${s.image}@${s.version}; send "confirm": true (clonecast machines set --confirm) to go ahead`);
        }
      }
      return [200, c.registry.label(id, change as { name?: unknown; groups?: unknown })];
    }
    if (method === 'DELETE') {
      const { id: gone } = c.registry.forget(id);
      return [200, { forgotten: gone }];
    }
    return undefined;
  }
  const edge = await edgeRoute(c.store, method, path, c.imagesChanged);
  if (edge !== undefined) return edge;
  const image = /^\/api\/images\/([^/]{1,64})(?:\/(versions|prune|verify))?$/.exec(path);
  if (image === null) return undefined;
  const [, name, action] = image;
  if (action === 'versions' && method === 'GET') return [200, await imageVersions(c.store, name)];
  if (action === 'prune' && method === 'POST') {
    const b = object(await body());
    checkName(name);
    const dryRun = b.dryRun !== false;
    const rule = retention(b);
    const confirmed = versionList(b.versions);
    if (!dryRun && confirmed !== undefined) {
      // What the administrator confirmed is what goes: if the rule now picks other versions (one was published or
      // removed since the preview), nothing is removed.
      const now = [...(await pruneImage(c.store, name, rule, true)).removed].sort((a, b) => a - b);
      if (now.join(',') !== confirmed.join(',')) {
        throw new ClonecastError(ERR.BUSY, `the versions this rule removes changed since the preview (confirmed ${confirmed.map((v) => `@${v}`).join(', ') || 'none'}, now ${now.map((v) => `@${v}`).join(', ') || 'none'}); nothing was removed: preview again`);
      }
    }
    const r = await pruneImage(c.store, name, rule, dryRun);
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

/** The versions a prune was confirmed for ("versions": [1, 2]), sorted; undefined when the request names none. */
function versionList(v: unknown): number[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length > 100_000 || v.some((x) => !Number.isSafeInteger(x) || (x as number) < 1)) throw new ClonecastError(ERR.USAGE, 'versions must be a list of positive whole numbers');
  return [...new Set(v as number[])].sort((a, b) => a - b);
}

function object(b: unknown): Record<string, unknown> {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw new ClonecastError(ERR.USAGE, 'request body must be a JSON object');
  return b as Record<string, unknown>;
}
