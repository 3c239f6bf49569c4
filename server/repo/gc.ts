/**
 * Garbage collection of a repository: mark and sweep, under a sweeper's
 * lease (leases.ts: no push, pull-and-publish or edge capture writes while
 * it deletes, and none starts until it ends). Mark: every chunk named by a
 * published version. Sweep: every other chunk object older than the grace
 * period (by the store's clock), so that a chunk just uploaded by a writer
 * whose lease lapsed is never taken; every few seconds it looks for writers
 * again and stops if one appeared. Claims older than a day whose writers died
 * before publishing (below a published number) and dead leases go too.
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { chunkKey, LAYOUT, parseChunkKey, parseImageKey, TOMBSTONE_ID } from './layout.js';
import { liveRivals, takeLease } from './leases.js';
import { dataChunks, inParallel, type Repository } from './repository.js';
import { Bucket } from './s3.js';

/** Chunks younger than this are never swept unless told. */
export const DEFAULT_GC_GRACE_MS = 60 * 60_000;
const STALE_CLAIM_MS = 24 * 60 * 60_000;

/** What repository gc found and did. */
export interface RepoGcReport {
  versions: number;
  chunks: number;
  referenced: number;
  /** Unreferenced chunks removed (or, with dryRun, that would be). */
  removed: number;
  removedBytes: number;
  /** Unreferenced chunks kept because they are younger than the grace period. */
  young: number;
  staleClaims: number;
  dryRun: boolean;
}

/** Options of collectRepository(). */
export interface RepoGcOptions {
  graceMs?: number;
  dryRun?: boolean;
  /** How long to wait for running writers, ms. */
  waitMs?: number;
  onWait?: (why: string) => void;
  onProgress?: (done: number, total: number) => void;
}

/** Collects a repository's garbage. */
export async function collectRepository(repo: Repository, o: RepoGcOptions = {}): Promise<RepoGcReport> {
  const grace = o.graceMs ?? DEFAULT_GC_GRACE_MS;
  const lease = await takeLease(repo.bucket, 'sweeper', 'a gc', {
    waitMs: o.waitMs ?? 0,
    waiting: (rivals) => o.onWait?.(`waiting for ${rivals.map((r) => `${r.doing} on ${r.host}`).join(', ')} to finish`),
  });
  try {
    const now = (await repo.bucket.head(lease.key))?.lastModified.getTime() ?? Date.now();
    const referenced = new Set<string>();
    const claims: { key: string; version: number; name: string; old: boolean }[] = [];
    const published = new Map<string, number>();
    const numbers = new Set<string>();
    let versions = 0;
    for await (const obj of repo.bucket.list(LAYOUT.IMAGES)) {
      const k = parseImageKey(obj.key);
      if (k === null) continue;
      if (k.kind === 'claim') {
        if (k.id !== TOMBSTONE_ID) claims.push({ key: obj.key, version: k.version, name: k.name, old: now - obj.lastModified.getTime() > STALE_CLAIM_MS });
        continue;
      }
      let m;
      try {
        m = await repo.readManifest(k.name, k.version);
      } catch (err) {
        if (err instanceof ClonecastError && err.code === ERR.NOT_FOUND) continue; // removed since the listing
        // One unreadable version stops gc: its chunks would look like garbage.
        throw new ClonecastError(ERR.MANIFEST_CORRUPT, `gc removed nothing: ${k.name}@${k.version} in ${repo.where} cannot be read (${(err as Error).message}), so the chunks it names cannot be told from garbage; remove it with "clonecast repository rm ${k.name}@${k.version}" (or push it again), then run gc again`);
      }
      for (const c of dataChunks(m)) referenced.add(c.sha);
      published.set(k.name, Math.max(published.get(k.name) ?? 0, k.version));
      numbers.add(`${k.name}@${k.version}`);
      versions++;
    }
    // A claim whose writer died without publishing is removed once a later version exists (its number stays
    // taken by that one); claims of published versions and tombstones are kept: they keep numbers from reuse.
    const staleClaims = claims.filter((c) => c.old && !numbers.has(`${c.name}@${c.version}`) && c.version < (published.get(c.name) ?? 0)).map((c) => c.key);
    const deadLeases: string[] = [];
    for await (const obj of repo.bucket.list(LAYOUT.LEASES)) {
      if (obj.key !== lease.key && now - obj.lastModified.getTime() > 10 * LAYOUT.LEASE_TTL_MS) deadLeases.push(obj.key);
    }
    const report: RepoGcReport = { versions, chunks: 0, referenced: referenced.size, removed: 0, removedBytes: 0, young: 0, staleClaims: staleClaims.length, dryRun: o.dryRun === true };
    const doomed: { sha: string; size: number }[] = [];
    for await (const obj of repo.bucket.list(LAYOUT.CHUNKS)) {
      const sha = parseChunkKey(obj.key);
      if (sha === null) continue;
      report.chunks++;
      if (referenced.has(sha)) continue;
      if (now - obj.lastModified.getTime() < grace) report.young++;
      else doomed.push({ sha, size: obj.size });
    }
    if (o.dryRun === true) return { ...report, removed: doomed.length, removedBytes: doomed.reduce((a, d) => a + d.size, 0) };
    let done = 0;
    let checkedAt = performance.now();
    // Deletes get one attempt and a short timeout: one retried for minutes could land after this gc's
    // lease lapsed and a writer has found the chunk (the lease is counted lapsed 30 s before rivals see it dead).
    const deleter = new Bucket(repo.bucket.target, { attempts: 1, requestTimeoutMs: 10_000, concurrency: 8 });
    const stop = (why: string) => new ClonecastError(ERR.BUSY, `gc stopped deleting: ${why}; ${report.removed} unused chunks removed so far, every version is whole; run gc again`);
    try {
      await inParallel(doomed, 8, async (d) => {
        if (!lease.intact) throw stop(`it lost touch with ${repo.where} (a writer may have started meanwhile)`);
        if (performance.now() - checkedAt > 5_000) {
          // A writer that did not see this gc's lease (its own had lapsed) must not lose chunks: look again.
          checkedAt = performance.now();
          const rivals = await liveRivals(repo.bucket, lease.key, LAYOUT.LEASE_TTL_MS);
          if (rivals === null) throw stop('its own lease is not listed, so the listing cannot show writers either');
          const writers = rivals.filter((r) => r.kind === 'writer').length;
          if (writers > 0) throw stop(`${writers} writer(s) started`);
        }
        await deleter.delete(chunkKey(d.sha));
        report.removed++;
        report.removedBytes += d.size;
        o.onProgress?.(++done, doomed.length);
      });
    } finally {
      deleter.close();
    }
    for (const key of [...staleClaims, ...deadLeases]) await repo.bucket.delete(key);
    return report;
  } finally {
    await lease.release();
  }
}
