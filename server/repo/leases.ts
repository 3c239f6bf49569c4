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
  /** When a renewal that succeeded was sent, by the monotonic clock and by the wall clock (which also counts a suspended host's sleep). */
  private sentMono = performance.now();
  private sentWall = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private pending: Promise<void> = Promise.resolve();
  private released = false;
  private everLapsed = false;

  constructor(private readonly bucket: Bucket, readonly key: string, private readonly body: Buffer, private readonly ttlMs: number, renewMs: number) {
    this.timer = setInterval(() => void this.renew(), renewMs);
    this.timer.unref();
  }

  /**
   * True while the lease has been renewed within its lifetime, so no rival can
   * have taken over; once false it stays false (a lapse cannot be undone).
   */
  get intact(): boolean {
    if (this.released || this.everLapsed) return false;
    const age = Math.max(performance.now() - this.sentMono, Date.now() - this.sentWall);
    if (age >= this.ttlMs * 0.75) this.everLapsed = true;
    return !this.everLapsed;
  }

  /** Writes the lease object again (one renewal at a time); a failure is left for `intact` to show. */
  renew(): Promise<void> {
    this.pending = this.pending.then(async () => {
      if (this.released || !this.intact) return;
      const mono = performance.now();
      const wall = Date.now();
      try {
        await this.bucket.put(this.key, this.body, 'application/json');
        if (this.intact) {
          this.sentMono = mono;
          this.sentWall = wall;
        }
      } catch {
        // the repository is unreachable: intact turns false once the lease could have expired
      }
    });
    return this.pending;
  }

  /** Stops renewing and deletes the lease object (after a renewal in flight, so none re-creates it). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    await this.pending;
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
  let unlisted = 0;
  for (;;) {
    await bucket.put(key, body, 'application/json');
    let rivals: Rival[] | null;
    try {
      rivals = await liveRivals(bucket, key, ttl);
    } catch (err) {
      await bucket.delete(key).catch(() => undefined);
      throw err;
    }
    if (rivals === null) {
      // Our own object is not listed yet: this listing cannot be trusted to show rivals either.
      await bucket.delete(key).catch(() => undefined);
      if (++unlisted >= 10) throw notConsistent(bucket);
      await sleep(200 + Math.random() * 300);
      continue;
    }
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

/**
 * Live leases other than `own`, by the store's clock (own's LastModified is
 * "now"); null if the listing does not show `own` (not yet consistent).
 */
export async function liveRivals(bucket: Bucket, own: string, ttlMs: number): Promise<Rival[] | null> {
  const listed = [];
  for await (const o of bucket.list(LAYOUT.LEASES)) listed.push(o);
  const mine = listed.find((o) => o.key === own);
  if (mine === undefined) return null;
  const now = mine.lastModified.getTime();
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

/** The error when the store's listings do not show what was just written. */
function notConsistent(bucket: Bucket): ClonecastError {
  return new ClonecastError(ERR.UNREACHABLE, `${bucket.target.bucket}: listings do not show objects just written, so writers and gc cannot see each other safely; clonecast needs an S3 server with list-after-write consistency (AWS S3, Ceph RGW, MinIO; Swift under load may lag): try again, and check the server's health`);
}

/** A field of a lease written by someone else, safe to print. */
function printable(v: unknown, fallback: string): string {
  return typeof v === 'string' && v.length > 0 ? v.replace(/[^\x20-\x7e]/g, '?').slice(0, 120) : fallback;
}

/** The highest version number a repository holds (a key with more digits is ignored by readers). */
export const MAX_VERSION = 999_999_999;

/**
 * The next version number of an image, owned by the caller: one above every
 * published version and every claim. Claims are kept after the manifest is
 * written (a writer that listed before it must still see the number as taken)
 * and a removed version leaves a tombstone claim, so a number is never given
 * twice; a writer that died between claim and manifest leaves a gap. The
 * caller checks that no manifest exists under the number before writing it.
 */
export async function claimVersion(bucket: Bucket, name: string, attempts = 40): Promise<{ version: number; key: string }> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    let top = 0;
    for await (const o of bucket.list(`${LAYOUT.IMAGES}${name}/`)) {
      const k = parseImageKey(o.key);
      if (k !== null && k.name === name) top = Math.max(top, k.version);
    }
    const version = top + 1;
    if (version > MAX_VERSION) throw new ClonecastError(ERR.REFUSED, `"${name}" already has version ${top} in ${bucket.target.bucket}, the highest a repository numbers; publish under another name`);
    const key = `${claimPrefix(name, version)}${newId()}`;
    await bucket.put(key, Buffer.from(new Date().toISOString()), 'text/plain');
    let rivals = 0;
    let mine = false;
    try {
      for await (const o of bucket.list(claimPrefix(name, version))) {
        if (o.key === key) mine = true;
        else rivals++;
      }
    } catch (err) {
      await bucket.delete(key).catch(() => undefined);
      throw err;
    }
    if (mine && rivals === 0) return { version, key };
    await bucket.delete(key);
    await sleep(100 + Math.random() * 900);
  }
  throw new ClonecastError(ERR.BUSY, `could not get a version number for "${name}": other writers kept publishing versions of it, or the S3 server's listings lag behind its writes; try again`);
}
