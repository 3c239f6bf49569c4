/**
 * Recompress: re-encode an image version's chunks with zstd at a higher
 * level, so that every later deploy sends fewer bytes (compress once, send
 * smaller every time).
 *
 * A chunk's identity is the SHA-256 of its uncompressed bytes, so a
 * recompressed chunk keeps its name and replaces its file (chunk-worker.ts:
 * temporary file, fsync, decoded back, rename). Every manifest that names a
 * rewritten chunk (in any image: chunks are shared) is then rewritten with
 * the new codec and stored length, after one barrier makes the renames
 * durable. The xxh64 and SHA-256 in the records do not change.
 *
 * Crash safety: a crash before the manifests are rewritten leaves records
 * whose codec and stored length are the old form's. Export, verify, import
 * and capture read the chunk's own header and are unaffected; running
 * recompress again on the image repairs the records (step 3 always records
 * what the chunk files hold). Old forms are not kept: there is nothing for
 * gc to collect afterwards beyond the usual.
 *
 * The run holds the store's maintenance lock (as gc does): no import,
 * capture, export or verify runs meanwhile, and it refuses while a session
 * sends (sessions hold a reader's lock: server/session-live.ts), whose
 * receivers expect the stored lengths of the manifest they were given. A
 * session that starts after an interrupted run sends the records the chunk
 * files hold (currentRecords()).
 */
import { Compression, CODEC_NAMES, chunkLength, CHUNK, decodeChunkHeader } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { chunkAt, ChunkKind, setChunk, tableLength, type Manifest } from '../../protocol/manifest.js';
import { ZSTD } from '../../protocol/zstd.js';
import { Progress, type ProgressOptions } from '../progress.js';
import { compiledSibling, DEFAULT_WORKERS, WORKER_DEPTH, WorkerPool } from './pool.js';
import { checkCodec, runBounded } from './import.js';
import type { ImageRef, Store } from './store.js';
import type { RecompressResult, RecompressTask, WorkerSetup } from './chunk-worker.js';

/** Options of recompressImage(). */
export interface RecompressOptions {
  /** zstd level (default ZSTD.RECOMPRESS_LEVEL). */
  level?: number;
  /** Worker threads (default DEFAULT_WORKERS). */
  workers?: number;
  progress?: ProgressOptions;
  /**
   * Test hook: called after the chunk files are replaced and made durable,
   * before any manifest is rewritten (a crash there is what the tests simulate).
   */
  beforeManifests?: () => void;
}

/** What a recompress did. */
export interface RecompressSummary {
  name: string;
  version: number;
  level: number;
  /** Distinct data chunks of the version. */
  chunks: number;
  /** Chunks whose file was replaced by a smaller zstd form. */
  rewritten: number;
  /** Stored bytes (headers included) of the version's distinct chunks before and after. */
  storedBefore: number;
  storedAfter: number;
  /** Chunks by codec after the run. */
  codecs: Record<'raw' | 'lz4' | 'zstd', number>;
  /** Manifests (image versions) whose records were rewritten. */
  manifestsUpdated: string[];
  seconds: number;
  /** Uncompressed bytes of distinct chunks processed per second. */
  bytesPerSecond: number;
}

/** Re-encodes the chunks of ref's version with zstd at options.level. */
export async function recompressImage(store: Store, ref: ImageRef, options: RecompressOptions = {}): Promise<RecompressSummary> {
  const level = options.level ?? ZSTD.RECOMPRESS_LEVEL;
  if (!Number.isInteger(level) || level < ZSTD.MIN_LEVEL || level > ZSTD.MAX_LEVEL) {
    throw new ClonecastError(ERR.USAGE, `zstd level ${level} is not a whole number from ${ZSTD.MIN_LEVEL} to ${ZSTD.MAX_LEVEL}`);
  }
  const codec = checkCodec({ compression: Compression.ZSTD, level });
  const started = performance.now();
  const lock = store.lockGc(`recompressing ${ref.name}`);
  let pool: WorkerPool<RecompressTask, RecompressResult> | undefined;
  try {
    const { name, version } = store.resolve(ref);
    const manifest = await store.readManifest(name, version);
    // 1. The version's distinct data chunks.
    const tasks = new Map<string, RecompressTask>();
    const n = tableLength(manifest.table);
    for (let i = 0; i < n; i++) {
      const r = chunkAt(manifest.table, i);
      if (r.kind !== ChunkKind.DATA) continue;
      const sha = r.sha256.toString('hex');
      if (!tasks.has(sha)) tasks.set(sha, { sha, rawLength: chunkLength(i, manifest.meta.diskSize, manifest.meta.chunkSize), xxh64: r.xxh64 });
    }
    // 2. Re-encode them in parallel; each smaller form replaces its file.
    const workers = options.workers ?? DEFAULT_WORKERS;
    const setup: WorkerSetup = { mode: 'recompress', storeRoot: store.root, chunkSize: manifest.meta.chunkSize, codec };
    pool = new WorkerPool<RecompressTask, RecompressResult>(compiledSibling(import.meta.url, 'chunk-worker'), workers, setup);
    const list = [...tasks.values()];
    const rawTotal = list.reduce((a, t) => a + t.rawLength, 0);
    const progress = new Progress(`recompress ${name}@${version} (zstd -${level})`, rawTotal, options.progress);
    const results = new Map<string, RecompressResult>();
    await runBounded(list.length, workers * (WORKER_DEPTH + 1), async (i) => {
      const r = await pool!.run(list[i]);
      results.set(r.sha, r);
      progress.add(list[i].rawLength);
    });
    progress.finish();
    await store.barrier();
    options.beforeManifests?.();
    // 3. Every manifest naming one of these chunks records its form as the file now holds it.
    const manifestsUpdated: string[] = [];
    for (const image of store.images()) {
      for (const v of store.versions(image)) {
        const m = image === name && v === version ? manifest : await store.readManifest(image, v);
        if (updateRecords(m, results)) {
          store.replaceManifest(m);
          manifestsUpdated.push(`${image}@${v}`);
        }
      }
    }
    const codecs = { raw: 0, lz4: 0, zstd: 0 };
    let storedBefore = 0;
    let storedAfter = 0;
    let rewritten = 0;
    for (const r of results.values()) {
      storedBefore += CHUNK.HEADER_SIZE + r.before.payloadLength;
      storedAfter += CHUNK.HEADER_SIZE + r.after.payloadLength;
      if (r.after.payloadLength !== r.before.payloadLength || r.after.compression !== r.before.compression) rewritten++;
      codecs[CODEC_NAMES[r.after.compression]]++;
    }
    const seconds = (performance.now() - started) / 1000;
    return { name, version, level, chunks: list.length, rewritten, storedBefore, storedAfter, codecs, manifestsUpdated, seconds, bytesPerSecond: rawTotal / seconds };
  } finally {
    await pool?.close();
    lock.release();
  }
}

/** Sets the codec and stored length of every record naming a chunk in results; true if any changed. */
export function updateRecords(m: Manifest, results: ReadonlyMap<string, RecompressResult>): boolean {
  let changed = false;
  const n = tableLength(m.table);
  for (let i = 0; i < n; i++) {
    const r = chunkAt(m.table, i);
    if (r.kind !== ChunkKind.DATA) continue;
    const found = results.get(r.sha256.toString('hex'));
    if (found === undefined || (found.after.compression === r.compression && found.after.payloadLength === r.storedLength)) continue;
    setChunk(m.table, i, { ...r, compression: found.after.compression, storedLength: found.after.payloadLength, sha256: Buffer.from(r.sha256) });
    changed = true;
  }
  return changed;
}

/**
 * Brings m's records in line with the chunk files (codec and stored length) before m is
 * sent: after a recompress interrupted before its manifests were rewritten, a session would
 * otherwise announce stored lengths its chunks no longer have. Reads each distinct chunk's
 * header (24 bytes), yielding to the event loop now and then; returns how many records changed.
 */
export async function currentRecords(store: Store, m: Manifest): Promise<number> {
  const forms = new Map<string, { compression: Compression; payloadLength: number } | null>();
  let changed = 0;
  const n = tableLength(m.table);
  for (let i = 0; i < n; i++) {
    const r = chunkAt(m.table, i);
    if (r.kind !== ChunkKind.DATA) continue;
    const hex = r.sha256.toString('hex');
    let form = forms.get(hex);
    if (form === undefined) {
      const head = store.chunkHead(r.sha256);
      form = null;
      try {
        if (head !== null) form = decodeChunkHeader(head.head);
      } catch {
        // damaged: the sender's read reports it; nothing to align here
      }
      forms.set(hex, form);
      if (forms.size % 1024 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    if (form === null || (form.compression === r.compression && form.payloadLength === r.storedLength)) continue;
    setChunk(m.table, i, { ...r, compression: form.compression, storedLength: form.payloadLength, sha256: Buffer.from(r.sha256) });
    changed++;
  }
  return changed;
}
