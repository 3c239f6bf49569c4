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
import { chunkKey, manifestKey } from './layout.js';
import { dataChunks, FORM_META, inParallel, parseForm, sameDisk, storedBytes, type ChunkForm, withStoredForms, type NeededChunk, type Repository } from './repository.js';

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
  /** True when the repository's latest version was already this one (no version written; missing chunks were uploaded again). */
  alreadyThere: boolean;
}

/** Options of push(). */
export interface PushOptions {
  concurrency?: number;
  /** How long to wait for a running gc, ms. */
  waitMs?: number;
  /** Read and check every chunk the repository already has, and replace damaged ones. */
  repair?: boolean;
  onProgress?: (p: RepoProgress) => void;
  onWait?: (why: string) => void;
}

/** Pushes local version name@localVersion (already resolved) to the repository. */
export async function push(repo: Repository, store: Store, name: string, localVersion: number, o: PushOptions = {}): Promise<PushReport> {
  // A reader's lock: a local gc cannot take the chunks from under the upload.
  const lock = store.lockReader(`pushing ${name}@${localVersion} to ${repo.where}`);
  try {
    const local = await store.readManifest(name, localVersion);
    return await pushManifest(repo, store, local, o);
  } finally {
    lock.release();
  }
}

/** Pushes a manifest whose chunks are all in the local store (a capture at an edge publishes through this). */
export async function pushManifest(repo: Repository, store: Store, local: Manifest, o: PushOptions = {}): Promise<PushReport> {
  const name = local.meta.name;
  const report: PushReport = { name, localVersion: local.meta.version, version: 0, chunks: 0, uploaded: 0, uploadedBytes: 0, alreadyThere: false };
  const needed = dataChunks(local);
  report.chunks = needed.length;
  const concurrency = o.concurrency ?? 16;
  const takeWriter = () =>
    takeLease(repo.bucket, 'writer', `a push of ${name}@${local.meta.version}`, {
      waitMs: o.waitMs ?? 600_000,
      waiting: (rivals) => o.onWait?.(`waiting for ${rivals.map((r) => `${r.kind === 'sweeper' ? 'a gc' : r.doing} on ${r.host}`).join(', ')} to finish`),
    });
  let lease = await takeWriter();
  try {
    const forms = new Map<string, ChunkForm>();
    const progress: RepoProgress = { done: 0, total: needed.length, moved: 0, movedBytes: 0, bytes: 0, totalBytes: storedBytes(needed) };
    const upload = async (c: NeededChunk) => {
      const stored = await store.readChunk(c.sha);
      const form = { compression: stored.readUInt8(5), payloadLength: stored.length - CHUNK.HEADER_SIZE };
      await repo.putChunk(c.sha, stored, { [FORM_META]: `${form.compression}:${form.payloadLength}` });
      forms.set(c.sha, form);
      progress.moved++;
      progress.movedBytes += stored.length;
    };
    // Every chunk is in the bucket, and forms says what each object holds.
    const sync = async (c: NeededChunk) => {
      const head = await repo.bucket.head(chunkKey(c.sha));
      let form: ChunkForm | null = null;
      if (head !== null) {
        form = parseForm(head.meta[FORM_META], head.size) ?? (await repo.chunkHeader(c.sha));
        if (form !== null && o.repair === true) {
          try {
            await repo.fetchChunk(c);
          } catch (err) {
            if (!(err instanceof ClonecastError) || (err.code !== ERR.CHUNK_CORRUPT && err.code !== ERR.CHUNK_MISSING)) throw err;
            form = null; // damaged in the bucket: replaced by the good local copy
          }
        }
      }
      if (form === null) await upload(c);
      else forms.set(c.sha, { compression: form.compression, payloadLength: form.payloadLength });
      progress.done = Math.min(progress.total, progress.done + 1);
      progress.bytes += CHUNK.HEADER_SIZE + c.storedLength;
      o.onProgress?.({ ...progress });
    };
    const same = await latestIfSame(repo, name, local);
    await inParallel(needed, concurrency, sync);
    if (same !== null) return { ...report, version: same, alreadyThere: true, uploaded: progress.moved, uploadedBytes: progress.movedBytes };
    for (;;) {
      // A lease that lapsed (the repository unreachable, the host asleep) may have let a gc run: take a
      // fresh one, which waits out any gc, and make sure every chunk is there again.
      if (!lease.intact) {
        await lease.release();
        lease = await takeWriter();
        await inParallel(needed, concurrency, sync);
        continue;
      }
      const claim = await claimVersion(repo.bucket, name);
      if ((await repo.bucket.head(manifestKey(name, claim.version))) !== null) continue; // written by a writer that ignored claims: take the next
      const versions = await repo.versions(name);
      const parent = versions.filter((v) => v < claim.version).pop() ?? null;
      const m = withStoredForms(local, forms);
      m.meta = { ...m.meta, version: claim.version, parent, newBytes: progress.movedBytes };
      if (!lease.intact) continue; // the number stays a gap; the chunks are checked again first
      await repo.putManifest(m);
      if (!lease.intact) {
        // The manifest PUT (with the client's retries) outlived the lease: a gc may have removed a chunk the
        // push found in the bucket. A fresh lease waits out any gc; then every chunk is put back if it went.
        await lease.release();
        lease = await takeWriter();
        await inParallel(needed, concurrency, sync);
      }
      await reconcileForms(repo, m, forms, concurrency);
      return { ...report, version: claim.version, uploaded: progress.moved, uploadedBytes: progress.movedBytes };
    }
  } finally {
    await lease.release();
  }
}

/**
 * Two writers that upload the same new chunk at once in different codecs
 * leave the last one's object: after publishing, the writer looks at the
 * objects it uploaded and rewrites its own manifest if one of them changed.
 */
async function reconcileForms(repo: Repository, m: Manifest, forms: Map<string, ChunkForm>, concurrency: number): Promise<void> {
  const changed = new Map<string, ChunkForm>();
  await inParallel([...forms.keys()], concurrency, async (sha) => {
    const head = await repo.bucket.head(chunkKey(sha));
    const now = head === null ? null : (parseForm(head.meta[FORM_META], head.size) ?? (await repo.chunkHeader(sha)));
    const was = forms.get(sha)!;
    if (now !== null && (now.compression !== was.compression || now.payloadLength !== was.payloadLength)) changed.set(sha, now);
  });
  if (changed.size === 0) return;
  const fixed = withStoredForms(m, changed);
  fixed.meta = m.meta;
  await repo.putManifest(fixed);
}

/** The repository's latest version of name if its chunk table and disk equal local's (pushing again would only add a copy). */
async function latestIfSame(repo: Repository, name: string, local: Manifest): Promise<number | null> {
  const versions = await repo.versions(name);
  const latest = versions[versions.length - 1];
  if (latest === undefined) return null;
  const m = await repo.readManifest(name, latest);
  return sameDisk(m, local) ? latest : null;
}
