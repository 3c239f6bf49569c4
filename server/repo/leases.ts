/**
 * Who may write and who may delete in a repository, and who gets which
 * version number, on an object store that has no locks and no
 * compare-and-swap (docs/repository.md, "Writers, sweepers and claims").
 *
 * Both use the same pattern: write your own object, then list. With
 * read-after-write and list-after-write consistency (AWS S3, Ceph RGW, MinIO,
 * a single-proxy Swift), of two parties that each write then list, at least
 * one sees the other; each backs off when it sees a rival, so two never both
 * go ahead. Both may back off: they retry after a random pause.
 *
 * Ages are measured by the store's clock (an object's LastModified against
 * the LastModified of the caller's own fresh object), never by this host's.
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { claimPrefix, LAYOUT, leaseBody, newId, parseImageKey, parseLeaseKey, type LeaseBody } from './layout.js';
import type { Bucket } from './s3.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A held lease: renewed in the background until released. */
export class Lease {
  /** When (this host's monotonic clock, ms) a renewal last succeeded. */
  private renewedAt = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private released = false;

  constructor(private readonly bucket: Bucket, readonly key: string, private readonly body: Buffer, private readonly ttlMs: number, renewMs: number) {
    this.timer = setInterval(() => void this.renew(), renewMs);
    this.timer.unref();
  }

  /** True while the lease has been renewed within its lifetime: a rival cannot have taken over. */
  get intact(): boolean {
    return !this.released && performance.now() - this.renewedAt < this.ttlMs * 0.75;
  }

  /** Writes the lease object again; a failure is left for `intact` to show. */
  async renew(): Promise<void> {
    if (this.released) return;
    try {
      await this.bucket.put(this.key, this.body, 'application/json');
      this.renewedAt = performance.now();
    } catch {
      // the repository is unreachable: intact turns false once the lease could have expired
    }
  }

  /** Stops renewing and deletes the lease object. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    try {
      await this.bucket.delete(this.key);
    } catch {
      // unreachable: the lease expires by itself after its lifetime
    }
  }
}

/** A live rival lease, as people should read it. */
export interface Rival {
  kind: 'writer' | 'sweeper';
  doing: string;
  host: string;
  since: string;
}

/** Options of takeLease(). */
export interface LeaseOptions {
  /** How long to wait for rivals to finish before refusing, ms (0: refuse at once). */
  waitMs?: number;
  ttlMs?: number;
  renewMs?: number;
  /** Called once per wait with who is in the way. */
  waiting?: (rivals: Rival[]) => void;
}

/**
 * Takes a writer's lease (many writers at once; no sweeper) or a sweeper's
 * (no writer and no other sweeper). Throws BUSY naming who holds the
 * repository if it cannot within waitMs.
 */
export async function takeLease(bucket: Bucket, kind: 'writer' | 'sweeper', doing: string, o: LeaseOptions = {}): Promise<Lease> {
  const ttl = o.ttlMs ?? LAYOUT.LEASE_TTL_MS;
  const deadline = performance.now() + (o.waitMs ?? 0);
  const key = `${LAYOUT.LEASES}${kind}.${newId()}`;
  const body = Buffer.from(JSON.stringify(leaseBody(doing)));
  let told = false;
  for (;;) {
    await bucket.put(key, body, 'application/json');
    const rivals = await liveRivals(bucket, key, ttl);
    const blocking = rivals.filter((r) => kind === 'sweeper' || r.kind === 'sweeper');
    if (blocking.length === 0) return new Lease(bucket, key, body, ttl, o.renewMs ?? LAYOUT.LEASE_RENEW_MS);
    await bucket.delete(key);
    if (performance.now() >= deadline) {
      const who = blocking.map((r) => `${r.kind === 'sweeper' ? 'a gc' : r.doing} on ${r.host} since ${r.since}`).join('; ');
      throw new ClonecastError(ERR.BUSY, `the repository is busy: ${who}; try again when it finishes${kind === 'sweeper' ? ' (gc never deletes while anyone writes)' : ''}`);
    }
    if (!told) o.waiting?.(blocking);
    told = true;
    await sleep(200 + Math.random() * 800);
  }
}

/** Live leases other than `own`, by the store's clock (own's LastModified is "now"). */
async function liveRivals(bucket: Bucket, own: string, ttlMs: number): Promise<Rival[]> {
  const listed = [];
  for await (const o of bucket.list(LAYOUT.LEASES)) listed.push(o);
  const mine = listed.find((o) => o.key === own);
  const now = mine?.lastModified.getTime() ?? Date.now();
  const rivals: Rival[] = [];
  for (const o of listed) {
    const k = parseLeaseKey(o.key);
    if (k === null || o.key === own || now - o.lastModified.getTime() > ttlMs) continue;
    let info: Partial<LeaseBody> = {};
    try {
      const b = await bucket.get(o.key, 4096);
      if (b !== null) info = JSON.parse(b.toString('utf8')) as Partial<LeaseBody>;
    } catch {
      // unreadable or gone since the listing: still counted, without details
    }
    rivals.push({ kind: k.kind, doing: printable(info.doing, 'working'), host: printable(info.host, 'another host'), since: printable(info.since, o.lastModified.toISOString()) });
  }
  return rivals;
}

/** A field of a lease written by someone else, safe to print. */
function printable(v: unknown, fallback: string): string {
  return typeof v === 'string' && v.length > 0 ? v.replace(/[^\x20-\x7e]/g, '?').slice(0, 120) : fallback;
}

/**
 * The next version number of an image, owned by the caller: one above every
 * published version and every claim (a claim whose writer died leaves a gap,
 * never a reused number). Returns the number and a function that deletes the
 * claim once the manifest is written.
 */
export async function claimVersion(bucket: Bucket, name: string, attempts = 40): Promise<{ version: number; drop: () => Promise<void> }> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    let top = 0;
    for await (const o of bucket.list(`${LAYOUT.IMAGES}${name}/`)) {
      const k = parseImageKey(o.key);
      if (k !== null && k.name === name) top = Math.max(top, k.version);
    }
    const version = top + 1;
    const key = `${claimPrefix(name, version)}${newId()}`;
    await bucket.put(key, Buffer.from(new Date().toISOString()), 'text/plain');
    let rivals = 0;
    for await (const o of bucket.list(claimPrefix(name, version))) if (o.key !== key) rivals++;
    if (rivals === 0) return { version, drop: () => bucket.delete(key) };
    await bucket.delete(key);
    await sleep(100 + Math.random() * 900);
  }
  throw new ClonecastError(ERR.BUSY, `could not get a version number for "${name}": other writers kept publishing versions of it; try again`);
}
