/**
 * image pull: a repository version into a local store (an edge's cache).
 * Chunks the store lacks are fetched in parallel, each checked (decode,
 * xxh64, SHA-256 against its name, length against its place) before it is
 * stored; the version is published locally, under the repository's number,
 * only after a barrier makes every one of them durable. A pull cut off at any
 * point keeps the chunks it stored (the next pull skips them) and publishes
 * nothing.
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { CHUNK } from '../../protocol/chunk.js';
import type { Manifest } from '../../protocol/manifest.js';
import { native } from '../../native/addon.js';
import { currentRecords } from '../store/recompress.js';
import type { ImageRef, Store } from '../store/store.js';
import type { RepoProgress } from './push.js';
import { dataChunks, inParallel, sameDisk, storedBytes, type NeededChunk, type Repository } from './repository.js';

/** What pull() did. */
export interface PullReport {
  name: string;
  version: number;
  chunks: number;
  fetched: number;
  fetchedBytes: number;
  /** True if the store already had the whole version. */
  alreadyCached: boolean;
}

/** Options of pull() and fillCache(). */
export interface PullOptions {
  concurrency?: number;
  onProgress?: (p: RepoProgress) => void;
  /** Stop early (an edge shutting down); what is stored stays. */
  stopped?: () => boolean;
  /** Make the store this repository's cache (store.json) once every chunk is fetched, just before publishing. */
  bind?: { address: string; endpoint?: string; id?: string };
}

/** Pulls NAME[@V] from the repository into the store. */
export async function pull(repo: Repository, store: Store, ref: ImageRef, o: PullOptions = {}): Promise<PullReport> {
  const { name, version } = await repo.resolve(ref);
  const m = await repo.readManifest(name, version);
  const report: PullReport = { name, version, chunks: 0, fetched: 0, fetchedBytes: 0, alreadyCached: false };
  // Held from the first fetch to the publish: a local gc cannot remove what was fetched before it is published.
  const lock = store.lockImage(name, `pulling ${name}@${version} from ${repo.where}`);
  try {
    if (store.versions(name).includes(version)) {
      await checkSameVersion(store, m);
      report.alreadyCached = true;
    }
    if (o.bind !== undefined) store.checkBindable(o.bind.address, o.bind.id);
    const filled = await fillCache(repo, store, m, o);
    if (o.bind !== undefined) store.bindRepository(o.bind.address, o.bind.endpoint, o.bind.id);
    await publishLocked(store, m);
    return { ...report, chunks: filled.total, fetched: filled.moved, fetchedBytes: filled.movedBytes };
  } finally {
    lock.release();
  }
}

/**
 * Fetches every data chunk of m the store lacks, checked, into the store;
 * returns the counts. Does not publish m.
 */
export async function fillCache(repo: Repository, store: Store, m: Manifest, o: PullOptions = {}, fetchOne: (c: NeededChunk) => Promise<number> = (c) => fetchInto(repo, store, c)): Promise<RepoProgress> {
  const needed = dataChunks(m);
  const missing = needed.filter((c) => store.chunkHead(Buffer.from(c.sha, 'hex')) === null);
  const total = storedBytes(needed);
  const p: RepoProgress = { done: needed.length - missing.length, total: needed.length, moved: 0, movedBytes: 0, bytes: total - storedBytes(missing), totalBytes: total };
  o.onProgress?.({ ...p });
  await inParallel(missing, o.concurrency ?? 16, async (c) => {
    if (o.stopped?.() === true) throw new ClonecastError(ERR.CANCELLED, `the pull of ${m.meta.name}@${m.meta.version} was stopped; the chunks fetched so far are kept`);
    const bytes = await fetchOne(c);
    p.done++;
    p.bytes += CHUNK.HEADER_SIZE + c.storedLength;
    if (bytes > 0) {
      p.moved++;
      p.movedBytes += bytes;
    }
    o.onProgress?.({ ...p });
  });
  return p;
}

/** Fetches one checked chunk into the store; returns the bytes fetched (0 if another fetch stored it first). */
export async function fetchInto(repo: Repository, store: Store, c: NeededChunk): Promise<number> {
  const stored = await repo.fetchChunk(c);
  const out = native().alignedBuffer(Math.ceil((stored.length + 1) / 4096) * 4096 + 4096, 4096);
  stored.copy(out);
  await store.putChunk(Buffer.from(c.sha, 'hex'), out, stored.length, false);
  return stored.length;
}

/** Publishes a repository version in the store under its own number, after a barrier; a no-op if it is there. */
export async function publishCached(store: Store, m: Manifest): Promise<void> {
  const lock = store.lockImage(m.meta.name, `caching ${m.meta.name}@${m.meta.version} from the repository`);
  try {
    await publishLocked(store, m);
  } finally {
    lock.release();
  }
}

/** publishCached() for a caller that holds the image's lock. */
async function publishLocked(store: Store, m: Manifest): Promise<void> {
  if (store.versions(m.meta.name).includes(m.meta.version)) return checkSameVersion(store, m);
  const missing = dataChunks(m).filter((c) => store.chunkHead(Buffer.from(c.sha, 'hex')) === null);
  if (missing.length > 0) {
    throw new ClonecastError(ERR.CHUNK_MISSING, `${m.meta.name}@${m.meta.version} was not published in ${store.root}: ${missing.length} of its chunks are not there (removed while it was fetched?); pull it again`);
  }
  await store.barrier();
  // The local files are the authority on each chunk's codec and stored length (another writer may have
  // uploaded a chunk in another codec than the manifest recorded): receivers size fragments by them.
  const local: Manifest = { meta: { ...m.meta }, table: Buffer.from(m.table) };
  await currentRecords(store, local);
  store.publishAs(local);
}

/** Refuses when the store holds a different version under the same number (it is not a cache of this repository). */
async function checkSameVersion(store: Store, m: Manifest): Promise<void> {
  const mine = await store.readManifest(m.meta.name, m.meta.version);
  if (!sameDisk(mine, m)) {
    throw new ClonecastError(ERR.EXISTS, `${store.root} already has a different ${m.meta.name}@${m.meta.version}: this store is not a cache of the repository; pull into an edge's own --data folder`);
  }
}
