/**
 * Worker thread for the chunk pipelines. One script, three modes chosen by
 * workerData.mode:
 * - import: read a chunk from the source disk (reading around bad sectors if
 *   asked), detect zeros, hash, compress and store it unless already stored;
 * - export: read a stored chunk, decode and check it, write it to the target;
 * - verify: read a stored chunk, decode it and check its SHA-256 name;
 * - recompress: re-encode a stored chunk with zstd at a level and, if that
 *   is smaller, replace its file (server/store/recompress.ts).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { CHUNK, Compression, decodeChunk, decodeChunkHeader, defaultCodec, encodeChunk, isZero, type ChunkCodec } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { initHashes, sha256, xxh64 } from '../../protocol/hash.js';
import { ChunkKind, type BadRange } from '../../protocol/manifest.js';
import { Disk } from '../../native/disk.js';
import { readAround } from '../../native/read-around.js';
import { chunkFileFits, DIRECT_UNIT, Store } from './store.js';
import { native } from '../../native/addon.js';
import type { Reply } from './pool.js';
import { zeroOutside } from '../../protocol/used-map.js';

/** Settings shared by every worker of a pool. */
export interface WorkerSetup {
  mode: 'import' | 'export' | 'verify' | 'recompress';
  storeRoot: string;
  chunkSize: number;
  /** import: source path; export: target path. */
  device?: string;
  ignoreReadErrors?: boolean;
  /** import and recompress: how chunks are compressed (import default: defaultCodec()). */
  codec?: ChunkCodec;
}

/** An import task: one chunk of the source. */
export interface ImportTask {
  index: number;
  position: number;
  length: number;
  /** A partly used chunk: the [offset, length] ranges kept; the other bytes are stored as zeros. */
  keep?: [number, number][];
  /** The chunk's bytes, when the main thread read them (a virtual disk over NBD). */
  data?: Uint8Array;
}

/** What an import task found. */
export interface ImportResult {
  index: number;
  kind: ChunkKind;
  compression: Compression;
  storedLength: number;
  xxh64: bigint;
  sha256: Uint8Array;
  /** Bytes added to the store (0 if the chunk was already there). */
  newBytes: number;
  badRanges: BadRange[];
}

/** An export task: write one stored chunk to the target. */
export interface ExportTask {
  index: number;
  position: number;
  length: number;
  sha: string;
  xxh64: bigint;
}

/** A verify task: check one stored chunk. */
export interface VerifyTask {
  sha: string;
  rawLength: number;
}

/** A recompress task: one distinct stored chunk of the image. */
export interface RecompressTask {
  sha: string;
  rawLength: number;
  xxh64: bigint;
}

/** What a recompress task did: the chunk's stored form before and after (the same if it was kept). */
export interface RecompressResult {
  sha: string;
  before: { compression: Compression; payloadLength: number };
  after: { compression: Compression; payloadLength: number };
}

/** What a verify task found: null if sound, else what is wrong. */
export type VerifyResult = { sha: string; problem: string | null; code?: string; form?: { compression: Compression; payloadLength: number } };

const setup = workerData as WorkerSetup;
const store = Store.open(setup.storeRoot);
const ready = initHashes();
let disk: Disk | undefined;

function device(): Disk {
  if (disk === undefined) {
    // O_DIRECT for block devices (no page-cache churn on a whole disk);
    // buffered for image files, where the page cache helps.
    const direct = statSync(setup.device!).isBlockDevice();
    disk = Disk.open(setup.device!, { write: setup.mode === 'export', force: true, direct });
  }
  return disk;
}

/** The aligned buffers one task uses: the raw chunk and its stored form. */
interface Buffers {
  raw: Buffer;
  stored: Buffer;
}

// A worker runs up to WORKER_DEPTH tasks at once: while one task's write is
// in flight on the thread pool, the next one computes.
const free: Buffers[] = [];

function takeBuffers(): Buffers {
  const unit = DIRECT_UNIT;
  return (
    free.pop() ?? {
      raw: native().alignedBuffer(setup.chunkSize, unit),
      stored: native().alignedBuffer(Math.ceil((CHUNK.HEADER_SIZE + setup.chunkSize) / unit) * unit, unit),
    }
  );
}

// Reads [position, position+length) into buf, around read errors (native/read-around.ts).
function readSource(d: Disk, buf: Buffer, position: number, length: number): BadRange[] {
  return readAround(d, buf, position, length, setup.ignoreReadErrors === true);
}

async function importChunk(t: ImportTask, b: Buffers): Promise<ImportResult> {
  const badRanges = t.data !== undefined ? given(t, b.raw) : readSource(device(), b.raw, t.position, t.length);
  const raw = b.raw.subarray(0, t.length);
  if (t.keep !== undefined) zeroOutside(raw, t.length, t.keep);
  const none = { index: t.index, compression: Compression.RAW, storedLength: 0, xxh64: 0n, sha256: new Uint8Array(32), newBytes: 0, badRanges };
  if (isZero(raw)) return { ...none, kind: ChunkKind.ZERO };
  const hash = xxh64(raw);
  const sha = sha256(raw);
  // Already stored (by an earlier version, another image, or an import that
  // was killed)? Reuse it if its header and size are whole.
  const found = store.chunkHead(sha);
  const size = found?.size ?? -1;
  let damaged = false;
  if (found !== null && size > 0) {
    try {
      const h = decodeChunkHeader(found.head);
      if (h.rawLength === t.length && h.xxh64 === hash && chunkFileFits(size, h.payloadLength)) {
        return { ...none, kind: ChunkKind.DATA, compression: h.compression, storedLength: h.payloadLength, xxh64: hash, sha256: sha };
      }
    } catch {
      // a torn or damaged file: replaced below
    }
    damaged = true;
  }
  const { compression, data } = encodeChunk(raw, hash, b.stored, setup.codec ?? defaultCodec());
  const stored = await store.putChunk(sha, b.stored, data.length, damaged || size === 0);
  if (!stored) {
    // Another import stored the same chunk first, maybe with another codec or level: record the form its file holds.
    const won = store.chunkHead(sha);
    const h = won === null ? null : decodeChunkHeader(won.head);
    if (h !== null && h.rawLength === t.length && h.xxh64 === hash) return { ...none, kind: ChunkKind.DATA, compression: h.compression, storedLength: h.payloadLength, xxh64: hash, sha256: sha };
  }
  const newBytes = stored ? data.length : 0;
  return { ...none, kind: ChunkKind.DATA, compression, storedLength: data.length - CHUNK.HEADER_SIZE, xxh64: hash, sha256: sha, newBytes };
}

// Copies bytes the main thread read into the aligned buffer (no read errors to report).
function given(t: ImportTask, into: Buffer): BadRange[] {
  if (t.data!.length !== t.length) throw new ClonecastError(ERR.READ_ERROR, `chunk ${t.index}: ${t.data!.length} bytes given, ${t.length} expected`);
  into.set(t.data!, 0);
  return [];
}

async function exportChunk(t: ExportTask, b: Buffers): Promise<number> {
  const d = device();
  const buf = b.raw;
  const { raw, header } = decodeChunk(store.readChunkInto(t.sha, b.stored), `chunk ${t.sha}`, buf);
  if (raw.length !== t.length || header.xxh64 !== t.xxh64) {
    throw new ClonecastError(ERR.CHUNK_CORRUPT, `chunk ${t.sha} does not match the manifest's length or xxh64 for chunk ${t.index}`, { sha: t.sha, index: t.index });
  }
  await d.write(buf, t.position, t.length);
  return t.index;
}

function verifyChunk(t: VerifyTask, b: Buffers): VerifyResult {
  try {
    const { raw, header } = decodeChunk(store.readChunkInto(t.sha, b.stored), `chunk ${t.sha}`, b.raw);
    if (raw.length !== t.rawLength) return { sha: t.sha, problem: `holds ${raw.length} bytes, the manifest expects ${t.rawLength}`, code: ERR.CHUNK_CORRUPT };
    if (sha256(raw).toString('hex') !== t.sha) return { sha: t.sha, problem: 'SHA-256 of its contents does not match its name', code: ERR.CHUNK_CORRUPT };
    return { sha: t.sha, problem: null, form: { compression: header.compression, payloadLength: header.payloadLength } };
  } catch (err) {
    const e = err as ClonecastError;
    return { sha: t.sha, problem: e.message, code: e.code ?? ERR.CHUNK_CORRUPT };
  }
}

/**
 * Re-encodes one stored chunk with setup.codec. A smaller stored form is
 * written to a temporary file, fsynced, read back and decoded (its SHA-256
 * must be the chunk's name), and only then renamed over the chunk file:
 * a reader sees the old form or the new one, both whole. The renames are
 * made durable by the caller's barrier before any manifest names the new
 * form; until then a manifest may record the old codec and length, which
 * readers never trust over the chunk's own header.
 */
function recompressChunk(t: RecompressTask, b: Buffers): RecompressResult {
  const where = `chunk ${t.sha}`;
  const old = store.readChunkInto(t.sha, b.stored);
  const { header, raw } = decodeChunk(old, where, b.raw);
  if (raw.length !== t.rawLength || header.xxh64 !== t.xxh64 || sha256(raw).toString('hex') !== t.sha) {
    throw new ClonecastError(ERR.CHUNK_CORRUPT, `${where} does not match its name or the manifest's length and xxh64; run "clonecast image verify"`, { sha: t.sha });
  }
  const before = { compression: header.compression, payloadLength: header.payloadLength };
  const { compression, data } = encodeChunk(raw, header.xxh64, b.stored, setup.codec!);
  if (data.length >= CHUNK.HEADER_SIZE + header.payloadLength) return { sha: t.sha, before, after: before };
  const tmp = store.tmpPath('recompress');
  try {
    const fd = openSync(tmp, 'w', 0o644);
    try {
      for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    const back = decodeChunk(readFileSync(tmp), `${where} as recompressed`);
    if (sha256(back.raw).toString('hex') !== t.sha) throw new ClonecastError(ERR.CHUNK_CORRUPT, `${where} did not read back whole after recompressing; the old file is kept`, { sha: t.sha });
    renameSync(tmp, store.chunkPath(t.sha));
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // already renamed or never made
    }
    throw err;
  }
  return { sha: t.sha, before, after: { compression, payloadLength: data.length - CHUNK.HEADER_SIZE } };
}

parentPort!.on('message', async ({ id, task }: { id: number; task: ImportTask | ExportTask | VerifyTask }) => {
  let reply: Reply<unknown>;
  const buffers = takeBuffers();
  try {
    await ready;
    let result: unknown;
    if (setup.mode === 'import') result = await importChunk(task as ImportTask, buffers!);
    else if (setup.mode === 'export') result = await exportChunk(task as ExportTask, buffers!);
    else if (setup.mode === 'recompress') result = recompressChunk(task as RecompressTask, buffers);
    else result = verifyChunk(task as VerifyTask, buffers);
    reply = { id, ok: true, result };
  } catch (err) {
    const e = err as ClonecastError;
    reply = { id, ok: false, error: { code: e.code, message: e.message ?? String(err), details: e.details } };
  } finally {
    free.push(buffers);
  }
  parentPort!.postMessage(reply);
});
