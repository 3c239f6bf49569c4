/**
 * The image's all-zero chunks are never sent: the receiver zeroes their
 * ranges on the disk before reception starts, adjacent ones in one call.
 */
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../protocol/manifest.js';
import { chunkLength } from '../protocol/chunk.js';
import type { Disk } from '../native/disk.js';

/** Zeroes every ZERO chunk of manifest on disk. */
export async function zeroChunks(disk: Disk, manifest: Manifest): Promise<void> {
  const { meta, table } = manifest;
  let start = -1;
  let end = -1;
  const flush = async () => {
    if (start >= 0) await disk.zeroRange(start, end - start);
    start = -1;
  };
  for (let i = 0; i < tableLength(table); i++) {
    if (chunkAt(table, i).kind !== ChunkKind.ZERO) continue;
    const s = i * meta.chunkSize;
    const e = s + chunkLength(i, meta.diskSize, meta.chunkSize);
    if (start >= 0 && s === end) end = e;
    else {
      await flush();
      start = s;
      end = e;
    }
  }
  await flush();
}
