/**
 * Export: write one version of an image to a raw file (sparse: zero chunks
 * are holes) or to a block device through the native module (zero chunks
 * are zeroed in bulk with BLKZEROOUT). Every chunk is decoded and checked
 * against the manifest's xxh64 before it is written. Unused chunks (no byte
 * used by a filesystem) are not written: holes in a new file, left as they
 * are on a device, or trimmed with discard. Afterwards the disk is finished
 * as a deploy finishes it (native/disk-finish.ts): GPT backup at the end of
 * a larger target, the last partition grown on request, swap recreated.
 */
import { closeSync, ftruncateSync, openSync, statSync } from 'node:fs';
import { chunkAt, ChunkKind, tableLength } from '../../protocol/manifest.js';
import { chunkLength } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { Disk } from '../../native/disk.js';
import { formatBytes, Progress, type ProgressOptions } from '../progress.js';
import { compiledSibling, DEFAULT_WORKERS, WORKER_DEPTH, WorkerPool } from './pool.js';
import { runBounded } from './import.js';
import { discardUnused } from '../../transfer/zero.js';
import type { FinishReport } from '../../native/disk-finish.js';
import { fileSize, finishExport, tooSmall, writtenBytes } from './export-finish.js';
import type { ImageRef, Store } from './store.js';
import type { ExportTask, WorkerSetup } from './chunk-worker.js';

/** Options of exportImage(). */
export interface ExportOptions {
  /**
   * Overwrite what DEST holds: a non-empty file, a device with a partition
   * table, and also a device that is mounted, in use or the boot disk.
   */
  force?: boolean;
  workers?: number;
  progress?: ProgressOptions;
  /** Trim the unused chunks on a device (a new file has holes there anyway). */
  discard?: boolean;
  /** Grow the last partition and its filesystem to the end of a larger target. */
  growLast?: boolean;
  /** Size of a file target in bytes (default: the image's disk size). */
  size?: number;
  /** Warnings of the finishing steps (a filesystem that cannot grow). */
  log?: (level: 'info' | 'warn', message: string) => void;
}

/** What an export did. */
export interface ExportSummary {
  name: string;
  version: number;
  target: string;
  kind: 'file' | 'block-device';
  diskSize: number;
  dataChunks: number;
  zeroChunks: number;
  absentChunks: number;
  unusedChunks: number;
  /** What finishing the disk did (null: nothing to do). */
  finished: FinishReport | null;
  seconds: number;
  bytesPerSecond: number;
}

/** Writes image ref to dest (a file path, created or replaced, or a block device). */
export async function exportImage(store: Store, ref: ImageRef, dest: string, options: ExportOptions = {}): Promise<ExportSummary> {
  const reader = store.lockReader(`exporting ${ref.name} to ${dest}`);
  try {
    return await exportLocked(store, ref, dest, options);
  } finally {
    reader.release();
  }
}

async function exportLocked(store: Store, ref: ImageRef, dest: string, options: ExportOptions): Promise<ExportSummary> {
  const started = performance.now();
  const { name, version } = store.resolve(ref);
  const { meta, table } = await store.readManifest(name, version);
  const device = isBlockDevice(dest);
  if (!device && options.force !== true) refuseNonEmptyFile(dest);
  if (!device) {
    // A fresh sparse file: zero chunks stay holes.
    const fd = openSync(dest, 'w', 0o644);
    try {
      ftruncateSync(fd, fileSize(options.size, meta, dest));
    } finally {
      closeSync(fd);
    }
  }
  // Disk.open refuses a mounted, in-use or boot disk first: the graver reason is the one shown.
  const target = Disk.open(dest, { write: true, force: options.force });
  let pool: WorkerPool<ExportTask, number> | undefined;
  let summary: ExportSummary;
  let targetBytes: number;
  try {
    if (device && options.force !== true) await refusePartitionedDevice(target, dest);
    if (target.size < meta.diskSize) throw tooSmall(dest, target.size, `${name}@${version}`, meta);
    const n = tableLength(table);
    const workers = options.workers ?? DEFAULT_WORKERS;
    const setup: WorkerSetup = { mode: 'export', storeRoot: store.root, chunkSize: meta.chunkSize, device: dest };
    pool = new WorkerPool<ExportTask, number>(compiledSibling(import.meta.url, 'chunk-worker'), workers, setup);
    const progress = new Progress(`export ${name}@${version}`, writtenBytes({ meta, table }), options.progress);
    const counts = { dataChunks: 0, zeroChunks: 0, absentChunks: 0, unusedChunks: 0 };
    const data: number[] = [];
    const zeroRuns: { start: number; length: number }[] = [];
    for (let i = 0; i < n; i++) {
      const kind = chunkAt(table, i).kind;
      if (kind === ChunkKind.DATA) {
        counts.dataChunks++;
        data.push(i);
      } else if (kind === ChunkKind.ZERO) {
        counts.zeroChunks++;
        // Coalesce runs of zero chunks into one BLKZEROOUT each.
        const start = i * meta.chunkSize;
        const length = chunkLength(i, meta.diskSize, meta.chunkSize);
        const last = zeroRuns[zeroRuns.length - 1];
        if (last !== undefined && last.start + last.length === start) last.length += length;
        else zeroRuns.push({ start, length });
      } else if (kind === ChunkKind.UNUSED) {
        counts.unusedChunks++;
      } else {
        counts.absentChunks++;
      }
    }
    for (const run of zeroRuns) {
      if (device) await target.zeroRange(run.start, run.length);
      progress.add(run.length);
    }
    await runBounded(data.length, workers * (WORKER_DEPTH + 1), async (k) => {
      const i = data[k];
      const rec = chunkAt(table, i);
      const length = chunkLength(i, meta.diskSize, meta.chunkSize);
      await pool!.run({ index: i, position: i * meta.chunkSize, length, sha: rec.sha256.toString('hex'), xxh64: rec.xxh64 });
      progress.add(length);
    });
    if (device && options.discard === true) await discardUnused(target, { meta, table });
    await target.flush();
    progress.finish();
    if (device) {
      try {
        await target.rereadPartitions();
      } catch {
        // A loop device without partition scanning, or a busy disk: the table is written; the kernel learns it at the next open.
      }
    }
    targetBytes = target.size;
    summary = { name, version, target: dest, kind: device ? 'block-device' : 'file', diskSize: meta.diskSize, ...counts, finished: null, seconds: 0, bytesPerSecond: 0 };
  } finally {
    await pool?.close();
    target.close();
  }
  summary.finished = await finishExport(dest, targetBytes, meta, options);
  summary.seconds = (performance.now() - started) / 1000;
  summary.bytesPerSecond = meta.diskSize / summary.seconds;
  return summary;
}

/** Refuses to replace a regular file that already holds data. */
function refuseNonEmptyFile(dest: string): void {
  let st;
  try {
    st = statSync(dest);
  } catch {
    return; // absent: it is created
  }
  if (st.isFile() && st.size > 0) {
    throw new ClonecastError(ERR.REFUSED, `refusing to overwrite ${dest}: it is a file of ${formatBytes(st.size)} (${st.size} bytes); add --force to replace it, or export to a new path`, { path: dest, size: st.size });
  }
}

/** The partition table signature in a disk's first 8 KiB, if any: MBR at 510, GPT at LBA 1 (512- or 4096-byte sectors). */
export function partitionSignature(head: Buffer): 'GPT' | 'MBR' | null {
  const gpt = (at: number) => head.length >= at + 8 && head.toString('latin1', at, at + 8) === 'EFI PART';
  if (gpt(512) || gpt(4096)) return 'GPT';
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) return 'MBR';
  return null;
}

/** Refuses to overwrite a block device whose first sectors hold a partition table. */
async function refusePartitionedDevice(target: Disk, dest: string): Promise<void> {
  const length = Math.min(8192, target.size);
  if (length < 512) return;
  const head = target.allocate(8192);
  const n = await target.read(head, 0, length - (length % 512));
  const kind = partitionSignature(head.subarray(0, n));
  if (kind !== null) {
    throw new ClonecastError(ERR.REFUSED, `refusing to overwrite ${dest}: it holds ${kind === 'GPT' ? 'a GPT' : 'an MBR'} partition table (${formatBytes(target.size)} disk); add --force if its contents may go`, { path: dest, partitionTable: kind });
  }
}

function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}
