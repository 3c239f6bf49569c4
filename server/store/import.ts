/**
 * Import: turn a raw image file or a block device into a new version of an
 * image. The main thread reads the partition table and schedules chunks; a
 * pool of workers reads, hashes, compresses and stores them. The version is
 * published only after every chunk it references is durable.
 */
import { chunkCount, chunkLength, CHUNK, Compression, CODEC_NAMES, defaultCodec, type ChunkCodec } from '../../protocol/chunk.js';
import { zstdAvailable } from '../../protocol/zstd.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { newChunkTable, setChunk, ChunkKind, type BadRange, type ManifestMeta } from '../../protocol/manifest.js';
import type { PartitionTable } from '../../protocol/partitions.js';
import { mergeRanges } from '../../protocol/manifest.js';
import { readTable } from '../../native/disk-table.js';
import { Disk } from '../../native/disk.js';
import { Progress, type ProgressOptions } from '../progress.js';
import { compiledSibling, DEFAULT_WORKERS, WORKER_DEPTH, WorkerPool } from './pool.js';
import { checkName, type Store } from './store.js';
import type { ImportResult, ImportTask, WorkerSetup } from './chunk-worker.js';
import { planImport } from './import-plan.js';
import type { PartitionRead } from '../../protocol/manifest.js';
import type { ChunkSource } from './import-source.js';

/** Bytes of new chunks between background syncs during an import. */
export const WRITEBACK_STEP = 64 << 20;

/** Options of importImage(). */
export interface ImportOptions {
  /** Chunk size in bytes, a power of two from 64 KiB to 16 MiB (default CHUNK.DEFAULT_SIZE). */
  chunkSize?: number;
  /** Store unreadable sectors as zeros and record them, instead of stopping. */
  ignoreReadErrors?: boolean;
  /** Worker threads (default DEFAULT_WORKERS). */
  workers?: number;
  /** Where to show progress. */
  progress?: ProgressOptions;
  /** Free text kept in the manifest's source description. */
  description?: string;
  /** How new chunks are compressed (default: defaultCodec(), zstd where libzstd loads). */
  codec?: ChunkCodec;
  /** Read every byte, not only what filesystems use (--raw). */
  raw?: boolean;
  /** Told of partitions read in full for a safety reason (an unclean filesystem). */
  warn?: (message: string) => void;
  /** Read through this instead of opening src (a virtual disk: server/store/import-virtual.ts). */
  source?: ChunkSource;
}

/** What an import did. */
export interface ImportSummary {
  name: string;
  version: number;
  parent: number | null;
  diskSize: number;
  chunks: number;
  dataChunks: number;
  zeroChunks: number;
  /** Chunks no filesystem uses: not read, not stored. */
  unusedChunks: number;
  /** Bytes read from the source. */
  bytesRead: number;
  /** Bytes the filesystems use plus what was read raw (the disk's size under --raw). */
  usedBytes: number;
  /** How each partition was read (empty under --raw). */
  partitions: PartitionRead[];
  /** Partitions read in full for a safety reason. */
  warnings: string[];
  /** Data chunks that were already in the store. */
  reusedChunks: number;
  /** Bytes this import added to the store. */
  newBytes: number;
  /** Stored bytes of this version's data chunks (compressed, with headers). */
  storedBytes: number;
  /** The codec new chunks were given, e.g. "zstd -3" or "lz4". */
  codec: string;
  badRanges: BadRange[];
  partitionTable: PartitionTable;
  seconds: number;
  bytesPerSecond: number;
}

/** Imports src as the next version of image name. */
export async function importImage(store: Store, src: string, name: string, options: ImportOptions = {}): Promise<ImportSummary> {
  checkName(name);
  const chunkSize = options.chunkSize ?? CHUNK.DEFAULT_SIZE;
  if (!Number.isInteger(Math.log2(chunkSize)) || chunkSize < CHUNK.MIN_SIZE || chunkSize > CHUNK.MAX_SIZE) {
    throw new ClonecastError(ERR.USAGE, `chunk size ${chunkSize} is not a power of two from ${CHUNK.MIN_SIZE} to ${CHUNK.MAX_SIZE} bytes`);
  }
  const codec = checkCodec(options.codec ?? defaultCodec());
  const started = performance.now();
  const lock = store.lockImage(name, `importing ${src}`);
  let source: Disk | undefined;
  let pool: WorkerPool<ImportTask, ImportResult> | undefined;
  try {
    const ext = options.source;
    source = ext === undefined ? Disk.open(src) : undefined;
    const diskSize = ext?.size ?? source!.size;
    if (diskSize === 0) throw new ClonecastError(ERR.USAGE, `${src} is empty: there is nothing to import`);
    const sectorSize = ext?.sectorSize ?? source!.logicalSectorSize;
    // Workers start up while the partition table is read.
    const setup: WorkerSetup = { mode: 'import', storeRoot: store.root, chunkSize, device: ext === undefined ? src : undefined, ignoreReadErrors: options.ignoreReadErrors, codec };
    pool = new WorkerPool<ImportTask, ImportResult>(compiledSibling(import.meta.url, 'chunk-worker'), options.workers ?? DEFAULT_WORKERS, setup);
    const partitionTable = ext !== undefined ? await ext.readTable() : await readTable(source!);
    // A virtual disk is read whole (its zero ranges skipped): partclone reads block devices and raw files only.
    const plan = await planImport(src, diskSize, partitionTable, options.raw === true || ext !== undefined, options.warn);
    const n = chunkCount(diskSize, chunkSize);
    const table = newChunkTable(n);
    const progress = new Progress(`import ${name}`, diskSize, options.progress);
    const stats = { dataChunks: 0, zeroChunks: 0, unusedChunks: 0, bytesRead: 0, reusedChunks: 0, newBytes: 0, storedBytes: 0 };
    const bad: BadRange[] = [];
    const results: (BadRange[] | undefined)[] = [];
    // Start writeback of stored chunks early so that the final barrier only
    // waits for the tail: one syncfs at a time, every WRITEBACK_STEP bytes.
    let unsynced = 0;
    let syncing: Promise<void> | undefined;
    await runBounded(n, (options.workers ?? DEFAULT_WORKERS) * (WORKER_DEPTH + 1), async (i) => {
      const length = chunkLength(i, diskSize, chunkSize);
      const use = plan.chunk(i * chunkSize, length);
      if (use.use === 'unused') {
        setChunk(table, i, { kind: ChunkKind.UNUSED, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
        stats.unusedChunks++;
        progress.add(length);
        return;
      }
      // A hole in a sparse image file is a zero chunk: no need to read it.
      const hole = ext !== undefined ? await ext.isZero(i * chunkSize, length) : source!.isHole(i * chunkSize, length);
      if (!hole) stats.bytesRead += length;
      const keep = use.use === 'partial' ? use.keep : undefined;
      const r = hole ? holeResult(i) : await pool!.run({ index: i, position: i * chunkSize, length, keep, data: ext !== undefined ? await ext.read(i * chunkSize, length) : undefined });
      setChunk(table, i, { kind: r.kind, compression: r.compression, storedLength: r.storedLength, xxh64: r.xxh64, sha256: Buffer.from(r.sha256) });
      if (r.kind === ChunkKind.ZERO) stats.zeroChunks++;
      else {
        stats.dataChunks++;
        stats.storedBytes += CHUNK.HEADER_SIZE + r.storedLength;
        if (r.newBytes === 0) stats.reusedChunks++;
        stats.newBytes += r.newBytes;
        unsynced += r.newBytes;
        if (unsynced >= WRITEBACK_STEP && syncing === undefined) {
          unsynced = 0;
          syncing = store.barrier().finally(() => (syncing = undefined));
        }
      }
      if (r.badRanges.length > 0) results[i] = r.badRanges;
      progress.add(length);
    });
    progress.finish();
    for (const ranges of results) if (ranges !== undefined) mergeRanges(bad, ranges);
    await syncing;
    await store.barrier();
    const versions = store.versions(name);
    const parent = versions.length > 0 ? versions[versions.length - 1] : null;
    const meta: ManifestMeta = {
      name,
      version: 0,
      diskSize,
      sectorSize,
      chunkSize,
      createdAt: new Date().toISOString(),
      parent,
      source: { path: src, kind: source?.blockDevice === true ? 'block-device' : 'file', description: options.description ?? ext?.description ?? `imported from ${src}` },
      partitionTable,
      badRanges: bad,
      newBytes: stats.newBytes,
      ...plan.meta,
    };
    const version = store.publish({ meta, table });
    const seconds = (performance.now() - started) / 1000;
    const used = { usedBytes: plan.meta.usedBytes ?? diskSize, partitions: plan.meta.partitions ?? [], warnings: plan.map?.warnings ?? [] };
    return { name, version, parent, diskSize, chunks: n, ...stats, ...used, codec: codecName(codec), badRanges: bad, partitionTable, seconds, bytesPerSecond: diskSize / seconds };
  } finally {
    await pool?.close();
    source?.close();
    lock.release();
  }
}

/** Throws CODEC_UNAVAILABLE before any work if the codec cannot be used here. */
export function checkCodec(codec: ChunkCodec): ChunkCodec {
  if (codec.compression === Compression.ZSTD && !zstdAvailable()) {
    throw new ClonecastError(ERR.CODEC_UNAVAILABLE, 'zstd was asked for, but libzstd.so.1 could not be loaded: install libzstd1 (apt-get install libzstd1), or choose --codec lz4');
  }
  return codec;
}

/** A codec as people write it: "zstd -3", "lz4", "raw". */
export function codecName(codec: ChunkCodec): string {
  return codec.compression === Compression.ZSTD ? `zstd -${codec.level}` : CODEC_NAMES[codec.compression];
}

function holeResult(index: number): ImportResult {
  return { index, kind: ChunkKind.ZERO, compression: 0, storedLength: 0, xxh64: 0n, sha256: new Uint8Array(32), newBytes: 0, badRanges: [] };
}

/**
 * Runs task(0..n-1) with at most `limit` running at once. The first failure
 * stops new tasks; the ones running are awaited, then the failure is thrown.
 */
export async function runBounded(n: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const lane = async () => {
    while (failure === undefined && next < n) {
      const i = next++;
      try {
        await task(i);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, lane));
  if (failure !== undefined) throw failure.err;
}
