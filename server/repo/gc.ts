/**
 * Garbage collection of a repository: mark and sweep, under a sweeper's
 * lease (leases.ts: no push, pull-and-publish or edge capture writes while
 * it deletes, and none starts until it ends). Mark: every chunk named by a
 * published version. Sweep: every other chunk object older than the grace
 * period (by the store's clock), so that a chunk just uploaded by a writer
 * whose lease lapsed is never taken. Claims older than a day, whose writers
 * died before publishing, are removed too.
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { chunkKey, LAYOUT, parseChunkKey, parseImageKey, TOMBSTONE_ID } from './layout.js';
import { takeLease } from './leases.js';
import { dataChunks, inParallel, type Repository } from './repository.js';

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
    const claims: string[] = [];
    let versions = 0;
    for await (const obj of repo.bucket.list(LAYOUT.IMAGES)) {
      const k = parseImageKey(obj.key);
      if (k === null) continue;
      if (k.kind === 'claim') {
        if (k.id !== TOMBSTONE_ID && now - obj.lastModified.getTime() > STALE_CLAIM_MS) claims.push(obj.key);
        continue;
      }
      // One unreadable version stops gc: its chunks would look like garbage.
      const m = await repo.readManifest(k.name, k.version);
      for (const c of dataChunks(m)) referenced.add(c.sha);
      versions++;
    }
    const report: RepoGcReport = { versions, chunks: 0, referenced: referenced.size, removed: 0, removedBytes: 0, young: 0, staleClaims: claims.length, dryRun: o.dryRun === true };
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
    await inParallel(doomed, 8, async (d) => {
      if (!lease.intact) throw new ClonecastError(ERR.UNREACHABLE, `gc lost touch with ${repo.where} and stopped deleting (a writer may have started): ${report.removed} chunks removed so far; run gc again`);
      await repo.bucket.delete(chunkKey(d.sha));
      report.removed++;
      report.removedBytes += d.size;
      o.onProgress?.(++done, doomed.length);
    });
    for (const key of claims) await repo.bucket.delete(key);
    return report;
  } finally {
    await lease.release();
  }
}
