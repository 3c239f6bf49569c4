/**
 * The image's all-zero chunks are never sent: the receiver zeroes their
 * ranges on the disk before reception starts, adjacent ones in one call.
 * Unused chunks (no byte used by a filesystem) are neither sent nor written:
 * they keep what the target holds, or with discard they are trimmed
 * (BLKDISCARD on a device, a punched hole in a file).
 */
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../protocol/manifest.js';
import { chunkLength } from '../protocol/chunk.js';
import type { Disk } from '../native/disk.js';

/** A run of adjacent chunks of one kind: chunks first..last, bytes start..start+length. */
export interface ChunkRun {
  first: number;
  last: number;
  start: number;
  length: number;
}

/** The runs of adjacent chunks of this kind, in disk order. */
export function chunkRuns(manifest: Manifest, kind: ChunkKind): ChunkRun[] {
  const { meta, table } = manifest;
  const runs: ChunkRun[] = [];
  for (let i = 0; i < tableLength(table); i++) {
    if (chunkAt(table, i).kind !== kind) continue;
    const length = chunkLength(i, meta.diskSize, meta.chunkSize);
    const run = runs[runs.length - 1];
    if (run !== undefined && run.last === i - 1) {
      run.last = i;
      run.length += length;
    } else runs.push({ first: i, last: i, start: i * meta.chunkSize, length });
  }
  return runs;
}

/**
 * Writes the image's zero chunks, one zeroRange per run of them; zeroed(c) is called for each once its run is on the disk.
 * With discard, then trims every run of unused chunks (nothing is reported for them: they are not verified).
 */
export async function zeroChunks(disk: Disk, manifest: Manifest, zeroed: (chunk: number) => void, discard = false): Promise<void> {
  for (const run of chunkRuns(manifest, ChunkKind.ZERO)) {
    await disk.zeroRange(run.start, run.length);
    for (let c = run.first; c <= run.last; c++) zeroed(c);
  }
  if (discard) await discardUnused(disk, manifest);
}

/** Alignment of discarded ranges: 4 KiB, a whole number of sectors on 512-byte and 4Kn disks. */
export const DISCARD_ALIGN = 4096;

/** Trims the image's unused chunks on the disk, one discard per run (read as zeros on most devices afterwards); returns the bytes trimmed, stopping quietly on a device without discard. */
export async function discardUnused(disk: Disk, manifest: Manifest): Promise<number> {
  let bytes = 0;
  for (const run of chunkRuns(manifest, ChunkKind.UNUSED)) {
    // Devices discard whole sectors only: the run shrinks to the 4 KiB boundaries inside it (a disk's end is one anyway).
    const start = Math.ceil(run.start / DISCARD_ALIGN) * DISCARD_ALIGN;
    const end = Math.floor((run.start + run.length) / DISCARD_ALIGN) * DISCARD_ALIGN;
    if (end <= start) continue;
    try {
      await disk.discard(start, end - start);
    } catch (err) {
      // A device without discard keeps its old bytes there, as without --discard: not an error.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EOPNOTSUPP' || code === 'ENOTTY' || code === 'EINVAL') return bytes;
      throw err;
    }
    bytes += end - start;
  }
  return bytes;
}
