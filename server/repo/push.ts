/**
 * image push: a local version becomes the next version of its image in a
 * repository. Under a writer's lease (gc cannot delete meanwhile): every
 * chunk the bucket lacks is uploaded (HEAD before PUT, so shared chunks cost
 * one small request); then a version number is claimed and the manifest is
 * written last. A push killed at any point leaves at most unreferenced
 * chunks (gc removes them after its grace period) and never a version that
 * names a missing chunk.
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { CHUNK } from '../../protocol/chunk.js';
import { tableLength, type Manifest } from '../../protocol/manifest.js';
import type { Store } from '../store/store.js';
import { claimVersion, takeLease } from './leases.js';
import { dataChunks, inParallel, sameDisk, storedBytes, withStoredForms, type NeededChunk, type Repository } from './repository.js';

/** Progress of a push or a pull. */
export interface RepoProgress {
  /** Distinct data chunks handled so far, and in all. */
  done: number;
  total: number;
  /** Chunks and stored bytes that crossed the network. */
  moved: number;
  movedBytes: number;
  /** Stored bytes of the chunks handled so far (moved or not), and in all. */
  bytes: number;
  totalBytes: number;
}

/** What push() did. */
export interface PushReport {
  name: string;
  /** The local version pushed. */
  localVersion: number;
  /** Its number in the repository. */
  version: number;
  chunks: number;
  uploaded: number;
  uploadedBytes: number;
  /** True when the repository's latest version was already this one (nothing written). */
  alreadyThere: boolean;
}

/** Options of push(). */
export interface PushOptions {
  concurrency?: number;
  /** How long to wait for a running gc, ms. */
  waitMs?: number;
  onProgress?: (p: RepoProgress) => void;
  onWait?: (why: string) => void;
}

/** Pushes local version name@localVersion (already resolved) to the repository. */
export async function push(repo: Repository, store: Store, name: string, localVersion: number, o: PushOptions = {}): Promise<PushReport> {
  const local = await store.readManifest(name, localVersion);
  return pushManifest(repo, store, local, o);
}

/** Pushes a manifest whose chunks are all in the local store (a capture at an edge publishes through this). */
export async function pushManifest(repo: Repository, store: Store, local: Manifest, o: PushOptions = {}): Promise<PushReport> {
  const name = local.meta.name;
  const report: PushReport = { name, localVersion: local.meta.version, version: 0, chunks: 0, uploaded: 0, uploadedBytes: 0, alreadyThere: false };
  const same = await latestIfSame(repo, name, local);
  if (same !== null) return { ...report, version: same, alreadyThere: true };
  const lease = await takeLease(repo.bucket, 'writer', `a push of ${name}@${local.meta.version}`, {
    waitMs: o.waitMs ?? 600_000,
    waiting: (rivals) => o.onWait?.(`waiting for ${rivals.map((r) => `${r.kind === 'sweeper' ? 'a gc' : r.doing} on ${r.host}`).join(', ')} to finish`),
  });
  try {
    const needed = dataChunks(local);
    report.chunks = needed.length;
    const forms = new Map<string, { compression: number; payloadLength: number }>();
    const progress: RepoProgress = { done: 0, total: needed.length, moved: 0, movedBytes: 0, bytes: 0, totalBytes: storedBytes(needed) };
    const upload = async (c: NeededChunk) => {
      const size = await repo.chunkSize(c.sha);
      if (size === null) {
        const stored = await store.readChunk(c.sha);
        await repo.putChunk(c.sha, stored);
        progress.moved++;
        progress.movedBytes += stored.length;
        const h = stored.readUInt8(5);
        forms.set(c.sha, { compression: h, payloadLength: stored.length - CHUNK.HEADER_SIZE });
      } else if (size !== CHUNK.HEADER_SIZE + c.storedLength) {
        // Another writer stored this chunk first, in another codec: the manifest must describe the object.
        const h = await repo.chunkHeader(c.sha);
        if (h !== null) forms.set(c.sha, { compression: h.compression, payloadLength: h.payloadLength });
      }
      progress.done++;
      progress.bytes += CHUNK.HEADER_SIZE + c.storedLength;
      o.onProgress?.({ ...progress });
    };
    await inParallel(needed, o.concurrency ?? 16, upload);
    // A lease that lapsed (the repository was unreachable for a while) may have let a gc run: look again.
    if (!lease.intact) {
      const gone: NeededChunk[] = [];
      await inParallel(needed, o.concurrency ?? 16, async (c) => {
        if ((await repo.chunkSize(c.sha)) === null) gone.push(c);
      });
      if (gone.length > 0) throw new ClonecastError(ERR.UNREACHABLE, `${gone.length} chunks of ${name} vanished from ${repo.where} while this push lost touch with it; push again`);
    }
    const claim = await claimVersion(repo.bucket, name);
    try {
      const versions = await repo.versions(name);
      const parent = versions.filter((v) => v < claim.version).pop() ?? null;
      const m = withStoredForms(local, forms);
      m.meta = { ...m.meta, version: claim.version, parent, newBytes: progress.movedBytes };
      if (tableLength(m.table) !== tableLength(local.table)) throw new Error('table length changed');
      await repo.putManifest(m);
    } finally {
      await claim.drop().catch(() => undefined);
    }
    return { ...report, version: claim.version, uploaded: progress.moved, uploadedBytes: progress.movedBytes };
  } finally {
    await lease.release();
  }
}

/** The repository's latest version of name if its chunk table and disk equal local's (pushing again would only add a copy). */
async function latestIfSame(repo: Repository, name: string, local: Manifest): Promise<number | null> {
  const versions = await repo.versions(name);
  const latest = versions[versions.length - 1];
  if (latest === undefined) return null;
  const m = await repo.readManifest(name, latest);
  return sameDisk(m, local) ? latest : null;
}
